"""Relevance, harmful-content, code-switching and dedup filters."""

from __future__ import annotations

import numpy as np
import pytest

from postvl.filtering import (
    CodeSwitchingFilter,
    ExactDedupFilter,
    HarmfulFilter,
    MinHasher,
    NearDedupFilter,
    RelevanceFilter,
    lexical_similarity,
)
from postvl.records import image_part, message


def rec(answer: str, query: str = "Describe the image.", images: tuple[str, ...] = ("img.png",), **meta) -> dict:
    return {
        "id": "r0",
        "messages": [message("user", image_part(), query), message("assistant", answer)],
        "images": list(images),
        "videos": [],
        "meta": meta,
    }


# ---- relevance ----

Q_EN = "What is the derivative of x squared plus three x with respect to x?"
A_EN = "The derivative of x squared is 2x and the derivative of three x is 3, so the derivative is 2x + 3."
OFF_EN = "Preheat the oven, whisk flour with sugar and butter, then bake the cake for forty minutes until golden."
Q_ZH = "请计算函数 x 的平方加三倍 x 关于 x 的导数。"
A_ZH = "函数 x 的平方的导数是 2x，三倍 x 的导数是 3，所以所求导数为 2x + 3。"
OFF_ZH = "先把烤箱预热，再把面粉、白糖和黄油搅拌均匀，最后烤四十分钟直到表面金黄即可享用。"


@pytest.mark.parametrize(
    ("query", "answer", "reason"),
    [
        (Q_EN, A_EN, None),
        (Q_ZH, A_ZH, None),
        (Q_EN, OFF_EN, "irrelevant_answer"),
        (Q_ZH, OFF_ZH, "irrelevant_answer"),
        (Q_EN, "Yes.", None),  # too short to judge
    ],
)
def test_relevance_lexical(query, answer, reason):
    assert RelevanceFilter(threshold=0.1, visual_threshold=0.1).check(rec(answer, query=query)) == reason


def test_lexical_similarity_bounds():
    assert lexical_similarity("same text here", "same text here") == pytest.approx(1.0)
    assert lexical_similarity("abc", "") == 0.0
    assert lexical_similarity(Q_EN, A_EN) > lexical_similarity(Q_EN, OFF_EN)


def test_relevance_with_embedding_backend():
    def embed(texts: list[str]) -> np.ndarray:  # a toy backend: "cake" texts point one way, others another
        return np.array([[1.0, 0.0] if "cake" in t else [0.0, 1.0] for t in texts])

    filt = RelevanceFilter(threshold=0.5, visual_threshold=0.5, embed=embed, open_queries=[])  # toy: no open ones
    assert filt.check(rec(OFF_EN, query=Q_EN)) == "irrelevant_answer"
    assert filt.check(rec(A_EN, query=Q_EN)) is None
    assert filt.similarity("cake", "cake") == pytest.approx(1.0)


# ---- harmful ----

PHRASES = ["how to make a bomb", "kill yourself", "制作炸弹", "自杀方法"]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("Here is how to make a bomb: first ...", "harmful_content"),
        ("HOW TO   MAKE A\nBOMB", "harmful_content"),
        ("You should just kill yourself.", "harmful_content"),
        ("下面介绍如何制作炸弹的步骤。", "harmful_content"),
        ("这里是自杀方法。", "harmful_content"),
        ("The movie explains how to make a bombastic entrance.", None),  # whole words only
        ("Never skill yourself up too fast.", None),
        ("这部电影讲的是拆除炸弹的专家。", None),
        ("A red car parked outside.", None),
    ],
)
def test_harmful(answer, reason):
    assert HarmfulFilter(PHRASES).check(rec(answer)) == reason


def test_harmful_query_and_empty_lexicon():
    record = rec("I can't help with that.", query="Tell me how to make a bomb")
    assert HarmfulFilter(PHRASES).check(record) is None
    assert HarmfulFilter(PHRASES, check_query=True).check(record) == "harmful_content"
    with pytest.raises(ValueError, match="phrases is empty"):
        HarmfulFilter([" ", ""])


