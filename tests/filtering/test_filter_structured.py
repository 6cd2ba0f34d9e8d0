"""Grounding JSON, document HTML and code syntax filters."""

from __future__ import annotations

import json

import pytest

from postvl.filtering import CodeSyntaxFilter, GroundingFilter, HtmlFilter
from postvl.records import image_part, message


def rec(answer: str, query: str = "Locate the cat.", **meta) -> dict:
    return {
        "id": "r0",
        "messages": [message("user", image_part(), query), message("assistant", answer)],
        "images": ["img.png"],
        "videos": [],
        "meta": meta,
    }


def boxes(*items: dict) -> str:
    return "```json\n" + json.dumps(list(items), ensure_ascii=False, indent=2) + "\n```"


SIZE = {"image_sizes": [[640, 480]]}


@pytest.mark.parametrize(
    ("answer", "meta", "reason"),
    [
        (boxes({"bbox_2d": [10, 20, 300, 400], "label": "cat"}), SIZE, None),
        (boxes({"bbox_2d": [10, 20, 300, 400], "label": "猫"}, {"point_2d": [50, 60], "label": "鼻子"}), SIZE, None),
        ('[{"bbox_2d": [0, 0, 640, 480], "label": "whole image"}] This box covers the image.', SIZE, None),
        ('{"bbox_2d": [1, 2, 3, 4]}', {}, None),  # no image size: bounds are not checked
        ("There is no cat in the image.", SIZE, None),  # no grounding asked of the answer
        ("图中没有猫。", SIZE, None),
        (boxes({"bbox_2d": [10, 20, 700, 400], "label": "cat"}), SIZE, "bbox_out_of_image"),
        (boxes({"point_2d": [50, 500], "label": "鼻子"}), SIZE, "bbox_out_of_image"),
        (boxes({"bbox_2d": [-5, 20, 300, 400]}), SIZE, "bbox_out_of_image"),
        (boxes({"bbox_2d": [300, 20, 10, 400]}), SIZE, "invalid_bbox"),
        (boxes({"bbox_2d": [10, 20, 300]}), SIZE, "malformed_grounding_json"),
        (boxes({"bbox_2d": ["10", 20, 300, 400]}), SIZE, "malformed_grounding_json"),
        ('```json\n[{"bbox_2d": [10, 20, 300, 400], "label": "cat"\n```', SIZE, "malformed_grounding_json"),
        ('[{"bbox_2d": [10, 20, 300, 400], "label": "猫"', SIZE, "malformed_grounding_json"),
        ('```json\n["bbox_2d", 1]\n```', SIZE, "malformed_grounding_json"),
    ],
)
def test_grounding(answer, meta, reason):
    assert GroundingFilter().check(rec(answer, **meta)) == reason


def test_grounding_largest_image_bounds_slack_and_requirements():
    two = {"image_sizes": [[640, 480], [1000, 300]]}
    assert GroundingFilter().check(rec(boxes({"bbox_2d": [0, 0, 900, 400]}), **two)) is None
    assert GroundingFilter().check(rec(boxes({"bbox_2d": [0, 0, 641, 480]}), **SIZE)) == "bbox_out_of_image"
    assert GroundingFilter(slack=1).check(rec(boxes({"bbox_2d": [0, 0, 641, 480]}), **SIZE)) is None
    assert GroundingFilter(require=True).check(rec("The cat is on the left.", **SIZE)) == "missing_grounding"
    assert GroundingFilter(require_size=True).check(rec(boxes({"bbox_2d": [1, 2, 3, 4]}))) == "missing_image_size"
    other_key = GroundingFilter(size_key="sizes")
    assert other_key.check(rec(boxes({"bbox_2d": [1, 2, 999, 4]}), sizes=[[640, 480]])) == "bbox_out_of_image"
    # meta as the JSON string stored in Parquet
    record = rec(boxes({"bbox_2d": [1, 2, 999, 4]}))
    record["meta"] = json.dumps(SIZE)
    assert GroundingFilter().check(record) == "bbox_out_of_image"


QWEN_HTML = (
    '<html><body>\n<h1 data-bbox="10 10 200 40">年度报告</h1>\n<p data-bbox="10 50 600 90">Revenue grew 12% in 2024.'
    '<br/>Costs fell.</p>\n<table><tr><td>Q1</td><td>3.2</td></tr></table>\n<img data-bbox="1 2 3 4"/>\n'
    "</body></html>"
)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (QWEN_HTML, None),
        ("```html\n" + QWEN_HTML + "\n```", None),
        ("<p>a < b and 5 > 3</p>", None),
        ("Plain text answer without markup.", None),
        (QWEN_HTML.replace("</td><td>3.2", "<td>3.2"), "malformed_html"),  # unclosed <td>
        ("<html><body><p>正文</body></html>", "malformed_html"),  # </body> closes over an open <p>
        ("<html><body><h1>标题</h1><p>第一段", "malformed_html"),  # cut off
        ("<div><span>x</div></span>", "malformed_html"),
    ],
)
def test_html(answer, reason):
    assert HtmlFilter().check(rec(answer)) == reason


def test_html_required_and_parser_reuse():
    filt = HtmlFilter(require=True)
    assert filt.check(rec("Just text.")) == "missing_html"
    assert filt.check(rec("<p>open")) == "malformed_html"
    assert filt.check(rec(QWEN_HTML)) is None  # state from the previous record does not leak


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("```python\ndef add(a, b):\n    return a + b\n```", None),
        ("这是代码：\n```py\nprint('你好')\n```\n运行即可。", None),
        ("```python\n>>> 1 +\n```", None),  # interactive sessions are skipped
        ("```python\n%matplotlib inline\n!pip install numpy\nimport numpy as np\n```", None),
        ('```python\npath = "C:\\d"\n```', None),  # a warning, not an error
        ('```json\n{"a": [1, 2]}\n```', None),
        ("```javascript\nfunction f( {\n```", None),  # no parser: not checked
        ("```\ndef f(:\n```", None),  # untagged: not checked
        ("def f(:\n    pass", None),  # unfenced: not checked
        ("```python\ndef add(a, b)\n    return a + b\n```", "python_syntax_error"),
        ("代码：\n```python\nprint('你好'\n```", "python_syntax_error"),
        ('```json\n{"a": [1, 2,]}\n```', "json_syntax_error"),
        ("```python\nx = 1\n```\nand\n```json\n{'a': 1}\n```", "json_syntax_error"),
    ],
)
def test_code_syntax(answer, reason):
    assert CodeSyntaxFilter().check(rec(answer)) == reason


def test_code_syntax_languages():
    assert CodeSyntaxFilter(languages=["json"]).check(rec("```python\ndef f(:\n```")) is None
    with pytest.raises(ValueError, match="languages"):
        CodeSyntaxFilter(languages=["rust"])
