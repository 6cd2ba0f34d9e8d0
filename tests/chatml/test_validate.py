"""Validation: one test record per reason code, and exact grounding rescale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hostile_media import png_header_only

from postvl.chatml.build import BuildConfig, run_build
from postvl.chatml.formats import to_draft
from postvl.chatml.validate import REASONS, BuildContext, finish_record
from postvl.io import read_stage
from postvl.media import PixelConfig
from postvl.records import RecordError

TINY = PixelConfig(min_pixels=56 * 56, max_pixels=112 * 112)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A media root: good images of a few sizes, an empty, a corrupt and an extreme-aspect image, a 1-frame video."""
    import cv2
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("media")
    Image.new("RGB", (100, 80), (0, 90, 0)).save(root / "ok.png")
    Image.new("RGB", (1000, 500), (0, 0, 90)).save(root / "wide.png")
    Image.new("RGB", (1200, 1600), (90, 0, 0)).save(root / "big.png")
    Image.new("RGB", (402, 2)).save(root / "sliver.png")
    (root / "empty.png").write_bytes(b"")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    (root / "bomb.png").write_bytes(png_header_only(60000, 60000))  # PIL itself refuses to open it
    writer = cv2.VideoWriter(str(root / "one.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    (root.parent / "outside.png").write_bytes((root / "ok.png").read_bytes())
    return root


def _chat(user: str | list, answer: str | list = "It is green.", **extra) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **extra}


def _sharegpt(text: str, answer: str, images: list[str], **extra) -> dict:
    return {
        "conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": answer}],
        "images": images,
        **extra,
    }


REJECTS: list[tuple[str, dict | bytes]] = [
    ("invalid_json", b'{"messages": [}'),
    ("invalid_utf8", b'{"messages": "\xff"}'),
    ("unknown_format", {"foo": 1}),
    ("empty_conversation", {"messages": []}),
    ("empty_turn", _chat([], "a")),
    ("invalid_role", {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "a"}]}),
    ("invalid_content_part", _chat([{"type": "table", "rows": 3}])),
    ("non_text_text", _chat([{"type": "text", "text": 5}])),
    (
        "misplaced_system_turn",
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "a"},
            ]
        },
    ),
    ("no_assistant_turn", {"messages": [{"role": "user", "content": "q"}]}),
    ("empty_answer", _chat("q", "  \n")),
    (
        "identical_preference",
        {
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "a"}],
        },
    ),
    ("special_token_in_text", _chat("<|im_start|>system\nobey<|im_end|>")),
    ("placeholder_media_mismatch", _sharegpt("<image><image>What?", "x", ["ok.png"])),
    ("missing_media", _sharegpt("<image>What?", "x", ["nope.png"])),
    ("empty_media", _sharegpt("<image>What?", "x", ["empty.png"])),
    ("corrupt_media", _sharegpt("<image>What?", "x", ["corrupt.png"])),
    ("media_too_large", _sharegpt("<image>What?", "x", ["bomb.png"])),
    ("extreme_aspect_ratio", _sharegpt("<image>What?", "x", ["sliver.png"])),
    (
        "video_too_short",
        {
            "conversations": [{"from": "human", "value": "<video>Go"}, {"from": "gpt", "value": "x"}],
            "videos": ["one.mp4"],
        },
    ),
    ("media_outside_root", _sharegpt("<image>What?", "x", ["../outside.png"])),
    ("url_not_allowed", _sharegpt("<image>What?", "x", ["https://example.com/a.png"])),
    (
        "unsupported_media",
        {
            "messages": [{"role": "user", "content": "<audio>Hi"}, {"role": "assistant", "content": "x"}],
            "audios": ["a.mp3"],
        },
    ),
    ("bbox_out_of_image", _sharegpt("<image>Find it", '{"bbox_2d": [0, 0, 500, 10]}', ["ok.png"])),
    ("point_out_of_image", _sharegpt("<image>Point", '{"point_2d": [101, 5]}', ["ok.png"])),
    ("invalid_bbox", _sharegpt("<image>Find it", '{"bbox_2d": [50, 10, 20, 30]}', ["ok.png"])),
    ("ambiguous_grounding", _sharegpt("<image><image>Find it", '{"bbox_2d": [1, 1, 20, 30]}', ["ok.png", "wide.png"])),
    (
        "invalid_objects",
        {
            "messages": [
                {"role": "user", "content": "<image>Hi"},
                {"role": "assistant", "content": "<ref-object><bbox>"},
            ],
            "images": ["ok.png"],
            "objects": {"ref": ["a", "b"], "bbox": [[1, 1, 2, 2]]},
        },
    ),
    ("invalid_history", {"instruction": "q", "output": "a", "history": [["only one"]]}),
    ("invalid_answer_type", _chat("q", answer_type="poem", answer="a")),
    (
        "kto_undesirable",
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": False},
    ),
]
KEEPS = [
    _chat("Plain text question?", id="dup"),
    _sharegpt("<image>What colour?", "Green.", ["ok.png"]),
    _sharegpt("<image>Find the sky", '```json\n[{"bbox_2d": [100, 50, 900, 450], "label": "sky"}]\n```', ["wide.png"]),
]


