"""The one record contract every data stage reads and writes.

A record (one row of a stage's ``data/*.parquet``) is TRL's conversational format plus a few fields of ours:

- ``id`` (str, unique within a dataset)
- ``messages``: list of ``{"role": "system"|"user"|"assistant", "content": [{"type": "text"|"image"|"video",
  "text": str | None}]}``; image and video parts carry ``text=None`` and stand where the media goes
- ``images``, ``videos``: lists of paths, in the order of the image / video parts, relative to the media root
- ``answer`` (ground truth or ``None``) and ``answer_type`` (one of ``ANSWER_TYPES`` or ``None``)
- ``num_tokens``: text + vision tokens of the rendered conversation (for packing), ``None`` until known
- ``meta``: a dict that grows stage by stage (source file and line, domain, subcategory, tags, scores, verdicts) and
  is never rewritten; stored in Parquet as a JSON string so that stages can add keys freely.

A preference record has ``prompt`` (messages), ``chosen`` and ``rejected`` (lists of assistant messages), ``images``,
``videos`` and ``meta`` instead of ``messages`` / ``answer``.

Reason codes (snake_case) name why a record was rejected; every stage uses ``Rejection`` to report one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "image", "video")
ANSWER_TYPES = ("math", "choice", "number", "count", "bbox", "point", "text", "yesno")

SFT_COLUMNS = ("id", "messages", "images", "videos", "answer", "answer_type", "num_tokens", "meta")
PREFERENCE_COLUMNS = ("id", "prompt", "chosen", "rejected", "images", "videos", "num_tokens", "meta")


@dataclass(frozen=True)
class Rejection:
    """Why a record was not kept: a snake_case reason code, a human sentence, and where it came from."""

    reason: str
    detail: str = ""
    source: str = ""  # "path/to/file.jsonl:17" or "path/to/dataset#row"

    def __post_init__(self) -> None:
        if not self.reason or not self.reason.replace("_", "").isalnum() or self.reason.lower() != self.reason:
            raise ValueError(f"reason code must be snake_case, got {self.reason!r}")


class RecordError(ValueError):
    """Raised by record-level code for a bad record; carries the reason code the stage reports."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Counts:
    """Kept / rejected counters with per-reason totals; ``total == kept + rejected`` by construction."""

    kept: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return sum(self.reasons.values())

    @property
    def total(self) -> int:
        return self.kept + self.rejected

    def keep(self, n: int = 1) -> None:
        self.kept += n

    def reject(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def merge(self, other: Counts) -> None:
        self.kept += other.kept
        for reason, n in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "kept": self.kept,
            "rejected": self.rejected,
            "reasons": dict(sorted(self.reasons.items())),
        }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def image_part() -> dict[str, Any]:
    return {"type": "image", "text": None}


def video_part() -> dict[str, Any]:
    return {"type": "video", "text": None}


def message(role: str, *parts: dict[str, Any] | str) -> dict[str, Any]:
    """``message("user", image_part(), "What is this?")``: strings become text parts."""
    return {"role": role, "content": [text_part(p) if isinstance(p, str) else p for p in parts]}


def encode_meta(meta: dict[str, Any]) -> str:
    return json.dumps(meta, ensure_ascii=False, sort_keys=True)


def decode_meta(meta: str | dict[str, Any] | None) -> dict[str, Any]:
    if meta is None:
        return {}
    if isinstance(meta, dict):
        return meta
    return json.loads(meta)


def count_media_parts(messages: list[dict[str, Any]]) -> tuple[int, int]:
    """Number of image parts and video parts in a conversation."""
    images = videos = 0
    for msg in messages:
        for part in msg["content"]:
            images += part["type"] == "image"
            videos += part["type"] == "video"
    return images, videos


def check_conversation(messages: Any) -> str | None:
    """Structural check of a ``messages`` list; returns a reason code or ``None`` when it is well formed.

    The first broken turn decides (``invalid_role``, ``empty_turn``, ``invalid_content_part``, ``non_text_text``);
    only a conversation whose turns are all well formed is then judged as a whole (``misplaced_system_turn``,
    ``no_assistant_turn``). One pass over the turns does both.
    """
    if not isinstance(messages, list) or not messages:
        return "empty_conversation"
    misplaced_system = has_assistant = False
    for index, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return "invalid_role"
        role = msg.get("role")
        if role == "assistant":
            has_assistant = True
        elif role == "system":
            misplaced_system = misplaced_system or index > 0
        elif role not in ROLES:
            return "invalid_role"
        content = msg.get("content")
        if not isinstance(content, list) or not content:
            return "empty_turn"
        for part in content:
            if not isinstance(part, dict):
                return "invalid_content_part"
            kind = part.get("type")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    return "non_text_text"
            elif kind not in PART_TYPES:
                return "invalid_content_part"
    if misplaced_system:
        return "misplaced_system_turn"
    if not has_assistant:
        return "no_assistant_turn"
    return None
