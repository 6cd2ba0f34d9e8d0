"""Answer length: empty, too short, too long (characters or tokens)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
