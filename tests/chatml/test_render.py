"""ChatML rendering, token counts and assistant-only labels against the official template, processor and TRL."""

from __future__ import annotations

import random
import time

import jinja2
import numpy as np
import pytest
from PIL import Image

from postvl.chatml.render import (
    IGNORE_INDEX,
    IMAGE_PAD,
    VIDEO_PAD,
    assistant_label_spans,
    count_media,
    count_tokens,
    count_tokens_batch,
    render,
    render_with_spans,
    tokenize_with_labels,
    trained_token_spans,
)
from postvl.modeling import chat_template
from postvl.records import image_part, message, text_part, video_part

IM_START, IM_END, IMAGE_PAD_ID, VISION_START_ID, VISION_END_ID = 151644, 151645, 151655, 151652, 151653
SYSTEM, USER, ASSISTANT, NEWLINE = 8948, 872, 77091, 198
DEFAULT_SYSTEM_IDS = [2610, 525, 264, 10950, 17847, 13]  # "You are a helpful assistant."
HELLO_WORLD = [9707, 1879]
Q25 = "qwen2_5_vl"  # the family these tests pin (tests/families/ covers the others)

TEXT_PIECES = [
    "What is shown here?", "A cat.", "", " ", "\n", "\n\n", "  leading spaces", "trailing newline\n", "\tTab",
    "你好，世界！这张图片里有什么？", "日本語のテキスト", "émigré café naïve", "🙂🚀 emoji", "ZWJ 👩‍👩‍👧",
    "math: $x^2 + y^2 = z^2$", "{{ not a template }}", "{% raw %}", "quote \" and ' and \\ backslash",
    "<b>html</b>", "None", "Line one\nLine two\r\nLine three", "1234567890", "x" * 50, "\u200b zero width",
]  # fmt: skip
RENDER_ONLY_PIECES = ["<|im_end|> literal", "<|im_start|>assistant\n"]


# --------------------------------------------------------------------------------------------------------------------
# Conversation generators


def _random_text(rng: random.Random, pieces: list[str]) -> str:
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 3)))


def _random_media_part(rng: random.Random, allow_video: bool) -> dict:
    kind = "video" if allow_video and rng.random() < 0.3 else "image"
    # records from Parquet carry text=None on media parts; hand-written ones often omit it
    return {"type": kind, "text": None} if rng.random() < 0.5 else {"type": kind}


def _random_content(rng: random.Random, pieces: list[str], media: bool, allow_video: bool) -> list[dict] | str:
    if rng.random() < 0.1:
        return _random_text(rng, pieces)  # the template also takes plain-string content
    parts = []
    for _ in range(rng.randint(1, 4)):
        if media and rng.random() < 0.35:
            parts.append(_random_media_part(rng, allow_video))
        else:
            parts.append(text_part(_random_text(rng, pieces)))
    return parts


def random_conversation(
    rng: random.Random,
    *,
    pieces: list[str] = TEXT_PIECES,
    assistant_media: bool = True,
    allow_video: bool = True,
    string_content: bool = True,
) -> list[dict]:
    messages = []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": _random_content(rng, pieces, False, False)})
    for _ in range(rng.randint(1, 3)):
        messages.append({"role": "user", "content": _random_content(rng, pieces, True, allow_video)})
        messages.append({"role": "assistant", "content": _random_content(rng, pieces, assistant_media, allow_video)})
    if rng.random() < 0.15:
        messages.append({"role": "user", "content": _random_content(rng, pieces, True, allow_video)})
    if not string_content:
        for msg in messages:
            if isinstance(msg["content"], str):
                msg["content"] = [text_part(msg["content"])]
    return messages


