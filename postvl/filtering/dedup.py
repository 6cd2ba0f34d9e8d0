"""Exact and near-duplicate records. Both filters are stateful: the first occurrence is kept, later ones rejected.

The runner feeds records in input order, so which copy survives is reproducible. State lives in memory (about
0.1 KB per record for exact dedup, about 0.5 KB per record for near dedup with the defaults); run one process over
the records that should be deduplicated together.

Near dedup is MinHash + LSH written in numpy (no extra dependency): character shingles of the normalised text are
hashed with a polynomial rolling hash, permuted with ``num_perm`` random affine maps modulo 2**32, and the signature
is split into ``bands`` bands; records sharing a band are candidates, and a candidate is a duplicate when the share
of equal signature values (the Jaccard estimate) reaches ``threshold``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from postvl.filtering.base import CJK_CHARS, Filter, Sample

_FIELDS = ("query", "answer")
# Words of space-separated scripts and whole runs of CJK characters: normalised text keeps CJK unspaced.
_WORDS_RE = re.compile(f"[{CJK_CHARS}]+|[^\\W{CJK_CHARS}]+")


def _record_text(sample: Sample, fields: tuple[str, ...]) -> str:
    return "\x1e".join(getattr(sample, f) for f in fields)


def _check_fields(name: str, fields: Sequence[str]) -> tuple[str, ...]:
    fields = tuple(fields)
    if not fields or any(f not in _FIELDS for f in fields):
        raise ValueError(f"{name}: fields must be a non-empty subset of {list(_FIELDS)}, got {list(fields)}")
    return fields


class ExactDedupFilter(Filter):
    """Rejects a record whose normalised text (and images) equals an earlier record's.

    Normalisation: lower-case, runs of whitespace collapsed to one space. The key is an 8-byte BLAKE2b digest of the
    chosen fields and, with ``include_images``, the image paths.

    Args:
        fields: which texts make the key: ``query`` (user turns) and / or ``answer`` (assistant turns).
        include_images: records with the same text about different images are not duplicates.

    Reason: ``exact_duplicate``.
    """

    name = "exact_dedup"
    stateful = True

    def __init__(self, fields: Sequence[str] = _FIELDS, include_images: bool = True) -> None:
        self.fields = _check_fields(self.name, fields)
        self.include_images = include_images
        self._seen: set[int] = set()

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        sample = Sample.of(record)
        text = " ".join(_record_text(sample, self.fields).lower().split())
        if self.include_images:
            text = "\x1f".join([text, *sample.images])
        key = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
        if key in self._seen:
            return "exact_duplicate"
        self._seen.add(key)
        return None


_ROLL = np.uint64(1_000_003)
_MIX1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_CHUNK = 4096
_MAX = np.iinfo(np.uint32).max
_S33 = np.uint64(33)
_S32 = np.uint64(32)


class MinHasher:
    """MinHash signatures of character shingles, in numpy.

    Args:
        num_perm: signature length.
        shingle: characters per shingle.
        seed: seed of the permutations (the same seed gives the same signatures in every process).
    """

    def __init__(self, num_perm: int = 64, shingle: int = 5, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.shingle = shingle
        # x -> a * x + b mod 2**32 with odd a: a permutation of the 32-bit shingle hashes. 32-bit arithmetic halves
        # the cost of the (num_perm x shingles) product against 64-bit, with the same Jaccard error in our tests.
        self._a = rng.integers(0, 2**32, size=num_perm, dtype=np.uint32) | np.uint32(1)
        self._b = rng.integers(0, 2**32, size=(num_perm, 1), dtype=np.uint32)

    def signature(self, text: str) -> np.ndarray | None:
        """``num_perm`` uint32 values, or ``None`` for a text shorter than one shingle."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        k = self.shingle
        n = len(codes) - k + 1
        if n <= 0:
            return None
        h = codes[:n].copy()
        for j in range(1, k):
            h *= _ROLL
            h += codes[j : j + n]
        # Finaliser of MurmurHash3 so that nearby shingles spread over the whole 64-bit range.
        h ^= h >> _S33
        h *= _MIX1
        h ^= h >> _S33
        h *= _MIX2
        h ^= h >> _S33
        h32 = (h >> _S32).astype(np.uint32)
        if n <= _CHUNK:
            block = np.multiply.outer(self._a, h32)
            block += self._b
            return block.min(axis=1)
        sig = np.full(self.num_perm, _MAX, dtype=np.uint32)
        for start in range(0, n, _CHUNK):
            block = np.multiply.outer(self._a, h32[start : start + _CHUNK])
            block += self._b
            np.minimum(sig, block.min(axis=1), out=sig)
        return sig


