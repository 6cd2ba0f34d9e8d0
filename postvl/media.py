"""Media: safe path resolution, cheap image/video probing, ``smart_resize`` and vision-token counts.

Everything here answers "how big is this image or video, and how many LLM tokens will it cost?" without decoding
pixels: an image's size comes from its header (PIL opens lazily), a video's frame count, fps and size from its
container (OpenCV, or PIL for animated GIF). The token counts follow the Qwen2-VL / Qwen2.5-VL processors in
transformers exactly (``smart_resize`` with ``factor = patch_size * merge_size``; video frames sampled as
``Qwen2VLVideoProcessor.sample_frames`` does), and the tests check them against the real processors.

A bad file is never a crash: the functions raise ``RecordError`` with a reason code (``missing_media``,
``empty_media``, ``corrupt_media``, ``media_outside_root``, ``url_not_allowed``, ``extreme_aspect_ratio``) that the
build reports as a rejected record.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postvl.records import RecordError

# Qwen2.5-VL defaults (the model's preprocessor_config.json / Qwen2VLVideoProcessor class defaults).
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280
DEFAULT_VIDEO_MIN_PIXELS = 128 * 28 * 28
DEFAULT_VIDEO_MAX_PIXELS = 28 * 28 * 768
DEFAULT_FPS = 2.0
DEFAULT_MIN_FRAMES = 4
DEFAULT_MAX_FRAMES = 768
MAX_ASPECT_RATIO = 200

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpeg", ".mpg", ".gif"})
_URL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*://|data:)")


@dataclass(frozen=True)
class PixelConfig:
    """Pixel and frame limits shared by build, sampling and training (one setting, saved in the manifest).

    Attributes:
        min_pixels, max_pixels: image pixel budget (``size.shortest_edge`` / ``size.longest_edge`` of the image
            processor).
        video_min_pixels, video_max_pixels: per-frame pixel budget of the video processor.
        fps: frames sampled per second of video; ``None`` uses every frame (the processor's
            ``do_sample_frames=False``).
        min_frames, max_frames: bounds on the number of sampled frames.
        patch_size, merge_size, temporal_patch_size: the vision tower's geometry.
        family: the model family (``postvl.families``) these limits were made for; ``None`` in configs written before
            families existed (read as Qwen2.5-VL geometry, which is what those configs hold).
    """

    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    video_min_pixels: int = DEFAULT_VIDEO_MIN_PIXELS
    video_max_pixels: int = DEFAULT_VIDEO_MAX_PIXELS
    fps: float | None = DEFAULT_FPS
    min_frames: int = DEFAULT_MIN_FRAMES
    max_frames: int = DEFAULT_MAX_FRAMES
    patch_size: int = PATCH_SIZE
    merge_size: int = MERGE_SIZE
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE
    family: str | None = None

    def __post_init__(self) -> None:
        errors = []
        if not 0 < self.min_pixels <= self.max_pixels:
            errors.append(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}")
        if not 0 < self.video_min_pixels <= self.video_max_pixels:
            errors.append(
                f"need 0 < video_min_pixels <= video_max_pixels, got {self.video_min_pixels} and "
                f"{self.video_max_pixels}"
            )
        if self.fps is not None and self.fps <= 0:
            errors.append(f"fps must be positive (or None for every frame), got {self.fps}")
        if not 0 < self.min_frames <= self.max_frames:
            errors.append(f"need 0 < min_frames <= max_frames, got {self.min_frames} and {self.max_frames}")
        if errors:
            raise ValueError("; ".join(errors))

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @classmethod
    def from_processor(cls, processor: Any, **overrides: Any) -> PixelConfig:
        """Read the limits from a supported family's processor; ``overrides`` that are not ``None`` win.

        Raises:
            UnsupportedFamilyError: the processor belongs to no supported family.
            ValueError: the video processor caps pixels per frame (``cap_pixels_per_frame=True``), which these
                token counts do not follow.
        """
        from postvl.families import get_family

        values: dict[str, Any] = {"family": get_family(processor).name}
        image_processor = getattr(processor, "image_processor", processor)
        size = dict(getattr(image_processor, "size", None) or {})
        values["min_pixels"] = size.get("shortest_edge", getattr(image_processor, "min_pixels", None))
        values["max_pixels"] = size.get("longest_edge", getattr(image_processor, "max_pixels", None))
        values["patch_size"] = getattr(image_processor, "patch_size", None)
        values["merge_size"] = getattr(image_processor, "merge_size", None)
        values["temporal_patch_size"] = getattr(image_processor, "temporal_patch_size", None)
        video_processor = getattr(processor, "video_processor", None)
        if video_processor is not None:
            vsize = dict(getattr(video_processor, "size", None) or {})
            values["video_min_pixels"] = vsize.get("shortest_edge")
            values["video_max_pixels"] = vsize.get("longest_edge")
            values["fps"] = getattr(video_processor, "fps", None)
            values["min_frames"] = getattr(video_processor, "min_frames", None)
            values["max_frames"] = getattr(video_processor, "max_frames", None)
            if getattr(video_processor, "cap_pixels_per_frame", None):
                raise ValueError(
                    "the video processor has cap_pixels_per_frame=True; postvl counts video tokens as transformers "
                    "5.19 does by default (no per-frame cap): set it to False"
                )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{k: v for k, v in values.items() if v is not None})


# --------------------------------------------------------------------------------------------------------------------
# Paths


def is_url(ref: str) -> bool:
    """True for ``http://``, ``https://``, ``s3://``, ``file://``, ``data:`` and any other ``scheme://`` reference."""
    return bool(_URL.match(ref))


