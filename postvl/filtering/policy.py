"""Per-domain filter policy: which rule filters, with which thresholds, apply to a record of each domain.

A policy file (``configs/filters/default.yaml``) has two keys for the rules (a third, ``scores``, holds the model
scores' thresholds and is read by ``postvl.filtering.scoring``)::

    defaults:                    # every record; untagged records get exactly these
      length: {min_chars: 1}     # filter name -> constructor arguments
      char_repetition: {}        # {} = the filter with its own defaults
    domains:
      grounding:                 # one of DOMAINS
        filters:                 # merged over `defaults`, argument by argument
          grounding: {}          # a filter the defaults do not have
          mid_sentence: null     # null switches an inherited filter off
        subcategories:
          box_grounding:         # merged over the domain's filters the same way
            grounding: {require: true}

Rules resolve defaults -> domain (``meta["domain"]``) -> subcategory (``meta["subcategory"]``). Filter names map to
classes through ``FILTERS``; unknown names, arguments and keys fail when the policy is built, with a "did you mean"
hint, and every filter of every rule set is built then, so a bad threshold fails before the first record. Stateful
filters (dedup) run after all others, and rule sets whose dedup arguments agree share one instance, so duplicates
are found across domains.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from postvl.filtering.base import Filter, Sample
from postvl.filtering.content import CodeSwitchingFilter, HarmfulFilter
from postvl.filtering.dedup import ExactDedupFilter, NearDedupFilter
from postvl.filtering.length import LengthFilter, SubstanceFilter
from postvl.filtering.malformed import CodeSyntaxFilter, GroundingFilter, HtmlFilter
from postvl.filtering.relevance import RelevanceFilter
from postvl.filtering.repetition import CharRepetitionFilter, LineRepetitionFilter, NgramRepetitionFilter
from postvl.filtering.truncation import FinishReasonFilter, MidSentenceFilter, UnbalancedFilter
from postvl.records import Counts, check_conversation

logger = logging.getLogger(__name__)

# The one map from YAML names to filter classes.
FILTERS: dict[str, type[Filter]] = {
    "length": LengthFilter,
    "substance": SubstanceFilter,
    "finish_reason": FinishReasonFilter,
    "char_repetition": CharRepetitionFilter,
    "line_repetition": LineRepetitionFilter,
    "ngram_repetition": NgramRepetitionFilter,
    "unbalanced": UnbalancedFilter,
    "mid_sentence": MidSentenceFilter,
    "grounding": GroundingFilter,
    "html": HtmlFilter,
    "code_syntax": CodeSyntaxFilter,
    "relevance": RelevanceFilter,
    "harmful": HarmfulFilter,
    "code_switching": CodeSwitchingFilter,
    "exact_dedup": ExactDedupFilter,
    "near_dedup": NearDedupFilter,
}

# The eight domains of the Qwen2.5-VL report's taxonomy.
DOMAINS = ("perception", "document", "grounding", "math", "coding", "planning", "video", "language")

UNTAGGED = "untagged"
"""Per-domain counts key for records without ``meta["domain"]``."""

Route = tuple[list[Filter], list[Filter], list[Filter]]
"""A rule set split for running: plain stateless filters, batched stateless filters, stateful filters."""

FilterParams = dict[str, Any] | None
"""A filter's constructor arguments; ``None`` switches an inherited filter off."""


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def filter_class(name: str) -> type[Filter]:
    """The filter class registered under ``name``.

    Raises:
        KeyError: for an unknown name, with the closest known name and the list of known ones.
    """
    try:
        return FILTERS[name]
    except KeyError:
        raise KeyError(
            f"unknown filter {name!r}{_did_you_mean(name, FILTERS)}; known filters: {', '.join(sorted(FILTERS))}"
        ) from None


