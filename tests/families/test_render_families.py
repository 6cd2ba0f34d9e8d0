"""Rendering, token counts and labels of every family against its own template, processor and TRL's collator."""

from __future__ import annotations

import random

import jinja2
import numpy as np
import pytest
from PIL import Image

from postvl.chatml.render import (
    IGNORE_INDEX,
    count_media,
    count_tokens,
    render,
    render_with_spans,
    resolve_family,
    tokenize_with_labels,
)
from postvl.families import FAMILY_NAMES, UnsupportedFamilyError, get_family
from postvl.media import PixelConfig, VideoInfo, probe_video, video_tokens
from postvl.records import RecordError, image_part, message, text_part, video_part

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SHAPES = {
    "text_only": [message("user", "Hello world"), message("assistant", "Hello world")],
    "single_image": [message("user", image_part(), "What is this?"), message("assistant", "A cat.")],
    "multi_image": [
        message("user", image_part(), image_part(), "Compare.", image_part()),
        message("assistant", "The first is larger."),
    ],
    "video": [message("user", video_part(), "What happens?"), message("assistant", "A square moves.")],
    "image_and_video": [message("user", image_part(), video_part(), "Same?"), message("assistant", "No.")],
    "system": [message("system", "Be terse."), message("user", "Hi"), message("assistant", "Hi.")],
    "system_string": [{"role": "system", "content": "S"}, {"role": "user", "content": "plain"}],
    "multi_turn": [
        message("user", image_part(), "Count the dots."),
        message("assistant", "3"),
        message("user", "Sure?", image_part()),
        message("assistant", "Yes, 3.\n\nFinal answer: 3"),
    ],
    "empty_text_parts": [message("user", "", image_part(), ""), message("assistant", "")],
    "unicode": [message("user", "你好\n世界 🙂"), message("assistant", 'こんにちは\r\n\t"q"')],
    "ends_with_user": [message("user", "a"), message("assistant", "b"), message("user", image_part(), "c")],
    "text_none": [message("user", {"type": "text", "text": None}), message("assistant", "ok")],
}
PIECES = ["What?", "A cat.", "", " ", "\n", "\n\n", "你好", "🙂", "{{ x }}", "None", "Line\r\nTwo", "x" * 30]


@pytest.fixture(scope="module")
def processors(tiny_family_model):
    from transformers import AutoProcessor

    return {name: AutoProcessor.from_pretrained(tiny_family_model(name)) for name in FAMILY_NAMES}


def _random_conversation(rng: random.Random) -> list[dict]:
    def content(media: bool):
        if rng.random() < 0.1:
            return rng.choice(PIECES)
        parts = []
        for _ in range(rng.randint(1, 4)):
            if media and rng.random() < 0.35:
                parts.append({"type": rng.choice(["image", "video"])})
            else:
                parts.append(text_part("".join(rng.choice(PIECES) for _ in range(rng.randint(1, 3)))))
        return parts

    messages = [{"role": "system", "content": content(False)}] if rng.random() < 0.4 else []
    for _ in range(rng.randint(1, 3)):
        messages += [{"role": "user", "content": content(True)}, {"role": "assistant", "content": content(False)}]
    return messages


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_render_equals_the_familys_template(processors, name):
    processor = processors[name]
    family = get_family(name)
    raw = jinja2.Environment().from_string(family.chat_template())
    assert processor.chat_template == family.chat_template()
    for shape, messages in SHAPES.items():
        for kwargs in ({}, {"add_generation_prompt": True}, {"add_vision_id": True}):
            expected = processor.apply_chat_template(messages, tokenize=False, **kwargs)
            assert render(messages, family=name, **kwargs) == expected, shape
            assert raw.render(messages=messages, **kwargs) == expected
    rng = random.Random(5)
    for i in range(150):
        messages = _random_conversation(rng)
        kwargs = {"add_generation_prompt": i % 2 == 1, "add_vision_id": i % 3 == 0}
        assert render(messages, family=name, **kwargs) == processor.apply_chat_template(
            messages, tokenize=False, **kwargs
        )


