"""``postvl rm train``: a reward model from preference pairs with TRL's ``RewardTrainer``.

    postvl rm train --datasets runs/cot --out runs/rm --model runs/tiny [--max-records 5000] \\
        [--per_device_train_batch_size 8 --num_train_epochs 1 --learning_rate 1e-5 ...]    # any RewardConfig option
    postvl filter runs/tagged --out runs/clean --config configs/filters/reward_model.yaml --model runs/rm

Training data: the preference records (``prompt``, ``chosen``, ``rejected``) of stage folders, e.g. the DPO pairs
that ``postvl sample`` writes to ``OUT/preference``. Each side is rendered text-only with the Qwen2.5-VL chat
template (``postvl.filtering.scoring.render_text``: images and videos stay as their ``<|image_pad|>`` markers) and
tokenized here, so TRL receives ``chosen_ids`` / ``rejected_ids`` and the ``reward_model`` scorer later reads exactly
the same text. TRL 1.16's ``RewardTrainer`` is text-only: its collator pads ``chosen_ids`` / ``rejected_ids`` into
``input_ids`` / ``attention_mask`` and passes nothing else to the model (no ``pixel_values``), and it loads models with
``AutoModelForSequenceClassification``, which has no Qwen2.5-VL head in transformers.

``--model`` is the starting point: a sequence-classification model folder (``Qwen2ForSequenceClassification``...),
a causal LM folder (TRL's usual start: a new ``score`` head), a Qwen2.5-VL folder (its language model becomes a
``Qwen2ForSequenceClassification`` with the same weights and tokenizer; the vision tower is dropped), or ``tiny`` (a
random tiny Qwen2 reward model with the small offline vocabulary, for tests and demos). The saved folder loads with
``AutoModelForSequenceClassification`` and names its head in ``id2label`` (``--dimension``, default ``reward``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TINY = "tiny"


@dataclass
class RewardDataArguments:
    """What to train on and where to save (the rest is TRL's ``RewardConfig``).

    Attributes:
        datasets: stage folders with preference records (``OUT/preference/part-*.parquet``).
        out: the folder the reward model and its tokenizer are saved to.
        model: the starting model folder, or ``tiny``.
        dimension: the name of the reward head (``id2label[0]``), the key the scorer writes into ``meta.scores``.
        max_records: most pairs per dataset.
    """

    datasets: list[str] = field(default_factory=list, metadata={"help": "stage folders with preference records"})
    out: str | None = field(default=None, metadata={"help": "folder to save the reward model to"})
    model: str | None = field(default=None, metadata={"help": "starting model folder, or `tiny`"})
    dimension: str = field(default="reward", metadata={"help": "name of the reward head in meta.scores"})
    max_records: int | None = field(default=None, metadata={"help": "most pairs per dataset"})

    def __post_init__(self) -> None:
        errors = []
        if not self.datasets:
            errors.append("give --datasets DIR [DIR ...] (stage folders with preference records)")
        if not self.out:
            errors.append("give --out MODEL_DIR")
        if not self.model:
            errors.append("give --model: a model folder (sequence-classification, causal LM or Qwen2.5-VL) or `tiny`")
        elif self.model != TINY and not Path(self.model).is_dir():
            errors.append(f"--model {self.model!r} is not a local folder (save it with save_pretrained first)")
        if self.max_records is not None and self.max_records < 1:
            errors.append(f"max_records must be >= 1, got {self.max_records}")
        if errors:
            raise ValueError("postvl rm train: " + "; ".join(errors))


def make_parser() -> Any:
    from trl import RewardConfig, TrlParser

    return TrlParser((RewardDataArguments, RewardConfig))


# --------------------------------------------------------------------------------------------------------------------
# Data


def load_pairs(datasets: list[str], max_records: int | None = None) -> list[dict[str, Any]]:
    """The preference records of every dataset (``prompt``, ``chosen``, ``rejected``, ``meta``...).

    Raises:
        ValueError: no dataset holds a preference record.
    """
    from postvl.io import read_stage

    pairs: list[dict[str, Any]] = []
    for folder in datasets:
        n = 0
        for record in read_stage(folder, kind="preference"):
            if max_records is not None and n >= max_records:
                break
            pairs.append(record)
            n += 1
        logger.info("%s: %d preference pairs", folder, n)
    if not pairs:
        raise ValueError(
            f"no preference records in {datasets}: give stage folders with OUT/preference/ parts "
            "(postvl sample writes DPO pairs there)"
        )
    return pairs


def tokenize_pairs(pairs: list[dict[str, Any]], tokenizer: Any) -> Any:
    """A ``datasets.Dataset`` of ``chosen_ids`` / ``rejected_ids`` (TRL skips its own tokenization then)."""
    from datasets import Dataset

    from postvl.filtering.scoring import render_text

    chosen = [render_text(list(p["prompt"]) + list(p["chosen"])) for p in pairs]
    rejected = [render_text(list(p["prompt"]) + list(p["rejected"])) for p in pairs]
    return Dataset.from_dict(
        {
            "chosen_ids": tokenizer(chosen, add_special_tokens=False)["input_ids"],
            "rejected_ids": tokenizer(rejected, add_special_tokens=False)["input_ids"],
        }
    )


# --------------------------------------------------------------------------------------------------------------------
# Model


def init_reward_model(model: str, dimension: str = "reward", seed: int = 0) -> tuple[Any, Any]:
    """A one-head sequence-classification model and its tokenizer, from ``model`` (see the module doc).

    Raises:
        ValueError: a model type with no sequence-classification head and no known conversion.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    labels = {"num_labels": 1, "id2label": {0: dimension}, "label2id": {dimension: 0}}
    torch.manual_seed(seed)
    if model == TINY:
        from postvl.modeling import TINY_TEXT, build_tokenizer

        tokenizer = build_tokenizer("small")
        return _qwen2_classifier(dict(TINY_TEXT), tokenizer, labels), tokenizer
    config = AutoConfig.from_pretrained(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    if config.model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        rm = AutoModelForSequenceClassification.from_pretrained(model, dtype=torch.float32, **labels)
        return rm, tokenizer
    if config.model_type in ("qwen2_5_vl", "qwen2_vl"):
        from transformers import AutoModelForImageTextToText

        vlm = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32)
        rm = _qwen2_classifier(config.text_config.to_dict(), tokenizer, labels)
        missing, unexpected = rm.model.load_state_dict(vlm.model.language_model.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{model}: language-model weights do not fit Qwen2 (missing {missing}, extra {unexpected})"
            )
        logger.info("reward model initialised from the language model of %s (vision tower dropped)", model)
        return rm, tokenizer
    raise ValueError(
        f"{model}: model_type {config.model_type!r} has no sequence-classification head in transformers; start from "
        "a causal LM or sequence-classification model, a Qwen2.5-VL folder, or `tiny`"
    )


def _qwen2_classifier(text: dict[str, Any], tokenizer: Any, labels: dict[str, Any]) -> Any:
    """``Qwen2ForSequenceClassification`` with the sizes of a (Qwen2.5-VL) text config, in float32."""
    import torch
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    keep = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "rms_norm_eps",
        "hidden_act",
        "attention_dropout",
        "vocab_size",
    )
    kwargs = {k: text[k] for k in keep if k in text}
    rope = dict(text.get("rope_parameters") or {})
    rope.pop("mrope_section", None)  # text-only positions: mRoPE's three sections carry the same index
    kwargs["rope_parameters"] = rope or {"rope_type": "default", "rope_theta": 1000000.0}
    kwargs.setdefault("vocab_size", (len(tokenizer) + 63) // 64 * 64)
    config = Qwen2Config(**kwargs, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **labels)
    return Qwen2ForSequenceClassification(config).to(torch.float32)


# --------------------------------------------------------------------------------------------------------------------
# Entry point


def train(data: RewardDataArguments, args: Any) -> dict[str, Any]:
    """Train and save; returns the summary written to ``OUT/rm_summary.json``."""
    from trl import RewardTrainer

    from postvl.filtering.scoring import RewardModelScorer

    pairs = load_pairs(data.datasets, data.max_records)
    model, tokenizer = init_reward_model(data.model, data.dimension, seed=args.seed)
    dataset = tokenize_pairs(pairs, tokenizer)
    args = dataclasses.replace(args, output_dir=data.out, remove_unused_columns=False)
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(data.out)
    summary: dict[str, Any] = {"pairs": len(pairs), "steps": trainer.state.global_step, "model": data.out}
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(data.out)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        summary["final_loss"] = losses[-1] if losses else trainer.state.log_history[-1].get("train_loss")
        scorer = RewardModelScorer(data.out, max_length=args.max_length or 2048)
        sample = pairs[:1000]
        chosen = scorer.score([{"messages": list(p["prompt"]) + list(p["chosen"])} for p in sample])
        rejected = scorer.score([{"messages": list(p["prompt"]) + list(p["rejected"])} for p in sample])
        wins = [c[data.dimension] > r[data.dimension] for c, r in zip(chosen, rejected, strict=True)]
        summary["train_pair_accuracy"] = round(sum(wins) / len(wins), 4)
        (Path(data.out) / "rm_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "train":
        print("usage: postvl rm train --datasets DIR [DIR ...] --out MODEL_DIR --model PATH|tiny [options]")
        print("       (options: any TRL RewardConfig field, e.g. --num_train_epochs 1; see `postvl rm train --help`)")
        return 2
    data, args = make_parser().parse_args_and_config(argv[1:])
    logging.basicConfig(level=logging.INFO if args.process_index == 0 else logging.WARNING)
    summary = train(data, args)
    if "final_loss" in summary:
        width = max(len(k) for k in summary)
        print("\n".join(["reward model summary"] + [f"  {k.ljust(width)}  {v}" for k, v in summary.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
