"""The tagging stage: config, input, the tagging loop, the open-tag vocabulary, statistics and the plot.

``run_tagging(cfg)`` reads a stage folder (or builds raw input first, in-process, into ``OUT/_build``), tags every
record with one backend and writes:

    OUT/data/part-*.parquet         SFT records, meta + {domain, subcategory, tags, tag_confidence, tag_backend}
    OUT/preference/part-*.parquet   preference records, tagged by their prompt and chosen answer
    OUT/rejected.jsonl              records that could not be tagged (unparseable_tags, unknown_domain, ...)
    OUT/tag_stats.json              per domain, per subcategory, confidence histogram, open-tag vocabulary
    OUT/tag_distribution.png        bar chart of domains and subcategories
    OUT/stats.json, manifest.json   the stage contract (stats.json also counts per subcategory)

Backends: ``embedding`` (``EmbeddingTagger``, offline), ``classifier`` (a model trained by ``postvl tag train``,
``postvl.instag.classifier``) and ``llm`` (a VLM through the shared generator, ``postvl.instag.llm``, which also
writes ``meta.tag_explanations``). The ``llm`` backend runs in two passes: the first writes every record with its
normalised open tags to ``OUT/_raw_tags`` (a stage folder of its own, resumable); once every rank has finished it,
the dataset's tag vocabulary is built (``postvl.instag.normalize``: stem and semantic aggregation, frequency filter)
and the second pass, which is cheap, writes ``OUT`` with the merged, kept tags.

``meta`` grows and is never rewritten: when a record already carried different ``domain`` / ``subcategory`` /
``tags`` / ``tag_confidence`` values (from its source, or an earlier tagging run), they move to
``meta.input_tags``. ``total == kept + rejected`` holds over the input's kept SFT and preference records.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postvl.io import (
    InputFile,
    Shard,
    StageWriter,
    fingerprint_inputs,
    input_paths,
    list_inputs,
    read_stage,
    shard_from_env,
    stage_settings,
    wait_for_file,
    write_json_atomic,
)
from postvl.records import RecordError

logger = logging.getLogger(__name__)

STAGE = "tag"
BACKENDS = ("embedding", "llm", "classifier")
BUILD_SUBDIR = "_build"
RAW_SUBDIR = "_raw_tags"
PLOT_FILE = "tag_distribution.png"
TAG_STATS_FILE = "tag_stats.json"
TAG_KEYS = ("domain", "subcategory", "tags", "tag_confidence", "tag_explanations", "tag_inferred")
KINDS = ("sft", "preference")


@dataclass(frozen=True)
class TagConfig:
    """Options of ``postvl tag`` (each one is also a ``--flag``).

    Attributes:
        inputs: one stage folder, or raw files / folders that ``postvl build`` accepts (built into OUT/_build).
        out: the stage folder to write.
        backend: ``embedding``, ``llm`` or ``classifier``.
        taxonomy: the taxonomy YAML (default: the repository's ``configs/taxonomy.yaml``).
        model: llm: the VLM (a local folder, or a hub id where the hub is reachable); classifier: a folder written
            by ``postvl tag train``.
        encoder: sentence encoder of the embedding backend, of the llm's fallback and of tag merging.
        batch_size: records tagged per call.
        generator: llm: ``vllm`` or ``transformers`` (``postvl.generation``).
        temperature, max_tokens, seed: llm: sampling of the first attempt (temperature 0: greedy).
        retries, retry_temperature: llm: further attempts for answers that do not parse or map, and their temperature.
        fallback: llm: ``embedding`` (the domain's best subcategory when the model names only a valid domain) or
            ``none`` (such records are rejected as ``unknown_subcategory``).
        match_cutoff: llm: least difflib ratio of a fuzzy taxonomy-id match.
        max_images, max_videos: llm: media items of a record shown to the model.
        max_chars: llm: characters of the question and of the answer in the prompt.
        max_tags: llm: most open tags per record.
        describe_taxonomy: llm: list the taxonomy with descriptions (``False``: ids only, a shorter prompt).
        min_tag_count: llm: alpha of InsTag's frequency filter: merged tags seen in fewer records are dropped.
        merge_similar, merge_threshold: llm: merge tags whose embeddings have a cosine similarity >= the threshold.
        max_model_len, dtype, vllm_engine: llm: engine settings (``vllm_engine``: more ``vllm.LLM`` arguments).
        media_root: where media paths resolve (default: the input stage's manifest).
        min_pixels, max_pixels, format: for raw input, the build's options.
        chunk_size: records per Parquet part.
        plot: write OUT/tag_distribution.png.
        merge_timeout: seconds rank 0 waits for the other ranks.
    """

    inputs: tuple[str, ...]
    out: str
    backend: str = "embedding"
    taxonomy: str | None = None
    model: str | None = None
    encoder: str = "use-multilingual"
    batch_size: int = 256
    generator: str = "vllm"
    temperature: float = 0.0
    max_tokens: int = 512
    seed: int = 0
    retries: int = 2
    retry_temperature: float = 0.7
    fallback: str = "embedding"
    match_cutoff: float = 0.8
    max_images: int = 1
    max_videos: int = 0
    max_chars: int = 2000
    max_tags: int = 10
    describe_taxonomy: bool = True
    min_tag_count: int = 1
    merge_similar: bool = True
    merge_threshold: float = 0.9
    max_model_len: int = 4096
    dtype: str = "bfloat16"
    vllm_engine: Mapping[str, Any] = field(default_factory=dict)
    media_root: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    format: str = "auto"
    chunk_size: int = 10_000
    plot: bool = True
    merge_timeout: float = 24 * 3600

    def __post_init__(self) -> None:
        from postvl.instag.embedding import ENCODERS

        object.__setattr__(self, "inputs", input_paths(self.inputs))
        errors = []
        if not self.inputs:
            errors.append("give an input (a stage folder or raw data)")
        if self.backend not in BACKENDS:
            errors.append(f"backend {self.backend!r} is not one of {BACKENDS}{_did_you_mean(self.backend, BACKENDS)}")
        if self.backend in ("llm", "classifier") and not self.model:
            what = "the VLM's local folder" if self.backend == "llm" else "a folder written by `postvl tag train`"
            errors.append(f"backend {self.backend!r} needs --model: {what}")
        if self.backend == "classifier" and self.model and not Path(self.model).is_dir():
            errors.append(f"model {self.model!r} is not a local folder (train one with `postvl tag train`)")
        if self.taxonomy and not Path(self.taxonomy).is_file():
            errors.append(f"taxonomy {self.taxonomy!r} does not exist")
        if self.encoder not in ENCODERS:
            errors.append(f"encoder {self.encoder!r} is not one of {sorted(ENCODERS)}")
        if self.generator not in ("vllm", "transformers"):
            errors.append(f"generator {self.generator!r} is not 'vllm' or 'transformers'")
        if self.fallback not in ("embedding", "none"):
            errors.append(f"fallback {self.fallback!r} is not 'embedding' or 'none'")
        for name in ("batch_size", "max_tokens", "max_chars", "max_tags", "min_tag_count", "chunk_size"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.retries < 0 or self.max_images < 0 or self.max_videos < 0:
            errors.append(
                f"retries, max_images, max_videos must be >= 0, got {self.retries}, {self.max_images}, "
                f"{self.max_videos}"
            )
        if not 0 < self.match_cutoff <= 1 or not 0 < self.merge_threshold <= 1:
            errors.append(
                f"match_cutoff and merge_threshold must be in (0, 1], got {self.match_cutoff}, {self.merge_threshold}"
            )
        if self.temperature < 0 or self.retry_temperature < 0:
            errors.append(f"temperatures must be >= 0, got {self.temperature}, {self.retry_temperature}")
        if self.backend == "llm" and self.max_tokens >= self.max_model_len:
            errors.append(
                f"max_tokens {self.max_tokens} leaves no room for the prompt in max_model_len "
                f"{self.max_model_len}: raise max_model_len or lower max_tokens"
            )
        if errors:
            raise ValueError("postvl tag: " + "; ".join(errors))


def load_config(path: str | Path | None = None, **overrides: Any) -> TagConfig:
    """A ``TagConfig`` from a YAML file (optional) with ``overrides`` (those not ``None``) on top.

    Raises:
        ValueError: an unknown key (the message names the closest one), a missing input or output, a bad value.
    """
    from postvl.io import load_stage_config

    return load_stage_config(TagConfig, path, overrides, required=("inputs", "out"), command="postvl tag")


def _did_you_mean(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------------------------------------------------
# Input


@dataclass(frozen=True)
class StageInput:
    """The stage folder tagged, its data files (fingerprinted for resume), media root and pixel limits."""

    folder: Path
    files: list[InputFile]
    media_root: str | None
    pixels: dict[str, Any] | None


def prepare_input(cfg: TagConfig, shard: Shard, *, progress: bool = True) -> StageInput:
    """The input as a finished stage folder: the given one, or raw data built into ``OUT/_build`` first."""
    from postvl.chatml.build import stage_from_inputs

    folder = stage_from_inputs(
        cfg.inputs,
        Path(cfg.out) / BUILD_SUBDIR,
        shard=shard,
        progress=progress,
        merge_timeout=cfg.merge_timeout,
        format=cfg.format,
        media_root=cfg.media_root,
        model=cfg.model if cfg.backend == "llm" and _is_dir(cfg.model) else None,  # a VLM's pixel limits, tokens
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
        chunk_size=cfg.chunk_size,
    )
    media_root, pixels = stage_settings(folder)
    files = [
        f
        for sub in ("data", "preference")
        if any((folder / sub).glob("part-*.parquet"))
        for f in list_inputs([folder / sub])
    ]
    return StageInput(folder, files, cfg.media_root or media_root, pixels)


def iter_records(folder: Path, shard: Shard) -> Iterator[dict[str, Any]]:
    """This rank's share of a stage's kept records: SFT records, then preference records (one global index)."""
    index = 0
    for kind in KINDS:
        for record in read_stage(folder, kind=kind):
            if shard.owns(index):
                yield record
            index += 1


def count_records(folder: Path) -> int:
    """Kept SFT + preference records of a finished stage (for the progress bar)."""
    import pyarrow.parquet as pq

    return sum(
        pq.ParquetFile(p).metadata.num_rows
        for sub in ("data", "preference")
        for p in (folder / sub).glob("part-*.parquet")
    )


# --------------------------------------------------------------------------------------------------------------------
# Backends: each turns a batch of records into, per record, the meta keys it adds or a RecordError.

Backend = Callable[[list[dict[str, Any]]], list[dict[str, Any] | RecordError]]


def build_backend(cfg: TagConfig, taxonomy: Any, source: StageInput) -> tuple[Backend, Any]:
    """The tagging function of ``cfg.backend`` and the object behind it (for statistics)."""
    from postvl.instag.embedding import EmbeddingTagger

    if cfg.backend == "embedding":
        tagger = EmbeddingTagger(taxonomy, cfg.encoder, batch_size=cfg.batch_size)
        return lambda records: [r.meta() for r in tagger.tag_batch(records)], tagger
    if cfg.backend == "classifier":
        from postvl.instag.classifier import load_classifier

        classifier = load_classifier(cfg.model, taxonomy=taxonomy)
        return lambda records: [r.meta() for r in classifier.tag_batch(records)], classifier
    return _build_llm(cfg, taxonomy, source)


def _build_llm(cfg: TagConfig, taxonomy: Any, source: StageInput) -> tuple[Backend, Any]:
    from transformers import AutoTokenizer

    from postvl.generation import SamplingParams, build_generator
    from postvl.instag.embedding import EmbeddingTagger
    from postvl.instag.llm import LLMTagger
    from postvl.media import PixelConfig

    if source.media_root is None:
        raise ValueError(f"{source.folder}'s manifest names no media_root: pass --media-root")
    pixels = PixelConfig(**source.pixels) if source.pixels else PixelConfig()
    generator = build_generator(
        cfg.generator,
        cfg.model,
        pixels=pixels,
        max_model_len=cfg.max_model_len,
        dtype=cfg.dtype,
        max_images=max(cfg.max_images, 1),
        max_videos=cfg.max_videos,
        engine_kwargs=cfg.vllm_engine,
    )
    tagger = LLMTagger(
        taxonomy,
        generator,
        AutoTokenizer.from_pretrained(cfg.model),
        media_root=source.media_root,
        pixels=pixels,
        params=SamplingParams(n=1, temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed),
        retries=cfg.retries,
        retry_temperature=cfg.retry_temperature,
        fallback=EmbeddingTagger(taxonomy, cfg.encoder) if cfg.fallback == "embedding" else None,
        match_cutoff=cfg.match_cutoff,
        max_images=cfg.max_images,
        max_videos=cfg.max_videos,
        max_chars=cfg.max_chars,
        max_tags=cfg.max_tags,
        descriptions=cfg.describe_taxonomy,
    )
    return tagger.tag_batch, tagger


# --------------------------------------------------------------------------------------------------------------------
# Per-rank statistics


@dataclass
class TagCounts:
    """Records per domain, per subcategory and per open tag, and a confidence histogram (ten bins of 0.1)."""

    domains: Counter = field(default_factory=Counter)
    subcategories: Counter = field(default_factory=Counter)
    tags: Counter = field(default_factory=Counter)
    confidence: list[int] = field(default_factory=lambda: [0] * 10)
    inferred: int = 0

    def add(self, meta: Mapping[str, Any]) -> None:
        self.domains[meta["domain"]] += 1
        self.subcategories[meta["subcategory"]] += 1
        self.tags.update(meta.get("tags") or ())
        self.confidence[min(int(float(meta.get("tag_confidence") or 0.0) * 10), 9)] += 1
        self.inferred += bool(meta.get("tag_inferred"))

    def merge(self, other: Mapping[str, Any]) -> None:
        self.domains.update(other["domains"])
        self.subcategories.update(other["subcategories"])
        self.tags.update(other["tags"])
        self.confidence = [a + b for a, b in zip(self.confidence, other["confidence"], strict=True)]
        self.inferred += other["inferred"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "domains": dict(self.domains.most_common()),
            "subcategories": dict(self.subcategories.most_common()),
            "tags": dict(self.tags.most_common()),
            "confidence": self.confidence,
            "inferred": self.inferred,
        }


def _side_path(writer: StageWriter) -> Path:
    return writer.out / "_shards" / f"tagging-{writer.shard.rank:05d}.json"


def merge_side_stats(writer: StageWriter) -> TagCounts:
    """Wait for every rank's ``TagCounts`` (with this run's key) and sum them."""
    deadline = time.time() + writer.merge_timeout
    paths = [writer.out / "_shards" / f"tagging-{r:05d}.json" for r in range(writer.shard.world_size)]
    while True:
        parts = [json.loads(p.read_text()) for p in paths if p.is_file()]
        parts = [p["counts"] for p in parts if p.get("key") == writer.key]
        if len(parts) == len(paths):
            break
        if time.time() > deadline:
            raise TimeoutError(f"rank 0 waited {writer.merge_timeout:.0f}s for the tag counts of every rank")
        time.sleep(0.5)
    total = TagCounts()
    for part in parts:
        total.merge(part)
    return total


# --------------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class TagRunResult:
    """What a run did: ``stats`` is ``stats.json`` (rank 0) and ``tag_stats`` the merged ``tag_stats.json``."""

    out: Path
    stats: dict[str, Any]
    tag_stats: dict[str, Any] | None
    skipped: bool


def grow_meta(record: dict[str, Any], added: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` whose meta gains ``added``; earlier, different tag values move to ``meta.input_tags``."""
    row = dict(record)
    meta = dict(record.get("meta") or {})
    earlier = {k: meta.pop(k) for k in TAG_KEYS if k in meta and meta[k] != added.get(k)}
    if earlier:
        meta["input_tags"] = {**earlier, **(meta.get("input_tags") or {})}
    row["meta"] = meta | dict(added)
    return row


def run_tagging(
    cfg: TagConfig, *, backend: Backend | None = None, shard: Shard | None = None, progress: bool = True
) -> TagRunResult:
    """Run the stage (this rank's shard); on rank 0 also merge the statistics and draw the plot.

    Args:
        cfg: the stage config.
        backend: a ready tagging function (tests, or a caller that keeps a model across calls); default: built from
            ``cfg`` when this shard has work to do.
        shard: this process's rank and world size (default: from the environment).
        progress: show a progress bar on the main process.
    """
    from postvl.instag.taxonomy import load_taxonomy

    shard = shard or shard_from_env()
    taxonomy = load_taxonomy(cfg.taxonomy)
    source = prepare_input(cfg, shard, progress=progress)
    resolved = dataclasses.asdict(cfg) | {
        "inputs": list(cfg.inputs),
        "input_folder": str(source.folder),
        "media_root": source.media_root,
        "pixels": source.pixels,
        "taxonomy_fingerprint": taxonomy.fingerprint(),
        "model_files": fingerprint_inputs([InputFile(cfg.model, "model")]) if _is_dir(cfg.model) else cfg.model,
    }
    resolved.pop("merge_timeout")
    held: dict[str, Backend] = {}

    def get_backend() -> Backend:  # built once, and only when a shard has work to do
        if "fn" not in held:
            held["fn"] = backend or build_backend(cfg, taxonomy, source)[0]
        return held["fn"]

    # raw input built in-process: its rejects are folded into this stage's own (total = the input's records)
    built = source.folder if source.folder.resolve() == (Path(cfg.out) / BUILD_SUBDIR).resolve() else None
    if cfg.backend != "llm":
        writer = _writer(cfg.out, resolved | {"pass": "tag"}, source.files, shard, cfg)

        def work(w: StageWriter) -> TagCounts:
            return _tag_pass(w, source.folder, get_backend, cfg, progress)

        return _finish(cfg, taxonomy, writer, work, built=built)

    raw_dir = Path(cfg.out) / RAW_SUBDIR
    raw_writer = _writer(raw_dir, resolved | {"pass": "raw"}, source.files, shard, cfg)
    with raw_writer:
        if not raw_writer.done:
            _tag_pass(raw_writer, source.folder, get_backend, cfg, progress)
    wait_for_file(raw_dir / "stats.json", cfg.merge_timeout)
    vocab = build_vocabulary(raw_dir, cfg)
    raw_files = [
        f
        for sub in ("data", "preference")
        if any((raw_dir / sub).glob("part-*.parquet"))
        for f in list_inputs([raw_dir / sub])
    ]
    writer = _writer(cfg.out, resolved | {"pass": "vocabulary"}, raw_files, shard, cfg)
    result = _finish(cfg, taxonomy, writer, lambda w: _vocabulary_pass(w, raw_dir, vocab), vocab=vocab, built=built)
    return result


def _is_dir(path: str | None) -> bool:
    return bool(path) and Path(path).is_dir()


def _writer(out: str | Path, config: dict[str, Any], files: list[InputFile], shard: Shard, cfg: TagConfig) -> Any:
    return StageWriter(
        out,
        stage=STAGE,
        config=config,
        inputs=files,
        shard=shard,
        chunk_size=cfg.chunk_size,
        merge_timeout=cfg.merge_timeout,
    )


def _finish(
    cfg: TagConfig,
    taxonomy: Any,
    writer: StageWriter,
    work: Callable[[StageWriter], TagCounts],
    vocab: Any = None,
    built: Path | None = None,
) -> TagRunResult:
    """Run ``work`` in ``writer`` unless its shard is done; on rank 0 write tag_stats.json, the plot, subcategories.
    ``built``: the in-process build of raw input, whose rejects become this stage's."""
    tag_stats = None
    with writer:
        skipped = writer.done
        if not skipped:
            if built is not None:
                from postvl.chatml.build import fold_build_rejects

                fold_build_rejects(writer, built, writer.shard)
            counts = work(writer)
            write_json_atomic(_side_path(writer), {"key": writer.key, "counts": counts.as_dict()})
        if writer.shard.is_main:  # before the writer closes: stats.json and manifest.json stay the last files
            merged = merge_side_stats(writer)
            tag_stats = merged.as_dict() | {"backend": cfg.backend, "taxonomy": taxonomy.source}
            tag_stats["tags"] = dict(list(tag_stats["tags"].items())[:500])
            if vocab is not None:
                tag_stats["vocabulary"] = vocab.as_dict(top=500)
            write_json_atomic(Path(cfg.out) / TAG_STATS_FILE, tag_stats)
            if cfg.plot:
                _plot(merged, taxonomy, Path(cfg.out) / PLOT_FILE)
    stats = getattr(writer, "stats", None) or writer.counts.as_dict()
    if writer.shard.is_main and tag_stats is not None:
        # StageWriter counts per domain; per subcategory is added here, atomically, so stats.json stays last
        stats = stats | {"subcategories": tag_stats["subcategories"]}
        if built is not None:
            from postvl.chatml.build import build_summary

            stats["build"] = build_summary(built)
        write_json_atomic(Path(cfg.out) / "stats.json", stats)
    return TagRunResult(Path(cfg.out), stats, tag_stats, skipped)


def _tag_pass(
    writer: StageWriter, folder: Path, get_backend: Callable[[], Backend], cfg: TagConfig, progress: bool
) -> TagCounts:
    from tqdm.auto import tqdm

    counts = TagCounts()
    tag = get_backend()
    total = -(-count_records(folder) // writer.shard.world_size)
    bar = tqdm(
        total=total,
        desc=f"tag ({cfg.backend})",
        unit="rec",
        mininterval=1.0,
        disable=not (progress and writer.shard.is_main) or None,
    )
    for batch in _batches(iter_records(folder, writer.shard), cfg.batch_size):
        for record, outcome in zip(batch, tag(batch), strict=True):
            if isinstance(outcome, RecordError):
                _reject(writer, record, outcome.reason, outcome.detail)
                continue
            row = grow_meta(record, outcome | {"tag_backend": cfg.backend})
            counts.add(row["meta"])
            writer.keep(row)
        bar.update(len(batch))
    bar.close()
    return counts


def _reject(writer: StageWriter, record: dict[str, Any], reason: str, detail: str) -> None:
    source = str((record.get("meta") or {}).get("source", ""))
    writer.reject(reason, source=source, record_id=record.get("id"), detail=detail, record=record)


def build_vocabulary(raw_dir: Path, cfg: TagConfig) -> Any:
    """The open-tag vocabulary of the whole dataset from the first pass's records (the same on every rank)."""
    from postvl.instag.normalize import TagVocabulary

    counts: Counter = Counter()
    for kind in KINDS:
        for record in read_stage(raw_dir, kind=kind):
            counts.update(set(record["meta"].get("tags") or ()))
    encoder = None
    if cfg.merge_similar and len(counts) > 1:
        from postvl.instag.embedding import load_encoder

        encoder = load_encoder(cfg.encoder)
    vocab = TagVocabulary.build(
        counts, min_count=cfg.min_tag_count, encoder=encoder, merge_threshold=cfg.merge_threshold
    )
    logger.info(
        "open tags: %d spellings -> %d merged -> %d kept (seen in >= %d records)",
        len(vocab.canonical),
        len(vocab.counts),
        len(vocab.kept),
        cfg.min_tag_count,
    )
    return vocab


def _vocabulary_pass(writer: StageWriter, raw_dir: Path, vocab: Any) -> TagCounts:
    """Second llm pass: this rank's share of the first pass's records with merged, kept tags, and its rejects."""
    counts = TagCounts()
    for record in iter_records(raw_dir, writer.shard):
        meta = dict(record["meta"])
        explanations = meta.get("tag_explanations") or {}
        tags = vocab.apply(meta.get("tags") or ())
        merged_explanations: dict[str, str] = {}
        for raw in meta.get("tags") or ():
            name = vocab.map(raw)
            if name is not None and name not in merged_explanations:
                merged_explanations[name] = explanations.get(raw, "")
        meta.update(tags=tags, tag_explanations=merged_explanations)
        counts.add(meta)
        writer.keep(record | {"meta": meta})
    with (raw_dir / "rejected.jsonl").open(encoding="utf-8") as f:
        for n, line in enumerate(f):
            if writer.shard.owns(n) and line.strip():
                item = json.loads(line)
                writer.reject(
                    item["reason"],
                    source=item.get("source", ""),
                    record_id=item.get("id"),
                    detail=item.get("detail", ""),
                    record=item.get("record"),
                    raw=item.get("raw"),
                )
    return counts


def _batches(records: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _plot(counts: TagCounts, taxonomy: Any, path: Path) -> None:
    from itertools import chain, repeat

    from postvl.instag.output import plot_distribution

    domain_of = {s.id: s.domain for s in taxonomy.subcategories}
    items = chain.from_iterable(
        repeat({"domain": domain_of.get(sub, "?"), "subcategory": sub}, n) for sub, n in counts.subcategories.items()
    )
    plot_distribution(items, path, taxonomy, title=f"{sum(counts.subcategories.values())} records tagged")


def summary_table(stats: Mapping[str, Any], tag_stats: Mapping[str, Any], out: str, taxonomy: Any = None) -> Any:
    """A rich table: totals, one row per rejection reason, per domain with its subcategories, and the top tags."""
    from rich.table import Table

    from postvl.instag.llm import REASONS

    table = Table(title=f"postvl tag ({tag_stats.get('backend')}) -> {out}")
    table.add_column("", style="bold")
    table.add_column("records", justify="right")
    table.add_column("share / meaning")
    total = stats["total"] or 1
    table.add_row("total", f"{stats['total']:,}", "")
    table.add_row("kept", f"{stats['kept']:,}", f"{stats['kept'] / total:.1%}")
    table.add_row("rejected", f"{stats['rejected']:,}", f"{stats['rejected'] / total:.1%}")
    for reason, n in sorted(stats["reasons"].items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {reason}", f"{n:,}", REASONS.get(reason, ""))
    kept = max(stats["kept"], 1)
    subs = tag_stats.get("subcategories", {})
    domain_of = {s.id: s.domain for s in taxonomy.subcategories} if taxonomy is not None else {}
    for domain, n in tag_stats.get("domains", {}).items():
        table.add_row(f"domain {domain}", f"{n:,}", f"{n / kept:.1%}")
        for sub, m in subs.items():
            if domain_of.get(sub) == domain:
                table.add_row(f"  {sub}", f"{m:,}", f"{m / kept:.1%}")
    top = list(tag_stats.get("tags", {}).items())[:10]
    if top:
        table.add_row("top tags", "", ", ".join(f"{t} ({n})" for t, n in top))
    timings = stats.get("timings") or {}
    rate = timings.get("records_per_second")
    table.caption = f"{timings.get('seconds', 0):.1f} s" + (f", {rate:,.1f} records/s" if rate else "")
    return table
