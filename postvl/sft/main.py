"""Supervised fine-tuning with TRL's SFTTrainer: ViT frozen, LoRA optional, exact mRoPE packing.

    postvl sft --config configs/sft/tiny_cpu.yaml [--key value ...]
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m postvl.sft \
        --config configs/sft/qwen2_5_vl_7b_lora.yaml

The YAML holds TRL's ``SFTConfig`` and ``ModelConfig`` keys (every TRL option works) next to ours
(``postvl.training.config``). Data comes from ``postvl build`` folders; labels are the builder's assistant spans.
``packing: true`` packs records into rows of ``max_length`` tokens with per-record mRoPE positions and no attention
across records (TRL refuses packing for vision data); records longer than ``max_length`` are skipped and listed in
``OUTPUT_DIR/skipped.jsonl``, never truncated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def make_parser():
    from trl import ModelConfig, SFTConfig, TrlParser

    from postvl.training.config import DataArguments, LMHeadArguments, OutputArguments, VisionArguments

    return TrlParser((DataArguments, VisionArguments, LMHeadArguments, OutputArguments, SFTConfig, ModelConfig))


def main(argv: list[str] | None = None) -> int:
    from trl import SFTTrainer

    from postvl.families.linear_attention import reset_linear_attention_per_record
    from postvl.modeling import freeze_vision, load_model_and_processor
    from postvl.sft.data import PackedCollator, PaddedCollator, bins_dataset, find_rope_index, plan_packing
    from postvl.training.data import check_dataset_families, load_mixed_records, resolve_pixel_limits
    from postvl.training.encoding import RecordEncoder
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

    data, vision, head, output, args, model_args = make_parser().parse_args_and_config(argv)
    logging.basicConfig(level=logging.INFO if args.process_index == 0 else logging.WARNING)
    if args.max_length is None:
        raise ValueError("max_length must be set: records longer than it are skipped, never truncated")

    # Load: pixel limits first (the dataset's, unless overridden consistently), then model, processor and records.
    min_pixels, max_pixels = resolve_pixel_limits(data.datasets, vision)
    model, processor = load_model_and_processor(
        model_args.model_name_or_path,
        dtype=model_args.dtype or "auto",
        trust_remote_code=args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    check_dataset_families(data.datasets, model)
    if vision.freeze_vision:
        freeze_vision(
            model,
            train_merger=vision.train_merger,
            train_deepstack_mergers=vision.train_deepstack_mergers,
            unfreeze_last_n_blocks=vision.unfreeze_last_n_blocks,
        )
    peft_config = lora_config(model, model_args, vision)
    records = load_mixed_records(data)
    encoder = RecordEncoder(processor)

    # Plan: bins of records by their stored token counts.
    lengths = [
        n if n is not None else len(encoder(records[k], records.media_root_of(k)).input_ids)
        for k, n in enumerate(records.num_tokens())
    ]
    if args.packing:
        plan = plan_packing(lengths, args.max_length)
        bins, too_long = plan.bins, plan.too_long
        logger.info(
            "packing: %d records -> %d rows of <= %d tokens (%.1f%% filled)",
            len(records) - len(too_long),
            len(bins),
            args.max_length,
            100 * plan.fill,
        )
    else:
        too_long = [k for k, n in enumerate(lengths) if n > args.max_length]
        bins = [[k] for k, n in enumerate(lengths) if n <= args.max_length]
    write_skipped(Path(args.output_dir), records, lengths, too_long, args.max_length)
    cfg = model.config
    if args.packing:
        # Linear-attention layers (Qwen3.5's Gated DeltaNet) restart their state at each packed record.
        if n_linear := reset_linear_attention_per_record(model):
            logger.info("packing: %d linear-attention layers restart their state per record", n_linear)
        collator = PackedCollator(records, encoder, find_rope_index(model), cfg.image_token_id, cfg.video_token_id)
    else:
        pad_id = processor.tokenizer.pad_token_id
        collator = PaddedCollator(records, encoder, pad_id, cfg.image_token_id, cfg.video_token_id)

    # Every rank runs the vision tower every forward (sharded gathers / DDP reductions stay in step).
    touch = install_vision_touch_for_run([model], vision.vision_touch, args, records.modalities())

    # Train: TRL sees a ready-made dataset and collator; its own packing / truncation / template swap stay off.
    trl_args = dataclasses.replace(
        args,
        packing=False,
        padding_free=False,
        assistant_only_loss=False,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    trainer = SFTTrainer(
        model=model,
        args=trl_args,
        train_dataset=bins_dataset(bins),
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

    # Save: model or adapter + processor (pixel limits included), merged model, loss curve, summary.
    paths = save_final(trainer, processor, args.output_dir, merge_adapter=output.merge_adapter)
    if trainer.accelerator.is_main_process:
        if output.plot:
            plot_log_history(trainer.state.log_history, Path(args.output_dir) / "loss.png")
        summary = {
            "records": len(records),
            "rows": len(bins),
            "skipped_too_long": len(too_long),
            "steps": trainer.state.global_step,
            "processes": trainer.accelerator.num_processes,
            "vision_touch": touch,
            "lm_head": lm_head,
            "lm_head_calls": f"{head_counts.plain} plain, {head_counts.fused} fused",
            "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
            **paths,
        }
        (Path(args.output_dir) / "sft_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(_summary_table(summary))
    # Every rank waits for the main process's saving, then the process group is torn down: a rank that just exits
    # can abort in gloo's background threads ("terminate called without an active exception").
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return 0


def _summary_table(summary: dict) -> str:
    width = max(len(k) for k in summary)
    return "\n".join(["SFT summary"] + [f"  {k.ljust(width)}  {v}" for k, v in summary.items()])


if __name__ == "__main__":
    sys.exit(main())
