"""The rejection-sampling stage: config, input, the sampling loop, statistics and the pass-rate plot.

``run_sampling(cfg)`` reads a stage folder (or builds raw input first, in-process, into ``OUT/_build``), renders each
question with its chain-of-thought instruction, samples ``k`` answers per question with the shared generator
(``postvl.generation``), judges and selects them (``select``), and writes:

    OUT/data/part-*.parquet        kept chain-of-thought records (up to m per question; records without a ground
                                   truth pass through untouched, with meta.sampling = {"skipped": "no_answer"}, or
                                   are rejected as no_answer with keep_no_answer: false)
    OUT/preference/part-*.parquet  DPO pairs (prompt, chosen = correct + hygienic, rejected = incorrect)
    OUT/rejected.jsonl             questions rejected: no_correct_sample, no_hygienic_sample, too_easy (judged, with
                                   their verdicts in meta.sampling); invalid_gold, no_question, missing_media,
                                   corrupt_media, too_many_media, invalid_answer_type (not sampled)
    OUT/sampling_stats.json        pass@1, pass@k, acceptance by domain and answer type, rejections, sample verdicts
    OUT/pass_rates.png             the same as a figure
    OUT/stats.json, manifest.json  the stage contract (written last)

Accounting is per question: ``stats.json`` counts each input record once, as kept (it gave at least one CoT record, or
it had no ground truth and passed through) or rejected, so ``total`` equals the input's kept count and
``total == kept + rejected``. The extra rows of a kept question (its 2nd..m-th CoT record, its pairs) are counted in
``sampling_stats.json`` (``cot_records``, ``pairs``).

Each accelerate rank samples its share of the questions with its own engine and writes its own parts; a rerun with
the same config and input skips finished shards, a changed config or input reruns them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postvl.families import LEGACY_FAMILY, Family, check_same_family
from postvl.generation import BACKENDS, Generator, Request, Sample, SamplingParams
from postvl.io import (
    InputFile,
    Shard,
    StageWriter,
    input_paths,
    list_inputs,
    read_stage,
    shard_from_env,
    stage_settings,
    write_json_atomic,
)
from postvl.media import PixelConfig, VideoTokens
from postvl.records import RecordError
from postvl.rejection_sampling.prompts import PromptSpec, question_messages, resolve_prompts, with_instruction
from postvl.rejection_sampling.select import (
    INVALID_GOLD,
    SELECTIONS,
    Judged,
    QuestionOutcome,
    SamplingStats,
    decide,
    judge,
)

logger = logging.getLogger(__name__)

STAGE = "sample"
BUILD_SUBDIR = "_build"
STATS_FILE = "sampling_stats.json"
PLOT_FILE = "pass_rates.png"
DEFAULT_HYGIENE: dict[str, dict[str, Any]] = {
    "too_long": {"max_length": 2048},
    "repetition_loop": {"max_repeats": 4},
    "ngram_repetition": {"n": 6, "max_ratio": 0.3},
    "repeated_lines": {"max_ratio": 0.3},
    "code_switching": {},
}


@dataclass(frozen=True)
class SamplingConfig:
    """Options of ``postvl sample`` (YAML keys and ``--flags`` alike).

    Attributes:
        inputs: one stage folder, or raw files/folders that ``postvl build`` accepts (built first into OUT/_build).
        out: the stage folder to write.
        model: local model folder to sample from (the policy being trained, or a stronger one).
        backend: ``vllm`` or ``transformers``.
        k: samples per question.
        temperature, top_p, max_tokens, seed: sampling settings.
        batch_size: questions per generate call.
        keep_per_question: m, the most CoT records kept per question.
        selection: ``shortest`` or ``diverse``.
        diversity_ngram: character n-gram size of ``diverse``.
        pairs_per_question: p, the most DPO pairs per question (0: none).
        drop_too_easy: reject questions whose k samples are all correct (``too_easy``) instead of only flagging them.
        keep_instruction: keep the CoT instruction in the kept records' user turn (default: the original question).
        keep_no_answer: records without a ground truth pass through untouched (default); ``False`` rejects them
            (``no_answer``), so that the output holds only selected samples (SFT on rejection-sampled data alone).
        prompts: per answer type, an instruction string or {instruction, form, pattern} (``prompts.py``).
        hygiene: hygiene checks ``{name: {argument: value}}`` (``hygiene.py``); ``final_answer`` comes from prompts.
        verify: ``VerifyConfig`` arguments (tolerances, IoU threshold).
        max_model_len, dtype, max_images, max_videos: engine settings (max_images/videos: per prompt).
        vllm_engine: more ``vllm.LLM`` arguments (``tensor_parallel_size``, ``enforce_eager``...); the transformers
            backend does not read them.
        media_root: where media paths resolve (default: the input stage's manifest).
        min_pixels, max_pixels: for raw input, the build's limits; for a stage folder they must equal its own.
        format: the raw input's format (as ``postvl build --format``).
        chunk_size: records per Parquet part.
        plot: write OUT/pass_rates.png.
        merge_timeout: seconds rank 0 waits for the other ranks.
        enable_thinking: a thinking family's mode (Qwen3.5): ``True`` / unset opens a ``<think>`` block in the prompt,
            the verifier reads the answer after ``</think>``, and the kept record keeps the chain of thought in the
            assistant turn's ``<think>...</think>`` block with the final answer after it; ``False`` closes an empty
            block (answers only). Other families refuse it.
    """

    inputs: tuple[str, ...]
    out: str
    model: str
    backend: str = "vllm"
    k: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 2048
    seed: int = 0
    batch_size: int = 64
    keep_per_question: int = 1
    selection: str = "shortest"
    diversity_ngram: int = 4
    pairs_per_question: int = 1
    drop_too_easy: bool = False
    keep_instruction: bool = False
    keep_no_answer: bool = True
    prompts: Mapping[str, Any] = field(default_factory=dict)
    hygiene: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_HYGIENE))
    verify: Mapping[str, Any] = field(default_factory=dict)
    max_model_len: int = 4096
    dtype: str = "bfloat16"
    max_images: int = 1
    max_videos: int = 0
    vllm_engine: Mapping[str, Any] = field(default_factory=dict)
    media_root: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    format: str = "auto"
    chunk_size: int = 10_000
    plot: bool = True
    merge_timeout: float = 24 * 3600
    enable_thinking: bool | None = None

    def __post_init__(self) -> None:
        from postvl.rejection_sampling.verify import VerifyConfig

        object.__setattr__(self, "inputs", input_paths(self.inputs))
        errors = []
        if not self.inputs:
            errors.append("give an input (a stage folder or raw data)")
        if self.backend not in BACKENDS:
            errors.append(f"backend {self.backend!r} is not one of {BACKENDS}")
        if self.selection not in SELECTIONS:
            errors.append(f"selection {self.selection!r} is not one of {SELECTIONS}")
        for name in ("k", "batch_size", "keep_per_question", "diversity_ngram", "max_tokens", "chunk_size"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pairs_per_question < 0:
            errors.append(f"pairs_per_question must be >= 0, got {self.pairs_per_question}")
        if self.max_tokens >= self.max_model_len:
            errors.append(
                f"max_tokens {self.max_tokens} leaves no room for the prompt in max_model_len "
                f"{self.max_model_len}: raise max_model_len or lower max_tokens"
            )
        if "final_answer" in self.hygiene:
            errors.append(
                "hygiene.final_answer is set per answer type from the prompts: set `form`/`pattern` under "
                "prompts.<answer_type> instead"
            )
        for check in (
            lambda: SamplingParams(self.k, self.temperature, self.top_p, self.max_tokens, self.seed),
            lambda: resolve_prompts(self.prompts, family=LEGACY_FAMILY),  # validity does not depend on the family
            lambda: VerifyConfig(**dict(self.verify)),
        ):
            try:
                check()
            except (ValueError, KeyError, TypeError) as err:
                errors.append(str(err))
        if errors:
            raise ValueError("postvl sample: " + "; ".join(errors))

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(self.k, self.temperature, self.top_p, self.max_tokens, self.seed)


def load_config(path: str | Path | None = None, **overrides: Any) -> SamplingConfig:
    """A ``SamplingConfig`` from a YAML file (optional) with ``overrides`` (not ``None``) on top.

    Raises:
        ValueError: an unknown key (the message names the closest one) or an invalid value.
    """
    from postvl.io import load_stage_config

    return load_stage_config(
        SamplingConfig, path, overrides, required=("inputs", "out", "model"), command="postvl sample"
    )


# --------------------------------------------------------------------------------------------------------------------
# Input


@dataclass(frozen=True)
class StageInput:
    """The stage folder sampled from, its data files (fingerprinted for resume), media root and pixel limits."""

    folder: Path
    files: list[InputFile]
    media_root: str
    pixels: PixelConfig


def prepare_input(cfg: SamplingConfig, shard: Shard, *, progress: bool = True) -> StageInput:
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
        model=cfg.model,
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
        chunk_size=cfg.chunk_size,
    )
    media_root, pixels = stage_settings(folder)
    # a folder built here already resolved --media-root (and stored embedded media under itself): its manifest wins
    built = folder.resolve() == (Path(cfg.out) / BUILD_SUBDIR).resolve()
    media_root = media_root if built else (cfg.media_root or media_root)
    if media_root is None:
        raise ValueError(f"{folder}'s manifest names no media_root: pass --media-root")
    pixels = _check_pixels(cfg, folder, PixelConfig(**pixels) if pixels else None)
    data = folder / "data"
    files = list_inputs([data]) if any(data.glob("part-*.parquet")) else []
    return StageInput(folder, files, str(media_root), pixels)


def _check_pixels(cfg: SamplingConfig, folder: Path, pixels: PixelConfig | None) -> PixelConfig:
    overrides = {"min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels}
    if pixels is None:
        family = check_same_family(None, cfg.model, what=str(folder))
        logger.warning(
            "%s records no pixel limits; using %s's defaults with the given overrides", folder, family.title
        )
        return family.pixel_config(**overrides)
    conflicts = [
        f"{k}={v} (dataset: {getattr(pixels, k)})" for k, v in overrides.items() if v not in (None, getattr(pixels, k))
    ]
    if conflicts:
        raise ValueError(
            f"{', '.join(conflicts)}: the dataset's token counts and grounding coordinates use its own limits; "
            "drop the override or rebuild the dataset with these limits"
        )
    return pixels


# --------------------------------------------------------------------------------------------------------------------
# The sampler


class Sampler:
    """Turns batches of records into kept CoT records, pairs and rejections (one per rank).

    Args:
        cfg: the stage config.
        source: the input's media root and pixel limits.
        generator: the shared generator (``postvl.generation``).
        tokenizer: the model's tokenizer (``too_long`` in tokens, ``num_tokens`` of the written records).
        family: the model's family (``postvl.families``): the chat template prompts are rendered with and the box
            convention asked for; the dataset must have been built for it.
    """

    def __init__(
        self, cfg: SamplingConfig, source: StageInput, generator: Generator, tokenizer: Any, family: Family
    ) -> None:
        from postvl.rejection_sampling.hygiene import FinalAnswerForm, HygieneChecker
        from postvl.rejection_sampling.verify import VerifyConfig

        self.cfg = cfg
        self.source = source
        self.generator = generator
        self.tokenizer = tokenizer
        self.family = check_same_family(source.pixels.family, family, what=str(source.folder))
        self.params = cfg.sampling_params()
        self.prompts: dict[str, PromptSpec] = resolve_prompts(cfg.prompts, family=self.family)
        if cfg.enable_thinking is not None and not self.family.thinking:
            raise ValueError(f"enable_thinking is set but {self.family.title} has no thinking mode")
        # The prompt opens a <think> block: samples are "reasoning</think>answer".
        self.thinking = self.family.thinking and cfg.enable_thinking is not False
        self.verify_config = VerifyConfig(**dict(cfg.verify))
        base = HygieneChecker.from_config(cfg.hygiene, tokenizer=tokenizer)
        self.checkers = {
            t: HygieneChecker([*base.checks, FinalAnswerForm(**spec.form_check())]) for t, spec in self.prompts.items()
        }
        self.stats = SamplingStats(k=cfg.k)

    def run(self, records: Iterable[dict[str, Any]], writer: StageWriter, bar: Any = None) -> SamplingStats:
        for batch in _batches(records, self.cfg.batch_size):
            self.process(batch, writer)
            if bar is not None:
                bar.update(len(batch))
        return self.stats

    def process(self, batch: list[dict[str, Any]], writer: StageWriter) -> None:
        """Sample every question of ``batch`` at once, then judge and write each."""
        pending: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        requests: list[Request] = []
        for record in batch:
            if record.get("answer") is None or not record.get("answer_type"):
                self.stats.no_answer += 1
                if self.cfg.keep_no_answer:
                    writer.keep(_grow_meta(record, {"skipped": "no_answer"}))  # passes through untouched
                else:
                    self._reject(writer, record, "no_answer", "no ground truth to sample against (keep_no_answer off)")
                continue
            problem = self.unsampleable(record)
            if problem is not None:
                self._reject(writer, record, *problem)
                continue
            try:
                question = question_messages(record["messages"])
            except ValueError as err:
                self._reject(writer, record, "no_question", str(err))
                continue
            try:
                requests.append(self.request(record, question))
            except RecordError as err:
                self._reject(writer, record, err.reason, err.detail)
                continue
            pending.append((record, question))
        if not requests:
            return
        for (record, question), samples in zip(pending, self.generator.generate(requests, self.params), strict=True):
            self.finish(record, question, samples, writer)

    def unsampleable(self, record: dict[str, Any]) -> tuple[str, str] | None:
        """``(reason, detail)`` when a record with a ground truth cannot be sampled as configured."""
        if record["answer_type"] not in self.prompts:
            return "invalid_answer_type", f"{record['answer_type']!r} is not one of {sorted(self.prompts)}"
        images, videos = len(record.get("images") or []), len(record.get("videos") or [])
        if images > self.cfg.max_images or videos > self.cfg.max_videos:
            return "too_many_media", (
                f"{images} images and {videos} videos; the engine takes at most {self.cfg.max_images} and "
                f"{self.cfg.max_videos} per prompt: raise --max-images / --max-videos"
            )
        return None

    def request(self, record: dict[str, Any], question: list[dict[str, Any]]) -> Request:
        """The rendered prompt (question + CoT instruction) with the record's media loaded."""
        from postvl.chatml.render import render
        from postvl.generation import load_image, load_video
        from postvl.media import resolve_media_path

        spec = self.prompts[record["answer_type"]]
        prompt = render(
            with_instruction(question, spec.instruction),
            family=self.family,
            add_generation_prompt=True,
            enable_thinking=self.cfg.enable_thinking,
        )
        root = self.source.media_root
        try:
            images = tuple(load_image(resolve_media_path(p, root)) for p in record.get("images") or [])
            videos = tuple(
                load_video(resolve_media_path(p, root), self.source.pixels) for p in record.get("videos") or []
            )
        except FileNotFoundError as err:
            raise RecordError("missing_media", str(err)) from err
        except (OSError, ValueError) as err:
            raise RecordError("corrupt_media", f"{type(err).__name__}: {err}") from err
        return Request(prompt, images=images, videos=videos, key=str(record["id"]))

    def finish(
        self, record: dict[str, Any], question: list[dict[str, Any]], samples: list[Sample], writer: StageWriter
    ) -> None:
        """Judge one question's samples and write its CoT records and pairs, or its rejection."""
        meta = record.get("meta") or {}
        options = meta.get("options") or (meta.get("extra") or {}).get("options")
        checker = self.checkers[record["answer_type"]]
        try:
            judged = judge(
                samples,
                record["answer"],
                record["answer_type"],
                checker,
                options=options,
                verify_config=self.verify_config,
                thinking=self.thinking,
            )
        except ValueError as err:
            self._reject(writer, record, INVALID_GOLD, str(err))
            return
        cfg = self.cfg
        outcome = decide(
            judged,
            m=cfg.keep_per_question,
            p=cfg.pairs_per_question,
            strategy=cfg.selection,
            ngram=cfg.diversity_ngram,
            drop_too_easy=cfg.drop_too_easy,
        )
        self.stats.add(outcome, domain=meta.get("domain"), answer_type=record["answer_type"])
        if outcome.reason is not None:
            detail = f"{outcome.meta['n_correct']}/{outcome.meta['k']} correct, {outcome.meta['n_hygienic']} hygienic"
            self._reject(writer, _grow_meta(record, outcome.meta), outcome.reason, detail, counted=True)
            return
        prompt = self._stored_question(record, question)
        for n, kept in enumerate(outcome.kept):
            row = self.cot_record(record, prompt, kept, outcome)
            if n == 0:
                writer.keep(row)
            else:
                _keep_uncounted(writer, row)
        for n, pair in enumerate(outcome.pairs):
            _keep_uncounted(writer, self.pair_record(record, prompt, pair, n, outcome))

    def _stored_question(self, record: dict[str, Any], question: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not self.cfg.keep_instruction:
            return question
        return with_instruction(question, self.prompts[record["answer_type"]].instruction)

    def cot_record(
        self, record: dict[str, Any], prompt: list[dict[str, Any]], kept: Judged, outcome: QuestionOutcome
    ) -> dict[str, Any]:
        messages = [*prompt, _assistant(kept.sample.text, self.thinking)]
        row = _grow_meta(record, outcome.meta | {"sample_index": kept.index, "question_id": record["id"]})
        row.update(
            id=f"{record['id']}#s{kept.index}", messages=messages, num_tokens=self._num_tokens(record, messages)
        )
        return row

    def pair_record(
        self,
        record: dict[str, Any],
        prompt: list[dict[str, Any]],
        pair: tuple[Judged, Judged],
        n: int,
        outcome: QuestionOutcome,
    ) -> dict[str, Any]:
        chosen, rejected = pair
        extra = {
            "question_id": record["id"],
            "chosen_index": chosen.index,
            "rejected_index": rejected.index,
            "rejected_reason": rejected.reason,
        }
        lengths = [self._num_tokens(record, [*prompt, _assistant(j.sample.text, self.thinking)]) for j in pair]
        return {
            "id": f"{record['id']}#p{n}",
            "prompt": prompt,
            "chosen": [_assistant(chosen.sample.text, self.thinking)],
            "rejected": [_assistant(rejected.sample.text, self.thinking)],
            "images": record.get("images") or [],
            "videos": record.get("videos") or [],
            "num_tokens": None if None in lengths else max(lengths),
            "meta": (record.get("meta") or {}) | {"sampling": outcome.meta | extra},
        }

    def _num_tokens(self, record: dict[str, Any], messages: list[dict[str, Any]]) -> int | None:
        """Text + vision tokens, with the per-item vision tokens the build recorded (``None`` when unknown)."""
        from postvl.chatml.render import count_tokens

        media = (record.get("meta") or {}).get("media") or {}
        image_tokens = [m.get("tokens") for m in media.get("images", [])]
        # Qwen3-VL videos: the recorded layout (timestamps and per-patch blocks), not just the pads
        video_tokens = [
            VideoTokens.from_json(m["layout"]) if m.get("layout") else m.get("tokens") for m in media.get("videos", [])
        ]
        if len(image_tokens) != len(record.get("images") or []) or len(video_tokens) != len(
            record.get("videos") or []
        ):
            return None
        if None in image_tokens or None in video_tokens:
            return None
        return count_tokens(messages, image_tokens, video_tokens, self.tokenizer, family=self.family)

    def _reject(
        self, writer: StageWriter, record: dict[str, Any], reason: str, detail: str, *, counted: bool = False
    ) -> None:
        if not counted:  # judged questions were counted by SamplingStats.add
            self.stats.reject(reason)
        source = str((record.get("meta") or {}).get("source", ""))
        writer.reject(reason, source=source, record_id=record.get("id"), detail=detail, record=record)


def _assistant(text: str, thinking: bool = False) -> dict[str, Any]:
    """The sampled assistant turn. A thinking sample (the prompt opened ``<think>``) is stored as
    ``<think>\n{chain of thought}\n</think>\n\n{final answer}``: the form the Qwen3.5 template itself splits into
    ``reasoning_content`` and answer, so the record renders (and trains) with its thinking block, and it fits the
    stage schema's text parts as they are."""
    if thinking:
        from postvl.chatml.render import THINK_END, THINK_START, split_reasoning

        if THINK_END in text:
            reasoning, answer = split_reasoning(
                {}, text if THINK_START in text.split(THINK_END)[0] else THINK_START + text
            )
        else:  # never kept (unfinished_thinking), but the rejected side of a pair may be one
            reasoning, answer = text.strip(), ""
        text = f"{THINK_START}\n{reasoning}\n{THINK_END}\n\n{answer}"
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _grow_meta(record: dict[str, Any], sampling: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the record whose meta gains ``sampling`` (earlier keys are never rewritten)."""
    row = dict(record)
    row["meta"] = dict(record.get("meta") or {}) | {"sampling": dict(sampling)}
    return row


def _keep_uncounted(writer: StageWriter, row: Mapping[str, Any]) -> None:
    """Write a question's extra row (2nd..m-th CoT record, a pair) without counting it: the stage counts questions.

    ``StageWriter.keep`` counts every row it writes; a ``count=False`` option there would replace this.
    """
    domains = dict(writer.domains)
    writer.keep(row)
    writer.counts.kept -= 1
    writer.domains.clear()
    writer.domains.update(domains)


def _batches(records: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# --------------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class SamplingResult:
    """What a run did: ``stats`` is ``stats.json`` (rank 0) and ``sampling`` the merged ``sampling_stats.json``."""

    out: Path
    stats: dict[str, Any]
    sampling: dict[str, Any] | None
    skipped: bool


def run_sampling(
    cfg: SamplingConfig,
    *,
    generator: Generator | None = None,
    shard: Shard | None = None,
    progress: bool = True,
) -> SamplingResult:
    """Run the stage (this rank's shard); on rank 0 also merge the statistics and draw the plot.

    Args:
        cfg: the stage config.
        generator: a ready generator (tests, or a caller that keeps an engine across calls); default: built from
            ``cfg`` when this shard has work to do.
        shard: this process's rank and world size (default: from the environment).
        progress: show a progress bar on the main process.
    """
    from tqdm.auto import tqdm

    shard = shard or shard_from_env()
    source = prepare_input(cfg, shard, progress=progress)
    resolved = dataclasses.asdict(cfg) | {
        "inputs": list(cfg.inputs),
        "input_folder": str(source.folder),
        "media_root": source.media_root,
        "pixels": dataclasses.asdict(source.pixels),
    }
    resolved.pop("merge_timeout")
    writer = StageWriter(
        cfg.out,
        stage=STAGE,
        config=resolved,
        inputs=source.files,
        shard=shard,
        chunk_size=cfg.chunk_size,
        merge_timeout=cfg.merge_timeout,
    )
    sampling = None
    # raw input built in-process: its rejects are folded into this stage's own (total = the input's records)
    built = source.folder.resolve() == (Path(cfg.out) / BUILD_SUBDIR).resolve()
    with writer:
        skipped = writer.done
        if not skipped:
            family = check_same_family(source.pixels.family, cfg.model, what=str(source.folder))
            generator = generator or _build_generator(cfg, source)
            if built:
                from postvl.chatml.build import fold_build_rejects

                fold_build_rejects(writer, source.folder, shard)
            sampler = Sampler(cfg, source, generator, _load_tokenizer(cfg.model), family)
            records = (r for i, r in enumerate(read_stage(source.folder)) if shard.owns(i))
            bar = tqdm(desc="sample", unit="q", disable=not (progress and shard.is_main) or None, mininterval=1.0)
            stats = sampler.run(records, writer, bar)
            bar.close()
            write_json_atomic(_shard_stats_path(writer), {"key": writer.key, "stats": stats.as_dict()})
        if shard.is_main:  # before the writer closes, so that stats.json and manifest.json stay the last files
            sampling = merge_shard_stats(writer, cfg.k)
            write_json_atomic(Path(cfg.out) / STATS_FILE, sampling)
            if cfg.plot:
                plot_pass_rates(sampling, Path(cfg.out) / PLOT_FILE)
    stats = getattr(writer, "stats", None) or writer.counts.as_dict()
    if built and shard.is_main:
        from postvl.chatml.build import build_summary

        stats = stats | {"build": build_summary(source.folder)}  # replaced atomically: stats.json stays last
        write_json_atomic(Path(cfg.out) / "stats.json", stats)
    return SamplingResult(Path(cfg.out), stats, sampling, skipped)


def _build_generator(cfg: SamplingConfig, source: StageInput) -> Generator:
    from postvl.generation import build_generator

    return build_generator(
        cfg.backend,
        cfg.model,
        pixels=source.pixels,
        max_model_len=cfg.max_model_len,
        dtype=cfg.dtype,
        max_images=cfg.max_images,
        max_videos=cfg.max_videos,
        seed=cfg.seed,
        engine_kwargs=cfg.vllm_engine,
    )


def _load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def _shard_stats_path(writer: StageWriter) -> Path:
    return writer.out / "_shards" / f"sampling-{writer.shard.rank:05d}.json"


def merge_shard_stats(writer: StageWriter, k: int) -> dict[str, Any]:
    """Wait for every rank's sampling statistics (with this run's key) and sum them."""
    deadline = time.time() + writer.merge_timeout
    paths = [writer.out / "_shards" / f"sampling-{r:05d}.json" for r in range(writer.shard.world_size)]
    while True:
        parts = [json.loads(p.read_text()) for p in paths if p.is_file()]
        parts = [p["stats"] for p in parts if p.get("key") == writer.key]
        if len(parts) == len(paths):
            break
        if time.time() > deadline:
            raise TimeoutError(f"rank 0 waited {writer.merge_timeout:.0f}s for the sampling statistics of every rank")
        time.sleep(0.5)
    return SamplingStats.merged(parts, k).as_dict()


def plot_pass_rates(sampling: Mapping[str, Any], path: Path) -> None:
    """Histogram of correct samples per question, and pass@1 / pass@k / acceptance by answer type and domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    hist = sampling["n_correct_hist"]
    axes[0].bar(range(len(hist)), hist, color="tab:blue")
    axes[0].set(
        title=f"correct samples per question (k={sampling['k']})", xlabel="correct samples", ylabel="questions"
    )
    for ax, key, title in ((axes[1], "by_answer_type", "by answer type"), (axes[2], "by_domain", "by domain")):
        groups = sampling[key]
        names = list(groups)
        for i, metric in enumerate(("pass@1", "pass@k", "acceptance")):
            values = [groups[n][metric] or 0.0 for n in names]
            ax.bar([x + (i - 1) * 0.27 for x in range(len(names))], values, width=0.27, label=metric)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set(title=title, ylim=(0, 1.05))
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_table(stats: Mapping[str, Any], sampling: Mapping[str, Any], out: str) -> Any:
    """A rich table of the run: questions, pass rates by answer type and domain, rejections."""
    from rich.table import Table

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    table = Table(title=f"postvl sample -> {out}")
    for name, justify in (
        ("", "left"),
        ("questions", "right"),
        ("pass@1", "right"),
        ("pass@k", "right"),
        ("accepted", "right"),
    ):
        table.add_column(name, justify=justify)
    overall = sampling["overall"]
    table.add_row(
        "all (with answer)",
        f"{overall['questions']:,}",
        pct(overall["pass@1"]),
        pct(overall["pass@k"]),
        pct(overall["acceptance"]),
        style="bold",
    )
    for key, label in (("by_answer_type", "type"), ("by_domain", "domain")):
        for name, g in sampling[key].items():
            table.add_row(
                f"  {label} {name}", f"{g['questions']:,}", pct(g["pass@1"]), pct(g["pass@k"]), pct(g["acceptance"])
            )
    table.add_section()
    table.add_row("records in / kept / rejected", f"{stats['total']:,} / {stats['kept']:,} / {stats['rejected']:,}")
    table.add_row("CoT records, DPO pairs", f"{sampling['cot_records']:,}, {sampling['pairs']:,}")
    dropped = stats.get("reasons", {}).get("no_answer", 0)  # keep_no_answer off: rejected, listed below
    table.add_row("no answer: passed through", f"{sampling['no_answer'] - dropped:,}")
    table.add_row("too easy / too hard", f"{sampling['too_easy']:,} / {sampling['too_hard']:,}")
    for reason, n in sorted(stats.get("reasons", {}).items(), key=lambda kv: -kv[1]):
        table.add_row(f"  rejected: {reason}", f"{n:,}")
    for reason, n in sorted(sampling["sample_reasons"].items(), key=lambda kv: -kv[1]):
        table.add_row(f"  sample verdict: {reason}", f"{n:,}")
    return table
