"""Model-based scores of the records that passed the rules, and per-domain minimum scores.

The Qwen2.5-VL report scores queries (complexity, relevance) and answers (correctness, completeness, clarity,
relevance, helpfulness) and, for visual tasks, whether the answer uses the visual content. Two backends score them:

- ``reward_model``: an ``AutoModelForSequenceClassification`` (one head, or ``num_labels`` heads named by
  ``scores.dimensions`` or the model's ``id2label``) over the rendered conversation. Text-only: the conversation is
  rendered with the Qwen2.5-VL chat template, each image / video as its ``<|vision_start|><|image_pad|>...`` marker
  (transformers has no sequence-classification head for Qwen2.5-VL). Records are sorted by length, batched, and the
  scores put back in input order. ``postvl rm train`` trains such a model.
- ``judge``: a VLM through the shared generator (``postvl.generation``): a rubric prompt with the record's images asks
  for JSON scores 1-10 per dimension; a judgement that does not parse into every asked dimension is the reason
  ``unparseable_judgement``, never a crash.

Scores go into ``meta["scores"]`` (``{dimension: float}``). The ``scores`` section of a filter config
(``configs/filters/default.yaml``) chooses the backend and the minimums::

    scores:
      backend: reward_model          # reward_model | judge | null (no scoring)
      model: runs/rm                 # local folder (``--model`` overrides)
      dimensions: [reward]           # reward_model: one name per head; judge: which rubric dimensions to ask
      min: {reward: -1.0}            # every record (untagged records get exactly these)
      domains:
        math:
          min: {correctness: 7}      # merged over `min`, dimension by dimension; null switches one off
          subcategories:
            text_math: {correctness: 8}

A record below a minimum is rejected as ``low_score_<dimension>`` (the first failing dimension in config order).
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BACKENDS = ("reward_model", "judge")
UNPARSEABLE = "unparseable_judgement"

# The report's dimensions, as the judge is asked for them (1 = worst, 10 = best).
JUDGE_DIMENSIONS: dict[str, str] = {
    "query_complexity": "how much reasoning or knowledge the question demands (1 = trivial, 10 = very demanding)",
    "query_relevance": "whether the question is clear and can be answered from the given image(s) and text",
    "correctness": "whether the answer is factually and logically correct",
    "completeness": "whether the answer addresses every part of the question",
    "clarity": "whether the answer is clear, well organised and easy to follow",
    "answer_relevance": "whether the answer stays on the question, without unrelated content",
    "helpfulness": "how useful the answer is to the person who asked",
    "visual_grounding": "whether the answer uses what is actually visible in the image(s) or video",
}
VISUAL_DIMENSIONS = frozenset({"visual_grounding"})
DEFAULT_RM_DIMENSION = "reward"

JUDGE_SYSTEM = (
    "You are a strict grader of training data for a vision-language assistant. You read a conversation between a "
    "user and an assistant and rate it. Reply with one JSON object and nothing else."
)


# --------------------------------------------------------------------------------------------------------------------
# Config


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class JudgeOptions:
    """How the judge generates (``scores.judge`` in the config).

    Attributes:
        generator: the shared generator's backend, ``vllm`` or ``transformers``.
        max_tokens: most tokens of a judgement.
        max_model_len: longest prompt + judgement.
        dtype: weights dtype.
        max_images: most images in one prompt.
        engine: more ``vllm.LLM`` arguments (``enforce_eager``, ``tensor_parallel_size``...).
    """

    generator: str = "vllm"
    max_tokens: int = 256
    max_model_len: int = 4096
    dtype: str = "bfloat16"
    max_images: int = 1
    engine: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreConfig:
    """The ``scores`` section of a filter config. Build with ``from_dict``, which checks every key.

    Attributes:
        backend: ``reward_model``, ``judge`` or ``None`` (no model scores; the stage runs the rules only).
        model: a local model folder (``postvl filter --model`` overrides it).
        dimensions: reward model: one name per head (default: the model's ``id2label``, or ``reward`` for one head);
            judge: the rubric dimensions to ask (default: all of ``JUDGE_DIMENSIONS``).
        batch_size: records per forward pass / generate call.
        max_length: reward model: longest tokenized conversation; a longer one keeps its first ``max_length - 1``
            tokens and its last token (see ``RewardModelScorer``).
        dtype: reward model weights dtype.
        judge: the judge's generation options.
        min: minimum score per dimension for every record.
        domains: per domain ``{min: {...}, subcategories: {name: {...}}}``, merged over ``min``.
    """

    backend: str | None = None
    model: str | None = None
    dimensions: tuple[str, ...] = ()
    batch_size: int = 16
    max_length: int = 2048
    dtype: str = "float32"
    judge: JudgeOptions = field(default_factory=JudgeOptions)
    min: Mapping[str, float | None] = field(default_factory=dict)
    domains: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ScoreConfig:
        """Parse and check a ``scores`` mapping; all problems are reported together.

        Raises:
            ValueError: unknown keys (with the closest known one), a bad backend, bad minimums.
        """
        from postvl.filtering.policy import DOMAINS

        data = dict(data or {})
        errors: list[str] = []
        known = ("backend", "model", "dimensions", "batch_size", "max_length", "dtype", "judge", "min", "domains")
        for key in data:
            if key not in known:
                errors.append(f"scores: unknown key {key!r}{_did_you_mean(key, known)}; known: {list(known)}")
        backend = data.get("backend")
        if backend is not None and backend not in BACKENDS:
            errors.append(f"scores.backend: {backend!r} is not one of {BACKENDS} (or null for no scoring)")
        judge_data = dict(data.get("judge") or {})
        judge_known = [f for f in JudgeOptions.__dataclass_fields__]
        for key in judge_data:
            if key not in judge_known:
                errors.append(f"scores.judge: unknown key {key!r}{_did_you_mean(key, judge_known)}")
        dims = tuple(data.get("dimensions") or ())
        if backend == "judge":
            for d in dims:
                if d not in JUDGE_DIMENSIONS:
                    hint = _did_you_mean(d, JUDGE_DIMENSIONS)
                    errors.append(f"scores.dimensions: {d!r} is not a judge dimension{hint}")
        for key in ("batch_size", "max_length"):
            if key in data and (not isinstance(data[key], int) or data[key] < 1):
                errors.append(f"scores.{key} must be a positive integer, got {data[key]!r}")
        mins = _min_table(data.get("min") or {}, "scores.min", errors)
        domains: dict[str, dict[str, Any]] = {}
        for domain, raw in (data.get("domains") or {}).items():
            where = f"scores.domains.{domain}"
            if domain not in DOMAINS:
                errors.append(f"{where}: unknown domain{_did_you_mean(domain, DOMAINS)}; domains: {DOMAINS}")
                continue
            raw = raw or {}
            if not isinstance(raw, Mapping):
                errors.append(f"{where}: expected a mapping with `min` / `subcategories`, got {raw!r}")
                continue
            for key in raw:
                if key not in ("min", "subcategories"):
                    errors.append(f"{where}: unknown key {key!r}{_did_you_mean(key, ('min', 'subcategories'))}")
            subs = {
                str(sub): _min_table(table or {}, f"{where}.subcategories.{sub}", errors)
                for sub, table in (raw.get("subcategories") or {}).items()
            }
            domains[domain] = {"min": _min_table(raw.get("min") or {}, f"{where}.min", errors), "subcategories": subs}
        if errors:
            raise ValueError("invalid scores config:\n  " + "\n  ".join(errors))
        judge = JudgeOptions(**judge_data)
        return cls(
            backend=backend,
            model=data.get("model"),
            dimensions=dims,
            batch_size=int(data.get("batch_size", 16)),
            max_length=int(data.get("max_length", 2048)),
            dtype=str(data.get("dtype", "float32")),
            judge=judge,
            min=mins,
            domains=domains,
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> ScoreConfig:
        import yaml

        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        try:
            return cls.from_dict(data.get("scores"))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


def _min_table(table: Any, where: str, errors: list[str]) -> dict[str, float | None]:
    if not isinstance(table, Mapping):
        errors.append(f"{where}: expected a mapping of dimension -> minimum score, got {table!r}")
        return {}
    out: dict[str, float | None] = {}
    for dim, value in table.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            errors.append(f"{where}.{dim}: a minimum must be a number or null, got {value!r}")
            continue
        out[str(dim)] = None if value is None else float(value)
    return out


class ScoreThresholds:
    """Minimum scores per domain / subcategory: defaults -> ``domains.<d>.min`` -> ``subcategories.<s>``.

    Args:
        config: the parsed ``scores`` section.
    """

    def __init__(self, config: ScoreConfig) -> None:
        base = {k: v for k, v in config.min.items() if v is not None}
        self._tables: dict[tuple[str | None, str | None], dict[str, float]] = {(None, None): base}
        for domain, rules in config.domains.items():
            table = _merge_min(base, rules["min"])
            self._tables[(domain, None)] = table
            for sub, sub_table in rules["subcategories"].items():
                self._tables[(domain, sub)] = _merge_min(table, sub_table)

    def minimums(self, domain: str | None, subcategory: str | None = None) -> dict[str, float]:
        tables = self._tables
        return tables.get((domain, subcategory)) or tables.get((domain, None)) or tables[(None, None)]

    def check(self, meta: Mapping[str, Any], scores: Mapping[str, float]) -> str | None:
        """``low_score_<dimension>`` for the first dimension below its minimum, else ``None``.

        A dimension the scorer did not give (``visual_grounding`` of a text-only record) is not checked.
        """
        domain, sub = meta.get("domain"), meta.get("subcategory")
        table = self.minimums(domain if isinstance(domain, str) else None, sub if isinstance(sub, str) else None)
        for dim, minimum in table.items():
            value = scores.get(dim)
            if value is not None and value < minimum:
                return f"low_score_{_snake(dim)}"
        return None


def _merge_min(base: Mapping[str, float], table: Mapping[str, float | None]) -> dict[str, float]:
    merged = dict(base)
    for dim, value in table.items():
        if value is None:
            merged.pop(dim, None)
        else:
            merged[dim] = value
    return merged


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "score"


# --------------------------------------------------------------------------------------------------------------------
# Rendering


def conversation_of(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The conversation a record is scored on: ``messages``, or ``prompt + chosen`` for a preference record."""
    if "chosen" in record and record.get("chosen") is not None:
        return list(record.get("prompt") or []) + list(record["chosen"])
    return list(record.get("messages") or [])


def render_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The conversation as the Qwen2.5-VL chat template renders it, one pad token per image / video.

    ``postvl rm train`` and the ``reward_model`` scorer both use this, so a reward model scores exactly the text it
    was trained on.
    """
    from postvl.chatml.render import render

    return render(list(messages), family="qwen2_5_vl")  # the reward model's own input format (train = score)


# --------------------------------------------------------------------------------------------------------------------
# Scorers


class RewardModelScorer:
    """Scores conversations with a sequence-classification reward model (text-only rendering, see the module doc).

    Args:
        model: a local folder with an ``AutoModelForSequenceClassification`` and its tokenizer.
        dimensions: one name per head; default: the model's ``id2label`` when it names them, else ``reward`` (one
            head) or ``score_0``... (several).
        batch_size: conversations per forward pass.
        max_length: conversations longer than this many tokens are cut to their first ``max_length`` tokens, with
            the last token kept (the head reads the last token).
        dtype: weights dtype.
        device: torch device (default: CUDA when available, else CPU).

    Raises:
        ValueError: ``dimensions`` does not match the model's ``num_labels``.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        dimensions: Sequence[str] = (),
        batch_size: int = 16,
        max_length: int = 2048,
        dtype: str = "float32",
        device: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_path = str(model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.model_path, dtype=getattr(torch, dtype) if dtype != "auto" else "auto"
        )
        self.model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        self.pad_id = pad
        if getattr(self.model.config, "pad_token_id", None) is None:
            raise ValueError(
                f"{self.model_path}: config.pad_token_id is not set, so the head cannot find each conversation's "
                "last token; save the model with its pad token id (postvl rm train does)"
            )
        n = int(self.model.config.num_labels)
        self.dimensions = tuple(dimensions) or _head_names(self.model.config.id2label, n)
        if len(self.dimensions) != n:
            raise ValueError(
                f"scores.dimensions names {len(self.dimensions)} dimensions {list(self.dimensions)} but "
                f"{self.model_path} has num_labels={n}: give one name per head"
            )
        self.batch_size = batch_size
        self.max_length = max_length

    def encode(self, records: Sequence[Mapping[str, Any]]) -> list[list[int]]:
        texts = [render_text(conversation_of(r)) for r in records]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        limit = self.max_length
        return [x if len(x) <= limit else x[: limit - 1] + x[-1:] for x in ids]

    def score(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, float] | str]:
        """One ``{dimension: score}`` per record, in input order (sorted by length inside, for tight batches)."""
        import torch

        ids = self.encode(records)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[dict[str, float] | str] = [{} for _ in ids]
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            with torch.inference_mode():
                logits = self.model(
                    input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False
                ).logits
            for row, i in enumerate(batch):
                values = logits[row].float().tolist()
                out[i] = {dim: round(float(v), 4) for dim, v in zip(self.dimensions, values, strict=True)}
        return out


