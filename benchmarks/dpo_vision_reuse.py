"""DPO step time with shared vision features vs TRL's default path, on image-heavy pairs, in one run.

    python benchmarks/dpo_vision_reuse.py [--steps 8] [--image-size 448] [--batch 2]

A small Qwen2.5-VL whose ViT is a realistic share of the compute (about the 3B model's ratio: the ViT's per-token
cost near a quarter of the LLM's, on four times as many tokens) is built offline in a temporary folder. Each variant
runs LoRA DPO training steps (TRL's ``DPOTrainer.training_step``: policy forward + backward, reference forward with
the adapter disabled; merger trained) on the same batches, in fresh processes, alternating ``trl, shared, trl,
shared, ...`` so machine noise hits both. Reported: median step time per variant and the peak resident memory of
each process (``resource.getrusage`` ``ru_maxrss``: whole-process RSS high-water mark, before and after training).
Then ``speedup: X.XX`` (TRL's step time / the shared one) and the same as a ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VISION = dict(depth=4, hidden_size=128, intermediate_size=512, num_heads=4, patch_size=14, spatial_merge_size=2,
              temporal_patch_size=2, window_size=112, out_hidden_size=256, fullatt_block_indexes=[1, 3],
              tokens_per_second=2)
TEXT = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=8192,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]})


def build_model(out: Path, image_size: int) -> None:
    """A Qwen2.5-VL with the bigger ViT above and the small bundled vocabulary, saved with its processor."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from postvl.modeling import QWEN_ADDED_TOKENS, build_tiny_processor, build_tokenizer, set_pixel_limits

    tokenizer = build_tokenizer("small")
    processor = build_tiny_processor(tokenizer)
    set_pixel_limits(processor, min_pixels=56 * 56, max_pixels=image_size * image_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t, _ in QWEN_ADDED_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(TEXT, vocab_size=(len(tokenizer) + 63) // 64 * 64, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(VISION),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)


def make_records(folder: Path, n: int, image_size: int) -> list[dict]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)).save(
            folder / "images" / f"{i}.png")
        text = lambda s: [{"type": "text", "text": s}]  # noqa: E731
        records.append({
            "id": str(i),
            "prompt": [{"role": "user", "content": [{"type": "image", "text": None}] + text("What is shown here?")}],
            "chosen": [{"role": "assistant", "content": text("A red square.")}],
            "rejected": [{"role": "assistant", "content": text("A blue circle.")}],
            "images": [f"images/{i}.png"],
        })
    return records


def make_trainer_and_batches(model_dir: str, data_dir: str, steps: int, batch: int) -> tuple:
    """LoRA DPO (merger trained) on the benchmark model, and ``steps`` collated batches."""
    import torch
    from peft import LoraConfig
    from trl import DPOConfig

    from postvl.dpo.data import PreferenceCollator, PreferenceEncoder, index_dataset
    from postvl.dpo.train import make_trainer
    from postvl.modeling import freeze_vision, load_model_and_processor, lora_target_regex
    from postvl.training.encoding import RecordList

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    records = RecordList(json.loads((Path(data_dir) / "records.json").read_text()), data_dir)
    model, processor = load_model_and_processor(model_dir, dtype="float32")
    freeze_vision(model, train_merger=True)
    collator = PreferenceCollator(records, PreferenceEncoder(processor), processor.tokenizer.pad_token_id,
                                  model.config.image_token_id, model.config.video_token_id)
    args = DPOConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False, gradient_checkpointing=False,
                     report_to="none", remove_unused_columns=False, seed=0)
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=lora_target_regex(model), modules_to_save=["merger"],
                             task_type="CAUSAL_LM")
    trainer = make_trainer(model=model, args=args, train_dataset=index_dataset(list(range(len(records)))),
                           data_collator=collator, processing_class=processor, peft_config=peft_config)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train, which these loops stand in for
    batches = [collator([{"index": (s * batch + j) % len(records)} for j in range(batch)]) for s in range(steps)]
    return model, trainer, batches


