"""Answer verification: does a sampled output commit to the ground-truth answer?

``verify(output, gold, answer_type)`` returns a ``Verdict`` (``correct``, ``extracted``, ``reason``). One rule holds
for every answer type: the final answer is the LAST one the output commits to. A commitment is a ``\\boxed{...}`` or an
answer marker ("Answer:", "the answer is", "final answer", "the correct option is", "答案：", "答案是", "故选"); the
later of the last box and the last marker wins, so "Answer: A ... wait, actually the answer is C" gives C. With no
commitment at all, a type falls back to the free text (its last match, with stricter patterns).

Per answer type (``records.ANSWER_TYPES``):

- ``math``: Math-Verify parses gold and output (LaTeX and plain expressions, boxed answers first) and compares them
  symbolically and numerically.
- ``choice``: a letter ("Answer: B", "(B)", "答案：C", "The correct option is b", "**B.** text") or, when ``options``
  are given, an option's text; the gold may be a letter or, with ``options``, an option's text.
- ``number``: thousands separators, scientific notation (``1.5e-3``, ``1.5 \\times 10^{-3}``), ``a/b`` fractions and
  percentages, compared within ``VerifyConfig.rel_tol`` / ``abs_tol``. Percent rule: a value written with a percent
  sign stands for both readings, ``x`` and ``x / 100``; a value without one stands for itself. So "50%" matches a
  gold of 0.5 or 50, and "0.5" or "50" match a gold of "50%", but "0.5" never matches a gold of 50.
- ``count``: digits or number words in English ("seven", "twenty-one") and Chinese ("七", "十二", "二十一", "两");
  exact integer match.
- ``bbox``: the predicted boxes (Qwen JSON ``[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]``, fenced or not, or
  a bare ``[x1, y1, x2, y2]``) of the last answer block against the gold boxes: as many boxes as gold boxes, each
  gold box matched one-to-one with IoU >= ``VerifyConfig.iou_threshold``. Gold and prediction must be in one
  convention, the model family's (absolute resized pixels for Qwen2.5-VL, 0..1000 for Qwen2-VL / Qwen3-VL): ``postvl
  build`` writes golds so, and ``postvl.families.to_family_box`` converts boxes in source-image pixels.
- ``point``: the predicted ``point_2d`` (or a bare ``[x, y]``) lies inside the gold box (edges included).
- ``text``: normalised equality (Unicode NFKC for full-width characters, case, punctuation, English articles,
  whitespace); the gold may be a list of accepted answers.
- ``yesno``: the first yes/no word of the committed answer (yes/no/true/false, 是/否/对/不对/不是/正确/错误).

A bad gold (a box that is not four numbers, a yes/no gold that is neither) raises ``ValueError``: that is a data
error, not a wrong sample. A model output never raises; it gets a verdict with a reason.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from postvl.records import ANSWER_TYPES

logger = logging.getLogger(__name__)

MATH_TARGETS = ("latex", "expr")

# Reason codes of a verdict that is not correct.
NO_FINAL_ANSWER = "no_final_answer"
MISMATCH = "mismatch"
WRONG_BOX_COUNT = "wrong_box_count"


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one output.

    Attributes:
        correct: whether the output's final answer matches the gold.
        extracted: the final answer found in the output, as text, or ``None`` when there is none.
        reason: ``None`` when correct, else a snake_case code (``no_final_answer``, ``mismatch``, ``wrong_box_count``).
    """

    correct: bool
    extracted: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class VerifyConfig:
    """Tolerances and Math-Verify settings shared by all answer types.

    Attributes:
        rel_tol: relative tolerance for ``number`` answers (``math.isclose``).
        abs_tol: absolute tolerance for ``number`` answers.
        percent_as_fraction: read "x%" as both ``x`` and ``x / 100`` (see the module docstring); off: only ``x``.
        iou_threshold: the IoU a predicted box needs with its gold box.
        math_float_rounding: decimal places Math-Verify rounds numbers to before comparing.
        math_strict: Math-Verify's strict mode (variables must match, ``f(x)`` is not ``f(y)``).
        math_allow_set_relation_comp: let a gold relation (``1 <= x <= 2``) match a set (``[1, 2]``).
        math_targets: what Math-Verify extracts: ``latex`` and/or ``expr`` (plain expressions and numbers).
        math_timeout_seconds: per-call parsing and comparison timeout in Math-Verify; it uses ``SIGALRM``, which
            works only in the main thread: set ``None`` (no timeout) to verify from worker threads.
    """

    rel_tol: float = 1e-3
    abs_tol: float = 0.0
    percent_as_fraction: bool = True
    iou_threshold: float = 0.5
    math_float_rounding: int = 6
    math_strict: bool = True
    math_allow_set_relation_comp: bool = False
    math_targets: tuple[str, ...] = MATH_TARGETS
    math_timeout_seconds: int | None = 5

    def __post_init__(self) -> None:
        errors = []
        if self.rel_tol < 0 or self.abs_tol < 0:
            errors.append(f"rel_tol and abs_tol must be >= 0, got {self.rel_tol} and {self.abs_tol}")
        if not 0 < self.iou_threshold <= 1:
            errors.append(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if self.math_float_rounding < 0:
            errors.append(f"math_float_rounding must be >= 0, got {self.math_float_rounding}")
        unknown = [t for t in self.math_targets if t not in MATH_TARGETS]
        if unknown or not self.math_targets:
            errors.append(f"math_targets must be a non-empty subset of {MATH_TARGETS}, got {self.math_targets}")
        if errors:
            raise ValueError("invalid VerifyConfig: " + "; ".join(errors))


def verify(
    output: str,
    gold: Any,
    answer_type: str,
    *,
    options: Sequence[str] | Mapping[str, str] | None = None,
    config: VerifyConfig | None = None,
) -> Verdict:
    """Check the final answer of ``output`` against ``gold``.

    Args:
        output: the model's full response (reasoning and answer).
        gold: the ground truth: a string, number, bool or, for boxes, a list (or its JSON text).
        answer_type: one of ``records.ANSWER_TYPES``.
        options: for ``choice``: the option texts in letter order (``["cat", "dog"]`` or ``["A. cat", "B. dog"]``)
            or a ``{"A": "cat"}`` mapping; lets the output and the gold name an option by its text.
        config: tolerances and Math-Verify settings; the defaults when ``None``.

    Returns:
        The verdict; a wrong or missing answer is a verdict, never an exception.

    Raises:
        ValueError: for an unknown ``answer_type``, a non-string ``output`` or a gold the type cannot use.
    """
    if answer_type not in _VERIFIERS:
        close = difflib.get_close_matches(str(answer_type), ANSWER_TYPES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown answer_type {answer_type!r}: expected one of {ANSWER_TYPES}{hint}")
    if not isinstance(output, str):
        raise ValueError(f"output must be a string, got {type(output).__name__}")
    if gold is None:
        raise ValueError(f"gold is missing for an answer of type {answer_type!r}")
    return _VERIFIERS[answer_type](output, gold, options, config or VerifyConfig())


# --------------------------------------------------------------------------------------------------------------------
# Where the output commits to an answer

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_MARKER_RE = re.compile(
    r"(?:(?<![A-Za-z])(?:final\s+answer|answer)(?:\*\*|__)?"
    r"(?:\s+(?:to\s+[^.\n]{0,60}?\s+)?(?:is|would\s+be|should\s+be|was)\b|\s*[:：])"
    r"|(?<![A-Za-z])(?:correct\s+)?(?:option|choice)(?:\*\*|__)?\s*(?:is\b|would\s+be\b|should\s+be\b|[:：])"
    r"|(?:最终答案|正确答案|答案|正确选项)(?:\*\*|__)?\s*(?:是|为|应该是|应为|[:：])"
    r"|(?:故|应|所以|因此|我)选(?:择)?)"
    r"\s*(?:是|为)?\s*[:：]?(?:\*\*|__)?",
    re.IGNORECASE,
)


def last_boxed(text: str) -> tuple[int, str] | None:
    """The start and content of the last ``\\boxed{...}`` (balanced braces) in ``text``, or ``None``."""
    for match in reversed(list(_BOXED_RE.finditer(text))):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return match.start(), text[match.end() : i - 1]
    return None


def committed_spans(text: str) -> list[str]:
    """The spans that hold the output's last committed answer, most specific first.

    The later of the last ``\\boxed{}`` and the last answer marker wins. For a marker, the rest of its line comes
    first, then everything after it (a JSON block may start on the next line). Empty when the output commits to
    nothing.
    """
    return _commitment(text)[1]


def _commitment(text: str) -> tuple[str | None, list[str]]:
    """``("boxed" | "marker" | None, spans)``: which kind of commitment is last, and its spans (see above)."""
    boxed = last_boxed(text)
    markers = list(_MARKER_RE.finditer(text))
    marker = markers[-1] if markers else None
    if boxed is not None and (marker is None or boxed[0] >= marker.start()):
        return "boxed", [boxed[1]]
    if marker is None:
        return None, []
    rest = text[marker.end() :]
    line = rest.split("\n", 1)[0]
    return "marker", ([line, rest] if line.strip() else [rest])


def _find_final(text: str, extract: Callable[[str, bool], tuple[Any, str] | None]) -> tuple[Any, str] | None:
    """Run ``extract(span, anchored)`` on the committed spans, then on the whole text (``anchored=False``)."""
    for span in committed_spans(text):
        found = extract(span, True)
        if found is not None:
            return found
    return extract(text, False)


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _last_nonempty_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textnormal)\s*\{([^{}]*)\}")


def _strip_latex_text(text: str) -> str:
    return _TEXT_WRAPPER_RE.sub(r"\1", text)


# --------------------------------------------------------------------------------------------------------------------
# math


def _verify_math(output: str, gold: Any, options: Any, config: VerifyConfig) -> Verdict:
    from math_verify import parse
    from math_verify import verify as math_equal

    gold_parsed = _parse_math_gold(str(gold), config)
    if not gold_parsed:
        raise ValueError(f"math gold {gold!r} could not be parsed by Math-Verify; write it as LaTeX, e.g. '$1/3$'")
    targets = _math_targets(config)
    pred = []
    kind, spans = _commitment(output)
    if kind == "marker":
        # An answer marker after any box: parse what follows it, so "Answer: 5 ... wait, the answer is 7" gives 7
        # (Math-Verify alone prefers an "Answer:" pattern wherever it stands).
        pred = parse(spans[-1], targets, parsing_timeout=config.math_timeout_seconds)
    if kind == "boxed":
        # Math-Verify reads every \boxed{} of a text as one set ("\boxed{2} no wait, \boxed{3}" gives {2, 3}):
        # parse from the last chain of boxes on ("\boxed{1}, \boxed{2} and \boxed{3}" stays one answer).
        pred = parse(output[_last_boxed_chain_start(output) :], targets, parsing_timeout=config.math_timeout_seconds)
    if not pred:
        pred = parse(output, targets, parsing_timeout=config.math_timeout_seconds)
    if not pred:
        return Verdict(False, None, NO_FINAL_ANSWER)
    extracted = str(pred[-1]) if isinstance(pred[-1], str) else str(pred[0])
    equal = math_equal(
        gold_parsed,
        pred,
        float_rounding=config.math_float_rounding,
        strict=config.math_strict,
        allow_set_relation_comp=config.math_allow_set_relation_comp,
        timeout_seconds=config.math_timeout_seconds,
    )
    return Verdict(bool(equal), extracted, None if equal else MISMATCH)


_BOX_CONNECTOR_RE = re.compile(r"(?:\s|\$|\\[\[\]()]|,|;|\\?quad|\band\b|\bor\b|\\text\{\s*(?:and|or)\s*\})*")


def _last_boxed_chain_start(text: str) -> int:
    """Where the last run of boxes joined only by commas, "and"/"or" and math delimiters begins."""
    spans = []
    for match in _BOXED_RE.finditer(text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0 and (not spans or match.start() >= spans[-1][1]):
            spans.append((match.start(), i))
    if not spans:
        return 0
    start = len(spans) - 1
    while start > 0 and _BOX_CONNECTOR_RE.fullmatch(text[spans[start - 1][1] : spans[start][0]]):
        start -= 1
    return spans[start][0]


def _math_targets(config: VerifyConfig) -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    targets = []
    if "latex" in config.math_targets:
        targets.append(LatexExtractionConfig(boxed_match_priority=0))
    if "expr" in config.math_targets:
        targets.append(ExprExtractionConfig())
    return targets


def _parse_math_gold(gold: str, config: VerifyConfig) -> list[Any]:
    """Parse a gold answer; a bare LaTeX gold such as ``\\frac{1}{3}`` is read as if it were in ``$...$``."""
    from math_verify import parse

    targets = _math_targets(config)
    delimited = any(d in gold for d in ("$", "\\(", "\\[", "\\boxed"))
    if not delimited:
        parsed = parse(f"${gold}$", targets, parsing_timeout=config.math_timeout_seconds)
        if parsed:
            return parsed
    return parse(gold, targets, parsing_timeout=config.math_timeout_seconds)


# --------------------------------------------------------------------------------------------------------------------
# choice

_OPTION_PREFIX_RE = re.compile(r"^\s*\(?([A-Za-z])\s*[).:：、]\s*")
_LEADING_LETTER_RE = re.compile(r"^[\s*_(\[{\"'“‘]*([A-Za-z])(?=$|[\s*_)\]}.,:;，。、：；!?\"'”’])")
_STANDALONE_LETTER_RE = re.compile(r"(?<![A-Za-z])\(?([A-Z])\)?(?![A-Za-z'’])")
# "I think ..." and "A cat ..." are a pronoun and an article, not options; "A is right" is an option.
_PRONOUN_OR_ARTICLE_RE = re.compile(r"[AI]\s+(?!(?:is|was|would|should|seems|must|looks)\b)[a-z]")
# Letters that stand out as an answer in free text: "(B)", "**B**", "**B.**", "B." or "B)" opening a line, or a line
# that is just the letter.
_FREE_LETTER_RE = re.compile(
    r"\(([A-Z])\)|\*\*\(?([A-Z])[.)]?\*\*|^[ \t>*-]*\(?([A-Z])[.)](?=\s|$)|^[ \t*]*([A-Z])[ \t*]*$",
    re.MULTILINE,
)


def _option_table(options: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """Options as ``{"A": normalised text}``; ``"B. dog"`` in a list is read as letter B, text "dog"."""
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return {str(k).strip().upper(): normalize_text(str(v)) for k, v in options.items()}
    if isinstance(options, str) or not isinstance(options, Sequence):
        raise ValueError(f"options must be a list of option texts or a {{letter: text}} mapping, got {options!r}")
    table = {}
    for i, option in enumerate(options):
        letter = chr(ord("A") + i)
        text = str(option)
        prefix = _OPTION_PREFIX_RE.match(text)
        if prefix and prefix.group(1).upper() == letter:
            text = text[prefix.end() :]
        table[letter] = normalize_text(text)
    return table


def _letter_of_text(text: str, table: dict[str, str]) -> str | None:
    """The option whose text ``text`` is (normalised), or the only option whose text it contains."""
    norm = normalize_text(_strip_latex_text(text))
    if not norm:
        return None
    exact = [k for k, v in table.items() if v and v == norm]
    if exact:
        return exact[0]
    contained = [k for k, v in table.items() if v and re.search(rf"(?<!\w){re.escape(v)}(?!\w)", norm)]
    return contained[0] if len(contained) == 1 else None


def _verify_choice(output: str, gold: Any, options: Any, config: VerifyConfig) -> Verdict:
    table = _option_table(options)
    gold_letter = _gold_letter(str(gold), table)
    if gold_letter is None:
        return _verify_text(output, gold, options, config)

    def extract(span: str, anchored: bool) -> tuple[str, str] | None:
        span = _strip_latex_text(_nfkc(span))
        if anchored:
            leading = _LEADING_LETTER_RE.search(span)
            if leading and re.match(r"[a-z]\s+[A-Za-z]|[AI]\s+[a-z]", span[leading.start(1) :]):
                leading = None  # "a green bus", "I think": an article or a pronoun, not an option
            standalone = [
                m for m in _STANDALONE_LETTER_RE.finditer(span) if not _PRONOUN_OR_ARTICLE_RE.match(span, m.start(1))
            ]
            for match in ([leading] if leading else []) + standalone:
                if not table or match.group(1).upper() in table:
                    return match.group(1).upper(), match.group(1)
            letter = _letter_of_text(span, table) if table else None
            return (letter, span.strip()) if letter else None
        matches = [m for m in _FREE_LETTER_RE.finditer(span) if not table or _group(m).upper() in table]
        if matches:
            return _group(matches[-1]).upper(), _group(matches[-1])
        # Last, a capital letter standing alone in the last line ("Because B is valid"), or an option's text.
        last_line = _last_nonempty_line(span)
        for match in reversed(list(_STANDALONE_LETTER_RE.finditer(last_line))):
            if not _PRONOUN_OR_ARTICLE_RE.match(last_line, match.start(1)) and (not table or match.group(1) in table):
                return match.group(1), match.group(1)
        letter = _letter_of_text(last_line, table) if table else None
        return (letter, last_line.strip()) if letter else None

    found = _find_final(output, extract)
    if found is None:
        return Verdict(False, None, NO_FINAL_ANSWER)
    letter = found[0]
    return Verdict(letter == gold_letter, letter, None if letter == gold_letter else MISMATCH)


def _group(match: re.Match[str]) -> str:
    return next(g for g in match.groups() if g)


def _gold_letter(gold: str, table: dict[str, str]) -> str | None:
    """The gold as a letter: "B", "(b)", "B." or, with options, an option's text; ``None`` when it is free text."""
    stripped = _strip_latex_text(_nfkc(gold)).strip().strip("()[]{}*.:： ")
    if len(stripped) == 1 and stripped.isalpha() and stripped.isascii():
        letter = stripped.upper()
        if table and letter not in table:
            raise ValueError(f"choice gold {gold!r} names no option (options: {sorted(table)})")
        return letter
    if table:
        letter = _letter_of_text(gold, table)
        if letter is None:
            raise ValueError(f"choice gold {gold!r} is neither a letter nor the text of one of the options")
        return letter
    return None


# --------------------------------------------------------------------------------------------------------------------
# number and count

_NUMBER_RE = re.compile(
    # not after an ASCII letter, digit or dot; a CJK character may stand right before a number ("共有2个")
    r"(?<![A-Za-z0-9_.])(?P<sign>[-+−]?)\s?[$€£¥]?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d*|\d+|\.\d+)"
    r"(?:\s*[/⁄]\s*(?P<den>\d+(?:\.\d+)?)(?!\d|\.\d))?"
    r"(?:[eE](?P<exp>[-+−]?\d+)|\s*(?:\\times|\\cdot|×|\*|x)\s*10\s*\^\s*\{?\s*(?P<exp10>[-+−]?\d+)\s*\}?)?"
    r"(?P<pct>\s*(?:\\?%|percent\b|pct\b))?"
)


@dataclass(frozen=True)
class _Number:
    value: float
    percent: bool
    text: str

    def readings(self, percent_as_fraction: bool) -> tuple[float, ...]:
        if self.percent and percent_as_fraction:
            return (self.value, self.value / 100)
        return (self.value,)


def parse_numbers(text: str) -> list[_Number]:
    """Every number written in digits in ``text``, in order (thousands separators, fractions, exponents, %)."""
    return [number for _, number in _scan_numbers(_nfkc(text))]


def _scan_numbers(text: str) -> list[tuple[int, _Number]]:
    found = []
    for match in _NUMBER_RE.finditer(text):
        sign = -1.0 if match.group("sign") in ("-", "−") else 1.0
        value = float(match.group("num").replace(",", ""))
        if match.group("den") is not None:
            den = float(match.group("den"))
            if den == 0:
                continue
            value /= den
        exp = match.group("exp") or match.group("exp10")
        if exp is not None:
            value *= 10.0 ** int(exp.replace("−", "-"))
        text = match.group(0).strip().lstrip("$€£¥")
        found.append((match.start(), _Number(sign * value, bool(match.group("pct")), text)))
    return found


def _numbers_close(a: _Number, b: _Number, config: VerifyConfig) -> bool:
    return any(
        math.isclose(x, y, rel_tol=config.rel_tol, abs_tol=config.abs_tol)
        for x in a.readings(config.percent_as_fraction)
        for y in b.readings(config.percent_as_fraction)
    )


def _answer_part(span: str) -> str:
    """In a committed span, what follows the last "=" ("3 + 4 = 7 apples" -> "7 apples")."""
    return span.rsplit("=", 1)[-1] if "=" in span else span


def _verify_number(output: str, gold: Any, options: Any, config: VerifyConfig) -> Verdict:
    gold_numbers = parse_numbers(str(gold)) if not isinstance(gold, bool) else []
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        gold_numbers = [_Number(float(gold), False, str(gold))]
    if not gold_numbers:
        word = parse_count_words(str(gold))
        if not word:
            raise ValueError(f"number gold {gold!r} holds no number")
        gold_numbers = [_Number(float(word[-1][0]), False, str(gold))]
    gold_number = gold_numbers[0]

    def extract(span: str, anchored: bool) -> tuple[_Number, str] | None:
        part = _answer_part(span) if anchored else span
        numbers = parse_numbers(part)
        if numbers:
            number = numbers[0] if anchored else numbers[-1]
            return number, number.text
        words = parse_count_words(part)
        if words:
            value, text = words[0] if anchored else words[-1]
            return _Number(float(value), False, text), text
        return None

    found = _find_final(output, extract)
    if found is None:
        return Verdict(False, None, NO_FINAL_ANSWER)
    ok = _numbers_close(found[0], gold_number, config)
    return Verdict(ok, found[1], None if ok else MISMATCH)


_EN_UNITS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen".split()
    )
}
_EN_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_EN_SCALES = {"hundred": 100, "thousand": 1000}
_EN_WORD = "|".join(sorted([*_EN_UNITS, *_EN_TENS, *_EN_SCALES], key=len, reverse=True))
_EN_NUMBER_RE = re.compile(rf"\b(?:{_EN_WORD}|none)(?:(?:[\s-]+(?:and[\s-]+)?)(?:{_EN_WORD}))*\b", re.IGNORECASE)
# Which kind of number word may follow which: "twenty one", "one hundred and five", but "five six" is two numbers.
_EN_FOLLOWS = {
    "unit": {"hundred", "thousand"},
    "teen": {"hundred", "thousand"},
    "tens": {"unit", "hundred", "thousand"},
    "hundred": {"unit", "teen", "tens", "thousand"},
    "thousand": {"unit", "teen", "tens", "hundred"},
}
# "the one on the left", "each one": the pronoun, not the number.
_EN_PRONOUN_ONE_RE = re.compile(
    r"\b(the|this|that|each|which|any|every|no|another|last|first|other|right|left|only)(\s+)one\b", re.IGNORECASE
)

_ZH_DIGITS = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_ZH_UNITS = {"十": 10, "百": 100, "千": 1000}
_ZH_NUMBER_RE = re.compile(r"[零〇一二两三四五六七八九十百千万]+")
# Words that contain a numeral but are not numbers; masked before numerals are read.
_ZH_NOT_NUMBERS = (
    "一下", "一些", "一起", "一样", "一直", "一定", "一般", "一切", "一旦", "一致", "一点", "统一", "唯一",
    "之一", "一共", "万一", "一会", "一边", "一方面", "一遍", "一眼", "进一步", "十分", "千万", "万分", "一一",
    "三角", "四边", "五边", "六边", "八边", "五角", "十字", "二维", "三维",  # shapes: 三角形 is a triangle, not 3
)  # fmt: skip


def _en_kind(word: str) -> str:
    if word in _EN_TENS:
        return "tens"
    if word in _EN_SCALES:
        return word
    return "unit" if 1 <= _EN_UNITS[word] <= 9 else "teen"


def _split_en_numbers(run: str, offset: int) -> list[tuple[int, int, str]]:
    """Numbers in a run of number words, as ``(position, value, text)``; "and" joins only after hundred/thousand."""
    tokens = [(m.start(), m.group(0).lower()) for m in re.finditer(r"[A-Za-z]+", run)]
    if [t for _, t in tokens] == ["none"]:
        return [(offset, 0, run)]
    numbers: list[list[tuple[int, str]]] = []
    previous = None
    for pos, token in tokens:
        if token == "and":
            if previous not in ("hundred", "thousand"):
                previous = None  # "twenty-one and ninety": "and" ends the number
            continue
        kind = _en_kind(token)
        if previous is None or kind not in _EN_FOLLOWS[previous]:
            numbers.append([])
        numbers[-1].append((pos, token))
        previous = kind
    found = []
    for words in numbers:
        total = current = 0
        for _, token in words:
            if token == "hundred":
                current = max(current, 1) * 100
            elif token == "thousand":
                total += max(current, 1) * 1000
                current = 0
            else:
                current += _EN_UNITS.get(token, 0) + _EN_TENS.get(token, 0)
        start, end = words[0][0], words[-1][0] + len(words[-1][1])
        found.append((offset + start, total + current, run[start:end]))
    return found


def _parse_zh_number(chars: str) -> int:
    total = section = digit = 0
    for char in chars:
        if char in _ZH_DIGITS:
            digit = _ZH_DIGITS[char]
        elif char in _ZH_UNITS:  # "十二": a unit with no digit before it counts once
            section += (digit or 1) * _ZH_UNITS[char]
            digit = 0
        else:  # 万
            total += (section + digit or 1) * 10000
            section = digit = 0
    return total + section + digit


def parse_count_words(text: str) -> list[tuple[int, str]]:
    """Numbers written as English or Chinese words in ``text``, in order, as ``(value, text)``.

    "twenty-one" -> 21, "one hundred and five" -> 105, "十二" -> 12, "二十一" -> 21, "两" -> 2. Ordinals ("第一"),
    the pronoun "one" ("the one on the left") and words such as "一下" or "十分" are not read as numbers.
    """
    return [(value, word) for _, value, word in _scan_count_words(text)]


def _scan_count_words(text: str) -> list[tuple[int, int, str]]:
    text = _EN_PRONOUN_ONE_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}___", text)
    for word in _ZH_NOT_NUMBERS:
        text = text.replace(word, "□" * len(word))
    found: list[tuple[int, int, str]] = []
    for match in _EN_NUMBER_RE.finditer(text):
        found.extend(_split_en_numbers(match.group(0), match.start()))
    for match in _ZH_NUMBER_RE.finditer(text):
        if match.start() == 0 or text[match.start() - 1] != "第":
            found.append((match.start(), _parse_zh_number(match.group(0)), match.group(0)))
    return sorted(found)


