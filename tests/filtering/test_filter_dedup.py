"""Exact and near dedup against straightforward references: batches, frozen index runs, spilled signatures."""

from __future__ import annotations

import gc
import os
import random
import tempfile

import numpy as np
import pytest

from postvl.filtering import ExactDedupFilter, MinHasher, NearDedupFilter, Sample
from postvl.filtering.dedup import _WORDS_RE, BandIndex, KeySet, SignatureStore, _normalise
from postvl.records import image_part, message

WORDS = (
    "the a small wooden table window white ceramic mug coffee sunlight left side shadow plant green leaf painting "
    "harbour wall sofa child red ball grass fence chart revenue grew steadily budget equation area triangle robot "
    "blue cube box video man black jacket street cafe invoice total amount function list linear sign door shop"
).split()
ZH = ["图片中是一张靠窗的小木桌", "桌子上放着一个白色陶瓷杯", "阳光从左侧照进来", "背景里一盆绿植", "墙上挂着一幅画"]


def rec(answer: str, query: str = "Describe the image.", images: tuple[str, ...] = ("img.png",)) -> dict:
    return {
        "id": "r",
        "messages": [message("user", image_part(), query), message("assistant", answer)],
        "images": list(images),
        "videos": [],
        "meta": {},
    }


def planted_records(n: int, seed: int = 0) -> list[dict]:
    """Records with exact copies (also re-cased and re-spaced), near copies (a word or two changed), copies about
    other images, short texts and Chinese, some right behind their original and some far from it."""
    rng = random.Random(seed)
    originals: list[tuple[str, str, tuple[str, ...]]] = []
    out: list[dict] = []
    for _ in range(n):
        roll = rng.random()
        if originals and roll < 0.35:
            query, text, images = originals[-1] if rng.random() < 0.3 else rng.choice(originals)
            kind = rng.random()
            if kind < 0.25:
                text = text.upper() if rng.random() < 0.5 else "  " + text.replace(" ", "\n ", 2) + " "
            elif kind < 0.75:
                words = text.split(" ")
                for _ in range(rng.choice((1, 1, 2, 3))):
                    words[rng.randrange(len(words))] = rng.choice(WORDS)
                text = " ".join(words) + rng.choice(("", ".", "!"))
            else:
                images = (f"img{rng.randrange(8)}.png",)
        else:
            query = rng.choice(("Describe the image.", "What is shown?", "描述这张图片。"))
            if rng.random() < 0.1:
                text = rng.choice(("Yes.", "No, it is not.", "A red ball."))
            elif rng.random() < 0.3:
                text = "，".join(rng.sample(ZH, 3)) + "。"
            else:
                text = " ".join(rng.choices(WORDS, k=rng.randint(10, 30))) + "."
            images = (f"img{rng.randrange(8)}.png",) if rng.random() < 0.9 else ()
            originals.append((query, text, images))
        out.append(rec(text, query, images))
    return out


def normalised(record: dict) -> str:
    sample = Sample(record)
    return " ".join(_WORDS_RE.findall(f"{sample.query}\x1e{sample.answer}".lower()))


class ReferenceNear:
    """Near dedup one record at a time with a dict of band keys -> first kept record (the filter's semantics).

    Band keys come from the filter's own hash (so 32-bit collisions, if any, are the same on both sides); everything
    else (normalisation, signatures, candidates, the estimate, records about other images) is computed here.
    """

    def __init__(self, filt: NearDedupFilter) -> None:
        self.filt = filt
        self.hasher = MinHasher(filt.num_perm, filt.shingle, filt.seed)
        self.index: dict[int, int] = {}
        self.stored: list[tuple[np.ndarray, tuple[str, ...]]] = []

    def check(self, record: dict) -> str | None:
        sample = Sample(record)
        text = normalised(record)
        if len(text) < max(self.filt.min_chars, self.filt.shingle):
            return None
        sig = self.hasher.signature(text)
        images = tuple(sample.images)
        scope = np.array([hash(images)], dtype=np.int64).view(np.uint64)
        keys = self.filt._band_keys(sig[None, :], scope)[0].tolist()
        low = sig.astype(np.uint8)
        for idx in sorted({self.index[k] for k in keys if k in self.index}):
            other, other_images = self.stored[idx]
            estimate = ((other == low).mean() - 1 / 256) / (1 - 1 / 256)
            if other_images == images and estimate >= self.filt.threshold:
                return "near_duplicate"
        for key in keys:
            self.index.setdefault(key, len(self.stored))
        self.stored.append((low, images))
        return None


