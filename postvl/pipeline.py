"""The whole recipe in one command: stages chained as (accelerate) jobs in one run folder, resumable.

    postvl run configs/pipeline/demo.yaml [--run-dir DIR] [--from STAGE] [--until STAGE] [--fresh]

Stages run in order, each a separate process (``accelerate launch`` with the stage's accelerate config, or plain
``python -m postvl.cli``) fed the previous stage's folder::

    RUN_DIR/raw/            synthetic inputs (when the config asks for them)
    RUN_DIR/model/          a tiny offline model or the demo's base model (when the config asks for one)
    RUN_DIR/01_build/ 02_split/ 03_tag/ 04_filter/ 05_sample/   data stages (stage contract: data/, stats.json,
                                                                manifest.json); 02_split/eval/ is the held-out split
    RUN_DIR/06_sft/ 07_dpo/                                     training stages (checkpoints, adapter, merged/)
    RUN_DIR/08_eval/                                            the base model, SFT and DPO side by side on the
                                                                held-out split (eval.json, eval.png)
    RUN_DIR/logs/<stage>.log                            each stage's full output
    RUN_DIR/<stage>/pipeline_stage.json                 written last: the key the stage ran with, its command, time

A stage is skipped when its ``pipeline_stage.json`` holds the same key: a hash of its command, its own config file's
content, the inputs' fingerprints and the key of the stage before it, so a changed config or input re-runs it and
everything after it. An interrupted stage (even ``kill -9``) has no ``pipeline_stage.json`` and re-runs: data stages
skip their finished shards, training stages resume from their last checkpoint. A failing stage stops the run and
prints the command that re-runs it alone and its log's path.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STAGES = ("build", "split", "tag", "filter", "sample", "sft", "dpo", "eval")
DATA_STAGES = ("build", "split", "tag", "filter", "sample")
TRAINING_STAGES = ("sft", "dpo")
MARKER = "pipeline_stage.json"
STARTED = "pipeline_stage.started.json"  # a training stage's key, written when it starts (see _resumable)
BASE_MODEL_KEYS = ("seed", "n", "steps", "kinds")  # postvl demo-model's options


@dataclass(frozen=True)
class StageConfig:
    """One stage of a pipeline.

    Attributes:
        enabled: run this stage (a disabled data stage is bypassed: the next stage reads the one before it).
        config: the stage's own YAML (``--config``), if it takes one.
        args: extra command-line arguments for the stage.
        accelerate_config: launch with ``accelerate launch --config_file`` this file; none: one plain process.
    """

    enabled: bool = True
    config: str | None = None
    args: tuple[str, ...] = ()
    accelerate_config: str | None = None


@dataclass(frozen=True)
class PipelineConfig:
    """A pipeline YAML.

    Attributes:
        run_dir: the run folder (``--run-dir`` overrides it).
        inputs: raw files / folders for ``build``; ``{run_dir}`` is replaced by the run folder.
        model: the base model (hub id or folder) for sampling and SFT; ``{run_dir}`` is replaced.
        synth: ``{n, seed, defect_rate, pairs, kinds}``: first write a synthetic dataset to ``RUN_DIR/raw``
            (``postvl synth``; keys left out take its defaults).
        tiny_model: ``{vocab, seed}``: first write a tiny offline model to ``model`` (``postvl tiny-model``).
        base_model: ``{seed, n, steps, kinds}``: first write the demo's base model to ``model``
            (``postvl demo-model``).
        stages: per-stage settings, keyed by ``build``, ``split``, ``tag``, ``filter``, ``sample``, ``sft``, ``dpo``,
            ``eval``.
    """

    run_dir: str
    inputs: tuple[str, ...]
    model: str
    synth: dict[str, Any] | None = None
    tiny_model: dict[str, Any] | None = None
    base_model: dict[str, Any] | None = None
    stages: dict[str, StageConfig] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | Path, run_dir: str | None = None) -> PipelineConfig:
        import yaml

        raw = yaml.safe_load(Path(path).read_text()) or {}
        errors = _unknown_keys(raw, {f.name for f in dataclasses.fields(cls)}, "pipeline config")
        stages: dict[str, StageConfig] = {}
        for name, spec in (raw.get("stages") or {}).items():
            if name not in STAGES:
                errors.append(f"unknown stage {name!r}{_did_you_mean(name, STAGES)}; stages: {', '.join(STAGES)}")
                continue
            spec = spec or {}
            errors += _unknown_keys(spec, {f.name for f in dataclasses.fields(StageConfig)}, f"stage {name!r}")
            if not errors:
                stages[name] = StageConfig(**{**spec, "args": tuple(str(a) for a in spec.get("args", ()))})
        for key in ("inputs", "model"):
            if key not in raw:
                errors.append(f"{key!r} is required")
        if raw.get("tiny_model") is not None and raw.get("base_model") is not None:
            errors.append("give tiny_model or base_model, not both (both write the model folder)")
        if isinstance(raw.get("base_model"), dict):
            errors += _unknown_keys(raw["base_model"], set(BASE_MODEL_KEYS), "base_model")
        if "eval" in stages and stages["eval"].enabled and not (stages.get("split") or StageConfig(False)).enabled:
            errors.append("stage 'eval' needs stage 'split' (the held-out split it evaluates on)")
        if errors:
            raise ValueError(f"{path}: " + "; ".join(errors))
        run = str(run_dir or raw.get("run_dir") or "runs/" + Path(path).stem)
        fill = lambda s: str(s).replace("{run_dir}", run)  # noqa: E731
        return cls(
            run_dir=run,
            inputs=tuple(fill(i) for i in raw["inputs"]),
            model=fill(raw["model"]),
            synth=raw.get("synth"),
            tiny_model=raw.get("tiny_model"),
            base_model=raw.get("base_model"),
            stages={n: stages.get(n, StageConfig(enabled=False)) for n in STAGES},
        )


def _unknown_keys(raw: dict[str, Any], known: set[str], where: str) -> list[str]:
    return [f"unknown key {k!r} in {where}{_did_you_mean(k, known)}" for k in raw if k not in known]


def _did_you_mean(key: str, choices: Any) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------------------------------------------------
# Commands


def stage_dir(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / f"{STAGES.index(name) + 1:02d}_{name}"


def previous_data_stage(cfg: PipelineConfig, name: str) -> str | None:
    """The closest enabled data stage before ``name`` (its folder is ``name``'s input)."""
    earlier = [s for s in DATA_STAGES[: STAGES.index(name)] if cfg.stages[s].enabled] if name in STAGES else []
    return earlier[-1] if earlier else None


def postvl_args(cfg: PipelineConfig, name: str) -> list[str]:
    """The ``postvl <stage> ...`` arguments of a stage (without the launcher)."""
    spec = cfg.stages[name]
    out = str(stage_dir(cfg.run_dir, name))
    own = (["--config", spec.config] if spec.config else []) + list(spec.args)
    prev = previous_data_stage(cfg, name)
    source = str(stage_dir(cfg.run_dir, prev)) if prev else None
    if name == "build":
        return ["build", *cfg.inputs, "--out", out, "--model", cfg.model, *own]
    if name in ("split", "tag", "filter"):
        return [name, _need(source, name), "--out", out, *own]
    if name == "sample":
        return ["sample", _need(source, name), "--out", out, "--model", cfg.model, *own]
    if name == "sft":
        return ["sft", *own, "--model_name_or_path", cfg.model, "--datasets", _need(source, name), "--output_dir", out]
    if name == "dpo":
        start = trained_model(cfg, "sft") if cfg.stages["sft"].enabled else cfg.model
        return [
            "dpo",
            *own,
            "--model_name_or_path",
            start,
            "--datasets",
            *training_data(cfg, "dpo"),
            "--output_dir",
            out,
        ]
    if name == "eval":
        held_out = str(stage_dir(cfg.run_dir, "split") / "eval")
        models = [f"base={cfg.model}"]
        models += [f"{s}={trained_model(cfg, s)}" for s in TRAINING_STAGES if cfg.stages[s].enabled]
        trained = [d for s in TRAINING_STAGES if cfg.stages[s].enabled for d in training_data(cfg, s)]
        trained += base_model_data(cfg)
        args = ["eval", held_out, "--out", out, *own]
        for model in models:
            args += ["--model", model]
        return args + (["--train", *dict.fromkeys(trained)] if trained else [])
    raise ValueError(f"unknown stage {name!r}")


def trained_model(cfg: PipelineConfig, name: str) -> str:
    """The model a training stage leaves: its merged model when it trained an adapter, else its folder."""
    out = stage_dir(cfg.run_dir, name)
    return str(out / "merged") if (out / "merged").is_dir() else str(out)


def training_data(cfg: PipelineConfig, name: str) -> list[str]:
    """The data folders a training stage reads.

    SFT: the last data stage. DPO: the pairs from rejection sampling plus the preference records that came in with
    the raw data (built, split, tagged and filtered with the rest); a folder without pairs is skipped by DPO.
    """
    if name == "sft":
        return [_need(str(stage_dir(cfg.run_dir, s)) if (s := previous_data_stage(cfg, "sft")) else None, name)]
    before = previous_data_stage(cfg, "sample")
    pairs = [str(stage_dir(cfg.run_dir, s)) for s in ("sample", before) if s and cfg.stages[s].enabled]
    return _need_all(pairs, name)


def base_model_data(cfg: PipelineConfig) -> list[str]:
    """What the demo's base model was trained on (``demo_base.json`` of ``postvl demo-model``), if it says."""
    note = Path(cfg.model) / "demo_base.json"
    if not note.is_file():
        return []
    folder = json.loads(note.read_text()).get("trained_on")
    return [str(folder)] if folder and Path(folder).is_dir() else []


def _need(source: str | None, name: str) -> str:
    if source is None:
        raise ValueError(f"stage {name!r} needs an earlier data stage enabled (build at least)")
    return source


def _need_all(sources: list[str], name: str) -> list[str]:
    if not sources:
        raise ValueError(f"stage {name!r} needs an earlier data stage enabled (build at least)")
    return sources


def launcher(spec: StageConfig) -> list[str]:
    if spec.accelerate_config:
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            spec.accelerate_config,
            "-m",
            "postvl.cli",
        ]
    return [sys.executable, "-m", "postvl.cli"]


