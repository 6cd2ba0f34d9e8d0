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


def test_ngram_repetition_counts_a_cjk_character_as_two_thirds_of_a_token():
    # 31 tokens (27 characters, 4 numbers): "平均速度" twice covers a quarter of it, but it counts as 22 tokens
    short = "平均速度等于路程除以时间：120 ÷ 2 = 60，所以火车的平均速度是每小时60千米。"
    assert NgramRepetitionFilter().check(rec(short)) is None
    assert NgramRepetitionFilter(min_tokens=22).check(rec(short)) == "top_ngram_repetition"
    assert NgramRepetitionFilter(min_tokens=23).check(rec(short)) is None
    # 45 characters count as 30 tokens: measured; 44 do not
    assert NgramRepetitionFilter().check(rec("猫坐在垫子上" * 7 + "猫坐在")) == "top_ngram_repetition"
    assert NgramRepetitionFilter().check(rec("猫坐在垫子上" * 7 + "猫坐")) is None


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
    table = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Parse the table."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "<table>" + "".join(rows) + "</table>"}]},
        ]
    }
    strict = {"top_ngrams": {2: 0.12, 3: 0.10, 4: 0.08}, "min_tokens": 10}
    assert NgramRepetitionFilter(**strict).check(table) == "top_ngram_repetition"
    assert NgramRepetitionFilter(**strict, ignore_markup=True).check(table) is None
    looping = dict(table)
    looping["messages"] = [
        table["messages"][0],
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "<table>" + "<tr><td>the same cell</td></tr>" * 12 + "</table>"}],
        },
    ]
    assert NgramRepetitionFilter(**strict, ignore_markup=True).check(looping) == "top_ngram_repetition"


# ---- fast paths agree with the plain computations ----
#
# The filters take shortcuts (tokenizing without a regex, bounds that skip counting, screens before a full match);
# each shortcut must decide exactly as the plain computation below does, on tricky inputs and on random ones.

TRICKY_TEXTS = [
    "",
    " ",
    "\n\t \x0b\x0c\x1c\x1d\x1e\x1f",
    "Hello, world! It's 3:45pm -- snake_case & CamelCase; x2=y**2.",
    "图片中是一张靠窗的小木桌。桌子上放着一个杯子，杯子是白色的！",
    "ひらがなとカタカナ、ーー。漢字",
    "Mixed 中文 and English, 2024年3月3日, 共1,250元。",
    "한국어 문장입니다. 한국어 문장입니다.",
    "Café naïve Über ÀÉÎ ß İstanbul Ωmega ½ ² Ⅳ",
    "ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ １２３",
    "<table><tr><td>Q1</td><td>3.2</td></tr></table>",
    "tabs\tand\u00a0no-break\u3000spaces\u2028line",
    "emoji 😀 and symbols © ® ™ → ∑",
]


def _random_text(rng, pieces, max_pieces=40):
    return "".join(rng.choice(pieces) + rng.choice(["", " ", " ", "\n"]) for _ in range(rng.randint(0, max_pieces)))


def test_tokenize_fast_paths_match_the_token_pattern():
    import random

    from postvl.filtering.base import TOKEN_RE, tokenize

    pieces = ["the", "cat", "图", "片", "。", "，", "x_1", "2024", "年", "é", "ß", "가", "ー", "!", "-", "\t", "\x1f"]
    rng = random.Random(0)
    texts = TRICKY_TEXTS + [_random_text(rng, pieces) for _ in range(2000)]
    for text in texts:
        assert tokenize(text) == TOKEN_RE.findall(text), text