def reference_exact(records: list[dict], include_images: bool = True) -> list[str | None]:
    seen: set[tuple[str, ...]] = set()
    out: list[str | None] = []
    for record in records:
        sample = Sample(record)
        key = (" ".join(f"{sample.query}\x1e{sample.answer}".lower().split()),)
        key += tuple(sample.images) if include_images else ()
        out.append("exact_duplicate" if key in seen else None)
        seen.add(key)
    return out


def run_in_batches(filt, records: list[dict], mode: str, seed: int = 1) -> tuple[list[str | None], list[dict]]:
    """Drive a filter as the runner does (``prepare`` a batch, then ``check`` each in order), in one of several ways.

    Returns the decisions and the records that were checked, in order (``skipped`` leaves some prepared records
    unchecked, as when an earlier stateful filter rejects them; ``interleaved`` checks some records unprepared in
    between; ``shuffled`` checks a batch in another order than it was prepared in).
    """
    rng = random.Random(seed)
    decisions: list[str | None] = []
    checked: list[dict] = []
    pos = 0
    while pos < len(records):
        size = rng.choice((1, 2, 7, 64, 256, 300))
        batch = [Sample(r) for r in records[pos : pos + size]]
        pos += size
        if mode != "check_only":
            filt.prepare(batch)
        if mode == "shuffled":  # not the runner's order, but check must still decide as if alone
            rng.shuffle(batch)
        for sample in batch:
            if mode == "skipped" and rng.random() < 0.1:
                continue
            if mode == "interleaved" and rng.random() < 0.05 and pos < len(records):
                extra = records[pos]  # the next record, checked now without prepare (and left out of the batches)
                pos += 1
                decisions.append(filt.check(extra))
                checked.append(extra)
            decisions.append(filt.check(sample))
            checked.append(sample.record)
    return decisions, checked


@pytest.fixture
def small_runs(monkeypatch):
    """Tiny frozen index runs and signature blocks, so a few thousand records spill and freeze many times."""
    monkeypatch.setattr(NearDedupFilter, "index_buffer", 64)
    monkeypatch.setattr(NearDedupFilter, "signature_block", 16)


@pytest.mark.parametrize("mode", ["batches", "check_only", "interleaved", "skipped", "shuffled"])
def test_near_dedup_decides_as_the_reference(small_runs, tmp_path, mode):
    records = planted_records(2500)
    filt = NearDedupFilter(spill_dir=tmp_path / "spill")
    decisions, checked = run_in_batches(filt, records, mode)
    reference = ReferenceNear(filt)
    assert decisions == [reference.check(r) for r in checked]
    assert 100 < decisions.count("near_duplicate") < len(decisions) // 2  # the planted copies are found
    assert len(filt._index._frozen) > 10 and filt.spilled_bytes() > 0  # decided across frozen runs and spills
    filt.close()


def test_near_dedup_reads_candidates_back_from_disk(small_runs, tmp_path, monkeypatch):
    reads: list[int] = []
    pread = os.pread

    def counting_pread(fd: int, size: int, offset: int) -> bytes:
        reads.append(size)
        return pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", counting_pread)
    first = rec(" ".join(WORDS[:20]))
    filt = NearDedupFilter(spill_dir=tmp_path)
    filt.prepare([Sample(first)])
    assert filt.check(first) is None
    others = [rec(" ".join(random.Random(i).choices(WORDS, k=20))) for i in range(300)]
    run_in_batches(filt, others, "batches")
    assert not reads  # nothing is read back while no record has a candidate
    again = rec(" ".join(WORDS[:20]).upper() + "!")  # the same normalised text
    assert filt.check(again) == "near_duplicate"
    row_bytes = filt.num_perm + 8
    assert 4 in reads and row_bytes in reads  # its record index from a frozen run, its signature from the file


