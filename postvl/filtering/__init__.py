"""Domain-tailored filtering: rule filters, then reward-model scores, with a per-domain policy.

Rule filters are small classes with one decision, ``check(record) -> None | "reason_code"``; ``Policy`` picks the
filters and thresholds for each record's domain / subcategory from ``configs/filters/*.yaml``; ``RuleRunner`` runs
a policy over records and counts the outcome.

    from postvl.filtering import Policy, RuleRunner
    runner = RuleRunner(Policy.from_yaml("configs/filters/default.yaml"))
    for record, reason in runner.run(records):
        ...
    runner.stats()
"""

from postvl.filtering.base import Filter, Sample
from postvl.filtering.content import CodeSwitchingFilter, HarmfulFilter
from postvl.filtering.dedup import ExactDedupFilter, MinHasher, NearDedupFilter
from postvl.filtering.length import LengthFilter, SubstanceFilter
from postvl.filtering.malformed import IMAGE_SIZES_KEY, CodeSyntaxFilter, GroundingFilter, HtmlFilter
from postvl.filtering.policy import DOMAINS, FILTERS, DomainRules, Policy, PolicyConfig, RuleRunner, filter_class
from postvl.filtering.relevance import RelevanceFilter, lexical_similarity
from postvl.filtering.repetition import CharRepetitionFilter, LineRepetitionFilter, NgramRepetitionFilter
from postvl.filtering.truncation import FinishReasonFilter, MidSentenceFilter, UnbalancedFilter

__all__ = [
    "DOMAINS",
    "FILTERS",
    "IMAGE_SIZES_KEY",
    "CharRepetitionFilter",
    "CodeSwitchingFilter",
    "CodeSyntaxFilter",
    "DomainRules",
    "ExactDedupFilter",
    "Filter",
    "FinishReasonFilter",
    "GroundingFilter",
    "HarmfulFilter",
    "HtmlFilter",
    "LengthFilter",
    "LineRepetitionFilter",
    "MidSentenceFilter",
    "MinHasher",
    "NearDedupFilter",
    "NgramRepetitionFilter",
    "Policy",
    "PolicyConfig",
    "RelevanceFilter",
    "RuleRunner",
    "Sample",
    "SubstanceFilter",
    "UnbalancedFilter",
    "filter_class",
    "lexical_similarity",
]
