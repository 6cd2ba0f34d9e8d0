"""Pixels for the synthetic tasks: shape scenes, text, tables, charts and a moving-square video.

Every drawing is a pure function of its arguments (no antialiasing on shapes, fixed fonts, fixed chart geometry), so
the same arguments give the same bytes, and the ground truth (boxes, points, counts, chart values) is read off the
drawing itself rather than computed beside it. Image sides are multiples of 28 so that Qwen2.5-VL's ``smart_resize``
keeps them unchanged and absolute coordinates mean the same in the file and in the model input.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Pure colours drawn without antialiasing: a pixel belongs to a shape exactly when it has the shape's colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "yellow": (230, 190, 20),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
COLORS_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色"}
SHAPES = ("circle", "square", "triangle")
SHAPES_ZH = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
BACKGROUND = (255, 255, 255)
SIDES = (224, 252, 280, 308, 336)  # multiples of 28 between 224 and 448

# Chart geometry: the axes rectangle as figure fractions (left, bottom, width, height); fixed so that a value's pixel
# position follows from the image size alone (``ChartTruth.pixel``).
CHART_AXES = (0.13, 0.14, 0.83, 0.76)


@dataclass(frozen=True)
class Shape:
    """One drawn shape: kind, colour name and its exact pixel box ``[x1, y1, x2, y2]`` (x2, y2 exclusive)."""

    kind: str
    color: str
    box: tuple[int, int, int, int]
    point: tuple[int, int]

    def as_dict(self) -> dict[str, Any]:
        return {"shape": self.kind, "color": self.color, "bbox_2d": list(self.box), "point_2d": list(self.point)}


@functools.lru_cache(maxsize=16)
def font(size: int) -> Any:
    """PIL's bundled default font at ``size`` pixels (FreeType, shipped with Pillow; no system fonts)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def save_png(image: Any, path: Path) -> None:
    """Write a PNG with no metadata chunks, so equal pixels give equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False, compress_level=6)


# --------------------------------------------------------------------------------------------------------------------
# Shapes


def _outline(kind: str, x: int, y: int, s: int) -> tuple[str, Any]:
    if kind == "circle":
        return "ellipse", [x, y, x + s - 1, y + s - 1]
    if kind == "square":
        return "rectangle", [x, y, x + s - 1, y + s - 1]
    return "polygon", [(x + (s - 1) / 2, y), (x, y + s - 1), (x + s - 1, y + s - 1)]


def place_shapes(
    rng: random.Random,
    width: int,
    height: int,
    specs: list[tuple[str, str]],
    *,
    min_size: int = 26,
    max_size: int = 60,
) -> list[tuple[str, str, int, int, int]]:
    """Non-overlapping positions (6 px apart) for ``specs`` = [(kind, colour), ...]; returns (kind, colour, x, y, s).

    Raises:
        ValueError: when the shapes do not fit after many tries (too many for the canvas).
    """
    placed: list[tuple[str, str, int, int, int]] = []
    gap = 6
    for kind, color in specs:
        for _ in range(400):
            s = rng.randint(min_size, max_size)
            x = rng.randint(4, width - s - 4)
            y = rng.randint(4, height - s - 4)
            if all(
                x + s + gap <= px or px + ps + gap <= x or y + s + gap <= py or py + ps + gap <= y
                for *_, px, py, ps in placed
            ):
                placed.append((kind, color, x, y, s))
                break
        else:
            raise ValueError(f"cannot place {len(specs)} shapes on a {width}x{height} canvas")
    return placed


def draw_shapes(width: int, height: int, placed: list[tuple[str, str, int, int, int]]) -> tuple[Any, list[Shape]]:
    """Draw shapes without antialiasing; each shape's box and point are measured on its own mask."""
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), BACKGROUND)
    labels = Image.new("L", (width, height), 0)
    draw, label_draw = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    for i, (kind, color, x, y, s) in enumerate(placed, start=1):
        method, xy = _outline(kind, x, y, s)
        getattr(draw, method)(xy, fill=COLORS[color])
        getattr(label_draw, method)(xy, fill=i)
    label_array = np.asarray(labels)
    shapes = []
    for i, (kind, color, *_rest) in enumerate(placed, start=1):
        ys, xs = np.nonzero(label_array == i)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        # The centroid of a convex shape lies inside it; snap to the nearest pixel of the shape to be sure.
        cx, cy = float(xs.mean()), float(ys.mean())
        nearest = int(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2))
        shapes.append(Shape(kind, color, box, (int(xs[nearest]), int(ys[nearest]))))
    return image, shapes


