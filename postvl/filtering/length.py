"""Answer length: empty, too short, too long (characters or tokens), or short of what the question asks for."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from postvl.filtering.base import Filter, Sample


class LengthFilter(Filter):
    """Rejects an empty answer, or one outside the character / token bounds.

    Tokens are counted by ``count_tokens`` when given (e.g. a tokenizer's ``len(encode(text))``); otherwise a cheap
    estimate is used: one token per word of a space-separated script and one per CJK character.

    Args:
        min_chars: fewest characters (after stripping) an answer may have.
        max_chars: most characters; ``None`` for no limit.
        min_tokens: fewest tokens; ``None`` for no limit.
        max_tokens: most tokens; ``None`` for no limit.
        count_tokens: ``text -> int``; defaults to the word / CJK character estimate.

    Reasons: ``empty_answer``, ``answer_too_short``, ``answer_too_long``.
    """

    name = "length"

    def __init__(
        self,
        min_chars: int = 1,
        max_chars: int | None = None,
        min_tokens: int | None = None,
        max_tokens: int | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        if min_chars < 0:
            raise ValueError(f"length: min_chars must be >= 0, got {min_chars}")
        if max_chars is not None and max_chars < min_chars:
            raise ValueError(f"length: max_chars ({max_chars}) must be >= min_chars ({min_chars})")
        if min_tokens is not None and max_tokens is not None and max_tokens < min_tokens:
            raise ValueError(f"length: max_tokens ({max_tokens}) must be >= min_tokens ({min_tokens})")
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.min_tokens = min_tokens
        self.max_tokens = max_tokens
        self._count_tokens = count_tokens

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        sample = Sample.of(record)
        text = sample.answer.strip()
        if not text:
            return "empty_answer"
        n = len(text)
        if n < self.min_chars:
            return "answer_too_short"
        if self.max_chars is not None and n > self.max_chars:
            return "answer_too_long"
        if self.min_tokens is not None or self.max_tokens is not None:
            tokens = len(sample.answer_tokens) if self._count_tokens is None else self._count_tokens(text)
            if self.min_tokens is not None and tokens < self.min_tokens:
                return "answer_too_short"
            if self.max_tokens is not None and tokens > self.max_tokens:
                return "answer_too_long"
        return None


# Questions that ask for a long answer, and (overriding them) questions that ask for a short one. English cues
# match whole words, case-insensitively; Chinese cues match as substrings.
DETAIL_CUES = (
    "explain",
    "explanation",
    "in detail",
    "detailed",
    "elaborate",
    "step by step",
    "step-by-step",
    "walk me through",
    "write an essay",
    "write a paragraph",
    "discuss",
    "详细",
    "解释",
    "阐述",
    "论述",
    "说明理由",
    "一步一步",
    "逐步",
)
BRIEF_CUES = (
    "briefly",
    "brief",
    "in one word",
    "one word",
    "single word",
    "in a word",
    "short answer",
    "yes or no",
    "only the",
    "just the",
    "简要",
    "简短",
    "简单回答",
    "一句话",
    "一个词",
    "只回答",
    "只需回答",
    "是或否",
)


class SubstanceFilter(Filter):
    """Rejects an answer with nothing in it (no letter or digit in any script), or one far shorter than its
    question asks for.

    A question asks for a long answer when it holds one of ``detail_cues`` ("Explain ...", "in detail", "详细") and
    none of ``brief_cues`` ("briefly", "in one word", "一句话"); its answer then needs ``min_detail_tokens`` tokens
    (words of space-separated scripts, single CJK characters). "." to "Explain the theory of relativity in detail."
    fails both checks; "3" to "How many circles are there?" passes.

    Args:
        min_detail_tokens: fewest answer tokens when the question asks for detail.
        detail_cues: phrases that ask for a long answer (English: whole words, any case; CJK: substrings).
        brief_cues: phrases that ask for a short answer; they win over ``detail_cues``.

    Reasons: ``no_substance`` (no letter or digit), ``answer_too_short_for_question``.
    """

    name = "substance"

    def __init__(
        self,
        min_detail_tokens: int = 8,
        detail_cues: Sequence[str] = DETAIL_CUES,
        brief_cues: Sequence[str] = BRIEF_CUES,
    ) -> None:
        if min_detail_tokens < 1:
            raise ValueError(f"substance: min_detail_tokens must be >= 1, got {min_detail_tokens}")
        self.min_detail_tokens = min_detail_tokens
        self.detail_cues = list(detail_cues)
        self.brief_cues = list(brief_cues)
        self._detail_re = _cue_regex(self.detail_cues)
        self._brief_re = _cue_regex(self.brief_cues)

    def asks_for_detail(self, query: str) -> bool:
        """Whether the question asks for a long answer (a detail cue and no brief cue)."""
        return bool(self._detail_re and self._detail_re.search(query)) and not (
            self._brief_re and self._brief_re.search(query)
        )

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        sample = Sample.of(record)
        if not sample.answer.strip():
            return None  # the length filter's `empty_answer`
        if not _WORD_CHAR_RE.search(sample.answer):
            return "no_substance"
        if len(sample.answer_tokens) < self.min_detail_tokens and self.asks_for_detail(sample.query):
            return "answer_too_short_for_question"
        return None


# A letter or digit of any script (\w less the underscore).
_WORD_CHAR_RE = re.compile(r"[^\W_]")


def _cue_regex(cues: Sequence[str]) -> re.Pattern[str] | None:
    """One regex for the cues: ASCII ones between word boundaries, others as they are; ``None`` for no cues."""
    parts = [rf"\b{re.escape(c)}\b" if c.isascii() else re.escape(c) for c in cues if c]
    return re.compile("|".join(parts), re.I) if parts else None
