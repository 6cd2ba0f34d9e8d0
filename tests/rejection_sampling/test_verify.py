"""Answer verification: every answer type right and wrong, the last-answer rule, Chinese, and Math-Verify's cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from postvl.records import ANSWER_TYPES
from postvl.rejection_sampling.verify import (
    _VERIFIERS,
    Verdict,
    VerifyConfig,
    committed_spans,
    iou,
    normalize_text,
    parse_count_words,
    verify,
)

DATA = Path(__file__).resolve().parents[1] / "data"
QWEN_BOX = '```json\n[\n\t{"bbox_2d": [10, 10, 100, 100], "label": "cat"}\n]\n```'
OPTIONS = ["A. a red car", "B. a blue bicycle", "C. a green bus", "D. a yellow taxi"]

# (output, gold, answer_type, options, expected verdict)
CASES = [
    # math
    (
        "So $x = \\frac{1}{3}$, hence the answer is $\\boxed{\\frac{1}{3}}$.",
        "1/3",
        "math",
        None,
        Verdict(True, "\\frac{1}{3}"),
    ),
    ("The answer is $\\boxed{\\frac{1}{3}}$", "\\frac{1}{3}", "math", None, Verdict(True, "\\frac{1}{3}")),
    ("The answer is $\\boxed{0.5}$", "1/3", "math", None, Verdict(False, "\\frac{1}{2}", "mismatch")),  # as normalised
    ("Final answer: The largest $n$ is 34.", "34", "math", None, Verdict(True, "34")),
    ("We get $\\boxed{3\\sqrt{13}}$.", "$\\sqrt{117}$", "math", None, Verdict(True, "3\\sqrt{13}")),
    ("I cannot solve this.", "7", "math", None, Verdict(False, None, "no_final_answer")),
    # choice: letters in many forms, and option texts
    ("Answer: B", "B", "choice", None, Verdict(True, "B")),
    ("Answer: B", "C", "choice", None, Verdict(False, "B", "mismatch")),
    ("Comparing the two, (B) fits best.", "B", "choice", None, Verdict(True, "B")),
    ("答案：C", "C", "choice", None, Verdict(True, "C")),
    ("答案：C", "(D)", "choice", None, Verdict(False, "C", "mismatch")),
    ("The correct option is b", "B", "choice", None, Verdict(True, "B")),
    ("**B.** a blue bicycle", "B", "choice", OPTIONS, Verdict(True, "B")),
    ("The answer is B", "a blue bicycle", "choice", OPTIONS, Verdict(True, "B")),
    ("The answer is a green bus.", "C", "choice", OPTIONS, Verdict(True, "C")),
    ("The answer is a green bus.", "a blue bicycle", "choice", OPTIONS, Verdict(False, "C", "mismatch")),
    ("I think the answer is (B).", "B", "choice", None, Verdict(True, "B")),
    ("故选D。", "D", "choice", None, Verdict(True, "D")),
    ("None of these look right.", "A", "choice", None, Verdict(False, None, "no_final_answer")),
    ("The answer is E.", "A", "choice", OPTIONS, Verdict(False, None, "no_final_answer")),
    # number
    ("The total is 1,234 dollars.", "1234", "number", None, Verdict(True, "1,234")),
    ("The total is 1,234 dollars.", "1243", "number", None, Verdict(False, "1,234", "mismatch")),
    ("Answer: 50%", "0.5", "number", None, Verdict(True, "50%")),
    ("Answer: 50%", 50, "number", None, Verdict(True, "50%")),
    ("Answer: 0.5", "50%", "number", None, Verdict(True, "0.5")),
    ("Answer: 0.5", "50", "number", None, Verdict(False, "0.5", "mismatch")),
    ("The speed is 3e8 m/s.", "300000000", "number", None, Verdict(True, "3e8")),
    ("It is $1.5 \\times 10^{-3}$ g.", "0.0015", "number", None, Verdict(True, "1.5 \\times 10^{-3}")),
    ("Answer: 3.1416", "3.14159", "number", None, Verdict(True, "3.1416")),
    ("Answer: 3.15", "3.14159", "number", None, Verdict(False, "3.15", "mismatch")),
    ("The ratio is 3/4.", "0.75", "number", None, Verdict(True, "3/4")),
    ("Answer: -2.5", "-2.5", "number", None, Verdict(True, "-2.5")),
    ("There is no number here.", "3", "number", None, Verdict(False, None, "no_final_answer")),
    # count: digits, English and Chinese number words
    ("There are seven birds on the wire.", 7, "count", None, Verdict(True, "seven")),
    ("There are seven birds on the wire.", 8, "count", None, Verdict(False, "seven", "mismatch")),
    ("Answer: twenty-one", "21", "count", None, Verdict(True, "twenty-one")),
    ("I count 3 + 4 = 7 apples.", 7, "count", None, Verdict(True, "7")),
    ("图中有七只猫。", 7, "count", None, Verdict(True, "七")),
    ("一共有十二个苹果，我再检查一下。", 12, "count", None, Verdict(True, "十二")),
    ("答案是二十一", 21, "count", None, Verdict(True, "二十一")),
    ("图中有两只狗。", 2, "count", None, Verdict(True, "两")),
    ("图中有两只狗。", 3, "count", None, Verdict(False, "两", "mismatch")),
    ("The dog on the left is the one I mean; there are 4 dogs.", "four", "count", None, Verdict(True, "4")),
    # bbox
    (QWEN_BOX, [12, 12, 100, 100], "bbox", None, Verdict(True, "[[10, 10, 100, 100]]")),
    (QWEN_BOX, [60, 60, 200, 200], "bbox", None, Verdict(False, "[[10, 10, 100, 100]]", "mismatch")),
    ("The cat is at [10, 10, 100, 100].", "[0, 0, 100, 100]", "bbox", None, Verdict(True, "[[10, 10, 100, 100]]")),
    (
        '[{"bbox_2d": [10, 10, 100, 100]}, {"bbox_2d": [200, 200, 300, 300]}]',
        [10, 10, 100, 100],
        "bbox",
        None,
        Verdict(False, "[[10, 10, 100, 100], [200, 200, 300, 300]]", "wrong_box_count"),
    ),
    (
        '[{"bbox_2d": [200, 200, 300, 300]}, {"bbox_2d": [10, 10, 100, 100]}]',
        [[10, 10, 100, 100], [205, 205, 300, 300]],
        "bbox",
        None,
        Verdict(True, "[[200, 200, 300, 300], [10, 10, 100, 100]]"),
    ),
    ("I cannot see a cat.", [0, 0, 10, 10], "bbox", None, Verdict(False, None, "no_final_answer")),
    # point
    (
        '```json\n[{"point_2d": [50, 60], "label": "cat"}]\n```',
        [10, 10, 100, 100],
        "point",
        None,
        Verdict(True, "[[50, 60]]"),
    ),
    ("The cat is at [150, 60].", [10, 10, 100, 100], "point", None, Verdict(False, "[[150, 60]]", "mismatch")),
    ("The tip is at (100, 10).", [10, 10, 100, 100], "point", None, Verdict(True, "[[100, 10]]")),
    # text
    ("The answer is: the Eiffel Tower.", "Eiffel tower", "text", None, Verdict(True, "the Eiffel Tower.")),
    ("The answer is: the Eiffel Tower.", "Louvre", "text", None, Verdict(False, "the Eiffel Tower.", "mismatch")),
    ("答案：ＰＡＲＩＳ！", "paris", "text", None, Verdict(True, "ＰＡＲＩＳ！")),
    ("答案：北京 大学", "北京大学", "text", None, Verdict(True, "北京 大学")),
    ("Looking at the sign...\nSTOP", ["stop", "stop sign"], "text", None, Verdict(True, "STOP")),
    # yes/no
    ("Yes, there is no dog in the picture.", "yes", "yesno", None, Verdict(True, "Yes")),
    ("Yes, there is no dog in the picture.", "no", "yesno", None, Verdict(False, "Yes", "mismatch")),
    ("The statement is false.\nAnswer: False", False, "yesno", None, Verdict(True, "False")),
    ("答案：不是", "no", "yesno", None, Verdict(True, "不是")),
    ("所以答案是否", "否", "yesno", None, Verdict(True, "否")),
    ("答案：正确", "是", "yesno", None, Verdict(True, "正确")),
    ("答案：错误", "是", "yesno", None, Verdict(False, "错误", "mismatch")),
    ("Maybe, it is hard to tell.", "yes", "yesno", None, Verdict(False, None, "no_final_answer")),
]


@pytest.mark.parametrize(("output", "gold", "answer_type", "options", "expected"), CASES)
def test_verify_cases(output, gold, answer_type, options, expected):
    assert verify(output, gold, answer_type, options=options) == expected


LAST_ANSWER_CASES = [
    ("Answer: A ... wait, actually the answer is C", "C", "choice", "C"),
    ("The answer is \\boxed{A}. Hmm, no: the answer is C.", "C", "choice", "C"),
    ("First \\boxed{2}, but I made an error, so \\boxed{3}", "3", "math", "3"),
    ("Answer: $5$. Hmm wait, actually the answer is $7$.", "7", "math", "7"),
    ("Answer: 12\nLet me recount. Answer: 13", 13, "count", "13"),
    ("答案：A。等等，我再看一下，答案是C。", "C", "choice", "C"),
    ('```json\n[{"bbox_2d": [0, 0, 5, 5]}]\n```\nCorrection:\n```json\n[{"bbox_2d": [10, 10, 100, 100]}]\n```',
     [10, 10, 100, 100], "bbox", "[[10, 10, 100, 100]]"),
    ("Answer: yes. On second thought, the answer is no.", "no", "yesno", "no"),
]  # fmt: skip


@pytest.mark.parametrize(("output", "gold", "answer_type", "extracted"), LAST_ANSWER_CASES)
def test_the_last_committed_answer_counts(output, gold, answer_type, extracted):
    verdict = verify(output, gold, answer_type)
    assert verdict == Verdict(True, extracted)


def test_multi_box_chain_stays_one_answer():
    verdict = verify("\\boxed{1} and \\boxed{2} and \\boxed{3}", "$\\{1,2,3\\}$", "math")
    assert verdict.correct


def test_committed_spans():
    assert committed_spans("no answer here; let me answer the question") == []
    assert committed_spans("x \\boxed{\\frac{1}{2}} done") == ["\\frac{1}{2}"]
    assert committed_spans("Answer: B\nbecause") == ["B", "B\nbecause"]
    assert committed_spans("The answer is:\n```json\n[1]\n```") == ["\n```json\n[1]\n```"]


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("seven", [7]),
        ("twenty-one and ninety nine", [21, 99]),
        ("five six seven", [5, 6, 7]),
        ("two thousand and twenty-four", [2024]),
        ("one hundred and five", [105]),
        ("七 十二 二十一 两 一百零五 两万", [7, 12, 21, 2, 105, 20000]),
        ("第一步，我们看一下", []),
        ("the one on the left", []),
        ("none", [0]),
    ],
)
def test_parse_count_words(text, values):
    assert [v for v, _ in parse_count_words(text)] == values


def test_percent_rule_can_be_turned_off():
    config = VerifyConfig(percent_as_fraction=False)
    assert not verify("Answer: 50%", "0.5", "number", config=config).correct
    assert verify("Answer: 50%", "50", "number", config=config).correct


def test_tolerances_are_configurable():
    assert not verify("Answer: 101", "100", "number").correct
    assert verify("Answer: 101", "100", "number", config=VerifyConfig(rel_tol=0.02)).correct
    assert verify("Answer: 100.4", "100", "number", config=VerifyConfig(abs_tol=0.5)).correct


def test_iou_threshold_is_configurable():
    output, gold = "[0, 0, 10, 10]", [0, 0, 10, 20]  # IoU 0.5
    assert iou([0, 0, 10, 10], gold) == pytest.approx(0.5)
    assert verify(output, gold, "bbox").correct
    assert not verify(output, gold, "bbox", config=VerifyConfig(iou_threshold=0.6)).correct


def test_math_off_the_main_thread_without_timeout():
    from concurrent.futures import ThreadPoolExecutor

    config = VerifyConfig(math_timeout_seconds=None)
    with ThreadPoolExecutor(max_workers=1) as pool:
        verdict = pool.submit(verify, "So \\boxed{\\frac{2}{4}}", "1/2", "math", config=config).result()
    assert verdict == Verdict(True, "\\frac{2}{4}")


def test_normalize_text():
    assert normalize_text("  The  Eiffel-Tower!  ") == "eiffel tower"
    assert normalize_text("ＡＢＣ，１２３") == "abc 123"


def test_every_answer_type_has_a_verifier():
    assert set(_VERIFIERS) == set(ANSWER_TYPES)


@pytest.mark.parametrize(
    ("gold", "answer_type", "options", "message"),
    [
        ("[1, 2]", "bbox", None, "x1, y1, x2, y2"),
        ([10, 10, 5, 5], "bbox", None, "x1 > x2"),
        ("maybe", "yesno", None, "yes/no"),
        ("3.5", "count", None, "whole number"),
        ("E", "choice", OPTIONS, "names no option"),
        ("a purple train", "choice", OPTIONS, "neither a letter"),
        ("abc", "number", None, "no number"),
    ],
)
def test_bad_gold_raises_with_the_value(gold, answer_type, options, message):
    with pytest.raises(ValueError, match=message):
        verify("Answer: 1", gold, answer_type, options=options)


def test_unknown_answer_type_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'count'"):
        verify("7", "7", "cout")


def test_bad_config_lists_every_error():
    with pytest.raises(ValueError, match="iou_threshold.*math_targets"):
        VerifyConfig(iou_threshold=0, math_targets=("latex", "regex"))


def _config_for(line_config: dict) -> VerifyConfig:
    kwargs = {}
    if "match_types" in line_config:
        kwargs["math_targets"] = tuple(line_config["match_types"])
    if "precision" in line_config:
        kwargs["math_float_rounding"] = line_config["precision"]
    if "strict" in line_config:
        kwargs["math_strict"] = line_config["strict"]
    if "allow_set_relation_comp" in line_config:
        kwargs["math_allow_set_relation_comp"] = line_config["allow_set_relation_comp"]
    return VerifyConfig(**kwargs)


MATH_VERIFY_PAIRS = [json.loads(line) for line in (DATA / "math_verify_answer_pairs.jsonl").open(encoding="utf-8")]


@pytest.mark.parametrize("case", MATH_VERIFY_PAIRS, ids=lambda c: c["category"])
def test_math_verify_equivalence_cases(case):
    """Math-Verify's own cases, each under the settings it was written for; ``expected`` false: must differ."""
    verdict = verify(case["pred"], case["gold"], "math", config=_config_for(case.get("config") or {}))
    assert verdict.correct == case["expected"], verdict


