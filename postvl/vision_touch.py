"""Every rank touches the vision tower every step, so that sharded parameter gathers stay in step.

Under FSDP or ZeRO-3 each vision block gathers its parameters when it runs. A rank whose micro-batch has no image
or video never calls the tower while the others do, and the collectives go out of step: the known hang of VLM
fine-tuning (QwenLM/Qwen3-VL#126, hiyouga/LLaMA-Factory#7157, modelscope/ms-swift#2147). ``vision_touch`` runs the
tower (trunk, merger, and the DeepStack mergers where the family has them) on one tiny all-zero image for such a
batch and returns ``0 * sum(outputs)``: added to the loss it changes nothing, but forward and backward reach every
vision parameter on every rank.

The dummy forward must run where the real one does, inside the model's forward before the decoder: collectives are
matched by order, so a touch after the forward (or before the root's own gather) still crosses the ranks' gathers.
:func:`install_vision_touch` does that with two hooks and adds the zero to the decoder's ``inputs_embeds``, so no
loss code changes: one line, ``install_vision_touch(model)``, before training.
"""

from __future__ import annotations

from typing import Any


def has_media(batch: dict[str, Any]) -> bool:
    """True when the batch carries images or videos for the vision tower."""
    return any(batch.get(k) is not None and batch[k].numel() > 0 for k in ("pixel_values", "pixel_values_videos"))


def vision_touch(model: Any, batch: dict[str, Any]) -> Any:
    """A zero that depends on every vision parameter when ``batch`` has no media; ``None`` when it has some.

    Usage (one line in the loss): ``loss = loss + touch`` where ``touch = vision_touch(model, batch)`` is not None.
    """
    import torch

    from postvl.modeling import vision_tower

    if has_media(batch):
        return None
    tower = vision_tower(model)
    cfg = tower.config
    merge = cfg.spatial_merge_size
    channels = getattr(cfg, "in_channels", None) or getattr(cfg, "in_chans", 3)
    param = next(tower.parameters())
    # The smallest image the tower accepts: one temporal patch, one merge window (merge x merge patches).
    pixels = torch.zeros(
        merge * merge, channels * cfg.temporal_patch_size * cfg.patch_size**2, dtype=param.dtype, device=param.device
    )
    grid = torch.tensor([[1, merge, merge]], device=param.device)
    out = tower(pixels, grid_thw=grid)
    return 0.0 * sum(t.float().sum() for t in _tensors(out))


def install_vision_touch(model: Any) -> list[Any]:
    """Hook ``model`` so that a forward without media runs the tower on a dummy image, adding exactly zero.

    Returns the hook handles (``handle.remove()`` undoes it).
    """
    state: dict[str, bool] = {"media": True}

    def outer(_module, args, kwargs):
        state["media"] = has_media(kwargs)
        return None

    def inner(_module, args, kwargs):
        if state["media"] or kwargs.get("inputs_embeds") is None:
            return None
        touch = vision_touch(model, {})
        return args, dict(kwargs, inputs_embeds=kwargs["inputs_embeds"] + touch.to(kwargs["inputs_embeds"].dtype))

    language_model = _language_model(model)
    return [
        model.register_forward_pre_hook(outer, with_kwargs=True),
        language_model.register_forward_pre_hook(inner, with_kwargs=True),
    ]


def _language_model(model: Any) -> Any:
    for module in model.modules():
        if module is not model and hasattr(module, "language_model"):
            return module.language_model
    raise ValueError(f"{type(model).__name__} has no language_model (postvl knows the Qwen-VL layouts)")


def _tensors(out: Any):
    """Every tensor of a tower's output (a tensor, a ModelOutput / dict, or nested tuples; DeepStack lists)."""
    import torch

    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, dict):
        for value in out.values():
            yield from _tensors(value)
    elif isinstance(out, (list, tuple)):
        for value in out:
            yield from _tensors(value)
