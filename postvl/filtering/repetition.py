"""Repetition: repeated n-grams (Gopher-style), repeated lines, runs of one character or a short unit.

The n-gram statistics follow Gopher (Rae et al. 2021, table A1) as datatrove's ``GopherRepetitionFilter`` computes
them, with one change so that they work on Chinese and Japanese: a "word" is a run of word characters in a
space-separated script and a single character in CJK text (``base.tokenize``), so CJK text is measured in character
n-grams.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from itertools import accumulate
from typing import Any

from postvl.filtering.base import Filter, Sample, tokenize

# Gopher's thresholds: share of characters in the most frequent n-gram, n = 2..4 ...
GOPHER_TOP_NGRAMS = {2: 0.20, 3: 0.18, 4: 0.16}
# ... and share of characters covered by duplicated n-grams, n = 5..10.
GOPHER_DUP_NGRAMS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


class NgramRepetitionFilter(Filter):
    """Rejects an answer whose n-grams repeat too much (model loops, copy-paste padding).

    Args:
        top_ngrams: ``{n: max share}``: the most frequent n-gram (if it occurs more than once) may cover at most this
            share of the answer's word characters. Defaults to Gopher's ``{2: 0.20, 3: 0.18, 4: 0.16}``.
        dup_ngrams: ``{n: max share}``: the n-grams that occur again may cover at most this share of the answer's
            word characters. Defaults to Gopher's ``{5: 0.15, ..., 10: 0.10}``.
        min_tokens: answers with fewer tokens are not measured (the shares are noise on a short answer).
        ignore_markup: measure the text between HTML/XML tags only: an HTML table repeats ``td`` ``tr`` by design,
            which is not the degenerate repetition this filter is for (document parsing answers are HTML).

    Reasons: ``top_ngram_repetition``, ``duplicate_ngram_repetition``.
    """

    name = "ngram_repetition"

    def __init__(
        self,
        top_ngrams: Mapping[int, float] | None = None,
        dup_ngrams: Mapping[int, float] | None = None,
        min_tokens: int = 30,
        ignore_markup: bool = False,
    ) -> None:
        top = dict(GOPHER_TOP_NGRAMS if top_ngrams is None else top_ngrams)
        dup = dict(GOPHER_DUP_NGRAMS if dup_ngrams is None else dup_ngrams)
        for label, table in (("top_ngrams", top), ("dup_ngrams", dup)):
            for n, share in table.items():
                if not isinstance(n, int) or n < 1:
                    raise ValueError(f"ngram_repetition: {label} keys must be n-gram sizes >= 1, got {n!r}")
                if not 0 < share <= 1:
                    raise ValueError(f"ngram_repetition: {label}[{n}] must be in (0, 1], got {share!r}")
        self.top_ngrams = dict(sorted(top.items()))
        self.dup_ngrams = dict(sorted(dup.items()))
        self.min_tokens = min_tokens
        self.ignore_markup = ignore_markup
        self._min_n = min([*self.top_ngrams, *self.dup_ngrams], default=0)

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        sample = Sample.of(record)
        tokens = tokenize(_MARKUP_RE.sub(" ", sample.answer)) if self.ignore_markup else sample.answer_tokens
        n_tokens = len(tokens)
        if n_tokens < max(self.min_tokens, 1) or not self._min_n:
            return None
        # Fast exit for the common clean case: if no n-gram of the smallest size repeats, no longer one does.
        n0 = self._min_n
        grams = list(zip(*(tokens[i:] for i in range(n0)), strict=False)) if n0 > 1 else tokens
        distinct = len(set(grams))
        if distinct == len(grams):
            return None
        lengths = sorted(map(len, tokens), reverse=True)
        total = sum(lengths)
        longest = list(accumulate(lengths))  # longest[n - 1]: most characters any n-gram can have
        # An n-gram occurs at most as often as the most frequent shorter n-gram, and the most frequent n0-gram at most
        # once more than the number of repeats (n0-grams minus distinct ones): a bound that skips most counting.
        max_count = len(grams) - distinct + 1
        for n, max_share in self.top_ngrams.items():
            if n > n_tokens or max_count < 2 or max_count * longest[n - 1] / total <= max_share:
                continue
            counted = grams if n == n0 else zip(*(tokens[i:] for i in range(n)), strict=False)
            gram, count = Counter(counted).most_common(1)[0]
            if n == 1:
                gram = (gram,)
            if count > 1 and sum(map(len, gram)) * count / total > max_share:
                return "top_ngram_repetition"
            max_count = count
        if self.dup_ngrams:
            first = next(iter(self.dup_ngrams))
            grams = list(zip(*(tokens[i:] for i in range(first)), strict=False))
            if len(set(grams)) == len(grams):
                return None
            for n, max_share in self.dup_ngrams.items():
                if _duplicate_ngram_chars(tokens, n) / total > max_share:
                    return "duplicate_ngram_repetition"
        return None


_MARKUP_RE = re.compile(r"<[^<>]{1,200}>")


def _duplicate_ngram_chars(tokens: list[str], n: int) -> int:
    """Characters of n-grams seen before, scanning left to right and skipping over each duplicate (as Gopher)."""
    grams = list(zip(*(tokens[i:] for i in range(n)), strict=False))
    seen: set[tuple[str, ...]] = set()
    repeated = idx = 0
    end = len(grams)
    while idx < end:
        gram = grams[idx]
        if gram in seen:
            repeated += sum(map(len, gram))
            idx += n
        else:
            seen.add(gram)
            idx += 1
    return repeated


class LineRepetitionFilter(Filter):
    """Rejects an answer whose lines repeat (Gopher's duplicate-line fractions).

    Blank lines and lines shorter than ``min_line_chars`` after stripping (``}``, ``end``, table rules) are ignored.

    Args:
        max_dup_line_frac: most share of (counted) lines that repeat an earlier line.
        max_dup_line_char_frac: most share of (counted) line characters in repeated lines.
        min_lines: answers with fewer counted lines are not measured.
        min_line_chars: shorter lines are not counted.

    Reasons: ``duplicate_lines``, ``duplicate_line_chars``.
    """

    name = "line_repetition"

    def __init__(
        self,
        max_dup_line_frac: float = 0.30,
        max_dup_line_char_frac: float = 0.20,
        min_lines: int = 3,
        min_line_chars: int = 4,
    ) -> None:
        fracs = {"max_dup_line_frac": max_dup_line_frac, "max_dup_line_char_frac": max_dup_line_char_frac}
        for label, value in fracs.items():
            if not 0 <= value <= 1:
                raise ValueError(f"line_repetition: {label} must be in [0, 1], got {value!r}")
        self.max_dup_line_frac = max_dup_line_frac
        self.max_dup_line_char_frac = max_dup_line_char_frac
        self.min_lines = min_lines
        self.min_line_chars = min_line_chars

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        text = Sample.of(record).answer
        if text.count("\n") + 1 < self.min_lines:
            return None
        min_chars = self.min_line_chars
        lines = [s for s in (line.strip() for line in text.split("\n")) if len(s) >= min_chars]
        if len(lines) < self.min_lines:
            return None
        seen: set[str] = set()
        dup_lines = dup_chars = total_chars = 0
        for line in lines:
            total_chars += len(line)
            if line in seen:
                dup_lines += 1
                dup_chars += len(line)
            else:
                seen.add(line)
        if dup_lines / len(lines) > self.max_dup_line_frac:
            return "duplicate_lines"
        if dup_chars / total_chars > self.max_dup_line_char_frac:
            return "duplicate_line_chars"
        return None


class CharRepetitionFilter(Filter):
    """Rejects runs of one character ("!!!!!!!!", "的的的的的的的的") and, optionally, of a short unit ("abcabc...").

    Args:
        max_run: longest allowed run of one character; whitespace and the ``exempt`` characters may run freely.
        exempt: characters allowed to run (markdown rules and fills, dots, digits).
        max_unit_repeats: most times a 2-10 character unit that contains a letter may repeat right after itself
            (``max_unit_repeats + 1`` copies in a row are rejected); ``None`` (the default) turns the unit check
            off: it costs a regex pass that tries every unit length at every position, about four times the rest of
            the filter, and the n-gram filter already catches repeated words.

    Reasons: ``char_repetition``, ``substring_repetition``.
    """

    name = "char_repetition"

    def __init__(
        self, max_run: int = 7, exempt: str = "-=_*#.~0123456789", max_unit_repeats: int | None = None
    ) -> None:
        if max_run < 1:
            raise ValueError(f"char_repetition: max_run must be >= 1, got {max_run}")
        if max_unit_repeats is not None and max_unit_repeats < 2:
            raise ValueError(f"char_repetition: max_unit_repeats must be >= 2 or null, got {max_unit_repeats}")
        self.max_run = max_run
        self.exempt = exempt
        self.max_unit_repeats = max_unit_repeats
        self._run_re = re.compile(f"([^\\s{re.escape(exempt)}])\\1{{{max_run},}}")
        self._unit_re = (
            re.compile(f"(.{{2,10}}?)\\1{{{max_unit_repeats},}}", re.S) if max_unit_repeats is not None else None
        )

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        text = Sample.of(record).answer
        if self._run_re.search(text):
            return "char_repetition"
        if self._unit_re is not None:
            for match in self._unit_re.finditer(text):
                if _LETTER_RE.search(match.group(1)):
                    return "substring_repetition"
        return None


_LETTER_RE = re.compile(r"[^\W\d_]")
