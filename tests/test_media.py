"""postvl.media: safe paths, probing, smart_resize and vision-token counts checked against transformers."""

from __future__ import annotations

import io
import itertools
import os
import random
from pathlib import Path

import pytest

from postvl.media import (
    MediaProber,
    PixelConfig,
    VideoInfo,
    image_token_count,
    is_url,
    probe_image,
    probe_video,
    resolve_media_path,
    sampled_frame_count,
    smart_resize,
    video_token_count,
)
from postvl.records import RecordError

TINY = PixelConfig(min_pixels=56 * 56, max_pixels=112 * 112, video_min_pixels=56 * 56, video_max_pixels=112 * 112)


def _png(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    from PIL import Image

    Image.new("RGB", size, (200, 10, 10)).save(path)
    return path


def _video(path: Path, frames: int, fps: float, size: tuple[int, int] = (64, 48)) -> Path:
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), (i * 7) % 255, np.uint8))
    writer.release()
    return path


# --------------------------------------------------------------------------------------------------------------------
# smart_resize and image tokens


def test_smart_resize_equals_transformers_over_many_sizes():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference

    rng = random.Random(0)
    sides = [1, 2, 13, 14, 27, 28, 29, 55, 56, 57, 100, 111, 112, 113, 224, 300, 333, 448, 1000, 1023, 2048, 4000]
    sizes = list(itertools.product(sides, sides)) + [(rng.randint(1, 5000), rng.randint(1, 5000)) for _ in range(3000)]
    limits = [(56 * 56, 28 * 28 * 1280), (56 * 56, 112 * 112), (256 * 28 * 28, 1280 * 28 * 28), (3136, 3136)]
    checked = 0
    for (h, w), (lo, hi) in itertools.product(sizes, limits):
        if max(h, w) / min(h, w) > 200:
            with pytest.raises(ValueError):
                smart_resize(h, w, 28, lo, hi)
            with pytest.raises(ValueError):
                reference(h, w, 28, lo, hi)
            continue
        assert smart_resize(h, w, 28, lo, hi) == reference(h, w, factor=28, min_pixels=lo, max_pixels=hi), (
            h,
            w,
            lo,
            hi,
        )
        checked += 1
    assert checked > 10_000


@pytest.mark.parametrize("size", [(40, 30), (300, 168), (113, 57), (28, 28), (500, 90), (64, 640)])
@pytest.mark.parametrize("limits", [(56 * 56, 112 * 112), (56 * 56, 28 * 28 * 1280)])
def test_image_token_count_equals_the_image_processor(size, limits):
    from PIL import Image
    from transformers import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor(size={"shortest_edge": limits[0], "longest_edge": limits[1]})
    out = processor(images=[Image.new("RGB", size, (1, 2, 3))], return_tensors="pt")
    cfg = PixelConfig(min_pixels=limits[0], max_pixels=limits[1])
    assert image_token_count(size[1], size[0], cfg) == int(out["image_grid_thw"].prod()) // 4


def test_pixel_config_from_the_tiny_processor(tiny_model_small):
    from transformers import AutoProcessor

    cfg = PixelConfig.from_processor(AutoProcessor.from_pretrained(tiny_model_small), fps=1.0)
    assert (cfg.min_pixels, cfg.max_pixels) == (56 * 56, 112 * 112)
    assert (cfg.video_min_pixels, cfg.video_max_pixels) == (56 * 56, 112 * 112)
    assert cfg.fps == 1.0 and cfg.factor == 28 and cfg.temporal_patch_size == 2


def test_pixel_config_rejects_bad_limits():
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        PixelConfig(min_pixels=10_000, max_pixels=100)
    with pytest.raises(ValueError, match="fps"):
        PixelConfig(fps=0)


# --------------------------------------------------------------------------------------------------------------------
# Paths


