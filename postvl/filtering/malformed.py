"""Malformed structured answers: grounding JSON, document HTML, code that does not parse."""

from __future__ import annotations

import ast
import json
import re
import warnings
from collections.abc import Mapping
from html.parser import HTMLParser
from typing import Any

from postvl.filtering.base import FENCE_WITH_LANG_RE, Filter, Sample

IMAGE_SIZES_KEY = "image_sizes"
"""``meta`` key with the size of each image, ``[[width, height], ...]`` in the order of ``images``, in the same
pixel frame as the answer's coordinates (for Qwen2.5-VL: the resized model input, absolute pixels).

``postvl build`` does not write this key: it rescales grounding coordinates into the resized image and records each
image under ``meta["media"]["images"]`` with ``resized_width`` / ``resized_height``. ``GroundingFilter`` reads those
first (they are the frame the built answer's coordinates are in) and falls back to ``meta[size_key]`` for records
that did not come through the builder (raw data, ``postvl synth``, hand-made records)."""

_JSON_FENCE_RE = re.compile(r"```[ \t]*json[^\n]*\n(.*?)```", re.S | re.I)
_GROUNDING_KEYS = ("bbox_2d", "point_2d")
_DECODER = json.JSONDecoder()


class GroundingFilter(Filter):
    """Rejects grounding JSON (Qwen2.5-VL's ``bbox_2d`` / ``point_2d``) that does not parse or falls off the image.

    The JSON is taken from ```` ```json ```` blocks when there are any, else it is the first JSON value starting at
    the first ``[`` or ``{`` of the answer. It must be an object or a list of objects; an object's ``bbox_2d`` must
    be four numbers ``[x1, y1, x2, y2]`` with ``x1 < x2`` and ``y1 < y2``, its ``point_2d`` two numbers ``[x, y]``.
    Coordinates must lie inside the image, ``0 <= x <= width``, ``0 <= y <= height`` (plus ``slack`` pixels), with
    the size read from ``meta["media"]["images"]`` (the resized sizes ``postvl build`` records) or else from
    ``meta[size_key]`` (``[[width, height], ...]``, see ``IMAGE_SIZES_KEY``; with several images the largest width and
    height bound the box). Without a size the bounds are not checked unless ``require_size``.

    Args:
        size_key: ``meta`` key holding ``[[width, height], ...]``.
        require: reject an answer with no ``bbox_2d`` / ``point_2d`` at all (for box / point grounding tasks).
        require_size: reject when the image size is missing instead of skipping the bounds check.
        slack: pixels a coordinate may lie outside the image (rounding after a resize).

    Reasons: ``missing_grounding``, ``malformed_grounding_json``, ``invalid_bbox``, ``missing_image_size``,
    ``bbox_out_of_image``.
    """

    name = "grounding"

    def __init__(
        self, size_key: str = IMAGE_SIZES_KEY, require: bool = False, require_size: bool = False, slack: float = 0.0
    ) -> None:
        if slack < 0:
            raise ValueError(f"grounding: slack must be >= 0, got {slack}")
        self.size_key = size_key
        self.require = require
        self.require_size = require_size
        self.slack = slack

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        sample = Sample.of(record)
        text = sample.answer
        if "_2d" not in text or not any(key in text for key in _GROUNDING_KEYS):
            return "missing_grounding" if self.require else None
        objects = _parse_grounding(text)
        if objects is None:
            return "malformed_grounding_json"
        coords = []
        for obj in objects:
            box, point = obj.get("bbox_2d"), obj.get("point_2d")
            if box is not None:
                if not _numbers(box, 4):
                    return "malformed_grounding_json"
                if not (box[0] < box[2] and box[1] < box[3]):
                    return "invalid_bbox"
                coords.append(box)
            if point is not None:
                if not _numbers(point, 2):
                    return "malformed_grounding_json"
                coords.append(point)
        if not coords:
            return "missing_grounding" if self.require else None
        meta = sample.meta
        size = _built_image_bound(meta.get("media")) or _image_bound(meta.get(self.size_key))
        if size is None:
            return "missing_image_size" if self.require_size else None
        width, height = size[0] + self.slack, size[1] + self.slack
        low = -self.slack
        for c in coords:
            xs, ys = c[0::2], c[1::2]
            if min(xs) < low or min(ys) < low or max(xs) > width or max(ys) > height:
                return "bbox_out_of_image"
        return None


