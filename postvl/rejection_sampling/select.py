"""Judge sampled answers, select the chain-of-thought answers to keep, pair right with wrong for DPO, count it all.

Per question (a record with ``answer`` and ``answer_type``) and its ``k`` samples:

1. ``judge``: a sample stopped by the token limit is ``truncated`` (never correct); the others are checked with
   ``verify`` (reasons ``mismatch``, ``no_final_answer``, ``wrong_box_count``); a correct sample then runs the
   hygiene checks (``too_long``, ``repetition_loop``, ``repetitive_ngrams``, ``repeated_lines``, ``code_switching``,
   ``missing_boxed_answer`` / ``missing_answer_line``). A sample is *usable* when it is correct and hygienic.
2. ``select_samples``: up to ``m`` usable samples, ``shortest`` first or ``diverse`` (greedy max-min Jaccard distance
   between character n-gram sets, starting from the shortest); identical texts count once.
3. ``preference_pairs``: up to ``p`` (chosen, rejected) pairs: chosen = a usable sample (kept ones first), rejected =
   an incorrect sample of the same question (wrong answers first, then missing answers, then truncated ones).

``meta.sampling`` of every output record holds the question's ``k``, ``n_correct``, ``n_hygienic`` (correct and
hygienic), ``pass_rate`` (``n_correct / k``), ``difficulty`` (``too_easy`` when every sample is correct,
``too_hard`` when none is) and ``verdicts`` (one per sample). A question without a usable sample is rejected with
``no_correct_sample`` or ``no_hygienic_sample``; with ``drop_too_easy`` an all-correct question is rejected with
``too_easy``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from postvl.chatml.render import answer_after_thinking
from postvl.generation import Sample
from postvl.rejection_sampling.verify import Verdict, VerifyConfig, verify

TRUNCATED = "truncated"
# A thinking model's sample that never closed its <think> block: it has no final answer.
UNFINISHED_THINKING = "unfinished_thinking"
SELECTIONS = ("shortest", "diverse")
# Reason codes of a rejected question.
NO_CORRECT_SAMPLE = "no_correct_sample"
NO_HYGIENIC_SAMPLE = "no_hygienic_sample"
TOO_EASY = "too_easy"
TOO_HARD = "too_hard"
INVALID_GOLD = "invalid_gold"
_REJECTED_ORDER = {"mismatch": 0, "wrong_box_count": 0, "no_final_answer": 1, TRUNCATED: 2}


@dataclass(frozen=True)
class Judged:
    """One sample with its verdict.

    Attributes:
        index: the sample's position among the question's ``k`` samples.
        sample: the generated text, token count and finish reason.
        correct: the final answer matches the gold (never for a truncated sample).
        extracted: the final answer found, as text.
        reason: ``None`` for a usable sample; else why not: ``truncated``, a verify reason, or a hygiene reason
            (then ``correct`` is still true).
    """

    index: int
    sample: Sample
    correct: bool
    extracted: str | None = None
    reason: str | None = None

    @property
    def usable(self) -> bool:
        return self.correct and self.reason is None

    def as_meta(self) -> dict[str, Any]:
        return {
            "correct": self.correct,
            "reason": self.reason,
            "extracted": self.extracted,
            "num_tokens": self.sample.num_tokens,
            "finish_reason": self.sample.finish_reason,
        }


def judge(
    samples: Sequence[Sample],
    gold: Any,
    answer_type: str,
    checker: Any,
    *,
    options: Any = None,
    verify_config: VerifyConfig | None = None,
    thinking: bool = False,
) -> list[Judged]:
    """Verify and hygiene-check each sample of one question.

    Args:
        samples: the question's samples.
        gold: the record's ``answer``.
        answer_type: the record's ``answer_type``.
        checker: a ``HygieneChecker`` (anything with ``check(text) -> reason | None``), run on correct samples.
        options: choice options (``meta.options``), when the record has them.
        verify_config: tolerances for ``verify``.
        thinking: the prompt opened a ``<think>`` block (Qwen3.5 with thinking on): the verifier reads only the final
            answer after ``</think>`` (a sample without one is ``unfinished_thinking``), while hygiene checks the
            whole text, thinking included.

    Raises:
        ValueError: the gold cannot be used for this answer type (a data error: the stage rejects the question).
    """
    judged = []
    for i, sample in enumerate(samples):
        if sample.finish_reason == "length":
            judged.append(Judged(i, sample, False, None, TRUNCATED))
            continue
        answer = answer_after_thinking(sample.text, thinking)
        if answer is None:
            judged.append(Judged(i, sample, False, None, UNFINISHED_THINKING))
            continue
        verdict: Verdict = verify(answer, gold, answer_type, options=options, config=verify_config)
        reason = verdict.reason if not verdict.correct else checker.check(sample.text)
        judged.append(Judged(i, sample, verdict.correct, verdict.extracted, reason))
    return judged


def char_ngrams(text: str, n: int = 4) -> frozenset[str]:
    """The set of character n-grams of ``text`` with whitespace collapsed (the text itself when shorter)."""
    text = " ".join(text.split())
    if len(text) <= n:
        return frozenset([text])
    return frozenset(text[i : i + n] for i in range(len(text) - n + 1))


def jaccard_distance(a: frozenset[str], b: frozenset[str]) -> float:
    union = len(a | b)
    return 1.0 - len(a & b) / union if union else 0.0


def select_samples(judged: Sequence[Judged], m: int, *, strategy: str = "shortest", ngram: int = 4) -> list[Judged]:
    """Up to ``m`` usable samples with distinct texts, in the order chosen.

    ``shortest``: fewest generated tokens first (ties: sample order). ``diverse``: the shortest first, then each time
    the sample whose minimum Jaccard distance (character ``ngram`` sets) to those already chosen is largest (ties:
    the shorter).
    """
    if strategy not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {strategy!r}")
    if m < 1:
        raise ValueError(f"m (samples kept per question) must be >= 1, got {m}")
    seen: set[str] = set()
    pool = []
    for j in sorted((j for j in judged if j.usable), key=lambda j: (j.sample.num_tokens, j.index)):
        if j.sample.text not in seen:
            seen.add(j.sample.text)
            pool.append(j)
    if strategy == "shortest" or len(pool) <= 1:
        return pool[:m]
    grams = {j.index: char_ngrams(j.sample.text, ngram) for j in pool}
    chosen = [pool.pop(0)]
    min_dist = {j.index: jaccard_distance(grams[j.index], grams[chosen[0].index]) for j in pool}
    while pool and len(chosen) < m:
        best = max(pool, key=lambda j: (min_dist[j.index], -j.sample.num_tokens, -j.index))
        pool.remove(best)
        chosen.append(best)
        for j in pool:
            min_dist[j.index] = min(min_dist[j.index], jaccard_distance(grams[j.index], grams[best.index]))
    return chosen


def preference_pairs(judged: Sequence[Judged], kept: Sequence[Judged], p: int) -> list[tuple[Judged, Judged]]:
    """Up to ``p`` (chosen, rejected) pairs; each rejected sample is used once, chosen ones cycle (kept first)."""
    if p <= 0:
        return []
    kept_ids = {j.index for j in kept}
    chosen = list(kept) + [j for j in judged if j.usable and j.index not in kept_ids]
    rejected = sorted((j for j in judged if not j.correct), key=lambda j: (_REJECTED_ORDER.get(j.reason, 1), j.index))
    seen: set[str] = set()
    distinct = []
    for j in rejected:
        if j.sample.text not in seen:
            seen.add(j.sample.text)
            distinct.append(j)
    if not chosen:
        return []
    return [(chosen[i % len(chosen)], r) for i, r in enumerate(distinct[:p])]


@dataclass
class QuestionOutcome:
    """What sampling made of one question: the kept samples, the pairs, and ``meta.sampling``."""

    judged: list[Judged]
    kept: list[Judged]
    pairs: list[tuple[Judged, Judged]]
    reason: str | None  # None when kept
    meta: dict[str, Any]


def decide(judged: list[Judged], *, m: int, p: int, strategy: str, ngram: int, drop_too_easy: bool) -> QuestionOutcome:
    """Select, pair and summarise one question's judged samples."""
    k = len(judged)
    n_correct = sum(j.correct for j in judged)
    n_usable = sum(j.usable for j in judged)
    difficulty = TOO_EASY if k and n_correct == k else TOO_HARD if n_correct == 0 else None
    kept = select_samples(judged, m, strategy=strategy, ngram=ngram)
    pairs = preference_pairs(judged, kept, p)
    reason = None
    if n_correct == 0:
        reason = NO_CORRECT_SAMPLE
    elif not kept:
        reason = NO_HYGIENIC_SAMPLE
    elif drop_too_easy and difficulty == TOO_EASY:
        reason = TOO_EASY
    if reason is not None:
        kept, pairs = [], []
    meta = {
        "k": k,
        "n_correct": n_correct,
        "n_hygienic": n_usable,
        "pass_rate": n_correct / k if k else 0.0,
        "difficulty": difficulty,
        "verdicts": [j.as_meta() for j in judged],
    }
    return QuestionOutcome(judged, kept, pairs, reason, meta)


