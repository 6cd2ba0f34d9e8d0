"""Open-tag normalisation, as InsTag did it: rule aggregation, semantic aggregation, frequency filtering.

    from postvl.instag.normalize import TagVocabulary, normalize_tag
    normalize_tag("Object-Recognition!")               # "object recognition"
    vocab = TagVocabulary.build(counts, min_count=2)   # counts: normalised tag -> records that carry it
    vocab.apply(["object recognitions", "rare tag"])   # ["object recognition"]

Steps, in order:

1. ``normalize_tag``: lowercase (Unicode NFKC), punctuation and symbols -> spaces, whitespace collapsed.
2. Rule aggregation: tags with the same sequence of word stems (``stem_key``: "counting objects" and "count object")
   are one tag, named by its most frequent spelling. ``stem`` is a small suffix stemmer of our own (no NLTK
   dependency, and the same result on every machine); words of non-Latin scripts are kept as they are.
3. Semantic aggregation (optional): with an encoder (the embedding backend's USE), a tag joins the most frequent
   earlier tag whose embedding has a cosine similarity of at least ``merge_threshold`` with it.
4. Frequency filter: a merged tag carried by fewer than ``min_count`` records (alpha in InsTag) is dropped.

Filtering after merging lets rare spellings of a common tag count towards it instead of being dropped one by one.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from postvl.instag.embedding import Encoder

logger = logging.getLogger(__name__)

_WORD = re.compile(r"^[a-z]+$")
# suffix -> replacement, longest first within each step; applied once per step (a Porter-like, much smaller stemmer)
_STEP1 = (("sses", "ss"), ("ies", "y"), ("ss", "ss"), ("us", "us"), ("is", "is"), ("s", ""))
_STEP2 = (("ingly", ""), ("edly", ""), ("ing", ""), ("ed", ""))
_STEP3 = (
    ("izations", "ize"), ("ization", "ize"), ("isation", "ize"), ("ational", "ate"), ("fulness", "ful"),
    ("iveness", "ive"), ("ousness", "ous"), ("ations", "ate"), ("ation", "ate"), ("ators", "ate"), ("ator", "ate"),
    ("alism", "al"), ("ality", "al"), ("ivity", "ive"), ("bility", "ble"), ("ments", ""), ("ment", ""),
    ("ness", ""), ("ical", "ic"), ("ally", "al"), ("ly", ""), ("ers", ""), ("er", ""),
)  # fmt: skip
_STEP4 = (("ize", ""), ("ise", ""), ("ate", ""), ("ive", ""), ("al", ""), ("e", ""))


def normalize_tag(tag: str) -> str:
    """Lowercase, punctuation and symbols -> spaces, whitespace collapsed; ``""`` when nothing is left."""
    text = unicodedata.normalize("NFKC", str(tag)).lower()
    chars = [" " if unicodedata.category(c)[0] in "PSZC" else c for c in text]
    return " ".join("".join(chars).split())


def stem(word: str) -> str:
    """The stem of one lowercase word: plural, verb and derivational suffixes removed ("calculations" -> "calcul").

    Words shorter than four letters and words that are not plain ASCII letters are returned unchanged.
    """
    if len(word) < 4 or not _WORD.match(word):
        return word
    for step in (_STEP1, _STEP2, _STEP3, _STEP4):
        for suffix, replacement in step:
            if word.endswith(suffix) and len(word) - len(suffix) + len(replacement) >= 3:
                word = word[: len(word) - len(suffix)] + replacement
                if step is _STEP2 and word.endswith(("at", "bl", "iz")):  # "calculat(ing)" -> "calculate", as Porter
                    word += "e"
                break
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":  # "debugg" (from "debugging") -> "debug"
        word = word[:-1]
    return word


def stem_key(tag: str) -> str:
    """The stems of a normalised tag's words, joined by spaces: tags with the same key are one tag."""
    return " ".join(stem(w) for w in tag.split())


