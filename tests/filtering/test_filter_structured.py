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


# ---- fast paths agree with the general ones ----


def _parser_decision(html: str) -> bool:
    """Whether ``html.parser`` finds the tags unbalanced (the filter's general path)."""
    from postvl.filtering.malformed import _TagBalance

    parser = _TagBalance()
    parser.feed(html)
    parser.close()
    return parser.error or bool(parser.stack)


@pytest.mark.parametrize(
    "html",
    [
        QWEN_HTML,
        "<TABLE><Tr><td>x</TD></tr></table>",  # names are case-insensitive
        '<p data-bbox="1 2 3 4" >a</p >\n<br/><br /><img src="a"><div/>',
        "<p>caf&eacute; &amp; 5 &gt 3</p>",  # entity references leave the tags alone
        "<div><span>x</div></span>",
        "<html><body><h1>标题</h1><p>第一段",
        "<p>x</br></p>",
    ],
)
def test_html_plain_markup_is_read_without_the_parser(html):
    from postvl.filtering.malformed import _simple_tags, _unbalanced

    tags = _simple_tags(html)
    assert tags is not None
    assert _unbalanced(tags) == _parser_decision(html)


@pytest.mark.parametrize(
    "html",
    [
        "<p>a < b</p>",
        "<!-- a comment --><p>x</p>",
        "<!DOCTYPE html><p>x</p>",
        "<p>&#x41; &#65;</p>",  # "&#": a malformed reference would swallow the rest
        "<p>&#xZ <td> open</p>",
        "<script>if (a<b) {}</script>",
        "<style>p {}</style><p>",
        "<title><p></title>",
        "<td\vx>y</td>",  # "\v" belongs to the tag name for the parser
        "<td\u00a0>y</td>",
        "<p a='x'>y</p>",
        "<a b=c>y</a>",
        '<a b="1"c="2">y</a>',
        "</ p>",
        "<p",
    ],
)
def test_html_other_markup_goes_to_the_parser(html):
    from postvl.filtering.malformed import _simple_tags

    assert _simple_tags(html) is None


def test_html_fast_path_decides_as_the_parser_on_random_markup():
    import random

    from postvl.filtering.malformed import _simple_tags, _unbalanced

    names = ["p", "td", "TR", "table", "br", "img", "div", "Span", "h1", "x1"]
    before_close = ["", "", " ", "\n"]
    rng = random.Random(5)

    def tag():
        name, roll = rng.choice(names), rng.random()
        if roll < 0.45:
            return f"<{name}>"
        if roll < 0.8:
            return f"</{name}{rng.choice(before_close)}>"
        if roll < 0.92:
            return f'<{name} data-bbox="1 2"{rng.choice(["", " ", "/", " /"])}>'
        return rng.choice(
            ["<!-- c -->", "a < b", "&amp;", "&#x41;", "&#;", "&", "<", "<a b=c>", "</>", "<script>", "<td\v>"]
        )

    fast = 0
    for _ in range(4000):
        html = "".join(tag() if rng.random() < 0.8 else rng.choice(["text", "数据", " ", "\n"]) for _ in range(8))
        tags = _simple_tags(html)
        expected = _parser_decision(html)
        if tags is not None:
            fast += 1
            assert _unbalanced(tags) == expected, html
        if "<" in html:  # every tag here is one that the filter's tag screen sees
            assert HtmlFilter().check(rec(html)) == ("malformed_html" if expected else None), html
    assert fast > 1000


def _reference_check_conversation(messages):
    """The contract checks one at a time, as they read."""
    from postvl.records import PART_TYPES, ROLES

    if not isinstance(messages, list) or not messages:
        return "empty_conversation"
    for msg in messages:
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            return "invalid_role"
        content = msg.get("content")
        if not isinstance(content, list) or not content:
            return "empty_turn"
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in PART_TYPES:
                return "invalid_content_part"
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                return "non_text_text"
    if any(m["role"] == "system" for m in messages[1:]):
        return "misplaced_system_turn"
    if not any(m["role"] == "assistant" for m in messages):
        return "no_assistant_turn"
    return None


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([message("system", "Be brief."), message("user", image_part(), "Hi"), message("assistant", "Hello")], None),
        (None, "empty_conversation"),
        ([], "empty_conversation"),
        ([message("user", "Hi"), {"role": "bot", "content": []}], "invalid_role"),
        ([message("user", "Hi"), ["assistant"]], "invalid_role"),
        ([{"role": "user", "content": []}, message("assistant", "x")], "empty_turn"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "invalid_content_part"),
        ([{"role": "user", "content": ["Hi"]}], "invalid_content_part"),
        ([{"role": "user", "content": [{"type": "text", "text": None}]}], "non_text_text"),
        ([message("user", "Hi"), message("system", "late"), message("assistant", "x")], "misplaced_system_turn"),
        # a broken later turn decides before the misplaced system turn before it
        ([message("user", "Hi"), message("system", "late"), {"role": "assistant", "content": []}], "empty_turn"),
        ([message("system", "Be brief."), message("user", "Hi")], "no_assistant_turn"),
    ],
)
def test_check_conversation_reasons(messages, reason):
    from postvl.records import check_conversation

    assert check_conversation(messages) == reason
    assert _reference_check_conversation(messages) == reason


def test_check_conversation_decides_as_the_contract_checks_on_random_input():
    import random

    from postvl.records import check_conversation

    rng = random.Random(6)
    roles = ["system", "user", "assistant", "bot", None, 5, ""]
    types = ["text", "image", "video", "audio", None]

    def part():
        if rng.random() < 0.05:
            return rng.choice([None, "text", []])
        item = {"type": rng.choice(types)} if rng.random() < 0.95 else {}
        if rng.random() < 0.9:
            item["text"] = rng.choice(["hi", "", None, 3])
        return item

    def turn():
        if rng.random() < 0.03:
            return rng.choice([None, "user", []])
        item = {"role": rng.choice(roles)} if rng.random() < 0.97 else {}
        item["content"] = [part() for _ in range(rng.randint(0, 3))] if rng.random() < 0.9 else rng.choice([None, {}])
        return item

    reasons = set()
    for _ in range(5000):
        messages = [turn() for _ in range(rng.randint(0, 4))] if rng.random() < 0.98 else rng.choice([None, {}, "x"])
        reason = check_conversation(messages)
        assert reason == _reference_check_conversation(messages), messages
        reasons.add(reason)
    for _ in range(3000):  # well-formed turns
        messages = [
            message(rng.choice(["system", "user", "assistant"]), *(rng.choice(["x", image_part()]) for _ in range(2)))
            for _ in range(rng.randint(1, 4))
        ]
        reason = check_conversation(messages)
        assert reason == _reference_check_conversation(messages), messages
        reasons.add(reason)
    assert len(reasons) == 8
