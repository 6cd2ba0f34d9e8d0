"""Media embedded in the data: ``datasets`` ``Image`` structs, raw bytes and PIL images, stored once by content.

Hub datasets and their Parquet shards carry images inside the rows (``{"bytes": b"...", "path": "name.jpg"}``, the
storage of ``datasets.Image``; a ``datasets.Dataset`` may also hand out PIL images). The builder writes each
distinct medium once into a content-addressed store inside the output folder::

    OUT/media/<first 2 hex digits>/<sha256 of the bytes>.<ext>

with the original bytes (nothing is re-encoded; a PIL image that has no file behind it is saved the way
``datasets`` encodes one). Records then point at these files like at any other file under the media root, so every
later stage reads them unchanged. Identical images across rows, workers or ranks map to one file: a writer puts the
bytes under a temporary name of its own and renames it into place, so concurrent writers never clash and a reader
never sees half a file.

Sizes come from the header only. Hostile media are reasons, never crashes: a header above the pixel cap (a
decompression bomb claiming 60000x60000 included) is ``media_too_large`` with the cap in the detail, undecodable
bytes are ``corrupt_media``, zero bytes are ``empty_media``.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postvl.media import ImageInfo, VideoInfo, probe_video
from postvl.records import RecordError

STORE_DIR = "media"
# PIL's own default (``Image.MAX_IMAGE_PIXELS``): above it PIL warns, above twice it refuses to open the file.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
_EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
    "ICO": "ico",
    "PPM": "ppm",
    "JPEG2000": "jp2",
}
_VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpeg", ".mpg"}


def is_embedded(ref: Any) -> bool:
    """True for media carried in the row itself: a ``{"bytes", "path"}`` dict with bytes, raw bytes, a PIL image."""
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return True
    if isinstance(ref, Mapping):
        return ref.get("bytes") is not None
    return _is_pil(ref)


def _is_pil(ref: Any) -> bool:
    return hasattr(ref, "save") and hasattr(ref, "size") and hasattr(ref, "mode")


def embedded_bytes(ref: Any) -> tuple[bytes, str | None]:
    """The medium's bytes and the name it had (``path`` of a ``datasets`` struct, a PIL image's file name).

    Raises:
        RecordError: ``empty_media`` for zero bytes.
    """
    name = None
    if isinstance(ref, Mapping):
        data, name = ref.get("bytes"), ref.get("path")
    elif _is_pil(ref):
        data, name = _pil_bytes(ref), getattr(ref, "filename", None) or None
    else:
        data = ref
    data = bytes(data)
    if not data:
        raise RecordError("empty_media", f"embedded medium {name!r:.80} has 0 bytes")
    return data, name if isinstance(name, str) else None


def _pil_bytes(image: Any) -> bytes:
    """A PIL image's original file when it has one, else the encoding ``datasets.Image`` would store."""
    filename = getattr(image, "filename", None)
    if filename and os.path.isfile(filename):
        return Path(filename).read_bytes()
    from datasets.features.image import encode_pil_image

    return encode_pil_image(image)["bytes"]