def stage_key(cfg: PipelineConfig, name: str, upstream_key: str) -> str:
    """What a stage's result depends on: its command, its config file's content, its inputs, the stage before."""
    spec = cfg.stages[name]
    parts: dict[str, Any] = {
        "args": postvl_args(cfg, name),
        "accelerate": _file_text(spec.accelerate_config),
        "config": _file_text(spec.config),
        "upstream": upstream_key,
    }
    if name in ("build", "eval"):
        parts["model"] = _dir_fingerprint(cfg.model)
    if name == "build":
        from postvl.io import fingerprint_inputs, list_inputs

        parts["inputs"] = fingerprint_inputs(list_inputs(cfg.inputs))
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_text(path: str | None) -> str | None:
    return Path(path).read_text() if path and Path(path).is_file() else path


def _dir_fingerprint(path: str) -> Any:
    p = Path(path)
    if not p.is_dir():
        return path
    return sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir() if f.is_file())


# --------------------------------------------------------------------------------------------------------------------
# Running


@dataclass
class StageResult:
    name: str
    status: str  # ran | skipped | failed | disabled
    seconds: float = 0.0
    detail: str = ""


def run_pipeline(
    cfg: PipelineConfig, *, start: str | None = None, until: str | None = None, fresh: bool = False
) -> list[StageResult]:
    """Prepare inputs, then run (or skip) every enabled stage in order; raises ``StageFailed`` on a failure."""
    run_dir = Path(cfg.run_dir)
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    _prepare(cfg, run_dir)
    results: list[StageResult] = []
    upstream = "root"
    forced = False
    for name in STAGES:
        spec = cfg.stages[name]
        forced = forced or name == start
        if not spec.enabled:
            results.append(StageResult(name, "disabled"))
            continue
        key = stage_key(cfg, name, upstream)
        upstream = key
        out = stage_dir(run_dir, name)
        marker = out / MARKER
        done = marker.is_file() and json.loads(marker.read_text()).get("key") == key
        if done and not forced:
            results.append(StageResult(name, "skipped", json.loads(marker.read_text()).get("seconds", 0.0)))
            logger.info("%s: unchanged since its last run, skipped", name)
        else:
            results.append(_run_stage(cfg, name, key, run_dir))
        if name == until:
            break
    return results


