"""How the default `substance` and `relevance` checks split clean pairs from bad ones, on synth data and a hand-written
set, measured with the thresholds of configs/filters/default.yaml.

    python benchmarks/relevance_calibration.py [--n 400] [--seed 0]

Clean pairs: every record of a fresh ``postvl synth`` dataset without a planted defect (tagged with its expected
domain) and every ``CLEAN`` pair of ``tests/filtering/handwritten_set.py`` (English and Chinese, with and without
images). Bad pairs: the ``BAD`` pairs of that set (no substance, too short for the question, off-topic). Prints the
embedding similarity of the judged pairs per kind (lowest clean, highest off-topic, the threshold between them),
then ``RESULT`` lines: the share of clean pairs both checks keep, and the share of bad pairs they reject with the
reason the set names.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "filters" / "default.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400, help="synth records (default 400)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO / "tests" / "filtering"))
    from handwritten_set import BAD, CLEAN, record

    from postvl.cli import main as postvl
    from postvl.filtering import Policy, RelevanceFilter, Sample, SubstanceFilter

    policy = Policy.from_yaml(CONFIG)
    clean: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if postvl(["synth", f"{tmp}/s", "--n", str(args.n), "--seed", str(args.seed)]) != 0:
            raise SystemExit("postvl synth failed")
        for line in Path(f"{tmp}/s/train.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row["meta"].get("defect") or "messages" not in row:
                continue
            meta = dict(row["meta"], domain=row["meta"]["expected_domain"])
            meta["subcategory"] = row["meta"]["expected_subcategory"]
            clean.append(("synth", dict(row, meta=meta)))
    clean += [("hand", record(*pair, rid=f"c{i}")) for i, pair in enumerate(CLEAN)]
    bad = [(pair[4], record(*pair[:4], rid=f"b{i}")) for i, pair in enumerate(BAD)]

    def new_checks(rec: dict) -> list:
        meta = rec["meta"]
        filters = policy.filters_for(meta.get("domain"), meta.get("subcategory"))
        return [f for f in filters if isinstance(f, SubstanceFilter | RelevanceFilter)]

    def decide(rec: dict) -> str | None:
        for filt in new_checks(rec):
            reason = filt.check(rec)
            if reason is not None:
                return reason
        return None

    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"clean": [], "off-topic": []})
    thresholds: dict[str, float] = {}
    for label, rec in [
        *(("clean", r) for _, r in clean),
        *(("off-topic", r) for why, r in bad if why == "irrelevant_answer"),
    ]:
        sample = Sample(rec)
        for filt in new_checks(rec):
            if isinstance(filt, RelevanceFilter):
                threshold = filt._threshold_for(sample)
                value = filt.similarity(sample.query, sample.answer) if threshold is not None else None
                if value is not None and math.isfinite(value):
                    media = "with media" if rec.get("images") or rec.get("videos") else "no media"
                    kind = f"{rec['meta'].get('domain') or 'untagged'}, {media}"
                    scores[kind][label].append(value)
                    thresholds[kind] = threshold

    print(f"{'kind':<28} {'threshold':>9} {'clean':>6} {'lowest clean':>13} {'off-topic':>9} {'highest off':>12}")
    for kind in sorted(scores):
        c, o = scores[kind]["clean"], scores[kind]["off-topic"]
        print(
            f"{kind:<28} {thresholds[kind]:>9.2f} {len(c):>6} {min(c) if c else float('nan'):>13.3f} "
            f"{len(o):>9} {max(o) if o else float('nan'):>12.3f}"
        )
    kept = sum(decide(rec) is None for _, rec in clean)
    caught = sum(decide(rec) == why for why, rec in bad)
    lowest = min(v for s in scores.values() for v in s["clean"])
    highest = max(v for s in scores.values() for v in s["off-topic"])
    print(f"\nclean kept {kept}/{len(clean)}, bad rejected with their reason {caught}/{len(bad)}")
    print(
        f"RESULT defaults_clean_kept {kept / len(clean):.4f} fraction | clean pairs that substance + relevance keep: "
        f"{kept}/{len(clean)} ({sum(s == 'synth' for s, _ in clean)} synth, {len(CLEAN)} hand-written EN/ZH)"
    )
    print(
        f"RESULT defaults_bad_rejected {caught / len(bad):.4f} fraction | hand-written bad pairs (no substance, too "
        f"short, off-topic) rejected with their reason: {caught}/{len(bad)}; similarity lowest clean {lowest:.3f}, "
        f"highest off-topic {highest:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