SHAPES = {
    "text_only": [message("user", "Hello world"), message("assistant", "Hello world")],
    "single_image": [message("user", image_part(), "What is this?"), message("assistant", "A cat.")],
    "image_after_text": [message("user", "Look:", image_part()), message("assistant", "Red.")],
    "multi_image_turn": [
        message("user", image_part(), image_part(), "Compare.", image_part()),
        message("assistant", "The first is larger."),
    ],
    "video": [message("user", video_part(), "What happens?"), message("assistant", "A square moves.")],
    "image_and_video": [message("user", image_part(), video_part(), "Same?"), message("assistant", "No.")],
    "system_prompt": [message("system", "Be terse."), message("user", "Hi"), message("assistant", "Hi.")],
    "multi_turn": [
        message("user", image_part(), "Count the dots."),
        message("assistant", "3"),
        message("user", "Sure?", image_part()),
        message("assistant", "Yes, 3.\n\nFinal answer: 3"),
    ],
    "empty_text_parts": [message("user", "", image_part(), ""), message("assistant", "")],
    "assistant_image": [message("user", "Draw"), message("assistant", "Here: ", image_part(), " done")],
    "string_content": [{"role": "user", "content": "plain"}, {"role": "assistant", "content": "string"}],
    "chinese_unicode": [message("user", "你好\n世界 🙂"), message("assistant", 'こんにちは\r\n\t"q"')],
    "ends_with_user": [message("user", "a"), message("assistant", "b"), message("user", image_part(), "c")],
    "system_not_first": [message("user", "a"), message("system", "late"), message("assistant", "b")],
    "text_none": [message("user", {"type": "text", "text": None}), message("assistant", "ok")],
}


@pytest.fixture(scope="module")
def template_tokenizer(render_small_processor):
    return render_small_processor.tokenizer


@pytest.fixture(scope="module")
def raw_jinja():
    return jinja2.Environment().from_string(chat_template())


def _expand(text: str, pad: str, counts: list[int]) -> str:
    pieces = text.split(pad)
    assert len(pieces) == len(counts) + 1
    return pieces[0] + "".join(pad * n + rest for n, rest in zip(counts, pieces[1:], strict=True))


# --------------------------------------------------------------------------------------------------------------------
# render


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("add_vision_id", [False, True])
def test_render_equals_official_template(shape, add_generation_prompt, add_vision_id, template_tokenizer, raw_jinja):
    messages = SHAPES[shape]
    kwargs = dict(add_generation_prompt=add_generation_prompt, add_vision_id=add_vision_id)
    expected = template_tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    assert render(messages, family=Q25, **kwargs) == expected
    assert raw_jinja.render(messages=messages, **kwargs) == expected


