"""The build loop: raw rows -> format adapter -> validation -> token count -> stage folder.

``run_build(cfg)`` streams the inputs (this rank's share under ``accelerate launch``), turns each row into a contract
record or a rejection with a reason, and writes them with ``StageWriter``. When an input can carry embedded media
(Parquet or saved datasets with binary columns, ``hf://`` datasets), the build writes them into the content-addressed
store ``OUT/media/`` (``postvl.media_store``); the output folder is then the media root of its records, media files
are linked into the store too, and the manifest's ``media`` entry says where the media came from.

With ``num_proc > 1`` the per-row work (adapter, media probing and storing, tokenization) runs in a process pool over
chunks of rows, in input order; counting, the duplicate-id check and writing stay in the main process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postvl.chatml.formats import FORMATS, dataset_info_entries, mapping_options, record_id, to_draft
from postvl.chatml.validate import BuildContext, finish_record
from postvl.families import FAMILIES, LEGACY_FAMILY, Family, get_family
from postvl.io import (
    HUB_PREFIX,
    InputFile,
    RawRow,
    Shard,
    StageWriter,
    iter_rows,
    list_inputs,
    may_embed_media,
    shard_from_env,
)
from postvl.media import PixelConfig
from postvl.media_store import DEFAULT_MAX_IMAGE_PIXELS, STORE_DIR, MediaStore, store_summary
from postvl.records import RecordError

logger = logging.getLogger(__name__)

STAGE = "build"
_CHUNK_ROWS = 256


@dataclass(frozen=True)
class BuildConfig:
    """Options of ``postvl build`` (see ``postvl build --help``).

    Attributes:
        inputs: files, globs, folders, saved datasets, ``hf://OWNER/NAME[:CONFIG][@SPLIT]`` datasets, or LLaMA-Factory
            ``dataset_info.json`` (``:name,name`` picks entries).
        out: the stage folder to write.
        format: one of ``FORMATS``; ``auto`` detects it per row.
        media_root: folder media paths are resolved against (default: the inputs' common folder).
        model: a model folder whose processor gives pixel limits and whose tokenizer counts ``num_tokens``; its
            family (``postvl.families``) decides rendering, token counts and the box convention.
        family: the family to build for without a model (``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``,
            ``qwen3_vl_moe``); with ``model`` it must be the model's. Neither: Qwen2.5-VL, written into every
            record's ``meta["family"]`` and the manifest.
        min_pixels, max_pixels, fps, max_frames: override the processor's (or the family's default) limits.
        allow_urls: keep http(s) media references instead of rejecting them.
        num_proc: worker processes for the per-record work.
        chunk_size: kept records per Parquet part.
        streaming: read ``hf://`` datasets with ``load_dataset(..., streaming=True)``.
        max_image_pixels: images whose header is larger are rejected (``media_too_large``) before any decoding.
        mapping: a YAML file with a LLaMA-Factory-style column mapping (``formatting``, ``ranking``, ``columns``,
            ``tags``) applied to every input that has no ``dataset_info.json`` entry.
        columns, tags: the same mapping's ``columns`` / ``tags`` (override the file's keys).
        formatting, ranking: the same mapping's ``formatting`` (``sharegpt`` | ``alpaca``) and ``ranking``.
        enable_thinking: a thinking family's mode (Qwen3.5). ``True`` / unset keeps each assistant turn's reasoning
            (a ``<think>...</think>`` prefix), which trains inside the think block; ``False`` drops it, so records
            train on answers alone (``<think>\n\n</think>\n\n{answer}``, what the no-think prompt prefills) and
            ``meta["reasoning_dropped"]`` counts the turns that had some. Other families refuse it.
    """

    inputs: tuple[str, ...]
    out: str
    format: str = "auto"
    media_root: str | None = None
    model: str | None = None
    family: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    fps: float | None = None
    max_frames: int | None = None
    allow_urls: bool = False
    num_proc: int = 1
    chunk_size: int = 10_000
    streaming: bool = False
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    mapping: str | None = None
    columns: Mapping[str, str] | None = None
    tags: Mapping[str, str] | None = None
    formatting: str | None = None
    ranking: bool | None = None
    enable_thinking: bool | None = None

    def __post_init__(self) -> None:
        errors = []
        if self.max_image_pixels < 1:
            errors.append(f"max_image_pixels must be >= 1, got {self.max_image_pixels}")
        if self.mapping is not None and not Path(self.mapping).is_file():
            errors.append(f"mapping {self.mapping!r} is not a file")
        else:
            try:
                self.adapter_options()
            except ValueError as err:
                errors.append(str(err))
        if not self.inputs:
            errors.append("give at least one input")
        if self.format not in FORMATS:
            errors.append(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.num_proc < 1:
            errors.append(f"num_proc must be >= 1, got {self.num_proc}")
        if self.chunk_size < 1:
            errors.append(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.media_root is not None and not Path(self.media_root).is_dir():
            errors.append(f"media_root {self.media_root!r} is not a folder")
        if self.model is not None and not Path(self.model).is_dir():
            errors.append(f"model {self.model!r} is not a local folder (save it with save_pretrained first)")
        if self.family is not None and self.family not in FAMILIES:
            errors.append(f"family {self.family!r} is not one of {', '.join(FAMILIES)}")
        if errors:
            raise ValueError("postvl build: " + "; ".join(errors))

    def adapter_options(self) -> dict[str, Any] | None:
        """The column mapping (file, then command-line keys) as adapter options; ``None`` without one."""
        given: dict[str, Any] = {}
        if self.mapping is not None:
            import yaml

            loaded = yaml.safe_load(Path(self.mapping).read_text()) or {}
            unknown = sorted(set(loaded) - {"formatting", "ranking", "columns", "tags"})
            if unknown:
                raise ValueError(
                    f"mapping {self.mapping}: unknown keys {unknown}; use formatting, ranking, columns, tags"
                )
            given = dict(loaded)
        for key in ("columns", "tags"):
            value = getattr(self, key)
            if value:
                given[key] = {**(given.get(key) or {}), **dict(value)}
        if self.formatting is not None:
            given["formatting"] = self.formatting
        if self.ranking is not None:
            given["ranking"] = self.ranking
        return mapping_options(**given) if given else None


@dataclass
class BuildResult:
    """What a build did; ``stats`` is the merged ``stats.json`` on rank 0 and this rank's counts elsewhere."""

    out: Path
    stats: dict[str, Any]
    skipped: bool = False