class StageFailed(RuntimeError):
    def __init__(self, name: str, returncode: int, command: list[str], log: Path) -> None:
        super().__init__(
            f"stage {name!r} failed (exit code {returncode}).\n  re-run it alone: {' '.join(command)}\n  log: {log}"
        )
        self.name, self.returncode, self.command, self.log = name, returncode, command, log


def _run_stage(cfg: PipelineConfig, name: str, key: str, run_dir: Path) -> StageResult:
    out = stage_dir(run_dir, name)
    finished = (out / MARKER).is_file()
    (out / MARKER).unlink(missing_ok=True)
    spec = cfg.stages[name]
    args = postvl_args(cfg, name)
    if name in ("sft", "dpo"):
        if _resumable(out, key, finished) and _drop_partial_checkpoints(out):
            args += ["--resume_from_checkpoint", "true"]
        out.mkdir(parents=True, exist_ok=True)
        (out / STARTED).write_text(json.dumps({"stage": name, "key": key, "started": time.time()}) + "\n")
    command = launcher(spec) + args
    log = run_dir / "logs" / f"{name}.log"
    logger.info("%s: %s", name, " ".join(command))
    started = time.time()
    with open(log, "ab") as sink:
        sink.write(f"\n$ {' '.join(command)}\n".encode())
        sink.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.write(line)
            sys.stdout.buffer.write(line)
        returncode = proc.wait()
    seconds = time.time() - started
    if returncode != 0:
        raise StageFailed(name, returncode, command, log)
    marker = {"stage": name, "key": key, "command": command, "seconds": round(seconds, 2), "finished": time.time()}
    tmp = out / (MARKER + ".tmp")
    out.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    tmp.replace(out / MARKER)
    return StageResult(name, "ran", seconds)


