"""Model preparation shared by SFT and DPO: LoRA on the language model only, and the check that the ViT is frozen."""

from __future__ import annotations

from typing import Any

from postvl.training.config import VisionArguments


def lora_config(model: Any, model_args: Any, vision: VisionArguments) -> Any | None:
    """A peft ``LoraConfig`` on the language model only (``None`` when ``use_peft`` is off).

    ``lora_target_modules`` from the ModelConfig (default: every Linear of the language model) is turned into a regex
    anchored to the language model, so the vision tower is never adapted. With ``train_merger`` the merger (and
    Qwen3-VL's DeepStack mergers, see ``train_deepstack_mergers``) is fully trained and saved with the adapter
    (``modules_to_save``).
    """
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    from postvl.modeling import lora_target_regex

    if vision.unfreeze_last_n_blocks:
        raise ValueError("unfreeze_last_n_blocks needs full fine-tuning; with use_peft the ViT stays frozen")
    targets = model_args.lora_target_modules or "all-linear"
    if targets in (["all-linear"], "all-linear"):
        targets = "all-linear"
    from postvl.modeling import projector_modules

    modules_to_save = list(model_args.lora_modules_to_save or [])
    for name in projector_modules(
        model, train_merger=vision.train_merger, train_deepstack_mergers=vision.train_deepstack_mergers
    ):
        if name not in modules_to_save:
            modules_to_save.append(name)
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=lora_target_regex(model, targets),
        modules_to_save=modules_to_save or None,
        target_parameters=_target_parameters(model, model_args),
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        task_type="CAUSAL_LM",
    )


def _target_parameters(model: Any, model_args: Any) -> list[str] | None:
    """``lora_target_parameters`` (TRL's ModelConfig): ``[experts]`` for every packed MoE expert parameter of the
    language model (see ``postvl.modeling.lora_expert_parameters``), or those names themselves; nothing else, so a
    parameter LoRA can never reach the vision tower."""
    from postvl.modeling import lora_expert_parameters

    requested = list(getattr(model_args, "lora_target_parameters", None) or [])
    if not requested:
        return None
    allowed = lora_expert_parameters(model)  # raises for a family without experts
    if requested == ["experts"]:
        requested = allowed
    unknown = [name for name in requested if name not in allowed]
    if unknown:
        raise ValueError(f"lora_target_parameters {unknown} are not packed expert parameters; allowed: {allowed}")
    if model_args.lora_dropout:
        raise ValueError("LoRA on packed experts needs lora_dropout 0 (peft cannot apply dropout to a parameter LoRA)")
    return requested


def check_vision_frozen(model: Any, vision: VisionArguments) -> None:
    """Raise if a ViT parameter that should be frozen is trainable (after TRL / peft wrapped the model)."""
    if not vision.freeze_vision:
        return
    from postvl.modeling import parameter_groups

    groups = {g.group: g for g in parameter_groups(model)}
    n_blocks = len(_vision_blocks(model))
    allowed = vision.unfreeze_last_n_blocks
    trainable_blocks = {
        int(name.split(".blocks.")[1].split(".")[0])
        for name, p in model.named_parameters()
        if p.requires_grad and ".visual.blocks." in name
    }
    for group in ("vision patch embed", "vision pos embed"):
        if groups.get(group) and groups[group].trainable:
            raise RuntimeError(f"the ViT's {group[7:]} is trainable although freeze_vision is on")
    if any(b < n_blocks - allowed for b in trainable_blocks):
        raise RuntimeError(f"ViT blocks {sorted(trainable_blocks)} are trainable although freeze_vision is on")


def _vision_blocks(model: Any) -> Any:
    from postvl.modeling import vision_tower

    return vision_tower(model).blocks


def vision_touch_reason(mode: str, args: Any) -> str | None:
    """Why the vision touch is on for this run (``None``: off).

    Args:
        mode: ``VisionArguments.vision_touch``: ``on``, ``off`` or ``auto`` (on when more than one process trains, or
            the run is sharded with FSDP or DeepSpeed, as ``accelerate launch`` or the TRL config says).
        args: the run's TRL ``SFTConfig`` / ``DPOConfig``.
    """
    import os

    if mode == "off":
        return None
    if mode == "on":
        return "set on"
    keys = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
    env = {k: os.environ.get(k, "false").lower() == "true" for k in keys}
    if args.world_size > 1:
        return f"{args.world_size} processes"
    if args.fsdp or env["ACCELERATE_USE_FSDP"]:
        return "FSDP"
    if args.deepspeed or env["ACCELERATE_USE_DEEPSPEED"]:
        return "DeepSpeed"
    return None


def install_vision_touch_for_run(models: list[Any], mode: str, args: Any, modalities: tuple[str, ...]) -> str:
    """Install ``postvl.vision_touch`` on each model (policy, reference) when the run needs it; the state in words.

    ``modalities`` are those of the run's records; a run without media still touches for images, so that a trainable
    merger gets a (zero) gradient on every rank.
    """
    import logging

    from postvl.vision_touch import install_vision_touch

    reason = vision_touch_reason(mode, args)
    if reason is None:
        state = "off"
    else:
        touched = modalities or ("image",)
        for model in models:
            install_vision_touch(model, touched)
        state = f"on ({reason}; {' + '.join(touched)})"
    logging.getLogger(__name__).info(
        "vision touch: %s%s",
        state,
        "" if reason is None else ": a batch without one of these runs the vision tower on a dummy image (adds 0)",
    )
    return state
