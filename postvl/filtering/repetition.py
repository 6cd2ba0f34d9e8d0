"""Repetition: repeated n-grams (Gopher-style), repeated lines, runs of one character or a short unit.

The n-gram statistics follow Gopher (Rae et al. 2021, table A1) as datatrove's ``GopherRepetitionFilter`` computes
them, with one change so that they work on Chinese and Japanese: a "word" is a run of word characters in a
space-separated script and a single character in CJK text (``base.tokenize``), so CJK text is measured in character
n-grams.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from itertools import accumulate, count, repeat
from operator import add, mul, ne
from typing import Any

from postvl.filtering.base import CJK_RE, Filter, Sample, tokenize

# Gopher's thresholds: share of characters in the most frequent n-gram, n = 2..4 ...
GOPHER_TOP_NGRAMS = {2: 0.20, 3: 0.18, 4: 0.16}
# ... and share of characters covered by duplicated n-grams, n = 5..10.
GOPHER_DUP_NGRAMS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


class NgramRepetitionFilter(Filter):
    """Rejects an answer whose n-grams repeat too much (model loops, copy-paste padding).

    The statistics are computed only where a bound (from how many of the shortest n-grams repeat, and where) leaves
    them a chance to pass their threshold; the decision is that of computing them all.

    Args:
        top_ngrams: ``{n: max share}``: the most frequent n-gram (if it occurs more than once) may cover at most this
            share of the answer's word characters. Defaults to Gopher's ``{2: 0.20, 3: 0.18, 4: 0.16}``.
        dup_ngrams: ``{n: max share}``: the n-grams that occur again may cover at most this share of the answer's
            word characters. Defaults to Gopher's ``{5: 0.15, ..., 10: 0.10}``.
        min_tokens: shorter answers are not measured (the shares are noise on a short answer); a CJK character
            counts as 2/3 of a token here, since a Chinese word is about 1.5 characters: a 4-gram of characters is
            one or two words ("平均速度", average speed), which a short answer may well repeat.
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
        self._min_tokens = max(min_tokens, 1)

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        sample = Sample.of(record)
        text = _MARKUP_RE.sub(" ", sample.answer) if self.ignore_markup else sample.answer
        n0 = self._min_n
        # A token is at least one character: a text shorter than `min_tokens` is not tokenized.
        if len(text) < self._min_tokens or not n0:
            return None
        tokens = tokenize(text) if self.ignore_markup else sample.answer_tokens
        if len(tokens) < self._min_tokens:
            return None
        # Each CJK character counts 2/3 (in integers: 3 per other token, 2 per CJK character, against 3 per token).
        if not text.isascii() and 3 * len(tokens) - len(CJK_RE.findall(text)) < 3 * self._min_tokens:
            return None
        # Every statistic needs an n-gram (n >= n0) that occurs twice, hence an n0-gram that occurs twice.
        ids, repeats = _first_positions(_ngrams(tokens, n0))
        if not repeats:
            return None
        # Bounds that skip most counting. `repeats` n0-grams are later occurrences of an n0-gram. A later occurrence
        # of an n-gram at j makes the n0-grams at j .. j + n - n0 later occurrences too, so an n-gram that occurs
        # k >= 2 times has k - 1 later occurrences at distinct starts whose n0-grams cover k - 1 + n - n0 of the
        # `repeats`: k <= repeats + 1 - (n - n0). And no n-gram longer than n0 - 1 + (the longest run of later
        # n0-gram occurrences) occurs twice.
        lengths = sorted(map(len, tokens))
        total = sum(lengths)
        chars: list[int] = []  # chars[i]: word characters of the first i tokens, once needed
        known = {n0: ids}  # n-gram numbers by n, once needed
        longest = n0  # the longest n-gram that can occur twice, once the run is measured
        max_count = repeats + 1  # an n-gram occurs at most as often as its most frequent prefix
        for n, max_share in self.top_ngrams.items():
            bound = min(max_count, repeats + 1 - (n - n0))  # shrinks as n grows
            if bound < 2:
                break
            # `lengths[-n:]`: the most word characters an n-gram can have.
            if bound * sum(lengths[-n:]) / total <= max_share:
                continue
            if n > longest:
                longest = n0 - 1 + _longest_run(ids)
                if n > longest:
                    break
            chars = chars or list(accumulate(map(len, tokens), initial=0))
            keys = _ngram_ids(ids, n0, n, known)
            key, count = Counter(keys).most_common(1)[0]  # the first to occur of the most frequent, as for tuples
            start = keys.index(key)
            if count > 1 and (chars[start + n] - chars[start]) * count / total > max_share:
                return "top_ngram_repetition"
            max_count = count
        for n, max_share in self.dup_ngrams.items():
            if n - n0 >= repeats:  # no n-gram this long occurs twice (the bound above with k = 2)
                break
            if n > longest:
                longest = n0 - 1 + _longest_run(ids)
                if n > longest:
                    break
            chars = chars or list(accumulate(map(len, tokens), initial=0))
            duplicated = _duplicate_chars(_ngram_ids(ids, n0, n, known), n, chars, max_share)
            if duplicated / total > max_share:
                return "duplicate_ngram_repetition"
            if not duplicated:  # no n-gram occurs twice, so no longer one does
                break
        return None