@dataclass(frozen=True)
class TagVocabulary:
    """The open tags of a dataset after aggregation and the frequency filter.

    Attributes:
        canonical: every normalised spelling seen -> the tag it is written as (kept or not).
        counts: merged tag -> number of records that carry it.
        min_count: alpha: merged tags with fewer records are dropped by ``apply``.
        merge_threshold: the cosine similarity used for semantic aggregation (``None``: not applied).
    """

    canonical: Mapping[str, str]
    counts: Mapping[str, int]
    min_count: int = 1
    merge_threshold: float | None = None
    merged: Mapping[str, str] = field(default_factory=dict)  # semantic merges: tag -> the tag it joined

    @property
    def kept(self) -> list[str]:
        """Merged tags that pass the frequency filter, most frequent first."""
        return [t for t, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= self.min_count]

    @classmethod
    def build(
        cls,
        counts: Mapping[str, int],
        *,
        min_count: int = 1,
        encoder: Encoder | None = None,
        merge_threshold: float = 0.9,
    ) -> TagVocabulary:
        """Aggregate normalised tags and count the records of each merged tag.

        Args:
            counts: normalised tag (``normalize_tag``) -> number of records that carry it.
            min_count: alpha of the frequency filter (>= 1).
            encoder: an ``Encoder`` for semantic aggregation; ``None`` skips it.
            merge_threshold: cosine similarity at or above which two tags are merged (with ``encoder``).

        Raises:
            ValueError: ``min_count`` < 1 or ``merge_threshold`` outside (0, 1].
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if not 0 < merge_threshold <= 1:
            raise ValueError(f"merge_threshold must be in (0, 1], got {merge_threshold}")
        # 1. rule aggregation: one group per stem key, named by its most frequent (then shortest) spelling
        groups: dict[str, dict[str, int]] = {}
        for tag, n in counts.items():
            if tag:
                groups.setdefault(stem_key(tag), {})[tag] = n
        canonical: dict[str, str] = {}
        merged_counts: dict[str, int] = {}
        for spellings in groups.values():
            name = min(spellings, key=lambda t: (-spellings[t], len(t), t))
            for tag in spellings:
                canonical[tag] = name
            merged_counts[name] = sum(spellings.values())
        # 2. semantic aggregation: into the most frequent earlier tag that is similar enough
        merged: dict[str, str] = {}
        if encoder is not None and len(merged_counts) > 1:
            merged = _semantic_merges(merged_counts, encoder, merge_threshold)
            for tag, target in merged.items():
                merged_counts[target] += merged_counts.pop(tag)
            canonical = {tag: merged.get(name, name) for tag, name in canonical.items()}
        return cls(
            canonical=canonical,
            counts=merged_counts,
            min_count=min_count,
            merge_threshold=merge_threshold if encoder is not None else None,
            merged=merged,
        )

    def map(self, tag: str) -> str | None:
        """The merged tag of one raw tag, or ``None`` when it is dropped (unseen, empty, or rarer than alpha)."""
        normal = normalize_tag(tag)
        name = self.canonical.get(normal)
        if name is None or self.counts.get(name, 0) < self.min_count:
            return None
        return name

    def apply(self, tags: Iterable[str]) -> list[str]:
        """Merged, kept tags of a record, in first-seen order without duplicates."""
        out: list[str] = []
        for tag in tags:
            name = self.map(tag)
            if name is not None and name not in out:
                out.append(name)
        return out

    def as_dict(self, top: int | None = None) -> dict[str, Any]:
        """A JSON summary: settings, sizes, the kept tags with their counts, the aliases of each merged tag."""
        aliases: dict[str, list[str]] = {}
        for tag, name in sorted(self.canonical.items()):
            if tag != name:
                aliases.setdefault(name, []).append(tag)
        kept = self.kept
        return {
            "min_count": self.min_count,
            "merge_threshold": self.merge_threshold,
            "spellings": len(self.canonical),
            "merged_tags": len(self.counts),
            "kept_tags": len(kept),
            "tags": {t: self.counts[t] for t in (kept[:top] if top else kept)},
            "aliases": {t: aliases[t] for t in (kept[:top] if top else kept) if t in aliases},
            "semantic_merges": dict(sorted(self.merged.items())),
        }


def _semantic_merges(counts: Mapping[str, int], encoder: Encoder, threshold: float) -> dict[str, str]:
    """tag -> the tag it joins: each tag, most frequent first, joins the most similar kept tag at >= ``threshold``."""
    import numpy as np

    order: Sequence[str] = sorted(counts, key=lambda t: (-counts[t], len(t), t))
    emb = encoder.encode(list(order))
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    heads: list[int] = []  # rows of tags that stay tags of their own
    merges: dict[str, str] = {}
    for i, tag in enumerate(order):
        if heads:
            sims = emb[heads] @ emb[i]
            best = int(sims.argmax())
            if sims[best] >= threshold:
                merges[tag] = order[heads[best]]
                continue
        heads.append(i)
    if merges:
        logger.info("semantic aggregation merged %d of %d tags (threshold %.2f)", len(merges), len(order), threshold)
    return merges