# --------------------------------------------------------------------------------------------------------------------
# Text and tables


def draw_text(
    text: str,
    width: int,
    height: int,
    *,
    size: int,
    xy: tuple[int, int],
    color: tuple[int, int, int],
    background: tuple[int, int, int],
) -> Any:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), background)
    ImageDraw.Draw(image).text(xy, text, font=font(size), fill=color)
    return image


def text_size(text: str, size: int) -> tuple[int, int]:
    """Width and height of ``text`` drawn at (0, 0) in the default font (its ink box's right and bottom edges)."""
    left, top, right, bottom = font(size).getbbox(text)
    return int(right), int(bottom)


def round_up(value: int, multiple: int = 28) -> int:
    return -(-value // multiple) * multiple


def draw_table(header: list[str], rows: list[list[str]], *, size: int = 14, pad: int = 6) -> Any:
    """A ruled table (header row shaded) on a canvas whose sides are multiples of 28."""
    from PIL import Image, ImageDraw

    cells = [header, *rows]
    widths = [max(text_size(r[c], size)[0] for r in cells) + 2 * pad for c in range(len(header))]
    row_h = size + 2 * pad
    table_w, table_h = sum(widths), row_h * len(cells)
    width, height = max(224, round_up(table_w + 16)), max(112, round_up(table_h + 16))
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    x0, y0 = (width - table_w) // 2, (height - table_h) // 2
    draw.rectangle([x0, y0, x0 + table_w, y0 + row_h], fill=(225, 230, 240))
    y = y0
    for r, row in enumerate(cells):
        x = x0
        for c, cell in enumerate(row):
            draw.text((x + pad, y + pad), cell, font=font(size), fill=(20, 20, 20))
            x += widths[c]
        y += row_h
        if r < len(cells) - 1:
            draw.line([x0, y, x0 + table_w, y], fill=(90, 90, 90))
    draw.rectangle([x0, y0, x0 + table_w, y0 + table_h], outline=(40, 40, 40))
    x = x0
    for w in widths[:-1]:
        x += w
        draw.line([x, y0, x, y0 + table_h], fill=(90, 90, 90))
    return image


# --------------------------------------------------------------------------------------------------------------------
# Charts


@dataclass(frozen=True)
class ChartTruth:
    """Where a chart's data lies in its image: the plot area in pixels and the axis limits."""

    width: int
    height: int
    xlim: tuple[float, float]
    ylim: tuple[float, float]

    @property
    def plot_area(self) -> tuple[float, float, float, float]:
        """``(x1, y1, x2, y2)`` of the axes in image pixels (y down)."""
        left, bottom, w, h = CHART_AXES
        return (left * self.width, (1 - bottom - h) * self.height, (left + w) * self.width, (1 - bottom) * self.height)

    def pixel(self, x: float, y: float) -> tuple[float, float]:
        """Image pixel of the data point ``(x, y)``."""
        x1, y1, x2, y2 = self.plot_area
        px = x1 + (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * (x2 - x1)
        py = y2 - (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * (y2 - y1)
        return px, py

    def as_dict(self) -> dict[str, Any]:
        return {"plot_area": [round(v, 2) for v in self.plot_area], "xlim": list(self.xlim), "ylim": list(self.ylim)}


class ChartRenderer:
    """Bar and line charts with matplotlib's Agg backend, reusing one figure (creating figures is the slow part)."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        # A bare Figure on an Agg canvas: no pyplot, so no global backend switch and no figure manager.
        self._figure = Figure(dpi=100)
        FigureCanvasAgg(self._figure)

    def render(
        self, kind: str, labels: list[str], values: list[int], *, width: int, height: int, color: str, title: str
    ) -> tuple[Any, ChartTruth]:
        """Draw a ``bar`` or ``line`` chart with value labels; returns the image and where its data lies."""
        import numpy as np
        from PIL import Image

        fig = self._figure
        fig.clear()
        fig.set_size_inches(width / 100, height / 100)
        ax = fig.add_axes(CHART_AXES)
        n = len(labels)
        xlim = (-0.6, n - 0.4)
        top = float(max(values)) * 1.25
        ylim = (0.0, float(int(-(-top // 10) * 10)))
        rgb = tuple(c / 255 for c in COLORS[color])
        xs = list(range(n))
        if kind == "bar":
            ax.bar(xs, values, width=0.6, color=rgb)
        else:
            ax.plot(xs, values, color=rgb, marker="o", markersize=4, linewidth=1.5)
        for x, v in zip(xs, values, strict=True):
            ax.annotate(str(v), (x, v), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_xticks(xs, labels, fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(title, fontsize=8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        fig.canvas.draw()
        pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
        if pixels.shape[:2] != (height, width):
            raise RuntimeError(f"chart rendered at {pixels.shape[1]}x{pixels.shape[0]}, expected {width}x{height}")
        return Image.fromarray(np.ascontiguousarray(pixels)), ChartTruth(width, height, xlim, ylim)


class LazyCharts:
    """One ``ChartRenderer`` shared by every task of a run, made on first use (importing matplotlib takes a while)."""

    def __init__(self) -> None:
        self._renderer: ChartRenderer | None = None

    def __call__(self) -> ChartRenderer:
        if self._renderer is None:
            self._renderer = ChartRenderer()
        return self._renderer


# --------------------------------------------------------------------------------------------------------------------
# Video

VIDEO_SIZE = 112
VIDEO_FRAMES = 16
VIDEO_FPS = 8.0
VIDEO_STEP = 4  # pixels per frame
VIDEO_SQUARE = 20
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def square_track(direction: str, offset: int) -> list[tuple[int, int]]:
    """Top-left corners of the square in each frame; ``offset`` shifts the path sideways."""
    dx, dy = DIRECTIONS[direction]
    travel = VIDEO_STEP * (VIDEO_FRAMES - 1)
    lo = (VIDEO_SIZE - VIDEO_SQUARE - travel) // 2
    start = lo if (dx > 0 or dy > 0) else lo + travel
    track = []
    for f in range(VIDEO_FRAMES):
        along = start + (dx + dy) * VIDEO_STEP * f
        track.append((along, offset) if dx else (offset, along))
    return track


def write_video(path: Path, track: list[tuple[int, int]], color: str) -> None:
    """An mp4 (OpenCV, ``mp4v``) of a square following ``track`` on white.

    Raises:
        ImportError: OpenCV is missing.
        RuntimeError: OpenCV could not open a writer for the mp4v codec.
    """
    try:
        import cv2
    except ImportError as err:
        raise ImportError(
            "writing synthetic videos needs OpenCV: pip install opencv-python-headless (or pass --no-videos)"
        ) from err
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, (VIDEO_SIZE, VIDEO_SIZE))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with the mp4v codec")
    bgr = COLORS[color][::-1]
    try:
        for x, y in track:
            frame = np.full((VIDEO_SIZE, VIDEO_SIZE, 3), 255, np.uint8)
            frame[y : y + VIDEO_SQUARE, x : x + VIDEO_SQUARE] = bgr
            writer.write(frame)
    finally:
        writer.release()
