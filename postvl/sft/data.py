"""SFT data: the packing plan and collators (packed with exact mRoPE, or padded) over records encoded by
``postvl.training.encoding`` (the encoder SFT and DPO share).

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
from typing import Any

from postvl.training.encoding import IGNORE_INDEX, Example, RecordEncoder, RecordSource, modality_types

logger = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------------------------------------------------
# Collators


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


def bins_dataset(bins: list[list[int]]) -> Any:
    """The training dataset TRL iterates: one row per bin, ``{"bin": [record indices]}``."""
    from datasets import Dataset

    return Dataset.from_dict({"bin": bins})


def _encode_bins(source: RecordSource, encoder: RecordEncoder, features: list[dict[str, Any]]) -> list[Example]:
    return [encoder(source[k], source.media_root_of(k)) for f in features for k in f["bin"]]
