"""Chain-of-thought prompts for rejection sampling: one instruction per answer type, with the form it asks for.

The instruction is appended, as a new text part after a newline, to the last user turn of the record's question
(everything up to that turn: the record's own system prompt, earlier turns and the media stay as they are). Each
instruction names the form of the final answer, and the same form is what the hygiene check ``final_answer``
requires of a sample, so the prompt and the check cannot drift apart:

==========================  ===============================================  =========================================
answer types                final answer asked for                           form check
==========================  ===============================================  =========================================
math, number, count         ``\\boxed{...}``                                  ``boxed``
choice                      a last line ``Answer: <letter>``                 ``answer_line``
yesno, text                 a last line ``Answer: yes|no`` / ``Answer: ...``  ``answer_line``
bbox                        ``Answer:`` then Qwen JSON ``bbox_2d``           a ``"bbox_2d": [`` pattern
point                       ``Answer:`` then Qwen JSON ``point_2d``          a ``"point_2d": [`` pattern
==========================  ===============================================  =========================================

Boxes and points are asked for in the model family's convention (``postvl.families``): absolute pixels of the image
the model sees for Qwen2.5-VL, integers 0..1000 relative to the image for Qwen2-VL and Qwen3-VL, the space the
dataset's gold boxes were written in by ``postvl build``.

A sampling YAML can override any type under ``prompts``: a string replaces the instruction and keeps the form; a
mapping sets ``instruction``, ``form`` (``boxed`` | ``answer_line``) and ``pattern`` (a regular expression the
final answer must match, which then replaces the form check)::

    prompts:
      math: "Solve it step by step and put the final result in \\\\boxed{}."
      text: {instruction: "Reason briefly, then write 'Answer: ' and your answer.", form: answer_line}
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from postvl.families import Family, get_family
from postvl.records import ANSWER_TYPES

FORMS = ("boxed", "answer_line")

_STEP = "Think step by step and explain your reasoning"


@dataclass(frozen=True)
class PromptSpec:
    """The chain-of-thought instruction of one answer type and the form its final answer must take.

    Attributes:
        instruction: the text appended to the last user turn.
        form: ``boxed`` (a non-empty ``\\boxed{}``) or ``answer_line`` (a line "Answer: X").
        pattern: a regular expression (MULTILINE) the output must contain instead of ``form``; ``None``: use ``form``.
    """

    instruction: str
    form: str = "boxed"
    pattern: str | None = None

    def __post_init__(self) -> None:
        if not self.instruction.strip():
            raise ValueError("a prompt instruction must not be empty")
        if self.form not in FORMS:
            raise ValueError(f"prompt form must be one of {FORMS}, got {self.form!r}")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ValueError(f"prompt pattern {self.pattern!r} is not a regular expression: {err}") from err

    def form_check(self) -> dict[str, Any]:
        """Arguments of the hygiene check ``final_answer`` (``postvl.rejection_sampling.hygiene.FinalAnswerForm``)."""
        return {"form": self.form, "pattern": self.pattern}


DEFAULT_PROMPTS: dict[str, PromptSpec] = {
    "math": PromptSpec(f"{_STEP}, then put the final answer in \\boxed{{}}.", "boxed"),
    "number": PromptSpec(f"{_STEP}, then put the final numeric answer in \\boxed{{}}.", "boxed"),
    "count": PromptSpec(f"{_STEP}, then put the final count, as a number, in \\boxed{{}}.", "boxed"),
    "choice": PromptSpec(
        f'{_STEP}, then end with a line of the form "Answer: X", where X is the letter of the correct option.',
        "answer_line",
    ),
    "yesno": PromptSpec(f'{_STEP}, then end with a line "Answer: yes" or "Answer: no".', "answer_line"),
    "text": PromptSpec(f'{_STEP}, then end with a line "Answer: " followed by a short final answer.', "answer_line"),
    "bbox": PromptSpec(
        f'{_STEP}, then write "Answer:" followed by the bounding boxes as JSON in absolute pixel coordinates: '
        '[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}].',
        "answer_line",
        r'"bbox_2d"\s*:\s*\[',
    ),
    "point": PromptSpec(
        f'{_STEP}, then write "Answer:" followed by the point as JSON in absolute pixel coordinates: '
        '[{"point_2d": [x, y], "label": "..."}].',
        "answer_line",
        r'"point_2d"\s*:\s*\[',
    ),
}


_COORDINATES = {
    "absolute": "absolute pixel coordinates",
    "relative_1000": "coordinates relative to the image, as integers from 0 to 1000",
}


def family_prompts(family: Family | str) -> dict[str, PromptSpec]:
    """The default prompts, with boxes and points asked for in ``family``'s coordinate convention."""
    coordinates = _COORDINATES[get_family(family).grounding]
    specs = dict(DEFAULT_PROMPTS)
    for answer_type in ("bbox", "point"):
        spec = specs[answer_type]
        specs[answer_type] = replace(spec, instruction=spec.instruction.replace(_COORDINATES["absolute"], coordinates))
    return specs


def resolve_prompts(
    overrides: Mapping[str, str | Mapping[str, Any]] | None = None, *, family: Family | str
) -> dict[str, PromptSpec]:
    """The family's default prompts (``family_prompts``) with ``overrides`` (a YAML ``prompts`` section) applied.

    Raises:
        KeyError: an answer type that does not exist (the message names the closest one).
        ValueError: an override that is neither a string nor a mapping, or has unknown keys.
    """
    specs = family_prompts(family)
    for answer_type, value in (overrides or {}).items():
        if answer_type not in specs:
            close = difflib.get_close_matches(str(answer_type), ANSWER_TYPES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"prompts: unknown answer type {answer_type!r}; known: {list(ANSWER_TYPES)}.{hint}")
        if isinstance(value, str):
            specs[answer_type] = replace(specs[answer_type], instruction=value)
        elif isinstance(value, Mapping):
            unknown = set(value) - {"instruction", "form", "pattern"}
            if unknown:
                raise ValueError(
                    f"prompts.{answer_type}: unknown keys {sorted(unknown)}; use instruction, form and pattern"
                )
            specs[answer_type] = replace(specs[answer_type], **dict(value))
        else:
            raise ValueError(
                f"prompts.{answer_type} must be an instruction string or a mapping with instruction/form/pattern, "
                f"got {type(value).__name__}"
            )
    return specs


def question_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The question of a conversation: every turn up to and including the last user turn.

    Raises:
        ValueError: the conversation has no user turn.
    """
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise ValueError("the conversation has no user turn to ask")
    return [copy.deepcopy(dict(m)) for m in messages[: last_user + 1]]


def with_instruction(question: Sequence[Mapping[str, Any]], instruction: str) -> list[dict[str, Any]]:
    """A copy of ``question`` with ``instruction`` appended to its last turn as a text part after a newline."""
    messages = [copy.deepcopy(dict(m)) for m in question]
    last = messages[-1]
    if last["role"] != "user":
        raise ValueError(f"the question must end with a user turn, got {last['role']!r}")
    content = last["content"]
    if isinstance(content, str):
        last["content"] = f"{content}\n{instruction}"
    else:
        last["content"] = [*content, {"type": "text", "text": f"\n{instruction}"}]
    return messages
