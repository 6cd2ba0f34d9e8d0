"""Format adapters: every reference format maps to the record contract; detection; stable ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from postvl.chatml.formats import dataset_info_entries, detect_format, record_id, split_tags, to_draft
from postvl.records import RecordError, image_part, message, text_part, video_part

DATA = Path(__file__).parents[1] / "data" / "formats"
LF = DATA / "llamafactory" / "data"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_llamafactory_mllm_demo_role_content_with_image_tags():
    row = json.loads((LF / "mllm_demo.json").read_text())[0]
    assert detect_format(row) == "sharegpt"
    draft = to_draft(row, fmt="auto", source="mllm_demo.json:2")
    assert draft["messages"] == [
        message("user", image_part(), "Who are they?"),
        message("assistant", "They're Kane and Gretzka from Bayern Munich."),
        message("user", "What are they doing?", image_part()),
        message("assistant", "They are celebrating on the soccer field."),
    ]
    assert draft["images"] == ["mllm_demo_data/1.jpg", "mllm_demo_data/1.jpg"]
    assert draft["meta"] == {"source": "mllm_demo.json:2", "format": "sharegpt"}


def test_llamafactory_dataset_info_ranking_entry_gives_preference_records():
    ((path, options),) = dataset_info_entries(LF / "dataset_info.json", ["dpo_en_demo"])
    assert (
        Path(path) == LF / "dpo_en_demo.json"
        and options["ranking"]
        and options["columns"]["messages"] == "conversations"
    )
    rows = json.loads(Path(path).read_text())
    first = to_draft(rows[0], fmt="auto", source="s:1", options=options)
    assert first["prompt"][0]["role"] == "user" and first["chosen"][0]["role"] == "assistant"
    assert first["chosen"][0]["content"][0]["text"].startswith("That sounds like a fun")
    second = to_draft(rows[1], fmt="auto", source="s:2", options=options)
    assert [m["role"] for m in second["prompt"]] == ["system", "user"]
    with pytest.raises(KeyError, match="not in"):
        dataset_info_entries(LF / "dataset_info.json", ["nope"])


def test_llamafactory_alpaca_with_history_and_system():
    row = {
        "instruction": "Add",
        "input": "1 and 2",
        "output": "3",
        "system": "Be brief.",
        "history": [["hi", "hello"]],
    }
    draft = to_draft(
        row, fmt="llamafactory", source="s:1", options={"columns": {"history": "history", "system": "system"}}
    )
    assert draft["messages"] == [
        message("system", "Be brief."),
        message("user", "hi"),
        message("assistant", "hello"),
        message("user", "Add\n1 and 2"),
        message("assistant", "3"),
    ]


def test_llamafactory_v1_parts_are_openai_style_with_inline_paths():
    row = _lines(LF / "v1_multimodal_demo.jsonl")[0]
    assert detect_format(row) == "openai"
    draft = to_draft(row, fmt="auto", source="s:1")
    assert draft["messages"][0] == message("user", image_part(), "Who are they?")
    assert draft["messages"][2] == message("user", "What are they doing?", image_part())
    assert draft["images"] == ["data/mllm_demo_data/1.jpg", "data/mllm_demo_data/1.jpg"]


def test_openai_image_url_parts():
    row = {
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": "a.png"}},
                    {"type": "image_url", "image_url": "b.png"},
                    {"type": "video_url", "video_url": {"url": "c.mp4"}},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Same."}]},
        ]
    }
    draft = to_draft(row, fmt="auto", source="s:1")
    assert draft["messages"][0] == message("system", "Be brief.")
    assert draft["messages"][1] == message("user", "Compare", image_part(), image_part(), video_part())
    assert (draft["images"], draft["videos"]) == (["a.png", "b.png"], ["c.mp4"])


def test_qwen_vl_finetune_single_image_and_video():
    row = json.loads((DATA / "qwen_vl_finetune" / "demo" / "single_images.json").read_text())[0]
    assert detect_format(row) == "qwen"
    draft = to_draft(row, fmt="auto", source="s:1")
    assert draft["messages"] == [
        message("user", "Is the value of Favorable 38 in 2015?\n", image_part()),
        message("assistant", "Yes"),
    ]
    assert draft["images"] == ["demo/images/10095.png"]
    video = json.loads((DATA / "qwen_vl_finetune" / "demo" / "video.json").read_text())[0]
    draft = to_draft(video, fmt="qwen", source="s:1")
    assert draft["messages"][0]["content"][:2] == [
        video_part(),
        text_part("\nCan you give me an overview of the video content?"),
    ]
    assert draft["videos"] == ["v_7bUu05RIksU.mp4"] and draft["images"] == []


def test_qwen_multi_image_list():
    row = {
        "image": ["a.jpg", "b.jpg"],
        "conversations": [{"from": "human", "value": "<image>\n<image>\nDiff?"}, {"from": "gpt", "value": "x"}],
    }
    draft = to_draft(row, fmt="auto", source="s:1")
    assert draft["messages"][0] == message("user", image_part(), "\n", image_part(), "\nDiff?")
    assert draft["images"] == ["a.jpg", "b.jpg"]


def test_trl_prepare_multimodal_cases_match_trl():
    """The reference cases of TRL's prepare_multimodal_messages (images go first in the first user turn)."""
    reference = json.loads(
        (Path(__file__).parents[2] / "tests" / "data" / "formats" / "trl" / "sft_prepare_multimodal_cases.jsonl")
        .read_text()
        .splitlines()[2]
    )
    draft = to_draft(reference, fmt="auto", source="s:3")
    assert draft["messages"][0] == message("user", image_part(), image_part(), image_part(), "What color is the sky?")
    rows = _lines(DATA / "trl" / "sft_prepare_multimodal_cases.jsonl")
    second = to_draft(rows[1], fmt="trl", source="s:2")
    assert second["messages"][2] == message("user", "How about the grass?")  # only the first user turn gets images
    structured = to_draft(rows[3], fmt="auto", source="s:4")
    assert structured["messages"][1] == message("user", image_part(), "What color is the sky?")


