"""Exact and near-duplicate records. Both filters are stateful: the first occurrence is kept, later ones rejected.

The runner feeds records in input order, so which copy survives is reproducible; run one process over the records
that should be deduplicated together. Both filters do what does not depend on earlier records for a whole batch in
``prepare`` (texts, hashes, and a vectorised look-up in the state), so that ``check`` is a few Python operations for
the common record without an earlier copy; ``check`` alone (without ``prepare``) decides the same.

Exact dedup keeps one 64-bit key per kept record (Python's ``hash`` of the normalised text and image paths; string
hashes are salted per process, which is fine for state that never leaves it) in a sorted numpy array plus a small
set of recent keys: 8 bytes per record.

Near dedup is MinHash + LSH written in numpy (no extra dependency): the texts of a batch are normalised and cut into
character shingles in numpy, the shingles are hashed with a polynomial rolling hash and permuted with ``num_perm``
random affine maps modulo 2**32, and each signature is split into ``bands`` bands, each hashed (with the image paths)
to a 32-bit band key; records sharing a band key are candidates, and a candidate is a duplicate when it is about the
same images and the share of equal signature values (the Jaccard estimate) reaches ``threshold``. Stored signatures
keep the low 8 bits of each value (b-bit MinHash, Li and König 2010): two different values agree there by chance
with probability 1/256, which the estimate corrects for.

Near-dedup memory stays flat because RAM holds only what every look-up needs, about 40 bytes per kept record:

- the band keys, 4 bytes each (8 bands: 32 bytes per record), in sorted uint32 runs of about
  ``NearDedupFilter.index_buffer`` entries (see ``BandIndex``);
- a bitmap over all band keys, 0.5 to 1 byte per key, that answers "absent" for most keys of a new batch without a
  binary search in every run;
- bounded parts that do not grow with the records: the newest band keys with their record indices (8 bytes each, at
  most about 1.25 ``index_buffer``) until they fill a run, and the newest ``signature_block`` stored signatures.

The rest goes to two append-only files in ``spill_dir``: the record index of each band key of the frozen runs
(aligned with the run's sorted keys) and each kept record's stored signature (``num_perm`` bytes plus 8 bytes that
identify its images). They are needed only for candidates, which are rare, so they are read back with ``os.pread``,
a few bytes per candidate; a memory map would put every page it touched into the process's resident set, which is
what spilling avoids. The files are removed by ``close()`` or, failing that, when the filter is garbage-collected or
the interpreter exits.
"""

from __future__ import annotations

import functools
import operator
import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from postvl.filtering.base import CJK_CHARS, Filter, Sample

_FIELDS = ("query", "answer")
# Words of space-separated scripts and whole runs of CJK characters: normalised text keeps CJK unspaced.
_WORDS_RE = re.compile(f"[{CJK_CHARS}]+|[^\\W{CJK_CHARS}]+")
_MASK64 = (1 << 64) - 1


def _fields_getter(fields: tuple[str, ...]) -> Callable[[Sample], tuple[str, ...]]:
    """A function giving the chosen texts of a sample, to be joined by U+001E (``attrgetter`` runs in C)."""
    getter = operator.attrgetter(*fields)
    return getter if len(fields) > 1 else lambda sample: (getter(sample),)


def _check_fields(name: str, fields: Sequence[str]) -> tuple[str, ...]:
    fields = tuple(fields)
    if not fields or any(f not in _FIELDS for f in fields):
        raise ValueError(f"{name}: fields must be a non-empty subset of {list(_FIELDS)}, got {list(fields)}")
    return fields


