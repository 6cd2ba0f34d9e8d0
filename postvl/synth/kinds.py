"""The clean task kinds: each makes one record (and writes its media) from a seeded ``random.Random``.

A kind is a function ``(task: Task) -> dict`` registered in ``KINDS`` with its taxonomy domain and subcategory. The
record is TRL's messages format plus ``answer`` / ``answer_type`` and ``meta`` (``synth_kind``,
``expected_domain``, ``expected_subcategory``, ``defect``, ``lang``, ``truth`` and, for images, ``image_sizes``).
``meta.truth`` holds what the media were drawn from (shapes with their boxes, chart values and geometry, table cells,
expressions, code tests), so that every gold answer can be checked against the pixels or by running it.

About one question in three is in Chinese (``lang``); image text stays Latin because Pillow's bundled font has
no CJK glyphs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from postvl.synth import render
from postvl.synth.render import COLORS, COLORS_ZH, SHAPES, SHAPES_ZH, SIDES, Shape

ZH_SHARE = 1 / 3
LETTERS = "ABCD"


@dataclass
class Task:
    """Everything one kind needs to make one record.

    Attributes:
        rid: the record id (media files are named after it).
        rng: the record's own random generator.
        lang: ``en`` or ``zh``.
        occurrence: how many records of this kind came before (cycles templates so that neighbours differ).
        out: the dataset folder; media go to ``images/`` and ``videos/`` under it.
        charts: the run's shared chart renderer, made on first use: ``task.charts().render(...)``.
    """

    rid: str
    rng: random.Random
    lang: str
    occurrence: int
    out: Path
    charts: render.LazyCharts = field(default_factory=render.LazyCharts)

    @property
    def zh(self) -> bool:
        return self.lang == "zh"

    def t(self, en: str, zh: str) -> str:
        return zh if self.zh else en

    def save_image(self, image: Any, suffix: str = "") -> str:
        rel = f"images/{self.rid}{suffix}.png"
        render.save_png(image, self.out / rel)
        return rel


@dataclass(frozen=True)
class Kind:
    """A registered kind: its maker and where it sits in the taxonomy."""

    make: Callable[[Task], dict[str, Any]]
    domain: str
    subcategory: str


KINDS: dict[str, Kind] = {}


def kind(name: str, domain: str, subcategory: str) -> Callable[[Callable[[Task], dict[str, Any]]], Any]:
    def register(fn: Callable[[Task], dict[str, Any]]) -> Callable[[Task], dict[str, Any]]:
        KINDS[name] = Kind(fn, domain, subcategory)
        return fn

    return register


# --------------------------------------------------------------------------------------------------------------------
# Record helpers


def user(*parts: str) -> dict[str, Any]:
    """A user turn; ``"<image>"`` / ``"<video>"`` stand for media parts, anything else is text."""
    content = []
    for p in parts:
        if p == "<image>":
            content.append({"type": "image"})
        elif p == "<video>":
            content.append({"type": "video"})
        else:
            content.append({"type": "text", "text": p})
    return {"role": "user", "content": content}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def make_record(
    task: Task,
    name: str,
    messages: list[dict[str, Any]],
    *,
    answer: str | None,
    answer_type: str | None,
    truth: dict[str, Any],
    images: Sequence[str] = (),
    image_sizes: Sequence[Sequence[int]] = (),
    videos: Sequence[str] = (),
    options: list[str] | None = None,
) -> dict[str, Any]:
    k = KINDS[name]
    meta: dict[str, Any] = {
        "synth_kind": name,
        "expected_domain": k.domain,
        "expected_subcategory": k.subcategory,
        "defect": None,
        "lang": task.lang,
    }
    if image_sizes:
        meta["image_sizes"] = [list(s) for s in image_sizes]
    if options is not None:
        meta["options"] = options
    meta["truth"] = truth
    return {
        "id": task.rid,
        "messages": messages,
        "images": list(images),
        "videos": list(videos),
        "answer": answer,
        "answer_type": answer_type,
        "meta": meta,
    }


def choice_block(options: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def _num_en(n: int) -> str:
    words = "zero one two three four five six seven eight nine ten".split()
    return words[n] if 0 <= n < len(words) else str(n)


def _plural(word: str, n: int) -> str:
    return word if n == 1 else word + "s"


def shape_name(task: Task, color: str, shape: str) -> str:
    return f"{COLORS_ZH[color]}{SHAPES_ZH[shape]}" if task.zh else f"{color} {shape}"


def grounding_json(items: list[tuple[str, list[int]]], key: str) -> str:
    """Qwen2.5-VL's grounding answer: a fenced JSON list of ``{key: coords, "label": ...}`` objects."""
    body = ",\n".join("\t" + json.dumps({key: coords, "label": label}, ensure_ascii=False) for label, coords in items)
    return f"```json\n[\n{body}\n]\n```"


# --------------------------------------------------------------------------------------------------------------------
# Shape scenes


def scene(
    task: Task, specs: list[tuple[str, str]], *, suffix: str = "", max_size: int = 56
) -> tuple[str, list[Shape], tuple[int, int]]:
    """Draw the shapes ``specs`` on a random-size canvas; returns the image path, the shapes and the size."""
    rng = task.rng
    width, height = rng.choice(SIDES), rng.choice(SIDES)
    placed = render.place_shapes(rng, width, height, specs, max_size=max_size)
    image, shapes = render.draw_shapes(width, height, placed)
    return task.save_image(image, suffix), shapes, (width, height)


def distractors(
    rng: random.Random,
    n: int,
    *,
    avoid: Collection[tuple[str, str]] = (),
    avoid_colors: Collection[str] = (),
) -> list[tuple[str, str]]:
    out = []
    while len(out) < n:
        spec = (rng.choice(SHAPES), rng.choice([c for c in COLORS if c not in avoid_colors]))
        if spec not in avoid:
            out.append(spec)
    return out


def shapes_truth(shapes: list[Shape]) -> list[dict[str, Any]]:
    return [s.as_dict() for s in shapes]