def _resumable(out: Path, key: str, finished: bool) -> bool:
    """True when ``out`` holds a killed run of this very stage (same key, never finished): its checkpoints resume.

    Otherwise (a finished run re-run with ``--from``, or a changed config or input) the old checkpoints belong to
    another training and are deleted, so that the stage trains from its start instead of from their state.
    """
    started = out / STARTED
    same = started.is_file() and json.loads(started.read_text()).get("key") == key
    if same and not finished:
        return True
    stale = sorted(out.glob("checkpoint-*"))
    if stale:
        why = "finished before (re-run with --from)" if same else "made with another config or input"
        logger.warning("%s: removing %d checkpoints %s: the stage trains from its start", out, len(stale), why)
        for ckpt in stale:
            shutil.rmtree(ckpt)
    return False


def _drop_partial_checkpoints(out: Path) -> bool:
    """Delete checkpoints a kill left half-written (no trainer_state.json); True if a complete one remains."""
    complete = False
    for ckpt in out.glob("checkpoint-*"):
        if (ckpt / "trainer_state.json").is_file():
            complete = True
        else:
            logger.warning("removing incomplete checkpoint %s", ckpt)
            shutil.rmtree(ckpt)
    return complete


def _prepare(cfg: PipelineConfig, run_dir: Path) -> None:
    """Synthetic data and a tiny model for demos, each made once (skipped when already there)."""
    if cfg.synth is not None and not (run_dir / "raw" / "train.jsonl").is_file():
        args = [
            "synth",
            str(run_dir / "raw"),
            "--n",
            str(cfg.synth.get("n", 200)),
            "--seed",
            str(cfg.synth.get("seed", 0)),
        ]
        for key in ("defect_rate", "pairs", "kinds"):
            if cfg.synth.get(key) is not None:
                value = cfg.synth[key]
                args += [f"--{key.replace('_', '-')}", ",".join(value) if isinstance(value, list) else str(value)]
        subprocess.run([sys.executable, "-m", "postvl.cli", *args], check=True)
    if cfg.base_model is not None and not (Path(cfg.model) / "config.json").is_file():
        args = ["demo-model", cfg.model]
        for key in BASE_MODEL_KEYS:
            if cfg.base_model.get(key) is not None:
                value = cfg.base_model[key]
                args += [f"--{key}", ",".join(value) if isinstance(value, list) else str(value)]
        subprocess.run([sys.executable, "-m", "postvl.cli", *args], check=True)
    if cfg.tiny_model is not None and not (Path(cfg.model) / "config.json").is_file():
        args = [
            "tiny-model",
            cfg.model,
            "--vocab",
            str(cfg.tiny_model.get("vocab", "small")),
            "--seed",
            str(cfg.tiny_model.get("seed", 0)),
        ]
        subprocess.run([sys.executable, "-m", "postvl.cli", *args], check=True)


