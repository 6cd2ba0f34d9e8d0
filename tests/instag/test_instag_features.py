"""Structural signals read from records."""

from __future__ import annotations

import pytest

from postvl.instag.features import SIGNALS, detect_language, media_counts, record_texts, signals
from postvl.records import image_part, message, video_part


def rec(question: str, answer: str, images: int = 0, videos: int = 0) -> dict:
    parts = [image_part()] * images + [video_part()] * videos + [question]
    return {
        "id": "x",
        "messages": [message("user", *parts), message("assistant", answer)],
        "images": [f"img_{i}.jpg" for i in range(images)],
        "videos": [f"clip_{i}.mp4" for i in range(videos)],
        "answer": None,
        "meta": {},
    }


def test_media_signals():
    assert set(signals(rec("Hi", "Hello"))) == {"no_media", "no_video"}
    assert {"image"} <= set(signals(rec("What is it?", "A cat.", images=1))) and "no_media" not in signals(
        rec("What is it?", "A cat.", images=1)
    )
    assert {"image", "multi_image"} <= set(signals(rec("Compare.", "Same.", images=3)))
    assert {"video"} <= set(signals(rec("What happens?", "He runs.", videos=1)))
    assert "no_video" not in signals(rec("What happens?", "He runs.", videos=1))
    assert "no_video" in signals(rec("What is it?", "A cat.", images=1))


def test_placeholders_count_when_paths_are_missing():
    record = rec("What is it?", "A cat.", images=2)
    record["images"] = []
    assert media_counts(record) == (2, 0)


@pytest.mark.parametrize(
    ("answer", "signal"),
    [
        ('[{"bbox_2d": [10, 20, 30, 40], "label": "cup"}]', "bbox"),
        ("The cup is at [12, 40, 88, 120].", "bbox"),
        ('{"point_2d": [100, 200], "label": "key"}', "point"),
        ("```python\nprint(1)\n```", "code"),
        ("def f(x):\n    return x", "code"),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', "tool_call"),
        ('{"name": "search", "arguments": {"q": "tea"}}', "tool_call"),
        ("click(x=100, y=200)", "gui_action"),
        ('{"action": "tap", "coordinate": [3, 4]}', "gui_action"),
        ("<table><tr><td>1</td></tr></table>", "html"),
        ("\\frac{a}{b} = c", "latex"),
        ("| a | b |\n|---|---|\n| 1 | 2 |", "markdown_table"),
        ("From 00:12 to 00:31.", "timestamp"),
        ("Between 3.5s and 8 seconds.", "timestamp"),
        ("在第12秒到第15秒之间。", "timestamp"),
        ("There are 7.", "short_number_answer"),
        ("I can't help with that request.", "refusal"),
        ("抱歉，我不能提供这方面的帮助。", "refusal"),
    ],
)
def test_answer_signals(answer, signal):
    assert signal in signals(rec("question", answer))


def test_plain_prose_has_no_content_signals():
    found = set(
        signals(rec("Tell me about tea.", "Tea is made from the leaves of Camellia sinensis, one of many plants."))
    )
    assert found == {"no_media", "no_video"}


def test_chinese_numerals_are_not_a_number_answer():
    assert "short_number_answer" not in signals(rec("描述一下。", "一位老人坐在长椅上。", images=1))


def test_every_signal_is_documented():
    names = set()
    for record in [rec("q", "a"), rec("q", "a", images=2, videos=1)]:
        names |= set(signals(record))
    assert names <= set(SIGNALS)


def test_record_texts_variants():
    record = rec("Q1", "A1")
    record["messages"] += [message("user", "Q2"), message("assistant", "A2")]
    assert record_texts(record) == ("Q1\nQ2", "A1\nA2")
    no_assistant = {"messages": [message("user", "What is 2+2?")], "answer": 4}
    assert record_texts(no_assistant) == ("What is 2+2?", "4")
    preference = {"prompt": [message("user", "Say hi")], "chosen": [message("assistant", "Hi!")], "rejected": []}
    assert record_texts(preference) == ("Say hi", "Hi!")


def test_detect_language():
    assert detect_language("请描述这张图片。") == "zh"
    assert detect_language("Describe this picture.") == "en"
    assert detect_language("把这段Python代码翻译成Java") == "zh"
    assert detect_language("") == "en"
