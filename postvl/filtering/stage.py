"""The filter stage: rules on every record, then model scores on the survivors, written as a stage folder.

``run_filter(cfg)`` reads a finished stage folder (or builds raw input first, in-process, into ``OUT/_build``), runs
the per-domain rule policy (``Policy`` / ``RuleRunner``) on every record, scores the survivors with the configured
scorer (``postvl.filtering.scoring``) and writes:

    OUT/data/part-*.parquet        kept records, as they were read; scored ones carry meta.scores = {dimension: value}
    OUT/preference/part-*.parquet  preference records that passed (the rules judge prompt + chosen; not scored)
    OUT/rejected.jsonl             each rejected record with its reason, stage ("filter", or "build" for raw input
                                   the in-process build rejected) and source
    OUT/scores.png                 histograms of each score dimension, with the default minimum marked
    OUT/stats.json                 the stage contract (total = kept + rejected, reasons, timings) plus `funnel`
                                   (per step - build, rules, scores - and per domain: in, kept, reasons), `scores`
                                   (per-dimension summaries) and, for raw input, `build` (the build's own counts)
    OUT/manifest.json              resolved config (rules and scores), input fingerprints, package versions
    OUT/_shards/near-dedup-<rank>/ while running: near dedup's record indices and signatures (removed at the end)

Records are routed by ``meta.domain`` / ``meta.subcategory`` (written by ``postvl tag``); untagged records get the
defaults. Near-duplicate and exact-duplicate detection runs last and sees every record of this process in input
order; with ``num_proc > 1`` the stateless rules run in worker processes and deduplication stays in the main process,
so the result is identical to one process. Under ``accelerate launch`` each rank filters (and deduplicates) its own
share of the input; a rerun with the same config and input skips finished ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postvl.filtering.base import Sample
from postvl.filtering.policy import UNTAGGED, Policy, PolicyConfig, RuleRunner
from postvl.filtering.scoring import ScoreConfig, ScoreThresholds
from postvl.io import (
    InputFile,
    Shard,
    StageWriter,
    input_paths,
    list_inputs,
    shard_from_env,
    stage_settings,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

STAGE = "filter"
BUILD_SUBDIR = "_build"
PLOT_FILE = "scores.png"
ONLY = (None, "rules", "scores")
_READ_BATCH = 1024
_PROC_CHUNK = 512


@dataclass(frozen=True)
class FilterConfig:
    """Options of ``postvl filter``.

    Attributes:
        inputs: one finished stage folder, or raw data that ``postvl build`` accepts (built into OUT/_build first).
        out: the stage folder to write.
        config: the filter YAML (rules per domain, ``scores`` section).
        only: ``rules`` (no model scores), ``scores`` (no rules) or ``None`` (both; scores only when the config
            names a backend).
        model: the scorer's model folder, overriding ``scores.model``.
        num_proc: processes for the stateless rules (deduplication stays in the main process).
        chunk_size: kept records per Parquet part.
        score_chunk: survivors collected before a scoring pass (the scorer batches inside it).
        plot: write OUT/scores.png.
        media_root: where media paths resolve (default: the input stage's manifest).
        format: raw input's format (as ``postvl build --format``).
        merge_timeout: seconds rank 0 waits for the other ranks.
    """

    inputs: tuple[str, ...]
    out: str
    config: str
    only: str | None = None
    model: str | None = None
    num_proc: int = 1
    chunk_size: int = 10_000
    score_chunk: int = 256
    plot: bool = True
    media_root: str | None = None
    format: str = "auto"
    merge_timeout: float = 24 * 3600

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", input_paths(self.inputs))
        errors = []
        if not self.inputs:
            errors.append("give an input (a stage folder or raw data)")
        if self.only not in ONLY:
            errors.append(f"only must be 'rules', 'scores' or unset, got {self.only!r}")
        for name in ("num_proc", "chunk_size", "score_chunk"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not Path(self.config).is_file():
            errors.append(f"config {self.config!r} is not a file (see configs/filters/)")
        if errors:
            raise ValueError("postvl filter: " + "; ".join(errors))


# --------------------------------------------------------------------------------------------------------------------
# Input


def prepare_input(cfg: FilterConfig, shard: Shard, *, progress: bool = True) -> Path:
    """The input as a finished stage folder: the given one, or raw data built into ``OUT/_build`` first."""
    from postvl.chatml.build import stage_from_inputs

    return stage_from_inputs(
        cfg.inputs,
        Path(cfg.out) / BUILD_SUBDIR,
        shard=shard,
        progress=progress,
        merge_timeout=cfg.merge_timeout,
        format=cfg.format,
        media_root=cfg.media_root,
    )


def stage_files(folder: Path) -> list[InputFile]:
    """The Parquet parts of a stage folder (kept SFT records, then preference records)."""
    files: list[InputFile] = []
    for sub in ("data", "preference"):
        if any((folder / sub).glob("part-*.parquet")):
            files += list_inputs([folder / sub])
    return files


RowRef = tuple[Any, int]
"""Where a record was read: its Arrow record batch and its row in it (kept records are written from there)."""

Item = tuple[dict[str, Any], str, RowRef | None]
"""``(record, source, where it was read)``: what the rules and the writer see of one input row."""


def iter_stage_records(files: list[InputFile], shard: Shard) -> Iterator[Item]:
    """``(record, source, (batch, row))`` for this rank's rows of the Parquet parts, ``meta`` decoded."""
    import pyarrow.parquet as pq

    index = 0
    for item in files:
        row = 0
        for batch in pq.ParquetFile(item.path).iter_batches(batch_size=_READ_BATCH):
            for in_batch, record in enumerate(batch.to_pylist()):
                if shard.owns(index):
                    # meta is decoded once here and shared by the rules, the scores and the writer; a meta that is
                    # not JSON stays a string and the policy rejects it as malformed_meta
                    meta = record.get("meta")
                    if isinstance(meta, str):
                        try:
                            record["meta"] = json.loads(meta)
                        except ValueError:
                            pass
                    yield record, f"{item.path}#{row}", (batch, in_batch)
                index += 1
                row += 1


PREFERENCE_SCOPE = "\x00preference-pair"


def rule_view(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """What the rules read: the record, or for a preference record its prompt + chosen answer as ``messages``."""
    if "chosen" not in record:
        return record
    return {
        "id": record.get("id"),
        "messages": list(record.get("prompt") or []) + list(record.get("chosen") or []),
        # Deduplication keys records by their text and images only: the marker keeps a pair apart from the SFT
        # record it was made from (same prompt, same chosen answer), so pairs are deduplicated among themselves.
        "images": [*(record.get("images") or []), PREFERENCE_SCOPE],
        "videos": record.get("videos"),
        "meta": record.get("meta"),
    }


# --------------------------------------------------------------------------------------------------------------------
# Rules


def load_policy_config(path: str | Path) -> PolicyConfig:
    return PolicyConfig.from_yaml(path)


_WORKER: Policy | None = None


def _init_worker(config_path: str) -> None:
    global _WORKER
    logging.basicConfig(level=logging.WARNING)
    _WORKER = Policy(load_policy_config(config_path))


def _stateless_chunk(views: list[Mapping[str, Any]]) -> list[str | None]:
    assert _WORKER is not None
    return _WORKER.check_stateless_batch([Sample(v) for v in views])


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


Decision = tuple[dict[str, Any], str, RowRef | None, str | None]
"""An ``Item`` and the rules' reason (``None``: kept by the rules)."""


def rule_decisions(cfg: FilterConfig, policy: Policy, items: Iterable[Item]) -> Iterator[Decision]:
    """``(record, source, ref, reason)`` for every record, in input order."""
    if cfg.num_proc == 1:
        pending: deque[Item] = deque()

        def views() -> Iterator[Mapping[str, Any]]:
            for item in items:
                pending.append(item)
                yield rule_view(item[0])

        for _, reason in RuleRunner(policy).run(views()):
            yield (*pending.popleft(), reason)
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads (tqdm, torch)
    chunks = _chunks(items, _PROC_CHUNK)
    with ctx.Pool(cfg.num_proc, initializer=_init_worker, initargs=(cfg.config,)) as pool:
        buffered: deque[tuple[list[Item], list[Mapping[str, Any]]]] = deque()

        def feed() -> Iterator[list[Mapping[str, Any]]]:
            for chunk in chunks:
                views = [rule_view(item[0]) for item in chunk]
                buffered.append((chunk, views))
                yield views

        for reasons in pool.imap(_stateless_chunk, feed()):
            chunk, views = buffered.popleft()
            samples = [Sample(view) for view in views]
            # the chunk's survivors are hashed together (near dedup) before they are checked one by one, in order
            policy.prepare_stateful([s for s, reason in zip(samples, reasons, strict=True) if reason is None])
            for item, sample, reason in zip(chunk, samples, reasons, strict=True):
                if reason is None:
                    reason = policy.check_stateful(sample)
                yield (*item, reason)


@contextlib.contextmanager
def fewer_gc_passes(gen0: int = 100_000) -> Iterator[None]:
    """Run the cyclic garbage collector's youngest generation every ``gen0`` allocations instead of every 700.

    Records are acyclic dicts and lists, freed by reference counting the moment they are done with; at the default
    pace the collector keeps walking them (and, every hundredth pass, everything alive in the process) for nothing,
    about a tenth of the rule stage's time. The old thresholds come back on the way out.
    """
    old = gc.get_threshold()
    gc.set_threshold(max(gen0, old[0]), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


# --------------------------------------------------------------------------------------------------------------------
# Counting


class Funnel:
    """Per step (``build`` for raw input, ``rules``, ``scores``) and per domain: records in, kept, and reasons; plus
    every score given."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, dict[str, Any]]] = {"build": {}, "rules": {}, "scores": {}}
        self.values: dict[str, list[float]] = {}
        self.value_domains: dict[str, list[str]] = {}

    def add(self, step: str, domain: str, reason: str | None) -> None:
        entry = self.steps[step].get(domain)
        if entry is None:
            entry = self.steps[step][domain] = {"in": 0, "kept": 0, "reasons": {}}
        entry["in"] += 1
        if reason is None:
            entry["kept"] += 1
        else:
            entry["reasons"][reason] = entry["reasons"].get(reason, 0) + 1

    def add_scores(self, domain: str, scores: Mapping[str, float]) -> None:
        for dim, value in scores.items():
            self.values.setdefault(dim, []).append(float(value))
            self.value_domains.setdefault(dim, []).append(domain)

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "values": self.values, "value_domains": self.value_domains}

    @classmethod
    def merged(cls, parts: Iterable[Mapping[str, Any]]) -> Funnel:
        out = cls()
        for part in parts:
            for step, domains in part["steps"].items():
                for domain, entry in domains.items():
                    mine = out.steps[step].setdefault(domain, {"in": 0, "kept": 0, "reasons": {}})
                    mine["in"] += entry["in"]
                    mine["kept"] += entry["kept"]
                    for reason, n in entry["reasons"].items():
                        mine["reasons"][reason] = mine["reasons"].get(reason, 0) + n
            for dim, values in part["values"].items():
                out.values.setdefault(dim, []).extend(values)
                out.value_domains.setdefault(dim, []).extend(part["value_domains"][dim])
        return out

    def summary(self) -> dict[str, Any]:
        """``funnel`` (per step: totals and per domain) and ``scores`` (per dimension: count, mean, quantiles)."""
        import numpy as np

        funnel: dict[str, Any] = {}
        for step, domains in self.steps.items():
            total = {"in": 0, "kept": 0, "reasons": {}}
            for entry in domains.values():
                total["in"] += entry["in"]
                total["kept"] += entry["kept"]
                for reason, n in entry["reasons"].items():
                    total["reasons"][reason] = total["reasons"].get(reason, 0) + n
            funnel[step] = total | {"rejected": total["in"] - total["kept"], "domains": dict(sorted(domains.items()))}
        scores: dict[str, Any] = {}
        for dim, values in sorted(self.values.items()):
            arr = np.asarray(values, dtype=np.float64)
            q = np.quantile(arr, [0.1, 0.5, 0.9])
            by_domain: dict[str, list[float]] = {}
            for domain, v in zip(self.value_domains[dim], values, strict=True):
                by_domain.setdefault(domain, []).append(v)
            scores[dim] = {
                "count": int(arr.size),
                "mean": round(float(arr.mean()), 4),
                "std": round(float(arr.std()), 4),
                "min": round(float(arr.min()), 4),
                "p10": round(float(q[0]), 4),
                "p50": round(float(q[1]), 4),
                "p90": round(float(q[2]), 4),
                "max": round(float(arr.max()), 4),
                "mean_by_domain": {d: round(sum(v) / len(v), 4) for d, v in sorted(by_domain.items())},
            }
        return {"funnel": funnel, "scores": scores}


def domain_of(meta: Mapping[str, Any]) -> str:
    domain = meta.get("domain") if isinstance(meta, Mapping) else None
    return domain if isinstance(domain, str) and domain else UNTAGGED


# --------------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class FilterResult:
    """What a run did: ``stats`` is ``stats.json`` on rank 0 (with ``funnel`` and ``scores``)."""

    out: Path
    stats: dict[str, Any]
    skipped: bool


class FilterRun:
    """One rank's pass: rules, then scores in chunks of survivors, written through a ``StageWriter``.

    Records that leave unchanged (kept by the rules and not scored) are written as the Arrow rows they were read
    from, a batch at a time; scored records gain ``meta.scores`` and are written from their dicts.
    """

    def __init__(self, cfg: FilterConfig, writer: StageWriter, scorer: Any, thresholds: ScoreThresholds | None):
        self.cfg = cfg
        self.writer = writer
        self.scorer = scorer
        self.thresholds = thresholds
        self.funnel = Funnel()
        self.built = False  # the input was built in-process: every record read also passed the build step
        self._pending: list[tuple[dict[str, Any], str, dict[str, Any]]] = []
        self._batch: Any = None  # the Arrow batch whose kept rows are being collected
        self._rows: list[int] = []
        self._row_domains: list[str | None] = []

    def run(self, decisions: Iterable[Decision], bar: Any = None) -> None:
        n = 0
        for n, (record, source, ref, reason) in enumerate(decisions, 1):
            meta = record.get("meta")
            if not isinstance(meta, dict):
                meta = {}
            domain = domain_of(meta)
            if self.built:
                self.funnel.add("build", domain, None)
            if self.cfg.only != "scores":
                self.funnel.add("rules", domain, reason)
            if reason is not None:
                self._reject(record, source, reason)
            elif self.scorer is None or "chosen" in record:
                self._keep_unchanged(record, ref, meta.get("domain"))
            else:
                self._pending.append((record, source, meta))
                if len(self._pending) >= self.cfg.score_chunk:
                    self.flush()
            if bar is not None and n % 256 == 0:
                bar.update(256)
        self._write_rows()
        self.flush()
        if bar is not None:
            bar.update(n % 256)

    def _keep_unchanged(self, record: dict[str, Any], ref: RowRef | None, domain: Any) -> None:
        if ref is None:
            self.writer.keep(record)
            return
        batch, row = ref
        if batch is not self._batch:
            self._write_rows()
            self._batch = batch
        self._rows.append(row)
        self._row_domains.append(domain if isinstance(domain, str) else None)

    def _write_rows(self) -> None:
        """Hand the collected kept rows of the current batch to the writer."""
        if self._rows:
            self.writer.keep_table(self._batch.take(self._rows), self._row_domains)
        self._batch, self._rows, self._row_domains = None, [], []

    def flush(self) -> None:
        """Score the collected survivors and write each as kept or ``low_score_*`` / ``unparseable_judgement``."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        results = self.scorer.score([record for record, _, _ in pending])
        raw = getattr(self.scorer, "last_raw", {})
        for (record, source, meta), result in zip(pending, results, strict=True):
            domain = domain_of(meta)
            if isinstance(result, str):
                self.funnel.add("scores", domain, result)
                detail = f"judge said: {raw.get(str(record.get('id')), '')[:500]!r}"
                self._reject(record, source, result, detail=detail)
                continue
            self.funnel.add_scores(domain, result)
            grown = dict(record)
            grown["meta"] = meta | {"scores": dict(meta.get("scores") or {}) | result}
            reason = self.thresholds.check(meta, result) if self.thresholds is not None else None
            self.funnel.add("scores", domain, reason)
            if reason is None:
                self.writer.keep(grown)
            else:
                self._reject(grown, source, reason, detail=json.dumps(result))

    def _reject(self, record: Mapping[str, Any], source: str, reason: str, detail: str = "") -> None:
        meta = record.get("meta")
        origin = str(meta.get("source", "")) if isinstance(meta, Mapping) else ""  # a bad meta stays a string
        self.writer.reject(reason, source=origin or source, record_id=record.get("id"), detail=detail, record=record)


def run_filter(
    cfg: FilterConfig, *, scorer: Any = None, shard: Shard | None = None, progress: bool = True
) -> FilterResult:
    """Run the stage on this rank's share; on rank 0 merge the funnel, draw the histograms, finish stats.json.

    Args:
        cfg: the stage options.
        scorer: a ready scorer (tests, or a caller that keeps a model loaded); default: built from the config's
            ``scores`` section unless ``cfg.only == "rules"`` or the section names no backend.
        shard: this process's rank and world size (default: from the environment).
        progress: show a progress bar on the main process.

    Raises:
        ValueError: a bad config (every problem at once), or ``--only scores`` without a scorer.
    """
    from tqdm.auto import tqdm

    shard = shard or shard_from_env()
    policy_config = load_policy_config(cfg.config)
    score_config = ScoreConfig.from_yaml(cfg.config)
    scoring = cfg.only != "rules" and (scorer is not None or score_config.backend is not None)
    if cfg.only == "scores" and not scoring:
        raise ValueError(f"--only scores but {cfg.config} sets no scores.backend: set it (and scores.model / --model)")
    model = cfg.model or score_config.model
    if scoring and scorer is None and not (model and Path(model).is_dir()):
        raise ValueError(
            f"scores.backend is {score_config.backend!r} but no model folder is given ({model!r}): pass --model DIR, "
            "set scores.model, or run the rules only with --only rules"
        )
    folder = prepare_input(cfg, shard, progress=progress)
    built = folder.resolve() == (Path(cfg.out) / BUILD_SUBDIR).resolve()
    media_root, pixels = stage_settings(folder)
    # a folder built here already resolved --media-root (and stored embedded media under itself): its manifest wins
    media_root = media_root if built else (cfg.media_root or media_root)
    files = stage_files(folder)
    resolved = {
        "options": dataclasses.asdict(cfg) | {"inputs": list(cfg.inputs)},
        "input_folder": str(folder),
        "media_root": media_root,
        "pixels": pixels,
        "rules": {f"{d or 'defaults'}/{s or ''}".rstrip("/"): t for (d, s), t in policy_config.rule_sets().items()},
        "scores": dataclasses.asdict(score_config) | {"enabled": scoring, "model": cfg.model or score_config.model},
    }
    resolved["options"].pop("merge_timeout")
    writer = StageWriter(
        cfg.out,
        stage=STAGE,
        config=resolved,
        inputs=files,
        shard=shard,
        chunk_size=cfg.chunk_size,
        merge_timeout=cfg.merge_timeout,
    )
    with writer:
        skipped = writer.done
        if not skipped:
            if scoring and scorer is None:
                scorer = _build_scorer(score_config, cfg, media_root, pixels)
            thresholds = ScoreThresholds(score_config) if scoring else None
            run = FilterRun(cfg, writer, scorer if scoring else None, thresholds)
            if built:  # the build's rejects are this stage's too: stats.json then counts every input record
                run.built = True
                from postvl.chatml.build import fold_build_rejects

                for domain, reason in fold_build_rejects(writer, folder, shard):
                    run.funnel.add("build", domain or UNTAGGED, reason)
            items = iter_stage_records(files, shard)
            # near dedup keeps most of its state on disk, in this rank's corner of the output folder
            spill = {"near_dedup": {"spill_dir": str(writer.out / "_shards" / f"near-dedup-{shard.rank:05d}")}}
            with contextlib.ExitStack() as stack:
                stack.enter_context(fewer_gc_passes())
                if cfg.only == "scores":
                    decisions: Iterable[Decision] = ((*item, None) for item in items)
                else:
                    policy = stack.enter_context(Policy(policy_config, spill))
                    decisions = rule_decisions(cfg, policy, items)
                bar = tqdm(desc="filter", unit="rec", disable=not (progress and shard.is_main) or None, mininterval=1)
                run.run(decisions, bar)
                bar.close()
            write_json_atomic(_funnel_path(writer, shard.rank), {"key": writer.key, "funnel": run.funnel.as_dict()})
        summary = None
        if shard.is_main:
            summary = _merge_funnels(writer).summary()
            if cfg.plot and summary["scores"]:
                plot_scores(_merge_funnels(writer), score_config, Path(cfg.out) / PLOT_FILE)
    stats = getattr(writer, "stats", None)
    if stats is not None and summary is not None:
        stats = stats | summary  # stats.json gains the funnel and score summaries, replaced atomically
        if built:
            from postvl.chatml.build import build_summary

            stats["build"] = build_summary(folder)
        write_json_atomic(Path(cfg.out) / "stats.json", stats)
    return FilterResult(Path(cfg.out), stats or writer.counts.as_dict(), skipped)


def _build_scorer(score_config: ScoreConfig, cfg: FilterConfig, media_root: str | None, pixels: Any) -> Any:
    from postvl.filtering.scoring import build_scorer
    from postvl.media import PixelConfig

    return build_scorer(
        score_config,
        model=cfg.model,
        media_root=media_root,
        pixels=PixelConfig(**pixels) if pixels else None,
    )


def _funnel_path(writer: StageWriter, rank: int) -> Path:
    return writer.out / "_shards" / f"funnel-{rank:05d}.json"


def _merge_funnels(writer: StageWriter) -> Funnel:
    deadline = time.time() + writer.merge_timeout
    paths = [_funnel_path(writer, r) for r in range(writer.shard.world_size)]
    while True:
        parts = [json.loads(p.read_text()) for p in paths if p.is_file()]
        parts = [p["funnel"] for p in parts if p.get("key") == writer.key]
        if len(parts) == len(paths):
            return Funnel.merged(parts)
        if time.time() > deadline:
            raise TimeoutError(f"rank 0 waited {writer.merge_timeout:.0f}s for every rank's funnel in {writer.out}")
        time.sleep(0.5)


def plot_scores(funnel: Funnel, score_config: ScoreConfig, path: Path) -> None:
    """One histogram per score dimension, with the default minimum as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted(funnel.values)
    cols = min(4, len(dims))
    rows = (len(dims) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, dim in zip(axes.flat, dims, strict=False):
        ax.hist(funnel.values[dim], bins=min(40, max(5, len(set(funnel.values[dim])))), color="tab:blue")
        minimum = score_config.min.get(dim)
        if minimum is not None:
            ax.axvline(minimum, color="tab:red", linestyle="--", label=f"min {minimum:g}")
            ax.legend(fontsize="small")
        ax.set(title=dim, xlabel="score", ylabel="records")
    for ax in list(axes.flat)[len(dims) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_table(stats: Mapping[str, Any], out: str) -> Any:
    """A rich table: the funnel per step and domain, the reasons, the score summaries."""
    from rich.table import Table

    table = Table(title=f"postvl filter -> {out}")
    for name, justify in (("", "left"), ("in", "right"), ("kept", "right"), ("rejected", "right"), ("", "left")):
        table.add_column(name, justify=justify)
    table.add_row("all", f"{stats['total']:,}", f"{stats['kept']:,}", f"{stats['rejected']:,}", "", style="bold")
    for step, entry in (stats.get("funnel") or {}).items():
        if not entry["in"]:
            continue
        table.add_section()
        table.add_row(f"{step}", f"{entry['in']:,}", f"{entry['kept']:,}", f"{entry['rejected']:,}", "", style="bold")
        for domain, d in entry["domains"].items():
            table.add_row(f"  domain {domain}", f"{d['in']:,}", f"{d['kept']:,}", f"{d['in'] - d['kept']:,}", "")
        for reason, n in sorted(entry["reasons"].items(), key=lambda kv: -kv[1]):
            table.add_row(f"  {reason}", "", "", f"{n:,}", "")
    for dim, s in (stats.get("scores") or {}).items():
        table.add_section()
        table.add_row(
            f"score {dim}", f"{s['count']:,}", "", "", f"mean {s['mean']:g}  p10 {s['p10']:g}  p50 {s['p50']:g}"
        )
    timings = stats.get("timings") or {}
    rate = timings.get("records_per_second")
    table.caption = f"{timings.get('seconds', 0):.1f} s" + (f", {rate:,.0f} records/s" if rate else "")
    return table