@kind("box_grounding", "grounding", "box_grounding")
def box_grounding(task: Task) -> dict[str, Any]:
    rng = task.rng
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    every = task.occurrence % 3 == 2  # every third: all shapes of a kind, one box each
    if every:
        n = rng.randint(2, 3)
        colors = rng.sample(list(COLORS), n)
        targets = [(shape, c) for c in colors]
        others = distractors(rng, rng.randint(1, 3), avoid={(s, c) for s in SHAPES for c in COLORS if s == shape})
    else:
        targets = [(shape, color)]
        others = distractors(rng, rng.randint(2, 4), avoid_colors={color})
    specs = targets + others
    rng.shuffle(specs)
    path, shapes, size = scene(task, specs)
    hits = [s for s in shapes if (s.kind, s.color) in set(targets)]
    if every:
        what = task.t(f"every {shape}", f"所有{SHAPES_ZH[shape]}")
    else:
        what = task.t(f"the {color} {shape}", shape_name(task, color, shape))
    q = task.t(
        f"Locate {what} in the image and output the bbox coordinates in JSON format.",
        f"请定位图中的{what}，并以JSON格式输出其bbox坐标。",
    )
    text = grounding_json([(shape_name(task, s.color, s.kind), list(s.box)) for s in hits], "bbox_2d")
    gold = [list(s.box) for s in hits]
    return make_record(
        task,
        "box_grounding",
        [user("<image>", q), assistant(text)],
        answer=json.dumps(gold[0] if len(gold) == 1 else gold),
        answer_type="bbox",
        images=[path],
        image_sizes=[size],
        truth={"shapes": shapes_truth(shapes), "targets": [s.as_dict() for s in hits]},
    )


@kind("point_grounding", "grounding", "point_grounding")
def point_grounding(task: Task) -> dict[str, Any]:
    rng = task.rng
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    specs = [(shape, color), *distractors(rng, rng.randint(2, 4), avoid_colors={color})]
    rng.shuffle(specs)
    path, shapes, size = scene(task, specs)
    target = next(s for s in shapes if (s.kind, s.color) == (shape, color))
    name = shape_name(task, color, shape)
    q = task.t(
        f"Point to the {color} {shape} in the image and output its coordinates as a point_2d in JSON format.",
        f"请指出图中的{name}，并以JSON格式输出其point_2d坐标。",
    )
    text = grounding_json([(name, list(target.point))], "point_2d")
    return make_record(
        task,
        "point_grounding",
        [user("<image>", q), assistant(text)],
        # A point answer is right when it falls inside the shape's box (postvl.rejection_sampling.verify).
        answer=json.dumps(list(target.box)),
        answer_type="point",
        images=[path],
        image_sizes=[size],
        truth={"shapes": shapes_truth(shapes), "targets": [target.as_dict()]},
    )


@kind("counting", "grounding", "counting")
def counting(task: Task) -> dict[str, Any]:
    rng = task.rng
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    n = rng.randint(1, 7)
    specs = [(shape, color)] * n + distractors(rng, rng.randint(1, 3), avoid_colors={color})
    rng.shuffle(specs)
    path, shapes, size = scene(task, specs, max_size=40)
    q = task.t(f"How many {color} {shape}s are there in the image?", f"图中有几个{shape_name(task, color, shape)}？")
    a = task.t(
        f"There {'is' if n == 1 else 'are'} {_num_en(n)} {color} {_plural(shape, n)} in the image.",
        f"图中共有{n}个{shape_name(task, color, shape)}。",
    )
    return make_record(
        task,
        "counting",
        [user("<image>", q), assistant(a)],
        answer=str(n),
        answer_type="count",
        images=[path],
        image_sizes=[size],
        truth={"shapes": shapes_truth(shapes), "target": {"shape": shape, "color": color}},
    )


@kind("yesno", "perception", "general_vqa")
def yesno(task: Task) -> dict[str, Any]:
    rng = task.rng
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    present = task.occurrence % 2 == 0
    others = distractors(rng, rng.randint(2, 4), avoid={(shape, color)})
    specs = [(shape, color), *others] if present else others
    rng.shuffle(specs)
    path, shapes, size = scene(task, specs)
    name = shape_name(task, color, shape)
    q = task.t(f"Is there a {color} {shape} in the image?", f"图中有{name}吗？")
    if present:
        a = task.t(f"Yes, there is a {color} {shape} in the image.", f"是的，图中有一个{name}。")
    else:
        a = task.t(f"No, there is no {color} {shape} in the image.", f"没有，图中没有{name}。")
    return make_record(
        task,
        "yesno",
        [user("<image>", q), assistant(a)],
        answer="yes" if present else "no",
        answer_type="yesno",
        images=[path],
        image_sizes=[size],
        truth={"shapes": shapes_truth(shapes), "target": {"shape": shape, "color": color}},
    )


# Kinds left out of the default mix (drawn only when ``kinds`` names them).
OPT_IN = {"color_name"}


@kind("color_name", "perception", "general_vqa")
def color_name(task: Task) -> dict[str, Any]:
    """One large shape; its colour as a word (text). English only: the colour word is the gold.

    The easiest perception question of the set: a shape of 64-192 px on a 224-336 px canvas covers several of the
    image's tokens, so a model far too small for the other kinds can learn it, the larger shapes first. Not in the
    default mix; the demo draws it (``configs/pipeline/demo.yaml``).
    """
    rng = task.rng
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    width, height = rng.choice(SIDES), rng.choice(SIDES)
    placed = render.place_shapes(rng, width, height, [(shape, color)], min_size=64, max_size=192)
    image, shapes = render.draw_shapes(width, height, placed)
    path = task.save_image(image)
    record = make_record(
        task,
        "color_name",
        [user("<image>", f"What colour is the {shape} in the image?"), assistant(f"The {shape} is {color}.")],
        answer=color,
        answer_type="text",
        images=[path],
        image_sizes=[(width, height)],
        truth={"shapes": shapes_truth(shapes), "target": {"shape": shape, "color": color}},
    )
    record["meta"]["lang"] = "en"
    return record


def _where(task: Task, s: Shape, size: tuple[int, int]) -> str:
    cx, cy = (s.box[0] + s.box[2]) / 2 / size[0], (s.box[1] + s.box[3]) / 2 / size[1]
    col = 0 if cx < 1 / 3 else (1 if cx < 2 / 3 else 2)
    row = 0 if cy < 1 / 3 else (1 if cy < 2 / 3 else 2)
    if task.zh:
        return ["左上方", "上方", "右上方", "左侧", "中间", "右侧", "左下方", "下方", "右下方"][row * 3 + col]
    return [
        "in the top left",
        "at the top",
        "in the top right",
        "on the left",
        "in the centre",
        "on the right",
        "in the bottom left",
        "at the bottom",
        "in the bottom right",
    ][row * 3 + col]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _by_place(task: Task, items: list[Shape], size: tuple[int, int]) -> list[tuple[str, list[str]]]:
    """Colours of ``items`` grouped by where they are, places in order of first mention (each place named once)."""
    places: dict[str, list[str]] = {}
    for s in items:
        places.setdefault(_where(task, s, size), []).append(s.color)
    return list(places.items())


