"""The `make bench` runner: every RESULT line becomes a row; a missing, failing or silent script is a FAILED row."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _runner():
    spec = importlib.util.spec_from_file_location("run_all", REPO / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_rows_failures_and_exit_code(tmp_path, capsys, monkeypatch):
    runner = _runner()
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    scripts = {
        "good": 'print("table first")\nprint("RESULT good_ratio 1.50 x | ours / a baseline")\n'
        'print("RESULT good_share 0.9000 fraction | kept / all")',
        "crash": 'print("RESULT early 2.00 x | printed before the crash")\nraise SystemExit("peer not installed")',
        "silent": 'print("speedup: 3.0")',
        "garbled": 'print("RESULT Bad-Name 1.0 x | not snake case")',
        "stuck": "import subprocess, sys, time\n"
        'subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])\n'
        "time.sleep(120)",
        "_helper": 'raise AssertionError("private modules are not benchmarks")',
    }
    for name, body in scripts.items():
        (bench / f"{name}.py").write_text(textwrap.dedent(body) + "\n")
    monkeypatch.setattr(runner, "EXPECTED", ("good", "gone"))  # "gone" is expected but not there
    code = runner.main(["--dir", str(bench), "--log-dir", str(tmp_path / "logs"), "--timeout", "8"])
    out = capsys.readouterr().out
    assert code == 1
    rows = {(r["script"], r["name"]): r for r in json.loads((tmp_path / "logs" / "results.json").read_text())["rows"]}
    assert rows[("good", "good_ratio")] == {
        "script": "good",
        "name": "good_ratio",
        "value": "1.50",
        "unit": "x",
        "what": "ours / a baseline",
        "ok": True,
    }
    assert rows[("good", "good_share")]["value"] == "0.9000"
    assert rows[("crash", "early")]["ok"] and "exit 1: peer not installed" in rows[("crash", "FAILED")]["what"]
    assert rows[("silent", "FAILED")]["what"] == "no RESULT line"
    assert rows[("garbled", "FAILED")]["what"].startswith("malformed RESULT line")
    assert rows[("gone", "FAILED")]["what"].startswith("missing")
    assert rows[("stuck", "FAILED")]["what"] == "timed out after 8 s"
    assert not any(script == "_helper" for script, _ in rows)
    assert ("good", "FAILED") not in rows
    assert "good_ratio" in out and "1.50" in out and out.count("FAILED") == 5
    assert "table first" in (tmp_path / "logs" / "good.log").read_text()


def test_every_benchmark_in_the_repository_is_run_and_expected_ones_are_listed():
    runner = _runner()
    scripts = runner.discover(REPO / "benchmarks")
    on_disk = {p.stem for p in (REPO / "benchmarks").glob("*.py")} - {"run_all"}
    assert on_disk <= set(scripts) and set(runner.EXPECTED) <= set(scripts) and "run_all" not in scripts
    assert set(runner.QUICK_ARGS) <= set(scripts)


def test_gpu_only_script_is_a_skipped_row_without_cuda_and_runs_with_it(tmp_path, monkeypatch):
    runner = _runner()
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "cpu_one.py").write_text('print("RESULT cpu_ratio 2.00 x | ours / a baseline")\n')
    (bench / "gpu_one.py").write_text('raise SystemExit("must not run without a GPU")\n')
    monkeypatch.setattr(runner, "EXPECTED", ("cpu_one",))
    monkeypatch.setattr(runner, "GPU_ONLY", ("gpu_one",))
    monkeypatch.setattr(runner, "cuda_available", lambda: False)
    code = runner.main(["--dir", str(bench), "--log-dir", str(tmp_path / "logs")])
    results = json.loads((tmp_path / "logs" / "results.json").read_text())
    rows = {(r["script"], r["name"]): r for r in results["rows"]}
    assert code == 0
    assert rows[("gpu_one", "SKIPPED")]["what"].startswith("needs a CUDA GPU") and ("gpu_one", "FAILED") not in rows
    assert not (tmp_path / "logs" / "gpu_one.log").exists()
    monkeypatch.setattr(runner, "cuda_available", lambda: True)  # with a GPU it runs, and its failure counts
    assert runner.main(["--dir", str(bench), "--log-dir", str(tmp_path / "logs2")]) == 1
    rows = {(r["script"], r["name"]) for r in json.loads((tmp_path / "logs2" / "results.json").read_text())["rows"]}
    assert ("gpu_one", "FAILED") in rows
