"""Direct preference optimisation with TRL's DPOTrainer: ViT frozen, one pass, each image encoded once per step.

    postvl dpo --config configs/dpo/tiny_cpu.yaml [--key value ...]
    accelerate launch -m postvl.dpo --config configs/dpo/qwen2_5_vl_7b_lora.yaml [--key value ...]

The YAML holds TRL's ``DPOConfig`` and ``ModelConfig`` keys (every TRL option works, ``loss_type`` included) next to
ours (``postvl.training.config``, ``postvl.dpo.config``); ``accelerate launch --config_file
configs/accelerate/...`` picks DDP, FSDP or DeepSpeed. Pairs come from ``postvl build`` / ``postvl sample`` folders
(``DIR/preference/part-*.parquet``). The model is a base model, a merged SFT output, or an SFT adapter folder (merged
or continued, ``sft_adapter``). With LoRA the reference is the adapter disabled; full training keeps a frozen copy.
``precompute_ref_log_probs: true`` computes the reference log-probs in a first pass (each image encoded once; TRL
refuses this for raw vision rows, postvl's rows are prepared ones). One epoch unless told otherwise: the report's DPO
sees each pair once. Pairs longer than ``max_length`` are skipped and listed in ``OUTPUT_DIR/skipped.jsonl``, never
truncated (truncation would cut image tokens).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def make_parser():
    from trl import DPOConfig, ModelConfig, TrlParser

    from postvl.dpo.config import DPOArguments
    from postvl.training.config import DataArguments, LMHeadArguments, OutputArguments, VisionArguments

    parser = TrlParser(
        (DataArguments, VisionArguments, DPOArguments, LMHeadArguments, OutputArguments, DPOConfig, ModelConfig)
    )
    parser.set_defaults(num_train_epochs=1.0)  # DPO: one pass over the pairs; YAML and command line still override
    return parser


def main(argv: list[str] | None = None) -> int:
    from postvl.dpo import train as dpo_lib
    from postvl.dpo.data import PreferenceCollator, PreferenceEncoder, index_dataset, pair_lengths
    from postvl.dpo.vision_cache import SharedVisionFeatures
    from postvl.training.data import check_dataset_families, load_mixed_records, resolve_pixel_limits
    from postvl.training.lm_head import use_lm_head
    from postvl.training.model import check_vision_frozen, install_vision_touch_for_run, lora_config
    from postvl.training.outputs import (
        plot_log_history,
        restore_full_checkpoints,
        resume_value,
        save_final,
        save_parameter_table,
        write_skipped,
    )

    data, vision, dpo, head, output, args, model_args = make_parser().parse_args_and_config(argv)
    logging.basicConfig(level=logging.INFO if args.process_index == 0 else logging.WARNING)
    dpo_lib.check_options(args, model_args, vision, dpo)

    # Load: pixel limits, the starting model (base, merged SFT or SFT adapter), the reference, the pairs.
    min_pixels, max_pixels = resolve_pixel_limits(data.datasets, vision)
    model, processor, continued = dpo_lib.load_policy(
        model_args, vision, dpo, trust_remote_code=args.trust_remote_code, min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    check_dataset_families(data.datasets, model)
    peft_config = None if continued else lora_config(model, model_args, vision)
    full = peft_config is None and not continued
    ref_model = dpo_lib.frozen_copy(model) if full and not args.precompute_ref_log_probs else None
    records = load_mixed_records(data, kind="preference")
    encoder = PreferenceEncoder(processor, train_turn_newline=dpo.train_turn_newline)
    lengths = pair_lengths(records, encoder)
    too_long = [k for k, n in enumerate(lengths) if n > args.max_length]
    kept = [k for k, n in enumerate(lengths) if n <= args.max_length]
    write_skipped(Path(args.output_dir), records, lengths, too_long, args.max_length)
    train_dataset = index_dataset(kept)
    if args.precompute_ref_log_probs:
        train_dataset = dpo_lib.file_backed(train_dataset, Path(args.output_dir) / "pairs")
    cfg = model.config
    collator = PreferenceCollator(
        records, encoder, processor.tokenizer.pad_token_id, cfg.image_token_id, cfg.video_token_id
    )

    # Train: TRL's loss, metrics, checkpoints; our rows, collator and shared vision features.
    shared = SharedVisionFeatures() if dpo.share_vision_features else None
    if shared is not None:
        for m in (model, ref_model):
            if m is not None:
                shared.install(m)
    policy_and_ref = [m for m in (model, ref_model) if m is not None]
    touch = install_vision_touch_for_run(policy_and_ref, vision.vision_touch, args, records.modalities())
    trl_args = dataclasses.replace(args, remove_unused_columns=False, padding_free=False)
    trainer = dpo_lib.make_trainer(
        shared=shared,
        model=model,
        ref_model=ref_model,
        args=trl_args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=processor,
        peft_config=peft_config,
    )
    check_vision_frozen(trainer.model, vision)
    lm_head, head_counts = use_lm_head(
        trainer, head.lm_head, max_logits_gb=head.lm_head_max_logits_gb, token_metrics=head.token_metrics
    )
    logger.info("LM head of the loss: %s", lm_head)
    table = save_parameter_table(trainer.model, args.output_dir)
    logger.info("trainable parameters:\n%s", table)
    restore_full_checkpoints(trainer)  # resume a full fine-tune from the checkpoint's weights (see there)
    trainer.train(resume_from_checkpoint=resume_value(args.resume_from_checkpoint))
    if shared is not None:
        logger.info("vision features: %s", shared.counts)
        shared.uninstall()

    # Save: model or adapter + processor (pixel limits included), merged model, curves, summary.
    paths = save_final(trainer, processor, args.output_dir, merge_adapter=output.merge_adapter)
    if trainer.accelerator.is_main_process:
        history = trainer.state.log_history
        if output.plot:
            plot_log_history(history, Path(args.output_dir) / "loss.png", keys=dpo_lib.REWARD_KEYS)
        summary = {
            "pairs": len(records),
            "skipped_too_long": len(too_long),
            "steps": trainer.state.global_step,
            "epochs": args.num_train_epochs,
            "processes": trainer.accelerator.num_processes,
            "vision_touch": touch,
            "lm_head": lm_head,
            "lm_head_calls": f"{head_counts.plain} plain, {head_counts.fused} fused",
            "reference": _reference_kind(args.precompute_ref_log_probs, full, continued),
            "vision_features": dataclasses.asdict(shared.counts) if shared is not None else "per forward (TRL)",
            **{k: dpo_lib.last_logged(history, k) for k in dpo_lib.REWARD_KEYS},
            **paths,
        }
        (Path(args.output_dir) / "dpo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(_summary_table(summary))
    # Every rank waits for the main process's saving, then the process group is torn down: a rank that just exits
    # can abort in gloo's background threads ("terminate called without an active exception").
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return 0


def _reference_kind(precomputed: bool, full: bool, continued: bool) -> str:
    if precomputed:
        return "precomputed"
    return "frozen copy" if full else ("frozen adapter copy" if continued else "adapter off")


def _summary_table(summary: dict) -> str:
    width = max(len(k) for k in summary)
    return "\n".join(["DPO summary"] + [f"  {k.ljust(width)}  {v}" for k, v in summary.items()])


if __name__ == "__main__":
    sys.exit(main())