def _reference_ngram(filt, text):
    """Gopher's statistics as they read, with no bound and no shortcut."""
    import re
    from collections import Counter

    from postvl.filtering.base import CJK_RE, TOKEN_RE

    if filt.ignore_markup:
        text = re.sub(r"<[^<>]{1,200}>", " ", text)
    tokens = TOKEN_RE.findall(text)
    cjk = sum(1 for t in tokens if CJK_RE.fullmatch(t))  # a CJK character counts as 2/3 of a token toward min_tokens
    if len(tokens) - cjk + cjk * 2 / 3 < max(filt.min_tokens, 1) - 1e-9 or not (filt.top_ngrams or filt.dup_ngrams):
        return None
    total = sum(map(len, tokens))
    for n, share in filt.top_ngrams.items():
        grams = list(zip(*(tokens[i:] for i in range(n))))
        if grams:
            gram, count = Counter(grams).most_common(1)[0]
            if count > 1 and sum(map(len, gram)) * count / total > share:
                return "top_ngram_repetition"
    for n, share in filt.dup_ngrams.items():
        grams = list(zip(*(tokens[i:] for i in range(n))))
        seen, repeated, idx = set(), 0, 0
        while idx < len(grams):
            if grams[idx] in seen:
                repeated += sum(map(len, grams[idx]))
                idx += n
            else:
                seen.add(grams[idx])
                idx += 1
        if repeated / total > share:
            return "duplicate_ngram_repetition"
    return None


NGRAM_CONFIGS = [
    {},
    {"min_tokens": 5},
    {"min_tokens": 3, "ignore_markup": True},
    {"top_ngrams": {2: 0.12, 3: 0.10, 4: 0.08}, "dup_ngrams": {5: 0.10, 6: 0.09, 7: 0.08, 8: 0.07}, "min_tokens": 20},
    {"top_ngrams": {1: 0.3, 3: 0.2}, "dup_ngrams": {2: 0.2, 6: 0.15}, "min_tokens": 4},  # n-gram sizes with gaps
    {"top_ngrams": {}, "dup_ngrams": {3: 0.1, 4: 0.2}, "min_tokens": 1},
    {"top_ngrams": {4: 0.05}, "dup_ngrams": {}, "min_tokens": 0},
]


def test_ngram_repetition_bounds_decide_as_the_plain_statistics():
    import random

    vocabulary = "a bb the of ccc 图 片 中 x1 ñandú <td> </td> , . 。".split() + ["\n"]
    rng = random.Random(1)
    texts = TRICKY_TEXTS + [EN, ZH, EN + " " + EN, "The cat sat on the mat and " * 12]
    for _ in range(1500):
        words = rng.sample(vocabulary, rng.choice([2, 3, 5, len(vocabulary)]))
        tokens = [rng.choice(words) for _ in range(rng.randint(0, 90))]
        if tokens and rng.random() < 0.4:  # a loop: a stretch copied a few times in a row
            i = rng.randrange(len(tokens))
            tokens[i:i] = tokens[i : i + rng.randint(1, 12)] * rng.randint(2, 6)
        texts.append(rng.choice([" ", "", " "]).join(tokens))
    filters = [NgramRepetitionFilter(**config) for config in NGRAM_CONFIGS]
    decisions = set()
    for text in texts:
        for filt in filters:
            decision = filt.check(rec(text))
            assert decision == _reference_ngram(filt, text), (filt, text)
            decisions.add(decision)
    assert decisions == {None, "top_ngram_repetition", "duplicate_ngram_repetition"}


def test_char_repetition_screens_decide_as_the_plain_patterns():
    import random
    import re

    def reference(filt, text):
        if re.search(f"([^\\s{re.escape(filt.exempt)}])\\1{{{filt.max_run},}}", text):
            return "char_repetition"
        if filt.max_unit_repeats is not None:
            for match in re.finditer(f"(.{{2,10}}?)\\1{{{filt.max_unit_repeats},}}", text, re.S):
                if re.search(r"[^\W\d_]", match.group(1)):
                    return "substring_repetition"
        return None

    units = list("ab!的 \n.-1Aé") + ["ab", "abc", "的的", "xy!", "12", "  ", "\u3000"]
    rng = random.Random(2)
    texts = list(TRICKY_TEXTS)
    for _ in range(3000):
        parts = []
        for _ in range(rng.randint(0, 10)):
            unit = rng.choice(units)
            parts.append(unit * (rng.randint(1, 16) if rng.random() < 0.4 else 1))
            parts.append("".join(rng.choice(units) for _ in range(rng.randint(0, 6))))
        texts.append("".join(parts))
    filters = [
        CharRepetitionFilter(),
        CharRepetitionFilter(max_run=5, max_unit_repeats=5),
        CharRepetitionFilter(max_run=12),
        CharRepetitionFilter(max_run=1, max_unit_repeats=2),
        CharRepetitionFilter(max_run=8, exempt="", max_unit_repeats=3),
    ]
    decisions = set()
    for text in texts:
        for filt in filters:
            decision = filt.check(rec(text))
            assert decision == reference(filt, text), (filt, text)
            decisions.add(decision)
    assert decisions == {None, "char_repetition", "substring_repetition"}


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("Items (a) and (b) are listed; 函数（即映射", "unbalanced_brackets"),  # full-width in a mixed text
        ("（甲）和（乙） then f(x", "unbalanced_brackets"),
        ("（甲）和（乙）以及 f(x) 与 [1, 2]。", None),
        ("A list [1, 2, 3] and a set {1, 2}.", None),
        ("Closers alone: 1) 2] 3} ）】》", None),
    ],
)
def test_unbalanced_brackets_in_ascii_and_mixed_text(answer, reason):
    assert UnbalancedFilter(latex=False).check(rec(answer)) == reason


