"""Content filters: a harmful-phrase lexicon and code-switching between scripts."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from postvl.filtering.base import CJK_RE, FENCE_BLOCK_RE, Filter, Sample


class HarmfulFilter(Filter):
    """Rejects an answer (and optionally a query) that contains a phrase of a harmful-content lexicon.

    Phrases with CJK characters match as substrings (CJK text has no word boundaries); other phrases match whole
    words, case-insensitively, with any run of whitespace between their words. A text that holds no phrase's longest
    word is passed at once; otherwise matching is a substring search per phrase on the lower-cased,
    whitespace-collapsed text, and a precompiled word-boundary pattern confirms a hit.

    Args:
        phrases: the lexicon (from the config; ``configs/filters/default.yaml`` ships a small default list).
        check_query: look at the user turns too (harmful requests), not only at the answer.

    Reason: ``harmful_content``.
    """

    name = "harmful"

    def __init__(self, phrases: Sequence[str], check_query: bool = False) -> None:
        cleaned = sorted({" ".join(p.lower().split()) for p in phrases if p and p.strip()})
        if not cleaned:
            raise ValueError("harmful: phrases is empty; list the lexicon in the filter's `phrases`")
        self.phrases = tuple(cleaned)
        self.check_query = check_query
        self._cjk = tuple(p for p in cleaned if CJK_RE.search(p))
        self._words = tuple(p for p in cleaned if not CJK_RE.search(p))
        words = "|".join(re.escape(p) for p in sorted(self._words, key=len, reverse=True))
        self._word_re = re.compile(rf"(?<!\w)(?:{words})(?!\w)") if words else None
        # One anchor per phrase, its longest word (the last of equal ones): a phrase in the normalised text has each
        # of its words inside one whitespace-free stretch of it, which the lower-cased text holds unchanged.
        anchors = sorted({max(reversed(p.split()), key=len) for p in cleaned})
        self._ascii_anchors = tuple(a for a in anchors if a.isascii())
        # The others (CJK ones) begin with characters that few positions of any text hold, which one pattern skips
        # over faster than a substring search per anchor; ASCII anchors begin with common letters, where separate
        # substring searches are faster.
        other = "|".join(re.escape(a) for a in anchors if not a.isascii())
        self._other_anchor_re = re.compile(other) if other else None

    def _matches(self, text: str) -> bool:
        if not text:
            return False
        low = text.lower()
        # A screen on the lower-cased text: most texts hold no anchor, so they are never normalised or matched phrase
        # by phrase. An ASCII text holds no non-ASCII anchor.
        if not any(map(low.__contains__, self._ascii_anchors)) and (
            low.isascii() or self._other_anchor_re is None or not self._other_anchor_re.search(low)
        ):
            return False
        norm = " ".join(low.split())
        if any(p in norm for p in self._cjk):
            return True
        # The substring test is a cheap screen; the pattern then asks for whole words.
        return any(p in norm for p in self._words) and bool(self._word_re.search(norm))

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        sample = Sample.of(record)
        if self._matches(sample.answer) or (self.check_query and self._matches(sample.query)):
            return "harmful_content"
        return None


# Spans that are not prose: inline code, math, URLs, quoted text (a quote of a sign or a title keeps its script).
_NON_PROSE_RE = re.compile(
    r"`[^`\n]*`|\$\$.*?\$\$|\$[^$\n]*\$|\\\(.*?\\\)|\\\[.*?\\\]|https?://\S+|\"[^\"\n]*\"|“[^”\n]*”|「[^」\n]*」"
    r"|『[^』\n]*』|《[^》\n]*》",
    re.S,
)
_SENTENCE_SPLIT_RE = re.compile(r"[.!?。！？；;\n]+")
# A lower-case Latin word of three letters or more: capitalised words (proper nouns, acronyms), units ("cm") and
# identifiers with digits or underscores are left out, as they appear in any language.
_LATIN_WORD_RE = re.compile(r"(?<![A-Za-z0-9_])[a-z]{3,}(?![A-Za-z0-9_])")


class CodeSwitchingFilter(Filter):
    """Rejects prose that mixes CJK and Latin-script language inside a sentence or across the answer.

    Code blocks, inline code, math, URLs and quoted text are removed first; capitalised words (proper nouns,
    acronyms), short words and words with digits are not counted. The CJK share of a span is
    ``cjk / (cjk + latin)`` with ``cjk`` = CJK characters / ``cjk_chars_per_word`` and ``latin`` = lower-case Latin
    words. A sentence of at least ``min_sentence_tokens`` tokens, or the whole answer with at least ``min_tokens``,
    whose share lies strictly between ``low`` and ``high`` is code-switched.

    Args:
        low: shares at or below are Latin-script prose.
        high: shares at or above are CJK prose.
        min_sentence_tokens: shorter sentences are not judged alone.
        min_tokens: shorter answers are not judged as a whole.
        cjk_chars_per_word: CJK characters that weigh as one Latin word.

    Reason: ``code_switching``.
    """

    name = "code_switching"

    def __init__(
        self,
        low: float = 0.2,
        high: float = 0.8,
        min_sentence_tokens: int = 8,
        min_tokens: int = 20,
        cjk_chars_per_word: float = 1.5,
    ) -> None:
        if not 0 <= low < high <= 1:
            raise ValueError(f"code_switching: need 0 <= low < high <= 1, got low={low}, high={high}")
        if cjk_chars_per_word <= 0:
            raise ValueError(f"code_switching: cjk_chars_per_word must be > 0, got {cjk_chars_per_word}")
        self.low = low
        self.high = high
        self.min_sentence_tokens = min_sentence_tokens
        self.min_tokens = min_tokens
        self.cjk_chars_per_word = cjk_chars_per_word

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        text = Sample.of(record).answer
        # Most answers are in one script: no CJK (as in any ASCII text), or no lower-case Latin word, means nothing
        # to measure.
        if text.isascii() or not CJK_RE.search(text) or not _LATIN_WORD_RE.search(text):
            return None
        if "```" in text or "~~~" in text:
            text = FENCE_BLOCK_RE.sub("\n", text)
        prose = _NON_PROSE_RE.sub(" ", text)
        low, high, per_word = self.low, self.high, self.cjk_chars_per_word
        cjk_total = latin_total = 0.0
        for sentence in _SENTENCE_SPLIT_RE.split(prose):
            latin = len(_LATIN_WORD_RE.findall(sentence))
            cjk = len(CJK_RE.findall(sentence)) / per_word
            cjk_total += cjk
            latin_total += latin
            n = cjk + latin
            if latin and cjk and n >= self.min_sentence_tokens and low < cjk / n < high:
                return "code_switching"
        n = cjk_total + latin_total
        if n >= self.min_tokens and low < cjk_total / n < high:
            return "code_switching"
        return None
