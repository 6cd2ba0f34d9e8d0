"""Validation of draft records: structure, media, grounding. Each failure is one snake_case reason code.

``finish_record(draft, ctx)`` turns a draft from ``postvl.chatml.formats`` into a contract record or raises
``RecordError``. It checks the conversation, matches media parts with media files, resolves every file safely under
the media root, probes its size (no pixel decode), counts its vision tokens under the pixel limits, and rewrites
grounding coordinates (given in pixels of the source image) into the family's convention
(``postvl.families.Family.grounding``): the resized image's pixel space for Qwen2.5-VL, integers 0..1000 relative
to the image for Qwen2-VL and Qwen3-VL:

- Qwen2.5-VL JSON (``"bbox_2d": [x1, y1, x2, y2]``, ``"point_2d": [x, y]``, fenced in ```` ```json ```` or not) in
  any text part: checked against the original image, rewritten in place, the rest of the text untouched;
- ms-swift ``objects``: ``<ref-object>`` becomes ``<|object_ref_start|>ref<|object_ref_end|>`` and ``<bbox>``
  becomes ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` as ms-swift's Qwen2.5-VL template writes them.

Rescaling is ms-swift's rule, ``int(round(x / width * resized_width))`` (``* 1000`` for relative boxes). Original and
resized sizes go into ``meta["media"]``; the family into ``meta["family"]``; the text parts as they were before the
rewrite (and ms-swift ``objects``) into ``meta["grounding"]["source"]``, so that the boxes can be rewritten for
another family (``reground``).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postvl.families import Family, data_family
from postvl.media import (
    MediaProber,
    PixelConfig,
    VideoTokens,
    image_token_count,
    is_url,
    relative_to_root,
    resized_image_size,
    resolve_media_path,
    video_tokens,
)
from postvl.media_store import DEFAULT_MAX_IMAGE_PIXELS, MediaStore, check_pixel_cap, is_embedded
from postvl.records import ANSWER_TYPES, RecordError, check_conversation

VideoCount = int | VideoTokens

# Every code a build can report, with what it means (the summary table and the docs use it).
REASONS: dict[str, str] = {
    "invalid_json": "the line or element is not valid JSON",
    "invalid_utf8": "the line or element is not valid UTF-8",
    "unknown_format": "no format adapter recognises the row",
    "empty_conversation": "no messages",
    "empty_turn": "a message has no content",
    "invalid_role": "a role outside system/user/assistant (tool turns included)",
    "invalid_content_part": "a content part that is not text, image or video",
    "non_text_text": "a text part whose text is not a string",
    "misplaced_system_turn": "a system turn after the first message",
    "no_assistant_turn": "nothing to learn: no assistant turn",
    "empty_answer": "an assistant turn (or a chosen/rejected answer) with no text",
    "identical_preference": "chosen and rejected are the same",
    "special_token_in_text": "text contains a chat-template or vision token (<|im_start|>, <|image_pad|>, ...)",
    "placeholder_media_mismatch": "image/video parts and image/video files differ in number",
    "missing_media": "a media file does not exist",
    "empty_media": "a media file (or embedded medium) has 0 bytes",
    "corrupt_media": "a media file cannot be read (bad header, truncated)",
    "extreme_aspect_ratio": "an image with aspect ratio over 200, which the processor refuses",
    "video_too_short": "a video too short to give one temporal patch",
    "video_without_fps": "a video whose container names no frame rate, for a family that writes timestamps",
    "media_in_text_only_turn": "an image or video in a turn the family's template renders as text only",
    "media_outside_root": "a media path that escapes the media root",
    "url_not_allowed": "a media URL without --allow-urls",
    "unsupported_media": "audio, or embedded media in an input that cannot carry them (JSON)",
    "media_too_large": "an image whose header is above the pixel cap (decompression bombs included)",
    "bbox_out_of_image": "a box outside the original image",
    "point_out_of_image": "a point outside the original image",
    "invalid_bbox": "a box with x2 < x1 or y2 < y1, or not 4 numbers",
    "ambiguous_grounding": "coordinates with several images of different sizes, or with an unprobed URL image",
    "invalid_objects": "ms-swift objects that do not match the <ref-object>/<bbox> tags",
    "invalid_history": "an alpaca/ms-swift history turn that is not a [query, response] pair",
    "invalid_answer_type": "answer_type outside the contract's list",
    "kto_undesirable": "a KTO row labelled undesirable",
    "duplicate_id": "an id seen earlier in this build",
}

FORBIDDEN_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_NUM = r"-?\d+(?:\.\d+)?"
_BBOX_2D = re.compile(
    rf"""(["']bbox_2d["']\s*:\s*\[\s*)({_NUM})(\s*,\s*)({_NUM})(\s*,\s*)({_NUM})(\s*,\s*)({_NUM})(\s*\])"""
)
_POINT_2D = re.compile(rf"""(["']point_2d["']\s*:\s*\[\s*)({_NUM})(\s*,\s*)({_NUM})(\s*\])""")
_SWIFT_TAGS = re.compile(r"(<ref-object>|<bbox>)")


@dataclass
class BuildContext:
    """What validation needs besides the record: the media root, URL policy, pixel limits and a probe cache.

    With a ``store`` (a build whose inputs carry embedded media), ``media_root`` is the output folder: embedded media
    are written into the store, and media files, resolved and confined under ``files_root``, are linked into it, so
    that every record's paths live under the one media root.
    """

    media_root: str
    allow_urls: bool = False
    pixels: PixelConfig = field(default_factory=PixelConfig)
    prober: MediaProber = field(default_factory=MediaProber)
    store: MediaStore | None = None
    files_root: str | None = None
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    _resolved_root: str | None = field(default=None, init=False, repr=False)

    def relative(self, path: str) -> str:
        """A resolved path as stored in a record: relative to the media root (URLs unchanged)."""
        root = self._resolved_root
        if root is None:
            root = self._resolved_root = str(Path(self.media_root).resolve())
        if path.startswith(root + os.sep):  # resolved paths under the root: no filesystem call per image
            return Path(path[len(root) + 1 :]).as_posix()
        return relative_to_root(path, self.media_root)

    @property
    def family(self) -> Family:
        return data_family(self.pixels.family)


@dataclass
class MediaSizes:
    """Per-record media facts found while validating: token counts and sizes in placeholder order."""

    image_tokens: list[int] = field(default_factory=list)
    video_tokens: list[VideoCount] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    videos: list[dict[str, Any]] = field(default_factory=list)
    grounding: str = "absolute"  # the family's box convention (postvl.families.Grounding)


def finish_record(
    draft: dict[str, Any], ctx: BuildContext, *, base: str | None = None
) -> tuple[dict[str, Any], MediaSizes]:
    """Validate a draft and return the contract record with its media facts.

    ``base`` is the folder relative media paths start from (default: the media root).

    Raises:
        RecordError: with the first reason that applies.
    """
    preference = "chosen" in draft
    conversations = _conversations(draft)
    for conversation in conversations:
        reason = check_conversation(conversation)
        if reason:
            raise RecordError(reason, _where(reason, conversation))
        check_answers(conversation)
        check_special_tokens(conversation)
    if preference and draft["chosen"] == draft["rejected"]:
        raise RecordError("identical_preference", "chosen and rejected answers are identical")
    if draft.get("answer_type") is not None and draft["answer_type"] not in ANSWER_TYPES:
        raise RecordError("invalid_answer_type", f"{draft['answer_type']!r} is not one of {', '.join(ANSWER_TYPES)}")
    all_messages = _all_messages(draft)
    check_media_counts(all_messages, draft.get("images") or [], draft.get("videos") or [])
    check_media_turns(all_messages, ctx.family)
    sizes = probe_media(draft, ctx, base=base)
    grounding = rescale_grounding(draft, sizes)
    answer_box = rescale_answer_box(draft, sizes)
    if answer_box is not None:
        grounding = (grounding or {}) | {"answer_original": answer_box}
    record = {k: v for k, v in draft.items() if k != "objects"}
    record["images"] = [m["path"] for m in sizes.images]
    record["videos"] = [m["path"] for m in sizes.videos]
    meta = dict(record["meta"])
    meta["family"] = ctx.family.name
    if sizes.images or sizes.videos:
        meta["media"] = {"images": sizes.images, "videos": sizes.videos}
        meta["vision_tokens"] = sum(sizes.image_tokens) + sum(_pads(v) for v in sizes.video_tokens)
    if grounding:
        meta["grounding"] = grounding
    record["meta"] = meta
    return record, sizes


def _conversations(draft: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
    if "chosen" in draft:
        prompt = draft.get("prompt")
        if not isinstance(prompt, list) or not prompt:
            raise RecordError("empty_conversation", "a preference record needs a non-empty prompt")
        for key in ("chosen", "rejected"):
            answer = draft.get(key)
            if not isinstance(answer, list) or not answer:
                raise RecordError("empty_answer", f"{key} is empty")
            if any(not isinstance(m, Mapping) or m.get("role") != "assistant" for m in answer):
                raise RecordError("invalid_role", f"{key} must hold assistant messages only")
        return [prompt + draft["chosen"], prompt + draft["rejected"]]
    return [draft.get("messages")]


def _all_messages(draft: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "chosen" in draft:
        return draft["prompt"] + draft["chosen"] + draft["rejected"]
    return draft["messages"]


def _where(reason: str, conversation: Any) -> str:
    n = len(conversation) if isinstance(conversation, list) else 0
    return f"{reason.replace('_', ' ')} in a conversation of {n} messages"


def check_answers(messages: list[dict[str, Any]]) -> None:
    """``empty_answer`` when an assistant turn has no text beyond whitespace."""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        text = "".join(p["text"] for p in msg["content"] if p["type"] == "text")
        if not text.strip():
            raise RecordError("empty_answer", f"assistant turn {i} has no text")


def check_special_tokens(messages: list[dict[str, Any]]) -> None:
    """``special_token_in_text`` when a text part would inject chat-template or vision tokens when rendered."""
    for msg in messages:
        for part in msg["content"]:
            if part["type"] == "text":
                hit = next((t for t in FORBIDDEN_TOKENS if t in part["text"]), None)
                if hit:
                    raise RecordError("special_token_in_text", f"{hit} in a {msg['role']} turn")


def check_media_turns(messages: list[dict[str, Any]], family: Family) -> None:
    """``media_in_text_only_turn`` when the family's template would drop a media part (Qwen3-VL renders only the
    text of system and assistant turns)."""
    if family.default_system is not None:  # Qwen2-VL / Qwen2.5-VL render media in every turn
        return
    for msg in messages:
        if msg["role"] in ("system", "assistant") and any(p["type"] != "text" for p in msg["content"]):
            raise RecordError(
                "media_in_text_only_turn",
                f"{family.title}'s chat template drops images and videos in {msg['role']} turns: move them to a "
                "user turn",
            )


def _pads(value: VideoCount) -> int:
    return value.pads if isinstance(value, VideoTokens) else int(value)


def check_media_counts(messages: list[dict[str, Any]], images: list[Any], videos: list[Any]) -> None:
    n_images = sum(p["type"] == "image" for m in messages for p in m["content"])
    n_videos = sum(p["type"] == "video" for m in messages for p in m["content"])
    if n_images != len(images) or n_videos != len(videos):
        raise RecordError(
            "placeholder_media_mismatch",
            f"{n_images} image and {n_videos} video placeholders for {len(images)} images and {len(videos)} videos",
        )


def probe_media(draft: Mapping[str, Any], ctx: BuildContext, *, base: str | None = None) -> MediaSizes:
    """Resolve (or store), probe and count every image and video of a draft."""
    sizes = MediaSizes(grounding=ctx.family.grounding)
    timestamps = ctx.family.video_timestamps
    for ref in draft.get("images") or []:
        path, info, origin = _image(ref, ctx, base)
        if info is None:
            sizes.images.append({"path": path})
            sizes.image_tokens.append(-1)
            continue
        rh, rw = resized_image_size(info.height, info.width, ctx.pixels)
        tokens = image_token_count(info.height, info.width, ctx.pixels)
        sizes.image_tokens.append(tokens)
        sizes.images.append(
            {
                "path": ctx.relative(path),
                "width": info.width,
                "height": info.height,
                "resized_width": rw,
                "resized_height": rh,
                "tokens": tokens,
                **origin,
            }
        )
    for ref in draft.get("videos") or []:
        path, info, origin = _video(ref, ctx, base)
        if info is None:
            sizes.videos.append({"path": path})
            sizes.video_tokens.append(-1)
            continue
        layout = video_tokens(info, ctx.pixels)
        sizes.video_tokens.append(layout if timestamps else layout.pads)
        entry = {
            "path": ctx.relative(path),
            "frames": info.num_frames,
            "fps": info.fps,
            "width": info.width,
            "height": info.height,
            "tokens": layout.pads,
            **origin,
        }
        if timestamps:
            entry["layout"] = layout.to_json()
        sizes.videos.append(entry)
    return sizes


def _image(ref: Any, ctx: BuildContext, base: str | None) -> tuple[str, Any, dict[str, Any]]:
    """(absolute path or URL, header info or ``None`` for a URL, where the medium came from)."""
    if is_embedded(ref):
        path, info, name = _store(ctx).put_image(ref)
        return path, info, {"origin": "embedded", "original": name}
    path = _resolve(ref, ctx, base)
    if is_url(path):
        return path, None, {}
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the cap below decides
            info = ctx.prober.image(path)
    except Image.DecompressionBombError as err:  # PIL refuses to open a header this large
        raise RecordError("media_too_large", f"{path}: {err} (cap: {ctx.max_image_pixels} pixels)") from err
    check_pixel_cap(info.width, info.height, ctx.max_image_pixels, path)
    return _linked(path, ctx), info, _file_origin(path, ctx)


def _video(ref: Any, ctx: BuildContext, base: str | None) -> tuple[str, Any, dict[str, Any]]:
    if is_embedded(ref):
        path, info, name = _store(ctx).put_video(ref)
        check_pixel_cap(info.width, info.height, ctx.max_image_pixels, f"video {name or path} frame")
        return path, info, {"origin": "embedded", "original": name}
    path = _resolve(ref, ctx, base)
    if is_url(path):
        return path, None, {}
    info = ctx.prober.video(path)
    check_pixel_cap(info.width, info.height, ctx.max_image_pixels, f"video {path} frame")
    return _linked(path, ctx), info, _file_origin(path, ctx)


def _store(ctx: BuildContext) -> MediaStore:
    if ctx.store is None:
        raise RecordError(
            "unsupported_media",
            "media embedded as bytes in an input that cannot carry them (JSON); give a Parquet file, a saved "
            "dataset or an hf:// dataset, or save the media as files under the media root",
        )
    return ctx.store


def _linked(path: str, ctx: BuildContext) -> str:
    return ctx.store.link_file(path) if ctx.store is not None else path


def _file_origin(path: str, ctx: BuildContext) -> dict[str, Any]:
    if ctx.store is None:
        return {}
    return {"origin": "file", "original": relative_to_root(path, ctx.files_root or ctx.media_root)}


def _resolve(ref: Any, ctx: BuildContext, base: str | None) -> str:
    if isinstance(ref, Mapping):  # datasets Image(decode=False) without bytes: {"bytes": None, "path": ...}
        ref = ref.get("path")
    root = ctx.files_root if ctx.store is not None else ctx.media_root
    if root is None:
        if isinstance(ref, str) and is_url(ref):
            return resolve_media_path(ref, ctx.media_root, allow_urls=ctx.allow_urls)
        raise RecordError(
            "missing_media",
            f"media reference {ref!r:.120} is a path, but the input is a hub dataset with no folder of its own; "
            "pass --media-root where those files are",
        )
    return resolve_media_path(ref, root, base=base, allow_urls=ctx.allow_urls)


# --------------------------------------------------------------------------------------------------------------------
# Grounding


def rescale_grounding(draft: dict[str, Any], sizes: MediaSizes) -> dict[str, Any] | None:
    """Check grounding coordinates against the original image and rewrite them in the resized image's space.

    Mutates the text parts of ``draft`` (and resolves ms-swift ``objects``). Returns a summary for ``meta`` or
    ``None`` when the record has no coordinates.
    """
    messages = _all_messages(draft)
    objects = draft.get("objects")
    has_json = any(
        _BBOX_2D.search(p["text"]) or _POINT_2D.search(p["text"])
        for m in messages
        for p in m["content"]
        if p["type"] == "text"
    )
    if not has_json and not (objects and (objects["ref"] or objects["bbox"])):
        _check_no_swift_tags(messages)
        return None
    summary: dict[str, Any] = {"boxes": 0, "points": 0, "convention": sizes.grounding}
    # The texts as given (source-image pixels), so that the coordinates can be rewritten for another family.
    source = {
        f"{i}.{j}": p["text"]
        for i, m in enumerate(messages)
        for j, p in enumerate(m["content"])
        if p["type"] == "text"
        and (_BBOX_2D.search(p["text"]) or _POINT_2D.search(p["text"]) or _SWIFT_TAGS.search(p["text"]))
    }
    summary["source"] = {"texts": source} | ({"objects": dict(objects)} if objects else {})
    if has_json:
        image = _grounding_image(sizes, None)
        for msg in messages:
            for part in msg["content"]:
                if part["type"] == "text":
                    part["text"] = _rewrite_json_coords(part["text"], image, summary)
    if objects:
        _apply_objects(messages, objects, sizes, summary)
    return summary


def rescale_answer_box(draft: dict[str, Any], sizes: MediaSizes) -> Any:
    """Rescale a ``bbox`` / ``point`` gold answer (JSON ``[x1, y1, x2, y2]`` or a list of them) like the text.

    The gold box of a point question is a box too (a point is right inside it). Mutates ``draft["answer"]`` and
    returns the original value, or ``None`` when there is nothing to rescale.
    """
    if draft.get("answer_type") not in ("bbox", "point") or draft.get("answer") is None:
        return None
    try:
        value = json.loads(draft["answer"])
    except (TypeError, json.JSONDecodeError):
        return None  # a free-form gold; the verifier parses it from the text
    boxes = value if value and isinstance(value[0], list) else [value]
    if not all(isinstance(b, list) and len(b) == 4 and all(isinstance(v, int | float) for v in b) for b in boxes):
        return None
    image = _grounding_image(sizes, None)
    w, h, rw, rh = image["width"], image["height"], image["target_width"], image["target_height"]
    scaled = []
    for box in boxes:
        _check_box([float(v) for v in box], image)
        scaled.append([_scale(box[0], w, rw), _scale(box[1], h, rh), _scale(box[2], w, rw), _scale(box[3], h, rh)])
    draft["answer"] = json.dumps(scaled if value and isinstance(value[0], list) else scaled[0])
    return value


def _grounding_image(sizes: MediaSizes, image_id: int | None) -> dict[str, Any]:
    if not sizes.images:
        raise RecordError("ambiguous_grounding", "coordinates in a record without images")
    if image_id is not None:
        if not 0 <= image_id < len(sizes.images):
            raise RecordError("invalid_objects", f"image_id {image_id} but the record has {len(sizes.images)} images")
        chosen = [sizes.images[image_id]]
    else:
        chosen = sizes.images
    if any("width" not in m for m in chosen):
        raise RecordError("ambiguous_grounding", "coordinates refer to a URL image whose size was not probed")
    shapes = {(m["width"], m["height"], m["resized_width"], m["resized_height"]) for m in chosen}
    if len(shapes) > 1:
        raise RecordError("ambiguous_grounding", f"coordinates with {len(chosen)} images of different sizes")
    image = dict(chosen[0])
    # Where coordinates land: the resized image's pixels (absolute) or 0..1000 of the image (relative_1000).
    relative = sizes.grounding == "relative_1000"
    image["target_width"] = 1000 if relative else image["resized_width"]
    image["target_height"] = 1000 if relative else image["resized_height"]
    return image


def _scale(value: float, size: int, resized: int) -> int:
    return int(round(value / size * resized))


def _check_box(box: list[float], image: Mapping[str, Any]) -> None:
    x1, y1, x2, y2 = box
    w, h = image["width"], image["height"]
    if x2 < x1 or y2 < y1:
        raise RecordError("invalid_bbox", f"box {box} has x2 < x1 or y2 < y1")
    if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
        raise RecordError("bbox_out_of_image", f"box {box} is outside the {w}x{h} image")


def _rewrite_json_coords(text: str, image: Mapping[str, Any], summary: dict[str, Any]) -> str:
    w, h, rw, rh = image["width"], image["height"], image["target_width"], image["target_height"]

    def box(match: re.Match[str]) -> str:
        g = match.groups()
        values = [float(g[i]) for i in (1, 3, 5, 7)]
        _check_box(values, image)
        summary["boxes"] += 1
        x1, y1, x2, y2 = (
            _scale(values[0], w, rw),
            _scale(values[1], h, rh),
            _scale(values[2], w, rw),
            _scale(values[3], h, rh),
        )
        return f"{g[0]}{x1}{g[2]}{y1}{g[4]}{x2}{g[6]}{y2}{g[8]}"

    def point(match: re.Match[str]) -> str:
        g = match.groups()
        x, y = float(g[1]), float(g[3])
        if not (0 <= x <= w and 0 <= y <= h):
            raise RecordError("point_out_of_image", f"point [{g[1]}, {g[3]}] is outside the {w}x{h} image")
        summary["points"] += 1
        return f"{g[0]}{_scale(x, w, rw)}{g[2]}{_scale(y, h, rh)}{g[4]}"

    return _POINT_2D.sub(point, _BBOX_2D.sub(box, text))


def _apply_objects(
    messages: list[dict[str, Any]], objects: Mapping[str, Any], sizes: MediaSizes, summary: dict[str, Any]
) -> None:
    refs, boxes = objects["ref"], objects["bbox"]
    image_ids = (list(objects["image_id"]) + [0] * len(boxes))[: len(boxes)]
    tags = [t for m in messages for p in m["content"] if p["type"] == "text" for t in _SWIFT_TAGS.findall(p["text"])]
    if tags.count("<ref-object>") != len(refs) or tags.count("<bbox>") != len(boxes):
        raise RecordError(
            "invalid_objects",
            f"{tags.count('<ref-object>')} <ref-object> and {tags.count('<bbox>')} <bbox> tags for {len(refs)} refs "
            f"and {len(boxes)} boxes",
        )
    rendered = []
    for bbox, image_id in zip(boxes, image_ids, strict=True):
        if not (isinstance(bbox, list) and len(bbox) in (2, 4) and all(isinstance(v, (int, float)) for v in bbox)):
            raise RecordError("invalid_bbox", f"bbox {bbox!r:.80} is not 2 or 4 numbers")
        image = _grounding_image(sizes, int(image_id))
        w, h = (1, 1) if objects["bbox_type"] == "norm1" else (image["width"], image["height"])
        if len(bbox) == 4:
            _check_box(list(bbox), {"width": w, "height": h})
            summary["boxes"] += 1
        elif not (0 <= bbox[0] <= w and 0 <= bbox[1] <= h):
            raise RecordError("point_out_of_image", f"point {bbox} is outside the {w}x{h} image")
        else:
            summary["points"] += 1
        scaled = [
            _scale(v, w if i % 2 == 0 else h, image["target_width"] if i % 2 == 0 else image["target_height"])
            for i, v in enumerate(bbox)
        ]
        rendered.append(",".join(f"({x},{y})" for x, y in zip(scaled[::2], scaled[1::2], strict=True)))
    ref_iter, box_iter = iter(refs), iter(rendered)

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "<ref-object>":
            return f"<|object_ref_start|>{next(ref_iter)}<|object_ref_end|>"
        return f"<|box_start|>{next(box_iter)}<|box_end|>"

    for msg in messages:
        for part in msg["content"]:
            if part["type"] == "text":
                part["text"] = _SWIFT_TAGS.sub(replace, part["text"])


def _check_no_swift_tags(messages: list[dict[str, Any]]) -> None:
    for msg in messages:
        for part in msg["content"]:
            if part["type"] == "text" and _SWIFT_TAGS.search(part["text"]):
                raise RecordError("invalid_objects", "<ref-object>/<bbox> tags without ms-swift objects to fill them")