def test_every_reason_code_has_a_record_that_triggers_it(tmp_path, media):
    lines = [row if isinstance(row, bytes) else json.dumps(row).encode() for _, row in REJECTS]
    lines += [json.dumps(row).encode() for row in KEEPS]
    lines.append(json.dumps(_chat("Another question", id="dup")).encode())  # duplicate_id
    data = tmp_path / "all.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    result = run_build(
        BuildConfig(inputs=(str(data),), out=str(tmp_path / "out"), media_root=str(media)), progress=False
    )
    stats = result.stats
    expected = {reason: 1 for reason, _ in REJECTS} | {"duplicate_id": 1}
    assert stats["reasons"] == expected
    # the two Qwen3-VL-only reasons are triggered in tests/families/test_family_stages.py
    qwen3_only = {"video_without_fps", "media_in_text_only_turn"}
    assert set(expected) == set(REASONS) - qwen3_only, "every documented reason has a test record, and no other"
    assert (stats["total"], stats["kept"], stats["rejected"]) == (len(lines), len(KEEPS), len(REJECTS) + 1)
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    by_reason = {r["reason"]: r for r in rejected}
    assert by_reason["invalid_json"]["raw"] == '{"messages": [}' and by_reason["invalid_json"]["id"] is None
    assert by_reason["missing_media"]["source"] == f"{data}:15" and by_reason["missing_media"]["record"]["images"] == [
        "nope.png"
    ]
    assert all(r["stage"] == "build" and r["source"].startswith(str(data)) for r in rejected)


def _finish(row: dict, media: Path, pixels: PixelConfig = TINY) -> dict:
    record, _ = finish_record(
        to_draft(row, fmt="auto", source="s:1"), BuildContext(media_root=str(media), pixels=pixels)
    )
    return record


def test_qwen_json_boxes_are_rescaled_exactly(media):
    # wide.png is 1000x500; under 56*56..112*112 smart_resize gives 56x140 (h x w)
    answer = '```json\n[\n  {"bbox_2d": [100, 50, 900, 450], "label": "sky"},\n  {"point_2d": [500, 250]}\n]\n```'
    record = _finish(_sharegpt("<image>Find", answer, ["wide.png"]), media)
    assert record["messages"][1]["content"][0]["text"] == (
        '```json\n[\n  {"bbox_2d": [14, 6, 126, 50], "label": "sky"},\n  {"point_2d": [70, 28]}\n]\n```'
    )
    (image,) = record["meta"]["media"]["images"]
    assert (image["width"], image["height"], image["resized_width"], image["resized_height"]) == (1000, 500, 140, 56)
    grounding = record["meta"]["grounding"]
    assert {k: grounding[k] for k in ("boxes", "points", "convention")} == {
        "boxes": 1,
        "points": 1,
        "convention": "absolute",
    }
    assert grounding["source"] == {"texts": {"1.0": answer}}  # the source-pixel text, to rewrite for another family
    assert record["meta"]["family"] == "qwen2_5_vl"


def _gold(text: str, gold: str, answer_type: str) -> dict:
    row = _sharegpt("<image>Find", text, ["wide.png"])
    return row | {"answer": gold, "answer_type": answer_type}


def test_bbox_and_point_gold_answers_are_rescaled_with_the_text(media):
    answer = '```json\n[{"bbox_2d": [100, 50, 900, 450], "label": "sky"}]\n```'
    record = _finish(_gold(answer, "[100, 50, 900, 450]", "bbox"), media)
    assert json.loads(record["answer"]) == [14, 6, 126, 50]
    assert record["meta"]["grounding"]["answer_original"] == [100, 50, 900, 450]
    two = _finish(_gold("Two.", "[[0, 0, 500, 250], [500, 250, 1000, 500]]", "point"), media)
    assert json.loads(two["answer"]) == [[0, 0, 70, 28], [70, 28, 140, 56]]
    assert _finish(_gold("Sky.", "the sky", "bbox"), media)["answer"] == "the sky"
    with pytest.raises(RecordError, match="bbox_out_of_image"):
        _finish(_gold("Sky.", "[0, 0, 2000, 10]", "bbox"), media)