def test_spill_dir_is_honoured_and_close_removes_the_files(small_runs, tmp_path):
    spill = tmp_path / "out" / "near-dedup"
    filt = NearDedupFilter(spill_dir=str(spill))
    assert not spill.exists()  # nothing on disk before the first spill
    records = planted_records(600)
    run_in_batches(filt, records, "batches")
    files = sorted(p.name for p in spill.iterdir())
    assert len(files) == 2 and all(name.startswith("near-dedup-") for name in files)
    assert sum(p.stat().st_size for p in spill.iterdir()) == filt.spilled_bytes() > 0
    other = NearDedupFilter(spill_dir=str(spill))  # a second instance with the same folder: its own files
    run_in_batches(other, records, "batches")
    assert len(list(spill.iterdir())) == 4
    filt.close()
    assert len(list(spill.iterdir())) == 2  # only the other instance's files are left
    other.close()
    assert not spill.exists()  # created by the filters, removed once empty
    # close() forgets: a record seen before is a first occurrence again
    seen = next(r for r in records if len(Sample(r).answer) > 60)
    assert filt.check(seen) is None and filt.check(seen) == "near_duplicate"
    filt.close()


def test_default_spill_folder_is_a_fresh_temporary_one_removed_with_the_filter(small_runs):
    filt = NearDedupFilter()
    run_in_batches(filt, planted_records(400), "batches")
    folder = os.path.dirname(filt._spill.files[0])
    assert os.path.basename(folder).startswith("postvl-near-dedup-")
    assert os.path.dirname(folder) == tempfile.gettempdir()
    del filt
    gc.collect()
    assert not os.path.exists(folder)  # the weakref.finalize safety net


