"""``postvl eval``: accuracy of one or more models on held-out questions, side by side, after an overlap check.

    postvl eval runs/demo/02_split/eval --model base=runs/demo/model --model sft=runs/demo/06_sft/merged \\
        --train runs/demo/05_sample runs/demo/04_filter --out runs/demo/08_eval [--config configs/eval/tiny_cpu.yaml]

``DATA`` is a finished stage folder (``postvl split``'s ``OUT/eval``) or raw data that ``postvl build`` accepts.
Every YAML key is also a ``--flag`` (the command line wins); unknown YAML keys fail. Each model samples ``k``
chain-of-thought answers per question with the shared generator (vLLM by default; the rejection-sampling prompts;
the dataset's pixel limits), judged by the verifier behind ``postvl verify``. Eval records that overlap ``--train``
(exact or near duplicates, the filter's dedup) are dropped with their reason. Writes ``OUT/eval.json``,
``OUT/eval.png``, ``OUT/samples/<model>.jsonl`` and the stage contract (see ``postvl.evaluation.stage``), then
prints the models side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

# Config fields that are mappings, lists or the positional input: YAML only, repeated flags, positional.
_NOT_FLAGS = {"inputs", "models", "train", "prompts", "hygiene", "verify", "overlap", "vllm_engine"}
_TYPES = {"int": int, "float": float, "str": str}


def make_parser() -> argparse.ArgumentParser:
    from postvl.evaluation.stage import EvalConfig

    parser = argparse.ArgumentParser(
        prog="postvl eval",
        description="Evaluate models on held-out questions with ground truth: accuracy (pass@1), pass@k, answer "
        "length and hygiene failures, overall and by domain, subcategory and answer type, side by side.",
    )
    parser.add_argument("inputs", nargs="*", metavar="DATA", help="a stage folder, or raw data for `postvl build`")
    parser.add_argument("--config", help="a YAML under configs/eval/ (its keys: the options below and more)")
    parser.add_argument("--model", dest="models", action="append", help="NAME=PATH or PATH; repeat to compare")
    parser.add_argument("--train", nargs="+", help="what trained the models: overlapping eval records are dropped")
    for f in dataclasses.fields(EvalConfig):
        if f.name in _NOT_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        base = str(f.type).replace(" | None", "")
        if base == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, dest=f.name, type=_TYPES[base], default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from rich.console import Console

    from postvl.evaluation.stage import load_config, run_eval, summary_table

    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    for key in ("inputs", "models", "train"):
        overrides[key] = tuple(overrides[key]) if overrides[key] else None
    cfg = load_config(args.config, **overrides)
    result = run_eval(cfg)
    if result.skipped:
        logging.getLogger(__name__).info("%s: already evaluated with these models, data and config", cfg.out)
    Console(width=160).print(summary_table(result.report, result.stats, cfg.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
