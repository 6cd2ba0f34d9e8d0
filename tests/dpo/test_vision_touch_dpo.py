"""DPO with shared vision features and the vision touch: a batch without media still runs the vision tower, adds
exactly zero, and runs the ViT trunk in the same forwards as a batch with images (sharded gathers stay in step)."""

from __future__ import annotations

import pytest
import torch
from dpo_models import policy_and_reference
from trl import DPOConfig

from postvl.dpo.data import PreferenceCollator, PreferenceEncoder, index_dataset
from postvl.dpo.train import make_trainer
from postvl.dpo.vision_cache import SharedVisionFeatures
from postvl.io import read_stage
from postvl.modeling import vision_tower
from postvl.training.data import manifest_media_root, read_manifest
from postvl.training.encoding import RecordList
from postvl.vision_touch import install_vision_touch


def _text_pairs():
    return RecordList(
        [
            {
                "id": f"text-{i}",
                "prompt": [{"role": "user", "content": [{"type": "text", "text": f"Count to {i + 2}."}]}],
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": " ".join("123456"[: i + 2])}]}],
                "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "No."}]}],
                "images": None,
                "videos": None,
            }
            for i in range(3)
        ],
        None,
    )


def _trainer(model_dir, tmp_path, *, lora, touch):
    model, processor, ref, peft_config = policy_and_reference(model_dir, lora=lora)
    shared = SharedVisionFeatures()
    models = [m for m in (model, ref) if m is not None]
    for m in models:
        shared.install(m)
        if touch:
            install_vision_touch(m, ("image",))
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, gradient_checkpointing=False,
                     report_to="none", remove_unused_columns=False, beta=0.5, seed=0)
    trainer = make_trainer(shared=shared, model=model, ref_model=ref, args=args, train_dataset=index_dataset([0]),
                           data_collator=lambda f: f, processing_class=processor, peft_config=peft_config)
    torch.manual_seed(1)  # move the policy off the reference (a fresh adapter is a no-op)
    with torch.no_grad():
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    trunk_runs = []
    for m in models:
        vision_tower(m).blocks[0].register_forward_pre_hook(lambda *_: trunk_runs.append(1))
    trainer.model.train()
    return trainer, processor, shared, trunk_runs


def _collate(processor, model, records, indices):
    encoder = PreferenceEncoder(processor)
    cfg = model.config
    collator = PreferenceCollator(records, encoder, processor.tokenizer.pad_token_id, cfg.image_token_id,
                                  cfg.video_token_id)
    return collator([{"index": k} for k in indices])


def _step(trainer, batch):
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("lora", [True, False], ids=["lora+merger", "full+merger"])
def test_text_only_dpo_batch_touches_the_tower_adds_zero_and_runs_the_trunk_like_an_image_batch(
    tiny_model_small, colour_pairs, tmp_path, lora
):
    plain, processor, _, plain_runs = _trainer(tiny_model_small, tmp_path / "plain", lora=lora, touch=False)
    touched, _, shared, runs = _trainer(tiny_model_small, tmp_path / "touch", lora=lora, touch=True)
    batch = _collate(processor, plain.model, _text_pairs(), [0, 1, 2])
    assert "pixel_values" not in batch
    loss, grads = _step(plain, batch)
    assert plain_runs == [] and not any(".visual." in n for n in grads)  # without the touch: no vision at all
    for _ in range(2):  # two batches: the dummy is encoded afresh for each, as real images are
        got_loss, got = _step(touched, batch)
        assert got_loss.item() == loss.item()
        vision = {n: g for n, g in got.items() if ".visual." in n}
        assert vision and all("merger" in n for n in vision) and all(not g.any() for g in vision.values())
        assert got.keys() - vision.keys() == grads.keys()
        for name, grad in grads.items():
            assert torch.equal(got[name], grad), name
    # Policy and reference forward per batch: the trunk runs in the first, the second reuses it.
    assert len(runs) == 2 and shared.counts.touches == 4
    assert (shared.counts.trunk_runs, shared.counts.images_encoded, shared.counts.images_reused) == (0, 0, 0)

    # A rank with images does the same: one trunk run per batch, then reuse.
    images = RecordList(list(read_stage(colour_pairs, kind="preference")),
                        manifest_media_root(read_manifest(colour_pairs)))
    image_batch = _collate(processor, plain.model, images, [0, 4, 8])
    runs.clear()
    for _ in range(2):
        _step(touched, image_batch)
    assert len(runs) == 2 and shared.counts.touches == 4
    assert (shared.counts.trunk_runs, shared.counts.images_encoded, shared.counts.images_reused) == (2, 6, 18)
