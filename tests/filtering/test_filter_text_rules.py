"""Length, repetition and truncation filters: English and Chinese records that must pass and must fail."""

from __future__ import annotations

import pytest

from postvl.filtering import (
    CharRepetitionFilter,
    FinishReasonFilter,
    LengthFilter,
    LineRepetitionFilter,
    MidSentenceFilter,
    NgramRepetitionFilter,
    Sample,
    UnbalancedFilter,
)
from postvl.records import image_part, message

EN = (
    "The image shows a small wooden table next to a window. On the table there is a white ceramic mug filled with "
    "coffee, a folded newspaper and a pair of reading glasses. Sunlight comes in from the left side, casting long "
    "shadows across the surface. In the background, a potted plant with broad green leaves stands on the floor, and "
    "a framed painting of a harbour hangs on the wall."
)
ZH = (
    "图片中是一张靠窗的小木桌。桌子上放着一个装满咖啡的白色陶瓷杯、一份折叠好的报纸和一副老花镜。阳光从左侧照进来，"
    "在桌面上投下长长的影子。背景里，一盆宽叶绿植摆在地板上，墙上挂着一幅描绘港口的画。"
)


def rec(answer: str, query: str = "Describe the image.", **meta) -> dict:
    return {
        "id": "r0",
        "messages": [message("user", image_part(), query), message("assistant", answer)],
        "images": ["img.png"],
        "videos": [],
        "meta": meta,
    }


def test_sample_reads_assistant_and_user_turns():
    record = rec("first answer", query="q1")
    record["messages"] += [message("user", "q2"), message("assistant", "second answer")]
    sample = Sample(record)
    assert sample.answer == "first answer\n\nsecond answer"
    assert sample.query == "q1\n\nq2"
    assert Sample.of(sample) is sample


# ---- length ----


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("", "empty_answer"),
        ("   \n ", "empty_answer"),
        ("ok", "answer_too_short"),
        ("好", "answer_too_short"),
        ("x" * 101, "answer_too_long"),
        ("word " * 30, "answer_too_long"),  # 30 tokens > max_tokens
        ("字" * 30, "answer_too_long"),  # CJK characters count one token each
        ("A red car.", None),
        ("一辆红色的汽车。", None),
    ],
)
def test_length(answer, reason):
    assert LengthFilter(min_chars=3, max_chars=100, max_tokens=20).check(rec(answer)) == reason


def test_length_with_own_token_counter_and_bad_bounds():
    assert LengthFilter(min_tokens=5, count_tokens=lambda t: len(t.split())).check(rec("one two three")) == (
        "answer_too_short"
    )
    with pytest.raises(ValueError, match="max_chars"):
        LengthFilter(min_chars=10, max_chars=5)


# ---- repetition ----


@pytest.mark.parametrize("answer", [EN, ZH, EN + "\n\n" + ZH, "Yes. Yes. Yes."])
def test_ngram_repetition_passes_natural_text(answer):
    assert NgramRepetitionFilter().check(rec(answer)) is None


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("The cat sat on the mat and " * 12, "top_ngram_repetition"),
        ("猫坐在垫子上，" * 15, "top_ngram_repetition"),
        # a long tail repeated once: no dominant short n-gram, but half the text is a duplicate
        (EN + " " + EN, "duplicate_ngram_repetition"),
        (ZH + ZH, "duplicate_ngram_repetition"),
    ],
)
def test_ngram_repetition_rejects_loops(answer, reason):
    assert NgramRepetitionFilter().check(rec(answer)) == reason


def test_ngram_repetition_ignores_short_answers_and_checks_thresholds():
    assert NgramRepetitionFilter(min_tokens=30).check(rec("yes no " * 10)) is None
    with pytest.raises(ValueError, match="top_ngrams"):
        NgramRepetitionFilter(top_ngrams={2: 1.5})


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("\n".join(["Step one: open the box."] * 5 + ["Step two: take out the phone."]), "duplicate_lines"),
        ("\n".join(["第一步：打开盒子。"] * 5 + ["第二步：取出手机。"]), "duplicate_lines"),
        (
            "\n".join(["short a", "short b", "short c", "This is a much longer line repeated " * 3] * 1)
            + "\n"
            + "This is a much longer line repeated " * 3,
            "duplicate_line_chars",
        ),
        ("\n".join(["Line one here.", "Line two here.", "Line three here."]), None),
        ("\n".join(["第一行内容。", "第二行内容。", "第三行内容。"]), None),
        ("def f():\n    if x:\n        pass\n    }\n    }\n    }\n", None),  # short lines are not counted
    ],
)
def test_line_repetition(answer, reason):
    assert LineRepetitionFilter().check(rec(answer)) == reason


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("Wow!!!!!!!! That is great.", "char_repetition"),
        ("哈哈哈哈哈哈哈哈哈", "char_repetition"),
        ("答案是的的的的的的的的的的", "char_repetition"),
        ("Sooooooooo good", "char_repetition"),
        ("ababababababababababab", "substring_repetition"),
        ("你好吗你好吗你好吗你好吗你好吗你好吗你好吗你好吗你好吗", "substring_repetition"),
        ("Wow!!! That is great.", None),
        ("哈哈，真有趣。", None),
        ("| a | b |\n|-------|-------|\n| 1 | 2 |", None),  # table rules are exempt
        ("Total: 1000000000 dollars.", None),  # digits are exempt
        ("Colour #ffffff is white.", None),
        ("==========\nTitle\n==========", None),
    ],
)
def test_char_repetition(answer, reason):
    assert CharRepetitionFilter(max_unit_repeats=8).check(rec(answer)) == reason