def test_default_system_rule_differs():
    messages = SHAPES["single_image"]
    assert render(messages, family="qwen2_vl").startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert render(messages, family="qwen3_vl").startswith("<|im_start|>user\n<|vision_start|>")


def test_qwen3_refuses_media_its_template_would_drop():
    messages = [message("user", "Draw"), message("assistant", "Here: ", image_part(), " done")]
    assert "<|image_pad|>" in render(messages, family="qwen2_5_vl")
    with pytest.raises(ValueError, match="drops images and videos in assistant turns"):
        render(messages, family="qwen3_vl")


def test_family_is_required_or_found_from_the_tokenizer(processors):
    with pytest.raises(ValueError, match="pass family="):
        render(SHAPES["text_only"])
    assert resolve_family(None, processors["qwen3_vl"]).name == "qwen3_vl"
    assert resolve_family(None, processors["qwen3_vl"].tokenizer).video_timestamps
    assert resolve_family(None, processors["qwen2_vl"].tokenizer).default_system == "You are a helpful assistant."
    tokenizer = processors["qwen3_vl"].tokenizer
    saved = tokenizer.chat_template
    try:
        tokenizer.chat_template = "{{ messages }}"
        with pytest.raises(UnsupportedFamilyError, match="not the official template"):
            count_tokens(SHAPES["text_only"], [], [], tokenizer)
    finally:
        tokenizer.chat_template = saved


# --------------------------------------------------------------------------------------------------------------------
# num_tokens against each family's processor, on real image and video files


def _mp4(path, frames: int, fps: float, size: tuple[int, int]):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), (i * 9) % 255, np.uint8))
    writer.release()
    return path


RECORDS = {
    "text_only": (SHAPES["text_only"], [], []),
    "single_image": (SHAPES["single_image"], [(100, 80)], []),
    "multi_image": (SHAPES["multi_image"], [(64, 64), (300, 40), (130, 190)], []),
    "video": (SHAPES["video"], [], [(12, 4.0, (90, 50))]),
    "image_and_video": (SHAPES["image_and_video"], [(70, 70)], [(25, 10.0, (64, 48))]),
    "two_videos_multi_turn": (
        [
            message("system", "Watch closely."),
            message("user", video_part(), "What moves?"),
            message("assistant", "A square."),
            message("user", "And here?", video_part()),
            message("assistant", "Nothing."),
        ],
        [],
        [(9, 3.0, (80, 60)), (40, 25.0, (100, 70))],
    ),
}


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_num_tokens_equal_the_familys_processor(processors, name, tmp_path):
    from transformers.video_utils import load_video

    processor = processors[name]
    cfg = PixelConfig.from_processor(processor)
    assert cfg.family == ("qwen3_vl" if name == "qwen3_vl_moe" else name)
    from postvl.media import image_token_count

    for key, (messages, image_sizes, video_specs) in RECORDS.items():
        images = [Image.new("RGB", size, "red") for size in image_sizes]
        paths = [_mp4(tmp_path / f"{key}{i}.mp4", n, fps, size) for i, (n, fps, size) in enumerate(video_specs)]
        decoded = [load_video(str(p), backend="opencv") for p in paths]
        out = processor(
            text=[render(messages, family=name)],
            images=images or None,
            videos=[v for v, _ in decoded] or None,
            videos_kwargs={"video_metadata": [m for _, m in decoded], "do_sample_frames": True} if decoded else {},
        )
        expected = out["input_ids"][0]
        image_tokens = [image_token_count(im.height, im.width, cfg) for im in images]
        layouts = [video_tokens(probe_video(p), cfg) for p in paths]
        assert count_tokens(messages, image_tokens, layouts, processor) == len(expected), key
        padded = render(messages, family=name, image_pad_counts=image_tokens, video_pad_counts=layouts)
        assert processor.tokenizer(padded)["input_ids"] == list(expected), key
        ids, labels = tokenize_with_labels(messages, processor, image_tokens, layouts)
        assert ids == list(expected), key
        assert len(labels) == len(ids)
        if name.startswith("qwen3") and paths:
            text = processor.tokenizer.decode(expected)
            assert text.count(" seconds>") == sum(len(v.timestamps) for v in layouts)