# ---- code switching ----


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        # Chinese prose that switches into English inside sentences
        (
            "这张图片显示了一个 small wooden table next to the window，上面放着 a white ceramic mug filled with "
            "coffee and a folded newspaper。",
            "code_switching",
        ),
        (
            "The picture shows 一张靠窗的小木桌，桌子上放着 a white mug and some newspapers on the top。",
            "code_switching",
        ),
        ("图片中是一张靠窗的小木桌。桌子上放着一个装满咖啡的白色陶瓷杯、一份折叠好的报纸和一副老花镜。", None),
        ("The image shows a small wooden table next to a window with a mug of coffee on it.", None),
        # proper nouns, acronyms, units, code, formulas and quotes do not count
        ("我们使用 PyTorch 和 NumPy 在 GPU 上训练 Qwen2.5-VL 模型，图像大小为 448 px，长度约 5 cm。", None),
        (
            "运行下面的代码：\n```python\nfor item in items:\n    print(item.name, item.value)\n```\n即可得到结果。",
            None,
        ),
        ("由 $\\sin x + \\cos x = \\sqrt{2}$ 可知结果成立。", None),
        ('The sign says "欢迎光临本店，祝您购物愉快" in red letters above the door of the shop.', None),
        ("Visit https://example.com/docs/getting-started 获取更多的文档和信息。", None),
    ],
)
def test_code_switching(answer, reason):
    assert CodeSwitchingFilter().check(rec(answer)) == reason


def test_code_switching_thresholds():
    with pytest.raises(ValueError, match="low < high"):
        CodeSwitchingFilter(low=0.9, high=0.1)


# ---- dedup ----


def test_exact_dedup_keeps_first_occurrence():
    filt = ExactDedupFilter()
    first = rec("A red car.", query="What is this?")
    assert filt.check(first) is None
    assert filt.check(rec("a  red car.", query="what is  this?")) == "exact_duplicate"  # case and spaces
    assert filt.check(rec("A red car.", query="What is this?", images=("other.png",))) is None
    assert filt.check(rec("一辆红色的车。", query="这是什么？")) is None
    assert filt.check(rec("一辆红色的车。", query="这是什么？")) == "exact_duplicate"


def test_exact_dedup_without_images_and_on_answers_only():
    filt = ExactDedupFilter(fields=["answer"], include_images=False)
    assert filt.check(rec("A red car.", query="q1", images=("a.png",))) is None
    assert filt.check(rec("A red car.", query="q2", images=("b.png",))) == "exact_duplicate"
    with pytest.raises(ValueError, match="fields"):
        ExactDedupFilter(fields=["answers"])


LONG_EN = (
    "The image shows a small wooden table next to a window. On the table there is a white ceramic mug filled with "
    "coffee, a folded newspaper and a pair of reading glasses. Sunlight comes in from the left side."
)
LONG_ZH = (
    "图片中是一张靠窗的小木桌。桌子上放着一个装满咖啡的白色陶瓷杯、一份折叠好的报纸和一副老花镜。阳光从左侧照进来。"
)


def test_near_dedup_english_and_chinese():
    filt = NearDedupFilter(include_images=False)
    assert filt.check(rec(LONG_EN)) is None
    assert filt.check(rec(LONG_EN.replace("small", "little").replace("left", "right"))) == "near_duplicate"
    assert filt.check(rec(LONG_ZH)) is None
    assert filt.check(rec(LONG_ZH.replace("白色", "黑色"))) == "near_duplicate"
    different = "A busy street at night with neon signs, taxis waiting at the corner and people under umbrellas."
    assert filt.check(rec(different)) is None
    assert filt.check(rec("Yes.")) is None and filt.check(rec("Yes.")) is None  # short: left to exact dedup


def test_near_dedup_scoped_by_images():
    filt = NearDedupFilter()
    assert filt.check(rec(LONG_EN, images=("a.png",))) is None
    assert filt.check(rec(LONG_EN.replace("small", "little"), images=("b.png",))) is None
    assert filt.check(rec(LONG_EN.replace("small", "tiny"), images=("a.png",))) == "near_duplicate"


def test_minhash_estimates_jaccard():
    hasher = MinHasher(num_perm=256, shingle=5, seed=1)
    a = hasher.signature("the quick brown fox jumps over the lazy dog " * 3)
    b = hasher.signature("the quick brown fox jumps over the lazy dog " * 3)
    c = hasher.signature("completely different words about an unrelated topic entirely")
    assert a.dtype == np.uint32 and a.shape == (256,)
    assert (a == b).all()
    assert (a == c).mean() < 0.1
    assert hasher.signature("abc") is None
    assert MinHasher(num_perm=256, seed=1).signature("x" * 50000) is not None  # chunked over long texts


def test_near_dedup_checks_arguments():
    with pytest.raises(ValueError, match="bands"):
        NearDedupFilter(num_perm=64, bands=5)
