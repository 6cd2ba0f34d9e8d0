"""Truncated or incomplete answers: stopped by the length limit, unclosed structures, cut mid-sentence."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from postvl.filtering.base import CJK_RE, FENCE_BLOCK_RE, TOKEN_RE, Filter, Sample


class FinishReasonFilter(Filter):
    """Rejects an answer whose generation stopped at the token limit (``meta[key]`` in ``values``).

    Records without the key (human-written answers) pass.

    Args:
        key: the ``meta`` key written by the generator (vLLM / OpenAI ``finish_reason``).
        values: finish reasons that mean the answer was cut.

    Reason: ``stopped_by_length``.
    """

    name = "finish_reason"

    def __init__(self, key: str = "finish_reason", values: Sequence[str] = ("length",)) -> None:
        self.key = key
        self.values = tuple(values)

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        if Sample.of(record).meta.get(self.key) in self.values:
            return "stopped_by_length"
        return None


_FENCE_LINE_RE = re.compile(r"^[ \t]*(```|~~~)", re.M)
_INLINE_CODE_RE = re.compile(r"`[^`\n]*`")
_BEGIN_RE = re.compile(r"\\begin\{([^}]*)\}")
_END_RE = re.compile(r"\\end\{([^}]*)\}")
# Money is not math: "$5", "$1,200.50" followed by a non-math character.
_CURRENCY_RE = re.compile(r"(?<![\\$])\$\d+(?:[.,]\d+)*+(?![\w$^{}\\])")
_MATH_SPAN_RE = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]", re.S)
_BRACKETS = ("()", "[]", "{}", "（）", "【】", "《》", "「」", "『』")
_ASCII_BRACKETS = tuple(pair for pair in _BRACKETS if pair.isascii())


class UnbalancedFilter(Filter):
    """Rejects an answer with an unclosed code fence, unbalanced LaTeX or more opening than closing brackets.

    Checked in this order: code fences (```` ``` ```` / ``~~~`` lines); then, outside code blocks and inline code,
    LaTeX (``\\begin{env}``/``\\end{env}`` per environment, ``\\(``/``\\)``, ``\\[``/``\\]``, ``$$``, and ``$`` with
    money like "$5" left out); then, outside math, brackets ``() [] {} （） 【】 《》 「」 『』``. Only unclosed
    openers count: a stray closer ("1) first, 2) second") is not a sign of truncation.

    Args:
        brackets: check brackets.
        latex: check LaTeX delimiters.

    Reasons: ``unclosed_code_fence``, ``unbalanced_latex``, ``unbalanced_brackets``.
    """

    name = "unbalanced"

    def __init__(self, brackets: bool = True, latex: bool = True) -> None:
        self.brackets = brackets
        self.latex = latex

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        text = Sample.of(record).answer
        if "```" in text or "~~~" in text:
            fences = _FENCE_LINE_RE.findall(text)
            if fences.count("```") % 2 or fences.count("~~~") % 2:
                return "unclosed_code_fence"
            text = FENCE_BLOCK_RE.sub("\n", text)
        if "`" in text:
            text = _INLINE_CODE_RE.sub(" ", text)
        if self.latex and ("\\" in text or "$" in text):
            if _latex_unbalanced(text):
                return "unbalanced_latex"
            text = _MATH_SPAN_RE.sub(" ", _CURRENCY_RE.sub(" ", text.replace("\\$", " ")))
        if self.brackets:
            # Most texts hold no opener of a pair, which `in` finds out sooner than two counts; an ASCII text holds
            # none of the full-width ones.
            for opener, closer in _ASCII_BRACKETS if text.isascii() else _BRACKETS:
                if opener in text and text.count(opener) > text.count(closer):
                    return "unbalanced_brackets"
        return None


def _latex_unbalanced(text: str) -> bool:
    if "\\begin" in text or "\\end" in text:
        begins = _BEGIN_RE.findall(text)
        ends = _END_RE.findall(text)
        if sorted(begins) != sorted(ends):
            return True
    if text.count("\\(") != text.count("\\)") or text.count("\\[") != text.count("\\]"):
        return True
    if "$" in text:
        dollars = _CURRENCY_RE.sub(" ", text.replace("\\$", " "))
        double = dollars.count("$$")
        if double % 2 or (dollars.count("$") - 2 * double) % 2:
            return True
    return False


# The last line is not prose when it is a list item, a table row, a heading, indented code or a closing fence.
_NOT_PROSE_RE = re.compile(r"^(?:\s*(?:[-*+•]\s|\d+[.)、]|[a-zA-Z][.)]\s|#{1,6}\s|\||```|~~~)| {4}|\t)")
_DANGLING = frozenset(",，、:：")
_LATIN_END_WORDS = frozenset(
    "the a an and or but of to with by from which than because if their its our your my".split()
)
_CJK_END_CHARS = frozenset("的与及把被是")


class MidSentenceFilter(Filter):
    """Rejects an answer whose last sentence looks cut: it ends on a comma or colon, or prose ends on a word.

    The last non-empty line counts as prose unless it is a list item, a table row, a heading, indented code or a
    closing code fence. A prose line is cut when it ends with a letter or CJK character (not a digit, closing
    bracket, quote or other symbol) and either has at least ``min_words`` words / ``min_cjk_chars`` CJK characters,
    or ends on a function word ("the", "and", "的", ...) after at least ``min_words_function`` tokens. Terminal
    punctuation ``. ! ? 。 ！ ？ …`` always passes; a trailing ``, ， 、 : ：`` always fails.

    Args:
        min_words: words a prose line needs before a missing full stop counts.
        min_cjk_chars: CJK characters a prose line needs before a missing 。 counts.
        min_words_function: tokens a line needs before ending on a function word counts.

    Reason: ``cut_mid_sentence``.
    """

    name = "mid_sentence"

    def __init__(self, min_words: int = 12, min_cjk_chars: int = 20, min_words_function: int = 4) -> None:
        self.min_words = min_words
        self.min_cjk_chars = min_cjk_chars
        self.min_words_function = min_words_function

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        text = Sample.of(record).answer.rstrip()
        if not text:
            return None
        last = text.rsplit("\n", 1)[-1]
        end = last[-1]
        if end in _DANGLING:
            return "cut_mid_sentence"
        if not end.isalpha() or _NOT_PROSE_RE.match(last):
            return None
        tokens = TOKEN_RE.findall(last)
        if not tokens:
            return None
        cjk = len(CJK_RE.findall(last))
        words = len(tokens) - cjk
        if words >= self.min_words or cjk >= self.min_cjk_chars:
            return "cut_mid_sentence"
        if len(tokens) >= self.min_words_function and (
            tokens[-1] in _LATIN_END_WORDS or (cjk and end in _CJK_END_CHARS)
        ):
            return "cut_mid_sentence"
        return None
