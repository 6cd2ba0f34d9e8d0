"""The supported families and how a model, config, processor or folder is resolved to one.

Resolution never guesses: an object whose family is not registered raises :class:`UnsupportedFamilyError` naming the
supported ones, so no stage silently renders or counts tokens as Qwen2.5-VL for another model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from postvl.families.base import Family, ModuleNames, PixelDefaults

QWEN2_DEFAULT_SYSTEM = "You are a helpful assistant."

_QWEN2_PIXELS = PixelDefaults(
    # Qwen2VLImageProcessor / Qwen2VLVideoProcessor class defaults (factor 28).
    min_pixels=56 * 56,
    max_pixels=28 * 28 * 1280,
    video_min_pixels=128 * 28 * 28,
    video_max_pixels=28 * 28 * 768,
)
_QWEN3_PIXELS = PixelDefaults(
    # Qwen3-VL's released preprocessor_config.json (images 256*256 .. 4096*4096) and Qwen3VLVideoProcessor's class
    # defaults (factor 32).
    min_pixels=65536,
    max_pixels=16777216,
    video_min_pixels=128 * 32 * 32,
    video_max_pixels=32 * 32 * 768,
)

QWEN2_VL = Family(
    name="qwen2_vl",
    title="Qwen2-VL",
    model_types=("qwen2_vl",),
    architecture="Qwen2VLForConditionalGeneration",
    processor_class="Qwen2VLProcessor",
    patch_size=14,
    merge_size=2,
    temporal_patch_size=2,
    pixels=_QWEN2_PIXELS,
    template_file="qwen2_vl_chat_template.jinja",
    default_system=QWEN2_DEFAULT_SYSTEM,
    video_timestamps=False,
    grounding="relative_1000",
)
QWEN2_5_VL = Family(
    name="qwen2_5_vl",
    title="Qwen2.5-VL",
    model_types=("qwen2_5_vl",),
    architecture="Qwen2_5_VLForConditionalGeneration",
    processor_class="Qwen2_5_VLProcessor",
    patch_size=14,
    merge_size=2,
    temporal_patch_size=2,
    pixels=_QWEN2_PIXELS,
    template_file="qwen2_5_vl_chat_template.jinja",
    default_system=QWEN2_DEFAULT_SYSTEM,
    video_timestamps=False,
    grounding="absolute",
    rope_takes_second_per_grid_ts=True,
)
_QWEN3_MODULES = ModuleNames(pos_embed="pos_embed", deepstack_mergers="deepstack_merger_list")
QWEN3_VL = Family(
    name="qwen3_vl",
    title="Qwen3-VL",
    model_types=("qwen3_vl",),
    architecture="Qwen3VLForConditionalGeneration",
    processor_class="Qwen3VLProcessor",
    patch_size=16,
    merge_size=2,
    temporal_patch_size=2,
    pixels=_QWEN3_PIXELS,
    template_file="qwen3_vl_chat_template.jinja",
    default_system=None,
    video_timestamps=True,
    grounding="relative_1000",
    modules=_QWEN3_MODULES,
)
QWEN3_VL_MOE = Family(
    name="qwen3_vl_moe",
    title="Qwen3-VL-MoE",
    model_types=("qwen3_vl_moe",),
    architecture="Qwen3VLMoeForConditionalGeneration",
    processor_class="Qwen3VLProcessor",
    patch_size=16,
    merge_size=2,
    temporal_patch_size=2,
    pixels=_QWEN3_PIXELS,
    template_file="qwen3_vl_chat_template.jinja",
    default_system=None,
    video_timestamps=True,
    grounding="relative_1000",
    modules=ModuleNames(pos_embed="pos_embed", deepstack_mergers="deepstack_merger_list", experts="experts"),
    moe=True,
)

FAMILIES: dict[str, Family] = {f.name: f for f in (QWEN2_VL, QWEN2_5_VL, QWEN3_VL, QWEN3_VL_MOE)}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)

_BY_MODEL_TYPE = {t: f for f in FAMILIES.values() for t in f.model_types}
_BY_CLASS = {f.architecture: f for f in FAMILIES.values()}
# Qwen3-VL dense and MoE share one processor; a processor alone resolves to the dense entry, which answers every
# processor-side question (template, geometry, tokens) the same way as the MoE one.
_BY_CLASS |= {f.processor_class: f for f in (QWEN2_VL, QWEN2_5_VL, QWEN3_VL)}


class UnsupportedFamilyError(ValueError):
    """A model, config or processor of a family postvl does not support (the message names the supported ones)."""


def _unsupported(what: str) -> UnsupportedFamilyError:
    supported = ", ".join(f"{f.name} ({f.title})" for f in FAMILIES.values())
    return UnsupportedFamilyError(f"{what} is not a supported model family; supported: {supported}")


def get_family(obj: Any) -> Family:
    """Resolve the family of ``obj``.

    Args:
        obj: a :class:`Family`; a family name or ``model_type`` string (``"qwen3_vl"``); a transformers config,
            model (peft / DDP wrappers included) or processor; or a model folder (``config.json`` or, for a
            processor-only folder, ``processor_config.json`` / ``preprocessor_config.json``).

    Raises:
        UnsupportedFamilyError: ``obj`` belongs to no registered family (the message lists the supported ones).
    """
    if isinstance(obj, Family):
        return obj
    if isinstance(obj, Path) or (isinstance(obj, str) and ("/" in obj or Path(obj).is_dir())):
        return _from_folder(Path(obj))
    if isinstance(obj, str):
        family = FAMILIES.get(obj) or _BY_MODEL_TYPE.get(obj)
        if family is None:
            raise _unsupported(f"{obj!r}")
        return family
    config = getattr(obj, "config", None)
    model_type = getattr(config, "model_type", None) if config is not None else getattr(obj, "model_type", None)
    if isinstance(model_type, str):
        if model_type in _BY_MODEL_TYPE:
            return _BY_MODEL_TYPE[model_type]
        if model_type not in ("peft", ""):  # a peft wrapper's config has no model_type of its own
            raise _unsupported(f"model_type {model_type!r} ({type(obj).__name__})")
    for cls in type(obj).__mro__:
        if cls.__name__ in _BY_CLASS:
            return _BY_CLASS[cls.__name__]
    for attr in ("module", "base_model", "model"):  # DDP, peft
        inner = getattr(obj, attr, None)
        if inner is not None and inner is not obj:
            try:
                return get_family(inner)
            except UnsupportedFamilyError:
                pass
    raise _unsupported(f"{type(obj).__name__}")


def _from_folder(folder: Path) -> Family:
    config = folder / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type in _BY_MODEL_TYPE:
            return _BY_MODEL_TYPE[model_type]
        raise _unsupported(f"{folder} (model_type {model_type!r})")
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = folder / name
        if path.is_file():
            processor_class = json.loads(path.read_text()).get("processor_class")
            if processor_class in _BY_CLASS:
                return _BY_CLASS[processor_class]
            raise _unsupported(f"{folder} (processor_class {processor_class!r})")
    raise _unsupported(f"{folder} (no config.json or processor_config.json)")


class FamilyMismatchError(ValueError):
    """Data built for one family used by a stage running another (the message says how to rebuild)."""


# Data written before families existed was built with Qwen2.5-VL's template, geometry and grounding.
LEGACY_FAMILY = "qwen2_5_vl"


def data_family(value: str | None) -> Family:
    """The family recorded in a record's ``meta["family"]`` or a manifest's pixels; ``None`` is data written before
    families were recorded, which was built for Qwen2.5-VL (the only family postvl had)."""
    return get_family(value or LEGACY_FAMILY)


def check_same_family(data: str | None, model: Any, *, what: str = "the dataset") -> Family:
    """The model's family, after checking that ``data`` (a recorded family name) matches it.

    Qwen3-VL dense and MoE share template, geometry, video layout and grounding, so data built for one serves the
    other; Qwen2-VL and Qwen2.5-VL differ in grounding (relative vs absolute boxes), so their data never mixes.

    Raises:
        FamilyMismatchError: naming both families and the rebuild.
    """
    target = get_family(model)
    built = data_family(data)
    if _compatible(built, target):
        return target
    raise FamilyMismatchError(
        f"{what} was built for {built.title} ({built.name}) but the model is {target.title} ({target.name}): its "
        f"rendering, token counts and box coordinates follow {built.title}; rebuild it for this model "
        f"(postvl build ... --model <the {target.title} folder>)"
    )


def _compatible(built: Family, target: Family) -> bool:
    if built.name == target.name:
        return True
    same = ("template_file", "patch_size", "merge_size", "temporal_patch_size", "grounding", "video_timestamps")
    return all(getattr(built, k) == getattr(target, k) for k in same) and built.default_system == target.default_system
