"""The recipe's DPO models for the tests that build a trainer by hand (shared vision features, the vision touch)."""

from __future__ import annotations

from typing import Any

from postvl.dpo.train import frozen_copy
from postvl.modeling import freeze_vision, load_model_and_processor


def policy_and_reference(model_dir: str, *, lora: bool) -> tuple[Any, Any, Any, Any]:
    """``(model, processor, ref, peft_config)``: the ViT trunk frozen and the merger trained; the reference is a frozen
    copy, or ``None`` with LoRA (the policy with its adapter off), whose config keeps the projector trainable."""
    model, processor = load_model_and_processor(model_dir, dtype="float32")
    freeze_vision(model, train_merger=True)
    ref = None if lora else frozen_copy(model)
    peft_config = None
    if lora:
        from peft import LoraConfig

        from postvl.modeling import lora_target_regex, projector_modules

        peft_config = LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=lora_target_regex(model),
            modules_to_save=projector_modules(model, train_merger=True),
            task_type="CAUSAL_LM",
        )
    return model, processor, ref, peft_config