def _parse_grounding(text: str) -> list[dict[str, Any]] | None:
    """The objects of the answer's grounding JSON, or ``None`` when it does not parse into objects."""
    values = []
    try:
        blocks = _JSON_FENCE_RE.findall(text)
        if blocks:
            values = [json.loads(block) for block in blocks]
        else:
            starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
            if not starts:
                return None
            # The first JSON value; prose after it ("... These are the two cats.") is allowed.
            values = [_DECODER.raw_decode(text, min(starts))[0]]
    except ValueError:
        return None
    objects: list[dict[str, Any]] = []
    for value in values:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, dict) for item in items):
            return None
        objects.extend(items)
    return objects


def _numbers(value: Any, n: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == n
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    )


def _image_bound(sizes: Any) -> tuple[float, float] | None:
    """Largest width and height over ``[[w, h], ...]``; ``None`` when absent or not of that shape."""
    if not isinstance(sizes, list | tuple) or not sizes:
        return None
    if not all(_is_size(s) for s in sizes):
        return None
    return max(s[0] for s in sizes), max(s[1] for s in sizes)


def _built_image_bound(media: Any) -> tuple[float, float] | None:
    """Largest resized width and height of the images ``postvl build`` probed (``meta["media"]["images"]``)."""
    if not isinstance(media, dict):
        return None
    images = media.get("images")
    if not isinstance(images, list) or not images or not all(isinstance(m, dict) for m in images):
        return None
    return _image_bound([[m.get("resized_width"), m.get("resized_height")] for m in images])


def _is_size(s: Any) -> bool:
    return isinstance(s, list | tuple) and len(s) == 2 and all(isinstance(v, int | float) and v > 0 for v in s)


_VOID_TAGS = frozenset("area base br col embed hr img input link meta param source track wbr".split())
_HTML_FENCE_RE = re.compile(r"```[ \t]*html[^\n]*\n(.*?)```", re.S | re.I)
_TAG_RE = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*[\s/>]")


