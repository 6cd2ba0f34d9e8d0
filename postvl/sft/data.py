"""SFT data: built records -> model inputs, the packing plan, and collators (packed with exact mRoPE, or padded).

Every supported family (``postvl.families``: Qwen2-VL, Qwen2.5-VL, Qwen3-VL dense and MoE) is encoded as its own
processor would: the family's template renders the text, its image and video processors make the pixels, and a
Qwen3-VL video carries ``<t seconds>`` and a vision block per temporal patch, stamped from the frames the video
processor sampled. A processor of any other family fails at once.

Packing puts several records into one row. Each family's decoder attends within each record only and gives each record
its own multimodal RoPE positions when the row carries ``position_ids`` of shape ``(4, 1, L)``: a text-position row
that restarts at 0 for every record, followed by each record's own 3-row mRoPE ids (the model's own
``get_rope_index``, run per record with the record's ``mm_token_type_ids``), with ``attention_mask=None``. The text
row is what lets transformers find the record boundaries and build a block-diagonal causal mask; 1-D or 3-row
position ids would silently attend across records.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------------------------------
# Packing plan


@dataclass(frozen=True)
class PackingPlan:
    """Bins of record indices, each fitting ``max_length`` tokens, and the records too long for any bin."""

    bins: list[list[int]]
    too_long: list[int]
    max_length: int
    lengths: list[int]

    @property
    def fill(self) -> float:
        """Share of non-pad tokens if every bin were padded to ``max_length``."""
        used = sum(self.lengths[i] for b in self.bins for i in b)
        return used / (len(self.bins) * self.max_length) if self.bins else 0.0


def plan_packing(lengths: Sequence[int], max_length: int) -> PackingPlan:
    """Best-fit-decreasing bin packing of records by their token counts.

    Records are placed longest first, each into the bin whose free space is the smallest that still fits it (a new
    bin when none does): the classic best-fit-decreasing heuristic, within 11/9 of the optimal bin count. Records
    longer than ``max_length`` go to ``too_long`` and are never truncated (truncation would cut vision tokens).
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free space, bin index)
    too_long: list[int] = []
    for i in order:
        n = int(lengths[i])
        if n > max_length:
            too_long.append(i)
            continue
        pos = bisect.bisect_left(free, (n, -1))
        if pos < len(free):
            space, b = free.pop(pos)
        else:
            space, b = max_length, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (space - n, b))
    return PackingPlan(bins=bins, too_long=sorted(too_long), max_length=max_length, lengths=[int(n) for n in lengths])


# --------------------------------------------------------------------------------------------------------------------
# Encoding one record


@dataclass(frozen=True)
class Example:
    """One record as model inputs (unbatched tensors).

    ``image_tokens`` / ``video_tokens`` are what each image and video costs in the text (an int of pads, or for
    Qwen3-VL videos a ``postvl.media.VideoTokens`` with its timestamps), so that a caller can render other turns
    around the same media (DPO's rejected side) without running the processors again.
    """

    input_ids: Any  # LongTensor (L,)
    labels: Any  # LongTensor (L,)
    pixel_values: Any | None = None
    image_grid_thw: Any | None = None
    pixel_values_videos: Any | None = None
    video_grid_thw: Any | None = None
    second_per_grid_ts: list[float] | None = None
    image_tokens: tuple[int, ...] = ()
    video_tokens: tuple[Any, ...] = ()


