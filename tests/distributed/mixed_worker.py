"""Under ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` (2 CPU processes): rank 0 trains on text-only
batches, rank 1 on image batches, with FSDP2 sharding the vision blocks; ``vision_touch`` keeps rank 0 in step."""

from __future__ import annotations

import json
import sys

import torch
from accelerate_worker import fully_shard_like_plugin, trunk_unchanged, vision_trunk


def batches(processor, rank: int) -> list[dict]:
    """Rank 0: a text-only conversation; rank 1: one with an image (the same two on every step)."""
    from PIL import Image

    if rank == 0:
        messages = [
            {"role": "user", "content": [{"type": "text", "text": "Say hi."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hi there!"}]},
        ]
        batch = dict(processor(text=[processor.apply_chat_template(messages, tokenize=False)], return_tensors="pt"))
    else:
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Shade?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
        ]
        text = processor.apply_chat_template(messages, tokenize=False)
        batch = dict(processor(text=[text], images=[Image.new("RGB", (112, 112), (200, 0, 0))], return_tensors="pt"))
    batch["labels"] = batch["input_ids"].clone()
    return batch


def load(model_dir: str):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from postvl.modeling import freeze_vision

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    freeze_vision(model)  # the merger trains, the trunk is frozen: the recipe's SFT
    return model, AutoProcessor.from_pretrained(model_dir)


def step_loss(model, batch) -> torch.Tensor:
    return model(**batch).loss


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
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for _ in range(2):
        loss = step_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
    state = {n: p.full_tensor().detach() for n, p in model.named_parameters()}
    if accelerator.is_main_process:
        same, n_trunk = trunk_unchanged(trunk_before, state)
        print("RESULT " + json.dumps({"losses": losses, "trunk_unchanged": same, "trunk_params": n_trunk}))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