# --------------------------------------------------------------------------------------------------------------------
# Statistics


@dataclass
class Group:
    """Per-domain or per-answer-type sums."""

    questions: int = 0
    kept: int = 0
    pass_sum: float = 0.0
    any_correct: int = 0

    def add(self, outcome: QuestionOutcome) -> None:
        self.questions += 1
        self.kept += outcome.reason is None
        self.pass_sum += outcome.meta["pass_rate"]
        self.any_correct += outcome.meta["n_correct"] > 0

    def merge(self, other: Mapping[str, Any]) -> None:
        for name in ("questions", "kept", "pass_sum", "any_correct"):
            setattr(self, name, getattr(self, name) + other[name])

    def as_dict(self) -> dict[str, Any]:
        n = self.questions
        return {
            "questions": n,
            "kept": self.kept,
            "pass_sum": self.pass_sum,
            "any_correct": self.any_correct,
            "pass@1": self.pass_sum / n if n else None,
            "pass@k": self.any_correct / n if n else None,
            "acceptance": self.kept / n if n else None,
        }


@dataclass
class SamplingStats:
    """Question-level statistics of one rank, mergeable across ranks (sums and counters only).

    ``pass@1`` is the mean fraction of correct samples per question, ``pass@k`` the fraction of questions with at
    least one correct sample, ``acceptance`` the fraction of questions kept; all over questions with a ground truth.
    """

    k: int
    questions: int = 0
    no_answer: int = 0
    kept_questions: int = 0
    cot_records: int = 0
    pairs: int = 0
    too_easy: int = 0
    too_hard: int = 0
    generated_tokens: int = 0
    samples: int = 0
    overall: Group = field(default_factory=Group)
    by_domain: dict[str, Group] = field(default_factory=dict)
    by_answer_type: dict[str, Group] = field(default_factory=dict)
    rejections: Counter = field(default_factory=Counter)
    sample_reasons: Counter = field(default_factory=Counter)
    n_correct_hist: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.n_correct_hist:
            self.n_correct_hist = [0] * (self.k + 1)

    def add(self, outcome: QuestionOutcome, *, domain: str | None, answer_type: str) -> None:
        self.questions += 1
        self.overall.add(outcome)
        self.by_domain.setdefault(domain or "(none)", Group()).add(outcome)
        self.by_answer_type.setdefault(answer_type, Group()).add(outcome)
        n_correct = outcome.meta["n_correct"]
        self.n_correct_hist[min(n_correct, self.k)] += 1
        self.too_easy += outcome.meta["difficulty"] == TOO_EASY
        self.too_hard += outcome.meta["difficulty"] == TOO_HARD
        for j in outcome.judged:
            self.samples += 1
            self.generated_tokens += j.sample.num_tokens
            self.sample_reasons["usable" if j.usable else j.reason or "unknown"] += 1
        if outcome.reason is None:
            self.kept_questions += 1
            self.cot_records += len(outcome.kept)
            self.pairs += len(outcome.pairs)
        else:
            self.rejections[outcome.reason] += 1

    def reject(self, reason: str) -> None:
        """A question rejected before sampling could judge it (``invalid_gold``...)."""
        self.rejections[reason] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "questions": self.questions,
            "no_answer": self.no_answer,
            "kept_questions": self.kept_questions,
            "cot_records": self.cot_records,
            "pairs": self.pairs,
            "too_easy": self.too_easy,
            "too_hard": self.too_hard,
            "samples": self.samples,
            "generated_tokens": self.generated_tokens,
            "overall": self.overall.as_dict(),
            "by_domain": {d: g.as_dict() for d, g in sorted(self.by_domain.items())},
            "by_answer_type": {t: g.as_dict() for t, g in sorted(self.by_answer_type.items())},
            "rejections": dict(sorted(self.rejections.items())),
            "sample_reasons": dict(sorted(self.sample_reasons.items())),
            "n_correct_hist": list(self.n_correct_hist),
        }

    @classmethod
    def merged(cls, parts: Sequence[Mapping[str, Any]], k: int) -> SamplingStats:
        """Sum the ``as_dict()`` of every rank."""
        total = cls(k=k)
        for part in parts:
            for name in ("questions", "no_answer", "kept_questions", "cot_records", "pairs", "too_easy", "too_hard"):
                setattr(total, name, getattr(total, name) + part[name])
            total.samples += part["samples"]
            total.generated_tokens += part["generated_tokens"]
            total.overall.merge(part["overall"])
            for attr in ("by_domain", "by_answer_type"):
                groups = getattr(total, attr)
                for key, values in part[attr].items():
                    groups.setdefault(key, Group()).merge(values)
            total.rejections.update(part["rejections"])
            total.sample_reasons.update(part["sample_reasons"])
            total.n_correct_hist = [a + b for a, b in zip(total.n_correct_hist, part["n_correct_hist"], strict=True)]
        return total
