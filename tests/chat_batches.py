"""Two one-conversation training batches of the tiny models (labels = input ids), shared by the vision-touch tests
in-process and the distributed workers: a text-only one and one with an image."""

from __future__ import annotations


def text_batch(processor) -> dict:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Say hi."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi there!"}]},
    ]
    batch = dict(processor(text=[processor.apply_chat_template(messages, tokenize=False)], return_tensors="pt"))
    batch["labels"] = batch["input_ids"].clone()
    return batch


def image_batch(processor) -> dict:
    from PIL import Image

    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Shade?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    batch = dict(processor(text=[text], images=[Image.new("RGB", (112, 112), (200, 0, 0))], return_tensors="pt"))
    batch["labels"] = batch["input_ids"].clone()
    return batch