def _verify_count(output: str, gold: Any, options: Any, config: VerifyConfig) -> Verdict:
    gold_count = _gold_count(gold)

    def extract(span: str, anchored: bool) -> tuple[float, str] | None:
        part = _nfkc(_answer_part(span) if anchored else span)
        digits = _scan_numbers(part)
        masked = _NUMBER_RE.sub(lambda m: " " * len(m.group(0)), part)
        candidates = [(pos, n.value, n.text) for pos, n in digits]
        candidates += [(pos, float(value), word) for pos, value, word in _scan_count_words(masked)]
        if not candidates:
            return None
        candidates.sort(key=lambda c: c[0])
        _, value, text = candidates[0] if anchored else candidates[-1]
        return value, text

    found = _find_final(output, extract)
    if found is None:
        return Verdict(False, None, NO_FINAL_ANSWER)
    ok = found[0] == gold_count
    return Verdict(ok, found[1], None if ok else MISMATCH)


def _gold_count(gold: Any) -> int:
    if isinstance(gold, bool):
        raise ValueError(f"count gold must be an integer, got {gold!r}")
    if isinstance(gold, (int, float)) and float(gold).is_integer():
        return int(gold)
    text = str(gold).strip()
    if re.fullmatch(r"\d+(?:\.0+)?", text):
        return int(float(text))
    words = parse_count_words(text)
    if len(words) == 1:
        return words[0][0]
    raise ValueError(f"count gold must be a whole number (digits or one number word), got {gold!r}")