def _head_names(id2label: Mapping[Any, str] | None, n: int) -> tuple[str, ...]:
    labels = [str((id2label or {}).get(i, (id2label or {}).get(str(i), ""))) for i in range(n)]
    if all(labels) and not any(re.fullmatch(r"LABEL_\d+", label) for label in labels):
        return tuple(labels)
    return (DEFAULT_RM_DIMENSION,) if n == 1 else tuple(f"score_{i}" for i in range(n))


class JudgeScorer:
    """A VLM judge through the shared generator: a rubric prompt with the record's media, JSON scores 1-10 back.

    Args:
        generator: a ``postvl.generation.Generator``.
        dimensions: rubric dimensions to ask (``JUDGE_DIMENSIONS`` keys); ``visual_grounding`` is asked only of
            records with images or videos.
        media_root: where the records' media paths resolve.
        pixels: video sampling limits (``PixelConfig``) for the judge's video frames.
        max_tokens: most tokens per judgement.
        batch_size: records per generate call.
    """

    def __init__(
        self,
        generator: Any,
        *,
        dimensions: Sequence[str] = (),
        media_root: str | None = None,
        pixels: Any = None,
        max_tokens: int = 256,
        batch_size: int = 16,
    ) -> None:
        self.generator = generator
        self.dimensions = tuple(dimensions) or tuple(JUDGE_DIMENSIONS)
        unknown = [d for d in self.dimensions if d not in JUDGE_DIMENSIONS]
        if unknown:
            raise ValueError(f"unknown judge dimensions {unknown}; choose from {list(JUDGE_DIMENSIONS)}")
        self.media_root = media_root
        self.pixels = pixels
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.last_raw: dict[str, str] = {}

    def asked(self, record: Mapping[str, Any]) -> tuple[str, ...]:
        visual = bool(record.get("images") or record.get("videos"))
        return tuple(d for d in self.dimensions if visual or d not in VISUAL_DIMENSIONS)

    def request(self, record: Mapping[str, Any]) -> Any:
        """The generator request: rubric prompt (chat template, generation prompt) and the record's media."""
        from postvl.chatml.render import render
        from postvl.generation import Request, load_image, load_video
        from postvl.media import PixelConfig, resolve_media_path

        messages = judge_messages(record, self.asked(record))
        root = self.media_root or "."
        images = tuple(load_image(resolve_media_path(p, root)) for p in record.get("images") or [])
        videos = tuple(
            load_video(resolve_media_path(p, root), self.pixels or PixelConfig()) for p in record.get("videos") or []
        )
        prompt = render(messages, add_generation_prompt=True, family=self.generator.family)
        return Request(prompt, images=images, videos=videos, key=str(record["id"]))

    def score(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, float] | str]:
        """``{dimension: score}`` per record, or ``unparseable_judgement`` (the raw text is in ``last_raw[id]``)."""
        from postvl.chatml.render import answer_after_thinking, opens_thinking
        from postvl.generation import SamplingParams

        params = SamplingParams(n=1, temperature=0.0, max_tokens=self.max_tokens, seed=0)
        out: list[dict[str, float] | str] = []
        self.last_raw = {}
        for start in range(0, len(records), self.batch_size):
            batch = records[start : start + self.batch_size]
            requests = [self.request(r) for r in batch]
            samples = self.generator.generate(requests, params)
            for record, request, sample in zip(batch, requests, samples, strict=True):
                text = sample[0].text if sample else ""
                # a thinking judge (Qwen3.5) scores after </think>; reasoning that never closes scores nothing
                answer = answer_after_thinking(text, opens_thinking(request.prompt))
                scores = None if answer is None else parse_judgement(answer, self.asked(record))
                if scores is None:
                    self.last_raw[str(record["id"])] = text
                    out.append(UNPARSEABLE)
                else:
                    out.append(scores)
        return out