def test_char_repetition_unit_check_is_optional():
    assert CharRepetitionFilter().check(rec("ababababababababababab")) is None
    assert CharRepetitionFilter(max_unit_repeats=3).check(rec("abcabcabcabc")) == "substring_repetition"


# ---- truncation ----


def test_finish_reason():
    assert FinishReasonFilter().check(rec(EN, finish_reason="length")) == "stopped_by_length"
    assert FinishReasonFilter().check(rec(EN, finish_reason="stop")) is None
    assert FinishReasonFilter().check(rec(EN)) is None


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("Here is the code:\n```python\nprint('hi')\n", "unclosed_code_fence"),
        ("代码如下：\n```python\nprint('你好')\n", "unclosed_code_fence"),
        ("We have $x^2 + y^2 = 1 and so", "unbalanced_latex"),
        ("\\begin{aligned} x &= 1 \\\\ y &= 2", "unbalanced_latex"),
        ("由 \\(a+b 可知", "unbalanced_latex"),
        ("The function f(x = 3 is", "unbalanced_brackets"),
        ("函数（即映射", "unbalanced_brackets"),
        ("见《红楼梦", "unbalanced_brackets"),
        ("Here is the code:\n```python\nprint('hi')\n```\nDone.", None),
        ("It costs $5 and the tax is $1.20 in total.", None),
        ("It costs $5.", None),
        ("Since $x^2 = 4$, we get $x = \\pm 2$ (two roots).", None),
        ("$$\\int_0^1 x\\,dx = \\frac{1}{2}$$", None),
        ("\\begin{aligned} x &= 1 \\end{aligned}", None),
        ("The interval $[0, 1)$ is half-open.", None),
        ("Options: 1) red 2) blue 3) green.", None),
        ("函数（即映射）是一种对应关系。", None),
        ("Use `f(` carefully.", None),
    ],
)
def test_unbalanced(answer, reason):
    assert UnbalancedFilter().check(rec(answer)) == reason


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (EN[:-1] + " and a small lamp that sits on the windowsill next to the", "cut_mid_sentence"),
        ("On the table there is a white ceramic mug filled with coffee and a folded newsp", "cut_mid_sentence"),
        ("桌子上放着一个装满咖啡的白色陶瓷杯、一份折叠好的报纸和一副老花镜以及一盏小台灯", "cut_mid_sentence"),
        ("The reasons are as follows:", "cut_mid_sentence"),
        ("原因如下：", "cut_mid_sentence"),
        ("First, the mug is white,", "cut_mid_sentence"),
        ("The mug sits next to the", "cut_mid_sentence"),  # ends on a function word
        ("这个杯子是白色的", "cut_mid_sentence"),
        (EN, None),
        (ZH, None),
        ("Yes", None),
        ("A red car", None),
        ("是的", None),
        ("After adding all the values in the table together the final total comes to 42", None),
        ("The answer is \\boxed{42}", None),
        ("The steps are:\n1. Open the box\n2. Take out the phone and place it on the flat table surface", None),
        ("| name | value |\n| apple | three apples in the basket on the table near the window |", None),
        ("Run this:\n```python\nprint('hi')\n```", None),
        ("你真的确定吗？", None),
        ("真是太好了！", None),
        ("他说：“我明天会来参加这个在市中心举行的会议”", None),
    ],
)
def test_mid_sentence(answer, reason):
    assert MidSentenceFilter().check(rec(answer)) == reason


def test_ngram_repetition_can_ignore_html_markup():
    from postvl.filtering.repetition import NgramRepetitionFilter

    cells = ["Year", "Sales", "Region", "2021", "1,250", "North", "2022", "1,410", "South", "2023", "1,630", "East"]
    rows = ["<tr>" + "".join(f"<td>{c}</td>" for c in cells[i : i + 3]) + "</tr>" for i in range(0, 12, 3)]
    table = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Parse the table."}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "<table>" + "".join(rows)
                                                             + "</table>"}]}]}
    strict = {"top_ngrams": {2: 0.12, 3: 0.10, 4: 0.08}, "min_tokens": 10}
    assert NgramRepetitionFilter(**strict).check(table) == "top_ngram_repetition"
    assert NgramRepetitionFilter(**strict, ignore_markup=True).check(table) is None
    looping = dict(table)
    looping["messages"] = [table["messages"][0], {"role": "assistant", "content": [
        {"type": "text", "text": "<table>" + "<tr><td>the same cell</td></tr>" * 12 + "</table>"}]}]
    assert NgramRepetitionFilter(**strict, ignore_markup=True).check(looping) == "top_ngram_repetition"
