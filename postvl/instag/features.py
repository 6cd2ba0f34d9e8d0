"""Structural evidence from a record: media present, coordinates, code, tool calls, markup, refusals.

The embedding backend reads what a QA pair *says*; these signals read what it *is* (a video is attached, the answer
holds ``bbox_2d`` boxes, a fenced code block, a ``<tool_call>``). A taxonomy's ``evidence`` block turns them into
score nudges per subcategory, so a replaced taxonomy uses the same signals. Every signal is 0 or 1.

    from postvl.instag.features import record_texts, signals
    question, answer = record_texts(record)
    signals(record)  # {"image": 1.0, "bbox": 1.0, ...}: only the signals that are present
"""

from __future__ import annotations

import re
from typing import Any

# name -> what it means (also the list of names a taxonomy's `evidence` may use)
SIGNALS: dict[str, str] = {
    "image": "at least one image",
    "multi_image": "two or more images",
    "video": "at least one video",
    "no_video": "no video (images only, or text only)",
    "no_media": "neither an image nor a video: a text-only pair",
    "bbox": "box coordinates (bbox_2d, <box>, or a list of four numbers) in the question or answer",
    "point": "point coordinates (point_2d, <point>) in the answer",
    "code": "a fenced code block or source-code lines",
    "tool_call": "a function / tool call (<tool_call>, {'name': ..., 'arguments': ...}) in the answer",
    "gui_action": "a GUI operation (click(...), tap, type, scroll, swipe, an 'action' field) in the answer",
    "html": "HTML tags in the answer",
    "latex": "LaTeX commands or $...$ math",
    "markdown_table": "a Markdown table in the answer",
    "timestamp": "times such as 01:05, 12.4s, 'from 3 to 19 seconds', 第23秒 in the answer",
    "short_number_answer": "a short answer that holds a number",
    "refusal": "the answer declines the request",
}

_CODE_FENCE = re.compile(r"```")
_CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \w+ import |#include|public (static |class )|function |const |let |var |fn |"
    r"func |package |SELECT |for \(|while \(|if \(|return\b|print\(|console\.log)",
    re.MULTILINE,
)
_BBOX = re.compile(
    r"bbox_2d|<box>|<\|box_start\|>|\[\s*-?\d+(?:\.\d+)?\s*,\s*-?\d+(?:\.\d+)?\s*,\s*-?\d+(?:\.\d+)?\s*,\s*-?\d+(?:\.\d+)?\s*\]"
)
_POINT = re.compile(r"point_2d|<point>|<points\b")
_TOOL_CALL = re.compile(
    r"<tool_call>|<function_call>|\"(?:name|function)\"\s*:\s*\"[\w.\-]+\"\s*,\s*\"(?:arguments|parameters|args)\"\s*:"
)
_GUI_ACTION = re.compile(
    r"\b(?:click|tap|double_click|long_press|swipe|scroll|type|press|press_key|input_text|hover|drag)\s*\(|"
    r"\"action(?:_type)?\"\s*:|\bACTION\s*:|\bAction\s*:",
    re.IGNORECASE,
)
_HTML = re.compile(r"</?(?:html|body|div|table|tr|td|th|p|h[1-6]|span|ul|li|img|section)\b[^>]*>", re.IGNORECASE)
_LATEX = re.compile(
    r"\\(?:frac|int|sum|sqrt|lim|boxed|mathrm|mathbf|begin|end|alpha|beta|pi|theta|cdot|times|infty)\b|"
    r"\$[^$\n]{1,200}\$"
)
_MD_TABLE = re.compile(r"^\s*\|.*\|\s*$\n^\s*\|?\s*:?-{3,}", re.MULTILINE)
_TIMESTAMP = re.compile(
    r"\b\d{1,2}:\d{2}(?::\d{2})?\b|\b\d+(?:\.\d+)?\s*(?:s|sec|secs|seconds?)\b|第\s*\d+(?:\.\d+)?\s*秒|\d+(?:\.\d+)?\s*秒",
    re.IGNORECASE,
)
_DIGIT = re.compile(r"\d")
_REFUSAL = re.compile(
    r"\bI (?:can(?:no|')t|cannot|won't|will not|am not able to|'m not able to|'m unable to)\b"
    r"(?: help| assist| provide| do| share| give| support| comply)|\bI'm sorry, but\b|\bI must decline\b|"
    r"抱歉[，,]?\s*我(?:不能|无法)|我不能(?:提供|帮助|协助)|无法(?:提供|协助)|不能提供",
    re.IGNORECASE,
)
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def _texts(messages: list[dict[str, Any]], roles: tuple[str, ...]) -> str:
    return "\n".join(
        part["text"]
        for msg in messages
        if msg.get("role") in roles
        for part in msg.get("content") or ()
        if part.get("type") == "text" and isinstance(part.get("text"), str)
    )


