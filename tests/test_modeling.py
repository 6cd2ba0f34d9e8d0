"""Tiny offline models, loading, vision freezing, LoRA targets and the parameter table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from postvl import modeling

USER_IMAGE = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is this?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
]
USER_VIDEO = [
    {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A square moves."}]},
]


def _frames(n: int = 4, size: int = 112) -> list[Image.Image]:
    frames = []
    for i in range(n):
        img = Image.new("RGB", (size, size), (0, 0, 0))
        img.paste((255, 0, 0), (i * 20, 30, i * 20 + 30, 60))
        frames.append(img)
    return frames


@pytest.fixture(scope="module")
def small(tiny_model_small):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_small, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(tiny_model_small)
    return model, processor


def test_tiny_small_is_the_real_architecture_with_full_processor(tiny_model_small, small):
    model, processor = small
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(processor.video_processor).__name__ == "Qwen2VLVideoProcessor"
    assert processor.tokenizer.chat_template == modeling.chat_template()
    assert (Path(tiny_model_small) / "chat_template.jinja").read_text() == modeling.chat_template()
    config = json.loads((Path(tiny_model_small) / "config.json").read_text())
    assert config["text_config"]["num_attention_heads"] * 64 == config["text_config"]["hidden_size"]
    assert sum(config["text_config"]["rope_parameters"]["mrope_section"]) == 32  # head_dim / 2
    # the special tokens the model config names are the tokenizer's own
    tok = processor.tokenizer
    assert config["image_token_id"] == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config["video_token_id"] == tok.convert_tokens_to_ids("<|video_pad|>")
    assert config["vision_start_token_id"] == tok.convert_tokens_to_ids("<|vision_start|>")
    assert modeling.count_parameters(model) < 1_000_000


def test_tiny_small_forward_with_image(small):
    model, processor = small
    text = processor.apply_chat_template(USER_IMAGE, tokenize=False)
    batch = processor(text=[text], images=[Image.new("RGB", (112, 112), (255, 0, 0))], return_tensors="pt")
    # 112x112 at 56^2..112^2 pixels: grid 1x8x8 patches -> 16 merged tokens
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]]
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((batch["input_ids"] == image_id).sum()) == 16
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(out.loss)


def test_tiny_small_forward_with_video(small):
    model, processor = small
    text = processor.apply_chat_template(USER_VIDEO, tokenize=False)
    batch = processor(text=[text], videos=[_frames(4)], return_tensors="pt")
    # 4 frames, temporal patch 2 -> 2 temporal steps of 8x8 patches -> 2 * 16 merged tokens
    assert batch["video_grid_thw"].tolist() == [[2, 8, 8]]
    video_id = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert int((batch["input_ids"] == video_id).sum()) == 32
    out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)


def test_qwen_vocab_has_official_ids(tiny_model_qwen):
    processor = AutoProcessor.from_pretrained(tiny_model_qwen)
    tok = processor.tokenizer
    assert tok("Hello world")["input_ids"] == [9707, 1879]
    ids = {t: tok.convert_tokens_to_ids(t) for t, _ in modeling.QWEN_ADDED_TOKENS}
    assert ids["<|endoftext|>"] == 151643
    assert ids["<|im_start|>"] == 151644
    assert ids["<|im_end|>"] == 151645
    assert ids["<|vision_start|>"] == 151652
    assert ids["<|vision_end|>"] == 151653
    assert ids["<|image_pad|>"] == 151655
    assert ids["<|video_pad|>"] == 151656
    assert ids["<|file_sep|>"] == 151664
    assert len(tok) == 151665
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # special tokens are single ids inside text, and digits are split one by one as in Qwen2
    assert tok("<|im_start|>user\n2024")["input_ids"] == [151644, 872, 198, 17, 15, 17, 19]
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_qwen)
    assert model.config.text_config.vocab_size == 151936
    assert model.config.image_token_id == 151655
    text = processor.apply_chat_template(USER_IMAGE, tokenize=False)
    batch = processor(text=[text], images=[Image.new("RGB", (112, 112), (0, 0, 255))], return_tensors="pt")
    assert torch.isfinite(model(**batch).logits).all()


def test_build_is_deterministic_by_seed(tmp_path, tiny_model_small):
    from safetensors.torch import load_file

    modeling.build_tiny_model(tmp_path / "again", vocab="small", seed=0)
    modeling.build_tiny_model(tmp_path / "other", vocab="small", seed=1)
    a = load_file(Path(tiny_model_small) / "model.safetensors")
    b = load_file(tmp_path / "again" / "model.safetensors")
    c = load_file(tmp_path / "other" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_load_model_and_processor_from_directory_with_pixel_limits(tiny_model_small):
    model, processor = modeling.load_model_and_processor(
        tiny_model_small, dtype="float32", min_pixels=28 * 28, max_pixels=56 * 56
    )
    assert model.dtype == torch.float32
    assert processor.image_processor.size == {"shortest_edge": 784, "longest_edge": 3136}
    batch = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[Image.new("RGB", (112, 112))])
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]  # 56x56 now
    with pytest.raises(ValueError, match="min_pixels"):
        modeling.set_pixel_limits(processor, min_pixels=10_000, max_pixels=100)
    with pytest.raises(ValueError, match="dtype"):
        modeling.load_model_and_processor(tiny_model_small, dtype="float8")


def _visual_names(model) -> dict[str, str]:
    """Parameter name -> group for the vision tower."""
    return {n: g for n, g in modeling.parameter_group_names(model).items() if ".visual." in f".{n}"}


def test_freeze_vision_defaults_freeze_patch_embed_and_blocks_not_merger(tiny_model_small):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_small, dtype=torch.float32)
    frozen = modeling.freeze_vision(model)
    visual = _visual_names(model)
    assert set(frozen) == {n for n, g in visual.items() if g in ("vision patch embed", "vision blocks")}
    params = dict(model.named_parameters())
    assert all(params[n].requires_grad for n, g in visual.items() if g == "merger")
    assert all(p.requires_grad for n, p in params.items() if n not in visual)

    frozen_all = modeling.freeze_vision(model, train_merger=False, unfreeze_last_n_blocks=1)
    assert any(".merger." in n for n in frozen_all)
    assert not any(".blocks.1." in n for n in frozen_all)
    assert all(params[n].requires_grad for n in visual if ".blocks.1." in n)
    with pytest.raises(ValueError, match="unfreeze_last_n_blocks"):
        modeling.freeze_vision(model, unfreeze_last_n_blocks=3)


def test_after_an_optimizer_step_frozen_vision_is_bit_identical_and_language_model_changed(small):
    model, processor = small
    model = AutoModelForImageTextToText.from_pretrained(model.name_or_path, dtype=torch.float32)
    frozen = set(modeling.freeze_vision(model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    text = processor.apply_chat_template(USER_IMAGE, tokenize=False)
    batch = processor(text=[text], images=[Image.new("RGB", (112, 112), (255, 0, 0))], return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = dict(model.named_parameters())
    assert frozen
    for name in frozen:
        assert torch.equal(before[name], after[name]), name
    changed = {n for n in before if n not in frozen and not torch.equal(before[n], after[n])}
    assert any("language_model" in n for n in changed)
    assert any(".merger." in n for n in changed)
    assert "lm_head.weight" in changed


def test_lora_targets_only_the_language_model(tiny_model_small):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_small, dtype=torch.float32)
    pattern = modeling.lora_target_regex(model, "all-linear")
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    import re

    hits = [n for n in names if re.fullmatch(pattern, n)]
    assert hits and all(".language_model." in n for n in hits)
    # the plain name list would also have hit the vision MLP: the regex does not
    assert any(".visual." in n and n.endswith("gate_proj") for n in names)
    assert len(hits) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)

    peft_model = modeling.apply_lora(model, r=4, alpha=8, targets=["q_proj", "v_proj"])
    lora = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    assert len(lora) == 2 * 2 * 2  # layers x modules x (A, B)
    assert not any(".visual." in n for n in lora)
    with pytest.raises(ValueError, match="match no Linear layer"):
        modeling.lora_target_regex(model, ["qkv"])  # a vision-only module name
    with pytest.raises(ValueError, match="vision tower"):
        modeling.assert_no_vision_targets(["model.visual.blocks.0.mlp.up_proj"])


def test_lora_then_freeze_keeps_merger_trainable_and_counts_in_table(tiny_model_small):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_small, dtype=torch.float32)
    peft_model = modeling.apply_lora(model, r=4, alpha=8)
    modeling.freeze_vision(peft_model)
    groups = {g.group: g for g in modeling.parameter_groups(peft_model)}
    assert groups["vision blocks"].trainable == 0 and groups["vision blocks"].frozen > 0
    assert groups["vision patch embed"].trainable == 0
    assert groups["merger"].frozen == 0 and groups["merger"].trainable > 0
    assert groups["language model"].trainable == 0
    assert groups["lora"].trainable == groups["lora"].total > 0
    table = modeling.format_parameter_table(list(groups.values()))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["group", "trainable", "frozen"]
    total = sum(p.numel() for p in peft_model.parameters())
    assert lines[-1].split()[3] == f"{total:,}"


def test_vision_tower_missing_is_a_clear_error():
    with pytest.raises(ValueError, match="no vision tower"):
        modeling.freeze_vision(torch.nn.Linear(2, 2))
