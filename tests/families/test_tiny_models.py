"""Tiny models of every family: built offline, loaded through Auto*, forwarding an image and a video."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from postvl.families import FAMILY_NAMES, get_family, rope_index

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _inputs(processor, family):
    from transformers.video_utils import VideoMetadata

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "hi"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.new("RGB", (100, 80), (200, 30, 30))
    video = np.random.default_rng(0).integers(0, 255, (8, 64, 80, 3), dtype=np.uint8)
    metadata = VideoMetadata(total_num_frames=8, fps=4.0, frames_indices=list(range(8)))
    return processor(
        text=[text],
        images=[image],
        videos=[video],
        return_tensors="pt",
        videos_kwargs={"video_metadata": [metadata], "do_sample_frames": False},
    )


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_tiny_model_forwards_image_and_video(tiny_family_model, name):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = tiny_family_model(name)
    family = get_family(name)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(folder)
    assert processor.image_processor.patch_size == family.patch_size
    assert processor.image_processor.merge_size == family.merge_size
    batch = _inputs(processor, family)
    ids = batch["input_ids"][0].tolist()
    text = processor.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n") is (family.default_system is not None)
    # 8 frames -> 4 temporal patches of (64/f x 80/f merged) tokens; Qwen3-VL adds a timestamp per temporal patch.
    assert ("<0.1 seconds><|vision_start|>" in text) is family.video_timestamps
    assert text.count("<|vision_start|>") == (2 + 4 if family.video_timestamps else 2)
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(out.logits).all()
    positions, _ = rope_index(
        model,
        batch["input_ids"],
        batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        video_grid_thw=batch["video_grid_thw"],
        second_per_grid_ts=batch.get("second_per_grid_ts"),
    )
    assert positions.shape == (3, 1, len(ids))
    # Text before the first image counts up by one in all three rows; vision tokens differ between rows.
    first_image = ids.index(processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    assert positions[:, 0, :first_image].tolist() == [list(range(first_image))] * 3


def test_tiny_qwen3_vl_moe_routes_through_experts(tiny_family_model):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_family_model("qwen3_vl_moe"))
    text_config = model.config.text_config
    assert text_config.num_experts == 4 and text_config.num_experts_per_tok == 2
    experts = model.model.language_model.layers[0].mlp.experts
    assert experts.gate_up_proj.shape == (4, 2 * 32, 128)  # packed: one [experts, out, in] tensor in memory
    # saved as the released checkpoints hold them, [experts, in, out], which vLLM reads and transformers transposes
    from safetensors import safe_open

    with safe_open(f"{tiny_family_model('qwen3_vl_moe')}/model.safetensors", "pt") as saved:
        stored = saved.get_tensor("model.language_model.layers.0.mlp.experts.gate_up_proj")
        assert stored.shape == (4, 128, 64)
        assert torch.equal(stored.transpose(1, 2), experts.gate_up_proj.data)
        assert saved.get_slice("model.language_model.layers.0.mlp.experts.down_proj").get_shape() == [4, 32, 128]


def test_cli_tiny_model_family(tmp_path):
    from postvl.cli import main

    assert main(["tiny-model", str(tmp_path / "m"), "--family", "qwen2_vl"]) == 0
    assert get_family(tmp_path / "m").name == "qwen2_vl"
    with pytest.raises(SystemExit):
        main(["tiny-model", str(tmp_path / "x"), "--family", "llava"])
