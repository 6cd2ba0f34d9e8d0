"""Exact ChatML rendering of each model family, token counts and assistant-only label spans, in plain Python.

``render`` produces byte for byte what the family's official chat template (``Family.chat_template()``: Qwen2-VL,
Qwen2.5-VL, Qwen3-VL) renders through ``tokenizer.apply_chat_template(messages, tokenize=False)``, without running
jinja per record. Qwen2-VL and Qwen2.5-VL add a default system turn when the conversation has none:

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    <|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>
    <|im_start|>assistant
    A cat.<|im_end|>

Qwen3-VL adds no system turn, renders only the text of system and assistant turns, and the processor writes a video
as ``<t seconds><|vision_start|>pads<|vision_end|>`` per temporal patch inside the template's vision block (see
``postvl.media.VideoTokens``). Every function takes ``family=`` (a ``Family`` or its name); those given a tokenizer
or processor find it there when it is omitted (a processor's class, or a tokenizer's chat template, which must be one
of the official ones).

Trained spans (``render_with_spans``, ``tokenize_with_labels``) are each assistant turn's content plus its
``<|im_end|>``: never the ``<|im_start|>assistant\\n`` header, nothing of system or user turns, and no vision block
(``<|vision_start|>...<|vision_end|>``) even inside an assistant turn, since the model reads those and cannot emit
them. TRL's ``assistant_only_loss=True`` (its ``{% generation %}`` training template for Qwen2.5-VL) also trains the
``"\\n"`` after each ``<|im_end|>``; ``train_turn_newline=True`` reproduces that mask exactly.

Token counts are computed the way the processor builds ``input_ids``: the text is tokenized once with one pad token
per image / video, and each placeholder then stands for its vision-token count (``grid_t * grid_h * grid_w / 4``).
Vision pads are added special tokens, so expanding them before or after tokenization gives the same ids.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from postvl.families import FAMILIES, Family, UnsupportedFamilyError, get_family
from postvl.media import VideoTokens

logger = logging.getLogger(__name__)

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
IGNORE_INDEX = -100

_IMAGE, _VIDEO, _TEXT = "image", "video", "text"

Span = tuple[int, int]
# A video's token count: an int (pads; Qwen2-VL / Qwen2.5-VL) or its layout with timestamps (needed by Qwen3-VL).
VideoCount = int | VideoTokens


def resolve_family(family: Family | str | None, tokenizer: Any = None) -> Family:
    """``family`` when given; else the family of ``tokenizer`` (a processor's class, or a tokenizer whose chat template
    is a family's official one; Qwen2-VL and Qwen2.5-VL share theirs and render alike).

    Raises:
        ValueError: neither is given.
        UnsupportedFamilyError: the tokenizer's template is none of the supported families'.
    """
    if family is not None:
        return get_family(family)
    if tokenizer is None:
        raise ValueError(f"pass family= (one of {', '.join(FAMILIES)}): rendering differs between model families")
    if getattr(tokenizer, "image_processor", None) is not None:
        return get_family(tokenizer)
    template = getattr(_as_tokenizer(tokenizer), "chat_template", None)
    found = _TEMPLATE_FAMILIES.get(template) if isinstance(template, str) else None
    if found is None:
        for fam in FAMILIES.values():
            if template == fam.chat_template():
                found = _TEMPLATE_FAMILIES.setdefault(template, fam)
                break
    if found is None:
        raise UnsupportedFamilyError(
            f"{type(tokenizer).__name__}'s chat template is not the official template of any supported family "
            f"({', '.join(FAMILIES)}): pass family= explicitly"
        )
    return found


_TEMPLATE_FAMILIES: dict[str, Family] = {}


def render(
    messages: Sequence[dict[str, Any]],
    *,
    family: Family | str | None = None,
    add_generation_prompt: bool = False,
    add_vision_id: bool = False,
    image_pad_counts: Sequence[int] | None = None,
    video_pad_counts: Sequence[VideoCount] | None = None,
    enable_thinking: bool | None = None,
) -> str:
    """Render a conversation exactly as the family's official chat template does.

    Args:
        messages: a record's ``messages`` (``postvl.records``); a turn's ``content`` may also be a plain string.
        family: the model family (required).
        add_generation_prompt: end with ``<|im_start|>assistant\\n``.
        add_vision_id: prefix each image / video with ``Picture N: `` / ``Video N: `` (the template's option).
        image_pad_counts: when given, the i-th ``<|image_pad|>`` becomes ``image_pad_counts[i]`` pads, which is the
            text the processor feeds the model; one count per image part, in order.
        video_pad_counts: the same for ``<|video_pad|>``; a ``VideoTokens`` entry is written as the processor writes
            it (Qwen3-VL timestamps and per-patch vision blocks).
        enable_thinking: a thinking family's generation prompt (Qwen3.5): ``False`` closes an empty
            ``<think>`` block, ``True`` / ``None`` opens one (``Family.chat_template(enable_thinking)`` is the
            released template with that default); other families accept only ``None``.

    Returns:
        The rendered text.
    """
    fam = resolve_family(family)
    if enable_thinking is not None and not fam.thinking:
        raise ValueError(f"{fam.title} has no thinking mode: enable_thinking must be unset")
    return _render(
        messages,
        fam,
        add_generation_prompt,
        add_vision_id,
        image_pad_counts,
        video_pad_counts,
        None,
        False,
        enable_thinking=enable_thinking,
    )


def render_with_spans(
    messages: Sequence[dict[str, Any]],
    *,
    family: Family | str | None = None,
    add_vision_id: bool = False,
    image_pad_counts: Sequence[int] | None = None,
    video_pad_counts: Sequence[VideoCount] | None = None,
    train_turn_newline: bool = False,
) -> tuple[str, list[Span]]:
    """Render a conversation and return the character spans a model is trained on.

    Args:
        messages, family, add_vision_id, image_pad_counts, video_pad_counts: as for ``render``.
        train_turn_newline: also train the ``"\\n"`` after each assistant ``<|im_end|>`` (TRL's training template).

    Returns:
        ``(text, spans)``: ``spans`` are sorted, disjoint ``[start, end)`` offsets into ``text`` covering every
        assistant turn's content and its ``<|im_end|>``, with vision blocks cut out.
    """
    spans: list[Span] = []
    fam = resolve_family(family)
    text = _render(messages, fam, False, add_vision_id, image_pad_counts, video_pad_counts, spans, train_turn_newline)
    return text, spans


def assistant_label_spans(
    messages: Sequence[dict[str, Any]],
    *,
    family: Family | str | None = None,
    add_vision_id: bool = False,
    train_turn_newline: bool = False,
) -> list[Span]:
    """Character spans of ``render(messages, family=family)`` that carry labels (see ``render_with_spans``)."""
    return render_with_spans(
        messages, family=family, add_vision_id=add_vision_id, train_turn_newline=train_turn_newline
    )[1]


def count_media(messages: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """Number of image and video placeholders the template renders (it also counts parts keyed ``image``/``video``)."""
    images = videos = 0
    for msg in messages:
        content = msg["content"]
        if isinstance(content, str):
            continue
        for part in content:
            kind = _part_kind(part)
            images += kind == _IMAGE
            videos += kind == _VIDEO
    return images, videos


def count_tokens(
    messages: Sequence[dict[str, Any]],
    image_tokens: Sequence[int],
    video_tokens: Sequence[VideoCount],
    tokenizer: Any,
    *,
    family: Family | str | None = None,
    add_vision_id: bool = False,
) -> int:
    """Number of tokens the model sees for a record: text tokens plus each image's and video's vision tokens.

    Equals ``len(processor(text=render(messages), images=..., videos=...)["input_ids"][0])``.

    Args:
        messages: a record's ``messages``.
        image_tokens: vision-token count of each image, in placeholder order (``grid_t * grid_h * grid_w // 4``).
        video_tokens: the same for each video: pads (an int), or a ``VideoTokens`` (required by Qwen3-VL, whose
            timestamps and per-patch vision blocks are tokens too).
        tokenizer: a Hugging Face tokenizer, or a processor holding one.
        family: the model family (default: found from ``tokenizer``, see ``resolve_family``).
        add_vision_id: render with ``Picture N: `` / ``Video N: `` prefixes.
    """
    return count_tokens_batch(
        [messages], [image_tokens], [video_tokens], tokenizer, family=family, add_vision_id=add_vision_id
    )[0]


def count_tokens_batch(
    messages_batch: Sequence[Sequence[dict[str, Any]]],
    image_tokens_batch: Sequence[Sequence[int]],
    video_tokens_batch: Sequence[Sequence[VideoCount | None]],
    tokenizer: Any,
    *,
    family: Family | str | None = None,
    add_vision_id: bool = False,
) -> list[int]:
    """``count_tokens`` for many records with one batched call into the fast tokenizer (a ``None`` video count
    counts the video as its single unexpanded pad)."""
    if not len(messages_batch) == len(image_tokens_batch) == len(video_tokens_batch):
        raise ValueError(
            f"count_tokens_batch got {len(messages_batch)} conversations, {len(image_tokens_batch)} image-token "
            f"lists and {len(video_tokens_batch)} video-token lists: pass one list (maybe empty) per conversation"
        )
    fam = resolve_family(family, tokenizer)
    tok = _as_tokenizer(tokenizer)
    texts = []
    vision = []
    for messages, image_tokens, video_tokens in zip(
        messages_batch, image_tokens_batch, video_tokens_batch, strict=True
    ):
        _check_counts(messages, image_tokens, video_tokens)
        text = _render(messages, fam, False, add_vision_id, None, None, None, False)
        if text.count(IMAGE_PAD) != len(image_tokens) or text.count(VIDEO_PAD) != len(video_tokens):
            raise ValueError(
                f"a text part contains a literal {IMAGE_PAD} or {VIDEO_PAD}, which the processor would take for a "
                "vision placeholder: remove it from the text"
            )
        texts.append(text)
        # each placeholder is one pad token in the unexpanded text and image_tokens[i] pads in the model input
        extra = sum(image_tokens) - len(image_tokens)
        extra += sum(len(_video_expansion(v, fam, tok)) - 1 for v in video_tokens)
        vision.append(extra)
    lengths = _text_lengths(texts, tok)
    return [n + extra for n, extra in zip(lengths, vision, strict=True)]


def tokenize_with_labels(
    messages: Sequence[dict[str, Any]],
    tokenizer: Any,
    image_tokens: Sequence[int] | None = None,
    video_tokens: Sequence[VideoCount] | None = None,
    *,
    family: Family | str | None = None,
    add_vision_id: bool = False,
    train_turn_newline: bool = False,
) -> tuple[list[int], list[int]]:
    """Token ids of a record as the model sees them, and labels that train only the assistant turns.

    The rendered text is tokenized once; a token is trained when its characters overlap a trained span (the rule
    transformers uses to turn ``{% generation %}`` spans into ``assistant_masks``), so a token that straddles the
    header and the content (``assistant\\n`` followed by content starting with ``\\n``) is trained. Vision pads are
    then expanded to their counts with label ``-100``.

    Args:
        messages: a record's ``messages``.
        tokenizer: a fast Hugging Face tokenizer with the Qwen special tokens, or a processor holding one.
        image_tokens: vision-token count of each image in placeholder order; ``None`` keeps one pad per image (the
            text before the processor expands it).
        video_tokens: the same for videos (an int, or a ``VideoTokens``, which Qwen3-VL requires); every token of a
            video's expansion (timestamps included) gets label ``-100``.
        family: the model family (default: found from ``tokenizer``).
        add_vision_id: render with ``Picture N: `` / ``Video N: `` prefixes.
        train_turn_newline: also train the ``"\\n"`` after each assistant ``<|im_end|>``, as TRL's
            ``assistant_only_loss=True`` does.

    Returns:
        ``(input_ids, labels)`` of equal length; labels are the ids on trained tokens and ``-100`` elsewhere.
    """
    fam = resolve_family(family, tokenizer)
    tok = _as_tokenizer(tokenizer)
    text, spans = render_with_spans(
        messages, family=fam, add_vision_id=add_vision_id, train_turn_newline=train_turn_newline
    )
    ids, offsets = _encode_with_offsets(text, tok)
    labels = _labels_from_spans(ids, offsets, spans)
    if image_tokens is None and video_tokens is None:
        return ids, labels
    n_images, n_videos = count_media(messages)
    image_tokens = [1] * n_images if image_tokens is None else image_tokens
    if video_tokens is None:
        # one pad per video: the unexpanded text, whatever the family
        return _expand_pads(ids, labels, tok, image_tokens, [None] * n_videos, fam)
    _check_counts(messages, image_tokens, video_tokens)
    return _expand_pads(ids, labels, tok, image_tokens, video_tokens, fam)


@dataclass(frozen=True)
class TrainedText:
    """A rendered record with the characters its trained tokens cover (what ``postvl inspect`` shows)."""

    text: str
    spans: list[Span]  # merged [start, end) character spans of the tokens that carry labels
    num_text_tokens: int  # tokens of ``text`` (one pad per image / video)
    num_trained_tokens: int


def trained_token_spans(
    messages: Sequence[dict[str, Any]],
    tokenizer: Any,
    *,
    family: Family | str | None = None,
    add_vision_id: bool = False,
    train_turn_newline: bool = False,
) -> TrainedText:
    """What ``tokenize_with_labels`` trains, mapped back onto the rendered text."""
    fam = resolve_family(family, tokenizer)
    tok = _as_tokenizer(tokenizer)
    text, spans = render_with_spans(
        messages, family=fam, add_vision_id=add_vision_id, train_turn_newline=train_turn_newline
    )
    ids, offsets = _encode_with_offsets(text, tok)
    labels = _labels_from_spans(ids, offsets, spans)
    covered: list[Span] = []
    n_trained = 0
    for label, (start, end) in zip(labels, offsets, strict=True):
        if label == IGNORE_INDEX:
            continue
        n_trained += 1
        if covered and start <= covered[-1][1]:
            covered[-1] = (covered[-1][0], max(covered[-1][1], end))
        elif end > start:
            covered.append((start, end))
    return TrainedText(text, covered, len(ids), n_trained)


# --------------------------------------------------------------------------------------------------------------------
# Rendering


def _part_kind(part: Any) -> str | None:
    # Mirrors the template's tests, in its order: a part is an image when typed so or keyed `image`/`image_url`.
    if not isinstance(part, dict):
        raise TypeError(f"a content part must be a dict like {{'type': 'text', 'text': ...}}, got {part!r}")
    kind = part.get("type")
    if kind == _IMAGE or "image" in part or "image_url" in part:
        return _IMAGE
    if kind == _VIDEO or "video" in part:
        return _VIDEO
    if "text" in part:
        return _TEXT
    return None


def _render(
    messages: Sequence[dict[str, Any]],
    family: Family,
    add_generation_prompt: bool,
    add_vision_id: bool,
    image_pad_counts: Sequence[int] | None,
    video_pad_counts: Sequence[VideoCount] | None,
    spans: list[Span] | None,
    train_turn_newline: bool,
    *,
    enable_thinking: bool | None = None,
) -> str:
    if family.thinking:
        return _render_thinking(
            messages,
            family,
            add_generation_prompt,
            add_vision_id,
            image_pad_counts,
            video_pad_counts,
            spans,
            train_turn_newline,
            enable_thinking,
        )
    out: list[str] = []
    pos = 0  # length of "".join(out), tracked only when spans are wanted
    n_images = n_videos = 0
    # Qwen3-VL's template prints only the text of system and assistant turns (their images and videos vanish).
    text_only_roles = () if family.default_system is not None else ("system", "assistant")
    for i, msg in enumerate(messages):
        role = msg["role"]
        if i == 0 and role != "system" and family.default_system is not None:
            turn = f"{IM_START}system\n{family.default_system}{IM_END}\n"
            out.append(turn)
            pos += len(turn)
        header = f"{IM_START}{role}\n"
        out.append(header)
        pos += len(header)
        trained = spans is not None and role == "assistant"
        start = pos
        content = msg["content"]
        if isinstance(content, str):
            out.append(content)
            pos += len(content)
        else:
            for part in content:
                kind = _part_kind(part)
                if kind != _TEXT and role in text_only_roles:
                    if kind is not None:
                        raise ValueError(
                            f"{family.title}'s chat template drops images and videos in {role} turns, so the model "
                            f"would never see this {kind}: move it into a user turn"
                        )
                    continue
                if kind == _TEXT:
                    piece = str(part["text"])  # jinja prints None as "None"; so do we
                elif kind == _IMAGE or kind == _VIDEO:
                    if kind == _IMAGE:
                        n_images += 1
                        prefix = f"Picture {n_images}: " if add_vision_id else ""
                        pads = IMAGE_PAD * _pad_count(image_pad_counts, n_images, "image")
                    else:
                        n_videos += 1
                        prefix = f"Video {n_videos}: " if add_vision_id else ""
                        pads = _video_text(video_pad_counts, n_videos, family)
                    out.append(prefix)
                    pos += len(prefix)
                    piece = f"{VISION_START}{pads}{VISION_END}"
                    if trained:  # the vision block is input, never a target
                        _close_span(spans, start, pos)
                        start = pos + len(piece)
                else:
                    continue
                out.append(piece)
                pos += len(piece)
        out.append(IM_END + "\n")
        pos += len(IM_END) + 1
        if trained:
            _close_span(spans, start, pos if train_turn_newline else pos - 1)
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    _check_pad_counts(image_pad_counts, n_images, "image")
    _check_pad_counts(video_pad_counts, n_videos, "video")
    return "".join(out)


THINK_START = "<think>"
THINK_END = "</think>"


def split_reasoning(message: dict[str, Any], content: str) -> tuple[str, str]:
    """(reasoning, answer) of an assistant turn as the Qwen3.5 template reads them: ``reasoning_content`` when it is a
    string, else the text before ``</think>`` (after any ``<think>``); the answer is what follows ``</think>``."""
    reasoning = message.get("reasoning_content")
    if not isinstance(reasoning, str):
        reasoning = ""
        if THINK_END in content:
            reasoning = content.split(THINK_END)[0].rstrip("\n").split(THINK_START)[-1].lstrip("\n")
            content = content.split(THINK_END)[-1].lstrip("\n")
    return reasoning.strip(), content


def answer_after_thinking(text: str, thinking: bool) -> str | None:
    """What a generated sample answers: all of it, or after a prompt that opened ``<think>`` (a thinking family with
    thinking on) what follows the last ``</think>``; ``None`` when the thinking never closed (no answer)."""
    if not thinking:
        return text
    return text.rsplit(THINK_END, 1)[1] if THINK_END in text else None


def opens_thinking(prompt: str) -> bool:
    """Whether a rendered generation prompt opened a ``<think>`` block (Qwen3.5 with thinking on)."""
    return prompt.endswith(f"{THINK_START}\n")


def drop_reasoning(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """``messages`` with the reasoning of every assistant turn removed (a ``<think>...</think>`` prefix of its text,
    a ``reasoning_content`` field), and how many turns had some: what ``postvl build --no-enable-thinking`` keeps, so
    a thinking family trains on answers alone, rendered ``<think>\n\n</think>\n\n{answer}`` as the no-think prompt
    prefills. Turns with media parts are left as they are (the renderer refuses them)."""
    out, dropped = [], 0
    for msg in messages:
        parts = msg.get("content") or []
        if msg.get("role") != "assistant" or any(p.get("type") != "text" for p in parts):
            out.append(msg)
            continue
        text = "".join(p.get("text") or "" for p in parts)
        reasoning, answer = split_reasoning(msg, text)
        if not reasoning and THINK_END not in text and "reasoning_content" not in msg:
            out.append(msg)
            continue
        dropped += bool(reasoning)
        kept = {k: v for k, v in msg.items() if k not in ("content", "reasoning_content")}
        out.append(kept | {"content": [{"type": "text", "text": answer}]})
    return out, dropped


def _render_thinking(
    messages: Sequence[dict[str, Any]],
    family: Family,
    add_generation_prompt: bool,
    add_vision_id: bool,
    image_pad_counts: Sequence[int] | None,
    video_pad_counts: Sequence[VideoCount] | None,
    spans: list[Span] | None,
    train_turn_newline: bool,
    enable_thinking: bool | None,
) -> str:
    # The Qwen3.5 template: every turn's content is trimmed; assistant turns after the last user query carry
    # "<think>\n{reasoning}\n</think>\n\n" before the answer, earlier ones only the answer (reasoning dropped).
    if not messages:
        raise ValueError(f"{family.title}'s chat template needs at least one message")
    counter = {"image": 0, "video": 0}

    def content_of(msg: dict[str, Any], role: str) -> str:
        content = msg.get("content")
        if content is None:
            return ""
        if isinstance(content, str):
            return content.strip()
        pieces: list[str] = []
        for part in content:
            kind = _part_kind(part)
            if kind == _TEXT:
                pieces.append(str(part["text"]))
            elif kind in (_IMAGE, _VIDEO):
                if role != "user":
                    raise ValueError(
                        f"{family.title}: a {kind} in a {role} turn is not supported (the template refuses it in "
                        "system turns; postvl trains assistant turns on text only): move it into a user turn"
                    )
                counter[kind] += 1
                n = counter[kind]
                if kind == _IMAGE:
                    prefix = f"Picture {n}: " if add_vision_id else ""
                    pads = IMAGE_PAD * _pad_count(image_pad_counts, n, "image")
                else:
                    prefix = f"Video {n}: " if add_vision_id else ""
                    pads = _video_text(video_pad_counts, n, family)
                pieces.append(f"{prefix}{VISION_START}{pads}{VISION_END}")
            else:
                raise ValueError(f"{family.title}'s chat template refuses a content part of unknown type: {part!r}")
        return "".join(pieces).strip()

    last_query = None
    for index in range(len(messages) - 1, -1, -1):
        msg = messages[index]
        if msg["role"] == "user":
            text = _query_text(msg.get("content"))
            if not (text.startswith("<tool_response>") and text.endswith("</tool_response>")):
                last_query = index
                break
    if last_query is None:
        raise ValueError(f"{family.title}'s chat template needs a user query in the conversation")
    out: list[str] = []
    pos = 0
    for i, msg in enumerate(messages):
        role = msg["role"]
        content = content_of(msg, role)
        if role == "system":
            if i != 0:
                raise ValueError(f"{family.title}: the system message must be the first one")
            turn = f"{IM_START}system\n{content}{IM_END}\n"
        elif role == "user":
            turn = f"{IM_START}user\n{content}{IM_END}\n"
        elif role == "assistant":
            if msg.get("tool_calls"):
                raise ValueError(f"{family.title}: tool calls in assistant turns are not supported by postvl")
            reasoning, answer = split_reasoning(msg, content)
            header = f"{IM_START}assistant\n"
            body = f"{THINK_START}\n{reasoning}\n{THINK_END}\n\n{answer}" if i > last_query else answer
            turn = f"{header}{body}{IM_END}\n"
            if spans is not None:
                start = pos + len(header)
                _close_span(spans, start, pos + len(turn) - (0 if train_turn_newline else 1))
        else:
            raise ValueError(f"{family.title}: role {role!r} is not supported (system, user, assistant)")
        out.append(turn)
        pos += len(turn)
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
        out.append(f"{THINK_START}\n\n{THINK_END}\n\n" if enable_thinking is False else f"{THINK_START}\n")
    _check_pad_counts(image_pad_counts, counter["image"], "image")
    _check_pad_counts(video_pad_counts, counter["video"], "video")
    return "".join(out)


def _query_text(content: Any) -> str:
    # What the template tests for a tool response: the trimmed content with unexpanded vision placeholders.
    if content is None or isinstance(content, str):
        return (content or "").strip()
    pieces = []
    for part in content:
        kind = _part_kind(part)
        if kind == _TEXT:
            pieces.append(str(part["text"]))
        elif kind in (_IMAGE, _VIDEO):
            pieces.append(VISION_START)
    return "".join(pieces).strip()


def _video_text(counts: Sequence[VideoCount] | None, index: int, family: Family) -> str:
    if counts is None:
        return VIDEO_PAD
    if index > len(counts):
        _pad_count(counts, index, "video")  # raises the usual message
    value = counts[index - 1]
    if isinstance(value, VideoTokens):
        if family.video_timestamps and value.timestamps is None:
            raise ValueError(f"{family.title} videos need timestamps: count them with postvl.media.video_tokens")
        return (
            value.placeholder(VIDEO_PAD, VISION_START, VISION_END)
            if family.video_timestamps
            else VIDEO_PAD * value.pads
        )
    if family.video_timestamps:
        raise ValueError(
            f"{family.title} writes a timestamp per temporal patch of a video: pass a postvl.media.VideoTokens "
            "(from the video's fps and frame indices), not a pad count"
        )
    return VIDEO_PAD * int(value)


def _close_span(spans: list[Span], start: int, end: int) -> None:
    if end <= start:
        return
    if spans and spans[-1][1] == start:
        spans[-1] = (spans[-1][0], end)
    else:
        spans.append((start, end))


def _pad_count(counts: Sequence[int] | None, index: int, kind: str) -> int:
    if counts is None:
        return 1
    if index > len(counts):
        raise ValueError(
            f"the conversation has more {kind} parts than the {len(counts)} {kind} pad counts given: "
            f"pass one count per {kind} part"
        )
    return int(counts[index - 1])


def _check_pad_counts(counts: Sequence[int] | None, found: int, kind: str) -> None:
    if counts is not None and len(counts) != found:
        raise ValueError(
            f"{len(counts)} {kind} pad counts given for {found} {kind} parts: pass one count per {kind} part"
        )


def _check_counts(
    messages: Sequence[dict[str, Any]], image_tokens: Sequence[int], video_tokens: Sequence[int]
) -> None:
    n_images, n_videos = count_media(messages)
    if len(image_tokens) != n_images or len(video_tokens) != n_videos:
        raise ValueError(
            f"the conversation has {n_images} image and {n_videos} video parts but {len(image_tokens)} image and "
            f"{len(video_tokens)} video token counts were given: pass one count per part, in order"
        )


# --------------------------------------------------------------------------------------------------------------------
# Tokenization


def _as_tokenizer(obj: Any) -> Any:
    """A processor's tokenizer, or the tokenizer itself."""
    inner = getattr(obj, "tokenizer", None)
    return inner if inner is not None else obj


def _text_lengths(texts: list[str], tokenizer: Any) -> list[int]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # the Rust tokenizer directly: the same ids as tokenizer(texts) without building python-side outputs
        return [len(enc.ids) for enc in backend.encode_batch(texts, add_special_tokens=False)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _encode_with_offsets(text: str, tokenizer: Any) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False) and getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: label spans need character offsets; "
            "load the tokenizer with AutoTokenizer (tokenizers installed)"
        )
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _labels_from_spans(ids: list[int], offsets: list[tuple[int, int]], spans: list[Span]) -> list[int]:
    # A token is trained when it overlaps a span: token_start < span_end and token_end > span_start.
    labels = [IGNORE_INDEX] * len(ids)
    k = 0
    for i, (start, end) in enumerate(offsets):
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        if k == len(spans):
            break
        if spans[k][0] < end:
            labels[i] = ids[i]
    return labels


def _video_expansion(value: VideoCount | None, family: Family, tokenizer: Any) -> list[int]:
    """Token ids one ``<|video_pad|>`` becomes in the model input (``None``: itself)."""
    if value is not None and family.video_timestamps:
        _video_text([value], 1, family)  # raises when the layout lacks timestamps
    video_pad = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
    if value is None:
        return [video_pad]
    if not family.video_timestamps:
        return [video_pad] * (value.pads if isinstance(value, VideoTokens) else int(value))
    start = tokenizer.convert_tokens_to_ids(VISION_START)
    end = tokenizer.convert_tokens_to_ids(VISION_END)
    ids: list[int] = []
    block = [video_pad] * value.tokens_per_patch
    for stamp in value.timestamps:
        # The stamp sits between special tokens, so it is tokenized on its own (added tokens split the text).
        ids += _encode_plain(f"<{stamp:.1f} seconds>", tokenizer) + [start] + block + [end]
    return ids


def _encode_plain(text: str, tokenizer: Any) -> list[int]:
    # Cached on the tokenizer itself, so that a cache never outlives (or is shared across) tokenizers.
    cache = tokenizer.__dict__.setdefault("_postvl_plain_ids", {})
    ids = cache.get(text)
    if ids is None:
        ids = cache[text] = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def _expand_pads(
    ids: list[int],
    labels: list[int],
    tokenizer: Any,
    image_tokens: Sequence[int],
    video_tokens: Sequence[VideoCount | None],
    family: Family,
) -> tuple[list[int], list[int]]:
    image_pad = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    video_pad = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
    n_image_pads = ids.count(image_pad)
    n_video_pads = ids.count(video_pad)
    if n_image_pads != len(image_tokens) or n_video_pads != len(video_tokens):
        raise ValueError(
            f"the tokenized text holds {n_image_pads} {IMAGE_PAD} and {n_video_pads} {VIDEO_PAD} tokens for "
            f"{len(image_tokens)} images and {len(video_tokens)} videos: a text part contains a literal vision "
            "placeholder; remove it from the text"
        )
    out_ids: list[int] = []
    out_labels: list[int] = []
    i_image = i_video = 0
    for token, label in zip(ids, labels, strict=True):
        if token == image_pad:
            expansion = [token] * image_tokens[i_image]
            i_image += 1
        elif token == video_pad:
            expansion = _video_expansion(video_tokens[i_video], family, tokenizer)
            i_video += 1
        else:
            out_ids.append(token)
            out_labels.append(label)
            continue
        out_ids.extend(expansion)
        out_labels.extend([IGNORE_INDEX] * len(expansion))
    return out_ids, out_labels
