"""Accuracy of a tagger on labelled records (``label_domain``, ``label_subcategory``), overall and per language.

from postvl.instag.evaluate import evaluate, read_labelled
report = evaluate(tagger, read_labelled("tests/data/instag_dev.jsonl"))
report["by_language"]["zh"]["domain_accuracy"]
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from postvl.instag.embedding import EmbeddingTagger
from postvl.instag.features import detect_language, record_texts


def read_labelled(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL of records that carry ``label_domain`` and ``label_subcategory``."""
    records = []
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = [k for k in ("label_domain", "label_subcategory", "messages") if k not in record]
            if missing:
                raise ValueError(f"{path}:{n}: labelled record lacks {missing}")
            records.append(record)
    return records


def record_language(record: dict[str, Any]) -> str:
    """``meta["lang"]`` when the record has it, else detected from its question."""
    meta = record.get("meta")
    if isinstance(meta, dict) and meta.get("lang"):
        return str(meta["lang"])
    return detect_language(record_texts(record)[0])


def evaluate(tagger: EmbeddingTagger, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Tag labelled records and measure domain and subcategory accuracy.

    Returns:
        ``{"n", "domain_accuracy", "subcategory_accuracy", "by_language": {lang: {...same keys}},
        "errors": [{"id", "lang", "label", "predicted", "confidence"}]}``
    """
    results = tagger.tag_batch(records)
    groups: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    errors = []
    for record, result in zip(records, results, strict=True):
        lang = record_language(record)
        ok_domain = result.domain == record["label_domain"]
        ok_sub = result.subcategory == record["label_subcategory"]
        groups["all"].append((ok_domain, ok_sub))
        groups[lang].append((ok_domain, ok_sub))
        if not ok_sub:
            errors.append(
                {
                    "id": record.get("id"),
                    "lang": lang,
                    "label": f"{record['label_domain']}/{record['label_subcategory']}",
                    "predicted": f"{result.domain}/{result.subcategory}",
                    "confidence": round(result.confidence, 3),
                }
            )

    def summary(rows: list[tuple[bool, bool]]) -> dict[str, Any]:
        return {
            "n": len(rows),
            "domain_accuracy": sum(d for d, _ in rows) / max(len(rows), 1),
            "subcategory_accuracy": sum(s for _, s in rows) / max(len(rows), 1),
        }

    report = summary(groups.pop("all", []))
    report["by_language"] = {lang: summary(rows) for lang, rows in sorted(groups.items())}
    report["errors"] = errors
    return report
