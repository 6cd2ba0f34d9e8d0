"""Real datasets in: rows in the exact schemas of the public hub datasets, with embedded images, built by ``auto``.

Each fixture is a ``datasets.Dataset`` with the features its dataset card declares (column names and feature types
as published), written to Parquet the way the hub stores it (``Image`` as a ``{bytes, path}`` struct, ``path`` a bare
name that does not exist here). Images differ per row in size and colour, so their order and count can be checked
from the stored files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, Features, Image, List, Sequence, Value
from hostile_media import jpeg_bytes, png_bytes, png_header_only
from PIL import Image as PILImage

from postvl.chatml.build import BuildConfig, RecordBuilder, media_roots, resolve_inputs, run_build, stage_from_inputs
from postvl.io import RawRow, Shard, read_stage, read_stats
from postvl.media import PixelConfig
from postvl.media_store import MediaStore

TYPED = List({"text": Value("string"), "type": Value("string")})
TYPED_MESSAGES = List({"content": TYPED, "role": Value("string")})
STRING_MESSAGES = List({"content": Value("string"), "role": Value("string")})


def _img(w: int, h: int, color: tuple[int, int, int], name: str | None = None, fmt: str = "png") -> dict:
    data = png_bytes(w, h, color) if fmt == "png" else jpeg_bytes(w, h, color)
    return {"bytes": data, "path": name}


def _write(tmp: Path, name: str, rows: dict, features: Features) -> Path:
    path = tmp / name / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def _build(tmp: Path, inputs: list[str], **kw) -> tuple[dict, list[dict], Path]:
    out = tmp / "out"
    result = run_build(BuildConfig(inputs=tuple(inputs), out=str(out), **kw), progress=False)
    records = list(read_stage(out)) + list(read_stage(out, kind="preference"))
    return result.stats, records, out


def _sizes(record: dict, out: Path) -> list[tuple[int, int]]:
    """(width, height) of each stored image, read back from the files the record points at."""
    sizes = []
    for rel in record["images"]:
        assert rel.startswith("media/") and (out / rel).is_file()
        with PILImage.open(out / rel) as im:
            sizes.append(im.size)
    return sizes


def _roles(messages: list[dict]) -> list[str]:
    return [m["role"] for m in messages]


def _parts(message: dict) -> list[str]:
    return [p["type"] for p in message["content"]]


# --------------------------------------------------------------------------------------------------------------------
# One fixture per public schema


def test_llava_instruct_mix_vsft(tmp_path):
    """HuggingFaceH4/llava-instruct-mix-vsft: typed parts with ``index``; ``images: sequence: image``."""
    features = Features(
        {
            "messages": List(
                {
                    "content": List({"index": Value("int64"), "text": Value("string"), "type": Value("string")}),
                    "role": Value("string"),
                }
            ),
            "images": Sequence(Image()),
        }
    )

    def part(kind, text=None, index=None):
        return {"index": index, "text": text, "type": kind}

    rows = {
        "messages": [
            [
                {"content": [part("image", index=0), part("text", "What is this?")], "role": "user"},
                {"content": [part("text", "A red square.")], "role": "assistant"},
                {"content": [part("text", "And its size?")], "role": "user"},
                {"content": [part("text", "40 by 30.")], "role": "assistant"},
            ],
            [  # two images; the parts name them in the other order
                {
                    "content": [part("image", index=1), part("image", index=0), part("text", "Compare.")],
                    "role": "user",
                },
                {"content": [part("text", "The first is wider.")], "role": "assistant"},
            ],
            [  # text only
                {"content": [part("text", "Hi")], "role": "user"},
                {"content": [part("text", "Hello.")], "role": "assistant"},
            ],
        ],
        "images": [
            [_img(40, 30, (255, 0, 0), "COCO_train2014_000000000009.jpg")],
            [_img(50, 20, (0, 255, 0), "a.jpg"), _img(60, 40, (0, 0, 255), "b.jpg", fmt="jpeg")],
            [],
        ],
    }
    parquet = _write(tmp_path, "vsft", rows, features)
    stats, records, out = _build(tmp_path, [str(parquet)])
    assert (stats["total"], stats["kept"], stats["rejected"]) == (3, 3, 0)
    first, second, text_only = records
    assert _roles(first["messages"]) == ["user", "assistant", "user", "assistant"]
    assert _parts(first["messages"][0]) == ["image", "text"] and _sizes(first, out) == [(40, 30)]
    assert _sizes(second, out) == [(60, 40), (50, 20)]  # placeholder order, by index
    assert second["images"][0].endswith(".jpg") and second["images"][1].endswith(".png")
    assert text_only["images"] == [] and "media" not in text_only["meta"]
    media = first["meta"]["media"]["images"][0]
    assert media["origin"] == "embedded" and media["original"] == "COCO_train2014_000000000009.jpg"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["media_root"] == str(out.resolve())
    assert manifest["media"]["embedded_references"] == 3 and manifest["media"]["store_files"] == 3


def test_trl_llava_instruct_mix_prompt_completion(tmp_path):
    """trl-lib/llava-instruct-mix: ``prompt``/``completion`` with string content; images before the first user text."""
    features = Features({"images": List(Image()), "prompt": STRING_MESSAGES, "completion": STRING_MESSAGES})
    rows = {
        "images": [[_img(30, 30, (9, 9, 9)), _img(20, 40, (90, 9, 9))]],
        "prompt": [
            [
                {"content": "You are helpful.", "role": "system"},
                {"content": "Which is taller?", "role": "user"},
            ]
        ],
        "completion": [[{"content": "The second.", "role": "assistant"}]],
    }
    stats, (record,), out = _build(tmp_path, [str(_write(tmp_path, "mix", rows, features))])
    assert stats["kept"] == 1
    system, user, assistant = record["messages"]
    assert system["content"] == [{"type": "text", "text": "You are helpful."}]
    assert _parts(user) == ["image", "image", "text"] and user["content"][2]["text"] == "Which is taller?"
    assert assistant["content"][0]["text"] == "The second." and _sizes(record, out) == [(30, 30), (20, 40)]


@pytest.mark.parametrize(
    "columns", [("chosen", "rejected", "images", "prompt"), ("chosen", "rejected", "prompt", "images")]
)
def test_rlaif_v_formatted_and_trl_rlaif_v(tmp_path, columns):
    """HuggingFaceH4/rlaif-v_formatted and trl-lib/rlaif-v: typed prompt/chosen/rejected + ``images``."""
    values = {
        "chosen": [[{"content": [{"text": "A cat on a mat.", "type": "text"}], "role": "assistant"}]],
        "rejected": [[{"content": [{"text": "A dog.", "type": "text"}], "role": "assistant"}]],
        "images": [[_img(64, 48, (1, 2, 3), fmt="jpeg")]],
        "prompt": [
            [{"content": [{"text": None, "type": "image"}, {"text": "Describe.", "type": "text"}], "role": "user"}]
        ],
    }
    kinds = {
        "chosen": TYPED_MESSAGES,
        "rejected": TYPED_MESSAGES,
        "images": Sequence(Image()),
        "prompt": TYPED_MESSAGES,
    }
    parquet = _write(tmp_path, "rlaif", {c: values[c] for c in columns}, Features({c: kinds[c] for c in columns}))
    stats, (record,), out = _build(tmp_path, [str(parquet)])
    assert stats["kept"] == 1 and _parts(record["prompt"][0]) == ["image", "text"]
    assert (
        record["chosen"][0]["content"][0]["text"] == "A cat on a mat." and record["rejected"][0]["role"] == "assistant"
    )
    assert _sizes(record, out) == [(64, 48)]


def test_openbmb_rlaif_v_flat(tmp_path):
    """openbmb/RLAIF-V-Dataset: flat ``image``, ``question``, ``chosen``, ``rejected`` and bookkeeping strings."""
    names = [
        "ds_name",
        "image",
        "question",
        "chosen",
        "rejected",
        "origin_dataset",
        "origin_split",
        "idx",
        "image_path",
    ]
    features = Features({n: Image() if n == "image" else Value("string") for n in names})
    rows = {n: [] for n in names}
    for i in range(2):
        row = {
            "ds_name": "RLAIF-V",
            "image": _img(40 + i, 30, (i, 0, 0), f"{i}.jpg"),
            "question": f"What is in picture {i}?",
            "chosen": "A tree.",
            "rejected": "A car.",
            "origin_dataset": "COCO",
            "origin_split": '{"model": "x"}',
            "idx": str(i),
            "image_path": f"coco/{i}.jpg",
        }
        for n in names:
            rows[n].append(row[n])
    stats, records, out = _build(tmp_path, [str(_write(tmp_path, "flat", rows, features))])
    assert (stats["total"], stats["kept"]) == (2, 2)
    record = records[1]
    assert _parts(record["prompt"][0]) == ["image", "text"] and record["prompt"][0]["content"][1]["text"].endswith(
        "1?"
    )
    assert record["chosen"][0]["content"][0]["text"] == "A tree." and _sizes(record, out) == [(41, 30)]
    assert record["meta"]["extra"]["origin_dataset"] == "COCO" and record["meta"]["format"] == "rlaif_v"


def test_the_cauldron_keeps_every_turn(tmp_path):
    """HuggingFaceM4/the_cauldron: ``images`` + ``texts: [{user, assistant, source}]``, several turns, no tags."""
    features = Features(
        {
            "images": Sequence(Image()),
            "texts": List({"user": Value("string"), "assistant": Value("string"), "source": Value("string")}),
        }
    )
    rows = {
        "images": [[_img(70, 50, (5, 5, 5))], [_img(30, 30, (6, 6, 6)), _img(31, 30, (7, 7, 7))]],
        "texts": [
            [
                {"user": "Question: what shape?\nAnswer:", "assistant": "Square.", "source": "ai2d"},
                {"user": "What colour?", "assistant": "Grey.", "source": "ai2d"},
                {"user": "How many?", "assistant": "One.", "source": "ai2d"},
            ],
            [{"user": "Same?", "assistant": "No.", "source": "ai2d"}],
        ],
    }
    stats, (first, second), out = _build(tmp_path, [str(_write(tmp_path, "ai2d", rows, features))])
    assert stats["kept"] == 2
    assert _roles(first["messages"]) == ["user", "assistant"] * 3
    assert [m["content"][-1]["text"] for m in first["messages"][1::2]] == ["Square.", "Grey.", "One."]
    assert _parts(first["messages"][0]) == ["image", "text"] and _parts(first["messages"][2]) == ["text"]
    assert _parts(second["messages"][0]) == ["image", "image", "text"] and _sizes(second, out) == [(30, 30), (31, 30)]
    assert first["meta"]["extra"]["source_dataset"] == "ai2d"


def test_llava_onevision_with_null_image(tmp_path):
    """lmms-lab/LLaVA-OneVision-Data: ``id``, nullable ``image``, ``conversations`` with ``<image>``; text only."""
    features = Features(
        {
            "id": Value("string"),
            "image": Image(),
            "conversations": List({"from": Value("string"), "value": Value("string")}),
            "data_source": Value("string"),
        }
    )
    rows = {
        "id": ["ov-1", "ov-2"],
        "image": [_img(90, 60, (3, 3, 3)), None],
        "conversations": [
            [
                {"from": "human", "value": "<image>\nRead the sign."},
                {"from": "gpt", "value": "STOP"},
                {"from": "human", "value": "Colour?"},
                {"from": "gpt", "value": "Red."},
            ],
            [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}],
        ],
        "data_source": ["sroie", "magpie"],
    }
    stats, (first, text_only), out = _build(tmp_path, [str(_write(tmp_path, "ov", rows, features))])
    assert stats["kept"] == 2 and first["id"] == "ov-1" and text_only["images"] == []
    assert _parts(first["messages"][0]) == ["image", "text"] and _roles(first["messages"]) == ["user", "assistant"] * 2
    assert _sizes(first, out) == [(90, 60)] and first["meta"]["extra"]["data_source"] == "sroie"


def _seed_hf_cache(cache: Path, repo_id: str, config: str, rows: dict, features: Features, tmp: Path) -> None:
    """Put a dataset into an HF datasets cache the way ``load_dataset(repo_id, config)`` leaves it, so that it loads
    offline (``HF_HUB_OFFLINE=1``) like any dataset downloaded before."""
    import datasets

    src = tmp / "hub_src"
    (src / config).mkdir(parents=True)
    Dataset.from_dict(rows, features=features).to_parquet(str(src / config / "train-00000-of-00001.parquet"))
    (src / "README.md").write_text(
        f"---\nconfigs:\n- config_name: {config}\n  data_files:\n  - split: train\n    path: {config}/train-*\n---\n"
    )
    staging = tmp / "hub_staging"
    datasets.load_dataset(str(src), config, split="train", cache_dir=str(staging))
    (version,) = (staging / "hub_src" / config).iterdir()
    owner, name = repo_id.split("/")
    target = cache / f"{owner}___{name}" / config / version.name
    target.parent.mkdir(parents=True)
    shutil.copytree(version, target)
    for arrow in target.rglob("hub_src-train*.arrow"):
        arrow.rename(arrow.with_name(arrow.name.replace("hub_src", name)))


def test_llamafactory_hub_entry_from_the_offline_cache(tmp_path, monkeypatch):
    """BUAADreamer/llava-en-zh-2k through LLaMA-Factory's ``dataset_info.json`` entry (``hf_hub_url`` + ``subset``),
    loaded by ``datasets.load_dataset`` from the HF cache with the hub unreachable."""
    import datasets

    features = Features({"messages": STRING_MESSAGES, "images": Sequence(Image())})
    rows = {
        "messages": [
            [
                {"role": "user", "content": "<image>What is the man doing?"},
                {"role": "assistant", "content": "Surfing."},
                {"role": "user", "content": "Is it safe?"},
                {"role": "assistant", "content": "Mostly."},
            ]
        ],
        "images": [[_img(80, 64, (20, 40, 60), "000000033471.jpg")]],
    }
    cache = tmp_path / "hf_cache"
    _seed_hf_cache(cache, "BUAADreamer/llava-en-zh-2k", "en", rows, features, tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    info = tmp_path / "lf" / "dataset_info.json"
    info.parent.mkdir()
    entry = {
        "hf_hub_url": "BUAADreamer/llava-en-zh-2k",
        "subset": "en",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }
    info.write_text(json.dumps({"llava_1k_en": entry}))
    stats, (record,), out = _build(tmp_path, [f"{info}:llava_1k_en"])
    assert stats["kept"] == 1 and _roles(record["messages"]) == ["user", "assistant"] * 2
    assert _parts(record["messages"][0]) == ["image", "text"] and _sizes(record, out) == [(80, 64)]
    assert record["meta"]["source"] == "hf://BUAADreamer/llava-en-zh-2k:en@train#0"
    # the same dataset by name
    stats, (again,), _ = _build(tmp_path / "by_name", ["hf://BUAADreamer/llava-en-zh-2k:en@train"])
    assert stats["kept"] == 1 and again["images"] == record["images"]


# --------------------------------------------------------------------------------------------------------------------
# Inputs: hub names, local dataset folders, streaming, globs, saved datasets, PIL images, column mappings


@pytest.fixture
def vsft_folder(tmp_path) -> Path:
    """A local dataset folder as downloaded (``data/train-*.parquet``): four rows, two share one image."""
    features = Features({"messages": STRING_MESSAGES, "images": List(Image())})
    same = _img(32, 32, (200, 100, 0), "same.png")
    rows = {
        "messages": [
            [{"role": "user", "content": f"<image>Question {i}"}, {"role": "assistant", "content": f"Answer {i}"}]
            for i in range(4)
        ],
        "images": [[same], [same], [_img(33, 32, (1, 1, 1))], [_img(34, 32, (2, 2, 2))]],
    }
    folder = tmp_path / "vsft_local"
    (folder / "data").mkdir(parents=True)
    ds = Dataset.from_dict(rows, features=features)
    ds.select([0, 1]).to_parquet(str(folder / "data" / "train-00000-of-00002.parquet"))
    ds.select([2, 3]).to_parquet(str(folder / "data" / "train-00001-of-00002.parquet"))
    return folder


@pytest.mark.parametrize("streaming", [False, True])
def test_hf_local_folder_and_streaming_store_identical_images_once(tmp_path, vsft_folder, streaming):
    stats, records, out = _build(tmp_path, [f"hf://{vsft_folder}@train"], streaming=streaming, format="sharegpt")
    assert (stats["total"], stats["kept"]) == (4, 4)
    assert records[0]["images"] == records[1]["images"]  # the same bytes: one file
    assert len({r["images"][0] for r in records}) == 3
    stored = [p for p in (out / "media").rglob("*") if p.is_file()]
    assert len(stored) == 3 and not list((out / "media").rglob(".*.tmp"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["media"]["embedded_references"] == 4 and manifest["media"]["store_files"] == 3
    assert manifest["inputs"][0]["streaming"] is streaming


def test_parquet_glob_and_ranks_share_the_store(tmp_path, vsft_folder):
    pattern = str(vsft_folder / "data" / "train-*.parquet")
    out = tmp_path / "ranks"
    cfg = BuildConfig(inputs=(pattern,), out=str(out))
    run_build(cfg, shard=Shard(1, 2), progress=False)  # rank 1 first: rank 0 merges once both markers exist
    result = run_build(cfg, shard=Shard(0, 2), progress=False)
    assert (result.stats["total"], result.stats["kept"]) == (4, 4)
    records = list(read_stage(out))
    assert len({p for r in records for p in r["images"]}) == 3
    assert json.loads((out / "manifest.json").read_text())["media"]["store_files"] == 3


def test_concurrent_writers_of_one_image_never_clash(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    data = png_bytes(20, 20, (4, 5, 6))
    stores = [MediaStore(tmp_path) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda s: s.put_image({"bytes": data, "path": None})[0], stores))
    assert len(set(paths)) == 1 and Path(paths[0]).read_bytes() == data
    assert [p.name for p in (tmp_path / "media").rglob("*") if p.is_file()] == [Path(paths[0]).name]


def test_saved_dataset_and_pil_images(tmp_path):
    features = Features({"messages": STRING_MESSAGES, "images": List(Image())})
    pil = PILImage.new("RGB", (44, 22), (10, 20, 30))
    rows = {"messages": [[{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "Hey"}]]}
    Dataset.from_dict(rows | {"images": [[pil]]}, features=features).save_to_disk(str(tmp_path / "saved"))
    stats, (record,), out = _build(tmp_path, [str(tmp_path / "saved")])
    assert stats["kept"] == 1 and _sizes(record, out) == [(44, 22)]
    # a PIL image handed over in a row (a datasets.Dataset that decodes): saved as datasets encodes it
    cfg = BuildConfig(inputs=(str(tmp_path / "saved"),), out=str(tmp_path / "pil_out"))
    roots = media_roots(cfg, resolve_inputs(cfg.inputs))
    builder = RecordBuilder(cfg, roots, PixelConfig())
    outcome = builder.build(RawRow("memory#0", data={"messages": rows["messages"][0], "images": [pil]}))
    assert outcome.reason is None and outcome.record["images"][0].endswith(".png")
    with PILImage.open(Path(roots.media_root) / outcome.record["images"][0]) as im:
        assert im.size == (44, 22) and im.getpixel((0, 0)) == (10, 20, 30)


def test_column_mapping_for_another_layout(tmp_path):
    features = Features(
        {"dialog": List({"speaker": Value("string"), "text": Value("string")}), "pictures": List(Image())}
    )
    rows = {
        "dialog": [[{"speaker": "human", "text": "<image>Count the dots."}, {"speaker": "bot", "text": "Three."}]],
        "pictures": [[_img(25, 25, (0, 0, 0))]],
    }
    parquet = _write(tmp_path, "custom", rows, features)
    stats, _, _ = _build(tmp_path / "auto", [str(parquet)])
    assert stats["reasons"] == {"unknown_format": 1}
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        "formatting: sharegpt\ncolumns: {messages: dialog, images: pictures}\n"
        "tags: {role_tag: speaker, content_tag: text, user_tag: human, assistant_tag: bot}\n"
    )
    stats, (record,), out = _build(tmp_path / "yaml", [str(parquet)], mapping=str(mapping))
    assert (
        stats["kept"] == 1
        and _roles(record["messages"]) == ["user", "assistant"]
        and _sizes(record, out) == [(25, 25)]
    )
    tags = {"role_tag": "speaker", "content_tag": "text", "user_tag": "human", "assistant_tag": "bot"}
    stats, _, _ = _build(
        tmp_path / "cli", [str(parquet)], columns={"messages": "dialog", "images": "pictures"}, tags=tags
    )
    assert stats["kept"] == 1
    with pytest.raises(ValueError, match="did you mean 'images'"):
        BuildConfig(inputs=(str(parquet),), out=str(tmp_path / "x"), columns={"imagse": "pictures"})


# --------------------------------------------------------------------------------------------------------------------
# Hostile media


def test_hostile_embedded_media_are_rejected_and_the_rest_builds(tmp_path):
    features = Features({"messages": STRING_MESSAGES, "images": List(Image())})
    truncated = jpeg_bytes(50, 50, (9, 9, 9))[:-200]
    cases = [
        ("good", _img(40, 40, (1, 1, 1))),
        ("bomb", {"bytes": png_header_only(60000, 60000), "path": "bomb.png"}),
        ("over_cap", _img(200, 100, (2, 2, 2))),
        ("undecodable", {"bytes": b"this is not an image", "path": "x.jpg"}),
        ("zero_bytes", {"bytes": b"", "path": "zero.png"}),
        ("truncated", {"bytes": truncated, "path": "t.jpg"}),
        ("good_too", _img(30, 40, (3, 3, 3))),
    ]
    rows = {
        "messages": [
            [{"role": "user", "content": f"<image>{name}"}, {"role": "assistant", "content": "ok"}]
            for name, _ in cases
        ],
        "images": [[image] for _, image in cases],
    }
    parquet = _write(tmp_path, "hostile", rows, features)
    stats, records, out = _build(tmp_path, [str(parquet)], max_image_pixels=10_000)
    assert stats["total"] == stats["kept"] + stats["rejected"] == 7
    assert stats["reasons"] == {"media_too_large": 2, "corrupt_media": 2, "empty_media": 1}
    assert [r["messages"][0]["content"][1]["text"] for r in records] == ["good", "good_too"]
    rejects = {
        json.loads(line)["record"]["messages"][0]["content"]: json.loads(line) for line in open(out / "rejected.jsonl")
    }
    assert "10000 pixels" in rejects["<image>over_cap"]["detail"] and "200x100" in rejects["<image>over_cap"]["detail"]
    assert rejects["<image>bomb"]["reason"] == "media_too_large" and "10000" in rejects["<image>bomb"]["detail"]
    assert rejects["<image>bomb"]["record"]["images"][0]["bytes"].startswith("<")  # bytes summarised, not dumped
    assert len([p for p in (out / "media").rglob("*") if p.is_file()]) == 2  # nothing hostile was stored
    assert read_stats(out)["kept"] == 2


def test_filter_and_tag_accept_hub_and_embedded_inputs(tmp_path, vsft_folder):
    """``postvl filter`` / ``tag`` / ``sample`` build raw inputs with ``stage_from_inputs``: the same inputs work."""
    for name, inputs in (("hub", [f"hf://{vsft_folder}@train"]), ("parquet", [str(vsft_folder / "data")])):
        folder = stage_from_inputs(inputs, tmp_path / name / "_build", progress=False)
        assert read_stats(folder)["kept"] == 4
        manifest = json.loads((folder / "manifest.json").read_text())
        root = Path(manifest["config"]["media_root"])
        assert all((root / p).is_file() for r in read_stage(folder) for p in r["images"])


def test_worker_processes_share_the_store(tmp_path, vsft_folder):
    stats, records, out = _build(tmp_path, [str(vsft_folder / "data")], num_proc=2)
    assert (stats["total"], stats["kept"]) == (4, 4) and records[0]["images"] == records[1]["images"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["media"]["embedded_references"] == 4 and manifest["media"]["store_files"] == 3


def test_paths_beside_embedded_media_are_confined_and_linked(tmp_path):
    """A struct without bytes is a path: resolved under the input's folder, refused outside it, put in the store."""
    features = Features({"messages": STRING_MESSAGES, "images": List(Image())})
    data = tmp_path / "data"
    data.mkdir()
    (data / "cat.png").write_bytes(png_bytes(36, 24, (7, 8, 9)))
    (tmp_path / "secret.png").write_bytes(png_bytes(10, 10, (0, 0, 0)))
    rows = {
        "messages": [[{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}]] * 4,
        "images": [
            [{"bytes": None, "path": "cat.png"}],
            [{"bytes": None, "path": "../secret.png"}],
            [{"bytes": None, "path": "https://example.com/x.png"}],
            [_img(36, 24, (7, 8, 9))],  # the same bytes as cat.png, embedded
        ],
    }
    table = [{"messages": m, "images": i} for m, i in zip(rows["messages"], rows["images"])]
    # written by pyarrow: datasets' to_parquet would embed the files, and this row keeps its path
    pq.write_table(pa.Table.from_pylist(table, schema=features.arrow_schema), data / "rows.parquet")
    stats, (linked, embedded), out = _build(tmp_path, [str(data / "rows.parquet")])
    assert stats["reasons"] == {"media_outside_root": 1, "url_not_allowed": 1}
    assert linked["images"] == embedded["images"] and _sizes(linked, out) == [(36, 24)]
    media = linked["meta"]["media"]["images"][0]
    assert (media["origin"], media["original"], media["width"], media["height"]) == ("file", "cat.png", 36, 24)
    manifest = json.loads((out / "manifest.json").read_text())["media"]
    assert (manifest["file_references"], manifest["embedded_references"], manifest["store_files"]) == (1, 1, 1)


