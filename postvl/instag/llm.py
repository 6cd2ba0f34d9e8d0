"""The ``llm`` tagging backend: a VLM reads the images and the QA pair and answers with domain, subcategory and tags.

This is the report's Qwen2-VL-Instag done with any local VLM through the shared generator (``postvl.generation``):

    tagger = LLMTagger(taxonomy, generator, tokenizer, media_root="data", pixels=PixelConfig())
    outcomes = tagger.tag_batch(records)   # per record: a meta dict, or a RecordError("unparseable_tags", ...)

The prompt lists the taxonomy's ids with their one-line descriptions and asks for
``{"domain": ..., "subcategory": ..., "tags": [{"tag": ..., "explanation": ...}]}``. The answer is parsed robustly
(``parse_output``: code fences, text around the JSON, single quotes, trailing commas, a bare list of tags; the last
valid object wins), mapped onto the taxonomy (``TaxonomyMatcher``: exact id, case / space / hyphen variants, then a
difflib match above a cutoff; a subcategory implies its domain) and its open tags are normalised
(``postvl.instag.normalize``). An answer that cannot be parsed or mapped is asked again (``retries``, sampled at
``retry_temperature``) and finally becomes a rejection with a reason code, never an exception.

``tag_confidence`` of this backend is the subcategory's match score: 1.0 for an id (or a case / spacing variant of
one), the difflib ratio for a fuzzy match, the embedding tagger's probability when the subcategory was inferred; it is
halved when the model's domain disagreed with its subcategory's.
"""

from __future__ import annotations

import ast
import difflib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from postvl.instag.features import record_texts
from postvl.instag.normalize import normalize_tag
from postvl.instag.taxonomy import Taxonomy
from postvl.records import RecordError

logger = logging.getLogger(__name__)

UNPARSEABLE = "unparseable_tags"  # no JSON with a domain, subcategory or tags in the model's answer
UNKNOWN_DOMAIN = "unknown_domain"  # a domain that matches no taxonomy domain (nor a subcategory)
UNKNOWN_SUBCATEGORY = "unknown_subcategory"  # a valid domain, no valid subcategory, and no fallback tagger
REASONS = {
    UNPARSEABLE: "the tagging model's answer held no parseable JSON (after retries)",
    UNKNOWN_DOMAIN: "the tagging model named a domain outside the taxonomy (after retries)",
    UNKNOWN_SUBCATEGORY: "the tagging model named no valid subcategory and no fallback tagger was set",
    "missing_media": "an image or video of the record was not found under the media root",
    "corrupt_media": "an image or video of the record could not be decoded",
}

PROMPT = """You label training data for a vision-language model. Read the question-answer pair below (and look at \
any attached images or video) and classify it into exactly one subcategory of this taxonomy:

{taxonomy}

Question:
{question}

Answer:
{answer}

Also identify tags of the user's intentions in the question, each a short lowercase phrase, with an explanation for \
each tag. Respond with one JSON object only, in this format:
{{"domain": "<domain id>", "subcategory": "<subcategory id>", "tags": [{{"tag": "<tag>", "explanation": "<why>"}}]}}"""


# --------------------------------------------------------------------------------------------------------------------
# Prompt


def taxonomy_listing(taxonomy: Taxonomy, *, descriptions: bool = True) -> str:
    """The taxonomy as the prompt shows it: each domain id, then its subcategory ids with one-line descriptions."""
    lines = []
    for domain in taxonomy.domains:
        lines.append(f"- {domain.id}: {_one_line(domain.description)}" if descriptions else f"- {domain.id}")
        for sub in domain.subcategories:
            lines.append(f"  - {sub.id}: {_one_line(sub.description)}" if descriptions else f"  - {sub.id}")
    return "\n".join(lines)


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else f"{text[: limit * 2 // 3]} … {text[len(text) - limit // 3 :]}"


