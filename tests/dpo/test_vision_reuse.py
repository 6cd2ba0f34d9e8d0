"""Shared vision features are exact: TRL's own batch, loss and gradients, with each image encoded once per step."""

from __future__ import annotations

import copy

import pytest
import torch
from dpo_models import policy_and_reference
from PIL import Image
from trl import DPOConfig
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

from postvl.dpo.data import PreferenceCollator, PreferenceEncoder, index_dataset
from postvl.dpo.train import frozen_copy, make_trainer
from postvl.dpo.vision_cache import SharedVisionFeatures
from postvl.families import get_family
from postvl.io import read_stage
from postvl.modeling import freeze_vision, load_model_and_processor
from postvl.training.data import manifest_media_root, read_manifest
from postvl.training.encoding import RecordList

RTOL = 1e-5


@pytest.fixture(scope="module")
def records(colour_pairs):
    root = manifest_media_root(read_manifest(colour_pairs))
    return RecordList(list(read_stage(colour_pairs, kind="preference")), root)


def _batch(processor, model, records, indices, *, newline=False):
    encoder = PreferenceEncoder(processor, train_turn_newline=newline)
    collator = PreferenceCollator(records, encoder, processor.tokenizer.pad_token_id, model.config.image_token_id,
                                  model.config.video_token_id)
    return collator([{"index": k} for k in indices])


def _plain(messages):
    return [{"role": m["role"], "content": [{"type": p["type"], **({"text": p["text"]} if p["type"] == "text" else {})}
                                            for p in m["content"]]} for m in messages]


def test_the_collator_reproduces_trls_vision_preference_batch(tiny_model_small, records):
    model, processor = load_model_and_processor(tiny_model_small, dtype="float32")
    ours = _batch(processor, model, records, [0, 1, 2], newline=True)
    examples = [
        {
            "prompt": _plain(r["prompt"]),
            "chosen": _plain(r["chosen"]),
            "rejected": _plain(r["rejected"]),
            "images": [Image.open(f"{records.media_root}/{p}").convert("RGB") for p in r["images"]],
        }
        for r in (records[k] for k in (0, 1, 2))
    ]
    theirs = DataCollatorForVisionPreference(processor)(examples)
    assert set(ours) == set(theirs) - {"token_type_ids"}
    for key in ours:
        assert torch.equal(ours[key], theirs[key].to(ours[key].dtype)), key
    # without the newline after <|im_end|>, exactly one token fewer per row is scored
    plain = _batch(processor, model, records, [0, 1, 2])
    assert torch.equal(plain["input_ids"], ours["input_ids"])
    assert (ours["completion_mask"].sum(1) - plain["completion_mask"].sum(1)).tolist() == [1] * 6


