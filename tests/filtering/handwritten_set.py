"""A hand-written set for the default filter policy: clean pairs that must pass, and pairs that must fail.

Written apart from ``postvl synth`` and from the thresholds of ``configs/filters/default.yaml``, in English and
Chinese, with and without images, tagged and untagged. The defaults were calibrated so that every ``CLEAN`` pair
passes; each ``BAD`` pair names the reason it must get.
"""

from __future__ import annotations

from typing import Any

# (query, answer, domain or None, with an image)
CLEAN: list[tuple[str, str, str | None, bool]] = [
    ("What is the capital of France?", "The capital of France is Paris.", None, False),
    ("What is the capital of France?", "Paris.", None, False),
    ("Is water wet?", "Yes.", None, False),
    ("How many legs does a spider have?", "A spider has eight legs.", "language", False),
    (
        "Explain the theory of relativity in detail.",
        "Relativity is two theories by Albert Einstein. Special relativity says that the laws of physics are the "
        "same for every observer moving at a constant speed and that the speed of light in a vacuum is the same for "
        "all of them, so moving clocks run slow and moving rulers shrink. General relativity describes gravity as "
        "the curvature of spacetime by mass and energy: planets follow the straightest paths in curved spacetime.",
        "language",
        False,
    ),
    (
        "Why is the sky blue?",
        "Sunlight is scattered by the molecules of the air, and blue light, with its short wavelength, is scattered "
        "much more than red light, so blue light reaches our eyes from every part of the sky.",
        None,
        False,
    ),
    (
        "Give me a simple recipe for pancakes.",
        "Whisk one cup of flour, one egg, one cup of milk, a spoon of sugar and a pinch of salt into a smooth batter. "
        "Pour a ladle into a hot buttered pan, flip when bubbles appear, and cook the other side until golden.",
        None,
        False,
    ),
    (
        "Write a short poem about autumn.",
        "Golden leaves drift slowly down,\nPainting paths in red and brown.\nCool winds hum a quiet tune,\n"
        "Beneath the pale October moon.",
        "language",
        False,
    ),
    (
        "Hi, how are you today?",
        "I'm doing well, thank you for asking! How can I help you today?",
        "language",
        False,
    ),
    (
        "Translate into French: I would like a cup of coffee, please.",
        "Je voudrais une tasse de café, s'il vous plaît.",
        "language",
        False,
    ),
    (
        "A train travels 120 kilometres in 2 hours. What is its average speed?",
        "Average speed is distance divided by time: 120 / 2 = 60, so the train travels at 60 kilometres per hour.",
        "math",
        False,
    ),
    (
        "Write a Python function that returns the largest number in a list.",
        "Here is one way:\n```python\ndef largest(numbers):\n    return max(numbers)\n```\n"
        "It raises a ValueError for an empty list.",
        "coding",
        False,
    ),
    (
        "Briefly explain what a black hole is.",
        "A region where gravity is so strong that not even light escapes.",
        None,
        False,
    ),
    (
        "Explain in one word how the weather is in the picture.",
        "Sunny.",
        "perception",
        True,
    ),
    (
        "Describe the image.",
        "A brown dog is running across a green lawn with a red ball in its mouth.",
        "perception",
        True,
    ),
    ("What is written on the sign?", "Closed on Sundays", "document", True),
    ("How many apples are on the table?", "3", "perception", True),
    (
        "Describe this picture in detail.",
        "The picture shows a busy street market at dusk. Stalls with striped awnings line both sides of the road, "
        "selling fruit, vegetables and flowers, and strings of warm lights hang overhead while shoppers walk by.",
        "perception",
        True,
    ),
    (
        "Locate the cat in the image and output its bounding box in JSON.",
        '```json\n[{"bbox_2d": [34, 50, 210, 190], "label": "cat"}]\n```',
        "grounding",
        True,
    ),
    (
        "What does the chart show?",
        "The chart shows that the number of visitors rose every month from January to June.",
        "document",
        True,
    ),
    ("Tell me a joke.", "Why did the scarecrow win an award? Because he was outstanding in his field.", None, False),
    (
        "What do you think about that?",
        "I think it's a reasonable plan, although the budget seems tight for such a short schedule.",
        "language",
        False,
    ),
    ("法国的首都是哪里？", "法国的首都是巴黎。", None, False),
    ("讲个笑话。", "为什么数学书总是很忧郁？因为它有太多的问题。", None, False),
    ("法国的首都是哪里？", "巴黎。", None, False),
    ("水是湿的吗？", "是的。", None, False),
    (
        "请详细解释相对论。",
        "相对论是爱因斯坦提出的两套理论。狭义相对论认为，对所有匀速运动的观察者来说物理定律都相同，真空中的光速也相同，"
        "因此运动的时钟会变慢，运动的尺子会变短。广义相对论则把引力描述为质量和能量造成的时空弯曲，行星沿着弯曲时空中最直的路径运动。",
        "language",
        False,
    ),
    (
        "为什么天空是蓝色的？",
        "阳光穿过大气时会被空气分子散射，波长较短的蓝光比红光散射得多得多，所以我们从天空的各个方向都能看到蓝光。",
        None,
        False,
    ),
    (
        "给我一个简单的番茄炒蛋做法。",
        "先把鸡蛋打散炒熟盛出，再把番茄切块下锅炒出汁，加少许盐和糖，最后倒回鸡蛋翻炒均匀即可出锅。",
        None,
        False,
    ),
    ("写一首关于秋天的短诗。", "秋风轻轻吹，\n落叶满地飞。\n稻谷金灿灿，\n农家笑声回。", "language", False),
    ("你好，今天过得怎么样？", "我很好，谢谢关心！今天有什么可以帮你的吗？", "language", False),
    (
        "一列火车两小时行驶了120千米，它的平均速度是多少？",
        "平均速度等于路程除以时间：120 ÷ 2 = 60，所以火车的平均速度是每小时60千米。",
        "math",
        False,
    ),
    (
        "用Python写一个函数，返回列表中最大的数。",
        "可以这样写：\n```python\ndef largest(numbers):\n    return max(numbers)\n```\n列表为空时会抛出 ValueError。",
        "coding",
        False,
    ),
    ("用一句话简要解释什么是黑洞。", "黑洞是引力强到连光都无法逃脱的区域。", None, False),
    ("描述这张图片。", "一只棕色的小狗叼着红色的球在绿色的草坪上奔跑。", "perception", True),
    ("牌子上写着什么？", "周日休息", "document", True),
    ("桌子上有几个苹果？", "3", "perception", True),
    (
        "详细描述这张图片。",
        "图片里是黄昏时分热闹的街边集市。道路两旁是挂着条纹遮阳棚的摊位，卖着水果、蔬菜和鲜花，头顶挂着一串串暖黄色的灯，行人来来往往。",
        "perception",
        True,
    ),
    ("这张图表显示了什么？", "图表显示，从一月到六月，游客人数每个月都在增加。", "document", True),
]