class ExactDedupFilter(Filter):
    """Rejects a record whose normalised text (and images) equals an earlier record's.

    Normalisation: lower-case, runs of whitespace collapsed to one space. The key is Python's 64-bit ``hash`` of the
    chosen fields and, with ``include_images``, the image paths (string hashes are salted per process, which is fine
    for state that never leaves it; two different records share a key with probability 2**-64).

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
        self._texts = _fields_getter(self.fields)
        self._seen = KeySet()
        # The last prepared batch: whether each key was in the sorted array at `_generation`.
        self._merged: list[bool] = []
        self._generation = -1

    def _key(self, sample: Sample) -> int:
        text = " ".join("\x1e".join(self._texts(sample)).lower().split())
        return hash((text, *sample.images) if self.include_images else text) & _MASK64

    def prepare(self, samples: Sequence[Sample]) -> None:
        """Hash a batch and look its keys up in the sorted array at once; ``check`` then asks only the recent set."""
        key = self._key
        me = id(self)
        keys = []
        merged: list[bool] = []  # filled below; the cache entries hold it to tell this batch from an older one
        for row, sample in enumerate(samples):
            k = key(sample)
            keys.append(k)
            sample.cache[me] = (k, row, merged)
        seen = self._seen
        merged += seen.contains_merged(np.fromiter(keys, dtype=np.uint64, count=len(keys))).tolist()
        self._merged = merged
        self._generation = seen.generation

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        sample = Sample.of(record)
        prepared = sample.cache.pop(id(self), None)
        seen = self._seen
        recent = seen._recent
        if prepared is not None and prepared[2] is self._merged and self._generation == seen.generation:
            key, row, merged = prepared
            duplicate = key in recent or merged[row]
        else:  # not prepared, or the recent keys were merged since: ask the whole set
            key = self._key(sample) if prepared is None else prepared[0]
            duplicate = key in seen
        if duplicate:
            return "exact_duplicate"
        recent.add(key)
        if len(recent) >= seen._buffer:
            seen.merge_recent()
        return None

    def state_bytes(self) -> int:
        """Bytes of the sorted keys (the recent set is bounded)."""
        return 8 * len(self._seen)


_ROLL = np.uint64(1_000_003)
_MIX1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_CHUNK = 4096
_MAX = np.iinfo(np.uint32).max
_S33 = np.uint64(33)
_S32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
_BBIT_CHANCE = 1 / 256  # two different 32-bit values agree in their low 8 bits by chance
_UNPREPARED = object()


class _SortedU64:
    """A sorted uint64 array that grows in place: new values are sorted into the space added at its end.

    The array grows through ``ndarray.resize`` (``realloc``, which moves large blocks by remapping pages rather than
    copying them) by exactly the new values, so a merge holds no second copy of the array and no spare capacity; the
    stable sort merges the two sorted runs in linear time with a buffer the size of the new run.
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
            self._buf.resize(n + m, refcheck=False)
        self._buf[n : n + m] = new
        self._buf[: n + m].sort(kind="stable")
        self._n = n + m


class KeySet:
    """A set of 64-bit integers in 8 bytes each: a sorted numpy array plus a small Python set of recent keys.

    Recent keys are merged into the array every ``buffer`` insertions (in place, see ``_SortedU64``), so memory stays
    at 8 bytes per key and a bounded buffer, and a lookup is one binary search. ``generation`` changes at every
    merge: ``contains_merged`` answers for the array as it was then.
    """

    def __init__(self, buffer: int = 1 << 16) -> None:
        self._array = _SortedU64()
        self._recent: set[int] = set()
        self._buffer = buffer
        self.generation = 0

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

    def contains_merged(self, keys: np.ndarray) -> np.ndarray:
        """For a uint64 array of keys, whether each is in the sorted array (the recent set is not asked)."""
        arr = self._array.values
        if not len(arr):
            return np.zeros(len(keys), dtype=bool)
        pos = np.minimum(arr.searchsorted(keys), len(arr) - 1)
        return arr[pos] == keys

    def add(self, key: int) -> None:
        self._recent.add(key)
        if len(self._recent) >= self._buffer:
            self.merge_recent()

    def merge_recent(self) -> None:
        """Merge the recent keys into the sorted array (``add`` does when ``buffer`` are waiting)."""
        if self._recent:
            recent = np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))
            recent.sort()
            self._array.merge(recent)
            self._recent = set()
            self.generation += 1


# Spill folders that filters of this process created under a caller's path: removed once the last file goes.
_CREATED_FOLDERS: set[str] = set()


def _remove_spill(files: list[tuple[int, str]], folders: list[tuple[str, bool]], owner: int) -> None:
    if os.getpid() != owner:  # a forked child that drops its copy of the filter leaves the parent's files alone
        return
    for fd, path in files:
        try:
            os.close(fd)
        except OSError:
            pass
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    files.clear()
    for path, private in folders:
        if private:
            shutil.rmtree(path, ignore_errors=True)
        elif path in _CREATED_FOLDERS:
            try:
                os.rmdir(path)  # fails while another filter's files are still there: that one removes it
            except OSError:
                continue
            _CREATED_FOLDERS.discard(path)
    folders.clear()