def caption_text(task: Task, shapes: list[Shape], size: tuple[int, int]) -> str:
    """A two-sentence description: the shapes grouped by kind with colour and place, then the largest and smallest.

    Grouping names each kind once: the repetition rules measure Chinese text character by character, and a list
    that repeats "...色正方形" per item reads as a loop to them.
    """

    def area(s: Shape) -> int:
        return (s.box[2] - s.box[0]) * (s.box[3] - s.box[1])

    largest, smallest = max(shapes, key=area), min(shapes, key=area)
    groups: dict[str, list[Shape]] = {}
    for s in shapes:
        groups.setdefault(s.kind, []).append(s)
    if task.zh:
        counts_zh = "零一两三四五六七八九"
        parts = []
        for kind_, items in groups.items():
            if len(items) == 1:
                parts.append(f"一个{COLORS_ZH[items[0].color]}的{SHAPES_ZH[kind_]}，在{_where(task, items[0], size)}")
            else:
                places = _by_place(task, items, size)
                where = "，".join(f"{'和'.join(COLORS_ZH[c] for c in colors)}在{place}" for place, colors in places)
                parts.append(f"{counts_zh[len(items)]}个{SHAPES_ZH[kind_]}（{where}）")
        return (
            f"这张图片的白色背景上有{len(shapes)}个图形：{'；'.join(parts)}。"
            f"其中最大的是{shape_name(task, largest.color, largest.kind)}，"
            f"最小的是{shape_name(task, smallest.color, smallest.kind)}。"
        )
    parts = []
    for kind_, items in groups.items():
        if len(items) == 1:
            parts.append(f"{_a(items[0].color)} {kind_} {_where(task, items[0], size)}")
        else:
            ones = [
                " and ".join(_a(c) for c in colors) + (" one " if len(colors) == 1 else " one each ") + place
                for place, colors in _by_place(task, items, size)
            ]
            listed_ones = ones[0] if len(ones) == 1 else f"{', '.join(ones[:-1])} and {ones[-1]}"
            parts.append(f"{_num_en(len(items))} {kind_}s ({listed_ones})")
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" and {parts[-1]}"
    return (
        f"The image shows {_num_en(len(shapes))} flat shapes on a plain white background: {listed}. "
        f"The largest one is the {largest.color} {largest.kind}, while the smallest one is the "
        f"{smallest.color} {smallest.kind}."
    )


@kind("captioning", "perception", "captioning")
def captioning(task: Task) -> dict[str, Any]:
    rng = task.rng
    specs = rng.sample([(k, c) for k in SHAPES for c in COLORS], rng.randint(3, 5))  # distinct, so each is named once
    path, shapes, size = scene(task, specs)
    q = task.t(
        rng.choice(["Describe the image.", "What does this image show?", "Describe this picture in detail."]),
        rng.choice(["描述这张图片。", "这张图片里有什么？", "请详细描述这张图。"]),
    )
    return make_record(
        task,
        "captioning",
        [user("<image>", q), assistant(caption_text(task, shapes, size))],
        answer=None,
        answer_type=None,
        images=[path],
        image_sizes=[size],
        truth={"shapes": shapes_truth(shapes)},
    )


@kind("multi_image", "perception", "multi_image")
def multi_image(task: Task) -> dict[str, Any]:
    rng = task.rng
    k1, k2 = rng.sample(range(1, 7), 2)
    paths, sizes, all_shapes = [], [], []
    for i, k in enumerate((k1, k2)):
        specs = [("circle", rng.choice(list(COLORS))) for _ in range(k)]
        specs += [(rng.choice(("square", "triangle")), rng.choice(list(COLORS))) for _ in range(rng.randint(0, 2))]
        rng.shuffle(specs)
        path, shapes, size = scene(task, specs, suffix=f"-{i}", max_size=40)
        paths.append(path)
        sizes.append(size)
        all_shapes.append(shapes_truth(shapes))
    more_first = k1 > k2
    if task.occurrence % 2 == 0:
        options = [task.t("the first image", "第一张图"), task.t("the second image", "第二张图")]
        q = task.t("Which image has more circles?", "哪张图中的圆形更多？") + "\n" + choice_block(options)
        letter = "A" if more_first else "B"
        a = task.t(
            f"The first image has {_num_en(k1)} {_plural('circle', k1)} and the second has {_num_en(k2)}, "
            f"so the answer is {letter}.",
            f"第一张图有{k1}个圆形，第二张图有{k2}个，所以答案是{letter}。",
        )
        answer, answer_type = letter, "choice"
    else:
        options = None
        q = task.t("Does the first image have more circles than the second one?", "第一张图中的圆形比第二张多吗？")
        yes = task.t("Yes", "是的") if more_first else task.t("No", "不是")
        a = task.t(
            f"{yes}. The first image has {_num_en(k1)} {_plural('circle', k1)} and the second has {_num_en(k2)}.",
            f"{yes}。第一张图有{k1}个圆形，第二张图有{k2}个。",
        )
        answer, answer_type = ("yes" if more_first else "no"), "yesno"
    return make_record(
        task,
        "multi_image",
        [user("<image>", "<image>", q), assistant(a)],
        answer=answer,
        answer_type=answer_type,
        images=paths,
        image_sizes=sizes,
        options=options,
        truth={"circles": [k1, k2], "shapes": all_shapes},
    )