def judge_messages(record: Mapping[str, Any], dimensions: Sequence[str]) -> list[dict[str, Any]]:
    """The judge's conversation: the rubric as system turn, the record's media and text as the user turn."""
    lines = []
    media_parts: list[dict[str, Any]] = []
    for msg in conversation_of(record):
        if msg["role"] == "system":
            continue
        text = "".join(p.get("text") or "" for p in msg["content"] if p["type"] == "text")
        media_parts += [{"type": p["type"], "text": None} for p in msg["content"] if p["type"] in ("image", "video")]
        lines.append(f"[{msg['role'].upper()}]\n{text}")
    rubric = "\n".join(f"- {d}: {JUDGE_DIMENSIONS[d]}" for d in dimensions)
    example = json.dumps({d: 7 for d in dimensions})
    instruction = (
        "Rate the conversation below on each dimension with an integer from 1 (worst) to 10 (best).\n"
        f"{rubric}\n\n"
        + "\n\n".join(lines)
        + f"\n\nReply with only a JSON object with these keys, for example: {example}"
    )
    return [
        {"role": "system", "content": [{"type": "text", "text": JUDGE_SYSTEM}]},
        {"role": "user", "content": [*media_parts, {"type": "text", "text": instruction}]},
    ]


_FENCE_RE = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.S | re.I)
_PAIR_RE = re.compile(r"[\"']?([A-Za-z][A-Za-z _-]*?)[\"']?\s*[:=]\s*[\"']?(-?\d+(?:\.\d+)?)(?:\s*/\s*10)?")