def resolve_media_path(ref: str, root: str | Path, *, base: str | Path | None = None, allow_urls: bool = False) -> str:
    """Resolve a media reference against ``root`` without opening it.

    Relative paths are joined to ``base`` (default: ``root``); the result, like any absolute path, must lie inside
    ``root``. The check runs on the fully resolved path (``..`` and symlinks followed), so nothing outside the root
    is ever opened.

    Args:
        ref: the path (or URL) as written in the data.
        root: the media root.
        base: the folder relative paths start from (the input file's folder), inside ``root``.
        allow_urls: keep URLs as they are instead of refusing them.

    Returns:
        The resolved absolute path, or the URL itself when URLs are allowed.

    Raises:
        RecordError: ``url_not_allowed`` or ``media_outside_root``.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise RecordError("missing_media", f"media reference {ref!r} is not a non-empty string")
    if is_url(ref):
        if allow_urls:
            return ref
        raise RecordError(
            "url_not_allowed", f"{ref[:120]!r} is a URL; download it under the media root or pass --allow-urls"
        )
    root_path = Path(root).resolve()
    path = Path(ref).expanduser()
    if not path.is_absolute():
        path = (Path(base).resolve() if base is not None else root_path) / path
    resolved = path.resolve()
    if not resolved.is_relative_to(root_path):
        raise RecordError("media_outside_root", f"{ref!r} resolves to {resolved}, outside the media root {root_path}")
    return str(resolved)


def relative_to_root(path: str, root: str | Path) -> str:
    """The path as stored in a record: relative to the media root (URLs unchanged)."""
    if is_url(path):
        return path
    return Path(path).relative_to(Path(root).resolve()).as_posix()


# --------------------------------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str


def probe_image(path: str | Path) -> ImageInfo:
    """Size and format from the file header, plus a cheap integrity check; never decodes pixels.

    The check catches empty files, unreadable headers and truncation: PNG/GIF chunks are verified by PIL's
    ``verify()`` (CRCs up to IEND), a JPEG must end with its EOI marker.

    Raises:
        RecordError: ``missing_media``, ``empty_media`` or ``corrupt_media``.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as err:
        raise RecordError("missing_media", f"{path} does not exist") from err
    if not path.is_file():
        raise RecordError("missing_media", f"{path} is not a file")
    if size == 0:
        raise RecordError("empty_media", f"{path} is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            width, height, fmt = img.width, img.height, img.format or ""
            if fmt == "JPEG":
                _check_jpeg_end(path, size)
            elif fmt in ("PNG", "GIF"):
                img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise RecordError("corrupt_media", f"{path}: {type(err).__name__}: {err}") from err
    if width <= 0 or height <= 0:
        raise RecordError("corrupt_media", f"{path} has size {width}x{height}")
    return ImageInfo(width=width, height=height, format=fmt)


def _check_jpeg_end(path: Path, size: int) -> None:
    # A truncated JPEG opens fine (the header is intact) but lacks the EOI marker; some encoders pad after it.
    with path.open("rb") as f:
        f.seek(max(0, size - 1024))
        tail = f.read()
    if b"\xff\xd9" not in tail:
        raise OSError("JPEG has no end-of-image marker (truncated file)")


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 14 * 14 * 4 * 1280
) -> tuple[int, int]:
    """Qwen2-VL / Qwen2.5-VL resize rule: both sides divisible by ``factor``, pixels within the budget, aspect kept.

    Identical to ``transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize`` (tested for equality);
    kept here so that the build does not import transformers.
    """
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        ratio = max(height, width) / min(height, width)
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {ratio}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resized_image_size(height: int, width: int, cfg: PixelConfig) -> tuple[int, int]:
    """``smart_resize`` under ``cfg``'s image limits; ``extreme_aspect_ratio`` when the processor would refuse it."""
    try:
        return smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    except ValueError as err:
        raise RecordError("extreme_aspect_ratio", f"{width}x{height}: {err}") from err