@dataclass(frozen=True)
class DomainRules:
    """A domain's filters (merged over the defaults) and its subcategories' (merged over the domain's)."""

    filters: dict[str, FilterParams] = field(default_factory=dict)
    subcategories: dict[str, dict[str, FilterParams]] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyConfig:
    """A parsed policy file. Build with ``from_yaml`` / ``from_dict``, which check every name and argument."""

    defaults: dict[str, FilterParams] = field(default_factory=dict)
    domains: dict[str, DomainRules] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # from_dict has checked all this already; a config built directly in Python gets the same checks.
        errors: list[str] = []
        _filter_table(self.defaults, "defaults", errors, allow_null=False)
        for domain, rules in self.domains.items():
            if domain not in DOMAINS:
                errors.append(f"domains.{domain}: unknown domain{_did_you_mean(str(domain), DOMAINS)}")
                continue
            _filter_table(rules.filters, f"domains.{domain}.filters", errors)
            for sub, table in rules.subcategories.items():
                _filter_table(table, f"domains.{domain}.subcategories.{sub}", errors)
        if errors:
            raise ValueError("invalid filter policy:\n  " + "\n  ".join(errors))

    @classmethod
    def from_yaml(cls, path: str | Path) -> PolicyConfig:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyConfig:
        """Parse and check a policy mapping; all problems are reported together in one ``ValueError``."""
        errors: list[str] = []
        if not isinstance(data, Mapping):
            raise ValueError(f"a filter policy must be a mapping, got {type(data).__name__}")
        # `scores` (model-based score thresholds) belongs to the filter stage: postvl.filtering.scoring reads it.
        _unknown_keys(data, ("defaults", "domains", "scores"), "top level", errors)
        defaults = _filter_table(data.get("defaults") or {}, "defaults", errors, allow_null=False)
        domains: dict[str, DomainRules] = {}
        raw_domains = data.get("domains") or {}
        if not isinstance(raw_domains, Mapping):
            errors.append(f"domains: expected a mapping of domain -> rules, got {type(raw_domains).__name__}")
            raw_domains = {}
        for domain, raw in raw_domains.items():
            where = f"domains.{domain}"
            if domain not in DOMAINS:
                errors.append(f"{where}: unknown domain{_did_you_mean(str(domain), DOMAINS)}; domains: {DOMAINS}")
                continue
            raw = raw or {}
            if not isinstance(raw, Mapping):
                errors.append(f"{where}: expected a mapping with `filters` / `subcategories`, got {raw!r}")
                continue
            _unknown_keys(raw, ("filters", "subcategories"), where, errors)
            subs = {}
            raw_subs = raw.get("subcategories") or {}
            if not isinstance(raw_subs, Mapping):
                errors.append(f"{where}.subcategories: expected a mapping, got {type(raw_subs).__name__}")
                raw_subs = {}
            for sub, table in raw_subs.items():
                subs[str(sub)] = _filter_table(table or {}, f"{where}.subcategories.{sub}", errors)
            domains[domain] = DomainRules(_filter_table(raw.get("filters") or {}, f"{where}.filters", errors), subs)
        if errors:
            raise ValueError("invalid filter policy:\n  " + "\n  ".join(errors))
        return cls(defaults=defaults, domains=domains)

    def rule_sets(self) -> dict[tuple[str | None, str | None], dict[str, dict[str, Any]]]:
        """Resolved filters per ``(domain, subcategory)``: ``(None, None)`` is the defaults."""
        resolved = {(None, None): _merge({}, self.defaults)}
        for domain, rules in self.domains.items():
            base = _merge(resolved[(None, None)], rules.filters)
            resolved[(domain, None)] = base
            for sub, table in rules.subcategories.items():
                resolved[(domain, sub)] = _merge(base, table)
        return resolved


def _unknown_keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str, errors: list[str]) -> None:
    for key in data:
        if key not in allowed:
            errors.append(f"{where}: unknown key {key!r}{_did_you_mean(str(key), allowed)}; allowed: {list(allowed)}")


def _filter_table(table: Any, where: str, errors: list[str], allow_null: bool = True) -> dict[str, FilterParams]:
    """Check a ``{filter name: params}`` mapping: known names, mapping-or-null params, known argument names."""
    if not isinstance(table, Mapping):
        errors.append(f"{where}: expected a mapping of filter name -> arguments, got {type(table).__name__}")
        return {}
    out: dict[str, FilterParams] = {}
    for name, params in table.items():
        if name not in FILTERS:
            errors.append(f"{where}: unknown filter {name!r}{_did_you_mean(str(name), FILTERS)}")
            continue
        if params is None:
            if not allow_null:
                errors.append(f"{where}.{name}: null switches an inherited filter off; leave it out of defaults")
            out[name] = None
            continue
        if not isinstance(params, Mapping):
            errors.append(
                f"{where}.{name}: arguments must be a mapping ({{}} for the defaults) or null, got {params!r}"
            )
            continue
        accepted = [p for p in inspect.signature(FILTERS[name]).parameters if p != "self"]
        for arg in params:
            if arg not in accepted:
                errors.append(f"{where}.{name}: unknown argument {arg!r}{_did_you_mean(str(arg), accepted)}")
        out[name] = dict(params)
    return out


def _merge(base: Mapping[str, dict[str, Any]], table: Mapping[str, FilterParams]) -> dict[str, dict[str, Any]]:
    merged = {name: dict(params) for name, params in base.items()}
    for name, params in table.items():
        if params is None:
            merged.pop(name, None)
        else:
            merged[name] = {**merged.get(name, {}), **params}
    return merged


