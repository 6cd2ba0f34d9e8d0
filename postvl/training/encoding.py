"""Records -> model inputs, shared by SFT and DPO: one encoder for every supported family.

Every supported family (``postvl.families``) is encoded as its own processor would: the family's template renders the
text, its image and video processors make the pixels, and a Qwen3-VL video carries ``<t seconds>`` and a vision block
per temporal patch, stamped from the frames the video processor sampled. A processor of any other family fails at
once. Labels are exactly the builder's trained spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

IGNORE_INDEX = -100


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
            raise ValueError(
                f"{self.family.title} merges {self.family.merge_size} x {self.family.merge_size}, "
                f"but the image processor has merge_size {self.merge}"
            )
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
            metas.append(
                VideoMetadata(
                    total_num_frames=len(clip),
                    fps=fps,
                    frames_indices=list(range(len(clip))),
                    height=clip.shape[1],
                    width=clip.shape[2],
                )
            )
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
    import numpy as np

    from postvl.media import read_video_frames

    full = Path(media_root) / path if media_root is not None else Path(path)
    frames, fps = read_video_frames(full)
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


def modality_types(input_ids: Any, image_token_id: int, video_token_id: int) -> Any:
    """Per-token modality for ``get_rope_index``: text 0, image 1, video 2."""
    import torch

    types = torch.zeros_like(input_ids, dtype=torch.int32)
    types[input_ids == image_token_id] = 1
    types[input_ids == video_token_id] = 2
    return types


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