_MARKUP_RE = re.compile(r"<[^<>]{1,200}>")


def _ngrams(tokens: list[str], n: int) -> Iterable[Any]:
    """The n-grams of ``tokens`` in order: tuples, or the tokens themselves for n = 1."""
    if n == 1:
        return tokens
    return zip(*(tokens[i:] for i in range(n)), strict=False)


def _first_positions(grams: Iterable[Hashable]) -> tuple[list[int], int]:
    """Numbers the n-grams by where each first occurs.

    Returns:
        For each position, the position of the first occurrence of its n-gram (equal n-grams get equal numbers,
        each below the number of n-grams), and how many positions are not the first occurrence of theirs.
    """
    index: dict[Hashable, int] = {}
    ids = list(map(index.setdefault, grams, count()))
    return ids, len(ids) - len(index)


def _longest_run(ids: list[int]) -> int:
    """The longest run of positions whose n-gram occurred before (``ids`` from ``_first_positions``)."""
    return max(map(len, bytes(map(ne, ids, count())).split(b"\x00")))


def _ngram_ids(ids: list[int], n0: int, n: int, known: dict[int, list[int]]) -> list[int]:
    """Numbers that identify the n-grams (n >= n0), one per position, from the n0-gram numbers ``ids``.

    The n-gram at i is the shorter gram at i (n minus a step of at most n0) and the n0-gram at i + n - n0, which
    together cover its tokens; each n0-gram number is below ``len(ids)``, so ``shorter * len(ids) + last`` tells
    n-grams apart as tuples of tokens would, with integers that hash and compare faster and no tuple to allocate.
    ``known`` holds the numbers worked out so far (``{n0: ids}`` to start), so sizes build on each other.
    """
    keys = known.get(n)
    if keys is None:
        shorter = n - ((n - n0) % n0 or n0)
        keys = list(map(add, map(mul, _ngram_ids(ids, n0, shorter, known), repeat(len(ids))), ids[n - n0 :]))
        known[n] = keys
    return keys


def _duplicate_chars(keys: list[int], n: int, chars: list[int], max_share: float) -> int:
    """Characters of n-grams seen before, scanning left to right and skipping over each duplicate (as Gopher).

    ``keys`` identify the n-grams (``_ngram_ids``) and ``chars[i]`` counts the word characters of the first i
    tokens. The count only grows, so the scan stops once it is above ``max_share`` of all characters: the result
    is then above the share too, which is all the caller asks.
    """
    total = chars[-1]
    seen: set[int] = set()
    repeated = idx = 0
    end = len(keys)
    while idx < end:
        key = keys[idx]
        if key in seen:
            repeated += chars[idx + n] - chars[idx]
            if repeated / total > max_share:
                break
            idx += n
        else:
            seen.add(key)
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
            off: it costs a regex pass that tries every unit length at every position, several times the rest of
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
        # A run of c is `c * (max_run + 1)` in the text, for a c that is neither whitespace nor exempt. Such a run
        # holds two consecutive multiples of `_stride` (at most half its length), so c is then a character that
        # follows itself in the sample `text[::_stride]`: a scan of the sample (a fraction of the text) finds the
        # few characters worth a substring search, instead of a back-reference at every position of the text.
        self._stride = (max_run + 1) // 2
        self._pair_re = re.compile(f"([^\\s{re.escape(exempt)}])\\1")
        # The unit pattern, written so that a failed attempt stops at the first back-reference rather than setting up
        # a repeat: `\1(?:\1){k - 1,}` matches what `\1{k,}` matches, and the same spans.
        self._unit_re = (
            re.compile(f"(.{{2,10}}?)\\1(?:\\1){{{max_unit_repeats - 1},}}", re.S)
            if max_unit_repeats is not None
            else None
        )

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        text = Sample.of(record).answer
        doubled = set(self._pair_re.findall(text[:: self._stride]))
        if doubled and any(c * (self.max_run + 1) in text for c in doubled):
            return "char_repetition"
        if self._unit_re is not None:
            for match in self._unit_re.finditer(text):
                if _LETTER_RE.search(match.group(1)):
                    return "substring_repetition"
        return None


_LETTER_RE = re.compile(r"[^\W\d_]")