@kind("multi_turn", "perception", "general_vqa")
def multi_turn(task: Task) -> dict[str, Any]:
    rng = task.rng
    specs = distractors(rng, rng.randint(3, 6))
    path, shapes, size = scene(task, specs, max_size=44)
    n = len(shapes)
    messages = [
        user("<image>", task.t("How many shapes are there in this image?", "这张图里有几个图形？")),
        assistant(task.t(f"There are {_num_en(n)} shapes.", f"一共有{n}个图形。")),
    ]
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    present = any((s.kind, s.color) == (shape, color) for s in shapes)
    name = shape_name(task, color, shape)
    messages.append(user(task.t(f"Is one of them a {color} {shape}?", f"其中有{name}吗？")))
    messages.append(
        assistant(
            task.t(f"Yes, one of them is a {color} {shape}.", f"有，其中一个是{name}。")
            if present
            else task.t(f"No, none of them is a {color} {shape}.", f"没有，其中没有{name}。")
        )
    )
    answer, answer_type, answers = ("yes" if present else "no"), "yesno", [str(n), "yes" if present else "no"]
    if task.occurrence % 2 == 0:
        color2 = rng.choice(list(COLORS))
        k = sum(s.color == color2 for s in shapes)
        messages.append(user(task.t(f"How many of the shapes are {color2}?", f"其中有几个是{COLORS_ZH[color2]}的？")))
        messages.append(
            assistant(
                task.t(
                    f"{_num_en(k).capitalize()} of them {'is' if k == 1 else 'are'} {color2}.",
                    f"有{k}个是{COLORS_ZH[color2]}的。",
                )
            )
        )
        answer, answer_type = str(k), "count"
        answers.append(answer)
    return make_record(
        task,
        "multi_turn",
        messages,
        answer=answer,
        answer_type=answer_type,
        images=[path],
        image_sizes=[size],
        truth={"shapes": shapes_truth(shapes), "turn_answers": answers},
    )


# --------------------------------------------------------------------------------------------------------------------
# Charts, tables, OCR

CHART_TOPICS = [
    ("Sales by region", ["North", "South", "East", "West", "Centre", "Coast"]),
    ("Fruit sold", ["Apple", "Pear", "Plum", "Fig", "Kiwi", "Lime"]),
    ("Visitors", ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]),
    ("Rainfall (mm)", ["Jan", "Feb", "Mar", "Apr", "May", "Jun"]),
    ("Books read", ["Ann", "Ben", "Cleo", "Dev", "Eli", "Faye"]),
    ("Energy use", ["Q1", "Q2", "Q3", "Q4", "Q5", "Q6"]),
]


def _chart(task: Task, chart: str) -> tuple[str, list[str], list[int], dict[str, Any], tuple[int, int]]:
    rng = task.rng
    title, pool = CHART_TOPICS[(task.occurrence + rng.randrange(len(CHART_TOPICS))) % len(CHART_TOPICS)]
    n = rng.randint(4, 6)
    labels = pool[:n]
    values = rng.sample(range(3, 96), n)  # distinct, so "which is highest" has one answer
    width, height = rng.choice((280, 308, 336)), rng.choice((224, 252))
    color = rng.choice(["blue", "green", "orange", "purple", "red"])
    image, geometry = task.charts().render(chart, labels, values, width=width, height=height, color=color, title=title)
    path = task.save_image(image)
    truth = {"chart": chart, "title": title, "labels": labels, "values": values, "color": color, **geometry.as_dict()}
    return path, labels, values, truth, (width, height)


def _chart_value(task: Task, chart: str, name: str) -> dict[str, Any]:
    path, labels, values, truth, size = _chart(task, chart)
    i = task.rng.randrange(len(labels))
    what = task.t("bar chart", "柱状图") if chart == "bar" else task.t("line chart", "折线图")
    q = task.t(f"What is the value for {labels[i]} in the {what}?", f"{what}中{labels[i]}对应的数值是多少？")
    a = task.t(f"The value for {labels[i]} is {values[i]}.", f"{labels[i]}对应的数值是{values[i]}。")
    return make_record(
        task,
        name,
        [user("<image>", q), assistant(a)],
        answer=str(values[i]),
        answer_type="number",
        images=[path],
        image_sizes=[size],
        truth=truth | {"asked": i},
    )


@kind("chart_bar_value", "document", "chart_understanding")
def chart_bar_value(task: Task) -> dict[str, Any]:
    return _chart_value(task, "bar", "chart_bar_value")


@kind("chart_line_value", "document", "chart_understanding")
def chart_line_value(task: Task) -> dict[str, Any]:
    return _chart_value(task, "line", "chart_line_value")


@kind("chart_highest", "document", "chart_understanding")
def chart_highest(task: Task) -> dict[str, Any]:
    rng = task.rng
    chart = "bar" if task.occurrence % 2 == 0 else "line"
    path, labels, values, truth, size = _chart(task, chart)
    best = max(range(len(labels)), key=lambda j: values[j])
    others = rng.sample([j for j in range(len(labels)) if j != best], 3)
    picks = [best, *others]
    rng.shuffle(picks)
    options = [labels[j] for j in picks]
    letter = LETTERS[picks.index(best)]
    q = task.t("Which category has the highest value in the chart?", "图表中哪个类别的数值最高？")
    a = task.t(
        f"{labels[best]} has the highest value ({values[best]}), so the answer is {letter}.",
        f"{labels[best]}的数值最高（{values[best]}），所以答案是{letter}。",
    )
    return make_record(
        task,
        "chart_highest",
        [user("<image>", q + "\n" + choice_block(options)), assistant(a)],
        answer=letter,
        answer_type="choice",
        images=[path],
        image_sizes=[size],
        options=options,
        truth=truth,
    )


TABLE_TOPICS = [
    ("Fruit", ["Apple", "Banana", "Cherry", "Mango", "Grape", "Lemon", "Peach"], ["Price", "Stock", "Sold"]),
    ("City", ["Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Seoul", "Rome"], ["Rain", "Sun", "Wind"]),
    ("Team", ["Lions", "Hawks", "Bears", "Wolves", "Sharks", "Eagles"], ["Wins", "Losses", "Points"]),
    ("Student", ["Alice", "Bruno", "Chen", "Dina", "Emre", "Fatima"], ["Math", "Art", "Music"]),
    ("Product", ["Lamp", "Desk", "Chair", "Shelf", "Sofa", "Rug"], ["Units", "Returns", "Stars"]),
]


def _table(task: Task) -> tuple[str, list[str], list[list[str]], tuple[int, int]]:
    rng = task.rng
    key, pool, columns = TABLE_TOPICS[(task.occurrence + rng.randrange(len(TABLE_TOPICS))) % len(TABLE_TOPICS)]
    names = rng.sample(pool, rng.randint(3, 5))
    cols = columns[: rng.randint(2, 3)]
    header = [key, *cols]
    rows = [[name, *(str(rng.randint(1, 99)) for _ in cols)] for name in names]
    image = render.draw_table(header, rows)
    return task.save_image(image), header, rows, image.size