# --------------------------------------------------------------------------------------------------------------------
# bbox and point

_NUM = r"-?\d+(?:\.\d+)?"
_KEYED_RE = {
    4: re.compile(rf"[\"']?bbox_2d[\"']?\s*:\s*\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]"),
    2: re.compile(rf"[\"']?point_2d[\"']?\s*:\s*\[\s*({_NUM})\s*,\s*({_NUM})\s*\]"),
}
_BARE_RE = {
    4: re.compile(rf"[\[(]\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*[\])]"),
    2: re.compile(rf"[\[(]\s*({_NUM})\s*,\s*({_NUM})\s*[\])]"),
}
_FENCE_RE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.DOTALL)


def _top_level_groups(text: str) -> list[str]:
    """Top-level ``[...]`` / ``{...}`` groups of ``text`` (brackets balanced, in order)."""
    groups, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "[{":
            if depth == 0:
                start = i
            depth += 1
        elif char in "]}" and depth:
            depth -= 1
            if depth == 0:
                groups.append(text[start : i + 1])
    return groups


def _coords_in(block: str, size: int) -> list[list[float]]:
    keyed = [[float(v) for v in m.groups()] for m in _KEYED_RE[size].finditer(block)]
    if keyed:
        return keyed
    return [[float(v) for v in m.groups()] for m in _BARE_RE[size].finditer(block)]