def step(trainer, inputs) -> tuple[float, float]:
    """One training step (policy forward + backward, reference forward): seconds and loss; no optimizer update."""
    start = time.perf_counter()
    loss = trainer.training_step(trainer.model, inputs).item()
    seconds = time.perf_counter() - start
    trainer.model.zero_grad(set_to_none=True)
    return seconds, loss


def measure_memory(model_dir: str, data_dir: str, variant: str, batch: int) -> dict:
    """In a fresh process: peak RSS before and after three training steps of one variant."""
    from postvl.dpo.vision_cache import SharedVisionFeatures

    model, trainer, batches = make_trainer_and_batches(model_dir, data_dir, 3, batch)
    if variant == "shared":
        SharedVisionFeatures().install(model)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for inputs in batches:
        step(trainer, inputs)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_before_mib": before / 1024, "rss_peak_mib": after / 1024}


def measure_time(model_dir: str, data_dir: str, steps: int, batch: int) -> dict:
    """In this process: the same batches through both variants, alternating step by step (noise hits both)."""
    from postvl.dpo.vision_cache import SharedVisionFeatures

    model, trainer, batches = make_trainer_and_batches(model_dir, data_dir, steps + 1, batch)
    shared = SharedVisionFeatures()
    out: dict[str, dict[str, list[float]]] = {v: {"step_s": [], "loss": []} for v in ("trl", "shared")}
    for k, inputs in enumerate(batches):
        for variant in ("trl", "shared") if k % 2 == 0 else ("shared", "trl"):
            if variant == "shared":
                shared.install(model)
            seconds, loss = step(trainer, inputs)
            shared.uninstall()
            if k:  # the first batch warms up
                out[variant]["step_s"].append(seconds)
                out[variant]["loss"].append(loss)
    out["tokens"] = int(batches[0]["attention_mask"].sum())
    out["image_tokens"] = int((batches[0]["input_ids"] == model.config.image_token_id).sum())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "DATA", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("MEMORY " + json.dumps(measure_memory(*args.child, batch=args.batch)))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, data_dir = Path(tmp) / "model", Path(tmp) / "data"
        build_model(model_dir, args.image_size)
        records = make_records(data_dir, args.batch * (args.steps + 1), args.image_size)
        (data_dir / "records.json").write_text(json.dumps(records))
        memory = {}
        for variant in ("trl", "shared"):
            proc = subprocess.run(
                [sys.executable, __file__, "--batch", str(args.batch), "--child", str(model_dir), str(data_dir),
                 variant],
                capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
            )
            if proc.returncode != 0:
                raise RuntimeError(f"{variant} memory run failed:\n{proc.stderr[-3000:]}")
            line = next(x for x in proc.stdout.splitlines() if x.startswith("MEMORY "))
            memory[variant] = json.loads(line[len("MEMORY "):])
        timing = measure_time(str(model_dir), str(data_dir), args.steps, args.batch)

    print(f"pairs/step {args.batch}, image {args.image_size}px, {timing['tokens']} tokens/step "
          f"({timing['image_tokens']} image tokens), LoRA + trained merger, {args.steps} steps per variant, "
          f"{os.environ.get('BENCH_THREADS', '1')} thread(s)")
    median = {}
    for variant in ("trl", "shared"):
        median[variant] = statistics.median(timing[variant]["step_s"])
        mem = memory[variant]
        print(f"{variant:>6}: step {median[variant]:.3f} s (median), peak RSS {mem['rss_peak_mib']:.0f} MiB "
              f"(+{mem['rss_peak_mib'] - mem['rss_before_mib']:.0f} MiB over the loaded model during 3 steps)")
    diff = max(abs(a - b) for a, b in zip(timing["trl"]["loss"], timing["shared"]["loss"], strict=True))
    print(f"max loss difference between the variants over {args.steps} batches: {diff:.2e}")
    print(f"speedup: {median['trl'] / median['shared']:.2f}")
    print(f"RESULT dpo_shared_vision_vs_trl {median['trl'] / median['shared']:.2f} x | median DPO step time, TRL's "
          f"default path ({median['trl']:.3f} s) / vision features shared ({median['shared']:.3f} s), same losses")
    return 0


if __name__ == "__main__":
    sys.exit(main())
