"""Stage input and output: read any input with bounded memory, write stage folders atomically, shard by rank.

Reading: ``list_inputs`` expands files, globs and folders (JSON, JSONL, Parquet shards, datasets saved with
``save_to_disk``) and ``hf://OWNER/NAME[:CONFIG][@SPLIT]`` datasets (through ``datasets.load_dataset``: the hub, the
offline HF cache, or a local dataset folder as ``hf://./folder``); ``iter_rows`` streams them in Arrow batches as
``RawRow`` objects that carry their source (``file:line`` or ``file#row``). A line that is not valid JSON or not
valid UTF-8 becomes a ``RawRow`` with an ``error`` reason, so the stage reports it as a rejected record instead of
crashing.

Writing: ``StageWriter`` implements the stage contract::

    OUT/data/part-XXXXX.parquet     kept records, in chunks (preference records: OUT/preference/)
    OUT/rejected.jsonl              {"id", "reason", "detail", "stage", "source", "record" | "raw"} per line
    OUT/stats.json                  total, kept, rejected, reasons, domains, timings  (written last)
    OUT/manifest.json               resolved config, input fingerprints, package versions  (written last)

Every file appears under a temporary name first and is renamed when complete; ``stats.json`` and ``manifest.json``
come last, so a folder without them is an unfinished stage. Under ``accelerate launch`` / ``torchrun`` each rank
takes every ``world_size``-th input row, writes its own parts and a shard marker under ``OUT/_shards/``; rank 0 waits
for all markers, merges the rejects and the counts and writes ``stats.json`` / ``manifest.json``. A rerun with the
same config and inputs skips ranks whose marker exists.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postvl.records import PREFERENCE_COLUMNS, SFT_COLUMNS, Counts, decode_meta, encode_meta

logger = logging.getLogger(__name__)

JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
HUB_PREFIX = "hf://"
_GLOB = re.compile(r"[*?\[]")
_BATCH_ROWS = 512
_BATCH_ROWS_MEDIA = 64  # rows per Arrow batch when rows carry embedded media (bounded memory)
_SURROGATE = re.compile("[\udc80-\udcff]")
_MAX_ELEMENT_CHARS = 64 * 1024 * 1024  # one JSON value larger than this is reported invalid, not buffered forever
_READ_CHARS = 1 << 20
_RAW_PREVIEW = 20_000  # characters of an unparsable row kept in rejected.jsonl


# --------------------------------------------------------------------------------------------------------------------
# Ranks


@dataclass(frozen=True)
class Shard:
    """This process's share of the input: rows whose global index ``i`` has ``i % world_size == rank``."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, index: int) -> bool:
        return index % self.world_size == self.rank


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard:
    """``Shard`` from ``RANK`` / ``WORLD_SIZE`` (set by ``accelerate launch`` and ``torchrun``); ``LOCAL_RANK`` alone
    (a single-node launcher) counts as the rank. Without them: rank 0 of 1."""
    env = os.environ if env is None else env
    world_size = int(env.get("WORLD_SIZE", "1") or 1)
    rank = env.get("RANK") or env.get("LOCAL_RANK") or "0"
    return Shard(rank=int(rank), world_size=world_size)


# --------------------------------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class InputFile:
    """One input: a JSON/JSONL/Parquet file, a saved ``datasets`` folder or an ``hf://`` dataset.

    Attributes:
        path: the file, folder or ``hf://`` name.
        kind: ``json`` | ``jsonl`` | ``parquet`` | ``arrow`` (saved dataset) | ``hf`` (``datasets.load_dataset``).
        options: for the format adapter (a LLaMA-Factory ``dataset_info.json`` entry, a column mapping).
        streaming: ``hf`` only: ``load_dataset(..., streaming=True)`` (nothing downloaded ahead).
    """

    path: str
    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)
    streaming: bool = False


@dataclass(frozen=True)
class HubSpec:
    """``hf://PATH[:CONFIG][@SPLIT]``: PATH is what ``datasets.load_dataset`` takes (a hub id or a local folder)."""

    path: str
    config: str | None = None
    split: str | None = None

    @classmethod
    def parse(cls, text: str) -> HubSpec:
        """``hf://HuggingFaceM4/the_cauldron:ai2d@train`` -> path, config ``ai2d``, split ``train``.

        The split may carry a slice (``@train[:1000]``); config and split are read after the last ``/``.
        """
        if not text.startswith(HUB_PREFIX):
            raise ValueError(f"{text!r} is not an hf:// dataset name")
        body = text[len(HUB_PREFIX) :]
        head, slash, tail = body.rpartition("/")
        tail, _, split = tail.partition("@")
        tail, _, config = tail.partition(":")
        path = f"{head}{slash}{tail}"
        if not path.strip("./"):
            raise ValueError(f"{text!r}: give a dataset, e.g. hf://HuggingFaceH4/llava-instruct-mix-vsft@train")
        return cls(path=path, config=config or None, split=split or None)

    def __str__(self) -> str:
        return (
            HUB_PREFIX
            + self.path
            + (f":{self.config}" if self.config else "")
            + (f"@{self.split}" if self.split else "")
        )


