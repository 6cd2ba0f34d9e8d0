"""Vision features computed once per image, shared by chosen and rejected, policy and reference.

With the ViT frozen, a preference pair's image embeddings are the same for its chosen and its rejected sequence and
for the policy and the reference model. TRL's DPOTrainer stacks the chosen rows and then the rejected rows of a batch,
repeating every image for both, and runs that batch through the policy and again through the reference: each image
crosses the vision tower four times per step.

``SharedVisionFeatures.install(model)`` gives a model's vision tower *instance* (never its class) a forward that

1. recognises the stacked layout (the second half of the images equals the first: same grids, same pixels) and runs
   the frozen trunk (patch embedding + blocks) on the first half only;
2. keeps that trunk output for the images of the last batch and hands it to any later call on the same pixels (the
   reference forward of the same step) instead of recomputing it;
3. applies the calling tower's own merger to the trunk output, so a trainable merger (``train_merger``) gets its
   gradients and a reference (adapter disabled, or a frozen copy) uses its own merger; a merger without trainable
   parameters is cached too, per merger module.

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
    reverse: Any  # argsort of the window order: merged tokens back to image order
    merged: dict[int, Any] = field(default_factory=dict)  # id(frozen merger) -> merged tokens in image order


@dataclass
class ShareCounts:
    """How often the trunk ran and how many images it was spared (for logs and tests)."""

    trunk_runs: int = 0
    images_encoded: int = 0
    images_reused: int = 0


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
            ValueError: the tower's patch embedding or blocks have a trainable parameter (the features would not be
                shared exactly), or its frozen trunk differs from that of a tower already installed.
        """
        from postvl.modeling import vision_tower

        tower = vision_tower(model)
        if any(t is tower for t in self._towers):
            return
        trainable = [n for n, p in _trunk_parameters(tower) if p.requires_grad]
        if trainable:
            raise ValueError(
                f"share_vision_features needs a frozen ViT, but {trainable[:3]} are trainable: keep freeze_vision "
                "true and unfreeze_last_n_blocks 0, or set share_vision_features false"
            )
        if self._towers and not _same_trunk(self._towers[0], tower):
            raise ValueError(
                "the reference model's ViT differs from the policy's, so their features cannot be shared: "
                "set share_vision_features false"
            )
        original = tower.forward

        def shared_forward(hidden_states: Any, grid_thw: Any, **kwargs: Any) -> Any:
            if any(kwargs.get(k) for k in _RECORDING_KWARGS):
                return original(hidden_states, grid_thw=grid_thw, **kwargs)
            return self._forward(tower, original, hidden_states, grid_thw)

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

    def _forward(self, tower: Any, original: Any, pixels: Any, grid_thw: Any) -> Any:
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        unique_pixels, unique_grid, copies = _unique_half(pixels, grid_thw)
        entry = self._lookup(unique_pixels, unique_grid)
        if entry is None:
            with torch.no_grad():
                trunk = original(unique_pixels, grid_thw=unique_grid).last_hidden_state
            entry = _Entry(unique_pixels, unique_grid, trunk, _reverse_window_order(tower, unique_grid))
            self.entries = [entry, *self.entries][: self.max_entries]
            self.counts.trunk_runs += 1
            self.counts.images_encoded += len(unique_grid)
            self.counts.images_reused += len(unique_grid) * (copies - 1)
        else:
            self.counts.images_reused += len(unique_grid) * copies

        merger = tower.merger
        frozen_merger = not any(p.requires_grad for p in merger.parameters())
        merged = entry.merged.get(id(merger)) if frozen_merger else None
        if merged is None:
            merged = merger(entry.trunk)[entry.reverse]
            if frozen_merger:
                entry.merged[id(merger)] = merged
        return BaseModelOutputWithPooling(
            last_hidden_state=torch.cat([entry.trunk] * copies) if copies > 1 else entry.trunk,
            pooler_output=torch.cat([merged] * copies) if copies > 1 else merged,
        )

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


def _reverse_window_order(tower: Any, grid_thw: Any) -> Any:
    """The permutation the tower applies after its merger: from window order back to image order."""
    import torch
    from transformers.vision_utils import get_vision_window_index

    window_index, _ = get_vision_window_index(
        grid_thw, spatial_merge_size=tower.spatial_merge_size, window_size=tower.window_size,
        patch_size=tower.patch_size,
    )
    return torch.argsort(window_index.to(grid_thw.device))


def _trunk_parameters(tower: Any) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in tower.named_parameters() if not n.startswith("merger.")]


def _same_trunk(a: Any, b: Any) -> bool:
    import torch

    pa, pb = _trunk_parameters(a), _trunk_parameters(b)
    return len(pa) == len(pb) and all(
        na == nb and x.shape == y.shape and torch.equal(x.detach(), y.detach().to(x.device))
        for (na, x), (nb, y) in zip(pa, pb, strict=True)
    )
