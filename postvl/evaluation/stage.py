"""The eval stage: config, the held-out records, the overlap check, generation per model, judging and reporting.

``run_eval(cfg)`` reads a stage folder of eval records (or builds raw input first, into ``OUT/_build``), drops the
records that overlap what trained (``contamination``), renders each question with the same chain-of-thought
instruction as rejection sampling, samples ``k`` answers per question from every model with the shared generator
(``postvl.generation``: the dataset's pixel limits, the model's chat template), judges each sample with the verifier
behind ``postvl verify`` and the CoT hygiene checks, and writes::

    OUT/eval.json                  per model: accuracy (pass@1), pass@k, mean tokens, hygiene failures, overall and
                                   by domain, subcategory and answer type; the overlap counts
    OUT/eval.png                   accuracy per model, overall and by domain
    OUT/samples/<model>.jsonl      every question's samples with their verdicts
    OUT/data/part-*.parquet        the evaluated records, ``meta.eval`` = {model: {n_correct, k}}
    OUT/rejected.jsonl             records not evaluated: exact_overlap, near_overlap, eval_duplicate (the overlap
                                   check), no_answer (no gold), invalid_answer_type, too_many_media, no_question,
                                   missing_media, corrupt_media, invalid_gold
    OUT/stats.json, manifest.json  the stage contract (written last); total == kept + rejected
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postvl.evaluation.contamination import OverlapConfig, OverlapReport, check_overlap
from postvl.evaluation.metrics import JudgedSample, QuestionResult, group_keys, model_metrics
from postvl.families import check_same_family
from postvl.generation import BACKENDS, Generator, Request, Sample, SamplingParams
from postvl.records import RecordError
from postvl.rejection_sampling.stage import DEFAULT_HYGIENE

logger = logging.getLogger(__name__)

STAGE = "eval"
BUILD_SUBDIR = "_build"
EVAL_FILE = "eval.json"
PLOT_FILE = "eval.png"
SAMPLES_DIR = "samples"
NO_ANSWER = "no_answer"
INVALID_GOLD = "invalid_gold"


@dataclass(frozen=True)
class EvalConfig:
    """Options of ``postvl eval`` (YAML keys and ``--flags`` alike).

    Attributes:
        inputs: one stage folder of eval records (``postvl split``'s ``OUT/eval``), or raw data ``postvl build``
            accepts (built first into OUT/_build).
        out: the folder to write.
        models: ``NAME=PATH`` or ``PATH`` (named after the folder), evaluated in order, side by side.
        train: what trained the models (stage folders or raw files): eval records overlapping them are dropped.
        backend: ``vllm`` or ``transformers``.
        k: samples per question (pass@k); temperature, top_p, max_tokens, seed: sampling settings.
        batch_size: questions per generate call.
        prompts, hygiene, verify: as for ``postvl sample`` (the same instruction, checks and tolerances).
        overlap: ``OverlapConfig`` arguments (the filter's dedup settings).
        max_model_len, dtype, max_images, max_videos, vllm_engine: engine settings, as for ``postvl sample``.
        media_root: where media paths resolve (default: the input's manifest).
        format: the raw input's format (as ``postvl build --format``).
        plot: write OUT/eval.png.
        enable_thinking: a thinking family's mode (Qwen3.5), as for ``postvl sample``: ``True`` / unset opens a
            ``<think>`` block in the prompt and the verifier reads only the final answer after ``</think>`` (a sample
            whose thinking never closes has no final answer: ``unfinished_thinking``), while hygiene checks the whole
            text; ``False`` closes an empty block (answers only). Other families refuse it.
    """

    inputs: tuple[str, ...]
    out: str
    models: tuple[str, ...]
    train: tuple[str, ...] = ()
    backend: str = "vllm"
    k: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 2048
    seed: int = 0
    batch_size: int = 64
    prompts: Mapping[str, Any] = field(default_factory=dict)
    hygiene: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_HYGIENE))
    verify: Mapping[str, Any] = field(default_factory=dict)
    overlap: Mapping[str, Any] = field(default_factory=dict)
    max_model_len: int = 4096
    dtype: str = "bfloat16"
    max_images: int = 1
    max_videos: int = 0
    vllm_engine: Mapping[str, Any] = field(default_factory=dict)
    media_root: str | None = None
    format: str = "auto"
    plot: bool = True
    enable_thinking: bool | None = None

    def __post_init__(self) -> None:
        from postvl.families import LEGACY_FAMILY
        from postvl.io import input_paths
        from postvl.rejection_sampling.prompts import resolve_prompts
        from postvl.rejection_sampling.verify import VerifyConfig

        object.__setattr__(self, "inputs", input_paths(self.inputs))
        object.__setattr__(self, "models", input_paths(self.models))
        object.__setattr__(self, "train", input_paths(self.train))
        errors = []
        if not self.inputs:
            errors.append("give the eval data (a stage folder or raw data)")
        if not self.models:
            errors.append("give at least one --model")
        names = [name for name, _ in self.named_models()]
        if len(set(names)) != len(names):
            errors.append(f"model names must differ, got {names}: name them NAME=PATH")
        if self.backend not in BACKENDS:
            errors.append(f"backend {self.backend!r} is not one of {BACKENDS}")
        for name in ("k", "batch_size", "max_tokens"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_tokens >= self.max_model_len:
            errors.append(
                f"max_tokens {self.max_tokens} leaves no room for the prompt in max_model_len {self.max_model_len}"
            )
        if "final_answer" in self.hygiene:
            errors.append("hygiene.final_answer is set per answer type from the prompts (prompts.<type>.form)")
        for check in (
            self.sampling_params,
            lambda: resolve_prompts(self.prompts, family=LEGACY_FAMILY),  # validity does not depend on the family
            lambda: VerifyConfig(**dict(self.verify)),
            lambda: OverlapConfig(**dict(self.overlap)),
        ):
            try:
                check()
            except (ValueError, KeyError, TypeError) as err:
                errors.append(str(err))
        if errors:
            raise ValueError("postvl eval: " + "; ".join(errors))

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(self.k, self.temperature, self.top_p, self.max_tokens, self.seed)

    def named_models(self) -> list[tuple[str, str]]:
        """``(name, path)`` per model: ``NAME=PATH`` as given, else the folder's name."""
        out = []
        for spec in self.models:
            name, sep, path = spec.partition("=")
            out.append((name, path) if sep and name and path else (Path(spec).name or spec, spec))
        return out


def load_config(path: str | Path | None = None, **overrides: Any) -> EvalConfig:
    """An ``EvalConfig`` from a YAML file (optional) with ``overrides`` (not ``None``) on top.

    Raises:
        ValueError: an unknown key (the message names the closest one), a missing or an invalid value.
    """
    from postvl.io import load_stage_config

    return load_stage_config(EvalConfig, path, overrides, required=("inputs", "out", "models"), command="postvl eval")


# --------------------------------------------------------------------------------------------------------------------
# Inputs


def read_records(paths: Iterable[str], kinds: Sequence[str] = ("sft", "preference")) -> Iterable[dict[str, Any]]:
    """Every record of stage folders (SFT records and preference pairs) or raw JSON/JSONL/Parquet files."""
    from postvl.io import is_stage_folder, iter_rows, list_inputs, read_stage

    for path in paths:
        if is_stage_folder(path):
            for kind in kinds:
                yield from read_stage(path, kind=kind)
            continue
        for row in iter_rows(list_inputs([path])):
            if row.error is None and isinstance(row.data, dict):
                yield row.data


def model_fingerprint(path: str) -> Any:
    """Names, sizes and times of a model folder's files (a retrained model re-runs the eval)."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    return sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file())


@dataclass
class Question:
    """An evaluable record: its request (prompt and media, built once for every model) and how it is judged."""

    record: dict[str, Any]
    request: Request
    checker: Any

    @property
    def options(self) -> Any:
        meta = self.record.get("meta") or {}
        return meta.get("options") or (meta.get("extra") or {}).get("options")


def thinking_mode(cfg: EvalConfig, family: Any) -> bool:
    """Whether the prompts open a ``<think>`` block (samples are ``reasoning</think>answer``, judged on the answer).

    Raises:
        ValueError: ``enable_thinking`` is set for a family without a thinking mode.
    """
    if cfg.enable_thinking is not None and not family.thinking:
        raise ValueError(f"postvl eval: enable_thinking is set but {family.title} has no thinking mode")
    return family.thinking and cfg.enable_thinking is not False


class Evaluator:
    """Turns eval records into questions (or rejections) and judges the samples of each model.

    Args:
        cfg: the stage config.
        media_root: where the records' media resolve.
        pixels: the dataset's pixel limits (video frames are sampled with them).
        family: the models' family (``postvl.families``): the chat template and the box convention asked for.
        tokenizer: for the ``too_long`` hygiene check (in tokens); ``None``: characters.
    """

    def __init__(self, cfg: EvalConfig, media_root: str, pixels: Any, family: Any, tokenizer: Any = None) -> None:
        from postvl.rejection_sampling.hygiene import FinalAnswerForm, HygieneChecker
        from postvl.rejection_sampling.prompts import resolve_prompts
        from postvl.rejection_sampling.verify import VerifyConfig

        self.cfg = cfg
        self.media_root = media_root
        self.pixels = pixels
        self.family = family
        self.thinking = thinking_mode(cfg, family)
        self.prompts = resolve_prompts(cfg.prompts, family=family)
        self.verify_config = VerifyConfig(**dict(cfg.verify))
        base = HygieneChecker.from_config(dict(cfg.hygiene), tokenizer=tokenizer)
        self.checkers = {
            t: HygieneChecker([*base.checks, FinalAnswerForm(**spec.form_check())]) for t, spec in self.prompts.items()
        }

    def question(self, record: dict[str, Any]) -> Question | tuple[str, str]:
        """The record as a question, or ``(reason, detail)`` when it cannot be evaluated."""
        from postvl.chatml.render import render
        from postvl.generation import load_image, load_video
        from postvl.media import resolve_media_path
        from postvl.rejection_sampling.prompts import question_messages, with_instruction

        answer_type = record.get("answer_type")
        if record.get("answer") is None or not answer_type:
            return NO_ANSWER, "no gold answer to check against"
        if answer_type not in self.prompts:
            return "invalid_answer_type", f"{answer_type!r} is not one of {sorted(self.prompts)}"
        images, videos = record.get("images") or [], record.get("videos") or []
        if len(images) > self.cfg.max_images or len(videos) > self.cfg.max_videos:
            return "too_many_media", (
                f"{len(images)} images and {len(videos)} videos; the engine takes at most {self.cfg.max_images} and "
                f"{self.cfg.max_videos}: raise --max-images / --max-videos"
            )
        try:
            question = question_messages(record["messages"])
            prompt = render(
                with_instruction(question, self.prompts[answer_type].instruction),
                family=self.family,
                add_generation_prompt=True,
                enable_thinking=self.cfg.enable_thinking,
            )
        except ValueError as err:
            return "no_question", str(err)
        try:
            loaded_images = tuple(load_image(resolve_media_path(p, self.media_root)) for p in images)
            loaded_videos = tuple(load_video(resolve_media_path(p, self.media_root), self.pixels) for p in videos)
        except RecordError as err:
            return err.reason, err.detail
        except FileNotFoundError as err:
            return "missing_media", str(err)
        except (OSError, ValueError) as err:
            return "corrupt_media", f"{type(err).__name__}: {err}"
        request = Request(prompt, images=loaded_images, videos=loaded_videos, key=str(record["id"]))
        return Question(record, request, self.checkers[answer_type])

    def judge(self, question: Question, samples: Sequence[Sample]) -> QuestionResult:
        """Verify and hygiene-check every sample of one question (raises ``ValueError`` for an unusable gold)."""
        from postvl.chatml.render import answer_after_thinking
        from postvl.rejection_sampling.select import UNFINISHED_THINKING
        from postvl.rejection_sampling.verify import verify

        record = question.record
        judged = []
        for sample in samples:
            hygiene = question.checker.check(sample.text)
            if sample.finish_reason == "length":
                judged.append(
                    JudgedSample(sample.text, False, None, "truncated", hygiene, sample.num_tokens, "length")
                )
                continue
            answer = answer_after_thinking(sample.text, self.thinking)
            if answer is None:
                judged.append(
                    JudgedSample(
                        sample.text, False, None, UNFINISHED_THINKING, hygiene, sample.num_tokens, sample.finish_reason
                    )
                )
                continue
            verdict = verify(
                answer,
                record["answer"],
                record["answer_type"],
                options=question.options,
                config=self.verify_config,
            )
            judged.append(
                JudgedSample(
                    sample.text,
                    verdict.correct,
                    verdict.extracted,
                    verdict.reason,
                    hygiene,
                    sample.num_tokens,
                    sample.finish_reason,
                )
            )
        domain, subcategory = group_keys(record)
        return QuestionResult(str(record["id"]), str(record["answer_type"]), domain, subcategory, tuple(judged))


# --------------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class EvalResult:
    """What a run wrote: ``report`` is ``eval.json``; ``stats`` is ``stats.json``."""

    out: Path
    report: dict[str, Any]
    stats: dict[str, Any]
    skipped: bool


def run_eval(
    cfg: EvalConfig,
    *,
    generators: Mapping[str, Generator] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluate every model of ``cfg`` on the eval records (one process).

    Args:
        cfg: the stage config.
        generators: ready generators by model name (tests, or a caller that keeps engines); the others are built
            from ``cfg``, one at a time, and released before the next.
        progress: show progress bars.
    """
    from tqdm.auto import tqdm

    from postvl.chatml.build import stage_from_inputs
    from postvl.io import StageWriter, list_inputs, stage_settings, write_json_atomic
    from postvl.media import PixelConfig

    out = Path(cfg.out)
    folder = stage_from_inputs(
        cfg.inputs,
        out / BUILD_SUBDIR,
        progress=progress,
        format=cfg.format,
        media_root=cfg.media_root,
        model=cfg.named_models()[0][1],
    )
    media_root, pixels = stage_settings(folder)
    # a folder built here already resolved --media-root (and stored embedded media under itself): its manifest wins
    built = folder.resolve() == (out / BUILD_SUBDIR).resolve()
    media_root = media_root if built else (cfg.media_root or media_root)
    if media_root is None:
        raise ValueError(f"{folder}'s manifest names no media_root: pass --media-root")
    models = cfg.named_models()
    # every model must suit the data (its template, token counts and box convention): the family check of sampling
    families = [check_same_family(pixels and pixels.get("family"), path, what=str(folder)) for _, path in models]
    if len({f.template_file for f in families}) > 1:
        raise ValueError(
            f"postvl eval: the models render prompts differently ({[f.name for f in families]}); "
            "evaluate models of one family together"
        )
    family = families[0]
    thinking_mode(cfg, family)  # before any work
    pixels = PixelConfig(**pixels) if pixels else family.pixel_config()
    resolved = dataclasses.asdict(cfg) | {
        "inputs": list(cfg.inputs),
        "input_folder": str(folder),
        "media_root": str(media_root),
        "pixels": dataclasses.asdict(pixels),
        "model_fingerprints": {name: model_fingerprint(path) for name, path in models},
        "train_fingerprints": [_fingerprint(p) for p in cfg.train],
    }
    data = folder / "data"
    files = list_inputs([data]) if any(data.glob("part-*.parquet")) else []
    writer = StageWriter(out, stage=STAGE, config=resolved, inputs=files)
    report: dict[str, Any] = {}
    with writer:
        skipped = writer.done
        if skipped:
            report = json.loads((out / EVAL_FILE).read_text())
        else:
            records = list(read_records([str(folder)], kinds=("sft",)))
            overlap = check_overlap(read_records(cfg.train), records, OverlapConfig(**dict(cfg.overlap)))
            evaluator = Evaluator(cfg, str(media_root), pixels, family, _load_tokenizer(models[0][1]))
            questions = _questions(records, overlap, evaluator, writer)
            per_model: dict[str, list[QuestionResult]] = {}
            invalid: dict[str, str] = {}
            for name, path in models:
                generator = (generators or {}).get(name) or _build_generator(cfg, path, pixels)
                bar = tqdm(desc=f"eval {name}", total=len(questions), unit="q", disable=not progress or None)
                per_model[name] = _evaluate(cfg, evaluator, questions, generator, invalid, bar)
                bar.close()
                if name not in (generators or {}) and hasattr(generator, "close"):
                    generator.close()  # the next model's engine starts in this process
                del generator
                gc.collect()
            report = _write_results(cfg, models, questions, per_model, invalid, overlap, writer)
            report["thinking"] = evaluator.thinking
            write_json_atomic(out / EVAL_FILE, report)
            if cfg.plot:
                plot_eval(report, out / PLOT_FILE)
    stats = getattr(writer, "stats", None) or json.loads((out / "stats.json").read_text())
    return EvalResult(out, report, stats, skipped)


def _fingerprint(path: str) -> Any:
    from postvl.io import fingerprint_inputs, list_inputs

    try:
        return fingerprint_inputs(list_inputs([path]))
    except (FileNotFoundError, ValueError):
        return path


def _questions(
    records: list[dict[str, Any]], overlap: OverlapReport, evaluator: Evaluator, writer: Any
) -> list[Question]:
    questions = []
    for record in records:
        source = str((record.get("meta") or {}).get("source", ""))
        reason = overlap.dropped.get(str(record.get("id")))
        if reason is not None:
            writer.reject(
                reason,
                source=source,
                record_id=record.get("id"),
                record=record,
                detail="overlaps what trained the models (postvl.evaluation.contamination)",
            )
            continue
        made = evaluator.question(record)
        if isinstance(made, tuple):
            writer.reject(made[0], source=source, record_id=record.get("id"), detail=made[1], record=record)
            continue
        questions.append(made)
    return questions


def _evaluate(
    cfg: EvalConfig,
    evaluator: Evaluator,
    questions: Sequence[Question],
    generator: Generator,
    invalid: dict[str, str],
    bar: Any,
) -> list[QuestionResult]:
    params = cfg.sampling_params()
    results = []
    for start in range(0, len(questions), cfg.batch_size):
        batch = questions[start : start + cfg.batch_size]
        outputs = generator.generate([q.request for q in batch], params)
        for question, samples in zip(batch, outputs, strict=True):
            try:
                results.append(evaluator.judge(question, samples))
            except ValueError as err:  # a gold the verifier cannot read: a data error, the same for every model
                invalid[str(question.record["id"])] = str(err)
        bar.update(len(batch))
    return results


def _write_results(
    cfg: EvalConfig,
    models: list[tuple[str, str]],
    questions: Sequence[Question],
    per_model: Mapping[str, list[QuestionResult]],
    invalid: Mapping[str, str],
    overlap: OverlapReport,
    writer: Any,
) -> dict[str, Any]:
    samples_dir = Path(cfg.out) / SAMPLES_DIR
    samples_dir.mkdir(parents=True, exist_ok=True)
    by_id = {name: {r.id: r for r in results} for name, results in per_model.items()}
    for name, results in per_model.items():
        tmp = samples_dir / f".{name}.jsonl.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            for r in results:
                if r.id not in invalid:
                    line = {
                        "id": r.id,
                        "answer_type": r.answer_type,
                        "domain": r.domain,
                        "subcategory": r.subcategory,
                        "n_correct": r.n_correct,
                        "samples": [s.as_dict() for s in r.samples],
                    }
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
        tmp.replace(samples_dir / f"{name}.jsonl")
    for question in questions:
        record = question.record
        rid = str(record["id"])
        source = str((record.get("meta") or {}).get("source", ""))
        if rid in invalid:
            writer.reject(INVALID_GOLD, source=source, record_id=rid, detail=invalid[rid], record=record)
            continue
        meta = dict(record.get("meta") or {})
        meta["eval"] = {name: {"n_correct": by_id[name][rid].n_correct, "k": cfg.k} for name in per_model}
        writer.keep(record | {"meta": meta})
    return {
        "models": {
            name: {"path": path, **model_metrics([r for r in per_model[name] if r.id not in invalid])}
            for name, path in models
        },
        "order": [name for name, _ in models],  # eval.json's keys are sorted; this is the order asked for
        "questions": len(questions) - len(invalid),
        "k": cfg.k,
        "temperature": cfg.temperature,
        "overlap": overlap.as_dict(),
    }


def _build_generator(cfg: EvalConfig, model: str, pixels: Any) -> Generator:
    from postvl.generation import build_generator

    return build_generator(
        cfg.backend,
        model,
        pixels=pixels,
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


# --------------------------------------------------------------------------------------------------------------------
# Reporting


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def summary_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """The side-by-side table: a header, then one row per metric and group, one column per model."""
    models = report.get("order") or list(report["models"])
    rows = [["", "questions", *models]]
    first = report["models"][models[0]] if models else {}

    def add(label: str, key: str, group: str | None, metric: str, fmt: Any = _pct) -> None:
        cells = []
        for name in models:
            m = report["models"][name]
            g = m["overall"] if group is None else m[group].get(key, {})
            cells.append(fmt(g.get(metric)))
        base = first["overall"] if group is None else first[group].get(key, {})
        rows.append([label, str(base.get("questions", "")), *cells])

    add("accuracy (pass@1, %)", "", None, "accuracy")
    add(f"pass@{report['k']} (%)", "", None, "pass@k")
    for group in ("by_answer_type", "by_domain", "by_subcategory"):
        for key in first.get(group, {}):
            add(f"  {group[3:]} {key}", key, group, "accuracy")
    add("mean tokens", "", None, "mean_tokens", lambda v: "-" if v is None else f"{v:.1f}")
    add("hygiene failures (%)", "", None, "hygiene_fail")
    add("truncated (%)", "", None, "truncated")
    add("no final answer (%)", "", None, "no_final_answer")
    return rows


def summary_table(report: Mapping[str, Any], stats: Mapping[str, Any], out: str) -> Any:
    """A rich table: the models side by side, then the records dropped by the overlap check and why."""
    from rich.table import Table

    rows = summary_rows(report)
    table = Table(title=f"postvl eval -> {out} (k={report['k']}, temperature {report['temperature']})")
    for i, name in enumerate(rows[0]):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows[1:]:
        table.add_row(*row)
    table.add_section()
    ov = report["overlap"]
    table.add_row("records in / evaluated / rejected", f"{stats['total']} / {stats['kept']} / {stats['rejected']}")
    table.add_row(
        "overlap with training",
        f"{ov['reasons']['exact_overlap']} exact, {ov['reasons']['near_overlap']} near, "
        f"{ov['reasons']['eval_duplicate']} within eval ({ov['train_records']} training records)",
    )
    for reason, n in sorted(stats.get("reasons", {}).items(), key=lambda kv: -kv[1]):
        table.add_row(f"  rejected: {reason}", str(n))
    return table


def plot_eval(report: Mapping[str, Any], path: Path) -> None:
    """Accuracy and pass@k per model, and accuracy by domain and by answer type, models side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report.get("order") or list(report["models"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    width = 0.8 / max(1, len(models))
    overall = [("accuracy", "accuracy"), ("pass@k", f"pass@{report['k']}")]
    for i, name in enumerate(models):
        m = report["models"][name]
        axes[0].bar(
            [x + i * width for x in range(len(overall))],
            [m["overall"][key] or 0.0 for key, _ in overall],
            width=width,
            label=name,
        )
        for ax, group in ((axes[1], "by_domain"), (axes[2], "by_answer_type")):
            names = list(m[group])
            ax.bar(
                [x + i * width for x in range(len(names))],
                [m[group][n]["accuracy"] or 0.0 for n in names],
                width=width,
                label=name,
            )
            ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, rotation=30, ha="right")
    axes[0].set_xticks([x + 0.4 - width / 2 for x in range(len(overall))], [label for _, label in overall])
    for ax, title in zip(axes, ("overall", "accuracy by domain", "accuracy by answer type"), strict=True):
        ax.set(title=title, ylim=(0, 1.05))
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