def parse_judgement(text: str, dimensions: Sequence[str]) -> dict[str, float] | None:
    """Scores 1-10 for every asked dimension from a judge's reply, or ``None`` when they are not all there.

    Tries, in order: a fenced JSON block, the first ``{...}`` that parses as JSON, then ``name: 7`` pairs anywhere.
    Keys match dimension names case-insensitively, with spaces or hyphens for underscores. A score outside 1-10 or
    a missing dimension makes the whole judgement unparseable.
    """
    if not text:
        return None
    found: dict[str, float] = {}
    for candidate in _json_candidates(text):
        if isinstance(candidate, dict):
            found = {_snake(str(k)): v for k, v in candidate.items()}
            break
    if not found:
        found = {_snake(k): v for k, v in _PAIR_RE.findall(text)}
    scores: dict[str, float] = {}
    for dim in dimensions:
        value = found.get(dim)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return None
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return None
        if not 1 <= value <= 10:
            return None
        scores[dim] = float(value)
    return scores


def _json_candidates(text: str) -> list[Any]:
    out = []
    for block in _FENCE_RE.findall(text):
        try:
            out.append(json.loads(block))
        except ValueError:
            continue
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start >= 0 and len(out) < 4:
        try:
            value, _ = decoder.raw_decode(text, start)
            out.append(value)
            break
        except ValueError:
            start = text.find("{", start + 1)
    return out


