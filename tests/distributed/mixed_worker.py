"""Under ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` (2 CPU processes): rank 0 trains on text-only
batches, rank 1 on image batches, with FSDP2 sharding the vision blocks; ``vision_touch`` keeps rank 0 in step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate_worker import fully_shard_like_plugin, sgd_steps, trunk_unchanged, vision_trunk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for chat_batches
from chat_batches import image_batch, text_batch  # noqa: E402


def batches(processor, rank: int) -> dict:
    """Rank 0: a text-only conversation; rank 1: one with an image (the same two on every step)."""
    return text_batch(processor) if rank == 0 else image_batch(processor)


def load(model_dir: str):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from postvl.modeling import freeze_vision

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    freeze_vision(model)  # the merger trains, the trunk is frozen: the recipe's SFT
    return model, AutoProcessor.from_pretrained(model_dir)


def main(model_dir: str) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model, processor = load(model_dir)
    trunk_before = vision_trunk(model)
    batch = batches(processor, accelerator.process_index)
    if "--no-touch" not in sys.argv:
        from postvl.vision_touch import install_vision_touch

        install_vision_touch(model, ("image",))  # the run's data: text and images
    model = fully_shard_like_plugin(model)
    losses, state = sgd_steps(model, accelerator, lambda step: batch)
    if accelerator.is_main_process:
        same, n_trunk = trunk_unchanged(trunk_before, state)
        print("RESULT " + json.dumps({"losses": losses, "trunk_unchanged": same, "trunk_params": n_trunk}))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
