"""Run every benchmark in benchmarks/ and print one table of their headline ratios (what `make bench` runs).

    make bench                                                   # venv + the `bench` extras, then this script
    .venv/bin/python benchmarks/run_all.py [--only filter_throughput,tag_throughput] [--full] [--timeout 1800]

Each script runs in its own process from the repository root (the repository first on ``PYTHONPATH``) with the
arguments of ``QUICK_ARGS`` (sizes that keep the whole run near half an hour on a 2-core CPU; ``--full`` runs each
with its own defaults). A script reports each headline number as one stdout line

    RESULT <snake_case_name> <value> <unit> | <one-line description incl. what the baseline or peer was>

and every such line becomes a row of the table. A script that is missing (one of ``EXPECTED``), exits non-zero,
runs past ``--timeout``, prints no RESULT line or a malformed one is a FAILED row, never a missing one, and the run
exits 1 after printing the table. Each script's output is kept in ``runs/bench/<script>.log`` and the table in
``runs/bench/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
LOG_DIR = REPO / "runs" / "bench"

# Scripts that must be there: a missing one is a failed row.
EXPECTED = (
    "build_embedded",
    "build_throughput",
    "dpo_vision_reuse",
    "filter_throughput",
    "peers_train",
    "render_speed",
    "sampling_throughput",
    "sft_packing",
    "tag_throughput",
    "verify_accuracy",
)
# The sizes `make bench` uses (the README's table comes from them); scripts not listed run with their defaults.
QUICK_ARGS: dict[str, list[str]] = {
    "filter_throughput": ["-n", "20000", "--peer-records", "20000", "--rss", "10000", "40000"],
    "tag_throughput": ["--n", "1000", "--repeats", "2"],
    "render_speed": ["--records", "1000"],
    "sampling_throughput": ["--prompts", "8", "--k", "4", "--max-tokens", "64"],
    "peers_train": ["--quick"],  # 64 records, 32 pairs per tool; the peers' venvs are built on first use
}
# Scripts that measure a CUDA GPU (`make test-gpu` runs them there): without one they are a SKIPPED row, not run.
GPU_ONLY = ("gpu_sft_tokens",)
RESULT_RE = re.compile(r"^RESULT (?P<name>[a-z0-9_]+) (?P<value>\S+) (?P<unit>\S+) \| (?P<what>.+)$")


@dataclass
class Row:
    """One row of the table: a headline number, or a failure of its script."""

    script: str
    name: str
    value: str = ""
    unit: str = ""
    what: str = ""
    ok: bool = True


@dataclass
class Outcome:
    """What one script did."""

    script: str
    returncode: int | None
    seconds: float
    rows: list[Row] = field(default_factory=list)
    error: str = ""
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def discover(folder: Path, expected: tuple[str, ...] = EXPECTED) -> list[str]:
    """The benchmark scripts of ``folder`` (every ``*.py`` but this runner and private ``_*.py``) and the expected
    ones, sorted by name."""
    found = {p.stem for p in folder.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_")}
    return sorted(found | set(expected))


def parse_results(script: str, text: str) -> tuple[list[Row], list[str]]:
    """The RESULT lines of a script's stdout as rows, and the lines that start with RESULT but do not parse."""
    rows, bad = [], []
    for line in text.splitlines():
        if not line.startswith("RESULT"):
            continue
        match = RESULT_RE.match(line.rstrip())
        if match is None:
            bad.append(line)
            continue
        try:
            float(match["value"])
        except ValueError:
            bad.append(line)
            continue
        rows.append(Row(script, match["name"], match["value"], match["unit"], match["what"]))
    return rows, bad