def build_scorer(
    config: ScoreConfig,
    *,
    model: str | None = None,
    media_root: str | None = None,
    pixels: Any = None,
    generator: Any = None,
) -> RewardModelScorer | JudgeScorer:
    """The scorer ``config`` asks for, on ``model`` (default ``config.model``).

    Args:
        config: the ``scores`` section.
        model: overrides ``config.model``.
        media_root, pixels: where the judge finds the records' media, and video limits.
        generator: a ready generator for the judge (tests, or an engine kept across calls).

    Raises:
        ValueError: no backend, or no model folder.
        ImportError: the judge's vLLM backend without vLLM (the message names the fix).
    """
    model = model or config.model
    if config.backend is None:
        raise ValueError("scores.backend is null: set it to reward_model or judge, or run the rules only")
    if generator is None and (model is None or not Path(model).is_dir()):
        raise ValueError(
            f"scores.model {model!r} is not a local model folder: pass --model DIR or set scores.model "
            "(train a reward model with `postvl rm train`)"
        )
    if config.backend == "reward_model":
        return RewardModelScorer(
            model,
            dimensions=config.dimensions,
            batch_size=config.batch_size,
            max_length=config.max_length,
            dtype=config.dtype,
        )
    if generator is None:
        from postvl.generation import build_generator

        opts = config.judge
        generator = build_generator(
            opts.generator,
            model,
            pixels=pixels,
            max_model_len=opts.max_model_len,
            dtype=opts.dtype,
            max_images=opts.max_images,
            engine_kwargs=dict(opts.engine),
        )
    return JudgeScorer(
        generator,
        dimensions=config.dimensions,
        media_root=media_root,
        pixels=pixels,
        max_tokens=config.judge.max_tokens,
        batch_size=config.batch_size,
    )