def test_near_dedup_ram_grows_by_at_most_40_bytes_per_record(monkeypatch):
    monkeypatch.setattr(NearDedupFilter, "index_buffer", 4096)
    filt = NearDedupFilter(include_images=False, spill_dir=None)
    rng = random.Random(3)

    def feed(n: int) -> None:
        for _ in range(n // 256):
            batch = [Sample(rec(" ".join(rng.choices(WORDS, k=15)))) for _ in range(256)]
            filt.prepare(batch)
            for sample in batch:
                filt.check(sample)

    feed(2048)
    before = filt.state_bytes()
    feed(20480)
    filt._flush()
    # frozen band keys (4 bytes, 8 bands) and the bitmap (at most 1 byte per key), beside the hot runs (under
    # 2 * index_buffer entries of 8 bytes); the RAM block of signatures was full before
    assert filt.state_bytes() - before <= 40 * 20480 + 2 * NearDedupFilter.index_buffer * 8
    assert filt.spilled_bytes() >= (filt.num_perm + 8) * 16384  # the signatures went to disk
    filt.close()


@pytest.mark.parametrize("mode", ["batches", "check_only", "interleaved", "skipped", "shuffled"])
@pytest.mark.parametrize("include_images", [True, False])
def test_exact_dedup_decides_as_the_reference(mode, include_images):
    records = planted_records(3000, seed=5)
    filt = ExactDedupFilter(include_images=include_images)
    filt._seen = KeySet(buffer=37)  # merges into the sorted array between prepare and check, too
    decisions, checked = run_in_batches(filt, records, mode, seed=2)
    assert decisions == reference_exact(checked, include_images)
    assert decisions.count("exact_duplicate") > 200


def test_exact_dedup_rejects_a_copy_later_in_the_same_batch():
    filt = ExactDedupFilter()
    batch = [Sample(rec("A red car.")), Sample(rec("Another car.")), Sample(rec("a  RED car."))]
    filt.prepare(batch)
    assert [filt.check(s) for s in batch] == [None, None, "exact_duplicate"]


def test_normalisation_in_numpy_equals_the_regular_expression():
    rng = random.Random(7)
    alphabet = list("abcXYZ _-.,!?\t\n\x1e\x00\u3000é\u0301İΣσ123") + ["你好", "カタカナ・", "ﬁ", "\ud800", "😀", "Ⅻ"]
    texts = ["", "...", "ΟΔΟΣ ΟΔΟΣ.", "x\x00y"]
    texts += ["".join(rng.choices(alphabet, k=rng.randint(0, 40))) for _ in range(300)]
    codes, starts, lengths = _normalise(texts)
    for text, start, length in zip(texts, starts.tolist(), lengths.tolist(), strict=True):
        got = codes[start : start + length].tobytes().decode("utf-32-le", "surrogatepass")
        assert got == " ".join(_WORDS_RE.findall(text.lower())), repr(text)


def test_near_dedup_batch_signatures_equal_single_ones():
    filt = NearDedupFilter(min_chars=5)
    texts = ["Hello world, this is a test.", "图片中是一张靠窗的小木桌。", "short text here", "Ünïcödé wörds, again!"]
    codes, starts, lengths = _normalise(texts)
    batch = filt._hasher.signatures_of_codes(codes, starts, lengths)
    for text, sig in zip(texts, batch, strict=True):
        single = filt._hasher.signature(" ".join(_WORDS_RE.findall(text.lower())))
        assert (sig == single).all()


def test_band_index_reads_frozen_indices_back_and_keys_each_once(tmp_path):
    from postvl.filtering.dedup import SpillFolder

    spill = SpillFolder(tmp_path)
    index = BandIndex(buffer=50, spill=spill)
    rng = np.random.default_rng(0)
    keys = rng.choice(2**32, size=3000, replace=False).astype(np.uint32)
    for start in range(0, 3000, 100):  # batches of 100 new keys, record index = batch number
        part = np.sort(keys[start : start + 100])
        generation = index.generation
        index.add_many(part, np.full(100, start // 100, dtype=np.uint32))
        assert index.generation != generation
    assert index._frozen and index.spilled_bytes() == 4 * sum(len(run) for run in index._frozen)
    found = index.search(keys.reshape(30, 100))
    assert (found == np.arange(30)[:, None]).all()
    absent = np.setdiff1d(rng.integers(0, 2**32, 5000, dtype=np.uint32), keys)
    assert (index.search(absent) == -1).all()
    assert len(index) == len(index._sorted) == 3000
    spill.close()
    assert not list(tmp_path.iterdir())


def test_signature_store_keeps_the_last_block_in_ram_and_the_rest_on_disk(tmp_path):
    from postvl.filtering.dedup import SpillFolder

    spill = SpillFolder(tmp_path)
    store = SignatureStore(width=5, block=4, spill=spill)
    rows = np.arange(50, dtype=np.uint8).reshape(10, 5)
    store.extend(rows[:3])
    assert store.append(rows[3]) == 3
    store.extend(rows[4:])
    assert len(store) == 10 and store.spilled_bytes() == 8 * 5 and store.ram_bytes() == 4 * 5
    assert (store.rows([9, 0, 5, 7]) == rows[[9, 0, 5, 7]]).all()
    spill.close()


@pytest.mark.parametrize("batches", [[3], [2, 1], [1, 1, 1], [1, 2]])
def test_a_band_key_leads_to_the_first_kept_record_that_had_it(batches):
    """A kept, B kept (shares one band key with A only), C a near copy of B sharing only that key: C's candidate is
    A, the first record with the key, so C is kept, wherever the batch boundaries fall."""
    rng = random.Random(11)
    a = " ".join(rng.choices(WORDS, k=30))
    b = " ".join(rng.choices(WORDS, k=30))
    c = b.replace(b.split()[10], "zebra", 1)
    hasher = MinHasher()
    sigs = {name: hasher.signature(normalised(rec(text))) for name, text in zip("abc", (a, b, c))}

    def estimate(x: str, y: str) -> float:
        return ((sigs[x].astype(np.uint8) == sigs[y].astype(np.uint8)).mean() - 1 / 256) / (1 - 1 / 256)

    assert estimate("c", "b") >= 0.8 > max(estimate("c", "a"), estimate("b", "a"))
    shared = 7
    keys = {sigs[name].tobytes(): [shared, *range(10 * i + 10, 10 * i + 17)] for i, name in enumerate("abc")}

    class ControlledKeys(NearDedupFilter):
        def _band_keys(self, sigs: np.ndarray, scopes: np.ndarray) -> np.ndarray:
            return np.array([keys[sig.tobytes()] for sig in sigs], dtype=np.uint32)

    filt = ControlledKeys(min_chars=10)
    records = iter([rec(a), rec(b), rec(c)])
    decisions = []
    for size in batches:
        batch = [Sample(next(records)) for _ in range(size)]
        filt.prepare(batch)
        decisions += [filt.check(s) for s in batch]
    assert decisions == [None, None, None]
    assert filt.check(rec(c)) == "near_duplicate"  # C itself is now stored
    filt.close()