def test_render_known_text():
    assert render(SHAPES["single_image"], family=Q25, add_generation_prompt=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
    )
    assert render(SHAPES["multi_turn"][:1], family=Q25, add_generation_prompt=True, add_vision_id=True).endswith(
        "<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>Count the dots.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_render_property_random_conversations(template_tokenizer, raw_jinja):
    rng = random.Random(1234)
    for i in range(400):
        messages = random_conversation(rng, pieces=TEXT_PIECES + RENDER_ONLY_PIECES)
        kwargs = dict(add_generation_prompt=i % 2 == 1, add_vision_id=i % 3 == 0)
        expected = template_tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        assert render(messages, family=Q25, **kwargs) == expected, messages
        assert raw_jinja.render(messages=messages, **kwargs) == expected
        n_images, n_videos = count_media(messages)
        image_counts = [rng.randint(1, 5) for _ in range(n_images)]
        video_counts = [rng.randint(1, 5) for _ in range(n_videos)]
        expanded = _expand(_expand(expected, IMAGE_PAD, image_counts), VIDEO_PAD, video_counts)
        got = render(messages, family=Q25, image_pad_counts=image_counts, video_pad_counts=video_counts, **kwargs)
        assert got == expanded


def test_render_pad_counts_must_match_parts():
    with pytest.raises(ValueError, match="more image parts than the 1 image pad counts"):
        render(SHAPES["multi_image_turn"], family=Q25, image_pad_counts=[4])
    with pytest.raises(ValueError, match="2 image pad counts given for 1 image parts"):
        render(SHAPES["single_image"], family=Q25, image_pad_counts=[4, 4])
    with pytest.raises(ValueError, match="more video parts than the 0 video pad counts"):
        render(SHAPES["video"], family=Q25, video_pad_counts=[])
    with pytest.raises(TypeError, match="content part must be a dict"):
        render([{"role": "user", "content": ["just a string"]}], family=Q25)


def test_render_is_fast():
    rng = random.Random(0)
    conversations = [random_conversation(rng) for _ in range(2000)]
    start = time.perf_counter()
    for messages in conversations:
        render(messages, family=Q25)
    per_record = (time.perf_counter() - start) / len(conversations)
    assert per_record < 1e-3, f"render took {per_record * 1e6:.0f} us per record"


# --------------------------------------------------------------------------------------------------------------------
# Label spans on characters


def test_assistant_label_spans_cover_content_and_im_end():
    messages = SHAPES["multi_turn"]
    text, spans = render_with_spans(messages, family=Q25)
    assert text == render(messages, family=Q25)
    assert [text[a:b] for a, b in spans] == ["3<|im_end|>", "Yes, 3.\n\nFinal answer: 3<|im_end|>"]
    with_newline = assistant_label_spans(messages, family=Q25, train_turn_newline=True)
    assert [text[a:b] for a, b in with_newline] == ["3<|im_end|>\n", "Yes, 3.\n\nFinal answer: 3<|im_end|>\n"]


def test_assistant_label_spans_skip_vision_blocks_and_empty_content():
    text, spans = render_with_spans(SHAPES["assistant_image"], family=Q25, add_vision_id=True, image_pad_counts=[3])
    assert [text[a:b] for a, b in spans] == ["Here: Picture 1: ", " done<|im_end|>"]
    text, spans = render_with_spans(SHAPES["empty_text_parts"], family=Q25)
    assert [text[a:b] for a, b in spans] == ["<|im_end|>"]


# --------------------------------------------------------------------------------------------------------------------
# Token counts against the real processor


def _video_tokens(processor, video) -> int:
    out = processor.video_processor(videos=[video], return_tensors="pt")
    return int(out["video_grid_thw"][0].prod()) // processor.video_processor.merge_size**2


def _image_tokens(processor, image) -> int:
    out = processor.image_processor(images=[image], return_tensors="pt")
    return int(out["image_grid_thw"][0].prod()) // processor.image_processor.merge_size**2


IMAGE_SIZES = [(112, 112), (56, 56), (200, 100), (30, 300), (640, 480), (57, 113)]


def test_image_token_count_anchor(render_small_processor):
    assert _image_tokens(render_small_processor, Image.new("RGB", (112, 112))) == 16


def test_count_tokens_equals_processor_input_ids(render_small_processor):
    processor = render_small_processor
    rng = random.Random(7)
    # several videos in one sample go in as (frames, height, width, 3) arrays; nested frame lists are ambiguous
    videos = [np.zeros((4, 84, 112, 3), dtype=np.uint8), np.zeros((6, 56, 84, 3), dtype=np.uint8)]
    for _ in range(25):
        messages = random_conversation(rng)
        n_images, n_videos = count_media(messages)
        images = [Image.new("RGB", rng.choice(IMAGE_SIZES), "red") for _ in range(n_images)]
        clips = [rng.choice(videos) for _ in range(n_videos)]
        image_tokens = [_image_tokens(processor, im) for im in images]
        video_tokens = [_video_tokens(processor, v) for v in clips]
        out = processor(text=[render(messages, family=Q25)], images=images or None, videos=clips or None)
        expected = len(out["input_ids"][0])
        assert count_tokens(messages, image_tokens, video_tokens, processor.tokenizer) == expected
        assert count_tokens(messages, image_tokens, video_tokens, processor) == expected
        padded = render(messages, family=Q25, image_pad_counts=image_tokens, video_pad_counts=video_tokens)
        assert processor.tokenizer(padded)["input_ids"] == out["input_ids"][0]


def test_count_tokens_video_of_pil_frames(render_small_processor):
    processor = render_small_processor
    frames = [Image.new("RGB", (112, 84), (40 * i, 0, 0)) for i in range(4)]
    messages = SHAPES["image_and_video"]
    image = Image.new("RGB", (112, 112))
    out = processor(text=[render(messages, family=Q25)], images=[image], videos=[frames])
    assert out["video_grid_thw"].tolist() == [[2, 6, 8]]  # 4 frames -> 2 temporal patches of 6x8 -> 24 tokens
    assert count_tokens(messages, [16], [24], processor) == len(out["input_ids"][0])


def test_count_tokens_batch_equals_single(render_small_processor):
    rng = random.Random(3)
    batch = [random_conversation(rng) for _ in range(50)]
    images = [[rng.randint(4, 64) for _ in range(count_media(m)[0])] for m in batch]
    videos = [[rng.randint(4, 64) for _ in range(count_media(m)[1])] for m in batch]
    single = [
        count_tokens(m, i, v, render_small_processor.tokenizer) for m, i, v in zip(batch, images, videos, strict=True)
    ]
    assert count_tokens_batch(batch, images, videos, render_small_processor.tokenizer) == single


def test_count_tokens_errors_name_the_fix(render_small_processor):
    tok = render_small_processor.tokenizer
    with pytest.raises(ValueError, match="1 image and 0 video parts but 2 image"):
        count_tokens(SHAPES["single_image"], [16, 16], [], tok)
    literal = [message("user", image_part(), f"see {IMAGE_PAD}"), message("assistant", "ok")]
    with pytest.raises(ValueError, match="literal"):
        count_tokens(literal, [16], [], tok)
    with pytest.raises(ValueError, match="one list"):
        count_tokens_batch([SHAPES["text_only"]], [], [], tok)


# --------------------------------------------------------------------------------------------------------------------
# Labels with the real Qwen vocabulary


def test_tokenize_with_labels_exact_ids(qwen_tokenizer):
    ids, labels = tokenize_with_labels(SHAPES["text_only"], qwen_tokenizer)
    header = [IM_START, SYSTEM, NEWLINE, *DEFAULT_SYSTEM_IDS, IM_END, NEWLINE]
    user = [IM_START, USER, NEWLINE, *HELLO_WORLD, IM_END, NEWLINE]
    assistant_header = [IM_START, ASSISTANT, NEWLINE]
    assert ids == header + user + assistant_header + HELLO_WORLD + [IM_END, NEWLINE]
    masked = [IGNORE_INDEX] * (len(header) + len(user) + len(assistant_header))
    assert labels == masked + HELLO_WORLD + [IM_END, IGNORE_INDEX]


def test_tokenize_with_labels_image_expansion_exact_ids(qwen_tokenizer):
    messages = [message("user", image_part(), "Hello world"), message("assistant", "Hello world")]
    ids, labels = tokenize_with_labels(messages, qwen_tokenizer, [4], [])
    user = [
        IM_START,
        USER,
        NEWLINE,
        VISION_START_ID,
        *[IMAGE_PAD_ID] * 4,
        VISION_END_ID,
        *HELLO_WORLD,
        IM_END,
        NEWLINE,
    ]
    prefix = [IM_START, SYSTEM, NEWLINE, *DEFAULT_SYSTEM_IDS, IM_END, NEWLINE, *user, IM_START, ASSISTANT, NEWLINE]
    assert ids == prefix + HELLO_WORLD + [IM_END, NEWLINE]
    assert labels == [IGNORE_INDEX] * len(prefix) + HELLO_WORLD + [IM_END, IGNORE_INDEX]


def _trained_runs(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_trained_spans_decode_to_assistant_content(qwen_tokenizer):
    messages = [
        message("system", "你是一个有用的助手。"),
        message("user", image_part(), "图里有几个点？"),
        message("assistant", "三个。\n答案：3"),
        message("user", video_part(), "And here?"),
        message("assistant", "Two 🙂, then ", image_part(), "done."),
    ]
    ids, labels = tokenize_with_labels(messages, qwen_tokenizer, [16, 4], [8])
    assert len(ids) == len(labels)
    assert ids.count(IMAGE_PAD_ID) == 20
    assert _trained_runs(qwen_tokenizer, ids, labels) == [
        "三个。\n答案：3<|im_end|>",
        "Two 🙂, then ",
        "done.<|im_end|>",
    ]
    ids, labels = tokenize_with_labels(messages, qwen_tokenizer, train_turn_newline=True)
    assert _trained_runs(qwen_tokenizer, ids, labels) == [
        "三个。\n答案：3<|im_end|>\n",
        "Two 🙂, then ",
        "done.<|im_end|>\n",
    ]


def test_token_straddling_header_and_content_is_trained(qwen_tokenizer):
    # "assistant\n" + "\n\nAnswer": the three newlines are one token, which overlaps the content, so it is trained
    # (the same rule transformers applies to {% generation %} spans).
    messages = [message("user", "Q"), message("assistant", "\n\nAnswer")]
    ids, labels = tokenize_with_labels(messages, qwen_tokenizer)
    assert _trained_runs(qwen_tokenizer, ids, labels) == ["\n\n\nAnswer<|im_end|>"]
    trained = trained_token_spans(messages, qwen_tokenizer)
    assert trained.num_text_tokens == len(ids)
    assert trained.num_trained_tokens == sum(label != IGNORE_INDEX for label in labels) == 3
    assert [trained.text[a:b] for a, b in trained.spans] == ["\n\n\nAnswer<|im_end|>"]


def _trl_labels(collator, messages, images):
    batch = collator([{"messages": messages, "images": images}])
    return batch["input_ids"][0].tolist(), batch["labels"][0].tolist()


def _drop_turn_newlines(ids: list[int], labels: list[int]) -> list[int]:
    # TRL also trains the "\n" after an assistant <|im_end|>; ours stops at <|im_end|>
    return [
        IGNORE_INDEX if k > 0 and ids[k - 1] == IM_END and token == NEWLINE else label
        for k, (token, label) in enumerate(zip(ids, labels, strict=True))
    ]


def test_labels_equal_trl_assistant_only_loss(render_qwen_processor, render_training_template):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(
        processor=render_qwen_processor, assistant_only_loss=True, chat_template=render_training_template
    )
    rng = random.Random(99)
    pieces = TEXT_PIECES + ["\n\nleading newlines", " \n leading space-newline", "ends with newlines\n\n"]
    fixed = [
        [message("user", image_part(), "Q"), message("assistant", "\n\nA straddling token")],
        [message("system", "S"), message("user", "Q"), message("assistant", "A"), message("user", "again")],
        SHAPES["multi_turn"],
    ]
    n_checked = 0
    for i in range(43):
        messages = (
            fixed[i]
            if i < len(fixed)
            else random_conversation(
                rng, pieces=pieces, assistant_media=False, allow_video=False, string_content=False
            )
        )
        n_images, _ = count_media(messages)
        images = [Image.new("RGB", rng.choice(IMAGE_SIZES), "blue") for _ in range(n_images)]
        image_tokens = [_image_tokens(render_qwen_processor, im) for im in images]
        trl_ids, trl_labels = _trl_labels(collator, messages, images)
        ids, labels = tokenize_with_labels(messages, render_qwen_processor, image_tokens, [], train_turn_newline=True)
        assert ids == trl_ids
        assert labels == trl_labels, messages
        ids, labels = tokenize_with_labels(messages, render_qwen_processor, image_tokens, [])
        assert labels == _drop_turn_newlines(trl_ids, trl_labels)
        n_checked += n_images
    assert n_checked > 10