def image_token_count(height: int, width: int, cfg: PixelConfig) -> int:
    """LLM tokens for one image: ``(resized_h / factor) * (resized_w / factor)`` (``grid_thw.prod() // merge**2``)."""
    rh, rw = resized_image_size(height, width, cfg)
    return (rh // cfg.factor) * (rw // cfg.factor)


# --------------------------------------------------------------------------------------------------------------------
# Videos


@dataclass(frozen=True)
class VideoInfo:
    """What a video's container says. ``fps_assumed``: the container holds no frame rate and ``fps`` is a guess
    (an animated GIF without frame durations), which families that write timestamps refuse."""

    num_frames: int
    fps: float
    width: int
    height: int
    backend: str = ""
    fps_assumed: bool = False

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps else 0.0


def is_video_path(path: str) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def read_video_frames(path: str | Path) -> tuple[list[Any], float]:
    """Every frame of a video file (RGB ``(H, W, 3)`` arrays, possibly none) and the container's fps (0 when none).

    Decodes pixels, unlike the probes: for the collators and the generator, never for sizing.
    """
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = []
        ok, frame = capture.read()
        while ok:
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            ok, frame = capture.read()
    finally:
        capture.release()
    return frames, fps


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, fps and frame size from the container (OpenCV; PIL for animated GIF); no frames decoded.

    Raises:
        RecordError: ``missing_media``, ``empty_media`` or ``corrupt_media``.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as err:
        raise RecordError("missing_media", f"{path} does not exist") from err
    if not path.is_file():
        raise RecordError("missing_media", f"{path} is not a file")
    if size == 0:
        raise RecordError("empty_media", f"{path} is empty (0 bytes)")
    info = _probe_gif(path) if path.suffix.lower() == ".gif" else _probe_cv2(path)
    if info.num_frames <= 0 or info.width <= 0 or info.height <= 0 or not info.fps > 0:
        raise RecordError(
            "corrupt_media",
            f"{path}: {info.num_frames} frames at {info.fps} fps, {info.width}x{info.height}: not a readable video",
        )
    return info


def _probe_cv2(path: Path) -> VideoInfo:
    try:
        import cv2
    except ImportError as err:
        raise ImportError("probing videos needs OpenCV: pip install opencv-python-headless") from err
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise RecordError("corrupt_media", f"{path}: OpenCV cannot open it as a video")
        return VideoInfo(
            num_frames=int(capture.get(cv2.CAP_PROP_FRAME_COUNT)),
            fps=float(capture.get(cv2.CAP_PROP_FPS)),
            width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            backend="opencv",
        )
    finally:
        capture.release()


def _probe_gif(path: Path) -> VideoInfo:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            duration_ms = img.info.get("duration")
            fps = 1000.0 / (duration_ms or 100)  # PIL's own default frame duration when the GIF names none
            return VideoInfo(frames, fps, img.width, img.height, backend="pil", fps_assumed=not duration_ms)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise RecordError("corrupt_media", f"{path}: {type(err).__name__}: {err}") from err


def sampled_frame_count(info: VideoInfo, cfg: PixelConfig) -> int:
    """Frames the Qwen2-VL video processor keeps, as ``Qwen2VLVideoProcessor.sample_frames`` computes them.

    With ``fps`` set: ``total / video_fps * fps`` clamped to ``[min_frames, min(max_frames, total)]`` and floored to a
    multiple of ``temporal_patch_size``; then the processor takes ``arange(0, total, total / n)`` indices. With
    ``fps=None`` every frame is used.
    """
    total = info.num_frames
    if cfg.fps is None:
        return total
    tps = cfg.temporal_patch_size
    max_frames = math.floor(min(cfg.max_frames, total) / tps) * tps
    wanted = total / info.fps * cfg.fps
    wanted = min(max(wanted, cfg.min_frames), max_frames, total)
    num_frames = math.floor(wanted / tps) * tps
    if num_frames <= 0:
        raise RecordError(
            "video_too_short",
            f"{total} frames cannot give {tps} sampled frames (temporal patch); need a longer video",
        )
    # torch.arange(0, total, total / num_frames) has ceil(total / step) elements.
    return math.ceil(total / (total / num_frames))


def video_token_count(info: VideoInfo, cfg: PixelConfig) -> int:
    """Vision pad tokens of one video: ``grid_t * grid_h * grid_w / merge**2`` after frame sampling and resizing.

    For families that write timestamps (Qwen3-VL) this is the pads only; :func:`video_tokens` also gives the
    timestamps and per-patch layout the text adds.
    """
    return video_tokens(info, cfg).pads


@dataclass(frozen=True)
class VideoTokens:
    """The LLM-side layout of one video.

    Attributes:
        patches: temporal patches (``grid_t``).
        tokens_per_patch: vision pads per temporal patch (``grid_h * grid_w / merge**2``).
        timestamps: Qwen3-VL: seconds of each temporal patch, written as ``<t seconds>`` before its
            ``<|vision_start|>...<|vision_end|>`` block; ``None`` for families whose video is one block of pads.
    """

    patches: int
    tokens_per_patch: int
    timestamps: tuple[float, ...] | None = None

    @property
    def pads(self) -> int:
        return self.patches * self.tokens_per_patch

    def placeholder(self, pad: str = "<|video_pad|>", start: str = "<|vision_start|>", end: str = "<|vision_end|>"):
        """The text that replaces the template's single ``<|video_pad|>`` (what the processor writes)."""
        if self.timestamps is None:
            return pad * self.pads
        block = pad * self.tokens_per_patch
        return "".join(f"<{t:.1f} seconds>{start}{block}{end}" for t in self.timestamps)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"patches": self.patches, "tokens_per_patch": self.tokens_per_patch}
        if self.timestamps is not None:
            out["timestamps"] = list(self.timestamps)
        return out

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> VideoTokens:
        ts = value.get("timestamps")
        return cls(int(value["patches"]), int(value["tokens_per_patch"]), None if ts is None else tuple(ts))