# --------------------------------------------------------------------------------------------------------------------
# Inputs


def resolve_inputs(
    paths: Iterable[str], *, streaming: bool = False, options: Mapping[str, Any] | None = None
) -> list[InputFile]:
    """``list_inputs`` plus LLaMA-Factory registries: ``dataset_info.json`` (every entry: local files and
    ``hf_hub_url`` datasets), ``dataset_info.json:a,b`` (the named entries) and a folder holding a
    ``dataset_info.json``. ``options`` (a column mapping) go to every input without a registry entry."""
    files: list[InputFile] = []
    extra = {"streaming": streaming}
    for raw in paths:
        if str(raw).startswith(HUB_PREFIX):
            files += [dataclasses.replace(f, options=dict(options or {}), **extra) for f in list_inputs([raw])]
            continue
        path, _, names = str(raw).partition(".json:")
        path = path + ".json" if names else str(raw)
        p = Path(path)
        info = p if p.name == "dataset_info.json" else p / "dataset_info.json"
        if info.is_file() and not (
            p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())
        ):
            for data, entry in dataset_info_entries(info, names.split(",") if names else None):
                files += [dataclasses.replace(f, options=entry, **extra) for f in list_inputs([data])]
        else:
            files += [dataclasses.replace(f, options=dict(options or {})) for f in list_inputs([path])]
    return files


