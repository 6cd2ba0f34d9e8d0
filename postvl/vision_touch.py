"""Every rank touches the vision tower every step, so that sharded parameter gathers stay in step.

Under FSDP or ZeRO-3 each vision block gathers its parameters when it runs. A rank whose micro-batch has no image
or video never calls the tower while the others do, and the collectives go out of step: the known hang of VLM
fine-tuning (QwenLM/Qwen3-VL#126, hiyouga/LLaMA-Factory#7157, modelscope/ms-swift#2147). Under DDP the same rank
produces no gradient for a trainable merger and the reducer waits for it. ``vision_touch`` runs the tower (trunk,
merger, and the DeepStack mergers where the family has them) on one tiny all-zero image for such a batch and returns
``0 * sum(outputs)``: added to the loss it changes nothing, but forward and backward reach every vision parameter on
every rank.

The Qwen-VL models call the tower once for a batch's images and once more for its videos. When the training data
holds both, a rank with images only would run the tower once while a rank with images and videos runs it twice, so
:func:`install_vision_touch` takes the run's ``modalities`` and makes every forward call the tower exactly once per
modality: a dummy call for each one the batch lacks.

The dummy forward must run where the real one does, inside the model's forward before the decoder: collectives are
matched by order, so a touch after the forward (or before the root's own gather) still crosses the ranks' gathers.
:func:`install_vision_touch` does that with two hooks on the vision-language module (the one holding ``visual`` and
``language_model``, under any peft or trainer wrapper) and adds the zero to the decoder's ``inputs_embeds``, so no
loss code changes: one line, ``install_vision_touch(model)``, before the trainer is built.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

MODALITIES = ("image", "video")
_PIXELS = {"image": "pixel_values", "video": "pixel_values_videos"}


def has_media(batch: dict[str, Any], modalities: Sequence[str] = MODALITIES) -> bool:
    """True when the batch carries pixels of any of ``modalities`` for the vision tower."""
    return any(_present(batch, m) for m in modalities)


def vision_touch(model: Any, batch: dict[str, Any]) -> Any:
    """A zero that depends on every vision parameter when ``batch`` has no media; ``None`` when it has some.

    Usage (one line in the loss): ``loss = loss + touch`` where ``touch = vision_touch(model, batch)`` is not None.
    """
    if has_media(batch):
        return None
    return dummy_vision_zero(model)


def dummy_vision_zero(model: Any, fill: float = 0.0) -> Any:
    """Run the vision tower of ``model`` on the smallest image it accepts, every pixel ``fill``; ``0 * sum(outputs)``.

    The dummies of one forward get distinct fills, so a tower wrapper that reuses the features of equal pixels (DPO's
    ``SharedVisionFeatures``) encodes each of them, as it would the batch's real images and videos.
    """
    import torch

    from postvl.modeling import vision_tower

    tower = vision_tower(model)
    cfg = tower.config
    merge = cfg.spatial_merge_size
    channels = getattr(cfg, "in_channels", None) or getattr(cfg, "in_chans", 3)
    param = next(tower.parameters())
    # The smallest image the tower accepts: one temporal patch, one merge window (merge x merge patches).
    pixels = torch.full(
        (merge * merge, channels * cfg.temporal_patch_size * cfg.patch_size**2),
        fill,
        dtype=param.dtype,
        device=param.device,
    )
    grid = torch.tensor([[1, merge, merge]], device=param.device)
    with touching(tower):
        out = tower(pixels, grid_thw=grid)
    return 0.0 * sum(t.float().sum() for t in _tensors(out))


@contextmanager
def touching(tower: Any) -> Iterator[None]:
    """Mark ``tower`` as running a dummy forward (``is_touching``), so a tower wrapper can count it apart."""
    tower._postvl_touching = True
    try:
        yield
    finally:
        del tower._postvl_touching


def is_touching(tower: Any) -> bool:
    return bool(getattr(tower, "_postvl_touching", False))


def install_vision_touch(model: Any, modalities: Sequence[str] = MODALITIES) -> list[Any]:
    """Hook ``model`` so that each forward calls the vision tower once per modality of ``modalities``: a batch
    without that modality runs the tower on a dummy image instead, adding exactly zero.

    Args:
        model: a model of a supported family, or a peft / trainer wrapper of one.
        modalities: the modalities of the run's data (``image``, ``video``): what some rank's batch may carry.

    Returns:
        The hook handles (``handle.remove()`` undoes it).
    """
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {list(modalities)}")
    modalities = tuple(dict.fromkeys(modalities))
    vl_model = vision_language_module(model)
    state = {"missing": 0}

    def outer(_module, args, kwargs):
        state["missing"] = sum(not _present(kwargs, m) for m in modalities)
        return None

    def inner(_module, args, kwargs):
        missing, state["missing"] = state["missing"], 0  # one decoder call per vision-language forward
        if not missing or kwargs.get("inputs_embeds") is None:
            return None
        embeds = kwargs["inputs_embeds"]
        touch = sum(dummy_vision_zero(vl_model, fill=float(k)) for k in range(missing))
        return args, dict(kwargs, inputs_embeds=embeds + touch.to(embeds.dtype))

    return [
        vl_model.register_forward_pre_hook(outer, with_kwargs=True),
        vl_model.language_model.register_forward_pre_hook(inner, with_kwargs=True),
    ]


def vision_language_module(model: Any) -> Any:
    """The module that holds both ``visual`` and ``language_model`` (``model.model`` in transformers 5)."""
    for module in model.modules():
        children = module._modules
        if "visual" in children and "language_model" in children:
            return module
    raise ValueError(
        f"{type(model).__name__} has no module with both a visual tower and a language_model "
        "(postvl knows the Qwen-VL layouts)"
    )


def _present(batch: dict[str, Any], modality: str) -> bool:
    value = batch.get(_PIXELS[modality])
    return value is not None and value.numel() > 0


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
