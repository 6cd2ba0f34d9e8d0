"""What a model family is: the facts every stage asks instead of assuming Qwen2.5-VL.

A :class:`Family` is a frozen description (no torch import): geometry and pixel defaults, the chat template and its
default-system rule, the video placeholder rule (Qwen3-VL's per-temporal-patch timestamps), the grounding convention,
module names, and the keys vLLM needs. The registry (``postvl.families.registry``) holds one per supported family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from postvl.media import PixelConfig

# How boxes are written in answers: absolute pixels of the image the model sees (after ``smart_resize``), or
# integers in 0..1000 relative to the image (independent of the resize).
Grounding = Literal["absolute", "relative_1000"]


@dataclass(frozen=True)
class ModuleNames:
    """Attribute paths (from the ``*ForConditionalGeneration`` model) of the parts freezing and LoRA act on.

    Attributes:
        vision: the vision tower.
        patch_embed, pos_embed, blocks, merger, deepstack_mergers: children of ``vision``; ``None`` where the family
            has no such part (only Qwen3-VL has a learned ``pos_embed`` and ``deepstack_merger_list``).
        language_model: the decoder stack.
        lm_head: the output projection.
        experts: the name of the packed-experts module inside each decoder MLP (MoE only), else ``None``.
    """

    vision: str = "model.visual"
    patch_embed: str = "patch_embed"
    pos_embed: str | None = None
    blocks: str = "blocks"
    merger: str = "merger"
    deepstack_mergers: str | None = None
    language_model: str = "model.language_model"
    lm_head: str = "lm_head"
    experts: str | None = None

    def vision_frozen_parts(self) -> tuple[str, ...]:
        """The children of ``vision`` that "ViT frozen" freezes: patch embedding, position embedding, blocks."""
        return tuple(p for p in (self.patch_embed, self.pos_embed, self.blocks) if p)

    def projector_parts(self) -> tuple[str, ...]:
        """The children of ``vision`` that map into the language model (trained with ``train_merger``)."""
        return tuple(p for p in (self.merger, self.deepstack_mergers) if p)


@dataclass(frozen=True)
class PixelDefaults:
    """The released model's processor defaults (``preprocessor_config.json`` / ``video_preprocessor_config.json``)."""

    min_pixels: int
    max_pixels: int
    video_min_pixels: int
    video_max_pixels: int
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768


@dataclass(frozen=True)
class Family:
    """One model family. Obtain it with :func:`postvl.families.get_family`; never construct one in a stage.

    Attributes:
        name: the registry key (``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``, ``qwen3_vl_moe``).
        title: human name for messages and tables.
        model_types: ``config.model_type`` values that resolve to this family.
        architecture: the ``*ForConditionalGeneration`` class name in transformers.
        processor_class: the processor class name in transformers.
        patch_size, merge_size, temporal_patch_size: vision geometry; ``factor = patch_size * merge_size``.
        pixels: processor pixel and frame defaults of the released checkpoints.
        template_file: the official chat template, bundled in ``postvl/assets``.
        default_system: the system turn the template inserts when the conversation has none (``None``: no system
            turn is added).
        video_timestamps: Qwen3-VL writes ``<t seconds>`` and vision start/end around every temporal patch of a video.
        grounding: how boxes are written in answers (see :data:`Grounding`).
        modules: module names for freezing, LoRA and the parameter table.
        mm_token_type_ids: the processor emits ``mm_token_type_ids`` (text 0 / image 1 / video 2) and the model's
            ``get_rope_index`` takes them.
        rope_takes_second_per_grid_ts: ``get_rope_index`` spaces video temporal positions by
            ``second_per_grid_ts`` (Qwen2.5-VL).
        moe: the language model is a mixture of experts.
    """

    name: str
    title: str
    model_types: tuple[str, ...]
    architecture: str
    processor_class: str
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    pixels: PixelDefaults
    template_file: str
    default_system: str | None
    video_timestamps: bool
    grounding: Grounding
    modules: ModuleNames = field(default_factory=ModuleNames)
    mm_token_type_ids: bool = True
    rope_takes_second_per_grid_ts: bool = False
    moe: bool = False

    @property
    def factor(self) -> int:
        """The ``smart_resize`` factor: both resized sides are multiples of it (28 Qwen2/2.5-VL, 32 Qwen3-VL)."""
        return self.patch_size * self.merge_size

    def chat_template(self) -> str:
        """The family's official chat template text (byte-identical to the one shipped with the model)."""
        return resources.files("postvl.assets").joinpath(self.template_file).read_text()

    def pixel_config(self, **overrides: Any) -> PixelConfig:
        """A :class:`postvl.media.PixelConfig` with this family's geometry and defaults; non-``None`` overrides win.

        Geometry (``patch_size``, ``merge_size``, ``temporal_patch_size``) cannot be overridden to another family's:
        a mismatch raises, since token counts would be silently wrong.
        """
        from postvl.media import PixelConfig

        values: dict[str, Any] = {
            "min_pixels": self.pixels.min_pixels,
            "max_pixels": self.pixels.max_pixels,
            "video_min_pixels": self.pixels.video_min_pixels,
            "video_max_pixels": self.pixels.video_max_pixels,
            "fps": self.pixels.fps,
            "min_frames": self.pixels.min_frames,
            "max_frames": self.pixels.max_frames,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        geometry = {"patch_size": self.patch_size, "merge_size": self.merge_size}
        geometry["temporal_patch_size"] = self.temporal_patch_size
        for key, expected in geometry.items():
            if values.get(key, expected) != expected:
                raise ValueError(f"{self.title} has {key}={expected}, not {values[key]}")
        return PixelConfig(**(values | geometry), family=self.name)

    def vllm_mm_processor_kwargs(self, cfg: PixelConfig) -> dict[str, Any]:
        """``mm_processor_kwargs`` for vLLM so that its processor resizes exactly as the dataset was built.

        Flat ``min_pixels`` / ``max_pixels`` reach the image processor; videos get their own limits, since vLLM does
        not copy flat values into ``videos_kwargs``.
        """
        if (cfg.patch_size, cfg.merge_size) != (self.patch_size, self.merge_size):
            raise ValueError(f"pixel limits made for factor {cfg.factor} cannot drive {self.describe()}")
        return {
            "min_pixels": cfg.min_pixels,
            "max_pixels": cfg.max_pixels,
            "videos_kwargs": {"min_pixels": cfg.video_min_pixels, "max_pixels": cfg.video_max_pixels},
        }

    def describe(self) -> str:
        return f"{self.title} ({self.name}: factor {self.factor}, grounding {self.grounding})"