def default_media_root(inputs: list[InputFile]) -> Path | None:
    """The deepest folder that holds every local input (``None`` when all are ``hf://``); each input's relative
    media paths start from its own folder."""
    folders = [str(Path(f.path).resolve().parent) for f in inputs if f.kind != "hf"]
    return Path(os.path.commonpath(folders)) if folders else None


def resolve_family(cfg: BuildConfig, processor: Any | None = None) -> Family:
    """The family records are built for: the model's (``--family`` must agree), else ``--family``, else Qwen2.5-VL.

    Raises:
        UnsupportedFamilyError: the model is of no supported family.
        ValueError: ``--family`` contradicts the model.
    """
    if cfg.model is not None:
        family = get_family(Path(cfg.model))
        if processor is not None and get_family(processor).template_file != family.template_file:
            raise ValueError(f"{cfg.model}: the processor is {type(processor).__name__}, the model {family.title}")
        if cfg.family is not None and get_family(cfg.family) is not family:
            raise ValueError(f"--family {cfg.family} but {cfg.model} is a {family.title} model ({family.name})")
        return family
    return get_family(cfg.family or LEGACY_FAMILY)


def resolve_pixels(cfg: BuildConfig, processor: Any | None) -> PixelConfig:
    overrides = {
        "min_pixels": cfg.min_pixels,
        "max_pixels": cfg.max_pixels,
        "fps": cfg.fps,
        "max_frames": cfg.max_frames,
    }
    family = resolve_family(cfg, processor)
    if processor is not None:
        # A Qwen3-VL MoE folder's processor reads as dense Qwen3-VL; the model's own name is what records keep.
        return dataclasses.replace(PixelConfig.from_processor(processor, **overrides), family=family.name)
    return family.pixel_config(**overrides)


@dataclass(frozen=True)
class MediaRoots:
    """Where a build's media live.

    Attributes:
        media_root: the root the records' paths are relative to (saved in the manifest; later stages use it).
        files_root: the folder media files are resolved and confined in (``None``: only ``hf://`` inputs and no
            ``--media-root``, so a path in a row cannot be resolved).
        store: embedded media are written into ``media_root / "media"``; then ``media_root`` is the output folder.
    """

    media_root: str
    files_root: str | None
    store: bool


def media_roots(cfg: BuildConfig, inputs: list[InputFile]) -> MediaRoots:
    """The store is on when an input can carry embedded media; the output folder then is the records' media root."""
    given = Path(cfg.media_root).resolve() if cfg.media_root else default_media_root(inputs)
    files_root = str(given) if given is not None else None
    if any(may_embed_media(item) for item in inputs):
        return MediaRoots(media_root=str(Path(cfg.out).resolve()), files_root=files_root, store=True)
    if files_root is None:  # unreachable: only hf:// inputs always embed
        raise ValueError("postvl build: no local input and no --media-root")
    return MediaRoots(media_root=files_root, files_root=files_root, store=False)


# --------------------------------------------------------------------------------------------------------------------
# Per-record work


@dataclass
class Outcome:
    """A built record, or a rejection with everything ``rejected.jsonl`` needs."""

    source: str
    record: dict[str, Any] | None = None
    reason: str | None = None
    detail: str = ""
    record_id: str | None = None
    payload: Any = None
    raw: str | None = None


