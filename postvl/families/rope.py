"""The model's own mRoPE index (``get_rope_index``), found through peft / DDP wrappers.

In transformers 5 every supported family's ``get_rope_index(input_ids, mm_token_type_ids, image_grid_thw,
video_grid_thw, ...)`` takes per-token modality types (text 0, image 1, video 2) that the processors emit as
``mm_token_type_ids``; Qwen2.5-VL also takes ``second_per_grid_ts`` (temporal spacing of video patches), while
Qwen3-VL's timestamps live in the text and its temporal positions step by one patch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from postvl.families.registry import get_family


def rope_index_fn(model: Any) -> Callable[..., Any]:
    """The bound ``get_rope_index`` of the module inside ``model`` that defines it (peft and DDP unwrapped)."""
    get_family(model)  # an unsupported model fails here, naming the supported families
    for module in model.modules():
        fn = getattr(type(module), "get_rope_index", None)
        if fn is not None:
            return module.get_rope_index
    raise ValueError(f"{type(model).__name__} has no get_rope_index")


def rope_index(
    model: Any,
    input_ids: Any,
    mm_token_type_ids: Any,
    *,
    image_grid_thw: Any = None,
    video_grid_thw: Any = None,
    second_per_grid_ts: Any = None,
    attention_mask: Any = None,
) -> tuple[Any, Any]:
    """3-row mRoPE position ids and deltas for ``input_ids`` (batch, seq), as the model computes them itself.

    ``second_per_grid_ts`` is passed only to families whose ``get_rope_index`` uses it (Qwen2.5-VL).
    """
    family = get_family(model)
    kwargs: dict[str, Any] = {"image_grid_thw": image_grid_thw, "video_grid_thw": video_grid_thw}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if family.rope_takes_second_per_grid_ts and second_per_grid_ts is not None:
        kwargs["second_per_grid_ts"] = second_per_grid_ts
    return rope_index_fn(model)(input_ids, mm_token_type_ids, **kwargs)
