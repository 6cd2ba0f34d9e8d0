"""``postvl verify``: check sampled answers in a JSONL file against their gold answers.

    postvl verify samples.jsonl --out verified.jsonl
    postvl verify samples.jsonl > verified.jsonl

Each line holds ``output`` (the model's response), ``gold`` and ``answer_type`` (one of ``records.ANSWER_TYPES``),
and optionally ``options`` (choice questions) and ``expected`` (a bool: whether ``output`` should be judged correct,
to test the verifier itself). Each line is written back with ``correct``, ``extracted`` and ``reason`` added; a
malformed line (bad JSON, a missing field, an unusable gold) is reported with its line number and written back with
an ``error`` field instead. The summary gives the share of correct outputs and, when lines carry ``expected``, the
agreement of ``correct`` with it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

REQUIRED_FIELDS = ("output", "gold", "answer_type")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postvl verify",
        description="Check each line's final answer (`output`) against `gold` by `answer_type` and write the lines "
        "back with `correct`, `extracted` and `reason`.",
    )
    parser.add_argument("file", help="JSONL with output, gold, answer_type (optional: options, expected)")
    parser.add_argument("--out", help="where to write the verified lines (default: standard output)")
    parser.add_argument("--iou-threshold", type=float, default=0.5, help="IoU a bbox answer needs (default 0.5)")
    parser.add_argument("--rel-tol", type=float, default=1e-3, help="relative tolerance of number answers")
    parser.add_argument("--abs-tol", type=float, default=0.0, help="absolute tolerance of number answers")
    parser.add_argument(
        "--no-percent-as-fraction",
        action="store_true",
        help="read '50%%' only as 50, never as 0.5",
    )
    return parser


def verify_line(record: Any, config: Any) -> dict[str, Any]:
    """Verify one parsed line; raises ``ValueError`` (or ``TypeError``) for a line that cannot be verified."""
    from postvl.rejection_sampling.verify import verify

    if not isinstance(record, dict):
        raise ValueError(f"a line must be a JSON object, got {type(record).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise ValueError(f"missing field(s) {missing}; each line needs {list(REQUIRED_FIELDS)}")
    if "expected" in record and not isinstance(record["expected"], bool):
        raise ValueError(f"expected must be true or false, got {record['expected']!r}")
    verdict = verify(
        record["output"], record["gold"], record["answer_type"], options=record.get("options"), config=config
    )
    return {**record, "correct": verdict.correct, "extracted": verdict.extracted, "reason": verdict.reason}


def run(lines: TextIO, out: TextIO, config: Any) -> dict[str, Any]:
    """Verify every line of ``lines`` into ``out``; returns the counts the summary prints."""
    counts: Counter[str] = Counter()
    errors: list[str] = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        counts["lines"] += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            record, message = {"raw": line.rstrip("\n")}, f"invalid JSON: {e}"
        else:
            try:
                result = verify_line(record, config)
            except (ValueError, TypeError) as e:  # a bad line is reported and written back, never a crash
                message = str(e)
            else:
                counts["verified"] += 1
                counts["correct"] += result["correct"]
                if "expected" in result:
                    counts["with_expected"] += 1
                    counts["agree"] += result["correct"] == result["expected"]
                out.write(json.dumps(result, ensure_ascii=False) + "\n")
                continue
        counts["errors"] += 1
        errors.append(f"line {line_no}: {message}")
        fields = record if isinstance(record, dict) else {"raw": record}
        out.write(json.dumps({**fields, "line": line_no, "error": message}, ensure_ascii=False) + "\n")
    return {"counts": counts, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from postvl.rejection_sampling.verify import VerifyConfig

    config = VerifyConfig(
        rel_tol=args.rel_tol,
        abs_tol=args.abs_tol,
        percent_as_fraction=not args.no_percent_as_fraction,
        iou_threshold=args.iou_threshold,
    )
    source = Path(args.file)
    if not source.is_file():
        print(f"postvl verify: no such file: {source}", file=sys.stderr)
        return 2
    report = sys.stderr if args.out is None else sys.stdout
    with source.open(encoding="utf-8") as lines:
        if args.out is None:
            result = run(lines, sys.stdout, config)
        else:
            out_path = Path(args.out)
            tmp_path = out_path.with_name(out_path.name + ".tmp")
            with tmp_path.open("w", encoding="utf-8") as out:
                result = run(lines, out, config)
            os.replace(tmp_path, out_path)  # the output appears whole or not at all
    counts = result["counts"]
    for message in result["errors"]:
        print(f"{source}:{message}", file=sys.stderr)
    verified = counts["verified"]
    print(f"lines: {counts['lines']}  verified: {verified}  errors: {counts['errors']}", file=report)
    if verified:
        print(f"correct: {counts['correct']}/{verified} = {counts['correct'] / verified:.4f}", file=report)
    if counts["with_expected"]:
        agreement = counts["agree"] / counts["with_expected"]
        print(
            f"accuracy (correct == expected): {counts['agree']}/{counts['with_expected']} = {agreement:.4f}",
            file=report,
        )
    if args.out is not None:
        print(f"written to {args.out}", file=report)
    return 0