@dataclass(frozen=True)
class RawRow:
    """One input row before any format is applied.

    ``data`` is the parsed value (usually a dict); when the row could not be parsed, ``data`` is ``None``, ``error``
    holds the reason code (``invalid_json``, ``invalid_utf8``) and ``raw`` the text as read.
    """

    source: str
    data: Any = None
    raw: str | None = None
    error: str | None = None
    detail: str = ""
    input: InputFile | None = None


def list_inputs(paths: Iterable[str | Path]) -> list[InputFile]:
    """Expand files and folders into ``InputFile`` objects, in a stable order.

    A folder saved by ``datasets`` (``state.json`` or ``dataset_dict.json`` inside) is one input; any other folder
    contributes its ``.json``/``.jsonl``/``.parquet`` files, recursively and sorted.

    Raises:
        FileNotFoundError: a path does not exist or a folder holds no data files.
        ValueError: a file has a suffix that no reader handles.
    """
    files: list[InputFile] = []
    for raw in paths:
        if str(raw).startswith(HUB_PREFIX):
            HubSpec.parse(str(raw))  # a malformed name fails here, before any work
            files.append(InputFile(str(raw), "hf"))
            continue
        if _GLOB.search(str(raw)) and not Path(raw).exists():
            matches = sorted(glob.glob(str(raw), recursive=True))
            if not matches:
                raise FileNotFoundError(f"input pattern {str(raw)!r} matches no file")
            files.extend(list_inputs(matches))
            continue
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"input {str(raw)!r} does not exist")
        if path.is_dir():
            if is_saved_dataset(path):
                files.append(InputFile(str(path), "arrow"))
                continue
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in JSON_SUFFIXES + PARQUET_SUFFIXES
            )
            if not found:
                raise FileNotFoundError(f"folder {str(raw)!r} holds no .json, .jsonl or .parquet files")
            files.extend(_input_file(p) for p in found)
        else:
            files.append(_input_file(path))
    return files


def is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _input_file(path: Path) -> InputFile:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return InputFile(str(path), "jsonl")
    if suffix == ".json":
        return InputFile(str(path), "json")
    if suffix in PARQUET_SUFFIXES:
        return InputFile(str(path), "parquet")
    raise ValueError(
        f"{path}: unsupported input type {suffix!r}; give .json, .jsonl, .parquet or a saved dataset folder"
    )


def iter_rows(inputs: Iterable[InputFile], shard: Shard | None = None) -> Iterator[RawRow]:
    """Stream every row of ``inputs`` (only this shard's rows when ``shard`` is given), with bounded memory."""
    shard = shard or Shard()
    index = 0
    for item in inputs:
        readers = {
            "jsonl": _iter_jsonl,
            "json": _iter_json,
            "parquet": _iter_parquet,
            "arrow": _iter_saved_dataset,
            "hf": _iter_hub,
        }
        for row_or_skip in readers[item.kind](item, shard, index):
            index += 1
            if row_or_skip is not None:
                yield row_or_skip


