"""``postvl tag``: tag every QA pair with a domain, a subcategory and open tags (stage 1 of data cleaning).

    postvl tag IN --out DIR [--backend embedding|llm|classifier] [--taxonomy FILE] [--model PATH]
    postvl tag runs/chatml --out runs/tagged                                       # embedding backend, offline
    postvl tag runs/chatml --out runs/tagged --backend llm --model Qwen2.5-VL-72B/ --min-tag-count 5
    postvl tag train --labels LABELLED --out MODEL_DIR [--base PATH] [--eval HELD_OUT.jsonl]
    postvl tag runs/chatml --out runs/tagged --backend classifier --model MODEL_DIR

    accelerate launch --num_processes 4 -m postvl.instag runs/chatml --out runs/tagged --backend llm --model M

``IN`` is a finished stage folder or raw data that ``postvl build`` accepts (built into ``OUT/_build`` first). Writes
``OUT/data`` (and ``OUT/preference``), ``OUT/rejected.jsonl``, ``OUT/tag_stats.json``, ``OUT/tag_distribution.png``,
``OUT/stats.json`` and ``OUT/manifest.json`` (see ``postvl.instag.stage``), then prints a summary table. ``train``
fits the ``classifier`` backend on labelled records (see ``postvl.instag.classifier``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

_NOT_FLAGS = {"inputs", "labels", "eval"}
_TYPES = {"int": int, "float": float, "str": str}


def _add_flags(parser: argparse.ArgumentParser, config_class: type, optional: bool = False) -> None:
    """One ``--flag`` per dataclass field; ``None`` means "not given" (the dataclass default applies)."""
    for f in dataclasses.fields(config_class):
        if f.name in _NOT_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        base = str(f.type).replace(" | None", "")
        default = "required" if f.default is dataclasses.MISSING else f"default: {f.default}"
        if base == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif f.name == "vllm_engine":
            parser.add_argument(
                flag,
                dest=f.name,
                type=json.loads,
                default=None,
                help="more vllm.LLM arguments as JSON, e.g. '{\"enforce_eager\": true}'",
            )
        elif f.name == "backend":
            parser.add_argument(
                flag, dest=f.name, choices=("embedding", "llm", "classifier"), default=None, help=f"({default})"
            )
        else:
            required = not optional and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            parser.add_argument(
                flag, dest=f.name, type=_TYPES[base], default=None, required=required, help=f"({default})"
            )


def make_parser() -> argparse.ArgumentParser:
    from postvl.instag.stage import TagConfig

    parser = argparse.ArgumentParser(
        prog="postvl tag",
        description="Tag QA pairs with a taxonomy's domain and subcategory and open InsTag-style tags "
        "(embedding: offline sentence embeddings; llm: a VLM through vLLM; classifier: one trained by "
        "`postvl tag train`). `postvl tag train --help` for training.",
    )
    parser.add_argument("inputs", nargs="*", metavar="IN", help="a stage folder, or raw data for `postvl build`")
    parser.add_argument("--config", help="a YAML of these options (the command line wins; unknown keys fail)")
    _add_flags(parser, TagConfig, optional=True)
    return parser


def make_train_parser() -> argparse.ArgumentParser:
    from postvl.instag.classifier import TrainConfig

    parser = argparse.ArgumentParser(
        prog="postvl tag train",
        description="Train the classifier backend on labelled records (a tagged stage folder, or JSONL with "
        "label_subcategory): an embedding head by default, or a local transformers model with --base.",
    )
    parser.add_argument("--labels", nargs="+", required=True, help="tagged stage folders or labelled JSONL files")
    parser.add_argument("--eval", nargs="*", default=(), help="labelled files to measure on (never trained on)")
    _add_flags(parser, TrainConfig)
    return parser


def _setup_logging() -> None:
    from postvl.io import shard_from_env

    logging.basicConfig(
        level=logging.INFO if shard_from_env().is_main else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def train_main(argv: list[str]) -> int:
    args = make_train_parser().parse_args(argv)
    _setup_logging()
    from postvl.instag.classifier import TrainConfig, train_classifier

    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if v is not None})
    report = train_classifier(cfg)
    lines = [f"classifier saved to {cfg.out}: {report['n_labels']} labels"]
    for name, scores in [("held-out", report.get("held_out")), *report["eval"].items()]:
        if scores:
            lines.append(
                f"  {name}: domain {scores['domain_accuracy']:.3f}, subcategory "
                f"{scores['subcategory_accuracy']:.3f} (n={scores['n']})"
            )
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # a folder named "train" is given as ./train
        return train_main(argv[1:])
    args = make_parser().parse_args(argv)
    _setup_logging()
    from postvl.instag.stage import load_config, run_tagging, summary_table
    from postvl.instag.taxonomy import load_taxonomy

    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    cfg = load_config(args.config, **overrides | {"inputs": tuple(args.inputs) or None})
    result = run_tagging(cfg)
    if result.skipped:
        logging.getLogger(__name__).info("%s: this shard was already tagged with this config and input", cfg.out)
    if result.tag_stats is not None:
        from rich.console import Console

        Console().print(summary_table(result.stats, result.tag_stats, cfg.out, load_taxonomy(cfg.taxonomy)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