def summary_table(results: list[StageResult], run_dir: str | Path) -> str:
    rows = [("stage", "status", "seconds", "records in -> kept (rejected)")]
    for r in results:
        counts = ""
        stats = stage_dir(run_dir, r.name) / "stats.json"
        if stats.is_file():
            s = json.loads(stats.read_text())
            counts = f"{s.get('total')} -> {s.get('kept')} ({s.get('rejected')})"
        rows.append((r.name, r.status, f"{r.seconds:.1f}" if r.seconds else "", counts))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


def eval_summary(run_dir: str | Path) -> str:
    """The eval stage's accuracy per model (base, sft, dpo) overall and by domain, or ``""`` without one."""
    path = stage_dir(run_dir, "eval") / "eval.json"
    if not path.is_file():
        return ""
    report = json.loads(path.read_text())
    models = report.get("order") or list(report["models"])
    first = report["models"][models[0]]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    rows = [("held-out accuracy (%)", "questions", *models)]
    rows.append(
        ("all", str(first["overall"]["questions"]), *(pct(report["models"][m]["overall"]["accuracy"]) for m in models))
    )
    rows.append((f"pass@{report['k']}", "", *(pct(report["models"][m]["overall"]["pass@k"]) for m in models)))
    for domain, g in first["by_domain"].items():
        cells = [pct(report["models"][m]["by_domain"].get(domain, {}).get("accuracy")) for m in models]
        rows.append((f"  {domain}", str(g["questions"]), *cells))
    ov = report["overlap"]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    ]
    lines.append(
        f"(k={report['k']} samples per question at temperature {report['temperature']}; eval records dropped for "
        f"overlap with training: {ov['reasons']['exact_overlap']} exact, {ov['reasons']['near_overlap']} near, "
        f"{ov['reasons']['eval_duplicate']} duplicated within eval)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="postvl run", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="pipeline YAML (configs/pipeline/*.yaml)")
    parser.add_argument("--run-dir", help="run folder (default: the config's run_dir)")
    parser.add_argument("--from", dest="start", choices=STAGES, help="re-run from this stage on, even if unchanged")
    parser.add_argument("--until", choices=STAGES, help="stop after this stage")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = PipelineConfig.from_yaml(args.config, args.run_dir)
    try:
        results = run_pipeline(cfg, start=args.start, until=args.until, fresh=args.fresh)
    except StageFailed as err:
        print(f"\n{err}", file=sys.stderr)
        return 1
    print("\n" + summary_table(results, cfg.run_dir))
    accuracy = eval_summary(cfg.run_dir)
    if accuracy:
        print("\n" + accuracy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
