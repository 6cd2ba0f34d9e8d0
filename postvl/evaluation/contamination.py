"""Overlap between what trained and what is evaluated: exact and near duplicates of the eval questions.

The check is the filter stage's deduplication, reused as it is (``postvl.filtering.dedup``): the same normalisation
(lower-case, punctuation dropped, CJK kept), the same 64-bit exact key and the same MinHash + LSH near-duplicate test,
on the question text (user turns) and, with ``include_images``, only between records about the same images. The
training records (SFT records and the prompts of preference pairs) are fed to one exact and one near filter first;
an eval record that either then rejects overlaps a training record or an eval record before it. A second pair of
filters that sees only the eval records tells the two apart, so every dropped record gets one reason:

- ``exact_overlap``: its question (and images) equals a training record's, after normalisation;
- ``near_overlap``: a near copy (estimated Jaccard >= ``threshold``) of a training record's question;
- ``eval_duplicate``: a copy of an earlier eval record (kept once, so that no question is counted twice; the first
  copy carries the verdict against training).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

EXACT_OVERLAP = "exact_overlap"
NEAR_OVERLAP = "near_overlap"
EVAL_DUPLICATE = "eval_duplicate"
REASONS = (EXACT_OVERLAP, NEAR_OVERLAP, EVAL_DUPLICATE)


@dataclass(frozen=True)
class OverlapConfig:
    """Arguments of the two dedup filters (as in ``configs/filters/default.yaml``), on the question text.

    Attributes:
        threshold, num_perm, bands, shingle, min_chars: ``NearDedupFilter`` arguments.
        include_images: compare only records about the same images (the filter's default).
    """

    threshold: float = 0.8
    num_perm: int = 64
    bands: int = 8
    shingle: int = 5
    min_chars: int = 50
    include_images: bool = True


@dataclass
class OverlapReport:
    """What the check found: training records seen, eval records checked, and the reason of each dropped one."""

    train_records: int = 0
    eval_records: int = 0
    dropped: dict[str, str] = field(default_factory=dict)  # eval id -> reason

    def as_dict(self) -> dict[str, Any]:
        counts = Counter(self.dropped.values())
        return {
            "train_records": self.train_records,
            "eval_records": self.eval_records,
            "dropped": len(self.dropped),
            "kept": self.eval_records - len(self.dropped),
            "reasons": {r: counts.get(r, 0) for r in REASONS},
        }


def question_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as the dedup filters read it: an SFT record as is, a preference pair as its prompt + chosen."""
    if "messages" in record and record.get("messages"):
        return dict(record)
    return {
        "id": record.get("id"),
        "messages": list(record.get("prompt") or []) + list(record.get("chosen") or []),
        "images": record.get("images") or [],
    }


def _filters(cfg: OverlapConfig) -> tuple[Any, Any]:
    from postvl.filtering.dedup import ExactDedupFilter, NearDedupFilter

    exact = ExactDedupFilter(fields=("query",), include_images=cfg.include_images)
    near = NearDedupFilter(
        threshold=cfg.threshold,
        num_perm=cfg.num_perm,
        bands=cfg.bands,
        shingle=cfg.shingle,
        min_chars=cfg.min_chars,
        fields=("query",),
        include_images=cfg.include_images,
    )
    return exact, near


def _feed(filters: tuple[Any, Any], records: Iterable[Mapping[str, Any]], batch: int = 1024) -> Iterator[str | None]:
    """Each record's verdict (``None``, ``exact_duplicate`` or ``near_duplicate``), in order, prepared in batches."""
    from postvl.filtering.base import Sample

    exact, near = filters
    pending: list[Any] = []

    def drain() -> Iterator[str | None]:
        exact.prepare(pending)
        verdicts = [exact.check(s) for s in pending]
        survivors = [s for s, v in zip(pending, verdicts, strict=True) if v is None]
        near.prepare(survivors)
        for sample, verdict in zip(pending, verdicts, strict=True):
            yield verdict if verdict is not None else near.check(sample)

    for record in records:
        pending.append(Sample(question_view(record)))
        if len(pending) >= batch:
            yield from drain()
            pending = []
    if pending:
        yield from drain()


def check_overlap(
    train: Iterable[Mapping[str, Any]], evaluated: list[Mapping[str, Any]], cfg: OverlapConfig | None = None
) -> OverlapReport:
    """The eval records to drop, each with its reason (see the module docstring).

    Args:
        train: every record that trained the models (SFT records and preference pairs), streamed once.
        evaluated: the eval records, in order.
        cfg: the dedup settings.
    """
    cfg = cfg or OverlapConfig()
    report = OverlapReport(eval_records=len(evaluated))
    both = _filters(cfg)
    alone = _filters(cfg)
    try:
        for _ in _feed(both, _counted(train, report)):
            pass  # training records only fill the state; their own duplicates are the filter stage's business
        against_all = list(_feed(both, evaluated))
        within_eval = list(_feed(alone, evaluated))
    finally:
        for f in (*both, *alone):
            f.close()
    for record, verdict, own in zip(evaluated, against_all, within_eval, strict=True):
        if own is not None:
            report.dropped[str(record.get("id"))] = EVAL_DUPLICATE
        elif verdict == "exact_duplicate":
            report.dropped[str(record.get("id"))] = EXACT_OVERLAP
        elif verdict == "near_duplicate":
            report.dropped[str(record.get("id"))] = NEAR_OVERLAP
    return report


def _counted(records: Iterable[Mapping[str, Any]], report: OverlapReport) -> Iterator[Mapping[str, Any]]:
    for record in records:
        report.train_records += 1
        yield record
