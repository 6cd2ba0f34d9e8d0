"""bf16 SFT packing and DPO with shared vision features on a CUDA GPU, for the tiny model of every family."""

from __future__ import annotations

import pytest
import torch
from gpu_helpers import flash_attention_params, load_test_module

from postvl.families import FAMILY_NAMES
from postvl.io import read_stage
from postvl.sft.data import bins_dataset
from postvl.training.data import manifest_media_root, read_manifest
from postvl.training.encoding import RecordList

_packing = load_test_module("sft/test_packing.py")
_reuse = load_test_module("dpo/test_vision_reuse.py")
records = _packing.records  # the CPU packing test's four records (images of three sizes, text-only, multi-turn)

# bf16 rounds differently with and without padding (other kernels, other reduction orders); fp32 is exact on CPU.
LOSS_RTOL = 2e-2
MIN_GRAD_COSINE = 0.99


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0).item()


@pytest.mark.parametrize("attn", flash_attention_params())
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_bf16_packed_loss_and_gradients_match_unpacked(tiny_family_model, records, family, attn):
    recs, root = records
    model, _, packed, padded = _packing._model_and_collators(
        tiny_family_model(family), RecordList(recs, root), dtype=torch.bfloat16, device="cuda", attn=attn
    )
    assert model.config._attn_implementation == attn
    model.train()
    items = list(bins_dataset([[0, 1, 4], [2, 3]]))  # as the CPU test: images, a video, text-only
    packed_batch = {k: v.cuda() for k, v in packed(items).items()}
    padded_batch = {k: v.cuda() for k, v in padded(items).items()}
    assert "attention_mask" not in packed_batch
    loss_packed, grads_packed = _packing._loss_and_grads(model, packed_batch)
    loss_padded, grads_padded = _packing._loss_and_grads(model, padded_batch)
    assert abs(loss_packed - loss_padded) / abs(loss_padded) < LOSS_RTOL
    assert grads_packed.keys() == grads_padded.keys()
    for name, g in grads_padded.items():
        if g.float().norm() > 0:
            assert _cosine(grads_packed[name], g) > MIN_GRAD_COSINE, name


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_bf16_dpo_shared_vision_features_match_trls_path(family_preference_build, tiny_family_model, family, tmp_path):
    build = family_preference_build(family)
    recs = RecordList(list(read_stage(build, kind="preference")), manifest_media_root(read_manifest(build)))
    kw = {"lora": True, "train_merger": True, "dtype": "bfloat16", "device": "cuda"}
    model = tiny_family_model(family)
    base = _reuse._loss_and_grads(model, recs, tmp_path / "trl", share=False, **kw)
    ours = _reuse._loss_and_grads(model, recs, tmp_path / "ours", share=True, **kw)
    assert abs(ours[0].item() - base[0].item()) <= LOSS_RTOL * abs(base[0].item())
    assert base[1].keys() == ours[1].keys() and any("merger" in n for n in base[1])
    for name in base[1]:
        if base[1][name].float().norm() > 0:
            assert _cosine(ours[1][name], base[1][name]) > MIN_GRAD_COSINE, name
    counts = ours[3]
    assert (counts.trunk_runs, counts.images_encoded, counts.images_reused) == (1, 3, 9)