def _loss_and_grads(tiny_model_small, records, tmp_path, *, lora, train_merger, share, loss_type="sigmoid",
                    dtype="float32", device="cpu"):
    """One DPO loss + gradients through postvl's trainer (also run in bf16 on CUDA by tests/gpu)."""
    model, processor = load_model_and_processor(tiny_model_small, dtype=dtype)
    freeze_vision(model, train_merger=train_merger)
    ref = None if lora else frozen_copy(model)
    peft_config = None
    if lora:
        from peft import LoraConfig

        from postvl.modeling import lora_target_regex

        peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=lora_target_regex(model),
                                 modules_to_save=["merger"] if train_merger else None, task_type="CAUSAL_LM")
    shared = SharedVisionFeatures()
    if share:
        for m in (model, ref):
            if m is not None:
                shared.install(m)
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=device == "cpu", bf16=dtype == "bfloat16",
                     gradient_checkpointing=False,
                     report_to="none", remove_unused_columns=False, loss_type=[loss_type], beta=0.5, seed=0)
    trainer = make_trainer(model=model, ref_model=ref, args=args, train_dataset=index_dataset([0, 1, 2]),
                           data_collator=lambda f: f, processing_class=processor, peft_config=peft_config)
    # Move the policy off its start, so that policy and reference differ (a fresh LoRA adapter is a no-op).
    torch.manual_seed(1)
    with torch.no_grad():
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    batch = _batch(processor, model, records, [0, 4, 8])  # three image sizes
    batch = {k: v.to(trainer.model.device) for k, v in batch.items()}
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.detach(), grads, metrics, shared.counts


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize(
    ("lora", "train_merger", "loss_type"),
    [(True, True, "sigmoid"), (True, False, "ipo"), (False, True, "sigmoid")],
    ids=["lora+merger", "lora-frozen-merger-ipo", "full+merger"],
)
def test_shared_vision_features_equal_trls_default_path(tiny_model_small, records, tmp_path, lora, train_merger,
                                                       loss_type):
    base = _loss_and_grads(tiny_model_small, records, tmp_path / "trl", lora=lora, train_merger=train_merger,
                           share=False, loss_type=loss_type)
    ours = _loss_and_grads(tiny_model_small, records, tmp_path / "ours", lora=lora, train_merger=train_merger,
                           share=True, loss_type=loss_type)
    assert _rel(ours[0], base[0]) < RTOL
    assert base[1].keys() == ours[1].keys()
    assert any("merger" in n for n in base[1]) == train_merger
    for name in base[1]:
        assert _rel(ours[1][name], base[1][name]) < RTOL, name
    for key in ("rewards/margins", "rewards/chosen", "logps/rejected"):
        assert ours[2][key] == pytest.approx(base[2][key], rel=RTOL, abs=1e-7), key
    assert base[2]["rewards/chosen"] != 0.0  # the policy differs from the reference
    # 3 pairs x (chosen, rejected) x (policy, reference): 12 image uses, 3 trunk passes' worth of images
    counts = ours[3]
    assert (counts.trunk_runs, counts.images_encoded, counts.images_reused) == (1, 3, 9)


def test_unpaired_images_are_encoded_as_given_and_uninstall_restores_the_tower(tiny_model_small, records):
    model, processor = load_model_and_processor(tiny_model_small, dtype="float32")
    freeze_vision(model, train_merger=False)
    batch = _batch(processor, model, records, [0, 1])
    visual = model.model.visual
    n = len(batch["image_grid_thw"]) // 2
    patches = int(batch["image_grid_thw"][:n].prod(-1).sum())
    pixels, grid = batch["pixel_values"][:patches], batch["image_grid_thw"][:n]  # no repetition: nothing to share
    with torch.no_grad():
        expected = visual(pixels, grid_thw=grid).pooler_output
        shared = SharedVisionFeatures()
        shared.install(model)
        got = visual(pixels, grid_thw=grid).pooler_output
        again = visual(pixels.clone(), grid_thw=grid.clone()).pooler_output  # equal pixels: reused
    assert torch.allclose(got, expected, rtol=RTOL, atol=1e-6) and torch.equal(again, got)
    assert (shared.counts.trunk_runs, shared.counts.images_encoded, shared.counts.images_reused) == (1, n, n)
    shared.uninstall()
    assert "forward" not in vars(visual) and not shared.entries


def test_a_trainable_vit_or_a_different_reference_vit_is_refused(tiny_model_small):
    model, _ = load_model_and_processor(tiny_model_small, dtype="float32")
    freeze_vision(model, unfreeze_last_n_blocks=1)
    with pytest.raises(ValueError, match="needs a frozen ViT"):
        SharedVisionFeatures().install(model)
    freeze_vision(model)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.visual.patch_embed.proj.weight.add_(1.0)
    shared = SharedVisionFeatures()
    shared.install(model)
    with pytest.raises(ValueError, match="reference model's ViT differs"):
        shared.install(other)