def prompt_messages(
    record: dict[str, Any],
    taxonomy: Taxonomy,
    *,
    max_images: int = 1,
    max_videos: int = 0,
    max_chars: int = 2000,
    descriptions: bool = True,
) -> list[dict[str, Any]]:
    """The tagging conversation of one record: its first ``max_images`` images / ``max_videos`` videos, then the text.

    Works for SFT records and preference records (their prompt and chosen answer).
    """
    question, answer = record_texts(record)
    n_images = min(len(record.get("images") or []), max_images)
    n_videos = min(len(record.get("videos") or []), max_videos)
    text = PROMPT.format(
        taxonomy=taxonomy_listing(taxonomy, descriptions=descriptions),
        question=_clip(question, max_chars) or "(none)",
        answer=_clip(answer, max_chars) or "(none)",
    )
    content = [{"type": "image", "text": None}] * n_images + [{"type": "video", "text": None}] * n_videos
    return [{"role": "user", "content": [*content, {"type": "text", "text": text}]}]


# --------------------------------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True)
class ParsedTags:
    """What a tagging answer said, before it is mapped onto the taxonomy (any field may be missing)."""

    domain: str | None = None
    subcategory: str | None = None
    tags: tuple[tuple[str, str], ...] = ()  # (tag, explanation) as written by the model


_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_TAG_KEYS = ("tag", "name", "label")
_EXPLANATION_KEYS = ("explanation", "reason", "description")


def parse_output(text: str) -> ParsedTags | None:
    """Parse a tagging answer; ``None`` when it holds no JSON value with a domain, a subcategory or tags.

    Accepts the JSON inside code fences or surrounded by prose, Python-style single quotes, trailing commas, a bare
    list of ``{"tag", "explanation"}`` objects (or of strings) and a single ``{"tag", "explanation"}`` object. When
    several values parse, the last one that says something wins (a model often echoes the format first).
    """
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for chunk in reversed(candidates):  # a fenced block first (the last one), then the whole text
        for value in reversed(_json_values(chunk)):
            parsed = _interpret(value)
            if parsed is not None:
                return parsed
    return None


def _json_values(text: str) -> list[Any]:
    """Every outermost JSON (or Python-literal) object or list in ``text``, in order."""
    values: list[Any] = []
    decoder = json.JSONDecoder()
    pos = 0
    while True:
        starts = [i for i in (text.find("{", pos), text.find("[", pos)) if i >= 0]
        if not starts:
            return values
        start = min(starts)
        end = _matching_bracket(text, start)
        snippet = text[start:end] if end else text[start:]
        value = _loads(snippet, decoder)
        if value is _NOTHING:
            pos = start + 1  # not a value from here: look for one starting inside it
            continue
        values.append(value)
        pos = end if end else len(text)


_NOTHING = object()


def _loads(snippet: str, decoder: json.JSONDecoder) -> Any:
    for candidate in (snippet, _TRAILING_COMMA.sub(r"\1", snippet)):
        try:
            value, _ = decoder.raw_decode(candidate)
            return value
        except json.JSONDecodeError:
            pass
        try:  # single quotes, True/None: a Python literal (literal_eval evaluates no code)
            pythonic = re.sub(
                r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", candidate))
            )
            value = ast.literal_eval(pythonic)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict | list):
            return value
    return _NOTHING


