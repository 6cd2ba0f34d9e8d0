"""Vision features computed once per image, shared by chosen and rejected, policy and reference.

With the ViT frozen, a preference pair's image embeddings are the same for its chosen and its rejected sequence and
for the policy and the reference model. TRL's DPOTrainer stacks the chosen rows and then the rejected rows of a batch,
repeating every image for both, and runs that batch through the policy and again through the reference: each image
crosses the vision tower four times per step.

``SharedVisionFeatures.install(model)`` gives a model's vision tower *instance* (never its class) a forward that

1. recognises the stacked layout (the second half of the images equals the first: same grids, same pixels) and runs
   the frozen trunk (patch embedding, Qwen3-VL's position embedding, blocks) on the first half only;
2. keeps that trunk output for the images of the batch and hands it to any later call on the same pixels (the
   reference forward of the same step) instead of recomputing it; the trainer clears it at each new batch
   (``postvl.dpo.train.make_trainer``), so every rank runs the trunk in the same forwards;
3. applies the calling tower's own merger to the trunk output, so a trainable merger (``train_merger``) gets its
   gradients and a reference (adapter disabled, or a frozen copy) uses its own merger; a merger without trainable
   parameters is cached too, per merger module. Qwen3-VL's DeepStack mergers (``deepstack_merger_list``) are treated
   the same way: the trunk's hidden states at the DeepStack layers are kept with its output, and each tower's own
   DeepStack mergers turn them into the features added to the decoder's first layers.

It is exact: an image's trunk output depends only on its own pixels and grid (vision attention stays within an image
or a window of it) and the trunk's weights are frozen, so the features are those of the full stacked forward. Reuse
is decided by comparing pixels and grids (a memory compare, negligible next to the ViT), never by object identity.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# Keyword arguments that ask the vision tower for outputs the shared forward does not produce.
_RECORDING_KWARGS = ("output_hidden_states", "output_attentions")


@dataclass
class _Entry:
    """The trunk output of one set of unique images, and merger outputs of frozen mergers on it."""

    pixels: Any  # (patches, C*T*P*P) of the unique images
    grid_thw: Any  # (images, 3)
    trunk: Any  # (patches, hidden), in the tower's window order
    reverse: Any  # argsort of the window order (Qwen2.5-VL): merged tokens back to image order; None: no windows
    output_type: type  # the tower's own output class (Qwen3-VL's carries deepstack_features)
    deepstack: list[Any] = field(default_factory=list)  # hidden states entering each DeepStack merger (Qwen3-VL)
    merged: dict[int, Any] = field(default_factory=dict)  # id(frozen merger) -> merged tokens in image order


@dataclass
class ShareCounts:
    """How often the trunk ran and how many images it was spared (for logs and tests)."""

    trunk_runs: int = 0
    images_encoded: int = 0
    images_reused: int = 0
    touches: int = 0  # dummy forwards of ``postvl.vision_touch`` (not counted above)


class SharedVisionFeatures:
    """A cache of frozen-ViT outputs shared by every vision tower it is installed on (policy, reference).

    Args:
        max_entries: trunk outputs kept (one per distinct image set; images and videos of a batch are two).
    """

    def __init__(self, max_entries: int = 2) -> None:
        self.max_entries = max_entries
        self.entries: list[_Entry] = []
        self.counts = ShareCounts()
        self._towers: list[Any] = []

    # ----------------------------------------------------------------------------------------------------------------
    # Installing

    def install(self, model: Any) -> None:
        """Route ``model``'s vision tower through the shared cache.

        Raises:
            UnsupportedFamilyError: the model belongs to no supported family.
            ValueError: the tower's trunk (patch embedding, position embedding, blocks) has a trainable parameter
                (the features would not be shared exactly), or its frozen trunk differs from that of a tower already
                installed.
        """
        from postvl.families import get_family
        from postvl.modeling import vision_tower

        family = get_family(model)
        tower = vision_tower(model)
        if any(t is tower for t in self._towers):
            return
        projectors = family.modules.projector_parts()
        trainable = [n for n, p in _trunk_parameters(tower, projectors) if p.requires_grad]
        if trainable:
            raise ValueError(
                f"share_vision_features needs a frozen ViT, but {trainable[:3]} are trainable: keep freeze_vision "
                "true and unfreeze_last_n_blocks 0, or set share_vision_features false"
            )
        if self._towers and not _same_trunk(self._towers[0], tower, projectors):
            raise ValueError(
                "the reference model's ViT differs from the policy's, so their features cannot be shared: "
                "set share_vision_features false"
            )
        original = tower.forward
        deepstack_name = family.modules.deepstack_mergers

        def shared_forward(hidden_states: Any, grid_thw: Any, **kwargs: Any) -> Any:
            if any(kwargs.get(k) for k in _RECORDING_KWARGS):
                return original(hidden_states, grid_thw=grid_thw, **kwargs)
            # looked up per call: peft may wrap the mergers (modules_to_save) after this install
            deepstack = list(getattr(tower, deepstack_name)) if deepstack_name else []
            return self._forward(tower, original, deepstack, hidden_states, grid_thw)

        tower.forward = shared_forward  # an instance attribute: the class and other instances are untouched
        tower._postvl_original_forward = original
        self._towers.append(tower)

    def uninstall(self) -> None:
        """Give every tower its own forward back and drop the cache."""
        for tower in self._towers:
            del tower.forward
            del tower._postvl_original_forward
        self._towers.clear()
        self.clear()

    def clear(self) -> None:
        self.entries.clear()

    # ----------------------------------------------------------------------------------------------------------------
    # The shared forward

    def _forward(self, tower: Any, original: Any, deepstack: list[Any], pixels: Any, grid_thw: Any) -> Any:
        import torch

        from postvl.vision_touch import is_touching

        # The vision touch's dummy image goes through the cache like a real one (encoded by the first forward of a
        # batch, reused by the reference's), so a text-only rank runs the trunk exactly when the others do.
        counts = ShareCounts() if is_touching(tower) else self.counts
        self.counts.touches += is_touching(tower)
        unique_pixels, unique_grid, copies = _unique_half(pixels, grid_thw)
        entry = self._lookup(unique_pixels, unique_grid)
        if entry is None:
            captured: list[Any] = [None] * len(deepstack)
            hooks = [m.register_forward_pre_hook(_keep_input(captured, i)) for i, m in enumerate(deepstack)]
            try:
                with torch.no_grad():
                    out = original(unique_pixels, grid_thw=unique_grid)
            finally:
                for hook in hooks:
                    hook.remove()
            if any(c is None for c in captured):
                raise RuntimeError("a DeepStack merger of the vision tower did not run")
            entry = _Entry(
                unique_pixels, unique_grid, out.last_hidden_state, _reverse_window_order(tower, unique_grid),
                type(out), captured,
            )
            self.entries = [entry, *self.entries][: self.max_entries]
            counts.trunk_runs += 1
            counts.images_encoded += len(unique_grid)
            counts.images_reused += len(unique_grid) * (copies - 1)
        else:
            counts.images_reused += len(unique_grid) * copies
        if len(entry.deepstack) != len(deepstack):
            raise RuntimeError("the cached trunk output has another number of DeepStack layers than this tower")

        def repeat(x: Any) -> Any:
            return torch.cat([x] * copies) if copies > 1 else x

        fields = {
            "last_hidden_state": repeat(entry.trunk),
            "pooler_output": repeat(_merge(tower.merger, entry.trunk, entry, entry.reverse)),
        }
        if deepstack:
            fields["deepstack_features"] = [
                repeat(_merge(m, h, entry, None)) for m, h in zip(deepstack, entry.deepstack, strict=True)
            ]
        return entry.output_type(**fields)

    def _lookup(self, pixels: Any, grid_thw: Any) -> _Entry | None:
        import torch

        for entry in self.entries:
            if (
                entry.pixels.shape == pixels.shape
                and entry.pixels.dtype == pixels.dtype
                and entry.pixels.device == pixels.device
                and torch.equal(entry.grid_thw, grid_thw.to(entry.grid_thw.device))
                and torch.equal(entry.pixels, pixels)
            ):
                return entry
        return None


def _unique_half(pixels: Any, grid_thw: Any) -> tuple[Any, Any, int]:
    """``(pixels, grid, 2)`` for the first half when the second half repeats it (chosen/rejected stacking), else
    the inputs themselves with 1 copy."""
    import torch

    n = len(grid_thw)
    if n % 2 == 0 and n > 0 and torch.equal(grid_thw[: n // 2], grid_thw[n // 2 :]):
        patches = int(grid_thw[: n // 2].prod(-1).sum())
        if pixels.shape[0] == 2 * patches and torch.equal(pixels[:patches], pixels[patches:]):
            return pixels[:patches], grid_thw[: n // 2], 2
    return pixels, grid_thw, 1


def _merge(merger: Any, hidden: Any, entry: _Entry, reverse: Any) -> Any:
    """``merger(hidden)`` (back in image order); cached per merger module when it has no trainable parameter."""
    frozen = not any(p.requires_grad for p in merger.parameters())
    if frozen and id(merger) in entry.merged:
        return entry.merged[id(merger)]
    merged = merger(hidden)
    if reverse is not None:
        merged = merged[reverse]
    if frozen:
        entry.merged[id(merger)] = merged
    return merged


def _keep_input(captured: list[Any], index: int) -> Any:
    def hook(module: Any, args: tuple[Any, ...]) -> None:
        captured[index] = args[0]

    return hook


def _reverse_window_order(tower: Any, grid_thw: Any) -> Any:
    """The permutation a windowed tower (Qwen2.5-VL) applies after its merger: from window order back to image order;
    ``None`` for towers without window attention (Qwen2-VL, Qwen3-VL)."""
    import torch

    if getattr(tower, "window_size", None) is None:
        return None
    from transformers.vision_utils import get_vision_window_index

    window_index, _ = get_vision_window_index(
        grid_thw, spatial_merge_size=tower.spatial_merge_size, window_size=tower.window_size,
        patch_size=tower.patch_size,
    )
    return torch.argsort(window_index.to(grid_thw.device))


def _trunk_parameters(tower: Any, projectors: tuple[str, ...]) -> list[tuple[str, Any]]:
    """The tower's parameters outside its projectors (merger, DeepStack mergers): what must be frozen to share."""
    return [(n, p) for n, p in tower.named_parameters() if not any(n.startswith(f"{q}.") for q in projectors)]


def _same_trunk(a: Any, b: Any, projectors: tuple[str, ...]) -> bool:
    import torch

    pa, pb = _trunk_parameters(a, projectors), _trunk_parameters(b, projectors)
    return len(pa) == len(pb) and all(
        na == nb and x.shape == y.shape and torch.equal(x.detach(), y.detach().to(x.device))
        for (na, x), (nb, y) in zip(pa, pb, strict=True)
    )