class SpillFolder:
    """Where near dedup writes the state it keeps on disk; nothing is created until the first file is needed.

    Args:
        path: the folder for the files (several filters may share it: each file has a unique name; created when
            missing, and then removed with the last file), or ``None`` for a fresh
            ``tempfile.mkdtemp(prefix="postvl-near-dedup-")``, removed by ``close``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.path.abspath(os.fspath(path))
        self._folder: str | None = None
        self._files: list[tuple[int, str]] = []
        self._folders: list[tuple[str, bool]] = []
        # The safety net gets the lists, not self, so that it does not keep the folder alive.
        self._finalizer = weakref.finalize(self, _remove_spill, self._files, self._folders, os.getpid())

    def new_file(self, suffix: str) -> int:
        """A new empty file opened for reading and writing; returns its descriptor."""
        if self._folder is None:
            if self.path is None:
                self._folder = tempfile.mkdtemp(prefix="postvl-near-dedup-")
                self._folders.append((self._folder, True))
            else:
                if not os.path.isdir(self.path):
                    os.makedirs(self.path, exist_ok=True)
                    _CREATED_FOLDERS.add(self.path)
                self._folder = self.path
                self._folders.append((self.path, False))
        fd, path = tempfile.mkstemp(prefix="near-dedup-", suffix=suffix, dir=self._folder)
        self._files.append((fd, path))
        return fd

    @property
    def files(self) -> list[str]:
        """Paths of the files created so far (and not yet removed)."""
        return [path for _, path in self._files]

    def close(self) -> None:
        """Close and remove the files (and the folder, see ``path``)."""
        self._finalizer()


class _SpillFile:
    """An append-only file in a ``SpillFolder``, created on the first append and read with ``os.pread``."""

    def __init__(self, folder: SpillFolder, suffix: str) -> None:
        self._folder = folder
        self._suffix = suffix
        self._fd = -1
        self.size = 0

    def append(self, data: np.ndarray) -> int:
        """Write a contiguous array at the end; returns the byte offset it starts at."""
        if self._fd < 0:
            self._fd = self._folder.new_file(self._suffix)
        view = memoryview(np.ascontiguousarray(data)).cast("B")
        offset = self.size
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], offset + done)
        self.size += len(view)
        return offset

    def read(self, size: int, offset: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise OSError(f"near dedup: short read from its spill file ({len(data)} of {size} bytes)")
        return data


class BandIndex:
    """LSH band keys (uint32) -> the index of the first kept record that had them; keys in RAM, indices on disk.

    Each key is stored once (callers add only keys they did not find), and ``add_many`` brings a sorted run of new
    ones. Hot runs hold ``key << 32 | index`` (8 bytes) back to back in one uint64 arena that lives as long as the
    index; the newest run is merged into the one before it (timsort on the two adjacent runs: in place, linear, with
    a buffer the size of the newest) while that one is at most ``_MERGE_RATIO`` times as long, so there are a few hot
    runs of geometrically growing sizes. A hot run that reaches ``buffer`` entries is frozen: its keys are copied to
    a sorted uint32 array that stays in RAM, its record indices are appended to the spill file in the same order
    (``os.pread`` reads back the 4 bytes of a hit), and its space in the arena is reused. No run grows beyond about
    1.25 ``buffer`` entries and no large block is ever freed, so neither merges nor frees make the resident set jump
    (with glibc, a large block freed in the middle of the heap stays resident).

    A bitmap with 4 to 8 bits per stored key (bit = the key's top bits) is asked first: a clear bit means absent, so
    only about one key in six of a batch is searched in the runs.

    ``generation`` changes at every ``add_many``: a ``search`` result stays valid while it is unchanged.

    Args:
        buffer: entries of the hot runs at which one is frozen.
        spill: the folder of the spill file (``None``: a fresh temporary folder, removed with this index).
    """

    _MERGE_RATIO = 4
    _CONVERT = 1 << 16  # entries converted at a time when a run is frozen (bounds the temporaries)

    def __init__(self, buffer: int = 1 << 20, spill: SpillFolder | None = None) -> None:
        self._buffer = max(int(buffer), 1)
        self._file = _SpillFile(spill if spill is not None else SpillFolder(), ".idx")
        # Hot runs back to back in one array that lives as long as the index: freezing and merging never free a
        # large block (with glibc a freed block in the middle of the heap stays resident, so RSS would creep up).
        self._arena = np.empty(0, dtype=np.uint64)
        self._ends: list[int] = []  # where each hot run ends in the arena, oldest (largest) first
        self._arena_peak = 0  # entries of the arena ever written: its resident part
        self._frozen: list[np.ndarray] = []
        self._offsets: list[int] = []
        self._count = 0
        self._bits = 0  # log2 of the bitmap's size in bits
        self._bitmap = np.zeros(0, dtype=np.uint8)
        self.generation = 0

    def __len__(self) -> int:
        return self._count

    @property
    def _sorted(self) -> np.ndarray:
        """All stored keys, sorted (for inspection)."""
        parts = [(run >> _S32).astype(np.uint32) for run in self._hot_runs()] + self._frozen
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint32)

    def ram_bytes(self) -> int:
        return 8 * self._arena_peak + sum(r.nbytes for r in self._frozen) + self._bitmap.nbytes

    def spilled_bytes(self) -> int:
        return self._file.size

    def search(self, keys: np.ndarray) -> np.ndarray:
        """For an array of keys (any shape), the record index stored for each, or -1."""
        wanted = np.asarray(keys, dtype=np.uint32)
        found = np.full(wanted.shape, -1, dtype=np.int64)
        if not self._count or not wanted.size:
            return found
        flat = wanted.ravel()
        out = found.ravel()
        bit = flat >> np.uint32(32 - self._bits)
        maybe = np.flatnonzero((self._bitmap[bit >> np.uint32(3)] >> (bit & np.uint32(7)).astype(np.uint8)) & 1)
        if not len(maybe):
            return found
        query = flat[maybe]
        if self._ends:
            packed = query.astype(np.uint64) << _S32
            for run in self._hot_runs():
                entry = run[np.minimum(run.searchsorted(packed), len(run) - 1)]
                hit = (entry >> _S32) == query
                if hit.any():
                    out[maybe[hit]] = (entry[hit] & _LOW32).astype(np.int64)
        for run, offset in zip(self._frozen, self._offsets, strict=True):
            pos = np.minimum(run.searchsorted(query), len(run) - 1)
            hit = np.flatnonzero(run[pos] == query)
            for i, p in zip(hit.tolist(), pos[hit].tolist(), strict=True):
                out[maybe[i]] = int(np.frombuffer(self._file.read(4, offset + 4 * p), dtype=np.uint32)[0])
        return found

    def lookup(self, keys: Sequence[int]) -> list[int | None]:
        """The record index stored for each key, or ``None``."""
        return [None if idx < 0 else idx for idx in self.search(np.asarray(keys, dtype=np.uint32)).tolist()]

    def add(self, keys: Sequence[int], index: int) -> None:
        """Store ``key -> index`` for each key (keys the caller found already stored are left out by it)."""
        unique = np.unique(np.asarray(keys, dtype=np.uint32))
        self.add_many(unique, np.full(len(unique), index, dtype=np.uint32))

    def add_many(self, keys: np.ndarray, indices: np.ndarray) -> None:
        """Store ``keys[i] -> indices[i]``; ``keys`` sorted, unique and not stored yet."""
        if not len(keys):
            return
        self.generation += 1
        self._count += len(keys)
        if self._count * 4 > (1 << self._bits):
            self._rebuild_bitmap()
        self._set_bits(keys)
        ends = self._ends
        start = ends[-1] if ends else 0
        end = start + len(keys)
        if end > len(self._arena):  # first use (or an unusually large batch): a larger arena
            arena = np.empty(max(end, self._buffer + self._buffer // self._MERGE_RATIO + (1 << 14)), dtype=np.uint64)
            arena[:start] = self._arena[:start]
            self._arena = arena
        self._arena[start:end] = (keys.astype(np.uint64) << _S32) | indices.astype(np.uint64)
        ends.append(end)
        self._arena_peak = max(self._arena_peak, end)
        while len(ends) > 1:
            first = ends[-3] if len(ends) > 2 else 0  # where the run before the newest starts
            if ends[-2] - first > self._MERGE_RATIO * (ends[-1] - ends[-2]):
                break
            # Two adjacent sorted runs: timsort merges them in place in linear time, with a buffer the size of
            # the smaller one.
            self._arena[first : ends[-1]].sort(kind="stable")
            del ends[-2]
        first = ends[-2] if len(ends) > 1 else 0
        if ends[-1] - first >= self._buffer:
            self._freeze(self._arena[first : ends.pop()])

    def _hot_runs(self) -> list[np.ndarray]:
        ends = self._ends
        return [self._arena[start:end] for start, end in zip([0, *ends], ends, strict=False)]  # start: last end

    def _freeze(self, run: np.ndarray) -> None:
        keys = np.empty(len(run), dtype=np.uint32)
        offset = self._file.size
        for start in range(0, len(run), self._CONVERT):
            part = run[start : start + self._CONVERT]
            keys[start : start + len(part)] = part >> _S32
            self._file.append((part & _LOW32).astype(np.uint32))
        self._frozen.append(keys)
        self._offsets.append(offset)

    def _set_bits(self, keys: np.ndarray) -> None:
        for start in range(0, len(keys), self._CONVERT):  # a slice at a time: the temporaries stay small
            part = keys[start : start + self._CONVERT]
            if part.dtype == np.uint64:  # a hot run: key << 32 | index
                part = (part >> _S32).astype(np.uint32)
            bit = part >> np.uint32(32 - self._bits)
            np.bitwise_or.at(self._bitmap, bit >> np.uint32(3), np.left_shift(1, bit & np.uint32(7)).astype(np.uint8))

    def _rebuild_bitmap(self) -> None:
        # Over 4 and at most 8 bits per key (rebuilt, twice the size, when it would drop to 4): one hash tests false
        # for 78% to 88% of absent keys, for 0.5 to 1 byte per key.
        self._bits = min(32, max(16, (self._count * 4).bit_length()))
        self._bitmap = np.zeros(0, dtype=np.uint8)  # the old one goes first
        self._bitmap = np.zeros(1 << (self._bits - 3), dtype=np.uint8)
        for run in [*self._hot_runs(), *self._frozen]:
            self._set_bits(run)


class SignatureStore:
    """What near dedup keeps of each kept record's signature (its low 8 bits and its images), ``width`` bytes a row.

    The newest ``block`` rows stay in RAM, in one block that is reused; each full block is appended to the spill file,
    and a row there is read back with ``os.pread`` when it is a candidate, which is rare.

    Args:
        width: bytes per row.
        block: rows kept in RAM.
        spill: the folder of the spill file (``None``: a fresh temporary folder, removed with this store).
    """

    def __init__(self, width: int, block: int = 1 << 14, spill: SpillFolder | None = None) -> None:
        self._width = width
        self._block = max(int(block), 1)
        self._file = _SpillFile(spill if spill is not None else SpillFolder(), ".sig")
        self._ram = np.empty((0, width), dtype=np.uint8)
        self._spilled = 0  # rows on disk; row i >= _spilled is _ram[i - _spilled]
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def ram_bytes(self) -> int:
        return self._ram.nbytes

    def spilled_bytes(self) -> int:
        return self._file.size

    def append(self, sig: np.ndarray) -> int:
        self.extend(np.asarray(sig, dtype=np.uint8).reshape(1, self._width))
        return self._size - 1

    def extend(self, rows: np.ndarray) -> None:
        """Append rows (``(n, width)`` uint8)."""
        while len(rows):
            if not len(self._ram):
                self._ram = np.empty((self._block, self._width), dtype=np.uint8)
            at = self._size - self._spilled
            take = min(len(rows), self._block - at)
            self._ram[at : at + take] = rows[:take]
            self._size += take
            rows = rows[take:]
            if self._size - self._spilled == self._block:
                self._file.append(self._ram)
                self._spilled += self._block

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        out = np.empty((len(indices), self._width), dtype=np.uint8)
        for i, idx in enumerate(indices):
            if idx >= self._spilled:
                out[i] = self._ram[idx - self._spilled]
            else:
                out[i] = np.frombuffer(self._file.read(self._width, idx * self._width), dtype=np.uint8)
        return out


@functools.cache
def _char_classes() -> np.ndarray:
    """For every code point: 0 dropped, 1 word character, 2 CJK, 3 the separator between texts (U+0000).

    Built from the same character sets as ``_WORDS_RE`` (``\\w`` and ``CJK_CHARS``), so tokenising in numpy with it
    gives exactly the regular expression's tokens. 1.1 MB, built once (about 40 ms).
    """
    chars = np.arange(0x110000, dtype=np.uint32).tobytes().decode("utf-32-le", "surrogatepass")

    def mask(pattern: str) -> np.ndarray:
        kept = re.sub(pattern, lambda m: "\0" * len(m.group()), chars)
        return np.frombuffer(kept.encode("utf-32-le", "surrogatepass"), dtype=np.uint32) != 0

    table = mask(r"\W+").astype(np.uint8)
    table[mask(f"[^{CJK_CHARS}]+")] = 2
    table[0] = 3
    return table


def _normalise(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Code points of ``" ".join(_WORDS_RE.findall(text.lower()))`` for each text, computed for all at once.

    Returns ``(codes, starts, lengths)``: the normalised texts as uint32 code points joined by 0, where each starts
    and how long it is. The tokens are the runs of one class of ``_char_classes`` (word or CJK); one space goes
    between two tokens of a text, none around the separators.
    """
    joined = "\0".join(texts)
    if joined.count("\0") != len(texts) - 1:  # a text holds U+0000, dropped by normalisation anyway
        joined = "\0".join(t.replace("\0", " ") for t in texts)
    codes = np.frombuffer(joined.lower().encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    classes = np.take(_char_classes(), codes)
    kept = np.flatnonzero(classes != 0)
    kept_class = np.take(classes, kept)
    space = np.diff(kept) > 1  # something dropped between two kept characters
    space |= kept_class[1:] != kept_class[:-1]  # word <-> CJK, or either is a separator
    separator = kept_class == 3
    space &= ~separator[1:]
    space &= ~separator[:-1]
    steps = np.ones(len(kept), dtype=np.int64)
    steps[1:] += space
    out = np.full(len(kept) + int(np.count_nonzero(space)), 32, dtype=np.uint32)  # what is not a character: spaces
    if len(kept):
        steps[0] = 0
        out[np.cumsum(steps)] = np.take(codes, kept)
    bounds = np.flatnonzero(out == 0)
    starts = np.zeros(len(texts), dtype=np.int64)
    starts[1:] = bounds + 1
    ends = np.full(len(texts), len(out), dtype=np.int64)
    ends[:-1] = bounds
    return out, starts, ends - starts


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
        if len(text) < self.shingle:
            return None
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return self.signatures_of_codes(codes, np.zeros(1, dtype=np.int64), np.array([len(text)]))[0]

    def signatures_of_codes(self, codes: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One signature per text ``codes[starts[i] : starts[i] + lengths[i]]`` (uint32 code points), as rows.

        The rolling hash runs once over all the codes (shingles that straddle two texts are left out) and the
        permutations over blocks of about ``_CHUNK * 4`` shingles with one minimum per text (``reduceat``): a few
        numpy calls per batch instead of a dozen per record.
        """
        k = self.shingle
        if not len(starts):
            return np.empty((0, self.num_perm), dtype=np.uint32)
        if int(lengths.min()) < k:
            raise ValueError(f"every text must have at least {k} characters")
        wide = codes.astype(np.uint64)
        n = len(wide) - k + 1
        h = wide[:n].copy()
        for j in range(1, k):
            h *= _ROLL
            h += wide[j : j + n]
        del wide
        counts = lengths - k + 1  # shingles of each text
        firsts = np.cumsum(counts) - counts  # where each text's shingles start among the kept ones
        positions = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(starts - firsts, counts)
        h = h[positions]
        # One multiply by an odd 64-bit constant spreads nearby shingles over the high 32 bits, which are kept
        # (MurmurHash3's full finaliser costs three times as much; on 60k benchmark records 32 decisions near the
        # threshold differ between the two).
        h ^= h >> _S33
        h *= _MIX1
        h32 = (h >> _S32).astype(np.uint32)
        del h, positions
        out = np.empty((len(starts), self.num_perm), dtype=np.uint32)
        limit = _CHUNK * 4
        ends = firsts + counts
        start = 0
        while start < len(starts):
            # texts start..stop-1 in one block: at least one text, at most about `limit` shingles
            stop = max(int(np.searchsorted(ends, firsts[start] + limit, side="right")), start + 1)
            lo, hi = int(firsts[start]), int(ends[stop - 1])
            if hi - lo > limit:  # one long text: the chunked single-text path keeps the block small
                out[start] = self._min_hash(h32[lo:hi])
            else:
                block = self._scratch[: self.num_perm * (hi - lo)].reshape(self.num_perm, hi - lo)
                np.multiply(self._a[:, None], h32[lo:hi], out=block)
                block += self._b
                out[start:stop] = np.minimum.reduceat(block, firsts[start:stop] - lo, axis=1).T
            start = stop
        return out

    @functools.cached_property
    def _scratch(self) -> np.ndarray:
        # One block for every batch: a fresh 4 MB array each time would be a fresh mapping, faulted in page by page.
        return np.empty(self.num_perm * _CHUNK * 4, dtype=np.uint32)

    def _min_hash(self, h32: np.ndarray) -> np.ndarray:
        sig = np.full(self.num_perm, _MAX, dtype=np.uint32)
        for start in range(0, len(h32), _CHUNK):
            block = np.multiply.outer(self._a, h32[start : start + _CHUNK])
            block += self._b
            np.minimum(sig, block.min(axis=1), out=sig)
        return sig


class _Batch:
    """What ``NearDedupFilter.prepare`` computed for the long-enough records of one batch (row = record)."""

    __slots__ = ("keys", "order", "stored", "found", "flagged", "generation")

    keys: np.ndarray  # (rows, bands) uint32 band keys
    order: np.ndarray  # stable argsort of keys.ravel()
    stored: np.ndarray  # (rows, num_perm + 8) uint8: what the signature store keeps of each row
    found: np.ndarray  # (rows, bands) int64: record index in the band index at `generation`, or -1
    flagged: list[bool]  # a key found in the index or in an earlier row: the slow path decides
    generation: int


class NearDedupFilter(Filter):
    """Rejects a record whose text is a near copy (estimated Jaccard >= ``threshold``) of an earlier record's.

    The text of the chosen fields is normalised (lower-case, punctuation dropped, one space between words, CJK
    characters kept as they are) and shingled into character ``shingle``-grams, which suits Chinese and English
    alike. Texts shorter than ``min_chars`` after normalisation are left to exact dedup (short answers such as "Yes"
    repeat legitimately). With ``include_images``, only records about the same images are compared.

    ``prepare`` hashes a batch, looks its band keys up in the index at once and flags the records that have a key in
    the index or share one with an earlier record of the batch; ``check`` keeps an unflagged record without looking at
    anything else (its keys are new), and decides a flagged one against the index and the records kept earlier in the
    batch. Kept records wait in the batch until the next ``prepare`` adds them to the index together, in order.

    Args:
        threshold: estimated Jaccard similarity at which a record is a near duplicate.
        num_perm: MinHash signature length.
        bands: LSH bands (``num_perm`` must divide evenly); more bands find lower-similarity candidates.
        shingle: characters per shingle.
        min_chars: shorter normalised texts are not compared.
        fields: ``query`` and / or ``answer``.
        include_images: compare only records with the same image paths.
        seed: MinHash seed.
        spill_dir: folder for the state kept on disk (see the module docstring); ``None``: a fresh temporary folder.
            Files appear on the first spill and are removed by ``close()``.

    Reason: ``near_duplicate``.
    """

    name = "near_dedup"
    stateful = True
    index_buffer: ClassVar[int] = 1 << 20  # band-index entries per frozen run (see BandIndex)
    signature_block: ClassVar[int] = 1 << 14  # signature rows kept in RAM (see SignatureStore)

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
        spill_dir: str | os.PathLike[str] | None = None,
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
        self.spill_dir = spill_dir
        self._texts = _fields_getter(self.fields)
        self._hasher = MinHasher(num_perm, shingle, seed)
        # A band key is a hash of (images, band number, the band's values): a linear form with odd 64-bit
        # multipliers (different bands of 32-bit values never give equal sums) and a finaliser for the top 32 bits.
        rng = np.random.default_rng([seed, 1])
        self._value_mult = rng.integers(0, 2**64, size=num_perm // bands, dtype=np.uint64) | np.uint64(1)
        self._band_salt = rng.integers(0, 2**64, size=bands, dtype=np.uint64)
        self._scope_mult = rng.integers(0, 2**64, dtype=np.uint64) | np.uint64(1)
        self._reset()

    def _reset(self) -> None:
        self._spill = SpillFolder(self.spill_dir)
        self._index = BandIndex(self.index_buffer, self._spill)
        self._store = SignatureStore(self.num_perm + 8, self.signature_block, self._spill)
        self._batch: _Batch | None = None  # the batch whose kept rows wait in `_kept`
        self._kept: list[int] = []
        self._last_kept = -1  # the largest row in `_kept`: a row after it has only earlier rows waiting

    def _band_keys(self, sigs: np.ndarray, scopes: np.ndarray) -> np.ndarray:
        values = sigs.reshape(len(sigs), self.bands, -1).astype(np.uint64)
        values *= self._value_mult
        h = values.sum(axis=2, dtype=np.uint64)
        h += self._band_salt
        h += (scopes * self._scope_mult)[:, None]
        h ^= h >> _S33
        h *= _MIX1
        h ^= h >> _S33
        h *= _MIX2
        h ^= h >> _S33
        return (h >> _S32).astype(np.uint32)

    def prepare(self, samples: Sequence[Sample]) -> None:
        """Hash a batch and look its band keys up at once, before ``check`` sees each record in order.

        First adds the records kept from the previous batch to the index, so the look-up sees every earlier record.
        """
        self._flush()
        if not samples:
            return
        texts = self._texts
        min_chars = max(self.min_chars, self.shingle)
        if len(samples) == 1:  # one record (``check`` without ``prepare``): the regex and one signature cost less
            text = " ".join(_WORDS_RE.findall("\x1e".join(texts(samples[0])).lower()))
            long = np.array([len(text) >= min_chars])
            sigs = self._hasher.signature(text)[None, :] if long[0] else None
        else:
            codes, starts, lengths = _normalise(["\x1e".join(texts(sample)) for sample in samples])
            long = lengths >= min_chars
            sigs = None
        batch = _Batch()  # filled below; the cache entries point at it
        me = id(self)
        include_images = self.include_images
        scopes: list[int] = []
        row = 0
        for sample, ok in zip(samples, long.tolist(), strict=True):
            if ok:
                sample.cache[me] = (batch, row)
                row += 1
                if include_images:
                    scopes.append(hash(tuple(sample.images)))
            else:
                sample.cache[me] = None
        if not row:
            return
        if sigs is None:
            rows = np.flatnonzero(long)
            sigs = self._hasher.signatures_of_codes(codes, starts[rows], lengths[rows])
        scope = np.array(scopes, dtype=np.int64) if include_images else np.zeros(row, dtype=np.int64)
        keys = self._band_keys(sigs, scope.view(np.uint64))
        found = self._index.search(keys)
        # Keys that an earlier row of the batch has too (or the same row, by a 32-bit collision): the stable sort
        # puts equal keys in row order, so each but the first of a group follows an equal key.
        flat = keys.ravel()
        order = flat.argsort(kind="stable")
        shared = np.zeros(flat.size, dtype=bool)
        shared[order[1:][flat[order[1:]] == flat[order[:-1]]]] = True
        batch.keys = keys
        batch.order = order
        batch.stored = np.concatenate([sigs.astype(np.uint8), scope.view(np.uint8).reshape(-1, 8)], axis=1)
        batch.found = found
        batch.flagged = (shared.reshape(keys.shape) | (found >= 0)).any(axis=1).tolist()
        batch.generation = self._index.generation
        self._batch = batch

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        sample = Sample.of(record)
        prepared = sample.cache.pop(id(self), _UNPREPARED)
        if prepared is _UNPREPARED:
            self.prepare([sample])
            prepared = sample.cache.pop(id(self))
        if prepared is None:
            return None
        batch, row = prepared
        if batch is self._batch and batch.generation == self._index.generation:
            # No key in the index and none in an earlier row (all rows waiting are earlier when checked in order):
            # a first occurrence.
            if not batch.flagged[row] and row > self._last_kept:
                self._kept.append(row)
                self._last_kept = row
                return None
            found = batch.found[row]
        else:  # the index changed since this batch was prepared (a record was checked unprepared in between)
            if batch is not self._batch:
                self._flush()
                self._batch = batch
            found = self._index.search(batch.keys[row])
        if self._is_duplicate(batch, row, found):
            return "near_duplicate"
        self._kept.append(row)
        self._last_kept = max(self._last_kept, row)
        return None

    def _is_duplicate(self, batch: _Batch, row: int, found: np.ndarray) -> bool:
        """Compare a row with its candidates: for each band key, the first kept record that had it."""
        candidates: list[np.ndarray] = []
        hits = found[found >= 0]
        if len(hits):
            candidates.append(self._store.rows(np.unique(hits).tolist()))
        missing = batch.keys[row][found < 0]
        if self._kept and len(missing):
            # Not in the index: the first row kept earlier in this batch that has the key (the one that will add it).
            kept = np.asarray(self._kept)
            has = (batch.keys[kept][:, :, None] == missing).any(axis=1)  # (kept rows, missing keys)
            first = has.argmax(axis=0)[has.any(axis=0)]
            if len(first):
                candidates.append(batch.stored[kept[np.unique(first)]])
        if not candidates:
            return False
        rows = np.concatenate(candidates)
        mine = batch.stored[row]
        n = self.num_perm
        # A candidate about other images shares a band key only by a 32-bit collision: not a duplicate.
        rows = rows[(rows[:, n:] == mine[n:]).all(axis=1)]
        if not len(rows):
            return False
        agree = (rows[:, :n] == mine[:n]).mean(axis=1)
        estimate = (float(agree.max()) - _BBIT_CHANCE) / (1 - _BBIT_CHANCE)
        return estimate >= self.threshold

    def _flush(self) -> None:
        """Add the rows kept from the pending batch to the signature store and the band index, in order."""
        batch, kept = self._batch, self._kept
        self._batch, self._kept, self._last_kept = None, [], -1
        if batch is None or not kept:
            return
        rows = np.asarray(kept)
        first = len(self._store)
        self._store.extend(batch.stored[rows])
        # The keys already stored are not added again; the rest were decided against this same index (it changes
        # only here), so the batch's search is still valid unless another flush came in between.
        if batch.generation == self._index.generation:
            stored = batch.found[rows] >= 0
        else:
            stored = self._index.search(batch.keys[rows]) >= 0
        new = np.zeros(batch.keys.shape, dtype=bool)
        new[rows] = ~stored
        # Each new key once, from the first kept row that has it: the batch's stable sort lists equal keys in row
        # order, so the first of each run of equal keys among the new ones is that row's.
        order = batch.order[new.ravel()[batch.order]]
        keys = batch.keys.ravel()[order]
        lead = np.ones(len(keys), dtype=bool)
        lead[1:] = keys[1:] != keys[:-1]
        record = np.zeros(len(batch.keys), dtype=np.uint32)
        record[rows] = np.arange(first, first + len(rows), dtype=np.uint32)
        self._index.add_many(keys[lead], record[order[lead] // self.bands])

    def close(self) -> None:
        """Forget the records seen so far and remove the spill files; a later use starts afresh."""
        self._spill.close()
        self._reset()

    def state_bytes(self) -> int:
        """Bytes of RAM held for the records seen so far: band keys, hot index runs, bitmap, recent signatures."""
        return self._index.ram_bytes() + self._store.ram_bytes()

    def spilled_bytes(self) -> int:
        """Bytes written to ``spill_dir``: record indices of the frozen index runs and the stored signatures."""
        return self._index.spilled_bytes() + self._store.spilled_bytes()