def run_script(folder: Path, script: str, args: list[str], timeout: float, log_dir: Path) -> Outcome:
    """Run one benchmark; its stdout and stderr go to ``log_dir/<script>.log`` as they come (``tail -f`` it)."""
    path = folder / f"{script}.py"
    if not path.is_file():
        return Outcome(script, None, 0.0, error=f"missing: {path.relative_to(folder.parent)} does not exist")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{script}.log"
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as f:
        f.write(f"$ python benchmarks/{script}.py {' '.join(args)}\n")
        f.flush()
        # its own process group, so that a timeout also ends what it started (engine workers, measuring children)
        proc = subprocess.Popen(
            [sys.executable, str(path), *args],
            cwd=REPO,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    seconds = time.perf_counter() - start
    text = log.read_text(encoding="utf-8", errors="replace")
    rows, bad = parse_results(script, text)
    outcome = Outcome(script, code, seconds, rows)
    if code is None:
        outcome.error = f"timed out after {timeout:.0f} s"
    elif code != 0:
        tail = text.strip().splitlines()[-1:] or [""]
        outcome.error = f"exit {code}: {tail[0][:160]}"
    elif bad:
        outcome.error = f"malformed RESULT line: {bad[0][:160]}"
    elif not rows:
        outcome.error = "no RESULT line"
    return outcome


def cuda_available() -> bool:
    """Whether this machine has a CUDA GPU (asked in a child process, so the runner itself never imports torch)."""
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def table_rows(outcomes: list[Outcome]) -> list[Row]:
    """Every RESULT row, one FAILED row for each script that failed (its good rows are kept as well) and one SKIPPED
    row for each GPU-only script on a machine without a GPU."""
    rows: list[Row] = []
    for outcome in outcomes:
        rows += outcome.rows
        if outcome.skipped:
            rows.append(Row(outcome.script, "SKIPPED", what=outcome.skipped))
        if not outcome.ok:
            rows.append(Row(outcome.script, "FAILED", what=outcome.error, ok=False))
    return rows


def format_table(rows: list[Row]) -> str:
    """A plain-text table: script, result, value, unit, what it compares."""
    header = Row("script", "result", "value", "unit", "what (baseline or peer measured in the same run)")
    cells = [header, *rows]
    widths = [max(len(getattr(r, col)) for r in cells) for col in ("script", "name", "value", "unit")]
    lines = []
    for i, row in enumerate(cells):
        parts = [
            row.script.ljust(widths[0]),
            row.name.ljust(widths[1]),
            row.value.rjust(widths[2]),
            row.unit.ljust(widths[3]),
            row.what,
        ]
        lines.append("  ".join(parts).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 20)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated script names (default: all)")
    parser.add_argument("--full", action="store_true", help="run each script with its own default sizes")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per script (default 1800)")
    parser.add_argument("--dir", type=Path, default=BENCH_DIR, help=argparse.SUPPRESS)  # tests point it elsewhere
    parser.add_argument("--log-dir", type=Path, default=LOG_DIR, help="where logs and results.json go")
    args = parser.parse_args(argv)

    scripts = discover(args.dir, EXPECTED)
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(wanted) - set(scripts))
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(scripts)}")
        scripts = [s for s in scripts if s in wanted]
    outcomes = []
    has_gpu = None
    for i, script in enumerate(scripts, 1):
        if script in GPU_ONLY:
            has_gpu = cuda_available() if has_gpu is None else has_gpu
            if not has_gpu:
                print(f"[{i}/{len(scripts)}] {script}: skipped, no CUDA GPU", file=sys.stderr, flush=True)
                outcomes.append(Outcome(script, None, 0.0, skipped="needs a CUDA GPU (make test-gpu runs it there)"))
                continue
        script_args = [] if args.full else QUICK_ARGS.get(script, [])
        print(f"[{i}/{len(scripts)}] {script} {' '.join(script_args)}".rstrip(), file=sys.stderr, flush=True)
        outcome = run_script(args.dir, script, script_args, args.timeout, args.log_dir)
        status = "ok" if outcome.ok else f"FAILED ({outcome.error})"
        print(f"      {status} in {outcome.seconds:.0f} s", file=sys.stderr, flush=True)
        outcomes.append(outcome)

    rows = table_rows(outcomes)
    print(format_table(rows))
    args.log_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": not args.full,
        "scripts": [
            {
                "script": o.script,
                "returncode": o.returncode,
                "seconds": round(o.seconds, 1),
                "error": o.error,
                "skipped": o.skipped,
            }
            for o in outcomes
        ],
        "rows": [asdict(r) for r in rows],
    }
    (args.log_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    failed = [o.script for o in outcomes if not o.ok]
    if failed:
        print(
            f"\n{len(failed)} of {len(outcomes)} benchmarks failed: {', '.join(failed)} (logs in {args.log_dir})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
