"""Resuming a full fine-tune restores the checkpoint's weights for every family, whatever key layout it was saved in.

The Trainer alone restores almost nothing of a Qwen2-VL / Qwen2.5-VL checkpoint (saved as ``model.layers.*`` /
``visual.*``, loaded as ``model.language_model.*`` / ``model.visual.*``); the SFT and DPO resume tests check the
whole run, this checks the loading for each family, MoE experts included.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

from postvl.training.outputs import load_full_checkpoint

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_saved_checkpoint_loads_back_into_the_training_model_exactly(tiny_family_model, tmp_path, family):
    trained = AutoModelForImageTextToText.from_pretrained(tiny_family_model(family), dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    trained.save_pretrained(tmp_path / "checkpoint-2")

    fresh = AutoModelForImageTextToText.from_pretrained(tiny_family_model(family), dtype=torch.float32)
    n = load_full_checkpoint(fresh, tmp_path / "checkpoint-2")
    want, got = trained.state_dict(), fresh.state_dict()
    assert n == len(want) and want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_a_checkpoint_missing_a_tensor_is_refused_not_filled_with_random_weights(tiny_family_model, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "checkpoint-2"
    AutoModelForImageTextToText.from_pretrained(tiny_family_model("qwen2_5_vl")).save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]  # a partly written checkpoint
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    model = AutoModelForImageTextToText.from_pretrained(tiny_family_model("qwen2_5_vl"))
    with pytest.raises(RuntimeError, match="does not match the model being trained.*up_proj"):
        load_full_checkpoint(model, folder)
