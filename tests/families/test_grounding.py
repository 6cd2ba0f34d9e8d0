"""Boxes in each family's convention, from the absolute source boxes users hold."""

from __future__ import annotations

import pytest

from postvl.families import from_family_box, get_family, to_family_box
from postvl.media import smart_resize


def test_relative_families_write_0_to_1000():
    for name in ("qwen2_vl", "qwen3_vl", "qwen3_vl_moe"):
        assert to_family_box([100, 50, 900, 450], (1000, 500), get_family(name)) == (100, 100, 900, 900)
        assert to_family_box([0, 0, 1000, 500], (1000, 500), get_family(name)) == (0, 0, 1000, 1000)


def test_qwen2_5_vl_writes_pixels_of_the_resized_image():
    family = get_family("qwen2_5_vl")
    cfg = family.pixel_config(min_pixels=56 * 56, max_pixels=112 * 112)
    rh, rw = smart_resize(500, 1000, 28, 56 * 56, 112 * 112)
    assert (rw, rh) == (140, 56)
    assert to_family_box([100, 50, 900, 450], (1000, 500), family, cfg) == (14, 6, 126, 50)
    back = from_family_box((14, 6, 126, 50), (1000, 500), family, cfg)
    assert back == pytest.approx((100, 53.57, 900, 446.43), abs=0.01)


def test_round_trip_and_bad_boxes():
    family = get_family("qwen3_vl")
    assert from_family_box(to_family_box([10, 20, 30, 40], (200, 100), family), (200, 100), family) == (10, 20, 30, 40)
    with pytest.raises(ValueError, match="not inside a 200x100 image"):
        to_family_box([10, 20, 300, 40], (200, 100), family)
    with pytest.raises(ValueError, match="4 numbers"):
        to_family_box([1, 2, 3], (200, 100), family)