def record_texts(record: dict[str, Any]) -> tuple[str, str]:
    """The question (all user turns) and the answer (all assistant turns, else the record's ``answer``).

    Works on an SFT record (``messages``) and on a preference record (``prompt`` + ``chosen``).
    """
    messages = record.get("messages") or record.get("prompt") or []
    question = _texts(messages, ("user",))
    answer = _texts(messages, ("assistant",))
    if not answer and record.get("chosen"):
        answer = _texts(record["chosen"], ("assistant",))
    if not answer and record.get("answer") is not None:
        answer = str(record["answer"])
    return question, answer


def media_counts(record: dict[str, Any]) -> tuple[int, int]:
    """Number of images and videos: the larger of the path lists and the placeholders in the conversation."""
    images = len(record.get("images") or ())
    videos = len(record.get("videos") or ())
    parts = [
        part
        for msg in (record.get("messages") or record.get("prompt") or [])
        for part in msg.get("content") or ()
        if isinstance(part, dict)
    ]
    images = max(images, sum(p.get("type") == "image" for p in parts))
    videos = max(videos, sum(p.get("type") == "video" for p in parts))
    return images, videos


def signals(record: dict[str, Any], question: str | None = None, answer: str | None = None) -> dict[str, float]:
    """The structural signals present in a record (name -> 1.0); absent signals are left out.

    Args:
        record: a record in the contract shape.
        question, answer: the record's texts when the caller has them already (see ``record_texts``).
    """
    if question is None or answer is None:
        question, answer = record_texts(record)
    images, videos = media_counts(record)
    both = f"{question}\n{answer}"
    found = {
        "image": images > 0,
        "multi_image": images > 1,
        "video": videos > 0,
        "no_video": videos == 0,
        "no_media": images == 0 and videos == 0,
        "bbox": bool(_BBOX.search(both)),
        "point": bool(_POINT.search(answer)),
        "code": bool(_CODE_FENCE.search(both) or _CODE_LINE.search(both)),
        "tool_call": bool(_TOOL_CALL.search(answer)),
        "gui_action": bool(_GUI_ACTION.search(answer)),
        "html": bool(_HTML.search(answer)),
        "latex": bool(_LATEX.search(both)),
        "markdown_table": bool(_MD_TABLE.search(answer)),
        "timestamp": bool(_TIMESTAMP.search(answer)),
        "short_number_answer": len(answer.strip()) <= 40 and bool(_DIGIT.search(answer)),
        "refusal": bool(_REFUSAL.search(answer)),
    }
    return {name: 1.0 for name, present in found.items() if present}


def detect_language(text: str) -> str:
    """``"zh"`` when at least 20% of the letters are CJK ideographs, else ``"en"`` (the report's two languages)."""
    letters = sum(c.isalpha() for c in text)
    if not letters:
        return "en"
    return "zh" if len(_CJK.findall(text)) / letters >= 0.2 else "en"
