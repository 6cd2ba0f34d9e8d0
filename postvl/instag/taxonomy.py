"""The domain taxonomy: typed dataclasses and a loader that validates any taxonomy YAML.

    from postvl.instag.taxonomy import load_taxonomy
    taxonomy = load_taxonomy("configs/taxonomy.yaml")  # or load_taxonomy() for the default file

The schema is documented at the top of ``configs/taxonomy.yaml``. Loading collects every problem of a file (unknown
keys with a "did you mean", missing keys, wrong types, duplicate ids, unknown evidence signals) and raises them
together in one ``TaxonomyError``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from postvl.instag.features import SIGNALS

DEFAULT_TAXONOMY_PATH = Path(__file__).resolve().parents[2] / "configs" / "taxonomy.yaml"
SUPPORTED_VERSIONS = (1,)

_TOP_KEYS = {"version": True, "domains": True}  # key -> required
_DOMAIN_KEYS = {"id": True, "description": True, "description_zh": False, "examples": False, "subcategories": True}
_SUB_KEYS = {"id": True, "description": True, "description_zh": False, "examples": True, "evidence": False}


class TaxonomyError(ValueError):
    """A taxonomy file that does not follow the schema; the message lists every problem found."""


@dataclass(frozen=True)
class Subcategory:
    """A fine-grained category inside a domain.

    Attributes:
        id: snake_case id, unique over the whole taxonomy.
        domain: id of the domain it belongs to.
        description: what belongs here (English).
        description_zh: the same in Chinese (optional).
        examples: example questions (any language) the embedding classifier compares records with.
        evidence: structural signal name -> weight added to this subcategory's score when the signal is present.
    """

    id: str
    domain: str
    description: str
    description_zh: str = ""
    examples: tuple[str, ...] = ()
    evidence: dict[str, float] = field(default_factory=dict)

    def texts(self) -> list[str]:
        """Descriptions and examples: the texts that stand for this subcategory."""
        return [t for t in (self.description, self.description_zh, *self.examples) if t]


@dataclass(frozen=True)
class Domain:
    """A primary domain and its subcategories."""

    id: str
    description: str
    subcategories: tuple[Subcategory, ...]
    description_zh: str = ""
    examples: tuple[str, ...] = ()

    def texts(self) -> list[str]:
        return [t for t in (self.description, self.description_zh, *self.examples) if t]


@dataclass(frozen=True)
class Taxonomy:
    """Domains -> subcategories, in file order.

    Attributes:
        domains: the primary domains.
        version: schema version of the file.
        source: where it was loaded from ("" when built in code).
    """

    domains: tuple[Domain, ...]
    version: int = 1
    source: str = ""

    @property
    def subcategories(self) -> tuple[Subcategory, ...]:
        return tuple(s for d in self.domains for s in d.subcategories)

    @property
    def domain_ids(self) -> tuple[str, ...]:
        return tuple(d.id for d in self.domains)

    @property
    def subcategory_ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.subcategories)

    def domain_of(self, subcategory_id: str) -> str:
        """The domain id of a subcategory id; raises ``KeyError`` naming the close matches."""
        for sub in self.subcategories:
            if sub.id == subcategory_id:
                return sub.domain
        raise KeyError(f"unknown subcategory {subcategory_id!r}{_did_you_mean(subcategory_id, self.subcategory_ids)}")

    def fingerprint(self) -> str:
        """A short hash of the content (not the path): a cache key for anything computed from the taxonomy."""
        payload = json.dumps([asdict(d) for d in self.domains], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(f"{self.version}:{payload}".encode()).hexdigest()[:16]

    def summary(self) -> str:
        lines = [f"{len(self.domains)} domains, {len(self.subcategories)} subcategories"]
        lines += [f"  {d.id}: {', '.join(s.id for s in d.subcategories)}" for d in self.domains]
        return "\n".join(lines)


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load and validate a taxonomy YAML file.

    Args:
        path: the file; ``None`` loads the default ``configs/taxonomy.yaml`` of the repository.

    Returns:
        The validated ``Taxonomy``.

    Raises:
        FileNotFoundError: the file does not exist.
        TaxonomyError: the file is not YAML or does not follow the schema (every problem is listed).
    """
    import yaml

    path = Path(path) if path is not None else DEFAULT_TAXONOMY_PATH
    if not path.is_file():
        hint = (
            " (the default lives in the repository's configs/; pass the path of your copy)"
            if path == (DEFAULT_TAXONOMY_PATH)
            else ""
        )
        raise FileNotFoundError(f"taxonomy file not found: {path}{hint}")
    with path.open(encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise TaxonomyError(f"{path}: not valid YAML: {e}") from e
    return taxonomy_from_dict(data, source=str(path))


def taxonomy_from_dict(data: Any, source: str = "<dict>") -> Taxonomy:
    """Validate a parsed taxonomy mapping and build the ``Taxonomy``; see ``load_taxonomy``."""
    errors: list[str] = []
    if not isinstance(data, dict):
        raise TaxonomyError(
            f"{source}: expected a mapping with keys 'version' and 'domains', got {type(data).__name__}"
        )
    _check_keys(data, _TOP_KEYS, "top level", errors)
    version = data.get("version", 1)
    if version not in SUPPORTED_VERSIONS:
        errors.append(f"top level: version {version!r} is not supported (supported: {SUPPORTED_VERSIONS})")
    raw_domains = data.get("domains")
    if not isinstance(raw_domains, list) or not raw_domains:
        errors.append("top level: 'domains' must be a non-empty list")
        raw_domains = []

    seen: dict[str, str] = {}  # id -> where it was first defined
    domains: list[Domain] = []
    for i, raw in enumerate(raw_domains):
        where = f"domains[{i}]"
        if not isinstance(raw, dict):
            errors.append(f"{where}: expected a mapping, got {type(raw).__name__}")
            continue
        domain_id = _check_id(raw.get("id"), where, seen, errors)
        where = f"domain {domain_id!r}" if domain_id else where
        _check_keys(raw, _DOMAIN_KEYS, where, errors)
        raw_subs = raw.get("subcategories")
        if not isinstance(raw_subs, list) or not raw_subs:
            errors.append(f"{where}: 'subcategories' must be a non-empty list")
            raw_subs = []
        subs: list[Subcategory] = []
        for j, raw_sub in enumerate(raw_subs):
            sub_where = f"{where}.subcategories[{j}]"
            if not isinstance(raw_sub, dict):
                errors.append(f"{sub_where}: expected a mapping, got {type(raw_sub).__name__}")
                continue
            sub_id = _check_id(raw_sub.get("id"), sub_where, seen, errors)
            sub_where = f"subcategory {sub_id!r}" if sub_id else sub_where
            _check_keys(raw_sub, _SUB_KEYS, sub_where, errors)
            examples = _check_strings(raw_sub.get("examples"), f"{sub_where}.examples", errors, required=True)
            subs.append(
                Subcategory(
                    id=sub_id or "",
                    domain=domain_id or "",
                    description=_check_text(raw_sub.get("description"), f"{sub_where}.description", errors),
                    description_zh=_check_text(
                        raw_sub.get("description_zh", ""), f"{sub_where}.description_zh", errors
                    ),
                    examples=examples,
                    evidence=_check_evidence(raw_sub.get("evidence"), sub_where, errors),
                )
            )
        domains.append(
            Domain(
                id=domain_id or "",
                description=_check_text(raw.get("description"), f"{where}.description", errors),
                description_zh=_check_text(raw.get("description_zh", ""), f"{where}.description_zh", errors),
                examples=_check_strings(raw.get("examples"), f"{where}.examples", errors, required=False),
                subcategories=tuple(subs),
            )
        )
    if errors:
        raise TaxonomyError(f"{source}: {len(errors)} problem(s) in the taxonomy:\n  - " + "\n  - ".join(errors))
    return Taxonomy(domains=tuple(domains), version=version, source=source)


def _did_you_mean(name: str, candidates: Any) -> str:
    close = difflib.get_close_matches(str(name), list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(raw: dict[str, Any], allowed: dict[str, bool], where: str, errors: list[str]) -> None:
    for key in raw:
        if key not in allowed:
            errors.append(f"{where}: unknown key {key!r}{_did_you_mean(key, allowed)}; allowed: {sorted(allowed)}")
    for key, required in allowed.items():
        if required and key not in raw:
            errors.append(f"{where}: missing required key {key!r}")


def _check_id(value: Any, where: str, seen: dict[str, str], errors: list[str]) -> str | None:
    if not isinstance(value, str) or not value or not value.replace("_", "").isalnum() or value.lower() != value:
        errors.append(f"{where}: 'id' must be a snake_case string, got {value!r}")
        return None
    if value in seen:
        errors.append(f"{where}: duplicate id {value!r} (first defined at {seen[value]}); ids must be unique")
    else:
        seen[value] = where
    return value


def _check_text(value: Any, where: str, errors: list[str]) -> str:
    if not isinstance(value, str):
        errors.append(f"{where}: expected a string, got {type(value).__name__}")
        return ""
    return value.strip()


def _check_strings(value: Any, where: str, errors: list[str], required: bool) -> tuple[str, ...]:
    if value is None:  # a missing required key is reported by _check_keys
        return ()
    if not isinstance(value, list) or (required and not value):
        errors.append(f"{where}: expected a {'non-empty ' if required else ''}list of strings")
        return ()
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        errors.append(f"{where}: every example must be a non-empty string, got {bad[:3]!r}")
    return tuple(v.strip() for v in value if isinstance(v, str) and v.strip())


def _check_evidence(value: Any, where: str, errors: list[str]) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"{where}.evidence: expected a mapping of signal -> weight, got {type(value).__name__}")
        return {}
    evidence: dict[str, float] = {}
    for signal, weight in value.items():
        if signal not in SIGNALS:
            errors.append(
                f"{where}.evidence: unknown signal {signal!r}{_did_you_mean(signal, SIGNALS)}; "
                f"known: {sorted(SIGNALS)}"
            )
        elif isinstance(weight, bool) or not isinstance(weight, int | float):
            errors.append(f"{where}.evidence.{signal}: weight must be a number, got {weight!r}")
        else:
            evidence[signal] = float(weight)
    return evidence
