"""Format adapters: one raw row of TRL, LLaMA-Factory, qwen-vl-finetune, ms-swift or OpenAI data -> a draft record.

A draft has the record contract's shape (``id``, ``messages`` or ``prompt``/``chosen``/``rejected``, ``images``,
``videos``, ``answer``, ``answer_type``, ``meta``) but its media are still references as written in the data and
its grounding is not yet checked; ``postvl.chatml.validate`` finishes it. Adapters raise ``RecordError`` with a
reason code for rows they cannot map.

How each format marks media:

========================  ===================================================================================
``trl``                   ``{"type": "image"}`` parts + an ``images`` (or ``image``) column; plain-string
                          contents get all images at the start of the first user turn (TRL's
                          ``prepare_multimodal_messages``). ``prompt``/``completion`` and preference
                          ``prompt``/``chosen``/``rejected`` (explicit or implicit prompt) too.
``sharegpt``              ``<image>`` / ``<video>`` tags in string contents + ``images`` / ``videos`` columns;
``llamafactory``          ``from``/``value`` or ``role``/``content`` tags; ``dataset_info.json`` column and tag
                          mappings; alpaca (``instruction``/``input``/``output``); ranking ``chosen``/``rejected``.
``qwen``                  qwen-vl-finetune: ``conversations`` + ``image`` / ``video`` (a path or a list).
``swift``                 ms-swift: ``messages`` with tags + ``images``/``videos``; missing tags are prepended to the
                          first non-system turn as ms-swift does; ``rejected_response`` makes a preference
                          record; ``objects`` grounding (``<ref-object>`` / ``<bbox>``); query/response and
                          ``conversation`` variants.
``openai``                ``image_url`` / ``video_url`` parts (also LLaMA-Factory v1 ``{"type", "value"}`` parts).
``cauldron``              HuggingFaceM4/the_cauldron: ``images`` + ``texts: [{user, assistant, source}]``, one
                          turn pair per entry, no placeholders: the images go first in the first user turn.
``rlaif_v``               openbmb/RLAIF-V-Dataset: flat ``image``, ``question``, ``chosen``, ``rejected`` strings
                          -> a preference record with the image before the question.
========================  ===================================================================================

``auto`` picks the format per row from its keys (``detect_format``). Media may be paths, URLs, or embedded
(``datasets.Image`` structs ``{"bytes", "path"}``, PIL images): ``postvl.chatml.validate`` stores embedded ones.
TRL typed parts with an ``index`` (HuggingFaceH4/llava-instruct-mix-vsft) pick their image from ``images`` by it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from postvl.records import RecordError, text_part

logger = logging.getLogger(__name__)

FORMATS = ("auto", "trl", "sharegpt", "llamafactory", "qwen", "swift", "openai", "cauldron", "rlaif_v")
IMAGE_TAG, VIDEO_TAG, AUDIO_TAG = "<image>", "<video>", "<audio>"
_TAGS = re.compile(r"(<image>|<video>|<audio>)")
_ROLE_NAMES = {"system": "system", "user": "user", "assistant": "assistant", "developer": "system"}
_RECORD_KEYS = {"id", "answer", "answer_type", "meta"}

# LLaMA-Factory's defaults (data/README.md): sharegpt columns and tags.
LF_DEFAULT_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "history": None,
    "messages": "conversations",
    "system": None,
    "images": "images",
    "videos": "videos",
    "chosen": "chosen",
    "rejected": "rejected",
}
LF_DEFAULT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}


# --------------------------------------------------------------------------------------------------------------------
# Entry points


def detect_format(row: Any) -> str:
    """Guess a row's format from its keys; raises ``RecordError("unknown_format")`` when nothing fits."""
    if not isinstance(row, Mapping):
        raise RecordError("unknown_format", f"a row must be a JSON object, got {type(row).__name__}")
    if "rejected_response" in row or "objects" in row or (("label" in row or "tools" in row) and "messages" in row):
        return "swift"
    if "conversations" in row:
        first = _first(row["conversations"])
        if ("image" in row or "video" in row) and isinstance(first, Mapping) and "from" in first:
            return "qwen"
        return "sharegpt"
    if isinstance(row.get("conversation"), list) or ("query" in row and "response" in row):
        return "swift"
    texts = row.get("texts")
    if isinstance(texts, list) and texts and all(isinstance(t, Mapping) and "user" in t for t in texts):
        return "cauldron"
    if "question" in row and isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str):
        return "rlaif_v"
    if "instruction" in row and ("output" in row or "chosen" in row):
        return "sharegpt"
    if "prompt" in row and ("completion" in row or "chosen" in row):
        return "trl"
    if isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list):
        return "trl"
    if isinstance(row.get("messages"), list):
        messages = row["messages"]
        if any(isinstance(m, Mapping) and "from" in m for m in messages):
            return "sharegpt"
        contents = [m.get("content") for m in messages if isinstance(m, Mapping)]
        parts = [p for c in contents if isinstance(c, list) for p in c if isinstance(p, Mapping)]
        if any(
            p.get("type") in ("image_url", "video_url", "input_image", "input_text") or "value" in p for p in parts
        ):
            return "openai"
        if parts:
            return "trl"
        if any(isinstance(c, str) and _TAGS.search(c) for c in contents):
            return "sharegpt"
        return "trl"
    raise RecordError("unknown_format", f"no known format has the keys {sorted(row)[:12]}")