def test_qwen3_video_timestamps_follow_fps_and_frame_indices():
    cfg = get_family("qwen3_vl").pixel_config(
        min_pixels=64 * 64, max_pixels=128 * 128, video_min_pixels=64 * 64, video_max_pixels=4 * 128 * 128
    )
    layout = video_tokens(VideoInfo(num_frames=40, fps=25.0, width=100, height=70), cfg)
    # int(40 / 25 * 2) = 3 frames -> clamped up to min_frames 4 at linspace(0, 39, 4).round() = 0, 13, 26, 39
    assert layout.timestamps == pytest.approx(((0 + 13) / 2 / 25, (26 + 39) / 2 / 25))
    assert layout.placeholder().startswith("<0.3 seconds><|vision_start|><|video_pad|>")
    assert layout.placeholder().count("<|vision_start|>") == layout.patches == 2


def test_qwen3_refuses_a_video_without_a_frame_rate():
    cfg = get_family("qwen3_vl").pixel_config()
    guessed = VideoInfo(num_frames=8, fps=10.0, width=64, height=64, fps_assumed=True)
    with pytest.raises(RecordError) as err:
        video_tokens(guessed, cfg)
    assert err.value.reason == "video_without_fps"
    # Qwen2.5-VL's count does not depend on timestamps, so its guess is harmless there.
    assert video_tokens(guessed, get_family("qwen2_5_vl").pixel_config()).timestamps is None
    with pytest.raises(ValueError, match="VideoTokens"):
        count_tokens(SHAPES["video"], [], [16], "unused", family="qwen3_vl")


def test_qwen3_labels_train_assistant_text_only_and_mask_timestamps(processors, tmp_path):
    processor = processors["qwen3_vl"]
    cfg = PixelConfig.from_processor(processor)
    layout = video_tokens(probe_video(_mp4(tmp_path / "v.mp4", 12, 4.0, (90, 50))), cfg)
    messages = SHAPES["two_videos_multi_turn"] if "two_videos_multi_turn" in SHAPES else RECORDS["video"][0]
    ids, labels = tokenize_with_labels(messages, processor, [], [layout])
    trained = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert processor.tokenizer.decode(trained) == "A square moves.<|im_end|>"
    text, spans = render_with_spans(messages, family="qwen3_vl", video_pad_counts=[layout])
    assert [text[a:b] for a, b in spans] == ["A square moves.<|im_end|>"]
    assert count_media(messages) == (0, 1)


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen3_vl"])
def test_labels_equal_trl_assistant_only_loss(processors, name):
    from trl.chat_template_utils import get_training_chat_template
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    processor = processors[name]
    template = get_training_chat_template(processor)
    assert template is not None
    collator = DataCollatorForVisionLanguageModeling(
        processor=processor, assistant_only_loss=True, chat_template=template
    )
    cfg = PixelConfig.from_processor(processor)
    from postvl.media import image_token_count

    rng = random.Random(11)
    for i in range(12):
        messages = SHAPES["multi_turn"] if i == 0 else _random_conversation(rng)
        for msg in messages:  # TRL's collator takes images only, in list content
            if isinstance(msg["content"], str):
                msg["content"] = [text_part(msg["content"])]
            msg["content"] = [p if p.get("type") != "video" else text_part("v") for p in msg["content"]]
        n_images, _ = count_media(messages)
        images = [Image.new("RGB", (rng.randint(40, 200), rng.randint(40, 200)), "blue") for _ in range(n_images)]
        batch = collator([{"messages": messages, "images": images}])
        tokens = [image_token_count(im.height, im.width, cfg) for im in images]
        ids, labels = tokenize_with_labels(messages, processor, tokens, [], train_turn_newline=True)
        assert ids == batch["input_ids"][0].tolist()
        assert labels == batch["labels"][0].tolist(), messages