LETTER_CASES = [json.loads(line) for line in (DATA / "math_verify_letter_extraction.jsonl").open(encoding="utf-8")]


@pytest.mark.parametrize("case", LETTER_CASES, ids=lambda c: c["pred"])
def test_math_verify_letter_extraction_cases(case):
    if case["expected_parse"]:
        letter = case["expected_parse"][1]
        assert verify(case["pred"], letter, "choice") == Verdict(True, letter.upper())
    else:
        assert verify(case["pred"], "A", "choice") == Verdict(False, None, "no_final_answer")


def test_numbers_right_after_chinese_characters_are_read():
    from postvl.rejection_sampling.verify import verify

    assert verify("图中共有2个绿色圆形。", "2", "count").correct
    assert verify("Rug的Stars是56。", "56", "number").correct
    assert not verify("图中共有3个绿色圆形。", "2", "count").correct
    assert verify("x2 is not an answer; 答案：7", "7", "number").correct


def test_chinese_you_and_meiyou_answer_yes_no():
    from postvl.rejection_sampling.verify import verify

    assert verify("有，图中有一个红色圆形。", "yes", "yesno").correct
    assert verify("没有红色圆形。", "no", "yesno").correct
    assert not verify("没有红色圆形。", "yes", "yesno").correct


def test_chinese_shape_names_are_not_numbers():
    from postvl.rejection_sampling.verify import verify

    assert verify("图中共有6个红色三角形。", "6", "count").correct
    assert verify("图中有三个红色三角形。", "3", "count").correct
    assert verify("一共有五个六边形。", "5", "count").correct