def test_relative_and_inside_paths_resolve(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    assert resolve_media_path("a.png", tmp_path) == str((tmp_path / "a.png").resolve())
    assert resolve_media_path(str(tmp_path / "a.png"), tmp_path) == str((tmp_path / "a.png").resolve())
    assert resolve_media_path("../a.png", tmp_path, base=tmp_path / "sub") == str((tmp_path / "a.png").resolve())


@pytest.mark.parametrize("ref", ["../outside.png", "sub/../../outside.png", "/etc/passwd", "link.png"])
def test_paths_escaping_the_root_are_refused(tmp_path, ref):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    _png(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "link.png")
    with pytest.raises(RecordError) as err:
        resolve_media_path(ref, root)
    assert err.value.reason == "media_outside_root"


def test_urls_are_refused_unless_allowed(tmp_path):
    for url in ("http://x/a.png", "https://x/a.png", "s3://b/a.png", "data:image/png;base64,AAAA"):
        assert is_url(url)
        with pytest.raises(RecordError) as err:
            resolve_media_path(url, tmp_path)
        assert err.value.reason == "url_not_allowed"
        assert resolve_media_path(url, tmp_path, allow_urls=True) == url
    assert not is_url("images/a.png") and not is_url("/abs/a.png") and not is_url("C_drive/a.png")


# --------------------------------------------------------------------------------------------------------------------
# Probing


def test_probe_image_reads_the_header(tmp_path):
    from PIL import Image

    _png(tmp_path / "a.png", (41, 17))
    Image.new("RGB", (33, 21)).save(tmp_path / "a.jpg", quality=90)
    assert (probe_image(tmp_path / "a.png").width, probe_image(tmp_path / "a.png").height) == (41, 17)
    info = probe_image(tmp_path / "a.jpg")
    assert (info.width, info.height, info.format) == (33, 21, "JPEG")


def _bad_images(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, "JPEG")
    jpeg = buf.getvalue()
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, "PNG")
    png = buf.getvalue()
    files = {
        "empty.png": (b"", "empty_media"),
        "garbage.png": (b"this is not an image at all" * 10, "corrupt_media"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt_media"),
        "truncated.png": (png[: len(png) // 2], "corrupt_media"),
        "header_only.png": (png[:40], "corrupt_media"),
    }
    out = {}
    for name, (data, reason) in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = (tmp_path / name, reason)
    return out


def test_probe_image_catches_empty_corrupt_and_truncated_files(tmp_path):
    for name, (path, reason) in _bad_images(tmp_path).items():
        with pytest.raises(RecordError) as err:
            probe_image(path)
        assert err.value.reason == reason, name
    with pytest.raises(RecordError) as err:
        probe_image(tmp_path / "missing.png")
    assert err.value.reason == "missing_media"


def test_prober_caches_results_and_errors(tmp_path):
    prober = MediaProber()
    path = str(_png(tmp_path / "a.png"))
    assert prober.image(path) is prober.image(path)
    (tmp_path / "e.png").write_bytes(b"")
    for _ in range(2):
        with pytest.raises(RecordError, match="empty_media"):
            prober.image(str(tmp_path / "e.png"))


# --------------------------------------------------------------------------------------------------------------------
# Videos


def test_probe_video_with_opencv_and_gif(tmp_path):
    from PIL import Image

    info = probe_video(_video(tmp_path / "v.mp4", frames=25, fps=10.0))
    assert (info.num_frames, info.fps, info.width, info.height) == (25, 10.0, 64, 48)
    assert info.duration == 2.5
    frames = [Image.new("RGB", (20, 10), (i * 20, 0, 0)) for i in range(6)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    gif = probe_video(tmp_path / "a.gif")
    assert (gif.num_frames, gif.fps, gif.width, gif.height) == (6, 10.0, 20, 10)


def test_probe_video_rejects_empty_and_corrupt_files(tmp_path):
    (tmp_path / "e.mp4").write_bytes(b"")
    (tmp_path / "g.mp4").write_bytes(b"\x00\x01 not a video" * 50)
    for name, reason in (("e.mp4", "empty_media"), ("g.mp4", "corrupt_media"), ("m.mp4", "missing_media")):
        with pytest.raises(RecordError) as err:
            probe_video(tmp_path / name)
        assert err.value.reason == reason


@pytest.mark.parametrize(
    ("frames", "video_fps", "fps", "max_frames"),
    [(25, 10.0, 2.0, 768), (30, 30.0, 2.0, 768), (41, 8.0, 1.5, 768), (60, 12.0, 4.0, 6), (9, 3.0, 2.0, 768)],
)
def test_video_token_count_equals_the_video_processor(tmp_path, frames, video_fps, fps, max_frames):
    """A real file written with OpenCV, decoded by transformers' OpenCV reader, sampled and patchified by
    Qwen2VLVideoProcessor: the grid it produces is the one we predict from the header alone."""
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.video_utils import load_video

    path = _video(tmp_path / "v.mp4", frames=frames, fps=video_fps, size=(90, 50))
    info = probe_video(path)
    video, metadata = load_video(str(path), backend="opencv")
    size = {"shortest_edge": TINY.video_min_pixels, "longest_edge": TINY.video_max_pixels}
    processor = Qwen2VLVideoProcessor(size=size, fps=fps, max_frames=max_frames, cap_pixels_per_frame=False)
    out = processor(videos=[video], video_metadata=[metadata], do_sample_frames=True, return_tensors="pt")
    cfg = PixelConfig(**{**TINY.__dict__, "fps": fps, "max_frames": max_frames})
    assert video_token_count(info, cfg) == int(out["video_grid_thw"].prod()) // 4
    assert sampled_frame_count(info, cfg) == len(metadata.frames_indices)


def test_video_without_fps_uses_every_frame():
    info = VideoInfo(num_frames=7, fps=5.0, width=56, height=56)
    cfg = PixelConfig(**{**TINY.__dict__, "fps": None})
    assert sampled_frame_count(info, cfg) == 7
    assert video_token_count(info, cfg) == 4 * 4  # ceil(7 / 2) temporal patches x (56/28)^2
