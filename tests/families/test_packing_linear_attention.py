"""Exact packing for Qwen3.5's Gated DeltaNet layers: packed == unpacked loss and gradients; the leak without it."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from postvl.families.linear_attention import record_boundaries, reset_linear_attention_per_record
from postvl.records import image_part, message
from postvl.sft.data import PackedCollator, PaddedCollator, bins_dataset, find_rope_index
from postvl.training.encoding import RecordEncoder, RecordList

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    for name, colour, size in (("a.png", (255, 0, 0), (128, 128)), ("b.png", (0, 255, 0), (96, 160))):
        Image.new("RGB", size, colour).save(root / name)
    recs = [
        {
            "messages": [message("user", image_part(), "What colour?"), message("assistant", "Red, mostly.")],
            "images": ["a.png"],
        },
        {"messages": [message("user", "Say hi."), message("assistant", "Hi there!")], "images": []},
        {
            "messages": [
                message("system", "Be brief."),
                message("user", image_part(), "Compare."),
                message("assistant", "Green is taller."),
                message("user", "And?"),
                {"role": "assistant", "content": "Tall.", "reasoning_content": "It is 160 high."},
            ],
            "images": ["b.png"],
        },
        {"messages": [message("user", "2+3?"), message("assistant", "5")], "images": []},
    ]
    return RecordList(recs, str(root))


def _setup(folder, source):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(folder)
    encoder = RecordEncoder(processor)
    cfg = model.config
    packed = PackedCollator(source, encoder, find_rope_index(model), cfg.image_token_id, cfg.video_token_id)
    padded = PaddedCollator(source, encoder, processor.tokenizer.pad_token_id, cfg.image_token_id, cfg.video_token_id)
    return model, packed, padded


def _loss_and_grads(model, batch):
    model.zero_grad()
    logits = model(**batch, use_cache=False).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    loss.backward()
    return loss.item(), {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def _errors(model, packed_batch, padded_batch):
    loss_packed, grads_packed = _loss_and_grads(model, packed_batch)
    loss_padded, grads_padded = _loss_and_grads(model, padded_batch)
    assert grads_packed.keys() == grads_padded.keys()
    # Relative per parameter; a gradient under 1e-5 in norm (the MoE model's A_log / dt_bias: ~3e-6) is compared
    # against 1e-5, since float32 summation order alone moves it by ~1e-9.
    grad_err = max(float((grads_packed[k] - g).norm() / g.norm().clamp(min=1e-5)) for k, g in grads_padded.items())
    return abs(loss_packed - loss_padded) / abs(loss_padded), grad_err


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_5_moe"])
def test_packed_equals_unpacked_with_per_record_resets_and_leaks_without(tiny_family_model, records, name):
    items = list(bins_dataset([[0, 1, 2, 3]]))
    model, packed, padded = _setup(tiny_family_model(name), records)
    model.train()
    packed_batch, padded_batch = packed(items), padded(items)
    assert packed_batch["position_ids"].shape == (4, 1, packed_batch["input_ids"].shape[1])

    # Without the resets, the Gated DeltaNet state of one record flows into the next.
    leak_loss, leak_grad = _errors(model, packed_batch, padded_batch)
    assert reset_linear_attention_per_record(model) == 1  # the tiny model's one linear-attention layer
    assert reset_linear_attention_per_record(model) == 1  # idempotent: no second wrapping
    loss_err, grad_err = _errors(model, packed_batch, padded_batch)
    print(
        f"{name}: packed vs unpacked rel. loss err {loss_err:.2e}, max rel. grad err {grad_err:.2e}; "
        f"without resets {leak_loss:.2e} / {leak_grad:.2e}"
    )
    # MoE: expert matmuls group different token sets packed vs padded (pads are routed too), so float32 summation
    # order differs; the dense model agrees to ~1e-6.
    assert loss_err < 1e-5 and grad_err < 5e-4
    # The random tiny model's loss is dominated by log(vocab), so the leak shows most in the gradients.
    assert leak_loss > 1e-6 and leak_loss > 100 * loss_err
    assert leak_grad > 1e-2 and leak_grad > 1000 * grad_err


def test_resets_survive_gradient_checkpointing(tiny_family_model, records):
    items = list(bins_dataset([[0, 1], [2, 3]]))
    model, packed, padded = _setup(tiny_family_model("qwen3_5"), records)
    reset_linear_attention_per_record(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    loss_err, grad_err = _errors(model, packed(items), padded(items))
    assert loss_err < 1e-5 and grad_err < 1e-4


def test_record_boundaries():
    text = torch.tensor([[0, 1, 2, 0, 1, 0]])
    assert record_boundaries(torch.stack([text, text, text, text])).tolist() == [0, 3, 5, 6]
    assert record_boundaries(torch.arange(5)[None]) is None  # one record: nothing to reset
    assert record_boundaries(None) is None
    assert record_boundaries(torch.stack([text, text, text])) is None  # 3-row mRoPE ids: no text row
    with pytest.raises(ValueError, match="one packed row"):
        record_boundaries(torch.tensor([[0, 1, 0], [0, 1, 2]]))
    with pytest.raises(ValueError, match="start with a record"):
        record_boundaries(torch.tensor([[3, 0, 1, 0]]))


def test_models_without_linear_attention_need_nothing(tiny_family_model):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_family_model("qwen3_vl"))
    assert reset_linear_attention_per_record(model) == 0