def probe_image_bytes(data: bytes, max_pixels: int, name: str | None = None) -> ImageInfo:
    """Size and format of an encoded image from its header, with the same integrity checks as files get.

    Raises:
        RecordError: ``empty_media``, ``corrupt_media`` or ``media_too_large`` (header above ``max_pixels``).
    """
    from PIL import Image, UnidentifiedImageError

    label = name or "embedded image"
    if not data:
        raise RecordError("empty_media", f"{label} has 0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap decides, below
            with Image.open(io.BytesIO(data)) as img:
                width, height, fmt = img.width, img.height, img.format or ""
                check_pixel_cap(width, height, max_pixels, label)
                if fmt == "JPEG":
                    if b"\xff\xd9" not in data[-1024:]:
                        raise OSError("JPEG has no end-of-image marker (truncated data)")
                elif fmt in ("PNG", "GIF"):
                    img.verify()
    except RecordError:
        raise
    except Image.DecompressionBombError as err:
        raise RecordError("media_too_large", f"{label}: {err} (cap: {max_pixels} pixels)") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise RecordError("corrupt_media", f"{label}: {type(err).__name__}: {err}") from err
    if width <= 0 or height <= 0:
        raise RecordError("corrupt_media", f"{label} has size {width}x{height}")
    return ImageInfo(width=width, height=height, format=fmt)


def check_pixel_cap(width: int, height: int, max_pixels: int, label: str) -> None:
    """``media_too_large`` when the header's size is above the cap (before any pixel is decoded)."""
    if width * height > max_pixels:
        raise RecordError(
            "media_too_large",
            f"{label} is {width}x{height} = {width * height} pixels, above the cap of {max_pixels} pixels "
            "(--max-image-pixels)",
        )


@dataclass
class StoreCounts:
    """What this process put in (or found in) the store, for the manifest."""

    embedded: int = 0  # media references that were embedded bytes or PIL images
    linked: int = 0  # media references that were files, copied or hard-linked into the store
    written: int = 0  # files this process wrote (the rest were there already: identical media)
    bytes_written: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class MediaStore:
    """The content-addressed store under ``root / STORE_DIR``, with a per-process probe cache by hash.

    Attributes:
        root: the output folder (the media root of the records it builds).
        max_image_pixels: the pixel cap images are checked against.
    """

    root: Path
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    counts: StoreCounts = field(default_factory=StoreCounts)
    _infos: dict[str, ImageInfo | VideoInfo | RecordError] = field(default_factory=dict)
    _folders: set[str] = field(default_factory=set)  # prefix folders known to exist

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    @property
    def folder(self) -> Path:
        return self.root / STORE_DIR

    def put_image(self, ref: Any) -> tuple[str, ImageInfo, str | None]:
        """Store an embedded image; returns (absolute path in the store, header info, original name).

        Raises:
            RecordError: the medium is empty, undecodable or above the pixel cap (nothing is written then).
        """
        data, name = embedded_bytes(ref)
        self.counts.embedded += 1
        digest = hashlib.sha256(data).hexdigest()
        info = self._infos.get(digest)
        if info is None:
            try:
                info = probe_image_bytes(data, self.max_image_pixels, name)
            except RecordError as err:
                info = err
            self._remember(digest, info)
        if isinstance(info, RecordError):
            raise RecordError(info.reason, info.detail)
        assert isinstance(info, ImageInfo)
        path = self._write(data, digest, _EXTENSIONS.get(info.format, info.format.lower() or "img"))
        return str(path), info, name

    def put_video(self, ref: Any) -> tuple[str, VideoInfo, str | None]:
        """Store an embedded video (container format from its name or its first bytes) and probe it."""
        data, name = embedded_bytes(ref)
        self.counts.embedded += 1
        ext = _video_extension(data, name)
        digest = hashlib.sha256(data).hexdigest()
        path = self._write(data, digest, ext)
        info = self._infos.get(digest)
        if info is None:
            try:
                info = probe_video(path)
            except RecordError as err:
                info = err
            self._remember(digest, info)
        if isinstance(info, RecordError):
            raise RecordError(info.reason, info.detail)
        assert isinstance(info, VideoInfo)
        return str(path), info, name

    def link_file(self, path: str) -> str:
        """A media file from disk, put in the store too (hard link where possible, else a copy): the records of a
        build with embedded media all live under one media root."""
        self.counts.linked += 1
        digest = _file_digest(path)
        suffix = Path(path).suffix.lower().lstrip(".") or "bin"
        final = self._final(digest, suffix)
        if final.exists():
            return str(final)
        self._mkdir(final.parent)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
        try:
            os.link(path, tmp)
        except OSError:  # another filesystem, or links not allowed
            shutil.copyfile(path, tmp)
        os.replace(tmp, final)
        self.counts.written += 1
        return str(final)

    def _final(self, digest: str, ext: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.{ext}"

    def _write(self, data: bytes, digest: str, ext: str) -> Path:
        final = self._final(digest, ext)
        try:
            if final.stat().st_size == len(data):
                return final
        except FileNotFoundError:
            pass
        self._mkdir(final.parent)
        # A name of our own, then an atomic rename: ranks and workers writing the same image never clash.
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
        self.counts.written += 1
        self.counts.bytes_written += len(data)
        return final

    def _mkdir(self, folder: Path) -> None:
        if str(folder) not in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            self._folders.add(str(folder))

    def _remember(self, digest: str, info: Any) -> None:
        if len(self._infos) >= 200_000:
            self._infos.clear()
        self._infos[digest] = info


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _video_extension(data: bytes, name: str | None) -> str:
    suffix = Path(name).suffix.lower() if name else ""
    if suffix in _VIDEO_SUFFIXES:
        return suffix.lstrip(".")
    if data[4:8] == b"ftyp":
        return "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    raise RecordError("unsupported_media", f"embedded video {name or ''!s:.80}: unknown container format")


def store_summary(root: str | Path) -> dict[str, int]:
    """Distinct files and bytes in a store (counted on disk, so every rank's files are in it)."""
    folder = Path(root) / STORE_DIR
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")] if folder.is_dir() else []
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