def _answer_coords(text: str, size: int) -> list[list[float]]:
    """The boxes (size 4) or points (size 2) of the last answer block in ``text``.

    A block is the last fenced code block when there is one, else the last top-level JSON group (or bare list) that
    holds any: a JSON list with two boxes is an answer of two boxes; two lists far apart are a first try and a
    correction.
    """
    fences = [m.group(1) for m in _FENCE_RE.finditer(text)]
    for block in reversed(fences):
        coords = _coords_in(block, size)
        if coords:
            return coords
    for block in reversed(_top_level_groups(text)):
        coords = _coords_in(block, size)
        if coords:
            return coords
    bare = _coords_in(text, size)  # a tuple "(x, y)" is not a bracket group
    return bare[-1:]


def _gold_boxes(gold: Any) -> list[list[float]]:
    value = gold
    if isinstance(gold, str):
        try:
            value = json.loads(_FENCE_RE.sub(r"\1", gold).strip())
        except json.JSONDecodeError as e:
            raise ValueError(f"bbox gold {gold!r} is not JSON: {e}") from e
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        value = [value]
    boxes = []
    for item in value if isinstance(value, list) else [value]:
        box = item.get("bbox_2d") if isinstance(item, Mapping) else item
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise ValueError(f"bbox gold {gold!r}: each box must be [x1, y1, x2, y2] in the model family's convention")
        if box[0] > box[2] or box[1] > box[3]:
            raise ValueError(f"bbox gold box {box} has x1 > x2 or y1 > y2; write it as [x1, y1, x2, y2]")
        boxes.append([float(v) for v in box])
    if not boxes:
        raise ValueError(f"bbox gold {gold!r} holds no box")
    return boxes


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes; 0 for a box with no area."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def _fmt_coords(coords: list[list[float]]) -> str:
    return json.dumps([[int(v) if v.is_integer() else v for v in c] for c in coords])


