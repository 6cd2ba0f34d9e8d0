"""The ``postvl`` command: one thin sub-command per stage.

    postvl --help
    postvl tiny-model OUT [--family qwen2_vl|qwen2_5_vl|qwen3_vl|qwen3_vl_moe] [--vocab small|qwen] [--seed N]
    postvl <command> --help

Each sub-command lives in its own module and is imported only when it runs, so ``postvl --help`` answers at once.
``COMMANDS`` names, per command, a ``module:function`` taking ``argv: list[str]`` and returning an exit code; the
function owns its argparse parser (``prog="postvl <command>"``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> ("module:function", one-line help), in the recipe's order. Keep one line per command.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("postvl.synth.main:main", "write a synthetic multimodal dataset with ground truth and planted defects"),
    "build": ("postvl.chatml.main:main", "raw TRL/LLaMA-Factory/qwen/ms-swift/OpenAI data -> checked ChatML records"),
    "inspect": ("postvl.chatml.inspect:main", "show the spans a stage's records train on, token/media/reject stats"),
    "split": ("postvl.evaluation.split:main", "hold out an eval split by a stable hash of record ids, before tagging"),
    "tag": ("postvl.instag.main:main", "tag QA pairs: domain, subcategory, open tags (embedding, llm, classifier)"),
    "filter": ("postvl.filtering.main:main", "per-domain rule filters, then reward-model or VLM-judge scores"),
    "rm": ("postvl.filtering.reward_model:main", "`rm train`: a reward model from preference pairs (TRL)"),
    "sample": ("postvl.rejection_sampling.main:main", "k CoT answers/question, verified -> SFT records + DPO pairs"),
    "verify": ("postvl.rejection_sampling.verify_cli:main", "check sampled answers in a JSONL against gold answers"),
    "sft": ("postvl.sft.main:main", "supervised fine-tuning with TRL: ViT frozen, LoRA optional, exact mRoPE packing"),
    "dpo": ("postvl.dpo.main:main", "DPO with TRL: ViT frozen, one pass, each image encoded once per step"),
    "eval": ("postvl.evaluation.main:main", "accuracy of models side by side on held-out questions, overlap-checked"),
    "run": ("postvl.pipeline:main", "the whole recipe, build -> split -> tag -> ... -> sft -> dpo -> eval, resumable"),
    "report": ("postvl.report:main", "a self-contained HTML report (funnel, domains, scores, curves) of a run folder"),
    "demo-model": ("postvl.synth.base_model:main", "the demo base model: a tiny Qwen2.5-VL trained on synth answers"),
    "tiny-model": ("postvl.cli:tiny_model_main", "save a tiny random model of one family + processor, built offline"),
    "params": ("postvl.cli:params_main", "print trainable vs frozen parameters of a model with the ViT frozen"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="postvl",
        description="The Qwen2.5-VL post-training recipe on your own data.",
        epilog="Run `postvl COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv[:1])
    module_name, function_name = COMMANDS[args.command][0].split(":")
    handler = getattr(importlib.import_module(module_name), function_name)
    return int(handler(argv[1:]) or 0)


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def tiny_model_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="postvl tiny-model",
        description="Save a randomly initialised tiny model of one family (the real architecture) with its full "
        "processor and the family's official chat template, built offline. Loads with AutoModelForImageTextToText / "
        "AutoProcessor.",
    )
    from postvl.families import FAMILIES, FAMILY_NAMES

    parser.add_argument(
        "--family",
        choices=FAMILY_NAMES,
        default="qwen2_5_vl",
        help="model family (default qwen2_5_vl)",
    )
    parser.add_argument("out", help="output directory")
    parser.add_argument(
        "--vocab",
        choices=("small", "qwen"),
        default="small",
        help="small: ~420-token byte-level BPE (fast); qwen: the real Qwen vocabulary with official ids",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    _setup_logging()
    from postvl.modeling import build_tiny_model

    out = build_tiny_model(args.out, vocab=args.vocab, seed=args.seed, family=args.family)
    print(f"tiny {FAMILIES[args.family].title} ({args.vocab} vocabulary) saved to {out}")
    return 0


def params_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="postvl params",
        description="Load a model, freeze its vision tower as the recipe does (optionally add LoRA) and print the "
        "trainable/frozen parameter table.",
    )
    parser.add_argument("model", help="hub id or local directory")
    parser.add_argument("--freeze-merger", action="store_true", help="freeze the merger too")
    parser.add_argument(
        "--deepstack-mergers",
        choices=("as-merger", "train", "freeze"),
        default="as-merger",
        help="Qwen3-VL's DeepStack mergers: as the merger (default), trained, or frozen with the ViT",
    )
    parser.add_argument("--lora-experts", action="store_true", help="MoE: also put LoRA on the packed experts")
    parser.add_argument("--unfreeze-last-n-blocks", type=int, default=0)
    parser.add_argument("--lora-r", type=int, default=0, help="add a LoRA adapter of this rank (0: none)")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    from postvl.modeling import (
        apply_lora,
        format_parameter_table,
        freeze_vision,
        load_model_and_processor,
        parameter_groups,
    )

    model, _ = load_model_and_processor(args.model, trust_remote_code=args.trust_remote_code)
    if args.lora_r:  # peft freezes every base parameter, so the vision freeze comes after it
        model = apply_lora(
            model, r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0 if args.lora_experts else 0.05,
            experts=args.lora_experts,
        )
    deepstack = {"as-merger": None, "train": True, "freeze": False}[args.deepstack_mergers]
    freeze_vision(
        model,
        train_merger=not args.freeze_merger,
        train_deepstack_mergers=deepstack,
        unfreeze_last_n_blocks=args.unfreeze_last_n_blocks,
    )
    print(format_parameter_table(parameter_groups(model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
