"""Model families: the one place that knows how Qwen2-VL, Qwen2.5-VL and Qwen3-VL (dense and MoE) differ.

Every stage asks the family instead of assuming one model::

    from postvl.families import get_family

    family = get_family(model)            # or a config, processor, model folder, or "qwen3_vl"
    family.factor                         # 28 (Qwen2/2.5-VL) or 32 (Qwen3-VL)
    family.pixel_config(max_pixels=...)   # PixelConfig with the family's geometry and defaults
    family.chat_template()                # the official template text
    family.default_system                 # system turn added when a conversation has none (None: never)
    family.video_timestamps               # Qwen3-VL: "<t seconds>" + vision start/end per temporal patch
    family.grounding                      # "absolute" (resized pixels) or "relative_1000"
    family.modules                        # ModuleNames for freezing, LoRA and the parameter table
    family.vllm_mm_processor_kwargs(cfg)  # what vLLM's processor needs to resize as the dataset was built
    rope_index(model, ...)                # the model's own get_rope_index (mRoPE positions for packing)
    to_family_box(box, size, family)      # an absolute source box in the family's convention

Data records the family it was built for (``meta["family"]``, the manifest's pixels); ``check_same_family`` refuses
data built for another family with the rebuild command, and ``data_family`` reads what older data was built for.

An unsupported model raises :class:`UnsupportedFamilyError` naming the supported families; nothing falls back to
Qwen2.5-VL.
"""

from postvl.families.base import Family, Grounding, ModuleNames, PixelDefaults
from postvl.families.grounding import from_family_box, to_family_box
from postvl.families.registry import (
    FAMILIES,
    FAMILY_NAMES,
    LEGACY_FAMILY,
    FamilyMismatchError,
    UnsupportedFamilyError,
    check_same_family,
    data_family,
    get_family,
)
from postvl.families.rope import rope_index, rope_index_fn

__all__ = [
    "FAMILIES",
    "FAMILY_NAMES",
    "Family",
    "FamilyMismatchError",
    "Grounding",
    "LEGACY_FAMILY",
    "ModuleNames",
    "PixelDefaults",
    "UnsupportedFamilyError",
    "check_same_family",
    "data_family",
    "from_family_box",
    "get_family",
    "rope_index",
    "rope_index_fn",
    "to_family_box",
]