class _TagBalance(HTMLParser):
    """Tracks open elements; ``error`` is set by an end tag that does not close the innermost open element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.stack: list[str] = []
        self.error = False

    def reset(self) -> None:
        super().reset()
        self.stack = []
        self.error = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _VOID_TAGS:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID_TAGS:
            return
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()
        else:
            self.error = True


class HtmlFilter(Filter):
    """Rejects document HTML (Qwen2.5-VL's QwenVL HTML for document parsing) whose tags do not balance.

    The HTML is taken from ```` ```html ```` blocks when there are any, else the whole answer. Every element
    except the void ones (``br``, ``img``, ...) must be closed, in order; HTML's optional end tags (``</p>``,
    ``</li>``) are required too, as generated document HTML always writes them. Parsed with the standard library's
    ``html.parser``; plain markup (tags with double-quoted attributes and text, as generated HTML is written) is
    read with one regex instead, which finds the same tags in a fraction of the time.

    Args:
        require: reject an answer with no HTML tag at all (for document parsing tasks).

    Reasons: ``missing_html``, ``malformed_html``.
    """

    name = "html"

    def __init__(self, require: bool = False) -> None:
        self.require = require
        self._parser = _TagBalance()

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        text = Sample.of(record).answer
        blocks = _HTML_FENCE_RE.findall(text) if "```" in text else [text]
        html = "\n".join(blocks)
        if not _TAG_RE.search(html):
            return "missing_html" if self.require else None
        tags = _simple_tags(html)
        if tags is not None:
            return "malformed_html" if _unbalanced(tags) else None
        parser = self._parser
        parser.reset()
        parser.feed(html)
        parser.close()
        if parser.error or parser.stack:
            return "malformed_html"
        return None


# Plain markup, as generated document HTML is written: start tags with double-quoted attributes (self-closing or
# not) and end tags, nothing else that starts with "<". Whitespace is the set that ends a tag name in
# ``html.parser`` (which reads any other character, "\v" or a no-break space, as part of the name).
_WS = "[ \t\n\r\f]"
_SIMPLE_TAG_RE = re.compile(
    f"<(?:/([a-zA-Z][a-zA-Z0-9]*){_WS}*"
    f'|([a-zA-Z][a-zA-Z0-9]*)(?:{_WS}+[a-zA-Z_:][-.:a-zA-Z0-9_]*(?:="[^"<>]*")?)*{_WS}*(/?))>'
)
# Elements whose content ``html.parser`` reads as text (script, style), and those that later versions or other
# parsers read as raw or escapable text: their content is not plain markup.
_TEXT_ELEMENTS = frozenset("script style textarea title xmp iframe noembed noframes noscript plaintext".split())


def _simple_tags(html: str) -> list[tuple[str, str, str]] | None:
    """The tags of plain markup, which ``html.parser`` reads as exactly these start and end tags.

    Returns:
        The tags in order as ``(end name, start name, "/" if self-closing)``, or ``None`` when the text holds
        anything that takes the parser's general rules: another use of "<" (a comment, a declaration, "a < b", a tag
        of another shape), a character reference that starts "&#" (a malformed one makes the parser take the rest
        of the text for data), or an element whose content is text.
    """
    if "&#" in html:
        return None
    tags = _SIMPLE_TAG_RE.findall(html)
    if len(tags) != html.count("<"):
        return None
    if any((end or start).lower() in _TEXT_ELEMENTS for end, start, _ in tags):
        return None
    return tags


def _unbalanced(tags: list[tuple[str, str, str]]) -> bool:
    """What ``_TagBalance`` decides for these tags (``_simple_tags``).

    Unbalanced: an end tag that does not close the innermost open element, or elements left open. A self-closing
    tag is a start tag and its end tag (or a void element), so it changes nothing.
    """
    stack: list[str] = []
    for end, start, self_closing in tags:
        if start:
            if not self_closing and (tag := start.lower()) not in _VOID_TAGS:
                stack.append(tag)
        elif (tag := end.lower()) not in _VOID_TAGS:
            if not stack or stack[-1] != tag:
                return True
            stack.pop()
    return bool(stack)


_PYTHON_TAGS = frozenset({"python", "py", "python3"})
_JSON_TAGS = frozenset({"json"})
_MAGIC_LINE_RE = re.compile(r"^[ \t]*[%!].*$", re.M)


class CodeSyntaxFilter(Filter):
    """Rejects fenced code that does not parse, for languages with a parser in the standard library.

    Only fenced blocks with a language tag are checked: ``python`` / ``py`` / ``python3`` with ``ast.parse``
    (IPython ``%magic`` and ``!shell`` lines are dropped first; interactive ``>>>`` sessions are skipped) and
    ``json`` with ``json.loads``. Blocks in other languages, untagged blocks and unfenced code are not checked.

    Args:
        languages: which of ``python`` and ``json`` to check.

    Reasons: ``python_syntax_error``, ``json_syntax_error``.
    """

    name = "code_syntax"

    def __init__(self, languages: tuple[str, ...] | list[str] = ("python", "json")) -> None:
        unknown = sorted(set(languages) - {"python", "json"})
        if unknown:
            raise ValueError(f"code_syntax: languages must be among ['json', 'python'], got {unknown}")
        self.languages = tuple(languages)
        self._python = "python" in self.languages
        self._json = "json" in self.languages

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        text = Sample.of(record).answer
        if "```" not in text and "~~~" not in text:
            return None
        for _, lang, body in FENCE_WITH_LANG_RE.findall(text):
            lang = lang.lower()
            if self._python and lang in _PYTHON_TAGS:
                if ">>>" in body:
                    continue
                if not _python_parses(_MAGIC_LINE_RE.sub("", body)):
                    return "python_syntax_error"
            elif self._json and lang in _JSON_TAGS:
                try:
                    json.loads(body)
                except ValueError:
                    return "json_syntax_error"
        return None


def _python_parses(source: str) -> bool:
    with warnings.catch_warnings():
        # Invalid escape sequences warn at compile time; a warning is not a syntax error.
        warnings.simplefilter("ignore")
        try:
            ast.parse(source)
        except (SyntaxError, ValueError, RecursionError):
            return False
    return True