class RecordBuilder:
    """Turns raw rows into records; one per process (holds the media probe cache and the tokenizer)."""

    def __init__(self, cfg: BuildConfig, roots: MediaRoots, pixels: PixelConfig) -> None:
        self.cfg = cfg
        store = MediaStore(Path(roots.media_root), cfg.max_image_pixels) if roots.store else None
        self.ctx = BuildContext(
            media_root=roots.media_root,
            allow_urls=cfg.allow_urls,
            pixels=pixels,
            store=store,
            files_root=roots.files_root,
            max_image_pixels=cfg.max_image_pixels,
        )
        self.tokenizer = load_tokenizer(cfg.model) if cfg.model else None
        self._count_tokens = None
        if self.tokenizer is not None:
            from postvl.chatml.render import count_tokens

            self._count_tokens = count_tokens
        self.family = get_family(pixels.family or LEGACY_FAMILY)

    def build(self, raw: RawRow) -> Outcome:
        if raw.error:
            return Outcome(raw.source, reason=raw.error, detail=raw.detail, raw=raw.raw)
        options = raw.input.options if raw.input else {}
        rid = record_id(raw.data, raw.source) if isinstance(raw.data, dict) else None
        try:
            draft = to_draft(raw.data, fmt=self.cfg.format, source=raw.source, options=options)
            record, sizes = finish_record(draft, self.ctx, base=self.base(raw))
            if self.cfg.enable_thinking is False:
                record = _without_reasoning(record)
            record["num_tokens"] = self.num_tokens(record, sizes.image_tokens, sizes.video_tokens)
        except RecordError as err:
            payload = printable(raw.data)
            return Outcome(raw.source, reason=err.reason, detail=err.detail, record_id=rid, payload=payload)
        return Outcome(raw.source, record=record, record_id=record["id"])

    def base(self, raw: RawRow) -> str | None:
        """Relative media paths start from the media root when one was given, else from the input file's folder."""
        if self.cfg.media_root or raw.input is None or raw.input.kind == "hf":
            return None
        path = Path(raw.input.path)
        return str(path if raw.input.kind == "arrow" else path.parent)

    def num_tokens(self, record: dict[str, Any], image_tokens: list[int], video_tokens: list[int]) -> int | None:
        """Text + vision tokens of the rendered record (the longer side of a preference pair); ``None`` without a
        model or when a URL image was not probed."""
        if self._count_tokens is None or -1 in image_tokens or -1 in video_tokens:
            return None
        if "chosen" in record:
            return max(
                self._count_tokens(
                    record["prompt"] + side, image_tokens, video_tokens, self.tokenizer, family=self.family
                )
                for side in (record["chosen"], record["rejected"])
            )
        return self._count_tokens(record["messages"], image_tokens, video_tokens, self.tokenizer, family=self.family)


def _without_reasoning(record: dict[str, Any]) -> dict[str, Any]:
    from postvl.chatml.render import drop_reasoning

    out, dropped = dict(record), 0
    for key in ("messages", "chosen", "rejected"):
        if key in record:
            out[key], n = drop_reasoning(record[key])
            dropped += n
    out["meta"] = {**(record.get("meta") or {}), "reasoning_dropped": dropped}
    return out


def load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def load_processor_for_pixels(model: str) -> Any:
    from postvl.modeling import load_processor

    return load_processor(model)


