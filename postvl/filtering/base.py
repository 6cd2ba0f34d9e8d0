"""The filter contract and the text views the rule filters read.

A filter is one small class that makes one decision: ``check(record) -> None | "reason_code"``. Thresholds are
constructor arguments; the runner owns iteration and counting. ``check`` accepts a plain record dict or a ``Sample``
(the runner wraps each record once so that the answer text, query text and decoded ``meta`` are computed once and
shared by every filter).

What the filters read:

- ``Sample.answer``: the text parts of every assistant turn, joined by a blank line (multi-turn records are judged
  as a whole; the last turn decides whether the end looks cut).
- ``Sample.query``: the text parts of every user turn, joined by a blank line (the system turn is left out).
- ``Sample.meta``: the decoded ``meta`` dict (``records.decode_meta``).
- ``Sample.answer_tokens`` / ``Sample.query_tokens``: ``tokenize`` of the texts.
- ``Sample.cache``: a dict where a filter keeps what it computed for this record ahead of ``check`` (near dedup
  hashes a whole batch at once), keyed by something of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from postvl.records import decode_meta

# CJK ideographs and kana: text in these scripts has no spaces between words, so filters
# that count "words" count each such character as one token. Hangul is written with spaces and counts as words.
CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
CJK_RE = re.compile(f"[{CJK_CHARS}]")
# One token: a single CJK character, or a run of other word characters (letters, digits, underscore, Hangul).
TOKEN_RE = re.compile(f"[{CJK_CHARS}]|[^\\W{CJK_CHARS}]+")
# The same tokens as TOKEN_RE, found faster: the word-run alternative first matches the commoner case sooner.
_TOKEN_RE_FAST = re.compile(f"[^\\W{CJK_CHARS}]+|[{CJK_CHARS}]")
# ASCII text has no CJK, so its tokens are the runs of word characters: mapping every other ASCII character to a
# space and splitting on whitespace finds the same runs (no word character is whitespace) at a third of the cost of
# a regex scan, which builds a match for every token.
_ASCII_NON_WORD_TO_SPACE = "".join(c if re.match(r"\w", c) else " " for c in map(chr, range(128)))
# Text whose only word characters are CJK (Chinese or Japanese prose with punctuation): its tokens are its CJK
# characters, left once everything else is deleted.
_NON_CJK_WORD_RE = re.compile(f"[^\\W{CJK_CHARS}]")
_NON_CJK_RUN_RE = re.compile(f"[^{CJK_CHARS}]+")


def tokenize(text: str) -> list[str]:
    """Words for space-separated scripts, single characters for CJK; punctuation and spaces are dropped.

    The tokens are ``TOKEN_RE.findall(text)``, found by the cheapest way that gives the same list for the text.
    """
    if text.isascii():
        return text.translate(_ASCII_NON_WORD_TO_SPACE).split()
    if not _NON_CJK_WORD_RE.search(text):
        return list(_NON_CJK_RUN_RE.sub("", text))
    return _TOKEN_RE_FAST.findall(text)


class Sample:
    """A read-only view of one record with the texts every filter needs, computed once.

    Args:
        record: a record dict (``records.py``); ``meta`` may be a dict or its JSON string.
    """

    __slots__ = ("record", "_answer", "_query", "_meta", "_answer_tokens", "_query_tokens", "_cache")

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = record
        self._answer: str | None = None
        self._query: str | None = None
        self._meta: dict[str, Any] | None = None
        self._answer_tokens: list[str] | None = None
        self._query_tokens: list[str] | None = None
        self._cache: dict[Any, Any] | None = None

    @classmethod
    def of(cls, record: Mapping[str, Any] | Sample) -> Sample:
        return record if isinstance(record, Sample) else cls(record)

    def _texts(self, role: str) -> str:
        chunks = []
        for msg in self.record.get("messages") or ():
            if msg["role"] == role:
                text = "".join(p["text"] for p in msg["content"] if p["type"] == "text" and p["text"])
                chunks.append(text)
        return "\n\n".join(chunks)

    @property
    def answer(self) -> str:
        if self._answer is None:
            self._answer = self._texts("assistant")
        return self._answer

    @property
    def query(self) -> str:
        if self._query is None:
            self._query = self._texts("user")
        return self._query

    @property
    def answer_tokens(self) -> list[str]:
        """``tokenize(answer)``, computed once."""
        if self._answer_tokens is None:
            self._answer_tokens = tokenize(self.answer)
        return self._answer_tokens

    @property
    def query_tokens(self) -> list[str]:
        """``tokenize(query)``, computed once."""
        if self._query_tokens is None:
            self._query_tokens = tokenize(self.query)
        return self._query_tokens

    @property
    def cache(self) -> dict[Any, Any]:
        """Per-record values a filter computed ahead of ``check`` (see ``Filter.prepare``)."""
        if self._cache is None:
            self._cache = {}
        return self._cache

    @property
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            self._meta = decode_meta(self.record.get("meta"))
        return self._meta

    @property
    def images(self) -> list[str]:
        return list(self.record.get("images") or ())


class Filter:
    """Base of the rule filters: a ``name`` (the YAML key) and one ``check``.

    Subclasses set ``name`` and implement ``check``. ``stateful`` filters (deduplication) remember what they saw;
    the policy runs them after every stateless filter so that a record rejected for another reason never shadows a
    later, clean near-copy of it. ``batched`` filters (an embedding model) are stateless but far cheaper per record
    when ``prepare`` sees many records at once: the policy runs them after the other stateless filters, prepared on
    the records those kept, so the model never sees a record a cheap rule has already rejected.
    """

    name: ClassVar[str] = ""
    stateful: ClassVar[bool] = False
    batched: ClassVar[bool] = False

    def check(self, record: Mapping[str, Any] | Sample) -> str | None:
        """Return ``None`` to keep the record or a snake_case reason code to reject it."""
        raise NotImplementedError

    def prepare(self, samples: Sequence[Sample]) -> None:
        """Optionally compute, for a batch of records about to be checked in order, what ``check`` needs and what
        does not depend on earlier records (kept in ``Sample.cache``). ``check`` must decide the same without it."""

    def close(self) -> None:
        """Release what the filter keeps outside memory (near dedup's spill files); most filters keep nothing."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


# A fenced block: ``` or ~~~ at a line start up to the matching fence, or to the end of the text when unclosed.
FENCE_BLOCK_RE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n.*?(?:^[ \t]*\1[ \t]*$|\Z)", re.M | re.S)
# A fenced block with its language tag and body (closed fences only).
FENCE_WITH_LANG_RE = re.compile(r"^[ \t]*(```|~~~)[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.M | re.S)