def test_precomputed_reference_log_probs_equal_the_per_step_reference(tiny_model_small, records, tmp_path):
    """TRL refuses to precompute reference log-probs for vision rows; over postvl's rows it runs, each image once."""
    from datasets import Dataset

    model, processor = load_model_and_processor(tiny_model_small, dtype="float32")
    freeze_vision(model)
    encoder = PreferenceEncoder(processor)
    collator = PreferenceCollator(records, encoder, processor.tokenizer.pad_token_id, model.config.image_token_id,
                                  model.config.video_token_id)
    shared = SharedVisionFeatures()
    shared.install(model)
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, gradient_checkpointing=False,
                     report_to="none", remove_unused_columns=False, precompute_ref_log_probs=True,
                     precompute_ref_batch_size=4, per_device_train_batch_size=2)
    dataset = Dataset.from_dict({"index": list(range(len(records)))})
    trainer = make_trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                           processing_class=processor)
    assert trainer.ref_model is None  # no reference model is kept for full training
    precomputed = trainer.train_dataset
    assert shared.counts.images_encoded <= len(records) and shared.counts.trunk_runs == 3
    shared.uninstall()

    reference, _ = load_model_and_processor(tiny_model_small, dtype="float32")
    reference.eval()
    for start in range(0, len(records), 4):
        batch = collator([{"index": k} for k in range(start, start + 4)])
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        with torch.no_grad():
            logits = reference(**{k: v for k, v in batch.items() if k != "completion_mask"}).logits[:, :-1]
        logps = torch.gather(logits.log_softmax(-1), 2, labels[:, 1:].clamp_min(0)[..., None])[..., 0]
        sums = (logps * (labels[:, 1:] != -100)).sum(1)
        chosen, rejected = sums.chunk(2)
        rows = precomputed[start : start + 4]
        assert torch.allclose(torch.tensor(rows["ref_chosen_logps"]), chosen, rtol=RTOL)
        assert torch.allclose(torch.tensor(rows["ref_rejected_logps"]), rejected, rtol=RTOL)


# --------------------------------------------------------------------------------------------------------------------
# Every family: the same equality, DeepStack features included


@pytest.fixture(scope="module")
def raw_pairs(colour_pairs):
    """The colour pairs as written (TRL's preference rows), read straight: no build, so any family can encode them."""
    import json
    from pathlib import Path

    raw = Path(colour_pairs).parent / "raw"
    rows = [json.loads(line) for line in (raw / "pairs.jsonl").read_text().splitlines()]
    return RecordList(rows, str(raw))


def _family_loss_and_grads(model_dir, records, tmp_path, *, lora, share):
    model, processor, ref, peft_config = policy_and_reference(model_dir, lora=lora)
    shared = SharedVisionFeatures()
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, gradient_checkpointing=False,
                     report_to="none", remove_unused_columns=False, beta=0.5, seed=0)
    trainer = make_trainer(model=model, ref_model=ref, args=args, train_dataset=index_dataset([0, 1, 2]),
                           data_collator=lambda f: f, processing_class=processor, peft_config=peft_config)
    if share:
        for m in (trainer.model, trainer.ref_model):
            if m is not None:
                shared.install(m)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    batch = _batch(processor, model, records, [0, 1, 2])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, shared.counts


@pytest.mark.parametrize(
    ("family", "lora"),
    [
        ("qwen2_vl", False),
        ("qwen2_5_vl", False),
        ("qwen3_vl", False),
        ("qwen3_vl", True),
        ("qwen3_vl_moe", False),
        ("qwen3_5", False),
        ("qwen3_5_moe", False),
    ],
)
def test_every_family_shares_vision_features_exactly(tiny_family_model, raw_pairs, tmp_path, family, lora):
    model_dir = tiny_family_model(family)
    base = _family_loss_and_grads(model_dir, raw_pairs, tmp_path / "trl", lora=lora, share=False)
    ours = _family_loss_and_grads(model_dir, raw_pairs, tmp_path / "ours", lora=lora, share=True)
    assert _rel(ours[0], base[0]) < RTOL
    assert base[1].keys() == ours[1].keys()
    assert any(".merger." in n for n in base[1])
    deepstack = [n for n in base[1] if "deepstack_merger_list" in n]
    has_deepstack = get_family(family).modules.deepstack_mergers is not None
    assert bool(deepstack) == has_deepstack  # DeepStack mergers train (with train_merger) and ...
    errors = {name: _rel(ours[1][name], base[1][name]) for name in base[1]}
    for name, err in errors.items():
        assert err < RTOL, name
    print(f"{family}{' lora' if lora else ''}: loss rel. error {_rel(ours[0], base[0]):.1e}, max gradient rel. "
          f"error {max(errors.values()):.1e} over {len(errors)} tensors")  # shown with pytest -rP
    assert all(base[1][n].norm() > 0 for n in deepstack)  # ... get their gradients through the shared features
    counts = ours[2]
    assert (counts.trunk_runs, counts.images_encoded, counts.images_reused) == (1, 3, 9)
