"""Exact and near-duplicate records. Both filters are stateful: the first occurrence is kept, later ones rejected.

The runner feeds records in input order, so which copy survives is reproducible. State lives in memory, in numpy
arrays rather than Python objects so that it stays small: 8 bytes per kept record for exact dedup (a 64-bit key) and,
with the defaults, 8 bytes per band plus ``num_perm`` bytes per kept record for near dedup (64 + 64 = 128 bytes);
run one process over the records that should be deduplicated together.

Near dedup is MinHash + LSH written in numpy (no extra dependency): character shingles of the normalised text are
hashed with a polynomial rolling hash, permuted with ``num_perm`` random affine maps modulo 2**32, and the signature
is split into ``bands`` bands; records sharing a band are candidates, and a candidate is a duplicate when the share
of equal signature values (the Jaccard estimate) reaches ``threshold``. Stored signatures keep the low 8 bits of
each value (b-bit MinHash, Li and König 2010): two different values agree there by chance with probability 1/256,
which the estimate corrects for.
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
        self._seen = KeySet()

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
_CHUNK = 4096
_MAX = np.iinfo(np.uint32).max
_S33 = np.uint64(33)
_S32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
_BBIT_CHANCE = 1 / 256  # two different 32-bit values agree in their low 8 bits by chance
_UNPREPARED = object()


class _SortedU64:
    """A sorted uint64 array that grows in place: new values are sorted into spare capacity at its end.

    Capacity grows by half through ``ndarray.resize`` (``realloc``, which moves large blocks by remapping pages rather
    than copying them), so a merge holds no second copy of the array; the stable sort merges the two sorted runs in
    linear time with a buffer the size of the new run.
    """

    def __init__(self) -> None:
        self._buf = np.empty(0, dtype=np.uint64)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def values(self) -> np.ndarray:
        return self._buf[: self._n]

    def merge(self, new: np.ndarray) -> None:
        n, m = self._n, len(new)
        if n + m > len(self._buf):
            self._buf.resize(max(n + m, len(self._buf) * 3 // 2, 1 << 10), refcheck=False)
        self._buf[n : n + m] = new
        self._buf[: n + m].sort(kind="stable")
        self._n = n + m


class KeySet:
    """A set of 64-bit integers in 8 bytes each: a sorted numpy array plus a small Python set of recent keys.

    Recent keys are merged into the array every ``buffer`` insertions (in place, see ``_SortedU64``), so memory stays
    at 8 bytes per key (plus up to half again of spare capacity) and a bounded buffer, and a lookup is one binary
    search.
    """

    def __init__(self, buffer: int = 1 << 16) -> None:
        self._array = _SortedU64()
        self._recent: set[int] = set()
        self._buffer = buffer

    @property
    def _sorted(self) -> np.ndarray:
        return self._array.values

    def __len__(self) -> int:
        return len(self._array) + len(self._recent)

    def __contains__(self, key: int) -> bool:
        if key in self._recent:
            return True
        arr = self._array.values
        pos = int(arr.searchsorted(np.uint64(key)))
        return pos < len(arr) and int(arr[pos]) == key

    def add(self, key: int) -> None:
        self._recent.add(key)
        if len(self._recent) >= self._buffer:
            recent = np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))
            recent.sort()
            self._array.merge(recent)
            self._recent = set()


class BandIndex:
    """LSH band keys -> the index of the first record that had them, in 8 bytes per entry.

    Each entry is ``key << 32 | index`` (32-bit band key, 32-bit record index) in a sorted uint64 array; recent entries
    sit in a small dict merged in every ``buffer`` insertions. Two different bands share a 32-bit key with probability
    2**-32, which at worst adds a candidate that the signature check then turns down.

    ``generation`` changes at every merge: a ``search`` of the sorted array made for a batch of records stays valid
    for ``lookup`` while the generation is unchanged (keys added since then are in the dict, which is asked first).
    """

    def __init__(self, buffer: int = 1 << 16) -> None:
        self._array = _SortedU64()
        self._recent: dict[int, int] = {}
        self._buffer = buffer
        self.generation = 0

    @property
    def _sorted(self) -> np.ndarray:
        return self._array.values

    def __len__(self) -> int:
        return len(self._array) + len(self._recent)

    def search(self, keys: np.ndarray) -> np.ndarray:
        """For an array of keys (any shape), the record index stored in the sorted array, or -1 (dict not asked)."""
        arr = self._array.values
        wanted = keys.astype(np.uint64)
        if not len(arr):
            return np.full(wanted.shape, -1, dtype=np.int64)
        pos = arr.searchsorted(wanted << _S32)
        hit = arr[np.minimum(pos, len(arr) - 1)]
        match = (pos < len(arr)) & ((hit >> _S32) == wanted)
        return np.where(match, (hit & _LOW32).astype(np.int64), -1)

    def lookup(self, keys: list[int], searched: list[int] | None = None) -> list[int | None]:
        """The record index stored for each key, or ``None``.

        Args:
            keys: the band keys.
            searched: ``search(keys)`` made at this ``generation`` (saves the binary search), or ``None``.
        """
        get = self._recent.get
        found: list[int | None] = [get(k) for k in keys]
        if None in found and len(self._array):
            if searched is None:
                searched = self.search(np.asarray(keys, dtype=np.uint64)).tolist()
            for i, idx in enumerate(searched):
                if found[i] is None and idx >= 0:
                    found[i] = idx
        return found

    def add(self, keys: list[int], index: int) -> None:
        """Store ``key -> index`` for each key (keys the caller found already stored are left out by it)."""
        recent = self._recent
        for key in keys:
            recent.setdefault(key, index)
        if len(recent) >= self._buffer:
            packed = np.fromiter(
                ((k << 32) | v for k, v in self._recent.items()), dtype=np.uint64, count=len(self._recent)
            )
            packed.sort()
            self._array.merge(packed)
            self._recent = {}
            self.generation += 1


class SignatureStore:
    """The low 8 bits of each kept record's signature, in blocks of ``block`` rows (growing never copies)."""

    def __init__(self, width: int, block: int = 1 << 14) -> None:
        self._width = width
        self._block = block
        self._blocks: list[np.ndarray] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, sig: np.ndarray) -> int:
        row = self._size % self._block
        if row == 0:
            self._blocks.append(np.empty((self._block, self._width), dtype=np.uint8))
        self._blocks[-1][row] = sig
        self._size += 1
        return self._size - 1

    def rows(self, indices: list[int]) -> np.ndarray:
        block = self._block
        return np.stack([self._blocks[i // block][i % block] for i in indices])


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
        # One multiply by an odd 64-bit constant spreads nearby shingles over the high 32 bits, which are kept
        # (MurmurHash3's full finaliser costs three times as much; on 60k benchmark records 32 decisions near the
        # threshold differ between the two).
        h ^= h >> _S33
        h *= _MIX1
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

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """The signatures of many texts at once, ``(len(texts), num_perm)`` uint32, equal to ``signature`` of each.

        Every text must be at least one shingle long. The texts are hashed as one concatenated string (shingles that
        straddle two texts are dropped) and the permutations run over blocks of about ``_CHUNK * 4`` shingles with
        one minimum per text (``reduceat``): a few numpy calls per batch instead of a dozen per record.
        """
        k = self.shingle
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        if not len(texts):
            return np.empty((0, self.num_perm), dtype=np.uint32)
        if int(lengths.min()) < k:
            raise ValueError(f"every text must have at least {k} characters")
        codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        n = len(codes) - k + 1
        h = codes[:n].copy()
        for j in range(1, k):
            h *= _ROLL
            h += codes[j : j + n]
        h ^= h >> _S33
        h *= _MIX1
        counts = lengths - k + 1  # shingles of each text
        firsts = np.cumsum(counts) - counts  # where each text's shingles start among the kept ones
        offsets = np.cumsum(lengths) - lengths  # where each text starts in the concatenation
        positions = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(offsets - firsts, counts)
        h32 = (h[positions] >> _S32).astype(np.uint32)
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        limit = _CHUNK * 4
        ends = firsts + counts
        start = 0
        while start < len(texts):
            # texts start..stop-1 in one block: at least one text, at most about `limit` shingles
            stop = max(int(np.searchsorted(ends, firsts[start] + limit, side="right")), start + 1)
            lo, hi = int(firsts[start]), int(ends[stop - 1])
            if hi - lo > limit:  # one long text: the chunked single-text path keeps the block small
                out[start] = self._min_hash(h32[lo:hi])
            else:
                block = np.multiply.outer(self._a, h32[lo:hi])
                block += self._b
                out[start:stop] = np.minimum.reduceat(block, firsts[start:stop] - lo, axis=1).T
            start = stop
        return out

    def _min_hash(self, h32: np.ndarray) -> np.ndarray:
        sig = np.full(self.num_perm, _MAX, dtype=np.uint32)
        for start in range(0, len(h32), _CHUNK):
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
        self._index = BandIndex()
        self._store = SignatureStore(num_perm)

    def _text(self, sample: Sample) -> str | None:
        text = " ".join(_WORDS_RE.findall(_record_text(sample, self.fields).lower()))
        return text if len(text) >= max(self.min_chars, self.shingle) else None

    def _keys(self, sample: Sample, sig: np.ndarray) -> list[int]:
        scope = hash(tuple(sample.images)) if self.include_images else 0
        width = self.num_perm // self.bands * 4
        raw = sig.tobytes()
        return [hash((scope, i, raw[i * width : (i + 1) * width])) & 0xFFFFFFFF for i in range(self.bands)]

    def prepare(self, samples: Sequence[Sample]) -> None:
        """Compute the signatures, band keys and index search of a batch at once, before ``check`` sees each.

        Only what does not depend on the records seen so far is computed here (the index search is redone in
        ``check`` when the index has merged since), so decisions are those of ``check`` alone, in the same order.
        """
        texts: list[str] = []
        owners: list[Sample] = []
        for sample in samples:
            text = self._text(sample)
            if text is None:
                sample.cache[id(self)] = None
            else:
                texts.append(text)
                owners.append(sample)
        if not texts:
            return
        sigs = self._hasher.signatures(texts)
        lows = sigs.astype(np.uint8)
        keys = [self._keys(sample, sig) for sample, sig in zip(owners, sigs, strict=True)]
        searched = self._index.search(np.asarray(keys, dtype=np.uint64)).tolist()
        generation = self._index.generation
        for i, sample in enumerate(owners):
            sample.cache[id(self)] = (lows[i], keys[i], searched[i], generation)

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        sample = Sample.of(record)
        prepared = sample.cache.pop(id(self), _UNPREPARED)
        if prepared is None:
            return None
        if prepared is _UNPREPARED:
            text = self._text(sample)
            if text is None:
                return None
            sig = self._hasher.signature(text)
            if sig is None:
                return None
            low, keys, searched = sig.astype(np.uint8), self._keys(sample, sig), None
        else:
            low, keys, searched, generation = prepared
            if generation != self._index.generation:
                searched = None
        found = self._index.lookup(keys, searched)
        candidates = sorted({idx for idx in found if idx is not None})
        if candidates:
            agree = (self._store.rows(candidates) == low).mean(axis=1)
            estimate = (float(agree.max()) - _BBIT_CHANCE) / (1 - _BBIT_CHANCE)
            if estimate >= self.threshold:
                return "near_duplicate"
        idx = self._store.append(low)
        self._index.add([key for key, had in zip(keys, found, strict=True) if had is None], idx)
        return None

    def state_bytes(self) -> int:
        """Bytes held for the records seen so far: band index entries and stored signatures."""
        return 8 * len(self._index) + self.num_perm * len(self._store)