class Policy:
    """Routes each record to its domain's filters and returns the first reason to reject it.

    Dedup filters remember every record that reached them: build a new ``Policy`` for each run over a dataset.

    Args:
        config: the parsed policy.
        extra_params: ``{filter name: {argument: value}}`` added to every instance of a filter, for arguments that
            a YAML file cannot hold (``relevance.embed``, ``length.count_tokens``).

    Raises:
        ValueError: when a filter rejects its arguments; every rule set's problems are reported together.
    """

    def __init__(self, config: PolicyConfig, extra_params: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.config = config
        extra = {name: dict(params) for name, params in (extra_params or {}).items()}
        for name in extra:
            filter_class(name)
        instances: dict[tuple[str, str], Filter] = {}
        errors: list[str] = []
        self._rules: dict[tuple[str | None, str | None], list[Filter]] = {}
        for key, table in config.rule_sets().items():
            built: list[Filter] = []
            for name, params in table.items():
                cache_key = (name, json.dumps(params, sort_keys=True, default=repr))
                if cache_key not in instances:
                    try:
                        instances[cache_key] = FILTERS[name](**params, **extra.get(name, {}))
                    except (TypeError, ValueError) as err:
                        errors.append(f"{_where(key)}: {name}: {err}")
                        continue
                built.append(instances[cache_key])
            # Stateful filters last (stable order otherwise), so that only records that pass everything else are
            # remembered as "first occurrences"; batched filters (an embedding model) just before them, so that they
            # judge only what the cheap rules kept.
            self._rules[key] = sorted(built, key=lambda f: (f.stateful, f.batched))
        # (domain, subcategory) as found in meta -> (plain stateless, batched stateless, stateful filters): routing is
        # a dict lookup
        self._routes: dict[tuple[Any, Any], Route] = {}
        self._instances = list(instances.values())
        if errors:
            raise ValueError("invalid filter policy:\n  " + "\n  ".join(errors))
        logger.debug("filter policy: %d rule sets, %d filter instances", len(self._rules), len(instances))

    @classmethod
    def from_yaml(cls, path: str | Path, extra_params: Mapping[str, Mapping[str, Any]] | None = None) -> Policy:
        return cls(PolicyConfig.from_yaml(path), extra_params)

    def close(self) -> None:
        """Close every filter (near dedup removes its spill files); the policy is not used after this."""
        for filt in self._instances:
            filt.close()

    def __enter__(self) -> Policy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def filters_for(self, domain: str | None, subcategory: str | None = None) -> list[Filter]:
        """The filters of a domain / subcategory, falling back to the domain's, then to the defaults."""
        rules = self._rules
        if (domain, subcategory) in rules:
            return rules[(domain, subcategory)]
        if (domain, None) in rules:
            return rules[(domain, None)]
        return rules[(None, None)]

    def for_record(self, record: Mapping[str, Any] | Sample) -> list[Filter]:
        """The filters that apply to a record, by its ``meta["domain"]`` and ``meta["subcategory"]``."""
        plain, batched, stateful = self._route(Sample.of(record).meta)
        return [*plain, *batched, *stateful]  # the rule set's order

    def _route(self, meta: dict[str, Any]) -> Route:
        """``for_record`` split into plain stateless, batched and stateful filters, remembered per (domain,
        subcategory)."""
        key = (meta.get("domain"), meta.get("subcategory"))
        try:
            return self._routes[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable meta value: routed like any other non-string, not remembered
            key = None
        filters = self.filters_for(_str_or_none(key[0] if key else None), _str_or_none(key[1] if key else None))
        route = (
            [f for f in filters if not f.stateful and not f.batched],
            [f for f in filters if f.batched and not f.stateful],
            [f for f in filters if f.stateful],
        )
        if key is not None and len(self._routes) < 4096:  # distinct tags are few; a flood of odd values is not kept
            self._routes[key] = route
        return route

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        """``None`` to keep the record, else the reason code of the first filter that rejects it.

        A record that breaks the record contract is rejected with the contract's reason code
        (``records.check_conversation``), or ``malformed_record`` / ``malformed_meta``, never raised.
        """
        sample = Sample.of(record)
        reason = self.check_stateless(sample)
        if reason is None:
            reason = self.check_stateful(sample)
        return reason

    def check_stateless(self, sample: Sample) -> str | None:
        """What ``check`` decides before the stateful (dedup) filters: the contract checks, then each stateless
        filter of the record's domain. Stateful filters come last in every rule set, so this is a prefix of it."""
        reason = self._check_plain(sample)
        if reason is None:
            for filt in self._route(sample.meta)[1]:
                reason = filt.check(sample)
                if reason is not None:
                    return reason
        return reason

    def check_stateless_batch(self, samples: Sequence[Sample]) -> list[str | None]:
        """``check_stateless`` of each sample, with every batched filter prepared once on the records that the
        plain filters kept (one embedding call for a batch instead of one per record); the same decisions."""
        reasons = [self._check_plain(sample) for sample in samples]
        survivors = [s for s, reason in zip(samples, reasons, strict=True) if reason is None]
        routed: dict[int, tuple[Filter, list[Sample]]] = {}
        for sample in survivors:
            for filt in self._route(sample.meta)[1]:
                routed.setdefault(id(filt), (filt, []))[1].append(sample)
        if not routed:
            return reasons
        for filt, batch in routed.values():
            filt.prepare(batch)
        for i, sample in enumerate(samples):
            if reasons[i] is None:
                for filt in self._route(sample.meta)[1]:
                    reasons[i] = filt.check(sample)
                    if reasons[i] is not None:
                        break
        return reasons

    def _check_plain(self, sample: Sample) -> str | None:
        """The contract checks, then the record's stateless filters that are not batched."""
        if not isinstance(sample.record, Mapping):
            return "malformed_record"
        reason = check_conversation(sample.record.get("messages"))
        if reason is not None:
            return reason
        try:
            meta = sample.meta
        except (TypeError, ValueError):
            return "malformed_meta"
        if not isinstance(meta, dict):
            return "malformed_meta"
        for filt in self._route(meta)[0]:
            reason = filt.check(sample)
            if reason is not None:
                return reason
        return None

    def check_stateful(self, sample: Sample) -> str | None:
        """The rest of ``check``: the record's stateful filters, for a record that every stateless filter kept."""
        for filt in self._route(sample.meta)[2]:
            reason = filt.check(sample)
            if reason is not None:
                return reason
        return None

    def prepare_stateful(self, samples: Iterable[Sample]) -> None:
        """``Filter.prepare`` of each stateful filter on the records routed to it (records kept by the stateless
        filters, about to go through ``check_stateful`` in this order)."""
        routed: dict[int, tuple[Filter, list[Sample]]] = {}
        for sample in samples:
            for filt in self._route(sample.meta)[2]:
                routed.setdefault(id(filt), (filt, []))[1].append(sample)
        for filt, batch in routed.values():
            filt.prepare(batch)


def _where(key: tuple[str | None, str | None]) -> str:
    domain, sub = key
    if domain is None:
        return "defaults"
    return f"domains.{domain}" + (f".subcategories.{sub}" if sub is not None else "")


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class RuleRunner:
    """Runs a policy over records in order and counts what it decides.

    The runner owns iteration and counting; writing kept and rejected records is the caller's (the stage's) job.
    ``counts`` are the totals and ``domain_counts`` the same per ``meta["domain"]`` (``UNTAGGED`` when absent), so
    ``counts.total == counts.kept + counts.rejected`` and the per-domain totals add up to ``counts.total``.

    Args:
        policy: the policy to apply.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.counts = Counts()
        self.domain_counts: dict[str, Counts] = {}

    def run(
        self, records: Iterable[Mapping[str, Any]], batch_size: int = 256
    ) -> Iterator[tuple[Mapping[str, Any], str | None]]:
        """Yield ``(record, reason)`` for every record, ``reason`` being ``None`` for a kept record.

        Records are taken ``batch_size`` at a time: the stateless filters judge the batch, the stateful filters
        prepare the survivors together (near dedup hashes them in one pass), then the survivors go through the
        stateful filters one by one in input order, so the decisions are those of ``Policy.check`` on each record.
        """
        policy = self.policy
        for batch in _batches(records, batch_size):
            samples = [Sample(record) for record in batch]
            reasons = policy.check_stateless_batch(samples)
            policy.prepare_stateful([s for s, reason in zip(samples, reasons, strict=True) if reason is None])
            for sample, reason in zip(samples, reasons, strict=True):
                if reason is None:
                    reason = policy.check_stateful(sample)
                self._count(sample, reason)
                yield sample.record, reason

    def _count(self, sample: Sample, reason: str | None) -> None:
        domain = self._domain(sample)
        per_domain = self.domain_counts.get(domain)
        if per_domain is None:
            per_domain = self.domain_counts[domain] = Counts()
        if reason is None:
            self.counts.keep()
            per_domain.keep()
        else:
            self.counts.reject(reason)
            per_domain.reject(reason)

    @staticmethod
    def _domain(sample: Sample) -> str:
        if not isinstance(sample.record, Mapping):
            return UNTAGGED
        try:
            meta = sample.meta
        except (TypeError, ValueError):
            return UNTAGGED
        domain = meta.get("domain") if isinstance(meta, dict) else None
        return domain if isinstance(domain, str) and domain else UNTAGGED

    def stats(self) -> dict[str, Any]:
        """``{"total", "kept", "rejected", "reasons", "domains": {domain: same}}`` for ``stats.json``."""
        return {
            **self.counts.as_dict(),
            "domains": {domain: c.as_dict() for domain, c in sorted(self.domain_counts.items())},
        }


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