def test_harmful_screen_decides_as_matching_every_phrase():
    import random
    import re

    from postvl.filtering import HarmfulFilter

    def reference(phrases, text):
        cleaned = sorted({" ".join(p.lower().split()) for p in phrases if p and p.strip()})
        norm = " ".join(text.lower().split())
        cjk = [p for p in cleaned if re.search("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]", p)]
        words = [p for p in cleaned if p not in cjk]
        if any(p in norm for p in cjk):
            return True
        alternatives = "|".join(re.escape(p) for p in sorted(words, key=len, reverse=True))
        return bool(words) and bool(re.search(rf"(?<!\w)(?:{alternatives})(?!\w)", norm))

    lexicons = [
        ["how to make a bomb", "make a pipe bomb", "kill yourself", "如何制作炸弹", "去死吧"],
        ["a b", "b", "x-y z", "Ünïcode  Word", "K", "如何 自杀", "ß", "!!"],
    ]
    pieces = "how to make a bomb Bomb BOMB pipe kill Yourself 如何 制作 炸弹 去死吧 自杀".split()
    pieces += "x y - z b K İ ß SS Ünïcode word ! _ ,".split() + ["\u212a"]  # the Kelvin sign lower-cases to "k"
    rng = random.Random(3)
    texts = TRICKY_TEXTS + [_random_text(rng, pieces, 12) for _ in range(3000)]
    for phrases in lexicons:
        filt = HarmfulFilter(phrases)
        hits = 0
        for text in texts:
            expected = reference(phrases, text)
            assert (filt.check(rec(text)) == "harmful_content") == expected, (phrases, text)
            hits += expected
        assert 0 < hits < len(texts)


def test_lexical_similarity_matches_the_per_word_ngrams():
    import math
    import random
    import re
    from collections import Counter

    from postvl.filtering import lexical_similarity
    from postvl.filtering.relevance import _STOPWORDS

    cjk = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"

    def ngrams(text, n, cjk_n):
        grams = []
        for run_cjk, word in re.findall(f"([{cjk}]+)|([^\\W{cjk}]+)", text.lower()):
            if not run_cjk and word in _STOPWORDS:
                continue
            run, size = (run_cjk, cjk_n) if run_cjk else (f" {word} ", n)
            grams += [run] if len(run) <= size else [run[i : i + size] for i in range(len(run) - size + 1)]
        return Counter(grams)

    def reference(a, b, n, cjk_n):
        va, vb = ngrams(a, n, cjk_n), ngrams(b, n, cjk_n)
        dot = sum(c * vb[g] for g, c in va.items())
        if not dot:
            return 0.0
        return dot / math.sqrt(sum(c * c for c in va.values()) * sum(c * c for c in vb.values()))

    pieces = "The image shows a cat cats x 图片 中是 猫 。 İstanbul K é 12 ｱｲ 가나 ΣΑΣ ß of the".split()
    rng = random.Random(4)
    pairs = [(a, b) for a in TRICKY_TEXTS[:6] for b in TRICKY_TEXTS[:6]]
    pairs += [(_random_text(rng, pieces, 20), _random_text(rng, pieces, 20)) for _ in range(1500)]
    for a, b in pairs:
        for n, cjk_n in ((3, 2), (1, 1), (5, 3)):
            assert lexical_similarity(a, b, n, cjk_n) == reference(a, b, n, cjk_n), (a, b, n, cjk_n)