def _iter_jsonl(item: InputFile, shard: Shard, start: int) -> Iterator[RawRow | None]:
    with open(item.path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if not shard.owns(start):
                start += 1
                yield None
                continue
            start += 1
            source = f"{item.path}:{lineno}"
            if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                raw = line.decode("utf-8", errors="replace").rstrip("\r\n")
                yield RawRow(source, raw=raw[:_RAW_PREVIEW], error="invalid_utf8", detail=str(err), input=item)
                continue
            try:
                yield RawRow(source, data=json.loads(text), input=item)
            except json.JSONDecodeError as err:
                yield RawRow(
                    source, raw=text.rstrip("\r\n")[:_RAW_PREVIEW], error="invalid_json", detail=str(err), input=item
                )


def _iter_json(item: InputFile, shard: Shard, start: int) -> Iterator[RawRow | None]:
    """A ``.json`` file: a top-level array streamed element by element, or a sequence of JSON values (one object, or
    JSON Lines saved under a ``.json`` name). Invalid UTF-8 inside an element rejects that element only."""
    for lineno, value, raw, error, detail in _json_values(item.path):
        if not shard.owns(start):
            start += 1
            yield None
            continue
        start += 1
        source = f"{item.path}:{lineno}"
        if error:
            yield RawRow(source, raw=raw[:_RAW_PREVIEW], error=error, detail=detail, input=item)
        else:
            yield RawRow(source, data=value, input=item)


def _json_values(path: str) -> Iterator[tuple[int, Any, str, str | None, str]]:
    """Yield ``(line, value, raw, error, detail)`` for each element of a JSON file, reading it in chunks."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        buf = f.read(_READ_CHARS)
        eof = len(buf) < _READ_CHARS
        if buf.startswith("\ufeff"):
            buf = buf[1:]
        pos = 0
        line = 1
        in_array = None  # unknown until the first non-space character

        def more() -> bool:
            nonlocal buf, pos, eof
            if eof:
                return False
            chunk = f.read(max(_READ_CHARS, len(buf) - pos))
            eof = len(chunk) == 0
            buf = buf[pos:] + chunk
            pos = 0
            return bool(chunk)

        def skip(chars: str) -> None:
            nonlocal pos, line
            while True:
                while pos < len(buf) and buf[pos] in chars:
                    line += buf[pos] == "\n"
                    pos += 1
                if pos < len(buf) or not more():
                    return

        skip(" \t\r\n")
        if pos >= len(buf):
            return
        in_array = buf[pos] == "["
        if in_array:
            pos += 1
        while True:
            skip(" \t\r\n," if in_array else " \t\r\n")
            if pos >= len(buf):
                if in_array:
                    yield line, None, "", "invalid_json", "unexpected end of file inside the top-level array"
                return
            if in_array and buf[pos] == "]":
                return
            start_line = line
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as err:
                    if len(buf) - pos < _MAX_ELEMENT_CHARS and more():
                        continue
                    raw = buf[pos : pos + _RAW_PREVIEW]
                    yield (
                        start_line,
                        None,
                        _unescape(raw),
                        "invalid_json",
                        f"{err.msg} (the rest of the file is skipped)",
                    )
                    return
            raw = buf[pos:end]
            line += raw.count("\n")
            pos = end
            if _SURROGATE.search(raw):
                yield start_line, None, _unescape(raw), "invalid_utf8", "bytes that are not valid UTF-8"
            else:
                yield start_line, value, "", None, ""


def _unescape(text: str) -> str:
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def _iter_parquet(item: InputFile, shard: Shard, start: int) -> Iterator[RawRow | None]:
    import pyarrow.parquet as pq

    # buffer_size: column chunks are read in pieces, so a shard written as one huge row group stays bounded too
    parquet = pq.ParquetFile(item.path, buffer_size=1 << 20, pre_buffer=False)
    size = _BATCH_ROWS_MEDIA if schema_has_binary(parquet.schema_arrow) else _BATCH_ROWS
    yield from _table_rows(parquet.iter_batches(batch_size=size), item, item.path, shard, start)


def _table_rows(
    batches: Iterable[Any], item: InputFile, label: str, shard: Shard, start: int
) -> Iterator[RawRow | None]:
    """Rows of Arrow batches; only this shard's rows are converted to Python."""
    row = 0
    for batch in batches:
        n = batch.num_rows
        owned = [i for i in range(n) if shard.owns(start + i)]
        if len(owned) == n:
            datas = batch.to_pylist()
        else:
            datas = batch.take(owned).to_pylist() if owned else []
        it = iter(datas)
        for i in range(n):
            yield RawRow(f"{label}#{row + i}", data=next(it), input=item) if shard.owns(start + i) else None
        start += n
        row += n


def schema_has_binary(schema: Any) -> bool:
    """True when an Arrow schema holds binary data anywhere (``datasets.Image`` structs ``{bytes, path}``)."""
    import pyarrow as pa

    def binary(t: Any) -> bool:
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
            return True
        if pa.types.is_struct(t):
            return any(binary(t.field(i).type) for i in range(t.num_fields))
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            return binary(t.value_type)
        return False

    return any(binary(f.type) for f in schema)


def may_embed_media(item: InputFile) -> bool:
    """Whether an input can carry embedded media: Parquet or saved datasets with binary columns, ``hf://`` inputs.

    JSON cannot hold bytes; a build with any input that can writes the content-addressed media store.
    """
    if item.kind == "hf":
        return True
    if item.kind == "parquet":
        import pyarrow.parquet as pq

        return schema_has_binary(pq.read_schema(item.path))
    if item.kind == "arrow":
        from datasets import Features

        path = Path(item.path)
        infos = [*path.glob("dataset_info.json"), *path.glob("*/dataset_info.json")]
        features = [json.loads(p.read_text()).get("features") for p in infos]
        return any(f and schema_has_binary(Features.from_dict(f).arrow_schema) for f in features)
    return False


def _iter_saved_dataset(item: InputFile, shard: Shard, start: int) -> Iterator[RawRow | None]:
    from datasets import Dataset, load_from_disk

    loaded = load_from_disk(item.path)
    splits = [("", loaded)] if isinstance(loaded, Dataset) else sorted(loaded.items())
    for split, dataset in splits:
        label = f"{item.path}[{split}]" if split else item.path
        rows = _table_rows(_arrow_batches(dataset), item, label, shard, start)
        for row in rows:
            start += 1
            yield row


def load_hub_dataset(item: InputFile) -> Any:
    """``datasets.load_dataset`` for an ``hf://`` input (offline from the HF cache with ``HF_HUB_OFFLINE=1``).

    Raises:
        FileNotFoundError: the dataset is neither reachable nor cached (the message says how to get it).
    """
    import datasets

    spec = HubSpec.parse(item.path)
    try:
        return datasets.load_dataset(spec.path, spec.config, split=spec.split, streaming=item.streaming)
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        raise FileNotFoundError(
            f"{item.path}: {err}. Download it once online (or copy the HF cache), then run with HF_HUB_OFFLINE=1; "
            "a local dataset folder is hf://./FOLDER"
        ) from err


def _iter_hub(item: InputFile, shard: Shard, start: int) -> Iterator[RawRow | None]:
    from datasets import Dataset, IterableDataset

    loaded = load_hub_dataset(item)
    spec = HubSpec.parse(item.path)
    splits = [(spec.split or "", loaded)] if isinstance(loaded, (Dataset, IterableDataset)) else sorted(loaded.items())
    for split, dataset in splits:
        label = str(HubSpec(spec.path, spec.config, split or None))
        for row in _table_rows(_arrow_batches(dataset), item, label, shard, start):
            start += 1
            yield row


def _arrow_batches(dataset: Any) -> Iterator[Any]:
    """A ``datasets`` Dataset or IterableDataset as Arrow tables: media stay ``{bytes, path}`` structs as stored
    (nothing is decoded), and rows are converted batch by batch."""
    features = getattr(dataset, "features", None)
    media = features is None or schema_has_binary(features.arrow_schema)
    size = _BATCH_ROWS_MEDIA if media else _BATCH_ROWS
    yield from dataset.with_format("arrow").iter(batch_size=size)


# --------------------------------------------------------------------------------------------------------------------
# Fingerprints and versions


def fingerprint_inputs(inputs: Iterable[InputFile], *, hash_below: int = 0) -> list[dict[str, Any]]:
    """Path, size and mtime of every input file (the files of a saved dataset folder too); a SHA-256 of the content
    for files smaller than ``hash_below`` bytes."""
    out = []
    for item in inputs:
        if item.kind == "hf":
            out.append(_hub_fingerprint(item))
            continue
        path = Path(item.path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for p in files:
            st = p.stat()
            entry: dict[str, Any] = {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
            if st.st_size < hash_below:
                entry["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
            if item.options:
                entry["options"] = dict(item.options)
            out.append(entry)
    return out


def _hub_fingerprint(item: InputFile) -> dict[str, Any]:
    """An ``hf://`` input: its name, options and, when loaded ahead (not streaming), the datasets fingerprints."""
    entry: dict[str, Any] = {"path": item.path, "streaming": item.streaming}
    if item.options:
        entry["options"] = dict(item.options)
    if not item.streaming:
        loaded = load_hub_dataset(item)
        parts = {"": loaded} if hasattr(loaded, "_fingerprint") else dict(loaded)
        entry["fingerprints"] = {split: getattr(ds, "_fingerprint", None) for split, ds in sorted(parts.items())}
        entry["rows"] = {split: len(ds) for split, ds in sorted(parts.items())}
    return entry


def package_versions(names: Iterable[str] = ()) -> dict[str, str]:
    from importlib import metadata

    wanted = ["postvl", "transformers", "datasets", "pyarrow", "pillow", "opencv-python-headless", "torch", *names]
    versions = {"python": sys.version.split()[0]}
    for name in wanted:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def config_hash(config: Mapping[str, Any], fingerprints: list[dict[str, Any]], shard: Shard) -> str:
    payload = json.dumps(
        {"config": config, "inputs": fingerprints, "world_size": shard.world_size}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------------
# Writing


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON to ``path.tmp`` then rename it over ``path`` (readers see the old file or the new one)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2, sort_keys=True, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_stage_config(
    cls: type, path: str | Path | None, overrides: Mapping[str, Any], *, required: Iterable[str], command: str
) -> Any:
    """A stage's config dataclass ``cls`` from a YAML file (optional) with ``overrides`` (those not ``None``) on top.

    Raises:
        ValueError: the file is not a mapping, a key is unknown (the message names the closest one), or a
            ``required`` key is unset.
    """
    import dataclasses
    import difflib

    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a {command} config must be a mapping of keys, got {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in known]
    if unknown:
        hints = [
            f"{k!r}" + (f" (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(k, known, n=1)) else "")
            for k in unknown
        ]
        raise ValueError(f"{path or 'config'}: unknown keys {', '.join(hints)}; known: {', '.join(known)}")
    missing = [k for k in required if data.get(k) in (None, "", [], ())]
    if missing:
        raise ValueError(f"{command}: set {', '.join(missing)} (on the command line or in the YAML)")
    return cls(**data)


def record_schema(kind: str) -> Any:
    """The Arrow schema of a stage's Parquet parts; ``text=None`` on media parts, as TRL's datasets have it."""
    import pyarrow as pa

    part = pa.struct([("type", pa.string()), ("text", pa.string())])
    msg = pa.struct([("role", pa.string()), ("content", pa.list_(part))])
    conversation = pa.list_(msg)
    common = {
        "id": pa.string(),
        "images": pa.list_(pa.string()),
        "videos": pa.list_(pa.string()),
        "num_tokens": pa.int64(),
        "meta": pa.string(),
    }
    if kind == "sft":
        types = common | {"messages": conversation, "answer": pa.string(), "answer_type": pa.string()}
        return pa.schema([(name, types[name]) for name in SFT_COLUMNS])
    if kind == "preference":
        types = common | {"prompt": conversation, "chosen": conversation, "rejected": conversation}
        return pa.schema([(name, types[name]) for name in PREFERENCE_COLUMNS])
    raise ValueError(f"record kind must be 'sft' or 'preference', got {kind!r}")


KIND_DIRS = {"sft": "data", "preference": "preference"}


def record_kind(record: Mapping[str, Any]) -> str:
    return "preference" if "chosen" in record else "sft"


class StageWriter:
    """Writes one stage folder for this rank; use as a context manager.

    ``keep(record)`` buffers kept records and flushes them as Parquet parts of ``chunk_size`` rows;
    ``reject(...)`` appends a line to this rank's rejects. ``close()`` (on leaving the ``with`` block without an
    exception) finishes this rank's files and shard marker; on rank 0 it then waits for every rank's marker and writes
    the merged ``rejected.jsonl``, ``stats.json`` and ``manifest.json``.

    Args:
        out_dir: the stage folder.
        stage: the stage's name, written into every reject line.
        config: the resolved config (JSON-serialisable), saved in the manifest and part of the rerun key.
        inputs: the inputs, fingerprinted into the manifest.
        shard: this process's rank and world size.
        chunk_size: kept records per Parquet part.
        merge_timeout: seconds rank 0 waits for the other ranks' markers.
        finish_manifest: called on rank 0 with the manifest and every rank's ``extra`` (set by the stage before the
            writer closes, e.g. media store counts) just before the manifest is written.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        stage: str,
        config: Mapping[str, Any],
        inputs: list[InputFile] | None = None,
        shard: Shard | None = None,
        chunk_size: int = 10_000,
        merge_timeout: float = 24 * 3600,
        finish_manifest: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None,
    ) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.out = Path(out_dir)
        self.stage = stage
        self.config = dict(config)
        self.inputs = list(inputs or [])
        self.shard = shard or Shard()
        self.chunk_size = chunk_size
        self.merge_timeout = merge_timeout
        self.finish_manifest = finish_manifest
        self.extra: dict[str, Any] = {}  # this rank's stage-specific facts, saved in its marker
        self.counts = Counts()
        self.domains: dict[str, int] = {}
        self.fingerprints = fingerprint_inputs(self.inputs)
        self.key = config_hash(self.config, self.fingerprints, self.shard)
        # per kind, the buffered kept records in order: runs of row dicts (``keep``) and Arrow tables (``keep_table``)
        self._pieces: dict[str, list[Any]] = {kind: [] for kind in KIND_DIRS}
        self._buffered = {kind: 0 for kind in KIND_DIRS}
        self._parts: list[str] = []
        self._chunks = {kind: 0 for kind in KIND_DIRS}
        self._started = time.time()
        self._rejects = None
        self.done = self._marker_matches()

    # -- paths

    @property
    def marker(self) -> Path:
        return self.out / "_shards" / f"rank-{self.shard.rank:05d}.json"

    @property
    def rejects_path(self) -> Path:
        return self.out / "_shards" / f"rejected-{self.shard.rank:05d}.jsonl"

    def _marker_matches(self) -> bool:
        if not self.marker.is_file():
            return False
        try:
            marker = json.loads(self.marker.read_text())
        except json.JSONDecodeError:
            return False
        return marker.get("key") == self.key and all((self.out / p).is_file() for p in marker.get("parts", []))

    # -- lifecycle

    def __enter__(self) -> StageWriter:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "_shards").mkdir(exist_ok=True)
        if self.shard.is_main:  # the folder stops looking complete before anything in it changes
            for name in ("stats.json", "manifest.json"):
                (self.out / name).unlink(missing_ok=True)
        if self.done:
            logger.info(
                "rank %d: finished shard found in %s with the same config and inputs; skipping",
                self.shard.rank,
                self.out,
            )
            return self
        self.marker.unlink(missing_ok=True)
        self._remove_own_parts()
        tmp = self.rejects_path.with_name(f".{self.rejects_path.name}.tmp")
        self._rejects = tmp.open("w", encoding="utf-8")
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        elif self._rejects is not None:
            self._rejects.close()

    def _remove_own_parts(self) -> None:
        for sub in KIND_DIRS.values():
            folder = self.out / sub
            if not folder.is_dir():
                continue
            # only this rank's files: other ranks may be writing theirs right now
            for part in [*folder.glob("part-*.parquet"), *folder.glob(".part-*.tmp")]:
                index = int(part.name.split("-")[1].split(".")[0])
                if index % self.shard.world_size == self.shard.rank:
                    part.unlink(missing_ok=True)

    # -- records

    def keep(self, record: Mapping[str, Any]) -> None:
        """Buffer a kept record (``meta`` as a dict or JSON string); flush a Parquet part when the buffer is full."""
        self._check_open()
        kind = record_kind(record)
        row = dict(record)
        meta = decode_meta(row.get("meta"))
        domain = meta.get("domain")
        if domain:
            self.domains[str(domain)] = self.domains.get(str(domain), 0) + 1
        row["meta"] = encode_meta(meta)
        pieces = self._pieces[kind]
        if not pieces or not isinstance(pieces[-1], list):
            pieces.append([])
        pieces[-1].append(row)
        self.counts.keep()
        self._buffered[kind] += 1
        if self._buffered[kind] >= self.chunk_size:
            self._flush(kind)

    def keep_table(self, table: Any, domains: Iterable[str | None]) -> None:
        """Buffer kept records that are already Arrow rows of this stage's schema (written as they are).

        A stage that keeps records unchanged (the rule filters) hands over slices of the batches it read instead of
        row dicts: no conversion to Python and back.

        Args:
            table: a ``pyarrow.Table`` or ``RecordBatch`` with the columns of ``record_schema`` for its kind (the
                columns may come in any order; ``meta`` is the JSON string).
            domains: each row's ``meta["domain"]`` (``None`` when untagged), for the per-domain counts.
        """
        import pyarrow as pa

        self._check_open()
        kind = "preference" if "chosen" in table.schema.names else "sft"
        schema = record_schema(kind)
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        names = set(table.schema.names)
        columns = [
            table.column(f.name) if f.name in names else pa.nulls(table.num_rows, f.type) for f in schema
        ]  # a column the input lacks is null, as ``keep`` writes a missing key
        table = pa.Table.from_arrays(columns, names=list(schema.names)).cast(schema)
        for domain in domains:
            if domain:
                self.domains[str(domain)] = self.domains.get(str(domain), 0) + 1
        if not table.num_rows:
            return
        self._pieces[kind].append(table)
        self.counts.keep(table.num_rows)
        self._buffered[kind] += table.num_rows
        if self._buffered[kind] >= self.chunk_size:
            self._flush(kind)

    def reject(
        self,
        reason: str,
        *,
        source: str,
        record_id: str | None = None,
        detail: str = "",
        record: Mapping[str, Any] | None = None,
        raw: str | None = None,
        stage: str | None = None,
    ) -> None:
        """Count a rejected record and write its line: id, reason, stage, source and the record (or raw text).

        ``stage`` names an earlier stage that rejected the record (a build run in-process on raw input); default:
        this writer's stage.
        """
        self._check_open()
        line: dict[str, Any] = {"id": record_id, "reason": reason, "stage": stage or self.stage, "source": source}
        if detail:
            line["detail"] = detail
        if record is not None:
            line["record"] = record
        if raw is not None:
            line["raw"] = raw
        self._rejects.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        self.counts.reject(reason)

    def _check_open(self) -> None:
        if self._rejects is None:
            raise RuntimeError("StageWriter is not open (use it in a `with` block) or this shard is already done")

    def _flush(self, kind: str, final: bool = False) -> None:
        """Write the buffered records of ``kind`` as parts of ``chunk_size`` rows (a smaller last part when final)."""
        if not self._buffered[kind]:
            return
        import pyarrow as pa

        schema = record_schema(kind)
        tables = [
            piece
            if isinstance(piece, pa.Table)
            else pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in piece], schema=schema)
            for piece in self._pieces[kind]
        ]
        table = pa.concat_tables(tables)
        start = 0
        while table.num_rows - start >= self.chunk_size or (final and start < table.num_rows):
            self._write_part(kind, table.slice(start, self.chunk_size))
            start += self.chunk_size
        rest = table.slice(start)
        self._pieces[kind] = [rest] if rest.num_rows else []
        self._buffered[kind] = rest.num_rows

    def _write_part(self, kind: str, table: Any) -> None:
        import pyarrow.parquet as pq

        folder = self.out / KIND_DIRS[kind]
        folder.mkdir(exist_ok=True)
        index = self._chunks[kind] * self.shard.world_size + self.shard.rank
        self._chunks[kind] += 1
        final = folder / f"part-{index:05d}.parquet"
        tmp = folder / f".part-{index:05d}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self._parts.append(final.relative_to(self.out).as_posix())

    def close(self) -> None:
        """Finish this rank (parts, rejects, marker); on rank 0, merge all ranks and write stats and manifest last."""
        if not self.done:
            for kind in self._pieces:
                self._flush(kind, final=True)
            assert self._rejects is not None
            self._rejects.flush()
            os.fsync(self._rejects.fileno())
            self._rejects.close()
            os.replace(self._rejects.name, self.rejects_path)
            self._rejects = None
            seconds = time.time() - self._started
            marker = {
                "key": self.key,
                "rank": self.shard.rank,
                "parts": self._parts,
                "counts": self.counts.as_dict(),
                "domains": self.domains,
                "seconds": round(seconds, 3),
                "extra": self.extra,
            }
            write_json_atomic(self.marker, marker)
            self.done = True
        if self.shard.is_main:
            self._merge()

    def _merge(self) -> None:
        markers = self._wait_for_markers()
        counts = Counts()
        domains: dict[str, int] = {}
        per_rank = []
        for marker in markers:
            c = marker["counts"]
            counts.merge(Counts(kept=c["kept"], reasons=dict(c["reasons"])))
            for domain, n in marker.get("domains", {}).items():
                domains[domain] = domains.get(domain, 0) + n
            per_rank.append({"rank": marker["rank"], "seconds": marker["seconds"], **c})
        listed = {part for marker in markers for part in marker["parts"]}
        for sub in KIND_DIRS.values():  # parts left by an earlier run with more ranks
            for part in (self.out / sub).glob("part-*.parquet") if (self.out / sub).is_dir() else []:
                if part.relative_to(self.out).as_posix() not in listed:
                    part.unlink()
        tmp = self.out / ".rejected.jsonl.tmp"
        with tmp.open("wb") as merged:
            for rank in range(self.shard.world_size):
                with (self.out / "_shards" / f"rejected-{rank:05d}.jsonl").open("rb") as part:
                    while chunk := part.read(1 << 20):
                        merged.write(chunk)
        os.replace(tmp, self.out / "rejected.jsonl")
        seconds = max((m["seconds"] for m in markers), default=0.0)
        stats = counts.as_dict() | {
            "domains": dict(sorted(domains.items())),
            "timings": {
                "seconds": seconds,
                "records_per_second": round(counts.total / seconds, 1) if seconds else None,
                "ranks": per_rank,
            },
        }
        if stats["total"] != stats["kept"] + stats["rejected"]:  # Counts guarantees it; a broken merge must not pass
            raise RuntimeError(f"stats do not add up: {stats}")
        manifest = {
            "stage": self.stage,
            "config": self.config,
            "inputs": self.fingerprints,
            "world_size": self.shard.world_size,
            "key": self.key,
            "versions": package_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if self.finish_manifest is not None:
            self.finish_manifest(manifest, [m.get("extra") or {} for m in markers])
        write_json_atomic(self.out / "manifest.json", manifest)
        write_json_atomic(self.out / "stats.json", stats)
        self.stats = stats

    def _wait_for_markers(self) -> list[dict[str, Any]]:
        deadline = time.time() + self.merge_timeout
        paths = [self.out / "_shards" / f"rank-{r:05d}.json" for r in range(self.shard.world_size)]
        while True:
            markers = []
            for p in paths:
                if p.is_file():
                    marker = json.loads(p.read_text())
                    if marker.get("key") == self.key:
                        markers.append(marker)
            if len(markers) == len(paths):
                return markers
            if time.time() > deadline:
                missing = [p.name for p in paths if not p.is_file()]
                raise TimeoutError(
                    f"rank 0 waited {self.merge_timeout:.0f}s for shard markers {missing} in {self.out}"
                )
            time.sleep(0.5)


# --------------------------------------------------------------------------------------------------------------------
# Reading a finished stage


def input_paths(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """A stage's ``IN`` as a tuple of paths (one path may be given as a string)."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def is_stage_folder(path: str | Path) -> bool:
    """A finished stage folder (``stats.json`` and ``manifest.json`` are written last)."""
    path = Path(path)
    return path.is_dir() and (path / "manifest.json").is_file() and (path / "stats.json").is_file()


def wait_for_file(path: str | Path, timeout: float) -> None:
    """Wait until ``path`` exists (rank 0 writes a stage's ``stats.json`` once every rank has finished)."""
    import time

    deadline = time.time() + timeout
    while not Path(path).is_file():
        if time.time() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for {path}; did rank 0 fail?")
        time.sleep(0.5)


def stage_settings(folder: str | Path, depth: int = 0) -> tuple[str | None, dict[str, Any] | None]:
    """Media root and pixel limits from a stage's manifest, following its input stages back to the build."""
    folder = Path(folder)
    manifest = folder / "manifest.json"
    config = json.loads(manifest.read_text()).get("config", {}) if manifest.is_file() else {}
    media_root, pixels = config.get("media_root"), config.get("pixels")
    if (media_root is None or pixels is None) and depth < 8:
        for key in ("input", "inputs", "input_folder"):
            values = config.get(key)
            for value in [values] if isinstance(values, str) else values or []:
                if is_stage_folder(value) and Path(value).resolve() != folder.resolve():
                    earlier_root, earlier_pixels = stage_settings(Path(value), depth + 1)
                    media_root, pixels = media_root or earlier_root, pixels or earlier_pixels
    return media_root, pixels


def read_stats(stage_dir: str | Path) -> dict[str, Any]:
    """``stats.json`` of a finished stage; raises if the stage did not finish."""
    path = Path(stage_dir) / "stats.json"
    if not path.is_file():
        raise FileNotFoundError(f"{stage_dir} is not a finished stage (no stats.json); rerun the stage that writes it")
    return json.loads(path.read_text())


def read_stage(stage_dir: str | Path, *, kind: str = "sft", batch_size: int = 1024) -> Iterator[dict[str, Any]]:
    """Stream the kept records of a finished stage folder, ``meta`` decoded to a dict.

    Args:
        stage_dir: a folder written by ``StageWriter``.
        kind: ``sft`` (``data/``) or ``preference`` (``preference/``).
        batch_size: rows read at a time.

    Raises:
        FileNotFoundError: the folder has no ``stats.json`` (the stage did not finish).
    """
    import pyarrow.parquet as pq

    read_stats(stage_dir)
    if kind not in KIND_DIRS:
        raise ValueError(f"kind must be one of {sorted(KIND_DIRS)}, got {kind!r}")
    folder = Path(stage_dir) / KIND_DIRS[kind]
    for part in sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []:
        for batch in pq.ParquetFile(part).iter_batches(batch_size=batch_size):
            for row in batch.to_pylist():
                row["meta"] = decode_meta(row.get("meta"))
                yield row