class RecordEncoder:
    """Turns a built record into model inputs: pixels through the processor, text and labels through the builder.

    The labels are exactly the builder's trained spans (assistant turns and their ``<|im_end|>``), see
    ``postvl.chatml.render.tokenize_with_labels``; the template is the processor's family's.

    Raises:
        UnsupportedFamilyError: the processor belongs to no supported family.
    """

    def __init__(self, processor: Any, *, train_turn_newline: bool = False) -> None:
        from postvl.families import get_family

        self.family = get_family(processor)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.merge = int(getattr(processor.image_processor, "merge_size", self.family.merge_size))
        if self.merge != self.family.merge_size:
            raise ValueError(f"{self.family.title} merges {self.family.merge_size} x {self.family.merge_size}, "
                             f"but the image processor has merge_size {self.merge}")
        self.train_turn_newline = train_turn_newline

    def __call__(self, record: dict[str, Any], media_root: str | Path | None = None) -> Example:
        import torch

        from postvl.chatml.render import tokenize_with_labels

        images = [_load_image(p, media_root) for p in record.get("images") or []]
        out: dict[str, Any] = {}
        image_tokens: list[int] = []
        video_tokens: list[Any] = []
        if images:
            px = self.processor.image_processor(images=images, return_tensors="pt")
            out["pixel_values"], out["image_grid_thw"] = px["pixel_values"], px["image_grid_thw"]
            image_tokens = (px["image_grid_thw"].prod(-1) // self.merge**2).tolist()
        if record.get("videos"):
            video_tokens = self._videos(record["videos"], media_root, out)
        ids, labels = tokenize_with_labels(
            record["messages"],
            self.processor,  # the processor, not its tokenizer: the renderer reads the family from it
            image_tokens,
            video_tokens,
            train_turn_newline=self.train_turn_newline,
        )
        return Example(
            input_ids=torch.tensor(ids, dtype=torch.long),
            labels=torch.tensor(labels, dtype=torch.long),
            image_tokens=tuple(image_tokens),
            video_tokens=tuple(video_tokens),
            **out,
        )

    def _videos(self, paths: Sequence[str], media_root: str | Path | None, out: dict[str, Any]) -> list[Any]:
        """Pixels of the record's videos into ``out``; returns each video's token count (or layout)."""
        vp = self.processor.video_processor
        if not self.family.video_timestamps:
            videos = [_sample_video(p, media_root, self.processor) for p in paths]
            enc = vp(videos=[v for v, _ in videos], return_tensors="pt")
            out["pixel_values_videos"], out["video_grid_thw"] = enc["pixel_values_videos"], enc["video_grid_thw"]
            if self.family.rope_takes_second_per_grid_ts:
                temporal = getattr(vp, "temporal_patch_size", self.family.temporal_patch_size)
                out["second_per_grid_ts"] = [temporal / fps for _, fps in videos]
            return (enc["video_grid_thw"].prod(-1) // self.merge**2).tolist()
        return self._timestamped_videos(paths, media_root, out)

    def _timestamped_videos(
        self, paths: Sequence[str], media_root: str | Path | None, out: dict[str, Any]
    ) -> list[Any]:
        """Qwen3-VL: every decoded frame and the container's fps go to the video processor, which samples the frames
        itself (``do_sample_frames``); each temporal patch is stamped with the mean time of its frames, as
        ``Qwen3VLProcessor`` writes it. A video without a frame rate is refused (the processor would assume 24 fps).
        """
        from transformers.video_utils import VideoMetadata

        from postvl.media import VideoTokens

        frames, metas = [], []
        for path in paths:
            clip, fps, full = _decode_video(path, media_root)
            if not fps or fps <= 0:
                raise ValueError(f"video {full} has no frame rate: {self.family.title} timestamps need it")
            frames.append(clip)
            metas.append(VideoMetadata(total_num_frames=len(clip), fps=fps, frames_indices=list(range(len(clip))),
                                       height=clip.shape[1], width=clip.shape[2]))
        enc = self.processor.video_processor(
            videos=frames, video_metadata=metas, do_sample_frames=True, return_metadata=True, return_tensors="pt"
        )
        out["pixel_values_videos"], out["video_grid_thw"] = enc["pixel_values_videos"], enc["video_grid_thw"]
        tps = self.family.temporal_patch_size
        counts = []
        for grid, meta in zip(enc["video_grid_thw"].tolist(), enc["video_metadata"], strict=True):
            indices = list(meta.frames_indices)
            indices += [indices[-1]] * (-len(indices) % tps)
            seconds = [i / meta.fps for i in indices]
            stamps = tuple((seconds[k] + seconds[k + tps - 1]) / 2 for k in range(0, len(seconds), tps))
            if len(stamps) != grid[0]:
                raise RuntimeError(f"{len(stamps)} timestamps for {grid[0]} temporal patches")
            counts.append(VideoTokens(grid[0], grid[1] * grid[2] // self.merge**2, stamps))
        return counts


def _load_image(path: str, media_root: str | Path | None) -> Any:
    from PIL import Image

    full = Path(media_root) / path if media_root is not None else Path(path)
    with Image.open(full) as img:
        return img.convert("RGB")


def _decode_video(path: str, media_root: str | Path | None) -> tuple[Any, float, Path]:
    """Every frame (RGB, ``(T, H, W, 3)``), the container's fps (0 when it names none), and the full path."""
    import cv2
    import numpy as np

    full = Path(media_root) / path if media_root is not None else Path(path)
    cap = cv2.VideoCapture(str(full))
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = []
        ok, frame = cap.read()
        while ok:
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            ok, frame = cap.read()
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"video {full} has no readable frame")
    return np.stack(frames), fps, full


def _sample_video(path: str, media_root: str | Path | None, processor: Any) -> tuple[Any, float]:
    """Qwen2-VL / Qwen2.5-VL: frames sampled at the video processor's fps (at most ``max_frames``, an even count),
    and that fps."""
    import numpy as np

    frames, native_fps, _ = _decode_video(path, media_root)
    vp = processor.video_processor
    target_fps = float(getattr(vp, "fps", 2.0) or 2.0)
    max_frames = int(getattr(vp, "max_frames", 768) or 768)
    native_fps = native_fps or target_fps
    duration = len(frames) / native_fps
    n = max(2, min(max_frames, round(duration * target_fps)))
    n -= n % 2
    idx = np.linspace(0, len(frames) - 1, n).round().astype(int)
    return frames[idx], n / duration


# --------------------------------------------------------------------------------------------------------------------
# Collators


def modality_types(input_ids: Any, image_token_id: int, video_token_id: int) -> Any:
    """Per-token modality for ``get_rope_index``: text 0, image 1, video 2."""
    import torch

    types = torch.zeros_like(input_ids, dtype=torch.int32)
    types[input_ids == image_token_id] = 1
    types[input_ids == video_token_id] = 2
    return types


def find_rope_index(model: Any) -> Callable[..., Any]:
    """The model's own ``get_rope_index`` (through peft / DDP wrappers); a model of no supported family fails here."""
    from postvl.families import rope_index_fn

    return rope_index_fn(model)


def _cat_media(examples: Sequence[Example]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        parts = [getattr(e, key) for e in examples if getattr(e, key) is not None]
        if parts:
            out[key] = torch.cat(parts)
    seconds = [s for e in examples for s in (e.second_per_grid_ts or [])]
    if seconds:
        out["second_per_grid_ts"] = torch.tensor(seconds)
    return out


class PackedCollator:
    """Concatenates every record of a batch into one row with per-record mRoPE positions and no attention mask.

    Each dataset item is ``{"bin": [k, ...]}`` (one packing bin of record indices into ``source``); a batch of
    several bins is one row as well, since positions restart per record anyway.
    """

    def __init__(
        self,
        source: RecordSource,
        encoder: RecordEncoder,
        rope_index: Callable[..., Any],
        image_token_id: int,
        video_token_id: int,
    ) -> None:
        self.source = source
        self.encoder = encoder
        self.rope_index = rope_index
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        examples = _encode_bins(self.source, self.encoder, features)
        rows: list[Any] = []
        for e in examples:
            ids = e.input_ids[None]
            kwargs: dict[str, Any] = {"image_grid_thw": e.image_grid_thw, "video_grid_thw": e.video_grid_thw}
            if e.second_per_grid_ts is not None:  # only families whose rope spaces video patches by time have them
                kwargs["second_per_grid_ts"] = torch.tensor(e.second_per_grid_ts)
            types = modality_types(ids, self.image_token_id, self.video_token_id)
            mrope, _ = self.rope_index(ids, mm_token_type_ids=types, **kwargs)
            text = torch.arange(ids.shape[1], dtype=mrope.dtype)[None, None]
            rows.append(torch.cat([text, mrope]))  # (4, 1, L_i)
        batch = {
            "input_ids": torch.cat([e.input_ids for e in examples])[None],
            "labels": torch.cat([e.labels for e in examples])[None],
            "position_ids": torch.cat(rows, dim=-1),
        }
        batch.update(_cat_media(examples))
        return batch


class PaddedCollator:
    """The unpacked baseline: one row per record, right-padded, with an attention mask."""

    def __init__(
        self, source: RecordSource, encoder: RecordEncoder, pad_token_id: int, image_token_id: int, video_token_id: int
    ) -> None:
        self.source = source
        self.encoder = encoder
        self.pad_token_id = pad_token_id
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        examples = _encode_bins(self.source, self.encoder, features)
        width = max(len(e.input_ids) for e in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e.input_ids)
            input_ids[i, :n], labels[i, :n], attention_mask[i, :n] = e.input_ids, e.labels, 1
        batch = {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "mm_token_type_ids": modality_types(input_ids, self.image_token_id, self.video_token_id),
        }
        batch.update(_cat_media(examples))
        return batch


# --------------------------------------------------------------------------------------------------------------------
# Datasets


class RecordSource(Protocol):
    """Records by index, and the folder each one's media paths are relative to."""

    def __len__(self) -> int: ...

    def __getitem__(self, k: int) -> dict[str, Any]: ...

    def media_root_of(self, k: int) -> str | None: ...


@dataclass(frozen=True)
class RecordList:
    """A ``RecordSource`` over an in-memory list of records sharing one media root."""

    records: Sequence[dict[str, Any]]
    media_root: str | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self.records[k]

    def media_root_of(self, k: int) -> str | None:
        return self.media_root


def bins_dataset(bins: list[list[int]]) -> Any:
    """The training dataset TRL iterates: one row per bin, ``{"bin": [record indices]}``."""
    from datasets import Dataset

    return Dataset.from_dict({"bin": bins})


def _encode_bins(source: RecordSource, encoder: RecordEncoder, features: list[dict[str, Any]]) -> list[Example]:
    return [encoder(source[k], source.media_root_of(k)) for f in features for k in f["bin"]]