def _matching_bracket(text: str, start: int) -> int | None:
    """The index after the bracket that closes ``text[start]``, skipping quoted strings; ``None`` if unclosed."""
    depth = 0
    quote: str | None = None
    escaped = False
    for i in range(start, len(text)):
        c = text[i]
        if quote:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = None
        elif c in "\"'":
            # an apostrophe inside a word ("user's") opens no string
            if c == "'" and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum():
                continue
            quote = c
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _interpret(value: Any) -> ParsedTags | None:
    if isinstance(value, list):
        tags = _tags(value)
        return ParsedTags(tags=tags) if tags else None
    if not isinstance(value, dict):
        return None
    lowered = {str(k).strip().lower(): v for k, v in value.items()}
    domain = _text(lowered.get("domain") or lowered.get("category"))
    sub = _text(lowered.get("subcategory") or lowered.get("sub_category") or lowered.get("subdomain"))
    raw_tags = lowered.get("tags")
    if raw_tags is None and any(k in lowered for k in _TAG_KEYS) and not (domain or sub):
        raw_tags = [value]  # a single {"tag": ..., "explanation": ...}
    tags = _tags(raw_tags if isinstance(raw_tags, list) else [raw_tags] if raw_tags else [])
    if not (domain or sub or tags):
        return None
    return ParsedTags(domain=domain, subcategory=sub, tags=tags)


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _tags(items: list[Any]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        if isinstance(item, str) and item.strip():
            out.append((item.strip(), ""))
        elif isinstance(item, dict):
            lowered = {str(k).strip().lower(): v for k, v in item.items()}
            tag = next((lowered[k] for k in _TAG_KEYS if isinstance(lowered.get(k), str)), None)
            why = next((lowered[k] for k in _EXPLANATION_KEYS if isinstance(lowered.get(k), str)), "")
            if tag and tag.strip():
                out.append((tag.strip(), why.strip()))
    return tuple(out)


# --------------------------------------------------------------------------------------------------------------------
# Mapping onto the taxonomy


def id_variant(name: str) -> str:
    """The id form of a name: lowercase, other characters -> one underscore ("Code-Debugging" -> code_debugging)."""
    return "_".join(re.sub(r"[^\w]+", " ", name.strip().lower()).split())


class TaxonomyMatcher:
    """Matches the domain and subcategory names a model wrote to taxonomy ids.

    Args:
        taxonomy: the taxonomy.
        cutoff: the least difflib similarity ratio a fuzzy match needs (0-1).
    """

    def __init__(self, taxonomy: Taxonomy, cutoff: float = 0.8) -> None:
        if not 0 < cutoff <= 1:
            raise ValueError(f"match cutoff must be in (0, 1], got {cutoff}")
        self.taxonomy = taxonomy
        self.cutoff = cutoff
        self.domains = {d.id: d.id for d in taxonomy.domains}
        self.subcategories = {s.id: s.domain for s in taxonomy.subcategories}

    def _match(self, name: str | None, ids: dict[str, str]) -> tuple[str, float] | None:
        if not name:
            return None
        if name in ids:
            return name, 1.0
        key = id_variant(name)
        if key in ids:
            return key, 1.0
        if "." in name or "/" in name or ">" in name:  # "coding/code_debugging", "coding > code debugging"
            last = id_variant(re.split(r"[./>]", name)[-1])
            if last in ids:
                return last, 1.0
        close = difflib.get_close_matches(key, list(ids), n=1, cutoff=self.cutoff)
        if not close:
            return None
        return close[0], difflib.SequenceMatcher(None, key, close[0]).ratio()

    def domain(self, name: str | None) -> tuple[str, float] | None:
        """``(domain id, score)`` or ``None``."""
        return self._match(name, self.domains)

    def subcategory(self, name: str | None) -> tuple[str, float] | None:
        """``(subcategory id, score)`` or ``None``."""
        return self._match(name, self.subcategories)


@dataclass(frozen=True)
class Resolved:
    """A parsed answer mapped onto the taxonomy."""

    domain: str
    subcategory: str
    confidence: float
    inferred: tuple[str, ...] = ()  # fields not given validly by the model ("subcategory")
    notes: tuple[str, ...] = field(default_factory=tuple)


def resolve(
    parsed: ParsedTags, matcher: TaxonomyMatcher, fallback: dict[str, tuple[str, float]] | None = None
) -> Resolved:
    """Map a parsed answer onto the taxonomy.

    A valid subcategory decides (and implies its domain). A valid domain without a valid subcategory takes the
    domain's best subcategory from ``fallback`` (domain id -> ``(subcategory id, probability)``, the embedding
    tagger's best subcategory inside each domain). A domain name that matches a subcategory counts as one.

    Raises:
        RecordError: ``unknown_domain`` (no domain could be matched) or ``unknown_subcategory`` (no fallback).
    """
    sub = matcher.subcategory(parsed.subcategory)
    domain = matcher.domain(parsed.domain)
    if sub is None and domain is None and parsed.domain:
        sub = matcher.subcategory(parsed.domain)  # the model put a subcategory in the domain field
    if sub is not None:
        sub_domain = matcher.subcategories[sub[0]]
        confidence = sub[1]
        notes: tuple[str, ...] = ()
        if domain is not None and domain[0] != sub_domain:
            confidence /= 2
            notes = (f"model domain {domain[0]!r} disagrees with subcategory {sub[0]!r}; the subcategory decides",)
        return Resolved(sub_domain, sub[0], round(confidence, 4), notes=notes)
    if domain is None:
        if not parsed.domain and fallback is not None and not parsed.subcategory:
            best_domain = max(fallback, key=lambda d: fallback[d][1])  # neither given: the fallback decides all
            sub_id, prob = fallback[best_domain]
            return Resolved(best_domain, sub_id, round(prob, 4), inferred=("domain", "subcategory"))
        raise RecordError(
            UNKNOWN_DOMAIN, f"domain {parsed.domain!r} / subcategory {parsed.subcategory!r} match no taxonomy id"
        )
    if fallback is None or domain[0] not in fallback:
        raise RecordError(
            UNKNOWN_SUBCATEGORY,
            f"subcategory {parsed.subcategory!r} matches nothing in domain {domain[0]!r} and no fallback is set",
        )
    sub_id, prob = fallback[domain[0]]
    return Resolved(domain[0], sub_id, round(prob * domain[1], 4), inferred=("subcategory",))


def normalized_tags(parsed: ParsedTags, max_tags: int) -> tuple[list[str], dict[str, str]]:
    """The normalised open tags (first ``max_tags`` distinct, empty ones dropped) and their explanations."""
    tags: list[str] = []
    explanations: dict[str, str] = {}
    for tag, why in parsed.tags:
        normal = normalize_tag(tag)
        if normal and normal not in explanations and len(tags) < max_tags:
            tags.append(normal)
            explanations[normal] = why
    return tags, explanations


# --------------------------------------------------------------------------------------------------------------------
# The tagger


class LLMTagger:
    """Tags records with a VLM through the shared generator.

    Args:
        taxonomy: the taxonomy.
        generator: a ``postvl.generation`` generator (``VLLMGenerator`` or ``TransformersGenerator``).
        tokenizer: the model's tokenizer (its chat template renders the prompts).
        media_root: folder the records' media paths resolve against.
        pixels: the dataset's pixel limits (video frame sampling).
        params: ``SamplingParams`` of the first attempt (``n`` must be 1).
        retries: further attempts for answers that do not parse or map.
        retry_temperature: sampling temperature of the retries.
        fallback: a tagger with ``scores(records)`` (the ``EmbeddingTagger``) that picks the subcategory when the
            model names only a valid domain; ``None``: such answers are rejected as ``unknown_subcategory``.
        match_cutoff: least difflib ratio of a fuzzy id match.
        max_images, max_videos: media items of a record shown to the model.
        max_chars: characters of the question and of the answer shown (head and tail when longer).
        max_tags: most open tags kept per record.
        descriptions: list the taxonomy with its descriptions (``False``: ids only, a shorter prompt).
    """

    def __init__(
        self,
        taxonomy: Taxonomy,
        generator: Any,
        tokenizer: Any,
        *,
        media_root: str,
        pixels: Any,
        params: Any,
        retries: int = 2,
        retry_temperature: float = 0.7,
        fallback: Any = None,
        match_cutoff: float = 0.8,
        max_images: int = 1,
        max_videos: int = 0,
        max_chars: int = 2000,
        max_tags: int = 10,
        descriptions: bool = True,
    ) -> None:
        if params.n != 1:
            raise ValueError(
                f"the llm tagger takes one answer per attempt: SamplingParams.n must be 1, got {params.n}"
            )
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.taxonomy = taxonomy
        self.generator = generator
        self.tokenizer = tokenizer
        self.media_root = media_root
        self.pixels = pixels
        self.params = params
        self.retries = retries
        self.retry_temperature = retry_temperature
        self.fallback = fallback
        self.matcher = TaxonomyMatcher(taxonomy, match_cutoff)
        self.max_images, self.max_videos = max_images, max_videos
        self.max_chars, self.max_tags, self.descriptions = max_chars, max_tags, descriptions
        self.attempts = 0  # generate calls per record, summed (for the stage's statistics)

    def request(self, record: dict[str, Any]) -> Any:
        """The generator request of one record (prompt rendered with the chat template, media loaded).

        Raises:
            RecordError: ``missing_media`` or ``corrupt_media``.
        """
        from postvl.generation import Request, load_image, load_video
        from postvl.media import resolve_media_path

        messages = prompt_messages(
            record,
            self.taxonomy,
            max_images=self.max_images,
            max_videos=self.max_videos,
            max_chars=self.max_chars,
            descriptions=self.descriptions,
        )
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images = (record.get("images") or [])[: self.max_images]
        videos = (record.get("videos") or [])[: self.max_videos]
        try:
            loaded_images = tuple(load_image(resolve_media_path(p, self.media_root)) for p in images)
            loaded_videos = tuple(load_video(resolve_media_path(p, self.media_root), self.pixels) for p in videos)
        except FileNotFoundError as err:
            raise RecordError("missing_media", str(err)) from err
        except (OSError, ValueError) as err:
            raise RecordError("corrupt_media", f"{type(err).__name__}: {err}") from err
        return Request(prompt, images=loaded_images, videos=loaded_videos, key=str(record.get("id", "")))

    def tag_batch(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any] | RecordError]:
        """Per record, the ``meta`` keys tagging adds, or a ``RecordError`` with the reason code (and the answer)."""
        import dataclasses

        from postvl.chatml.render import opens_thinking

        outcomes: list[dict[str, Any] | RecordError | None] = [None] * len(records)
        requests: dict[int, Any] = {}
        for i, record in enumerate(records):
            try:
                requests[i] = self.request(record)
            except RecordError as err:
                outcomes[i] = err
        fallback = self._fallback_choices([records[i] for i in requests]) if self.fallback is not None else None
        fallback_of = dict(zip(requests, fallback, strict=True)) if fallback is not None else {}
        pending = sorted(requests)
        for attempt in range(self.retries + 1):
            if not pending:
                break
            params = self.params
            if attempt:
                params = dataclasses.replace(params, temperature=self.retry_temperature, seed=params.seed + attempt)
            samples = self.generator.generate([requests[i] for i in pending], params)
            self.attempts += len(pending)
            still = []
            for i, sample in zip(pending, samples, strict=True):
                outcome = self.interpret(sample[0], fallback_of.get(i), thinking=opens_thinking(requests[i].prompt))
                outcomes[i] = outcome
                if isinstance(outcome, RecordError):
                    still.append(i)
            pending = still
        return [o if o is not None else RecordError(UNPARSEABLE, "no answer") for o in outcomes]

    def interpret(
        self, sample: Any, fallback: dict[str, tuple[str, float]] | None, *, thinking: bool = False
    ) -> dict[str, Any] | RecordError:
        """One generated answer -> the meta keys, or a ``RecordError`` naming why it cannot be used.

        ``thinking``: the prompt opened ``<think>`` (a Qwen3.5 tagger): only the text after ``</think>`` is read.
        """
        from postvl.chatml.render import answer_after_thinking

        answer = answer_after_thinking(sample.text, thinking)
        if answer is None:
            return RecordError(UNPARSEABLE, f"the thinking never closed (</think>): {sample.text[:500]!r}")
        parsed = parse_output(answer)
        if parsed is None:
            cut = " (cut at max_tokens: raise --max-tokens)" if sample.finish_reason == "length" else ""
            return RecordError(UNPARSEABLE, f"no JSON answer{cut}: {sample.text[:500]!r}")
        try:
            resolved = resolve(parsed, self.matcher, fallback)
        except RecordError as err:
            return RecordError(err.reason, f"{err.detail}; answer: {sample.text[:500]!r}")
        tags, explanations = normalized_tags(parsed, self.max_tags)
        meta: dict[str, Any] = {
            "domain": resolved.domain,
            "subcategory": resolved.subcategory,
            "tags": tags,
            "tag_confidence": resolved.confidence,
            "tag_explanations": explanations,
        }
        if resolved.inferred:
            meta["tag_inferred"] = list(resolved.inferred)
        return meta

    def _fallback_choices(self, records: Sequence[dict[str, Any]]) -> list[dict[str, tuple[str, float]]]:
        """Per record, each domain's best subcategory and its probability by the fallback tagger."""
        import numpy as np

        if not records:
            return []
        scores, _ = self.fallback.scores(records)
        z = scores / getattr(self.fallback, "temperature", 1.0)
        z = z - z.max(axis=1, keepdims=True)
        prob = np.exp(z)
        prob /= prob.sum(axis=1, keepdims=True)
        subs = self.taxonomy.subcategories
        choices = []
        for row in prob:
            best: dict[str, tuple[str, float]] = {}
            for j, sub in enumerate(subs):
                if sub.domain not in best or row[j] > best[sub.domain][1]:
                    best[sub.domain] = (sub.id, float(row[j]))
            choices.append(best)
        return choices
