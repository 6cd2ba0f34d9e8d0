"""The vision touch adds exactly zero and reaches every vision parameter, for every family, with and without LoRA.

One process is enough to prove what each rank does: the tower runs once per modality of the run's data in every
forward, the loss, logits and gradients equal those without the hooks, and the vision gradients of a text-only
batch are exactly zero. The distributed tests (tests/distributed) show the ranks then stay in step.
"""

from __future__ import annotations

import pytest
import torch
from chat_batches import image_batch, text_batch

from postvl.families import FAMILY_NAMES
from postvl.modeling import freeze_vision, load_model_and_processor, vision_tower
from postvl.training.config import VisionArguments
from postvl.training.model import vision_touch_reason
from postvl.vision_touch import install_vision_touch


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _tower_calls(model):
    calls = []
    handle = vision_tower(model).register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_touch_adds_exactly_zero_and_reaches_every_vision_parameter(tiny_family_model, family, lora):
    model, processor = load_model_and_processor(tiny_family_model(family), dtype="float32")
    freeze_vision(model, train_merger=True)
    if lora:
        from peft import LoraConfig, get_peft_model

        from postvl.modeling import lora_target_regex, projector_modules

        config = LoraConfig(r=4, target_modules=lora_target_regex(model, "all-linear"), task_type="CAUSAL_LM",
                            modules_to_save=projector_modules(model, train_merger=True))
        model = get_peft_model(model, config)
    batch = text_batch(processor)
    plain = model(**batch)
    plain.loss.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)

    handles = install_vision_touch(model)  # installed on the peft wrapper: the hooks sit on the inner model
    calls, counter = _tower_calls(model)
    touched = model(**batch)
    assert len(calls) == 2  # a dummy image and a dummy video
    assert torch.equal(touched.logits, plain.logits) and touched.loss.item() == plain.loss.item()
    touched.loss.backward()
    got = _grads(model)
    vision = {n: g for n, g in got.items() if ".visual." in n or n.startswith("visual.")}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and ".visual." in n]
    assert trainable and sorted(vision) == sorted(trainable), "every trainable vision parameter gets a gradient"
    assert all(not g.any() for g in vision.values())  # ... of exactly zero
    assert any("deepstack" in n for n in vision) == (family in ("qwen3_vl", "qwen3_vl_moe"))
    assert got.keys() - vision.keys() == expected.keys()
    for name, grad in expected.items():
        assert torch.equal(got[name], grad), name

    # An image batch: the real image plus a dummy video; the image's own output is unchanged.
    model.zero_grad(set_to_none=True)
    image = image_batch(processor)
    calls.clear()
    with_touch = model(**image).loss
    assert len(calls) == 2
    for h in handles:
        h.remove()
    calls.clear()
    assert model(**image).loss.item() == with_touch.item() and len(calls) == 1
    counter.remove()


def test_touch_per_modality_of_the_run(tiny_model_small):
    model, processor = load_model_and_processor(tiny_model_small, dtype="float32")
    install_vision_touch(model, ("image",))
    calls, _ = _tower_calls(model)
    model(**text_batch(processor))
    assert len(calls) == 1
    calls.clear()
    model(**image_batch(processor))
    assert len(calls) == 1  # image-only data: no dummy video
    with pytest.raises(ValueError, match="modalities"):
        install_vision_touch(model, ("audio",))


class _Args:
    def __init__(self, world_size=1, fsdp="", deepspeed=None):
        self.world_size, self.fsdp, self.deepspeed = world_size, fsdp, deepspeed


def test_auto_turns_the_touch_on_for_several_processes_or_sharding(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert vision_touch_reason("auto", _Args()) is None
    assert vision_touch_reason("auto", _Args(world_size=2)) == "2 processes"
    assert vision_touch_reason("auto", _Args(fsdp="full_shard")) == "FSDP"
    assert vision_touch_reason("auto", _Args(deepspeed="ds.json")) == "DeepSpeed"
    assert vision_touch_reason("off", _Args(world_size=8)) is None
    assert vision_touch_reason("on", _Args()) == "set on"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert vision_touch_reason("auto", _Args()) == "DeepSpeed"
    with pytest.raises(ValueError, match="vision_touch must be one of"):
        VisionArguments(vision_touch="always")