RELATIVITY_EN = "Explain the theory of relativity in detail."
RELATIVITY_ZH = "请详细解释相对论。"
PHOTOSYNTHESIS_EN = (
    "Photosynthesis is the process by which green plants use sunlight to turn carbon dioxide and water into sugar "
    "and oxygen."
)
PHOTOSYNTHESIS_ZH = "光合作用是绿色植物利用阳光把二氧化碳和水转化为糖和氧气的过程。"

# (query, answer, domain or None, with an image, the reason it must get)
BAD: list[tuple[str, str, str | None, bool, str]] = [
    (RELATIVITY_EN, ".", None, False, "no_substance"),
    (RELATIVITY_EN, "...", "language", False, "no_substance"),
    ("Describe the image.", "?!", "perception", True, "no_substance"),
    (RELATIVITY_ZH, "。", None, False, "no_substance"),
    ("描述这张图片。", "……", "perception", True, "no_substance"),
    (RELATIVITY_EN, "It is physics.", None, False, "answer_too_short_for_question"),
    ("Explain step by step how to solve 2x + 3 = 7.", "x = 2", "math", False, "answer_too_short_for_question"),
    (RELATIVITY_ZH, "物理学。", None, False, "answer_too_short_for_question"),
    ("详细说明光合作用的过程。", "植物吸收阳光。", None, False, "answer_too_short_for_question"),
    ("What is the capital of France?", PHOTOSYNTHESIS_EN, None, False, "irrelevant_answer"),
    ("What is the capital of France?", PHOTOSYNTHESIS_EN, "language", False, "irrelevant_answer"),
    (
        "Give me a simple recipe for pancakes.",
        "The French Revolution began in 1789 and ended the absolute monarchy of Louis XVI.",
        None,
        False,
        "irrelevant_answer",
    ),
    (
        "A train travels 120 kilometres in 2 hours. What is its average speed?",
        "Golden leaves drift slowly down, painting paths in red and brown beneath the pale October moon.",
        "math",
        False,
        "irrelevant_answer",
    ),
    (
        "Locate every red square in the image and output the bounding boxes in JSON.",
        "The capital of France is Paris, a city on the Seine.",
        "grounding",
        True,
        "irrelevant_answer",
    ),
    (
        "Compute the value of the expression shown in the image.",
        "The French Revolution began in 1789 and ended the rule of the king.",
        "math",
        True,
        "irrelevant_answer",
    ),
    ("法国的首都是哪里？", PHOTOSYNTHESIS_ZH, None, False, "irrelevant_answer"),
    ("法国的首都是哪里？", PHOTOSYNTHESIS_ZH, "language", False, "irrelevant_answer"),
    (
        "给我一个简单的番茄炒蛋做法。",
        "法国大革命始于1789年，结束了路易十六的君主专制统治。",
        None,
        False,
        "irrelevant_answer",
    ),
]


def record(query: str, answer: str, domain: str | None, image: bool, rid: str) -> dict[str, Any]:
    """A contract record of one pair (a 640x480 image placeholder when ``image``)."""
    content: list[dict[str, Any]] = [{"type": "image", "text": None}] if image else []
    content.append({"type": "text", "text": query})
    meta: dict[str, Any] = {"image_sizes": [[640, 480]]} if image else {}
    if domain:
        meta["domain"] = domain
    return {
        "id": rid,
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "images": ["images/picture.png"] if image else [],
        "videos": [],
        "meta": meta,
    }
