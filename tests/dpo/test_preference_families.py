"""Preference pairs of every family: both sides share the prompt (media and Qwen3-VL timestamps included), only the
answers are scored, and a Qwen3-VL pair with a video equals what Qwen3VLProcessor makes of prompt + answer."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor
from transformers.video_utils import VideoMetadata

from postvl.dpo.data import PreferenceCollator, PreferenceEncoder
from postvl.families import FAMILY_NAMES, get_family
from postvl.training.encoding import RecordList


def _pair(root):
    Image.new("RGB", (96, 64), (200, 30, 30)).save(root / "img.png")
    writer = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 4.0, (64, 64))
    for i in range(12):
        writer.write(np.full((64, 64, 3), (i * 19) % 255, np.uint8))
    writer.release()
    user = {"role": "user", "content": [{"type": "video"}, {"type": "image"}, {"type": "text", "text": "Which?"}]}
    return {
        "id": "p",
        "prompt": [user],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "The red one."}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "Neither, I think."}]}],
        "images": ["img.png"],
        "videos": ["clip.mp4"],
    }


def _expected(processor, record, root, side, family):
    cap = cv2.VideoCapture(str(root / "clip.mp4"))
    fps, frames = cap.get(cv2.CAP_PROP_FPS), []
    ok, frame = cap.read()
    while ok:
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        ok, frame = cap.read()
    cap.release()
    text = processor.apply_chat_template(record["prompt"] + record[side], tokenize=False)
    image = Image.open(root / "img.png").convert("RGB")
    if family.startswith("qwen3"):  # every frame and the fps: the processor samples and stamps them itself
        meta = VideoMetadata(total_num_frames=len(frames), fps=fps, frames_indices=list(range(len(frames))))
        return processor(text=[text], images=[image], videos=[np.stack(frames)], video_metadata=[meta],
                         do_sample_frames=True, return_tensors="pt")
    return None


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_pairs_encode_as_the_processor_and_score_only_the_answers(tiny_family_model, tmp_path, family):
    processor = AutoProcessor.from_pretrained(tiny_family_model(family))
    record = _pair(tmp_path)
    encoder = PreferenceEncoder(processor)
    pair = encoder(record, tmp_path)
    tok = processor.tokenizer
    # Qwen3.5: each side is scored as the template renders it, its (here empty) think block included; the block is
    # the same on both sides, so it cancels in the chosen - rejected log-ratio
    think = "<think>\n\n</think>\n\n" if get_family(family).thinking else ""
    assert tok.decode(pair.chosen_ids[pair.chosen_mask.bool()]) == f"{think}The red one.<|im_end|>"
    assert tok.decode(pair.rejected_ids[pair.rejected_mask.bool()]) == f"{think}Neither, I think.<|im_end|>"
    # both sides share the prompt, media tokens (and Qwen3-VL's timestamps) included
    n = int(pair.chosen_mask.nonzero()[0])
    assert torch.equal(pair.chosen_ids[:n], pair.rejected_ids[:n])
    expected = _expected(processor, record, tmp_path, "rejected", family)
    if expected is not None:
        assert pair.rejected_ids.tolist() == expected["input_ids"][0].tolist()
        assert torch.equal(pair.media.pixel_values_videos, expected["pixel_values_videos"])
        assert tok.decode(pair.rejected_ids).count(" seconds>") == int(pair.media.video_grid_thw[0, 0])
    batch = PreferenceCollator(RecordList([record], str(tmp_path)), encoder, tok.pad_token_id,
                               tok.convert_tokens_to_ids("<|image_pad|>"), tok.convert_tokens_to_ids("<|video_pad|>"))(
        [{"index": 0}])
    assert batch["input_ids"].shape[0] == 2 and batch["video_grid_thw"].shape[0] == 2  # media repeated per side
    assert ("second_per_grid_ts" in batch) == (family == "qwen2_5_vl")