class NearDedupFilter(Filter):
    """Rejects a record whose text is a near copy (estimated Jaccard >= ``threshold``) of an earlier record's.

    The text of the chosen fields is normalised (lower-case, punctuation dropped, one space between words, CJK
    characters kept as they are) and shingled into character ``shingle``-grams, which suits Chinese and English
    alike. Texts shorter than ``min_chars`` after normalisation are left to exact dedup (short answers such as "Yes"
    repeat legitimately). With ``include_images``, only records about the same images are compared.

    Args:
        threshold: estimated Jaccard similarity at which a record is a near duplicate.
        num_perm: MinHash signature length.
        bands: LSH bands (``num_perm`` must divide evenly); more bands find lower-similarity candidates.
        shingle: characters per shingle.
        min_chars: shorter normalised texts are not compared.
        fields: ``query`` and / or ``answer``.
        include_images: compare only records with the same image paths.
        seed: MinHash seed.

    Reason: ``near_duplicate``.
    """

    name = "near_dedup"
    stateful = True

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 64,
        bands: int = 8,
        shingle: int = 5,
        min_chars: int = 50,
        fields: Sequence[str] = _FIELDS,
        include_images: bool = True,
        seed: int = 0,
    ) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"near_dedup: threshold must be in (0, 1], got {threshold}")
        if bands < 1 or num_perm % bands:
            raise ValueError(f"near_dedup: bands ({bands}) must divide num_perm ({num_perm})")
        if shingle < 1:
            raise ValueError(f"near_dedup: shingle must be >= 1, got {shingle}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands = bands
        self.shingle = shingle
        self.min_chars = min_chars
        self.fields = _check_fields(self.name, fields)
        self.include_images = include_images
        self.seed = seed
        self._hasher = MinHasher(num_perm, shingle, seed)
        self._tables: list[dict[int, int]] = [{} for _ in range(bands)]
        self._store = np.empty((1024, num_perm), dtype=np.uint32)
        self._size = 0

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        sample = Sample.of(record)
        text = " ".join(_WORDS_RE.findall(_record_text(sample, self.fields).lower()))
        if len(text) < max(self.min_chars, self.shingle):
            return None
        sig = self._hasher.signature(text)
        if sig is None:
            return None
        scope = hash(tuple(sample.images)) if self.include_images else 0
        rows = self.num_perm // self.bands
        raw = sig.tobytes()
        width = rows * 4
        keys = [hash((scope, raw[i * width : (i + 1) * width])) for i in range(self.bands)]
        candidates = {table[key] for table, key in zip(self._tables, keys, strict=True) if key in table}
        if candidates:
            agree = (self._store[sorted(candidates)] == sig).mean(axis=1)
            if float(agree.max()) >= self.threshold:
                return "near_duplicate"
        idx = self._add(sig)
        for table, key in zip(self._tables, keys, strict=True):
            table.setdefault(key, idx)
        return None

    def _add(self, sig: np.ndarray) -> int:
        if self._size == len(self._store):
            self._store = np.concatenate([self._store, np.empty_like(self._store)])
        self._store[self._size] = sig
        self._size += 1
        return self._size - 1
