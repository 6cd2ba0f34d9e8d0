"""Accuracy of the ``math`` verifier on Math-Verify's own equivalence cases.

    python benchmarks/verify_accuracy.py [PATH] [--defaults]

Each line of PATH (default ``tests/data/math_verify_answer_pairs.jsonl``: Math-Verify's own test cases, each line
naming its source test and commit) holds a ``gold``
and a ``pred`` answer, ``expected`` (whether the two must be judged EQUAL; ``false`` lines are cases that must be told
apart) and the Math-Verify settings the case was written for in ``config``: ``match_types`` (latex / expr),
``precision`` (float rounding), ``strict`` and ``allow_set_relation_comp``; an empty config means Math-Verify's
defaults. A case scores when ``verify(pred, gold, "math").correct == expected``. By default each line's settings
are passed through ``VerifyConfig``; ``--defaults`` runs every line with postvl's defaults instead.

Prints accuracy per source test, per config and per category, the failures, ``accuracy: X.XXXX`` and a ``RESULT``
line (``make bench`` collects it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from postvl.rejection_sampling.verify import VerifyConfig, verify

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATH = REPO_ROOT / "tests" / "data" / "math_verify_answer_pairs.jsonl"


def config_for(line_config: dict) -> VerifyConfig:
    """The ``VerifyConfig`` that reproduces a case's Math-Verify settings."""
    kwargs = {}
    if "match_types" in line_config:
        kwargs["math_targets"] = tuple(line_config["match_types"])
    if "precision" in line_config:
        kwargs["math_float_rounding"] = int(line_config["precision"])
    if "strict" in line_config:
        kwargs["math_strict"] = bool(line_config["strict"])
    if "allow_set_relation_comp" in line_config:
        kwargs["math_allow_set_relation_comp"] = bool(line_config["allow_set_relation_comp"])
    return VerifyConfig(**kwargs)


def config_label(line_config: dict) -> str:
    shown = {k: v for k, v in line_config.items() if k != "call"}
    return json.dumps(shown, sort_keys=True) if shown else "{} (Math-Verify defaults)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_PATH), help="answer_pairs.jsonl")
    parser.add_argument("--defaults", action="store_true", help="ignore each line's config; use VerifyConfig()")
    args = parser.parse_args(argv)

    groups: dict[str, dict[str, list[int]]] = {"source": defaultdict(list), "config": defaultdict(list)}
    groups["category"] = defaultdict(list)
    failures = []
    total = right = 0
    start = time.perf_counter()
    with open(args.path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            case = json.loads(line)
            line_config = case.get("config") or {}
            config = VerifyConfig() if args.defaults else config_for(line_config)
            verdict = verify(case["pred"], case["gold"], "math", config=config)
            ok = verdict.correct == bool(case["expected"])
            total += 1
            right += ok
            source = case["source"].split("::")[-1].split(" @")[0]
            for name, key in (("source", source), ("config", config_label(line_config))):
                groups[name][key].append(ok)
            groups["category"][case.get("category", "?")].append(ok)
            if not ok:
                failures.append((line_no, case, verdict))
    elapsed = time.perf_counter() - start

    for name, table in groups.items():
        print(f"\nper {name}:")
        for key, oks in sorted(table.items()):
            print(f"  {sum(oks) / len(oks):.4f}  {sum(oks):3d}/{len(oks):<3d}  {key}")
    if failures:
        print("\nfailures:")
        for line_no, case, verdict in failures:
            print(
                f"  line {line_no}: expected={case['expected']} got={verdict.correct} "
                f"gold={case['gold']!r} pred={case['pred'][:80]!r} extracted={verdict.extracted!r}"
            )
    print(f"\n{right}/{total} cases in {elapsed:.1f} s ({'postvl defaults' if args.defaults else 'per-line config'})")
    print(f"accuracy: {right / total:.4f}")
    settings = "postvl defaults" if args.defaults else "per-line config"
    print(
        f"RESULT verify_math_agreement {right / total:.4f} fraction | {right}/{total} of Math-Verify's own "
        f"equivalence cases judged as its tests expect ({settings})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
