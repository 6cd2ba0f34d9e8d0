"""Accuracy of judged samples, overall and by domain, subcategory and answer type.

Each evaluated question holds ``k`` judged samples of one model. Per group of questions:

- ``accuracy``: the share of correct samples, averaged over questions (the unbiased estimate of pass@1 from ``k``
  samples; with ``k = 1`` and temperature 0 it is greedy accuracy);
- ``pass@k``: the share of questions with at least one correct sample;
- ``mean_tokens``: generated tokens per sample;
- ``hygiene_fail``: the share of samples that fail a CoT hygiene check (repetition, length, language mixing, the
  final-answer form the prompt asked for), right or wrong;
- ``truncated``: the share of samples cut by the token limit (never correct);
- ``no_final_answer``: the share of samples in which the verifier found no final answer (for a thinking prompt, a
  sample whose ``<think>`` block never closes has none either);
- ``unfinished_thinking``: the share of samples of a thinking prompt whose ``<think>`` block never closes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GROUPS = ("answer_type", "domain", "subcategory")
UNTAGGED = "untagged"


@dataclass(frozen=True)
class JudgedSample:
    """One sample of one question: its verdict, the hygiene check's reason, its length and why it stopped."""

    text: str
    correct: bool
    extracted: str | None
    reason: str | None  # verify's reason, or ``truncated``
    hygiene: str | None
    num_tokens: int
    finish_reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "correct": self.correct,
            "extracted": self.extracted,
            "reason": self.reason,
            "hygiene": self.hygiene,
            "num_tokens": self.num_tokens,
            "finish_reason": self.finish_reason,
        }


@dataclass(frozen=True)
class QuestionResult:
    """One question's samples under one model, with the keys it is grouped by."""

    id: str
    answer_type: str
    domain: str
    subcategory: str
    samples: tuple[JudgedSample, ...]

    @property
    def n_correct(self) -> int:
        return sum(s.correct for s in self.samples)


def group_keys(record: Mapping[str, Any]) -> tuple[str, str]:
    """``(domain, subcategory)`` of a record: the tagger's, else the ones a synthetic record was made with."""
    meta = record.get("meta") or {}
    domain = meta.get("domain") or meta.get("expected_domain") or UNTAGGED
    subcategory = meta.get("subcategory") or meta.get("expected_subcategory") or UNTAGGED
    return str(domain), f"{domain}/{subcategory}"


def summarise(results: Sequence[QuestionResult]) -> dict[str, Any]:
    """The metrics of the module docstring for a group of questions (``None`` where there is no question)."""
    samples = [s for r in results for s in r.samples]
    n = len(samples)

    def share(flag: Iterable[bool]) -> float | None:
        return sum(flag) / n if n else None

    return {
        "questions": len(results),
        "samples": n,
        "accuracy": sum(r.n_correct / len(r.samples) for r in results) / len(results) if results else None,
        "pass@k": sum(r.n_correct > 0 for r in results) / len(results) if results else None,
        "mean_tokens": sum(s.num_tokens for s in samples) / n if n else None,
        "hygiene_fail": share(s.hygiene is not None for s in samples),
        "truncated": share(s.finish_reason == "length" for s in samples),
        "no_final_answer": share(s.reason in ("no_final_answer", "unfinished_thinking") for s in samples),
        "unfinished_thinking": share(s.reason == "unfinished_thinking" for s in samples),
    }


def model_metrics(results: Sequence[QuestionResult]) -> dict[str, Any]:
    """``overall`` and ``by_<group>`` (sorted by name) for one model's results."""
    out: dict[str, Any] = {"overall": summarise(results)}
    for group in GROUPS:
        buckets: dict[str, list[QuestionResult]] = {}
        for r in results:
            buckets.setdefault(getattr(r, group), []).append(r)
        out[f"by_{group}"] = {name: summarise(buckets[name]) for name in sorted(buckets)}
    return out
