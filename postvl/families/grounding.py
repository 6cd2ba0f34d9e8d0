"""Boxes in a family's convention, converted from the absolute source boxes users hold.

Qwen2.5-VL writes boxes in absolute pixels of the image it sees (after ``smart_resize``); Qwen2-VL and Qwen3-VL in
integers 0..1000 relative to the image. Datasets hold boxes in pixels of the source image, so a record keeps the
source box and the converted one is derived per family (and re-derived when a stage runs another family).
"""

from __future__ import annotations

from collections.abc import Sequence

from postvl.families.base import Family
from postvl.media import PixelConfig, resized_image_size

Box = tuple[int, int, int, int]


def to_family_box(
    box: Sequence[float], source_size: tuple[int, int], family: Family, pixels: PixelConfig | None = None
) -> Box:
    """Convert ``box`` = (x1, y1, x2, y2) in source-image pixels to ``family``'s convention.

    Args:
        box: corners in pixels of the source image (width, height = ``source_size``).
        source_size: (width, height) of the source image.
        family: the target family.
        pixels: the pixel limits the images are resized under (needed for ``absolute``; the family defaults when
            omitted).

    Raises:
        ValueError: the box is not four numbers inside the image with x1 <= x2 and y1 <= y2.
    """
    x1, y1, x2, y2 = _checked(box, source_size)
    width, height = source_size
    if family.grounding == "relative_1000":
        return (_rel(x1, width), _rel(y1, height), _rel(x2, width), _rel(y2, height))
    cfg = pixels or family.pixel_config()
    rh, rw = resized_image_size(height, width, cfg)
    return (round(x1 * rw / width), round(y1 * rh / height), round(x2 * rw / width), round(y2 * rh / height))


def from_family_box(
    box: Sequence[float], source_size: tuple[int, int], family: Family, pixels: PixelConfig | None = None
) -> tuple[float, float, float, float]:
    """The inverse of :func:`to_family_box`: a box in ``family``'s convention back to source-image pixels."""
    if len(box) != 4:
        raise ValueError(f"a box is 4 numbers (x1, y1, x2, y2), got {list(box)!r}")
    width, height = source_size
    x1, y1, x2, y2 = (float(v) for v in box)
    if family.grounding == "relative_1000":
        return (x1 * width / 1000, y1 * height / 1000, x2 * width / 1000, y2 * height / 1000)
    cfg = pixels or family.pixel_config()
    rh, rw = resized_image_size(height, width, cfg)
    return (x1 * width / rw, y1 * height / rh, x2 * width / rw, y2 * height / rh)


def _rel(value: float, extent: int) -> int:
    return min(1000, max(0, round(value * 1000 / extent)))


def _checked(box: Sequence[float], source_size: tuple[int, int]) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError(f"a box is 4 numbers (x1, y1, x2, y2), got {list(box)!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    width, height = source_size
    if not (0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height):
        raise ValueError(f"box {list(box)} is not inside a {width}x{height} image with x1 <= x2, y1 <= y2")
    return x1, y1, x2, y2
