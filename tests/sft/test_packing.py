"""Exact mRoPE packing: packed loss and gradients equal the unpacked ones; the bin plan is tight and honest."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from postvl.records import image_part, message
from postvl.sft.data import (
    PackedCollator,
    PaddedCollator,
    RecordEncoder,
    RecordList,
    bins_dataset,
    find_rope_index,
    plan_packing,
)


def test_plan_packing_fits_every_bin_and_reports_too_long():
    rng = random.Random(0)
    lengths = [rng.choice([20, 50, 90, 200, 480]) for _ in range(300)] + [513, 1000]
    plan = plan_packing(lengths, 512)
    assert plan.too_long == [300, 301]
    placed = sorted(i for b in plan.bins for i in b)
    assert placed == list(range(300))  # every record that fits is placed exactly once
    assert all(sum(lengths[i] for i in b) <= 512 for b in plan.bins)
    lower_bound = -(-sum(lengths[:300]) // 512)
    assert len(plan.bins) <= lower_bound * 11 / 9 + 1
    assert plan.fill > 0.9


def test_plan_packing_rejects_bad_capacity():
    with pytest.raises(ValueError, match="max_length"):
        plan_packing([1, 2], 0)


def _image(path, colour, size):
    Image.new("RGB", size, colour).save(path)
    return path.name


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    a = _image(root / "a.png", (255, 0, 0), (112, 112))
    b = _image(root / "b.png", (0, 255, 0), (84, 140))
    c = _image(root / "c.png", (0, 0, 255), (56, 56))
    recs = [
        {
            "messages": [message("user", image_part(), "What colour?"), message("assistant", "Red, mostly.")],
            "images": [a],
        },
        {"messages": [message("user", "Say hi."), message("assistant", "Hi there!")], "images": []},
        {
            "messages": [
                message("system", "Be brief."),
                message("user", image_part(), image_part(), "Compare."),
                message("assistant", "Green is taller."),
                message("user", "And?"),
                message("assistant", "Blue is smaller."),
            ],
            "images": [b, c],
        },
        {"messages": [message("user", "2+3?"), message("assistant", "5")], "images": []},
    ]
    return recs, str(root)


def _model_and_collators(tiny_model_small, source, *, dtype=torch.float32, device="cpu", attn=None):
    """The model and both collators (also run in bf16 on CUDA, per attention implementation, by tests/gpu)."""
    extra = {"attn_implementation": attn} if attn else {}
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_small, dtype=dtype, **extra).to(device)
    processor = AutoProcessor.from_pretrained(tiny_model_small)
    encoder = RecordEncoder(processor)
    cfg = model.config
    packed = PackedCollator(source, encoder, find_rope_index(model), cfg.image_token_id, cfg.video_token_id)
    pad = processor.tokenizer.pad_token_id
    padded = PaddedCollator(source, encoder, pad, cfg.image_token_id, cfg.video_token_id)
    return model, processor, packed, padded


def _loss(model, batch):
    logits = model(**batch, use_cache=False).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = _loss(model, batch)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads


def test_encoder_matches_the_processor(tiny_model_small, records):
    recs, root = records
    _, processor, _, _ = _model_and_collators(tiny_model_small, RecordList(recs, root))
    encoder = RecordEncoder(processor)
    record = recs[2]
    example = encoder(record, root)
    chat = [
        {
            "role": m["role"],
            "content": [
                {"type": p["type"], "text": p["text"]} if p["type"] == "text" else {"type": p["type"]}
                for p in m["content"]
            ],
        }
        for m in record["messages"]
    ]
    text = processor.apply_chat_template(chat, tokenize=False)
    images = [Image.open(f"{root}/{p}").convert("RGB") for p in record["images"]]
    expected = processor(text=[text], images=images, return_tensors="pt")
    assert example.input_ids.tolist() == expected["input_ids"][0].tolist()
    assert torch.equal(example.image_grid_thw, expected["image_grid_thw"])
    assert torch.equal(example.pixel_values, expected["pixel_values"])
    trained = processor.tokenizer.decode(example.input_ids[example.labels != -100])
    assert trained == "Green is taller.<|im_end|>Blue is smaller.<|im_end|>"


def test_packed_loss_and_gradients_equal_unpacked(tiny_model_small, records):
    recs, root = records
    model, _, packed, padded = _model_and_collators(tiny_model_small, RecordList(recs, root))
    model.train()
    items = list(bins_dataset([[0, 1], [2, 3]]))
    packed_batch = packed(items)
    padded_batch = padded(items)
    assert packed_batch["position_ids"].shape == (4, 1, packed_batch["input_ids"].shape[1])
    assert "attention_mask" not in packed_batch
    assert int((padded_batch["labels"] != -100).sum()) == int((packed_batch["labels"] != -100).sum())

    loss_packed, grads_packed = _loss_and_grads(model, packed_batch)
    loss_padded, grads_padded = _loss_and_grads(model, padded_batch)
    assert abs(loss_packed - loss_padded) / abs(loss_padded) < 1e-5
    assert grads_packed.keys() == grads_padded.keys()
    for name, g in grads_padded.items():
        err = (grads_packed[name] - g).norm() / g.norm().clamp(min=1e-12)
        assert err < 1e-4, (name, float(err))


def test_without_the_text_row_packing_leaks_across_records(tiny_model_small, records):
    """The reason for 4-row position ids: with 3-row ids the packed loss is wrong (attention crosses records)."""
    recs, root = records
    model, _, packed, padded = _model_and_collators(tiny_model_small, RecordList(recs, root))
    items = [{"bin": [0, 1, 2, 3]}]
    packed_batch = packed(items)
    leaky = dict(packed_batch, position_ids=packed_batch["position_ids"][1:])
    with torch.no_grad():
        right, wrong, reference = (_loss(model, b).item() for b in (packed_batch, leaky, padded(items)))
    right_err, wrong_err = abs(right - reference) / reference, abs(wrong - reference) / reference
    assert right_err < 1e-6
    assert wrong_err > 1e-5 and wrong_err > 100 * right_err


def test_bins_dataset_rows_are_bins():
    ds = bins_dataset([[0, 1], [2], [3]])
    assert len(ds) == 3
    assert ds[0] == {"bin": [0, 1]}
    assert list(ds["bin"]) == [[0, 1], [2], [3]]