def printable(value: Any) -> Any:
    """A raw row for ``rejected.jsonl``: embedded bytes replaced by their size and hash, PIL images by a summary."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        import hashlib

        return f"<{len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()[:16]}>"
    if isinstance(value, dict):
        return {k: printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    if hasattr(value, "size") and hasattr(value, "mode") and hasattr(value, "save"):
        return f"<PIL image {value.mode} {value.size[0]}x{value.size[1]}>"
    return value


_WORKER: RecordBuilder | None = None


def _init_worker(cfg: BuildConfig, roots: MediaRoots, pixels: PixelConfig) -> None:
    global _WORKER
    logging.basicConfig(level=logging.WARNING)
    _WORKER = RecordBuilder(cfg, roots, pixels)


def _build_chunk(rows: list[RawRow]) -> tuple[list[Outcome], dict[str, int]]:
    assert _WORKER is not None
    outcomes = [_WORKER.build(row) for row in rows]
    store = _WORKER.ctx.store
    counts = store.counts.as_dict() if store is not None else {}
    if store is not None:
        store.counts = type(store.counts)()  # handed to the parent with this chunk
    return outcomes, counts


def _chunks(rows: Iterable[RawRow], size: int) -> Iterator[list[RawRow]]:
    chunk: list[RawRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _outcomes(
    cfg: BuildConfig, rows: Iterable[RawRow], roots: MediaRoots, pixels: PixelConfig, store_counts: dict[str, int]
) -> Iterator[Outcome]:
    """Built outcomes in input order; ``store_counts`` accumulates what the media store did."""
    if cfg.num_proc == 1:
        builder = RecordBuilder(cfg, roots, pixels)
        try:
            for row in rows:
                yield builder.build(row)
        finally:
            if builder.ctx.store is not None:
                _add(store_counts, builder.ctx.store.counts.as_dict())
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads (tqdm, tokenizers)
    with ctx.Pool(cfg.num_proc, initializer=_init_worker, initargs=(cfg, roots, pixels)) as pool:
        for chunk, counts in pool.imap(_build_chunk, _chunks(rows, _CHUNK_ROWS)):
            _add(store_counts, counts)
            yield from chunk


def _add(total: dict[str, int], more: Mapping[str, int]) -> None:
    for key, n in more.items():
        total[key] = total.get(key, 0) + n


# --------------------------------------------------------------------------------------------------------------------
# The run


def run_build(cfg: BuildConfig, *, shard: Shard | None = None, progress: bool = True) -> BuildResult:
    """Build a stage folder from ``cfg.inputs``; returns the merged stats (on rank 0).

    One bad record never stops the run: it becomes a line of ``rejected.jsonl`` with its reason.
    """
    from tqdm.auto import tqdm

    shard = shard or shard_from_env()
    inputs = resolve_inputs(cfg.inputs, streaming=cfg.streaming, options=cfg.adapter_options())
    roots = media_roots(cfg, inputs)
    media_root = roots.media_root
    processor = load_processor_for_pixels(cfg.model) if cfg.model else None
    pixels = resolve_pixels(cfg, processor)
    family = get_family(pixels.family or LEGACY_FAMILY)
    if cfg.enable_thinking is not None and not family.thinking:
        raise ValueError(f"postvl build: enable_thinking is set but {family.title} has no thinking mode")
    resolved = dataclasses.asdict(cfg) | {"media_root": media_root, "pixels": dataclasses.asdict(pixels)}
    resolved["inputs"] = list(cfg.inputs)
    if roots.store:
        resolved["media_files_root"] = roots.files_root
    writer = StageWriter(
        cfg.out,
        stage=STAGE,
        config=resolved,
        inputs=inputs,
        shard=shard,
        chunk_size=cfg.chunk_size,
        finish_manifest=_media_manifest(roots) if roots.store else None,
    )
    with writer:
        skipped = writer.done
        if not skipped:
            logger.info(
                "building %d input(s) into %s (media root %s, rank %d/%d)",
                len(inputs),
                cfg.out,
                media_root,
                shard.rank,
                shard.world_size,
            )
            seen: set[str] = set()
            rows = iter_rows(inputs, shard)
            bar = tqdm(desc="build", unit="rec", disable=not (progress and shard.is_main) or None, mininterval=1.0)
            store_counts: dict[str, int] = {}
            for outcome in _outcomes(cfg, rows, roots, pixels, store_counts):
                bar.update()
                _write(writer, outcome, seen)
            bar.close()
            writer.extra["media"] = store_counts
    stats = getattr(writer, "stats", None) or writer.counts.as_dict()
    return BuildResult(out=Path(cfg.out), stats=stats, skipped=skipped)


def _media_manifest(roots: MediaRoots) -> Any:
    """The manifest's ``media`` entry: the store, what was embedded or linked (all ranks), files on disk."""

    def finish(manifest: dict[str, Any], extras: list[dict[str, Any]]) -> None:
        totals: dict[str, int] = {}
        for extra in extras:
            _add(totals, extra.get("media") or {})
        manifest["media"] = {
            "store": STORE_DIR,
            "media_root": roots.media_root,
            "files_root": roots.files_root,
            "embedded_references": totals.get("embedded", 0),
            "file_references": totals.get("linked", 0),
            **{f"store_{k}": v for k, v in store_summary(roots.media_root).items()},
        }

    return finish


