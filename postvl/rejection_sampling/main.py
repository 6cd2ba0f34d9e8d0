"""``postvl sample``: k chain-of-thought answers per question, verified and checked -> CoT records + DPO pairs.

    postvl sample runs/clean --out runs/cot --model runs/tiny [--k 8] [--backend vllm|transformers] \\
        [--config configs/sampling/default.yaml] [--keep-per-question 1] [--pairs-per-question 1] [--max-tokens 2048]

    accelerate launch --num_processes 4 -m postvl.rejection_sampling runs/clean --out runs/cot --model MODEL

``IN`` is a finished stage folder or raw data that ``postvl build`` accepts (built into ``OUT/_build`` first). Every
YAML key is also a ``--flag`` (the command line wins); unknown YAML keys fail. Writes ``OUT/data`` (CoT records),
``OUT/preference`` (DPO pairs), ``OUT/rejected.jsonl``, ``OUT/sampling_stats.json``, ``OUT/pass_rates.png``,
``OUT/stats.json`` and ``OUT/manifest.json`` (see ``postvl.rejection_sampling.stage``), then prints a summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

# Config fields that are mappings or the positional input: YAML only / positional.
_NOT_FLAGS = {"inputs", "prompts", "hygiene", "verify", "vllm_engine"}
_TYPES = {"int": int, "float": float, "str": str}


def make_parser() -> argparse.ArgumentParser:
    from postvl.rejection_sampling.stage import SamplingConfig

    parser = argparse.ArgumentParser(
        prog="postvl sample",
        description="Rejection sampling (Qwen2.5-VL recipe): sample k chain-of-thought answers per question with "
        "vLLM (or transformers), keep the correct and hygienic ones as SFT records and pair right with wrong "
        "answers for DPO.",
    )
    parser.add_argument("inputs", nargs="*", metavar="IN", help="a stage folder, or raw data for `postvl build`")
    parser.add_argument("--config", help="a YAML under configs/sampling/ (its keys: the options below and more)")
    for f in dataclasses.fields(SamplingConfig):
        if f.name in _NOT_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        base = str(f.type).replace(" | None", "")
        if base == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, dest=f.name, type=_TYPES[base], default=None, help=_help(f))
    return parser


def _help(f: dataclasses.Field) -> str:
    if f.default is dataclasses.MISSING:
        return "(required unless set in the YAML)"
    return f"(default: {f.default})"


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from postvl.io import shard_from_env

    main_process = shard_from_env().is_main
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from postvl.rejection_sampling.stage import load_config, run_sampling, summary_table

    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    overrides["inputs"] = tuple(args.inputs) or None
    cfg = load_config(args.config, **overrides)
    result = run_sampling(cfg)
    if result.skipped:
        logging.getLogger(__name__).info("%s: this shard was already sampled with this config and input", cfg.out)
    if result.sampling is not None:
        from rich.console import Console

        Console().print(summary_table(result.stats, result.sampling, cfg.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
