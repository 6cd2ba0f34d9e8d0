"""DPO data: preference records -> the stacked batch TRL's DPOTrainer consumes.

Every supported family is encoded through its own template and processors (``postvl.training.encoding.RecordEncoder``).
A preference record (``postvl.records``) holds ``prompt`` messages, ``chosen`` and ``rejected`` assistant messages and
the prompt's ``images`` / ``videos``. Both sides are rendered and tokenized by the builder's own code
(``postvl.chatml.render.tokenize_with_labels``); the completion mask is each side's trained span after the prompt
(the assistant content and its ``<|im_end|>``), so DPO scores exactly the tokens SFT trained.

A batch of B pairs is laid out as TRL's vision collator lays it out: rows ``[chosen_0..chosen_B-1, rejected_0..]``
right-padded, ``completion_mask``, ``mm_token_type_ids``, and the media of the chosen rows followed by the same media
for the rejected rows. ``postvl.dpo.vision_cache`` recognises that repetition and encodes each image once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postvl.training.encoding import IGNORE_INDEX, Example, RecordEncoder, RecordSource, modality_types

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedPair:
    """One preference record as model inputs (unbatched tensors); media belong to the prompt."""

    chosen_ids: Any  # LongTensor (Lc,)
    chosen_mask: Any  # LongTensor (Lc,), 1 on scored tokens
    rejected_ids: Any
    rejected_mask: Any
    media: Example  # pixel values and grids (its input_ids / labels are the chosen side's)

    @property
    def num_tokens(self) -> int:
        return max(len(self.chosen_ids), len(self.rejected_ids))


class PreferenceEncoder:
    """Encodes a preference record: pixels once through the processor, both sides through the builder's renderer.

    Args:
        processor: the model's processor (pixel limits already set).
        train_turn_newline: also score the ``"\\n"`` after each ``<|im_end|>``, as TRL's own collator does.
    """

    def __init__(self, processor: Any, *, train_turn_newline: bool = False) -> None:
        self.records = RecordEncoder(processor, train_turn_newline=train_turn_newline)  # fails for other families
        self.family = self.records.family
        self.train_turn_newline = train_turn_newline

    def __call__(self, record: dict[str, Any], media_root: str | Path | None = None) -> EncodedPair:
        import torch

        from postvl.chatml.render import tokenize_with_labels

        prompt = list(record["prompt"])
        for side in ("chosen", "rejected"):
            if any(part["type"] != "text" for msg in record[side] for part in msg["content"]):
                raise ValueError(
                    f"record {record.get('id')!r}: its {side} answer holds an image or video part; DPO pairs keep "
                    "media in the prompt (rebuild the record with the media in a user turn)"
                )
        chosen = self.records(
            {"messages": prompt + list(record["chosen"]), "images": record.get("images"),
             "videos": record.get("videos")},
            media_root,
        )
        # the rejected side and the bare prompt are rendered around the chosen side's media (same counts; for
        # Qwen3-VL videos the same timestamps), in the processor's family's template
        image_tokens, video_tokens = list(chosen.image_tokens), list(chosen.video_tokens)
        processor = self.records.processor
        n_prompt = len(tokenize_with_labels(prompt, processor, image_tokens, video_tokens)[0])
        rejected_ids, rejected_labels = tokenize_with_labels(
            prompt + list(record["rejected"]),
            processor,
            image_tokens,
            video_tokens,
            train_turn_newline=self.train_turn_newline,
        )
        rejected_ids = torch.tensor(rejected_ids, dtype=torch.long)
        rejected_labels = torch.tensor(rejected_labels, dtype=torch.long)
        return EncodedPair(
            chosen_ids=chosen.input_ids,
            chosen_mask=_completion_mask(chosen.labels, n_prompt),
            rejected_ids=rejected_ids,
            rejected_mask=_completion_mask(rejected_labels, n_prompt),
            media=chosen,
        )


def _completion_mask(labels: Any, n_prompt: int) -> Any:
    """1 on trained tokens after the prompt (earlier assistant turns of a multi-turn prompt are context only)."""
    import torch

    mask = (labels != IGNORE_INDEX).long()
    mask[: min(n_prompt, len(mask))] = 0
    if not torch.any(mask):
        raise ValueError("a preference side has no scored token after the prompt")
    return mask


class PreferenceCollator:
    """Stacks pairs as ``[chosen..., rejected...]`` rows with TRL's keys; the media are repeated for both halves.

    Each dataset item is ``{"index": k}`` (a record of ``source``), plus ``ref_chosen_logps`` /
    ``ref_rejected_logps`` when reference log-probs were precomputed.
    """

    def __init__(
        self,
        source: RecordSource,
        encoder: PreferenceEncoder,
        pad_token_id: int,
        image_token_id: int,
        video_token_id: int,
    ) -> None:
        self.source = source
        self.encoder = encoder
        self.pad_token_id = pad_token_id
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        pairs = [self.encoder(self.source[f["index"]], self.source.media_root_of(f["index"])) for f in features]
        rows = [(p.chosen_ids, p.chosen_mask) for p in pairs] + [(p.rejected_ids, p.rejected_mask) for p in pairs]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, mask) in enumerate(rows):
            n = len(ids)
            input_ids[i, :n], attention_mask[i, :n], completion_mask[i, :n] = ids, 1, mask
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "completion_mask": completion_mask,
            "mm_token_type_ids": modality_types(input_ids, self.image_token_id, self.video_token_id),
        }
        for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
            parts = [getattr(p.media, key) for p in pairs if getattr(p.media, key) is not None]
            if parts:
                batch[key] = torch.cat(parts * 2)
        seconds = [s for p in pairs for s in (p.media.second_per_grid_ts or [])]
        if seconds:
            batch["second_per_grid_ts"] = torch.tensor(seconds * 2)
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in features[0]:
                batch[key] = torch.tensor([f[key] for f in features], dtype=torch.float32)
        return batch


def pair_lengths(source: Any, encoder: PreferenceEncoder) -> list[int]:
    """Tokens of the longer side of each pair: the builder's stored ``num_tokens`` where known, else encoded."""
    return [
        n if n is not None else encoder(source[k], source.media_root_of(k)).num_tokens
        for k, n in enumerate(source.num_tokens())
    ]


def index_dataset(indices: list[int]) -> Any:
    """The dataset TRL iterates: one row per pair, ``{"index": k}``; the collator loads and encodes the record."""
    from datasets import Dataset

    return Dataset.from_dict({"index": indices})