def test_trl_preference_explicit_implicit_and_prompt_completion():
    rows = _lines(DATA / "trl" / "dpo_zen_image.jsonl")
    draft = to_draft(rows[0], fmt="auto", source="s:1")
    assert draft["prompt"] == [message("user", image_part(), "What is better than ugly?")]
    assert draft["chosen"] == [message("assistant", "Beautiful.")] and draft["images"] == ["images/zen_0.png"]
    implicit = {
        "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "bad"}],
    }
    draft = to_draft(implicit, fmt="auto", source="s:1")
    assert draft["prompt"] == [message("user", "Q?")] and draft["rejected"] == [message("assistant", "bad")]
    completion = _lines(DATA / "trl" / "sft_prompt_completion.jsonl")[0]
    draft = to_draft(completion, fmt="auto", source="s:1")
    assert [m["role"] for m in draft["messages"]] == ["user", "assistant"]
    standard = to_draft({"prompt": "2+2=", "completion": "4"}, fmt="auto", source="s:1")
    assert standard["messages"] == [message("user", "2+2="), message("assistant", "4")]


SWIFT_EXPECTED = {
    "sft_text": None,
    "sft_multi_image": None,
    "sft_audio": "unsupported_media",
    "sft_image_video_with_system": None,
    "pretrain_images": None,
    "dpo_text": None,
    "kto_text": "kto_undesirable",
    "grpo_prompt_only": None,  # the adapter maps it; validation rejects it (no_assistant_turn)
    "grounding_qwen2vl_native": None,
    "grounding_swift_objects": None,
    "multimodal_agent": "invalid_role",
    "sharegpt_alt_format_autopreprocessor": None,
    "query_response_alt_format_autopreprocessor": None,
}


@pytest.mark.parametrize("row", _lines(DATA / "ms_swift" / "ms_swift_examples.jsonl"), ids=lambda r: r["_kind"])
def test_ms_swift_examples(row):
    expected = SWIFT_EXPECTED[row["_kind"]]
    if expected:
        with pytest.raises(RecordError) as err:
            to_draft(row, fmt="auto", source="s:1")
        assert err.value.reason == expected
        return
    draft = to_draft(row, fmt="auto", source="s:1")
    assert "messages" in draft or "chosen" in draft
    assert draft["meta"]["extra"] == {"_kind": row["_kind"]}


def test_ms_swift_details():
    rows = {r["_kind"]: r for r in _lines(DATA / "ms_swift" / "ms_swift_examples.jsonl")}
    dpo = to_draft(rows["dpo_text"], fmt="auto", source="s:1")
    assert [m["role"] for m in dpo["prompt"]] == ["system", "user"]
    assert dpo["chosen"] == [message("assistant", "Tomorrow's weather will be sunny")]
    assert dpo["rejected"] == [message("assistant", "I don't know")]
    mixed = to_draft(rows["sft_image_video_with_system"], fmt="swift", source="s:1")
    assert mixed["messages"][1] == message(
        "user", image_part(), "What is in the image, ", video_part(), "What is in the video?"
    )
    grounding = to_draft(rows["grounding_swift_objects"], fmt="auto", source="s:1")
    assert grounding["objects"]["ref"] == ["a dog", "a woman"] and grounding["objects"]["bbox_type"] == "real"
    qr = to_draft(rows["query_response_alt_format_autopreprocessor"], fmt="auto", source="s:1")
    assert [m["role"] for m in qr["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    conv = to_draft(rows["sharegpt_alt_format_autopreprocessor"], fmt="auto", source="s:1")
    assert conv["messages"][-1] == message("assistant", "<response2>")
    # ms-swift adds missing tags at the start of the first non-system turn
    untagged = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},
        ],
        "images": ["a.png"],
    }
    assert to_draft(untagged, fmt="swift", source="s:1")["messages"][1] == message("user", image_part(), "Q")


def test_split_tags_keeps_text_byte_for_byte():
    assert split_tags("<image>\n<video> a ") == [image_part(), text_part("\n"), video_part(), text_part(" a ")]
    assert split_tags("") == [text_part("")]
    assert split_tags(42) == [{"type": "text", "text": 42}]
    with pytest.raises(RecordError, match="unsupported_media"):
        split_tags("<audio>hi")


def test_unknown_rows_and_bad_format_names():
    for row in ({"foo": 1}, [1, 2], "text"):
        with pytest.raises(RecordError) as err:
            to_draft(row, fmt="auto", source="s:1")
        assert err.value.reason == "unknown_format"
    with pytest.raises(ValueError, match="not one of"):
        to_draft({}, fmt="alpaca2", source="s:1")


def test_ids_are_kept_or_stable_hashes():
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert record_id(row, "f.jsonl:1") == record_id(dict(row), "f.jsonl:1")
    assert record_id(row, "f.jsonl:1") != record_id(row, "f.jsonl:2")
    assert record_id(row | {"x": 1}, "f.jsonl:1") != record_id(row, "f.jsonl:1")
    assert record_id(row | {"id": "abc"}, "f.jsonl:1") == "abc" and record_id(row | {"id": 7}, "s") == "7"
    assert to_draft(row | {"id": "abc", "answer": 4, "answer_type": "number"}, fmt="auto", source="s")["answer"] == "4"