def to_draft(row: Any, *, fmt: str, source: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Map one raw row to a draft record.

    Args:
        row: the parsed row.
        fmt: one of ``FORMATS``; ``auto`` detects it from the row.
        source: ``file:line`` or ``file#row``, for ``meta.source`` and the stable id.
        options: per-input options (a LLaMA-Factory ``dataset_info.json`` entry: ``columns``, ``tags``,
            ``formatting``, ``ranking``).

    Raises:
        RecordError: the row cannot be mapped (``unknown_format``, ``invalid_role``, ``unsupported_media``, ...).
    """
    options = dict(options or {})
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not isinstance(row, Mapping):
        raise RecordError("unknown_format", f"a row must be a JSON object, got {type(row).__name__}")
    fmt = options.get("format", fmt)
    if fmt == "auto":
        fmt = detect_format(row)
    adapters = {
        "trl": _from_trl,
        "sharegpt": _from_llamafactory,
        "llamafactory": _from_llamafactory,
        "qwen": _from_qwen,
        "swift": _from_swift,
        "openai": _from_openai,
        "cauldron": _from_cauldron,
        "rlaif_v": _from_rlaif_v,
    }
    draft, used = adapters[fmt](row, options)
    draft["id"] = record_id(row, source)
    answer = row.get("answer")
    draft["answer"] = answer if answer is None or isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)
    draft["answer_type"] = row.get("answer_type")
    meta = dict(row["meta"]) if isinstance(row.get("meta"), Mapping) else {}
    meta.setdefault("source", source)
    meta.setdefault("format", fmt)
    extra = {k: v for k, v in row.items() if k not in used and k not in _RECORD_KEYS and _jsonable(v)}
    extra |= draft.pop("meta_extra", {})
    if extra:
        meta.setdefault("extra", extra)
    draft["meta"] = meta
    draft.setdefault("videos", [])
    return draft


def record_id(row: Mapping[str, Any], source: str) -> str:
    """The row's own ``id`` when it has one, else a stable hash of its source (``file:line``) and content."""
    own = row.get("id")
    if isinstance(own, (str, int)) and not isinstance(own, bool) and str(own).strip():
        return str(own)
    content = json.dumps(row, sort_keys=True, ensure_ascii=False, default=_id_value)
    return hashlib.sha1(f"{source}\n{content}".encode()).hexdigest()[:16]


def _id_value(value: Any) -> str:
    """Embedded bytes by their hash (not a megabyte of repr); other values by their repr."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "sha1:" + hashlib.sha1(value).hexdigest()
    if hasattr(value, "size") and hasattr(value, "mode"):  # a PIL image: its repr holds a memory address
        return f"PIL:{value.mode}:{value.size}"
    return repr(value)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _first(items: Any) -> Any:
    return items[0] if isinstance(items, list) and items else None


# --------------------------------------------------------------------------------------------------------------------
# Content helpers


def split_tags(text: Any) -> list[dict[str, Any]]:
    """``"<image>What is this?"`` -> ``[image part, text part]``; text between tags is kept byte for byte.

    Non-string content is kept as a text part with that value, so validation reports ``non_text_text``.
    """
    if not isinstance(text, str):
        return [{"type": "text", "text": text}]
    parts: list[dict[str, Any]] = []
    for piece in _TAGS.split(text):
        if piece == IMAGE_TAG:
            parts.append({"type": "image", "text": None})
        elif piece == VIDEO_TAG:
            parts.append({"type": "video", "text": None})
        elif piece == AUDIO_TAG:
            raise RecordError("unsupported_media", "<audio> tags: Qwen2.5-VL takes images and videos only")
        elif piece:
            parts.append(text_part(piece))
    return parts or [text_part("")]


def _parts_from_list(content: list[Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    """Content parts of any supported style -> (contract parts, inline media refs in order; None if positional)."""
    parts: list[dict[str, Any]] = []
    refs: list[tuple[str, Any]] = []
    for raw in content:
        if not isinstance(raw, Mapping):
            raise RecordError("invalid_content_part", f"content part {raw!r:.80} is not an object")
        kind = raw.get("type")
        if kind in ("text", "input_text"):
            parts.append({"type": "text", "text": raw.get("text", raw.get("value"))})
        elif kind in ("image", "image_url", "input_image", "video", "video_url"):
            media = "video" if kind.startswith("video") else "image"
            parts.append({"type": media, "text": None})
            refs.append((media, _inline_ref(raw, kind)))
        elif kind in ("audio", "input_audio", "audio_url"):
            raise RecordError("unsupported_media", "audio parts: Qwen2.5-VL takes images and videos only")
        else:
            raise RecordError("invalid_content_part", f"content part type {kind!r} is not text, image or video")
    return parts, refs


def _inline_ref(part: Mapping[str, Any], kind: str) -> Any:
    for key in (kind, "image", "video", "value", "path", "url"):
        value = part.get(key)
        if isinstance(value, Mapping) and "url" in value:  # OpenAI {"image_url": {"url": ...}}
            value = value["url"]
        if value is not None and value != "":
            return value
    return None


def _content_parts(content: Any) -> tuple[list[dict[str, Any]], list[tuple[str, Any]]]:
    if isinstance(content, list):
        return _parts_from_list(content)
    if isinstance(content, str):
        return [text_part(content)], []
    return [{"type": "text", "text": content}], []


def _media_lists(
    messages_groups: list[list[dict[str, Any]]], refs: list[tuple[str, Any]], images: list[Any], videos: list[Any]
) -> tuple[list[Any], list[Any]]:
    """Combine inline refs with the ``images``/``videos`` columns: all inline, or all positional."""
    inline = [r for r in refs if r[1] is not None]
    if not inline:
        return images, videos
    if len(inline) != len(refs) or images or videos:
        raise RecordError(
            "placeholder_media_mismatch",
            "some media parts carry their own path and others rely on the images/videos column; use one style",
        )
    return [r for kind, r in refs if kind == "image"], [r for kind, r in refs if kind == "video"]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def _role(value: Any, mapping: Mapping[str, str] | None = None) -> Any:
    table = mapping if mapping is not None else _ROLE_NAMES
    return table.get(value, value) if isinstance(value, str) else value


# --------------------------------------------------------------------------------------------------------------------
# TRL


def _trl_messages(raw: Any) -> tuple[list[dict[str, Any]], list[tuple[str, Any]]]:
    if isinstance(raw, str):  # standard (non-conversational) prompt or completion
        return [{"role": "user", "content": [text_part(raw)]}], []
    if not isinstance(raw, list):
        raise RecordError("empty_conversation", f"expected a list of messages, got {type(raw).__name__}")
    messages, refs = [], []
    for msg in raw:
        if not isinstance(msg, Mapping):
            raise RecordError("invalid_role", f"message {msg!r:.80} is not an object")
        parts, msg_refs = _content_parts(msg.get("content"))
        messages.append({"role": _role(msg.get("role")), "content": parts})
        refs.extend(msg_refs)
    return messages, refs


def _prepend_images(messages: list[dict[str, Any]], n_images: int, n_videos: int) -> None:
    """TRL's rule for plain-string conversations: every image (then video) goes first in the first user turn."""
    if not n_images and not n_videos:
        return
    has_parts = any(p["type"] != "text" for m in messages for p in m["content"])
    if has_parts:
        return
    for msg in messages:
        if msg["role"] == "user":
            media = [{"type": "image", "text": None}] * n_images + [{"type": "video", "text": None}] * n_videos
            msg["content"] = [dict(p) for p in media] + msg["content"]
            return


def _indexed_images(raws: list[Any], images: list[Any]) -> list[Any]:
    """TRL typed parts may carry ``index`` (llava-instruct-mix-vsft): the image part's position in ``images``.

    When every image part has an integer index, ``images`` is reordered to placeholder order; otherwise it is
    positional as given.
    """
    indices = [
        p.get("index")
        for raw in raws
        if isinstance(raw, list)
        for m in raw
        if isinstance(m, Mapping) and isinstance(m.get("content"), list)
        for p in m["content"]
        if isinstance(p, Mapping) and p.get("type") == "image"
    ]
    if not images or not indices or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        return images
    if any(not 0 <= i < len(images) for i in indices):
        raise RecordError(
            "placeholder_media_mismatch", f"image part indices {indices} for {len(images)} images in the row"
        )
    return [images[i] for i in indices]


def _from_trl(row: Mapping[str, Any], options: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    images = _as_list(row.get("images", row.get("image")))
    images = _indexed_images([row.get(k) for k in ("messages", "prompt", "completion", "chosen")], images)
    videos = _as_list(row.get("videos", row.get("video")))
    used = {"images", "image", "videos", "video", "messages", "prompt", "completion", "chosen", "rejected"}
    if "chosen" in row or "rejected" in row:
        chosen, c_refs = _trl_messages(row.get("chosen"))
        rejected, r_refs = _trl_messages(row.get("rejected"))
        if "prompt" in row:
            prompt, p_refs = _trl_messages(row["prompt"])
        else:  # implicit prompt: the shared prefix of chosen and rejected
            n = 0
            while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
                n += 1
            prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
            p_refs = c_refs[: sum(p["type"] != "text" for m in prompt for p in m["content"])]
        for msgs in (chosen, rejected):
            for m in msgs:
                if m["role"] == "user" and isinstance(row.get("chosen"), str):
                    m["role"] = "assistant"
        images, videos = _media_lists([prompt], p_refs, images, videos)
        _prepend_images(prompt, len(images), len(videos))
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "images": images, "videos": videos}, used
    if "messages" in row:
        messages, refs = _trl_messages(row["messages"])
    elif "prompt" in row:
        prompt, p_refs = _trl_messages(row["prompt"])
        completion, c_refs = _trl_messages(row.get("completion"))
        if isinstance(row.get("completion"), str):
            completion[0]["role"] = "assistant"
        messages, refs = prompt + completion, p_refs + c_refs
    else:
        raise RecordError("unknown_format", "TRL rows need messages, prompt/completion or prompt/chosen/rejected")
    images, videos = _media_lists([messages], refs, images, videos)
    _prepend_images(messages, len(images), len(videos))
    return {"messages": messages, "images": images, "videos": videos}, used


# --------------------------------------------------------------------------------------------------------------------
# OpenAI chat completions (and LLaMA-Factory v1 parts)


def _from_openai(row: Mapping[str, Any], options: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    messages, refs = _trl_messages(row.get("messages"))
    images, videos = _media_lists([messages], refs, _as_list(row.get("images")), _as_list(row.get("videos")))
    return {"messages": messages, "images": images, "videos": videos}, {"messages", "images", "videos"}


# --------------------------------------------------------------------------------------------------------------------
# HuggingFaceM4/the_cauldron and openbmb/RLAIF-V-Dataset


def _from_cauldron(row: Mapping[str, Any], options: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """``texts: [{user, assistant, source}]``: every entry is one user turn and one assistant turn."""
    texts = row.get("texts")
    if not isinstance(texts, list) or not texts:
        raise RecordError("empty_conversation", "texts is not a non-empty list of {user, assistant} turns")
    messages: list[dict[str, Any]] = []
    for turn in texts:
        if not isinstance(turn, Mapping):
            raise RecordError("invalid_history", f"texts entry {turn!r:.80} is not a {{user, assistant}} object")
        messages += [
            {"role": "user", "content": split_tags(turn.get("user"))},
            {"role": "assistant", "content": split_tags(turn.get("assistant"))},
        ]
    images = _as_list(row.get("images"))
    _prepend_images(messages, len(images), 0)
    sources = sorted({t.get("source") for t in texts if isinstance(t, Mapping) and isinstance(t.get("source"), str)})
    draft: dict[str, Any] = {"messages": messages, "images": images, "videos": []}
    if sources:
        draft["meta_extra"] = {"source_dataset": sources[0] if len(sources) == 1 else sources}
    return draft, {"texts", "images"}


def _from_rlaif_v(row: Mapping[str, Any], options: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Flat preference rows: ``image`` (or ``images``), ``question``, ``chosen``, ``rejected`` strings."""
    images = _as_list(row.get("images", row.get("image")))
    prompt = [{"role": "user", "content": split_tags(row.get("question"))}]
    _prepend_images(prompt, len(images), 0)
    draft = {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": split_tags(row.get("chosen"))}],
        "rejected": [{"role": "assistant", "content": split_tags(row.get("rejected"))}],
        "images": images,
        "videos": [],
    }
    return draft, {"image", "images", "question", "chosen", "rejected"}


# --------------------------------------------------------------------------------------------------------------------
# LLaMA-Factory (sharegpt and alpaca)


def _lf_tags(row: Mapping[str, Any], column: str, options: Mapping[str, Any]) -> dict[str, str]:
    tags = dict(LF_DEFAULT_TAGS)
    given = options.get("tags")
    if given:
        tags.update(given)
    else:  # no dataset_info entry: role/content rows (mllm_demo.json) are recognised from the first message
        first = _first(row.get(column))
        if isinstance(first, Mapping) and "role" in first and "from" not in first:
            tags.update(role_tag="role", content_tag="content", user_tag="user", assistant_tag="assistant")
    return tags


def _lf_message(msg: Any, tags: Mapping[str, str]) -> dict[str, Any]:
    if not isinstance(msg, Mapping):
        raise RecordError("invalid_role", f"message {msg!r:.80} is not an object")
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["system_tag"]: "system"}
    role = msg.get(tags["role_tag"])
    if role in (tags["observation_tag"], tags["function_tag"]):
        raise RecordError("invalid_role", f"tool role {role!r}: the record contract has system/user/assistant only")
    mapped = roles.get(role) if isinstance(role, str) else None
    return {"role": mapped or role, "content": split_tags(msg.get(tags["content_tag"]))}


def _from_llamafactory(row: Mapping[str, Any], options: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    columns = dict(LF_DEFAULT_COLUMNS)
    columns.update(options.get("columns") or {})
    formatting = options.get("formatting") or (
        "alpaca" if columns["prompt"] in row and columns["messages"] not in row else "sharegpt"
    )
    if (
        formatting == "sharegpt"
        and columns["messages"] not in row
        and "messages" in row
        and not options.get("columns")
    ):
        columns["messages"] = "messages"
    used = {c for c in columns.values() if c}
    if not options.get("columns"):  # without a dataset_info entry, the usual optional columns by their usual names
        for key in ("system", "history"):
            if key in row:
                columns[key] = key
                used.add(key)
    images = _as_list(row.get(columns["images"]))
    videos = _as_list(row.get(columns["videos"]))
    if row.get("audios"):
        raise RecordError("unsupported_media", "audios: Qwen2.5-VL takes images and videos only")
    system = row.get(columns["system"]) if columns["system"] else None
    if formatting == "alpaca":
        messages = _alpaca_messages(row, columns)
        chosen, rejected = row.get(columns["chosen"]), row.get(columns["rejected"])
        ranking = options.get("ranking") or (chosen is not None and rejected is not None)
        if ranking:
            chosen_msgs = [{"role": "assistant", "content": split_tags(chosen)}]
            rejected_msgs = [{"role": "assistant", "content": split_tags(rejected)}]
    else:
        tags = _lf_tags(row, columns["messages"], options)
        raw = row.get(columns["messages"])
        if not isinstance(raw, list):
            raise RecordError("empty_conversation", f"column {columns['messages']!r} is not a list of messages")
        messages = [_lf_message(m, tags) for m in raw]
        chosen, rejected = row.get(columns["chosen"]), row.get(columns["rejected"])
        ranking = options.get("ranking") or (isinstance(chosen, Mapping) and isinstance(rejected, Mapping))
        if ranking:
            chosen_msgs = [_lf_message(chosen, tags)]
            rejected_msgs = [_lf_message(rejected, tags)]
    if isinstance(system, str) and system and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": [text_part(system)]})
    if ranking:
        draft = {"prompt": messages, "chosen": chosen_msgs, "rejected": rejected_msgs}
    else:
        draft = {"messages": messages}
    return draft | {"images": images, "videos": videos}, used | {"audios"}


def _alpaca_messages(row: Mapping[str, Any], columns: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    history = row.get(columns["history"]) if columns.get("history") else None
    for turn in history or []:
        if not (isinstance(turn, list) and len(turn) == 2):
            raise RecordError("invalid_history", f"history turn {turn!r:.80} is not a [query, response] pair")
        messages += [
            {"role": "user", "content": split_tags(turn[0])},
            {"role": "assistant", "content": split_tags(turn[1])},
        ]
    query = [row.get(columns["prompt"]), row.get(columns["query"])]
    text = "\n".join(q for q in query if isinstance(q, str) and q)
    messages.append({"role": "user", "content": split_tags(text)})
    response = row.get(columns["response"])
    if response is not None:
        messages.append({"role": "assistant", "content": split_tags(response)})
    return messages


# --------------------------------------------------------------------------------------------------------------------
# qwen-vl-finetune


def _from_qwen(row: Mapping[str, Any], options: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    tags = dict(LF_DEFAULT_TAGS)
    raw = row.get("conversations")
    if not isinstance(raw, list):
        raise RecordError("empty_conversation", "conversations is not a list of messages")
    messages = [_lf_message(m, tags) for m in raw]
    images = _as_list(row.get("image", row.get("images")))
    videos = _as_list(row.get("video", row.get("videos")))
    return {"messages": messages, "images": images, "videos": videos}, {
        "conversations",
        "image",
        "images",
        "video",
        "videos",
    }


# --------------------------------------------------------------------------------------------------------------------
# ms-swift


def _from_swift(row: Mapping[str, Any], options: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    used = {"messages", "images", "videos", "audios", "rejected_response", "objects", "label", "system"}
    used |= {"conversation", "query", "response", "history", "tools", "instruction", "input", "output"}
    if row.get("audios"):
        raise RecordError("unsupported_media", "audios: Qwen2.5-VL takes images and videos only")
    if row.get("tools"):
        raise RecordError("invalid_role", "agent rows with tools: the record contract has no tool turns")
    raw = _swift_raw_messages(row)
    messages = []
    for msg in raw:
        if not isinstance(msg, Mapping):
            raise RecordError("invalid_role", f"message {msg!r:.80} is not an object")
        role = msg.get("role")
        if role in ("tool", "tool_call", "tool_response", "function"):
            raise RecordError(
                "invalid_role", f"tool role {role!r}: the record contract has system/user/assistant only"
            )
        content = msg.get("content")
        parts, refs = _content_parts(content) if isinstance(content, list) else (split_tags(content), [])
        if refs:
            raise RecordError("invalid_content_part", "ms-swift rows mark media with <image>/<video> tags in strings")
        messages.append({"role": role, "content": parts})
    images, videos = _as_list(row.get("images")), _as_list(row.get("videos"))
    _add_default_tags(messages, "image", len(images))
    _add_default_tags(messages, "video", len(videos))
    label = row.get("label")
    if label is not None and "rejected_response" not in row:
        if label is False or label == 0:
            raise RecordError("kto_undesirable", "a KTO row labelled undesirable is not a supervised example")
    draft: dict[str, Any] = {"images": images, "videos": videos}
    objects = _swift_objects(row.get("objects"))
    if objects is not None:
        draft["objects"] = objects
    rejected = row.get("rejected_response")
    if rejected is not None:
        if not messages or messages[-1]["role"] != "assistant":
            raise RecordError("no_assistant_turn", "rejected_response needs messages that end with the chosen answer")
        rejected_parts = (
            split_tags(rejected) if not isinstance(rejected, list) else _trl_messages(rejected)[0][-1]["content"]
        )
        draft |= {
            "prompt": messages[:-1],
            "chosen": [messages[-1]],
            "rejected": [{"role": "assistant", "content": rejected_parts}],
        }
    else:
        draft["messages"] = messages
    return draft, used


def _swift_raw_messages(row: Mapping[str, Any]) -> list[Any]:
    if "messages" in row:
        raw = row["messages"]
        if not isinstance(raw, list):
            raise RecordError("empty_conversation", "messages is not a list")
        raw = list(raw)
    elif isinstance(row.get("conversation"), list):
        raw = []
        for turn in row["conversation"]:
            if not isinstance(turn, Mapping):
                raise RecordError("invalid_role", f"conversation turn {turn!r:.80} is not an object")
            raw += [
                {"role": "user", "content": turn.get("human")},
                {"role": "assistant", "content": turn.get("assistant")},
            ]
    elif "query" in row:
        raw = []
        for pair in row.get("history") or []:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise RecordError("invalid_history", f"history turn {pair!r:.80} is not a [query, response] pair")
            raw += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        raw += [{"role": "user", "content": row["query"]}, {"role": "assistant", "content": row.get("response")}]
    else:
        raise RecordError("unknown_format", "ms-swift rows need messages, conversation or query/response")
    system = row.get("system")
    if (
        isinstance(system, str)
        and system
        and not (raw and isinstance(raw[0], Mapping) and raw[0].get("role") == "system")
    ):
        raw.insert(0, {"role": "system", "content": system})
    return raw


def _add_default_tags(messages: list[dict[str, Any]], media: str, count: int) -> None:
    """ms-swift's ``_add_default_tags``: missing media tags go to the start of the first non-system turn."""
    present = sum(p["type"] == media for m in messages for p in m["content"])
    missing = count - present
    if missing <= 0 or present:
        return
    for msg in messages:
        if msg["role"] != "system":
            msg["content"] = [{"type": media, "text": None} for _ in range(missing)] + msg["content"]
            return


def _swift_objects(objects: Any) -> dict[str, Any] | None:
    """ms-swift ``objects`` -> ``{"ref": [...], "bbox": [[...]], "bbox_type": "real"|"norm1", "image_id": [...]}``.

    Accepts the current dict form and the older JSON-string list of ``{caption, bbox, bbox_type, image}``.
    """
    if objects is None:
        return None
    if isinstance(objects, str):
        try:
            objects = json.loads(objects)
        except json.JSONDecodeError as err:
            raise RecordError("invalid_objects", f"objects is not valid JSON: {err}") from err
    if isinstance(objects, list):  # old form
        bbox_types = {o.get("bbox_type", "real") for o in objects if isinstance(o, Mapping)}
        objects = {
            "ref": [o.get("caption") for o in objects if isinstance(o, Mapping)],
            "bbox": [o.get("bbox") for o in objects if isinstance(o, Mapping)],
            "image_id": [o.get("image", 0) for o in objects if isinstance(o, Mapping)],
            "bbox_type": bbox_types.pop() if len(bbox_types) == 1 else "mixed",
        }
    if not isinstance(objects, Mapping):
        raise RecordError(
            "invalid_objects", f"objects must be an object with ref/bbox lists, got {type(objects).__name__}"
        )
    result = {
        "ref": list(objects.get("ref") or []),
        "bbox": list(objects.get("bbox") or []),
        "bbox_type": objects.get("bbox_type") or "real",
        "image_id": list(objects.get("image_id") or []),
    }
    if result["bbox_type"] not in ("real", "norm1"):
        raise RecordError("invalid_objects", f"bbox_type {result['bbox_type']!r} is not 'real' or 'norm1'")
    return result


# --------------------------------------------------------------------------------------------------------------------
# LLaMA-Factory dataset_info.json


def dataset_info_entries(path: str | Path, names: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The entries of a LLaMA-Factory ``dataset_info.json``: ``(data file, folder or hf:// name, adapter options)``.

    ``file_name`` entries point at local data; ``hf_hub_url`` entries become ``hf://URL[:subset]@split`` inputs, read
    through ``datasets.load_dataset`` (the HF cache works offline). ``ms_hub_url``, ``script_url`` and
    ``cloud_file_name`` entries are skipped with a warning.

    Raises:
        KeyError: a requested name is not in the file (the message lists the names there).
        FileNotFoundError: an entry's ``file_name`` does not exist.
    """
    path = Path(path)
    info = json.loads(path.read_text(encoding="utf-8"))
    wanted = names or list(info)
    missing = [n for n in wanted if n not in info]
    if missing:
        raise KeyError(f"{missing} not in {path}; it has {sorted(info)}")
    entries = []
    for name in wanted:
        entry = info[name]
        if "hf_hub_url" in entry and "file_name" not in entry:
            subset = f":{entry['subset']}" if entry.get("subset") else ""
            data = f"hf://{entry['hf_hub_url']}{subset}@{entry.get('split', 'train')}"
        elif "file_name" not in entry or any(k in entry for k in ("ms_hub_url", "script_url", "cloud_file_name")):
            logger.warning(
                "%s: entry %r is not a local file or a Hugging Face dataset; skipped (download it and add a "
                "file_name entry)",
                path,
                name,
            )
            continue
        else:
            data = str(path.parent / entry["file_name"])
            if not Path(data).exists():
                raise FileNotFoundError(f"{path}: entry {name!r} names {data}, which does not exist")
        options = {
            "format": "llamafactory",
            "entry": name,
            "formatting": entry.get("formatting", "alpaca"),
            "ranking": bool(entry.get("ranking", False)),
            "columns": entry.get("columns") or {},
            "tags": entry.get("tags") or {},
        }
        entries.append((data, options))
    return entries


def mapping_options(
    *,
    columns: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    formatting: str | None = None,
    ranking: bool | None = None,
) -> dict[str, Any]:
    """Adapter options for a layout no adapter knows: LLaMA-Factory's ``columns`` / ``tags`` / ``formatting`` /
    ``ranking`` (one ``dataset_info.json`` entry), checked.

    Raises:
        ValueError: every unknown key or value, with the names that exist.
    """
    import difflib

    errors = []
    for label, given, known in (("column", columns or {}, LF_DEFAULT_COLUMNS), ("tag", tags or {}, LF_DEFAULT_TAGS)):
        for key, value in given.items():
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                errors.append(f"unknown {label} key {key!r}{hint}; known: {', '.join(known)}")
            elif not isinstance(value, str) or not value:
                errors.append(f"{label} {key!r} must name a column or tag value, got {value!r}")
    if formatting not in (None, "sharegpt", "alpaca"):
        errors.append(f"formatting must be 'sharegpt' or 'alpaca', got {formatting!r}")
    if errors:
        raise ValueError("column mapping: " + "; ".join(errors))
    columns = dict(columns or {})
    if formatting is None:
        formatting = "sharegpt" if "messages" in columns or tags else "alpaca"
    return {
        "format": "llamafactory",
        "entry": "mapping",
        "formatting": formatting,
        "ranking": bool(ranking),
        "columns": columns,
        "tags": dict(tags or {}),
    }