def _verify_bbox(output: str, gold: Any, options: Any, config: VerifyConfig) -> Verdict:
    gold_boxes = _gold_boxes(gold)
    spans = committed_spans(output)
    pred = next((c for c in (_answer_coords(s, 4) for s in spans) if c), None) or _answer_coords(output, 4)
    if not pred:
        return Verdict(False, None, NO_FINAL_ANSWER)
    extracted = _fmt_coords(pred)
    if len(pred) != len(gold_boxes):
        return Verdict(False, extracted, WRONG_BOX_COUNT)
    unmatched = list(range(len(pred)))
    for g in gold_boxes:  # greedy one-to-one matching, best IoU first
        best = max(unmatched, key=lambda j: iou(g, pred[j]))
        if iou(g, pred[best]) < config.iou_threshold:
            return Verdict(False, extracted, MISMATCH)
        unmatched.remove(best)
    return Verdict(True, extracted, None)


def _verify_point(output: str, gold: Any, options: Any, config: VerifyConfig) -> Verdict:
    gold_boxes = _gold_boxes(gold)
    if len(gold_boxes) != 1:
        raise ValueError(f"point gold must be one box [x1, y1, x2, y2], got {len(gold_boxes)} boxes")
    x1, y1, x2, y2 = gold_boxes[0]
    spans = committed_spans(output)
    pred = next((c for c in (_answer_coords(s, 2) for s in spans) if c), None) or _answer_coords(output, 2)
    if not pred:
        return Verdict(False, None, NO_FINAL_ANSWER)
    extracted = _fmt_coords(pred)
    if len(pred) != 1:
        return Verdict(False, extracted, WRONG_BOX_COUNT)
    x, y = pred[0]
    ok = x1 <= x <= x2 and y1 <= y <= y2
    return Verdict(ok, extracted, None if ok else MISMATCH)