def test_command_line_mapping_and_hub_name(tmp_path, vsft_folder, capsys):
    from postvl.chatml.main import main

    out = tmp_path / "cli"
    args = [f"hf://{vsft_folder}@train", "--out", str(out), "--max-image-pixels", "1000"]
    assert (
        main(args + ["--columns", "messages=messages,images=images", "--tags", "role_tag=role,content_tag=content"])
        == 0
    )
    stats = read_stats(out)
    assert stats["reasons"] == {"media_too_large": 4} and "media_too_large" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(vsft_folder), "--out", str(out), "--columns", "messages"])  # not KEY=VALUE


def test_filter_built_from_embedded_media_resolves_them_against_its_own_build(tmp_path, vsft_folder):
    """A ``--media-root`` given with raw input is the build's; the stored media then live under the built folder."""
    from postvl.filtering.main import main as filter_main

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "filter"
    argv = [str(vsft_folder / "data"), "--out", str(out), "--only", "rules", "--media-root", str(elsewhere)]
    assert filter_main(argv) == 0
    root = Path(json.loads((out / "manifest.json").read_text())["config"]["media_root"])
    assert root.resolve() == (out / "_build").resolve()
    records = list(read_stage(out))
    assert records and all((root / p).is_file() for r in records for p in r["images"])