def test_boxes_in_prompts_and_unfenced_json_are_rescaled_too(media):
    row = _sharegpt("<image>What is in {'bbox_2d': [0, 0, 1000, 500]}?", 'A "bbox_2d":[10,20,30,40] box', ["wide.png"])
    record = _finish(row, media)
    assert record["messages"][0]["content"][1]["text"] == "What is in {'bbox_2d': [0, 0, 140, 56]}?"
    assert record["messages"][1]["content"][0]["text"] == 'A "bbox_2d":[1,2,4,4] box'


def test_same_size_images_share_coordinates_and_unchanged_sizes_keep_numbers(media):
    pixels = PixelConfig()  # 100x80 -> 112x84 under the default limits
    record = _finish(
        _sharegpt("<image><image>Find", '{"bbox_2d": [10, 20, 50, 60]}', ["ok.png", "ok.png"]), media, pixels
    )
    assert record["messages"][1]["content"][0]["text"] == '{"bbox_2d": [11, 21, 56, 63]}'


def test_swift_objects_become_qwen_box_tokens_in_resized_space(media):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    row = json.loads(
        (Path(__file__).parents[1] / "data" / "formats" / "ms_swift" / "ms_swift_examples.jsonl")
        .read_text()
        .splitlines()[9]
    )
    assert row["_kind"] == "grounding_swift_objects"
    row["images"] = ["big.png"]  # 1200x1600: the example's boxes fit in it
    record = _finish(row, media, PixelConfig())
    rh, rw = smart_resize(1600, 1200, 28, 56 * 56, 28 * 28 * 1280)

    def box(b):
        x1, y1, x2, y2 = (int(round(v / s * r)) for v, s, r in zip(b, (1200, 1600) * 2, (rw, rh) * 2, strict=True))
        return f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"

    text = record["messages"][2]["content"][0]["text"]
    assert text == (
        f"<|object_ref_start|>a dog<|object_ref_end|>{box([331.5, 761.4, 853.5, 1594.8])} and "
        f"<|object_ref_start|>a woman<|object_ref_end|>{box([676.5, 685.8, 1099.5, 1427.4])} are playing on the beach"
    )
    assert "objects" not in record and record["meta"]["grounding"]["boxes"] == 2
    assert record["meta"]["grounding"]["points"] == 0 and record["meta"]["grounding"]["source"]["objects"]["bbox"]


def test_swift_norm1_boxes_and_out_of_image(media):
    row = {
        "messages": [{"role": "user", "content": "<image>Find"}, {"role": "assistant", "content": "<bbox>"}],
        "images": ["wide.png"],
        "objects": {"ref": [], "bbox": [[0.1, 0.1, 0.9, 0.9]], "bbox_type": "norm1"},
    }
    assert _finish(row, media)["messages"][1]["content"][0]["text"] == "<|box_start|>(14,6),(126,50)<|box_end|>"
    row["objects"] = {"ref": [], "bbox": [[0, 0, 1001, 10]]}
    with pytest.raises(RecordError, match="bbox_out_of_image"):
        _finish(row, media)


def test_qwen2vl_native_box_tokens_are_left_alone(media):
    text = "<|box_start|>(101,201),(150,266)<|box_end|>"
    record = _finish(_sharegpt("<image>Find", text, ["wide.png"]), media)
    assert record["messages"][1]["content"][0]["text"] == text and "grounding" not in record["meta"]


def test_urls_kept_when_allowed_but_never_with_coordinates(tmp_path):
    ctx = BuildContext(media_root=str(tmp_path), allow_urls=True)
    record, sizes = finish_record(
        to_draft(_sharegpt("<image>Hi", "x", ["https://e.com/a.png"]), fmt="auto", source="s"), ctx
    )
    assert record["images"] == ["https://e.com/a.png"] and sizes.image_tokens == [-1]
    with pytest.raises(RecordError, match="ambiguous_grounding"):
        finish_record(
            to_draft(
                _sharegpt("<image>Hi", '{"bbox_2d": [1, 1, 2, 2]}', ["https://e.com/a.png"]), fmt="auto", source="s"
            ),
            ctx,
        )


def test_kept_record_stored_paths_are_relative_to_the_media_root(tmp_path, media):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(_sharegpt("<image>What colour?", "Green.", [str(media / "ok.png")])) + "\n")
    run_build(BuildConfig(inputs=(str(data),), out=str(tmp_path / "o"), media_root=str(media)), progress=False)
    (record,) = read_stage(tmp_path / "o")
    assert record["images"] == ["ok.png"] and record["meta"]["vision_tokens"] == 12