# --------------------------------------------------------------------------------------------------------------------
# text and yes/no

_ARTICLES_RE = re.compile(r"\b(?:a|an|the)\b")
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def normalize_text(text: str) -> str:
    """Lower case, NFKC (full-width -> ASCII), punctuation -> space, English articles dropped, whitespace collapsed."""
    text = _nfkc(text).lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") or c in "`^~|" else c for c in text)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def _text_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    # Spaces carry no meaning between CJK characters ("北京 大学" is "北京大学").
    return bool(_CJK_RE.search(a + b)) and a.replace(" ", "") == b.replace(" ", "")


def _verify_text(output: str, gold: Any, options: Any, config: VerifyConfig) -> Verdict:
    golds = [gold] if isinstance(gold, (str, int, float)) else list(gold)
    gold_norms = [normalize_text(str(g)) for g in golds]
    if not any(gold_norms):
        raise ValueError(f"text gold {gold!r} is empty after normalisation")

    def extract(span: str, anchored: bool) -> tuple[str, str] | None:
        answer = span if anchored else _last_nonempty_line(span)
        answer = _strip_latex_text(answer).strip()
        return (normalize_text(answer), answer) if normalize_text(answer) else None

    found = _find_final(output, extract)
    if found is None:
        return Verdict(False, None, NO_FINAL_ANSWER)
    ok = any(_text_equal(found[0], g) for g in gold_norms if g)
    return Verdict(ok, found[1], None if ok else MISMATCH)


_YES = ("yes", "true", "是的", "是", "对的", "对", "正确", "有")
_NO = ("no", "false", "不是", "不对", "不正确", "错误", "否", "错", "没有")
_YESNO_RE = re.compile(
    r"(?<![A-Za-z])(?:yes|no|true|false)(?![A-Za-z])|不是|不对|不正确|错误|是的|是|对的|对|正确|否|错|没有|有",
    re.IGNORECASE,
)


def _yesno_value(text: str) -> tuple[bool, str] | None:
    match = _YESNO_RE.search(_nfkc(text))
    if match is None:
        return None
    word = match.group(0)
    return word.lower() in _YES, word


def _verify_yesno(output: str, gold: Any, options: Any, config: VerifyConfig) -> Verdict:
    if isinstance(gold, bool):
        gold_value = gold
    else:
        parsed = _yesno_value(str(gold))
        if parsed is None or normalize_text(str(gold)) not in {normalize_text(w) for w in _YES + _NO}:
            raise ValueError(f"yesno gold must be yes/no, true/false or 是/否, got {gold!r}")
        gold_value = parsed[0]

    def extract(span: str, anchored: bool) -> tuple[bool, str] | None:
        # The answer word opens the committed answer: "Yes, there is no dog." is yes.
        return _yesno_value(_strip_latex_text(span if anchored else _last_nonempty_line(span)))

    found = _find_final(output, extract)
    if found is None:
        return Verdict(False, None, NO_FINAL_ANSWER)
    ok = found[0] == gold_value
    return Verdict(ok, found[1], None if ok else MISMATCH)


_VERIFIERS: dict[str, Callable[[str, Any, Any, VerifyConfig], Verdict]] = {
    "math": _verify_math,
    "choice": _verify_choice,
    "number": _verify_number,
    "count": _verify_count,
    "bbox": _verify_bbox,
    "point": _verify_point,
    "text": _verify_text,
    "yesno": _verify_yesno,
}
