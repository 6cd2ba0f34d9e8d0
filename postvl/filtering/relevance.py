"""Query-answer relevance: an answer whose text has little to do with its question."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from functools import lru_cache, partial
from itertools import chain, repeat
from operator import mul
from typing import Any

import numpy as np

from postvl.filtering.base import CJK_CHARS, Filter, Sample, tokenize

Embed = Callable[[list[str]], np.ndarray]
"""``embed(texts) -> array of shape (len(texts), dim)``; any sentence-embedding backend fits."""


class RelevanceFilter(Filter):
    """Rejects an answer whose similarity to its query is below ``threshold``.

    With ``embed`` the similarity is the cosine of the two embeddings. Without it, a cheap lexical fallback is used
    (``lexical_similarity``): the cosine of character n-gram count vectors, n-grams taken inside each lower-cased
    word (``ngram_size``, the word padded with a space on each side) and inside each run of CJK characters
    (``cjk_ngram_size``), with common English function words dropped. The lexical score only sees shared surface
    text, so it is a weak screen: it catches answers about something else entirely (a recipe for a geometry
    question) and misses paraphrases; keep its threshold low, and use it where the query carries the topic
    (text-only questions) rather than "Describe the image.". Pairs shorter than ``min_query_chars`` /
    ``min_answer_chars`` are not judged ("Yes" shares nothing with its question).

    Args:
        threshold: lowest similarity kept.
        embed: ``texts -> (n, dim) array``; ``None`` for the lexical fallback.
        ngram_size: character n-gram size inside words of the lexical fallback.
        cjk_ngram_size: character n-gram size inside CJK runs of the lexical fallback.
        min_query_chars: shorter queries are not judged.
        min_answer_chars: shorter answers are not judged.

    Reason: ``irrelevant_answer``.
    """

    name = "relevance"

    def __init__(
        self,
        threshold: float = 0.05,
        embed: Embed | None = None,
        ngram_size: int = 3,
        cjk_ngram_size: int = 2,
        min_query_chars: int = 15,
        min_answer_chars: int = 40,
    ) -> None:
        if not -1 <= threshold <= 1:
            raise ValueError(f"relevance: threshold must be in [-1, 1], got {threshold}")
        if ngram_size < 1 or cjk_ngram_size < 1:
            raise ValueError(f"relevance: n-gram sizes must be >= 1, got {ngram_size} and {cjk_ngram_size}")
        self.threshold = threshold
        self.ngram_size = ngram_size
        self.cjk_ngram_size = cjk_ngram_size
        self.min_query_chars = min_query_chars
        self.min_answer_chars = min_answer_chars
        self._embed = embed

    def similarity(self, query: str, answer: str) -> float:
        """Cosine similarity of the two texts (embedding or lexical)."""
        if self._embed is not None:
            vectors = np.asarray(self._embed([query, answer]), dtype=np.float64)
            norm = float(np.linalg.norm(vectors[0]) * np.linalg.norm(vectors[1]))
            return float(vectors[0] @ vectors[1]) / norm if norm else 0.0
        return lexical_similarity(query, answer, self.ngram_size, self.cjk_ngram_size)

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        sample = Sample.of(record)
        query, answer = sample.query, sample.answer
        if len(query) < self.min_query_chars or len(answer) < self.min_answer_chars:
            return None
        if self.similarity(query, answer) < self.threshold:
            return "irrelevant_answer"
        return None


def lexical_similarity(a: str, b: str, ngram_size: int = 3, cjk_ngram_size: int = 2) -> float:
    """Cosine of the character n-gram count vectors of two texts (see ``RelevanceFilter``), in [0, 1]."""
    va, vb = _char_ngrams(a, ngram_size, cjk_ngram_size), _char_ngrams(b, ngram_size, cjk_ngram_size)
    if not va or not vb:
        return 0.0
    if len(va) > len(vb):
        va, vb = vb, va
    # Integer sums, so the order of the terms does not matter; `map` keeps the loops in C.
    dot = sum(map(mul, va.values(), map(vb.get, va, repeat(0))))
    if not dot:
        return 0.0
    return dot / math.sqrt(sum(map(mul, va.values(), va.values())) * sum(map(mul, vb.values(), vb.values())))


# Function words carry no topic; their n-grams would make any two English texts look alike.
_STOPWORDS = frozenset(
    "a an and are as at be been but by can do does for from has have how i if in into is it its of on or so that "
    "the their then there these this those to was were what when where which who why will with you your".split()
)
_WORD_RUN_RE = re.compile(f"[^\\W{CJK_CHARS}]+")
_CJK_RUN_RE = re.compile(f"[{CJK_CHARS}]+")
# Words recur across records (a few thousand make up most running text), so the n-grams of each are computed once
# and kept, a bounded number per n-gram size; runs of CJK text are clauses, which seldom recur, and are not kept.
_WORD_CACHE_SIZE = 4096
_word_grams_by_size: dict[int, Callable[[str], tuple[str, ...]]] = {}


def _char_ngrams(text: str, n: int, cjk_n: int) -> Counter[str]:
    low = text.lower()
    word_grams = _word_grams_by_size.get(n) or _word_grams_by_size.setdefault(
        n, lru_cache(maxsize=_WORD_CACHE_SIZE)(partial(_word_ngrams, n=n))
    )
    # The words are the runs of word characters outside CJK; in ASCII text, the tokens.
    words = tokenize(low) if low.isascii() else _WORD_RUN_RE.findall(low)
    grams = list(chain.from_iterable(map(word_grams, words)))
    if not low.isascii():
        for run in _CJK_RUN_RE.findall(low):
            if len(run) <= cjk_n:
                grams.append(run)
            else:
                grams += [run[i : i + cjk_n] for i in range(len(run) - cjk_n + 1)]
    return Counter(grams)


def _word_ngrams(word: str, n: int) -> tuple[str, ...]:
    """The character n-grams of a word padded with a space on each side; none for a stopword."""
    if word in _STOPWORDS:
        return ()
    run = f" {word} "
    if len(run) <= n:
        return (run,)
    return tuple(run[i : i + n] for i in range(len(run) - n + 1))