def _write(writer: StageWriter, outcome: Outcome, seen: set[str]) -> None:
    if outcome.record is not None and outcome.record_id in seen:
        outcome = Outcome(
            outcome.source,
            reason="duplicate_id",
            detail=f"id {outcome.record_id!r} was kept earlier in this build",
            record_id=outcome.record_id,
            payload=outcome.record,
        )
    if outcome.record is not None:
        seen.add(outcome.record["id"])
        writer.keep(outcome.record)
        return
    writer.reject(
        outcome.reason or "unknown_format",
        source=outcome.source,
        record_id=outcome.record_id,
        detail=outcome.detail,
        record=outcome.payload if outcome.raw is None else None,
        raw=outcome.raw,
    )


def stage_from_inputs(
    inputs: Iterable[str],
    out: str | Path,
    *,
    shard: Shard | None = None,
    progress: bool = True,
    merge_timeout: float = 86400.0,
    **build_options: Any,
) -> Path:
    """A later stage's ``IN`` as one finished stage folder: the stage folder given, or raw data built into ``out``.

    Every stage after ``build`` accepts a stage folder or any input ``postvl build`` accepts; raw data is built here
    (this rank's shard; rank 0 merges) with ``build_options`` (``BuildConfig`` fields such as ``format``,
    ``media_root``, ``model``, pixel limits). The stage then folds the build's rejects into its own
    (``fold_build_rejects``) when the returned folder is ``out``.

    Raises:
        ValueError: several stage folders, or stage folders mixed with raw data.
    """
    from postvl.io import is_stage_folder, wait_for_file

    inputs = list(inputs)
    stages = [is_stage_folder(p) for p in inputs]
    if stages and all(stages):
        if len(inputs) > 1:
            raise ValueError(f"give one stage folder, got {len(inputs)}: {inputs}")
        return Path(inputs[0])
    if any(stages):
        raise ValueError(f"inputs mix stage folders and raw data: {inputs}; give one stage folder or raw data")
    logger.info("building the raw input into %s first", out)
    run_build(BuildConfig(inputs=tuple(inputs), out=str(out), **build_options), shard=shard, progress=progress)
    wait_for_file(Path(out) / "stats.json", merge_timeout)  # rank 0 writes it once every rank's shard is done
    return Path(out)


def fold_build_rejects(writer: StageWriter, built: Path, shard: Shard) -> list[tuple[str | None, str]]:
    """Count this rank's share of an in-process build's rejects as rejects of the stage that ``writer`` writes.

    A stage given raw input builds it into ``OUT/_build`` first (``stage_from_inputs``); folding the build's
    ``rejected.jsonl`` into the stage's own makes the stage's ``stats.json`` account for every input record
    (``total`` = the input's records) and its ``rejected.jsonl`` hold every rejected one, each line keeping
    ``stage: build``. Rank ``r`` takes lines ``i % world_size == r``, so the ranks fold each line once.

    Returns:
        ``(meta.domain of the raw row or None, reason)`` of each line folded, for per-domain counts.
    """
    import json

    folded: list[tuple[str | None, str]] = []
    with (built / "rejected.jsonl").open(encoding="utf-8") as f:
        for i, text in enumerate(f):
            if not shard.owns(i):
                continue
            line = json.loads(text)
            writer.reject(
                line["reason"],
                source=line.get("source", ""),
                record_id=line.get("id"),
                detail=line.get("detail", ""),
                record=line.get("record"),
                raw=line.get("raw"),
                stage=line.get("stage") or STAGE,
            )
            record = line.get("record")
            meta = record.get("meta") if isinstance(record, dict) else None
            domain = meta.get("domain") if isinstance(meta, dict) else None
            folded.append((domain if isinstance(domain, str) and domain else None, line["reason"]))
    return folded


def build_summary(built: Path) -> dict[str, Any]:
    """The in-process build's counts, for a later stage's ``stats.json`` (``build``: folder, total, kept, reasons)."""
    import json

    stats = json.loads((built / "stats.json").read_text())
    keys = ("total", "kept", "rejected", "reasons", "domains")
    return {"folder": str(built)} | {k: stats[k] for k in keys if k in stats}