def _writes_timestamps(cfg: PixelConfig) -> bool:
    if cfg.family is None:
        return False
    from postvl.families import get_family

    return get_family(cfg.family).video_timestamps


def video_tokens(info: VideoInfo, cfg: PixelConfig) -> VideoTokens:
    """Frame sampling, resize and token layout of one video, as the family's video processor computes them.

    Qwen2-VL / Qwen2.5-VL (``Qwen2VLVideoProcessor``): see :func:`sampled_frame_count`; each frame resized under the
    per-frame budget. Qwen3-VL (``Qwen3VLVideoProcessor``): ``int(total / video_fps * fps)`` frames clamped to
    ``[min_frames, min(max_frames, total)]`` at ``linspace(0, total - 1, n).round()``, the clip resized under a budget
    over all frames, and each temporal patch stamped with the mean time of its frames (``frame_index / video_fps``).

    Raises:
        RecordError: ``video_too_short``; ``extreme_aspect_ratio``; ``video_without_fps`` when the family writes
            timestamps and the container gives no frame rate (the processor would silently assume 24 fps).
    """
    if not _writes_timestamps(cfg):
        frames = sampled_frame_count(info, cfg)
        try:
            rh, rw = smart_resize(info.height, info.width, cfg.factor, cfg.video_min_pixels, cfg.video_max_pixels)
        except ValueError as err:
            raise RecordError("extreme_aspect_ratio", f"video {info.width}x{info.height}: {err}") from err
        grid_t = -(-frames // cfg.temporal_patch_size)
        return VideoTokens(grid_t, (rh // cfg.factor) * (rw // cfg.factor))
    if info.fps_assumed or not info.fps > 0:
        raise RecordError(
            "video_without_fps",
            f"{info.num_frames}-frame video without a frame rate: timestamps need it (re-encode with a known fps)",
        )
    indices = qwen3_frame_indices(info, cfg)
    tps = cfg.temporal_patch_size
    # transformers 5.19's Qwen3VLVideoProcessor default (cap_pixels_per_frame=False): one budget for the clip.
    max_pixels = cfg.video_max_pixels
    try:
        rh, rw = qwen3_video_resize(
            len(indices), info.height, info.width, tps, cfg.factor, cfg.video_min_pixels, max_pixels
        )
    except ValueError as err:
        reason = "video_too_short" if "temporal_factor" in str(err) else "extreme_aspect_ratio"
        raise RecordError(reason, f"video {info.width}x{info.height}, {len(indices)} frames: {err}") from err
    padded = list(indices) + [indices[-1]] * (-len(indices) % tps)
    seconds = [i / info.fps for i in padded]
    stamps = tuple((seconds[k] + seconds[k + tps - 1]) / 2 for k in range(0, len(seconds), tps))
    return VideoTokens(len(stamps), (rh // cfg.factor) * (rw // cfg.factor), stamps)


def qwen3_frame_indices(info: VideoInfo, cfg: PixelConfig) -> list[int]:
    """Frame indices ``Qwen3VLVideoProcessor.sample_frames`` keeps (every frame when ``cfg.fps`` is ``None``)."""
    total = info.num_frames
    if cfg.fps is None:
        return list(range(total))
    n = int(total / info.fps * cfg.fps)
    n = min(max(n, cfg.min_frames), cfg.max_frames, total)
    if n <= 0:
        raise RecordError("video_too_short", f"{total} frames give no sampled frame")
    if n == 1:
        return [0]
    # numpy's linspace(0, total - 1, n).round(): round half to even, as numpy does
    step = (total - 1) / (n - 1)
    return [int(round(k * step)) if k < n - 1 else total - 1 for k in range(n)]


def qwen3_video_resize(
    num_frames: int, height: int, width: int, temporal_factor: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """``transformers.models.qwen3_vl.video_processing_qwen3_vl.smart_resize``: one budget over the whole clip."""
    if num_frames < temporal_factor:
        raise ValueError(f"t:{num_frames} must be larger than temporal_factor:{temporal_factor}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height = int(height * scale)
        width = int(width * scale)
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        ratio = max(height, width) / min(height, width)
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {ratio}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# --------------------------------------------------------------------------------------------------------------------
# A small cache so that an image shared by many records is probed once per process.


@dataclass
class MediaProber:
    """Probe images and videos with a bounded per-process cache keyed by (path, size, mtime)."""

    max_entries: int = 100_000
    _cache: dict[tuple[str, int, int], ImageInfo | VideoInfo | RecordError] = field(default_factory=dict)

    def image(self, path: str) -> ImageInfo:
        return self._probe(path, probe_image)  # type: ignore[return-value]

    def video(self, path: str) -> VideoInfo:
        return self._probe(path, probe_video)  # type: ignore[return-value]

    def _probe(self, path: str, fn: Any) -> ImageInfo | VideoInfo:
        try:
            st = os.stat(path)
        except FileNotFoundError as err:
            raise RecordError("missing_media", f"{path} does not exist") from err
        key = (path, st.st_size, st.st_mtime_ns)
        hit = self._cache.get(key)
        if hit is None:
            try:
                hit = fn(path)
            except RecordError as err:
                hit = err
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[key] = hit
        if isinstance(hit, RecordError):
            raise RecordError(hit.reason, hit.detail)
        return hit