@kind("table_lookup", "document", "table_understanding")
def table_lookup(task: Task) -> dict[str, Any]:
    path, header, rows, size = _table(task)
    r, c = task.rng.randrange(len(rows)), task.rng.randrange(1, len(header))
    row, col, value = rows[r][0], header[c], rows[r][c]
    q = task.t(f"According to the table, what is the {col} value of {row}?", f"根据表格，{row}的{col}是多少？")
    a = task.t(f"The {col} value of {row} is {value}.", f"{row}的{col}是{value}。")
    return make_record(
        task,
        "table_lookup",
        [user("<image>", q), assistant(a)],
        answer=value,
        answer_type="number",
        images=[path],
        image_sizes=[size],
        truth={"header": header, "rows": rows, "cell": [r, c]},
    )


def table_html(header: list[str], rows: list[list[str]]) -> str:
    lines = ["<table>", "  <tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"]
    lines += ["  <tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in rows]
    lines.append("</table>")
    return "\n".join(lines)


@kind("table_parse", "document", "document_parsing")
def table_parse(task: Task) -> dict[str, Any]:
    path, header, rows, size = _table(task)
    q = task.t("Convert the table in the image to HTML.", "将图中的表格转换为HTML。")
    html = table_html(header, rows)
    return make_record(
        task,
        "table_parse",
        [user("<image>", q), assistant(f"```html\n{html}\n```")],
        answer=html,
        answer_type=None,
        images=[path],
        image_sizes=[size],
        truth={"header": header, "rows": rows},
    )


OCR_WORDS = (
    "open late tonight fresh coffee exit only north gate platform seven welcome home no parking sale today "
    "bakery room service quiet please library hours fire door push pull city museum spring market garden path "
    "river view bus stop main street ticket office lost and found wet paint keep left staff only hello world "
    "sunrise cafe book club night train west wing green tea blue moon happy birthday"
).split()


@kind("ocr_text", "document", "scene_text_ocr")
def ocr_text(task: Task) -> dict[str, Any]:
    rng = task.rng
    words = [rng.choice(OCR_WORDS) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.3:
        words.append(str(rng.randint(2, 999)))
    text = " ".join(words)
    text = text.upper() if rng.random() < 0.4 else text.capitalize()
    size = rng.randint(22, 34)
    tw, th = render.text_size(text, size)
    width = max(224, render.round_up(tw + 24))
    height = rng.choice((112, 140, 168))
    xy = (rng.randint(4, width - tw - 4), rng.randint(4, height - th - 4))
    color = rng.choice([(20, 20, 20), (10, 40, 120), (120, 20, 20), (255, 255, 255)])
    background = (
        (40, 60, 80) if color == (255, 255, 255) else rng.choice([(250, 245, 225), (235, 240, 250), (255,) * 3])
    )
    image = render.draw_text(text, width, height, size=size, xy=xy, color=color, background=background)
    path = task.save_image(image)
    q = task.t(
        rng.choice(["What text is written in the image?", "Read the text in the image.", "What does the sign say?"]),
        rng.choice(["图中写的是什么文字？", "请识别图中的文字。", "这块牌子上写着什么？"]),
    )
    return make_record(
        task,
        "ocr_text",
        [user("<image>", q), assistant(text)],
        answer=text,
        answer_type="text",
        images=[path],
        image_sizes=[(width, height)],
        truth={
            "text": text,
            "font_size": size,
            "xy": list(xy),
            "color": list(color),
            "background": list(background),
            "size": [width, height],
        },
    )


# --------------------------------------------------------------------------------------------------------------------
# Math


def latex_gold(value: Fraction) -> str:
    """``42`` for an integer, ``\\frac{3}{4}`` (or ``-\\frac{3}{4}``) otherwise."""
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def evaluate(expression: str) -> Fraction:
    """Exact value of an arithmetic expression of integers, ``+ - * /`` and parentheses (no ``eval``)."""
    import ast

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            ops = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}
            if isinstance(node.op, ast.Div):
                return a / b
            if type(node.op) in ops:
                return ops[type(node.op)]
        raise ValueError(f"unsupported expression {expression!r}")

    return ev(ast.parse(expression, mode="eval"))


NAMES = ["Tom", "Anna", "Ravi", "Mei", "Lucas", "Sofia", "Omar", "Yuki", "Elena", "Kofi", "Ines", "Noah"]
NAMES_ZH = ["小明", "小红", "小华", "李雷", "韩梅梅", "王芳", "张伟", "刘洋", "陈静", "赵磊"]
ITEMS = [
    ("apple", "苹果"),
    ("pencil", "铅笔"),
    ("sticker", "贴纸"),
    ("marble", "弹珠"),
    ("cookie", "饼干"),
    ("card", "卡片"),
    ("stamp", "邮票"),
    ("balloon", "气球"),
]


def _math_problem(task: Task) -> tuple[str, str, str]:
    """(question, worked solution without the final line, expression) for one word-problem template."""
    rng = task.rng
    name, name_zh = rng.choice(NAMES), rng.choice(NAMES_ZH)
    item, item_zh = rng.choice(ITEMS)
    template = (task.occurrence + rng.randrange(8)) % 8
    if template == 0:
        a, b, c = rng.randint(2, 20), rng.randint(2, 9), rng.randint(2, 12)
        expr = f"{a} + {b} * {c}"
        return (
            task.t(
                f"{name} has {a} {item}s and buys {b} boxes with {c} {item}s in each box. How many {item}s does "
                f"{name} have now?",
                f"{name_zh}有{a}个{item_zh}，又买了{b}盒，每盒{c}个。{name_zh}现在一共有多少个{item_zh}？",
            ),
            task.t(
                f"The boxes hold {b} × {c} = {b * c} {item}s. Together with the {a} {item}s {name} already had, "
                f"that makes {a} + {b * c} = {a + b * c}.",
                f"{b}盒共有{b}×{c}={b * c}个，再加上原来的{a}个，一共是{a}+{b * c}={a + b * c}个。",
            ),
            expr,
        )
    if template == 1:
        k, each = rng.randint(2, 9), rng.randint(2, 15)
        expr = f"{k * each} / {k}"
        return (
            task.t(
                f"{name} shares {k * each} {item}s equally among {k} friends. How many {item}s does each friend get?",
                f"{name_zh}把{k * each}个{item_zh}平均分给{k}个朋友，每个朋友分到几个？",
            ),
            task.t(f"Each friend gets {k * each} ÷ {k} = {each} {item}s.", f"每人分到{k * each}÷{k}={each}个。"),
            expr,
        )
    if template == 2:
        d = rng.choice([4, 5, 6, 8, 10, 12])
        x = rng.choice([v for v in range(1, d) if Fraction(d - v, d).denominator != 1])
        thing, thing_zh = rng.choice([("pizza", "披萨"), ("cake", "蛋糕"), ("pie", "馅饼")])
        expr = f"({d} - {x}) / {d}"
        left = Fraction(d - x, d)
        return (
            task.t(
                f"A {thing} is cut into {d} equal slices and {name} eats {x} of them. What fraction of the {thing} "
                f"is left?",
                f"一个{thing_zh}被平均切成{d}块，{name_zh}吃了{x}块。还剩下几分之几？",
            ),
            task.t(
                f"{d} - {x} = {d - x} of the {d} slices are left, which is {d - x}/{d}"
                + (f" = {left}" if left.denominator != d else "")
                + f" of the {thing}.",
                f"还剩{d}-{x}={d - x}块，占{d - x}/{d}" + (f"={left}" if left.denominator != d else "") + "。",
            ),
            expr,
        )
    if template == 3:
        v, t = rng.randint(30, 120), rng.randint(2, 6)
        vehicle, vehicle_zh = rng.choice([("train", "火车"), ("bus", "汽车"), ("boat", "轮船")])
        expr = f"{v} * {t}"
        return (
            task.t(
                f"A {vehicle} travels at {v} kilometres per hour for {t} hours. How far does it travel in kilometres?",
                f"一辆{vehicle_zh}以每小时{v}千米的速度行驶了{t}小时，一共行驶了多少千米？",
            ),
            task.t(
                f"Distance is speed times time: {v} × {t} = {v * t} kilometres.",
                f"路程=速度×时间={v}×{t}={v * t}千米。",
            ),
            expr,
        )
    if template == 4:
        k, p = rng.randint(2, 6), rng.randint(2, 9)
        bill = rng.choice([b for b in (20, 50, 100) if b > k * p])
        expr = f"{bill} - {k} * {p}"
        return (
            task.t(
                f"{name} buys {k} {item}s at {p} dollars each and pays with a {bill}-dollar note. How much change "
                f"does {name} get?",
                f"{name_zh}买了{k}个{item_zh}，每个{p}元，付了{bill}元，应找回多少元？",
            ),
            task.t(
                f"The {item}s cost {k} × {p} = {k * p} dollars, so the change is {bill} - {k * p} = {bill - k * p} "
                f"dollars.",
                f"共花了{k}×{p}={k * p}元，应找回{bill}-{k * p}={bill - k * p}元。",
            ),
            expr,
        )
    if template == 5:
        w, h = rng.randint(3, 25), rng.randint(3, 25)
        expr = f"2 * ({w} + {h})"
        return (
            task.t(
                f"A rectangular garden is {w} metres wide and {h} metres long. What is its perimeter in metres?",
                f"一个长方形花园宽{w}米，长{h}米，它的周长是多少米？",
            ),
            task.t(
                f"The perimeter is 2 × ({w} + {h}) = 2 × {w + h} = {2 * (w + h)} metres.",
                f"周长=2×({w}+{h})=2×{w + h}={2 * (w + h)}米。",
            ),
            expr,
        )
    if template == 6:
        a, b, c = rng.randint(5, 14), rng.randint(2, 9), rng.randint(2, 10)
        expr = f"{a} + {b} + {c}"
        return (
            task.t(
                f"{name} is {a} years old, and {name}'s cousin is {b} years older. How old will the cousin be in "
                f"{c} years?",
                f"{name_zh}今年{a}岁，表哥比{name_zh}大{b}岁。{c}年后表哥多少岁？",
            ),
            task.t(
                f"The cousin is {a} + {b} = {a + b} now, so in {c} years the cousin will be {a + b} + {c} = "
                f"{a + b + c}.",
                f"表哥现在{a}+{b}={a + b}岁，{c}年后是{a + b}+{c}={a + b + c}岁。",
            ),
            expr,
        )
    q_ = rng.choice([3, 4, 5, 6])
    p_ = rng.randint(1, q_ - 1)
    pages = q_ * rng.randint(8, 40)
    expr = f"{pages} - {pages} * {p_} / {q_}"
    read = pages * p_ // q_
    return (
        task.t(
            f"A book has {pages} pages and {name} has read {p_}/{q_} of it. How many pages are still unread?",
            f"一本书有{pages}页，{name_zh}已经读了{p_}/{q_}。还有多少页没有读？",
        ),
        task.t(
            f"{name} has read {pages} × {p_}/{q_} = {read} pages, so {pages} - {read} = {pages - read} pages are "
            f"unread.",
            f"已读{pages}×{p_}/{q_}={read}页，还剩{pages}-{read}={pages - read}页。",
        ),
        expr,
    )


@kind("text_math", "math", "text_math")
def text_math(task: Task) -> dict[str, Any]:
    question, solution, expr = _math_problem(task)
    gold = latex_gold(evaluate(expr))
    final = task.t(f"The answer is $\\boxed{{{gold}}}$.", f"答案是$\\boxed{{{gold}}}$。")
    return make_record(
        task,
        "text_math",
        [user(question), assistant(f"{solution}\n{final}")],
        answer=gold,
        answer_type="math",
        truth={"expression": expr},
    )


@kind("image_math", "math", "multimodal_math")
def image_math(task: Task) -> dict[str, Any]:
    rng = task.rng
    a, b, c = rng.randint(2, 30), rng.randint(2, 12), rng.randint(2, 12)
    form = (task.occurrence + rng.randrange(4)) % 4
    expr = [f"{a} + {b} * {c}", f"({a} + {b}) * {c}", f"{a} * {b} - {c}", f"({a} - {b}) / {c}"][form]
    value = evaluate(expr)
    shown = expr + " = ?"
    size = 30
    tw, th = render.text_size(shown, size)
    width, height = max(224, render.round_up(tw + 32)), 112
    image = render.draw_text(
        shown,
        width,
        height,
        size=size,
        xy=((width - tw) // 2, (height - th) // 2),
        color=(20, 20, 20),
        background=(255, 255, 255),
    )
    path = task.save_image(image)
    gold = latex_gold(value)
    q = task.t("Compute the value of the expression in the image.", "计算图中算式的值。")
    a_text = task.t(
        f"The image shows {expr}. Following the order of operations, it equals {gold}.\nThe answer is "
        f"$\\boxed{{{gold}}}$.",
        f"图中的算式是{expr}，按运算顺序计算，结果是{gold}。\n答案是$\\boxed{{{gold}}}$。",
    )
    return make_record(
        task,
        "image_math",
        [user("<image>", q), assistant(a_text)],
        answer=gold,
        answer_type="math",
        images=[path],
        image_sizes=[(width, height)],
        truth={"expression": expr, "text": shown, "font_size": size},
    )


# --------------------------------------------------------------------------------------------------------------------
# Code


@dataclass(frozen=True)
class CodeSpec:
    """A small function: what it should do (en: imperative; zh), correct and buggy code, tests [[args], expected]."""

    name: str
    en: str
    zh: str
    code: str
    bug: str
    tests: list[list[Any]]


def code_spec(index: int, rng: random.Random) -> CodeSpec:
    """The ``index``-th function family (cycled), with parameters drawn from ``rng``."""
    k = rng.randint(3, 9)
    family = index % 10
    if family == 0:
        code = f"def sum_multiples_of_{k}(n):\n    return sum(i for i in range(n) if i % {k} == 0)\n"
        return CodeSpec(
            f"sum_multiples_of_{k}",
            f"return the sum of all non-negative multiples of {k} that are smaller than n",
            f"返回所有小于n的{k}的非负倍数之和",
            code,
            code.replace("range(n)", "range(1, n - 1)"),
            [[[k * 4], sum(range(0, k * 4, k))], [[k * 4 + 1], sum(range(0, k * 4 + 1, k))], [[0], 0]],
        )
    if family == 1:
        ch, arg = rng.choice("aeiou"), rng.choice(["text", "s", "word", "phrase"])
        name = rng.choice([f"count_{ch}", f"{ch}_count", f"occurrences_of_{ch}"])
        code = f"def {name}({arg}):\n    return sum(1 for c in {arg}.lower() if c == {ch!r})\n"
        words = ["banana", "Education", "queue", "rhythm", "onomatopoeia"]
        return CodeSpec(
            name,
            f"count how many times the letter {ch!r} occurs in a string, ignoring case",
            f"统计字符串中字母{ch!r}出现的次数（不区分大小写）",
            code,
            code.replace(f"{arg}.lower()", arg),
            [[[w], w.lower().count(ch)] for w in words] + [[[ch.upper() * 2], 2]],
        )
    if family == 2:
        lo, hi = rng.randint(-10, 0), rng.randint(5, 20)
        code = (
            f"def clamp(x):\n    if x < {lo}:\n        return {lo}\n    if x > {hi}:\n        return {hi}\n"
            "    return x\n"
        )
        return CodeSpec(
            "clamp",
            f"clamp a number x to the range [{lo}, {hi}]",
            f"把数字x限制在区间[{lo}, {hi}]内",
            code,
            code.replace(f"    if x > {hi}:\n        return {hi}\n", f"    if x > {hi}:\n        return x\n"),
            [[[lo - 5], lo], [[hi + 3], hi], [[lo + 1], lo + 1]],
        )
    if family == 3:
        p = rng.randint(2, 4)
        code = f"def power_sum_{p}(n):\n    return sum(i ** {p} for i in range(1, n + 1))\n"
        return CodeSpec(
            f"power_sum_{p}",
            f"return 1**{p} + 2**{p} + ... + n**{p}",
            f"返回1**{p} + 2**{p} + ... + n**{p}的值",
            code,
            code.replace("range(1, n + 1)", "range(1, n)"),
            [[[n], sum(i**p for i in range(1, n + 1))] for n in (1, 3, 5)],
        )
    if family == 4:
        name, arg = rng.choice(["is_palindrome", "reads_same_backwards", "palindrome_check"]), rng.choice("sp")
        code = (
            f"def {name}({arg}):\n    t = ''.join(c.lower() for c in {arg} if c.isalnum())\n    return t == t[::-1]\n"
        )
        return CodeSpec(
            name,
            "check whether a string is a palindrome, ignoring case, spaces and punctuation",
            "判断一个字符串是否为回文（忽略大小写、空格和标点）",
            code,
            code.replace(f"c.lower() for c in {arg} if c.isalnum()", f"c for c in {arg}"),
            [
                [["Never odd or even"], True],
                [["abc"], False],
                [["Was it a car?"], False],
                [["No lemon, no melon"], True],
            ],
        )
    if family == 5:
        rank = rng.randint(2, 4)
        word, word_zh = ["second", "third", "fourth"][rank - 2], "二三四"[rank - 2]
        code = f"def {word}_largest(xs):\n    values = sorted(set(xs))\n    return values[-{rank}]\n"
        cases = [[9, 9, 7, 5, 5, 3, 1], [k, 2 * k, 3 * k, 4 * k, 4 * k], [10, 20, 20, 30, 40, 40, 50]]
        return CodeSpec(
            f"{word}_largest",
            f"return the {word} largest distinct value of a list with at least {rank} distinct values",
            f"返回列表中第{word_zh}大的不同数值（列表中至少有{rank}个不同的值）",
            code,
            code.replace("sorted(set(xs))", "sorted(xs)"),
            [[[c], sorted(set(c))[-rank]] for c in cases],
        )
    if family == 6:
        start = rng.randint(0, 9)
        name = "running_total" if start == 0 else f"running_total_from_{start}"
        code = (
            f"def {name}(xs):\n    out, total = [], {start}\n    for x in xs:\n        total += x\n"
            "        out.append(total)\n    return out\n"
        )
        return CodeSpec(
            name,
            f"return the running totals of a list of numbers, starting from {start} (the i-th output is {start} plus "
            "the sum of the first i + 1 inputs)",
            f"返回一个数字列表从{start}开始的累计和列表（第i个输出等于{start}加上前i + 1个输入之和）",
            code,
            code.replace(
                "        total += x\n        out.append(total)\n", "        out.append(total)\n        total += x\n"
            ),
            [[[[1, 2, 3]], [start + 1, start + 3, start + 6]], [[[k, -k]], [start + k, start]], [[[]], []]],
        )
    if family == 7:
        code = f"def chunk_{k}(xs):\n    return [xs[i:i + {k}] for i in range(0, len(xs), {k})]\n"
        return CodeSpec(
            f"chunk_{k}",
            f"split a list into consecutive chunks of {k} items (the last chunk may be shorter)",
            f"把列表按每{k}个元素切成连续的小块（最后一块可以更短）",
            code,
            code.replace(f"range(0, len(xs), {k})", f"range(0, len(xs) - {k}, {k})"),
            [[[list(range(2 * k + 1))], [list(range(k)), list(range(k, 2 * k)), [2 * k]]], [[[]], []]],
        )
    if family == 8:
        least = rng.randint(1, 4)
        code = (
            f"def word_lengths_min_{least}(sentence):\n"
            f"    return {{w: len(w) for w in sentence.split() if len(w) >= {least}}}\n"
        )
        text = "a be the over quick  brown fox"  # a word of every length 1-5
        return CodeSpec(
            f"word_lengths_min_{least}",
            f"map every word of a sentence (split on whitespace) with at least {least} letters to its length",
            f"返回一个字典，把句子中（按空白分割）长度不少于{least}的每个单词映射到它的长度",
            code,
            code.replace(f">= {least}", f"> {least}"),
            [[[text], {w: len(w) for w in text.split() if len(w) >= least}], [["  "], {}]],
        )
    d = rng.randint(2, 5)
    base = d + 5
    code = (
        f"def digits_sum_base_{base}(n):\n    total = 0\n    while n > 0:\n        total += n % {base}\n"
        f"        n //= {base}\n    return total\n"
    )

    def digit_sum(n: int) -> int:
        total = 0
        while n > 0:
            total, n = total + n % base, n // base
        return total

    return CodeSpec(
        f"digits_sum_base_{base}",
        f"return the sum of the digits of a non-negative integer n written in base {base}",
        f"返回非负整数n在{base}进制下各位数字之和",
        code,
        code.replace(f"n //= {base}", f"n = n // {base} - 1 if n > {base} else n // {base}"),
        [[[n], digit_sum(n)] for n in (0, base - 1, base * base + 3, 999)],
    )


def fenced(code: str) -> str:
    return f"```python\n{code}```"


@kind("code_generation", "coding", "code_generation")
def code_generation(task: Task) -> dict[str, Any]:
    spec = code_spec(task.occurrence, task.rng)
    q = task.t(
        f"Write a Python function `{spec.name}` to {spec.en}.",
        f"请用Python编写一个函数`{spec.name}`，功能是：{spec.zh}。",
    )
    a = task.t(f"Here is the function:\n\n{fenced(spec.code)}", f"函数如下：\n\n{fenced(spec.code)}")
    return make_record(
        task,
        "code_generation",
        [user(q), assistant(a)],
        answer=fenced(spec.code),
        answer_type=None,
        truth={"function": spec.name, "tests": spec.tests},
    )


@kind("code_debugging", "coding", "code_debugging")
def code_debugging(task: Task) -> dict[str, Any]:
    spec = code_spec(task.occurrence + 5, task.rng)  # offset so that debugging and generation differ nearby
    q = task.t(
        f"The function `{spec.name}` should {spec.en}, but it has a bug. Find and fix it.\n\n{fenced(spec.bug)}",
        f"函数`{spec.name}`的功能应该是：{spec.zh}，但它有一个bug。请找出并修复它。\n\n{fenced(spec.bug)}",
    )
    a = task.t(f"The corrected function:\n\n{fenced(spec.code)}", f"修复后的函数：\n\n{fenced(spec.code)}")
    return make_record(
        task,
        "code_debugging",
        [user(q), assistant(a)],
        answer=fenced(spec.code),
        answer_type=None,
        truth={"function": spec.name, "tests": spec.tests, "buggy_code": spec.bug},
    )


# --------------------------------------------------------------------------------------------------------------------
# Video

DIRECTIONS_ZH = {"left": "左", "right": "右", "up": "上", "down": "下"}


@kind("video_direction", "video", "video_qa")
def video_direction(task: Task) -> dict[str, Any]:
    rng = task.rng
    order = list(render.DIRECTIONS)
    direction = order[task.occurrence % 4]
    colors = list(COLORS)
    color = colors[(task.occurrence // 4 + task.occurrence) % len(colors)]
    offset = rng.randint(4, render.VIDEO_SIZE - render.VIDEO_SQUARE - 4)
    track = render.square_track(direction, offset)
    rel = f"videos/{task.rid}.mp4"
    render.write_video(task.out / rel, track, color)
    options = [DIRECTIONS_ZH[d] if task.zh else d for d in order]
    letter = LETTERS[order.index(direction)]
    name = task.t(f"{color} square", f"{COLORS_ZH[color]}方块")
    q = task.t(
        rng.choice(
            [
                f"Which direction does the {name} move in the video?",
                f"Watch the clip. Where is the {name} heading?",
                f"In which direction is the {name} travelling over time?",
            ]
        ),
        rng.choice(
            [
                f"视频中的{name}朝哪个方向移动？",
                f"观看视频，{name}在往哪边走？",
                f"随着时间推移，{name}向哪个方向运动？",
            ]
        ),
    )
    start, end = track[0], track[-1]
    a = task.t(
        rng.choice(
            [
                f"The {name} starts at ({start[0]}, {start[1]}) and ends at ({end[0]}, {end[1]}) after "
                f"{render.VIDEO_FRAMES} frames, so it moves {direction}. The answer is {letter}.",
                f"Across the {render.VIDEO_FRAMES} frames the {name} slides steadily {direction}, from "
                f"({start[0]}, {start[1]}) to ({end[0]}, {end[1]}). So the correct option is {letter}.",
                f"Frame by frame its position changes from ({start[0]}, {start[1]}) towards ({end[0]}, {end[1]}): "
                f"the motion is {direction}ward. Answer: {letter}.",
            ]
        ),
        f"{name}从({start[0]}, {start[1]})出发，{render.VIDEO_FRAMES}帧后到达({end[0]}, {end[1]})，"
        f"所以它向{DIRECTIONS_ZH[direction]}移动。答案是{letter}。",
    )
    return make_record(
        task,
        "video_direction",
        [user("<video>", q + "\n" + choice_block(options)), assistant(a)],
        answer=letter,
        answer_type="choice",
        videos=[rel],
        options=options,
        truth={"direction": direction, "color": color, "track": [list(p) for p in track], "fps": render.VIDEO_FPS},
    )
