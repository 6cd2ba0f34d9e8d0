"""Family x stage: build, tag, filter and sample on a tiny model of each family (the data side of every stage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from postvl.families import FAMILY_NAMES, FamilyMismatchError, get_family
from postvl.io import read_stage, read_stats
from postvl.records import message

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BOX = [100, 50, 900, 450]  # in pixels of the 1000 x 500 source image


def _row(id_, user, reply, images=(), videos=(), **extra):
    return {
        "id": id_,
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
        "images": list(images),
        "videos": list(videos),
        **extra,
    }


ROWS = [
    _row("img", "<image>Which colour is it? A. red B. green", "B", ["wide.png"], answer="B", answer_type="choice"),
    _row("vid", "<video>Does it move?", "Yes.", videos=["clip.mp4"], answer="yes", answer_type="yesno"),
    _row(
        "box",
        "<image>Find the sky.",
        f'```json\n[{{"bbox_2d": {BOX}, "label": "sky"}}]\n```',
        ["wide.png"],
        answer=json.dumps(BOX),
        answer_type="bbox",
    ),
    _row("gif", "<video>What happens?", "Nothing.", videos=["still.gif"]),
    _row("text", "What is 2 + 3?", "5", answer="5", answer_type="number"),
    {
        "id": "asst_img",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Draw it"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Here: "}, {"type": "image"}]},
        ],
        "images": ["wide.png"],
    },
]
QWEN3_REJECTS = {"gif": "video_without_fps", "asst_img": "media_in_text_only_turn"}


class ScriptedGenerator:
    """Test-only generator: ``answer(request, i)`` is the i-th sample's text."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.calls = []

    def generate(self, requests, params):
        from postvl.generation import Sample

        self.calls.append(list(requests))
        return [[Sample(self.answer(r, i), 8, "stop") for i in range(params.n)] for r in requests]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    import cv2
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("family_raw")
    Image.new("RGB", (1000, 500), (0, 120, 0)).save(root / "wide.png")
    writer = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 4.0, (90, 50))
    for i in range(12):
        writer.write(np.full((50, 90, 3), i * 20, np.uint8))
    writer.release()
    frames = [Image.new("RGB", (64, 64), (i * 40, 0, 0)) for i in range(4)]
    frames[0].save(root / "still.gif", save_all=True, append_images=frames[1:])  # no frame durations
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return root


@pytest.fixture(scope="module")
def built(raw, tiny_family_model, tmp_path_factory):
    from postvl.chatml.build import BuildConfig, run_build

    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            out = tmp_path_factory.mktemp(f"built_{name}") / "build"
            cfg = BuildConfig(inputs=(str(raw / "data.jsonl"),), out=str(out), model=tiny_family_model(name))
            run_build(cfg, progress=False)
            cache[name] = out
        return cache[name]

    return get


def _processor_tokens(processor, family, record, media_root: Path) -> list[int]:
    """What the family's own processor feeds the model for a built record (media decoded the processor's way)."""
    from PIL import Image
    from transformers.video_utils import load_video

    from postvl.chatml.render import render

    images = [Image.open(media_root / p).convert("RGB") for p in record["images"]]
    videos = [load_video(str(media_root / p), backend="opencv") for p in record["videos"]]
    kwargs = {"video_metadata": [m for _, m in videos], "do_sample_frames": True} if videos else {}
    out = processor(
        text=[render(record["messages"], family=family)],
        images=images or None,
        videos=[v for v, _ in videos] or None,
        videos_kwargs=kwargs,
    )
    return list(out["input_ids"][0])


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_build_for_each_family(built, raw, tiny_family_model, name):
    from transformers import AutoProcessor

    from postvl.media import smart_resize

    family = get_family(name)
    out = built(name)
    stats = read_stats(out)
    expected_rejects = QWEN3_REJECTS if family.video_timestamps else {}
    assert stats["reasons"] == {r: 1 for r in expected_rejects.values()}
    assert stats["total"] == len(ROWS) == stats["kept"] + stats["rejected"]
    records = {r["id"]: r for r in read_stage(out)}
    assert set(records) == {r["id"] for r in ROWS} - set(expected_rejects)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["pixels"]["family"] == name
    processor = AutoProcessor.from_pretrained(tiny_family_model(name))
    for record in records.values():
        assert record["meta"]["family"] == name
        assert record["num_tokens"] == len(_processor_tokens(processor, name, record, raw)), record["id"]

    # grounding: absolute resized pixels for Qwen2.5-VL, 0..1000 for the others; the source box is kept
    box = records["box"]
    pixels = manifest["config"]["pixels"]
    rh, rw = smart_resize(500, 1000, family.factor, pixels["min_pixels"], pixels["max_pixels"])
    if family.grounding == "absolute":
        want = [
            round(BOX[0] / 1000 * rw),
            round(BOX[1] / 500 * rh),
            round(BOX[2] / 1000 * rw),
            round(BOX[3] / 500 * rh),
        ]
    else:
        want = [100, 100, 900, 900]
    assert json.loads(box["answer"]) == want
    assert f'"bbox_2d": {want}' in box["messages"][1]["content"][0]["text"]
    assert box["meta"]["grounding"]["answer_original"] == BOX
    assert box["meta"]["grounding"]["convention"] == family.grounding
    assert f'"bbox_2d": {BOX}' in box["meta"]["grounding"]["source"]["texts"]["1.0"]  # as given, for a rebuild

    (video,) = records["vid"]["meta"]["media"]["videos"]
    assert ("layout" in video) is family.video_timestamps
    if family.video_timestamps:
        # 12 frames at 4 fps sampled at 2 fps: int(12 / 4 * 2) = 6 frames at linspace(0, 11, 6).round() =
        # 0 2 4 7 9 11; each temporal patch of 2 frames is stamped with their mean time (index / 4 fps)
        assert video["layout"]["timestamps"] == pytest.approx([0.25, 1.375, 2.5])


def test_build_refuses_a_family_other_than_the_models(raw, tiny_family_model, tmp_path):
    from postvl.chatml.build import BuildConfig, run_build

    cfg = BuildConfig(
        inputs=(str(raw / "data.jsonl"),),
        out=str(tmp_path / "x"),
        model=tiny_family_model("qwen3_vl"),
        family="qwen2_vl",
    )
    with pytest.raises(ValueError, match="--family qwen2_vl but .* is a Qwen3-VL model"):
        run_build(cfg, progress=False)


def test_build_for_a_family_without_a_model(raw, tmp_path):
    from postvl.chatml.build import BuildConfig, run_build

    out = tmp_path / "b"
    run_build(BuildConfig(inputs=(str(raw / "data.jsonl"),), out=str(out), family="qwen3_vl"), progress=False)
    records = {r["id"]: r for r in read_stage(out)}
    assert {r["meta"]["family"] for r in records.values()} == {"qwen3_vl"}
    assert records["text"]["num_tokens"] is None  # no tokenizer without a model
    assert json.loads(records["box"]["answer"]) == [100, 100, 900, 900]


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_tag_requests_follow_the_family(built, raw, tiny_family_model, name):
    """The LLM tagger renders with the model's own template and loads videos the way the family's processor counts
    them (Qwen3-VL and Qwen3.5 timestamps from the frames' place in the file)."""
    from transformers import AutoProcessor, AutoTokenizer

    from postvl.generation import SamplingParams, _processor_inputs
    from postvl.instag.llm import LLMTagger
    from postvl.instag.taxonomy import load_taxonomy
    from postvl.io import stage_settings
    from postvl.media import PixelConfig

    family = get_family(name)
    folder = tiny_family_model(name)
    media_root, pixels = stage_settings(built(name))
    tagger = LLMTagger(
        load_taxonomy(),
        None,
        AutoTokenizer.from_pretrained(folder),
        media_root=str(media_root),
        pixels=PixelConfig(**pixels),
        params=SamplingParams(n=1, temperature=0.0, max_tokens=8),
        max_videos=1,
    )
    record = next(r for r in read_stage(built(name)) if r["id"] == "vid")
    request = tagger.request(record)
    # Qwen3-VL and Qwen3.5 add no system turn; a tagging prompt asks for labels, never for thinking
    assert request.prompt.startswith("<|im_start|>user\n") is (family.default_system is None)
    processor = AutoProcessor.from_pretrained(folder)
    ids = _processor_inputs(processor, [request])["input_ids"][0].tolist()
    (video,) = record["meta"]["media"]["videos"]
    assert ids.count(processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")) == video["tokens"]  # as built
    if family.video_timestamps:
        text = processor.tokenizer.decode(ids)
        stamps = record["meta"]["media"]["videos"][0]["layout"]["timestamps"]
        assert [f"<{t:.1f} seconds>" in text for t in stamps] == [True] * len(stamps)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_filter_keeps_family_records_as_built(built, tmp_path, name):
    from postvl.filtering.main import DEFAULT_CONFIG
    from postvl.filtering.stage import FilterConfig, run_filter

    source = built(name)
    out = tmp_path / "clean"
    run_filter(
        FilterConfig(inputs=(str(source),), out=str(out), config=str(DEFAULT_CONFIG), only="rules"), progress=False
    )
    stats = read_stats(out)
    assert stats["total"] == stats["kept"] + stats["rejected"] == read_stats(source)["kept"]
    before = {r["id"]: r for r in read_stage(source)}
    for record in read_stage(out):
        assert record["meta"]["family"] == name
        assert record["num_tokens"] == before[record["id"]]["num_tokens"]
        assert record["meta"].get("media") == before[record["id"]]["meta"].get("media")


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_sample_asks_and_verifies_in_the_familys_convention(built, raw, tiny_family_model, tmp_path, name):
    from transformers import AutoProcessor

    from postvl.rejection_sampling.stage import load_config, run_sampling

    family = get_family(name)
    gold = next(r for r in read_stage(built(name)) if r["id"] == "box")["answer"]

    def answer(request, i):
        # a thinking family's prompt opens <think>: its samples close it before the final answer
        return ("Let me look.\n</think>\n\n" if family.thinking else "") + final(request, i)

    def final(request, i):
        if "Find the sky" in request.prompt:  # the gold box in the family's convention, then a wrong one
            box = json.loads(gold) if i % 2 == 0 else [0, 0, 5, 5]
            return f'The sky is on top.\nAnswer: [{{"bbox_2d": {box}, "label": "sky"}}]'
        if "Does it move" in request.prompt:
            return "It changes.\nAnswer: yes"
        if "Which colour" in request.prompt:
            return "Green.\nAnswer: B"
        return "2 + 3 = 5, so \\boxed{5}."

    folder = tiny_family_model(name)
    gen = ScriptedGenerator(answer)
    cfg = load_config(
        None,
        inputs=(str(built(name)),),
        out=str(tmp_path / "cot"),
        model=folder,
        backend="transformers",
        k=4,
        max_tokens=64,
        max_model_len=512,
        max_videos=1,
    )
    run_sampling(cfg, generator=gen, progress=False)
    prompts = {r.key: r.prompt for batch in gen.calls for r in batch}
    assert prompts["box"].startswith("<|im_start|>system\n") is (family.default_system is not None)
    convention = "absolute pixel" if family.grounding == "absolute" else "relative to the image, as integers from 0"
    assert convention in prompts["box"]
    kept = {r["id"]: r for r in read_stage(tmp_path / "cot")}
    assert kept["box#s0"]["meta"]["sampling"]["n_correct"] == 2
    assert {r["meta"]["family"] for r in kept.values()} == {name}
    processor = AutoProcessor.from_pretrained(folder)
    for key in ("box#s0", "vid#s0"):
        assert kept[key]["num_tokens"] == len(_processor_tokens(processor, name, kept[key], raw)), key


def test_sample_refuses_data_built_for_another_family(built, tiny_family_model, tmp_path):
    from postvl.rejection_sampling.stage import load_config, run_sampling

    cfg = load_config(
        None,
        inputs=(str(built("qwen2_5_vl")),),
        out=str(tmp_path / "cot"),
        model=tiny_family_model("qwen3_vl"),
        backend="transformers",
        k=2,
        max_tokens=16,
        max_model_len=512,
    )
    with pytest.raises(FamilyMismatchError, match="built for Qwen2.5-VL .* the model is Qwen3-VL.*rebuild"):
        run_sampling(cfg, generator=ScriptedGenerator(lambda r, i: "x"), progress=False)


@pytest.mark.parametrize("enable_thinking", [None, False])
def test_qwen3_5_thinking_round_trip_sample_select_sft_labels(
    built, raw, tiny_family_model, tmp_path, enable_thinking
):
    """sample -> select -> SFT labels: the chain of thought lands in <think>; the verifier reads the answer after."""
    from transformers import AutoProcessor

    from postvl.chatml.render import IGNORE_INDEX, tokenize_with_labels
    from postvl.rejection_sampling.stage import load_config, run_sampling

    thinking = enable_thinking is None
    replies = [
        "It looks green, not A.\n</think>\n\nAnswer: B",  # correct: the final answer is B
        "Surely Answer: B.\n</think>\n\nAnswer: A",  # wrong: only the final answer counts, not the thinking
        "Still thinking... Answer: B",  # thinking never closed: no final answer
        "Green it is.\n</think>\n\nAnswer: B",
    ]

    def answer(request, i):
        if not thinking:
            return "Answer: B" if "Which colour" in request.prompt else "no"
        return replies[i] if "Which colour" in request.prompt else "x\n</think>\n\nno"

    folder = tiny_family_model("qwen3_5")
    gen = ScriptedGenerator(answer)
    overrides = {} if thinking else {"enable_thinking": False}
    cfg = load_config(
        None,
        inputs=(str(built("qwen3_5")),),
        out=str(tmp_path / "cot"),
        model=folder,
        backend="transformers",
        k=4,
        max_tokens=64,
        max_model_len=512,
        max_videos=1,
        pairs_per_question=1,
        **overrides,
    )
    run_sampling(cfg, generator=gen, progress=False)
    prompts = {r.key: r.prompt for batch in gen.calls for r in batch}
    opened, closed = "<|im_start|>assistant\n<think>\n", "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert prompts["img"].endswith(opened if thinking else closed)
    rows = {r["id"]: r for r in read_stage(tmp_path / "cot")}
    processor = AutoProcessor.from_pretrained(folder)
    if thinking:
        sampling = rows["img#s0"]["meta"]["sampling"]
        assert sampling["n_correct"] == 2  # samples 0 and 3; sample 1's thinking says B but its answer is A
        kept = rows["img#s0"]["messages"][-1]
        expected = "<think>\nIt looks green, not A.\n</think>\n\nAnswer: B<|im_end|>"
        assert kept == message("assistant", expected.removesuffix("<|im_end|>"))
        pairs = {r["id"]: r for r in read_stage(tmp_path / "cot", kind="preference")}
        chosen, rejected = (pairs["img#p0"][side][0]["content"][0]["text"] for side in ("chosen", "rejected"))
        assert chosen.endswith("</think>\n\nAnswer: B") and rejected.startswith("<think>\n")
    else:
        kept = rows["img#s0"]["messages"][-1]
        assert kept == message("assistant", "Answer: B")
        # records without reasoning train as the no-think template renders them: an empty think block
        expected = "<think>\n\n</think>\n\nAnswer: B<|im_end|>"
    record = rows["img#s0"]
    media = record["meta"]["media"]
    image_tokens = [m["tokens"] for m in media["images"]]
    ids, labels = tokenize_with_labels(record["messages"], processor, image_tokens, [])
    assert ids == _processor_tokens(processor, "qwen3_5", record, raw)
    assert len(ids) == record["num_tokens"]
    trained = processor.tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])
    assert trained == expected


def test_thinking_mode_is_refused_for_a_family_without_one(built, tiny_family_model, tmp_path):
    from postvl.rejection_sampling.stage import load_config, run_sampling

    cfg = load_config(
        None,
        inputs=(str(built("qwen3_vl")),),
        out=str(tmp_path / "cot"),
        model=tiny_family_model("qwen3_vl"),
        backend="transformers",
        k=2,
        max_tokens=16,
        max_model_len=512,
        enable_thinking=True,
    )
    with pytest.raises(ValueError, match="no thinking mode"):
        run_sampling(cfg, generator=ScriptedGenerator(lambda r, i: "x"), progress=False)


@pytest.mark.parametrize("enable_thinking", [None, False])
def test_qwen3_5_build_keeps_or_drops_the_reasoning(raw, tiny_family_model, tmp_path, enable_thinking):
    """build --no-enable-thinking: the records train on answers alone; by default the think block is kept."""
    from transformers import AutoProcessor

    from postvl.chatml.build import BuildConfig, run_build
    from postvl.chatml.render import IGNORE_INDEX, tokenize_with_labels

    rows = [
        _row("cot", "<image>Which colour is it?", "<think>\nIt is green.\n</think>\n\nB", ["wide.png"]),
        {
            "id": "pair",
            "prompt": [{"role": "user", "content": "<image>Which colour?"}],
            "chosen": [{"role": "assistant", "content": "<think>\nGreen.\n</think>\n\nB"}],
            "rejected": [{"role": "assistant", "content": "<think>\nRed?\n</think>\n\nA"}],
            "images": ["wide.png"],
        },
    ]
    (tmp_path / "cot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = tiny_family_model("qwen3_5")
    out = tmp_path / "build"
    cfg = BuildConfig(
        inputs=(str(tmp_path / "cot.jsonl"),), out=str(out), model=model, media_root=str(raw),
        enable_thinking=enable_thinking,
    )  # fmt: skip
    run_build(cfg, progress=False)
    assert json.loads((out / "manifest.json").read_text())["config"]["enable_thinking"] is enable_thinking
    (record,) = read_stage(out)
    (pair,) = read_stage(out, kind="preference")
    processor = AutoProcessor.from_pretrained(model)
    image_tokens = [m["tokens"] for m in record["meta"]["media"]["images"]]
    ids, labels = tokenize_with_labels(record["messages"], processor, image_tokens, [])
    assert ids == _processor_tokens(processor, "qwen3_5", record, raw) and len(ids) == record["num_tokens"]
    trained = processor.tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])
    if enable_thinking is False:
        assert record["messages"][-1] == message("assistant", "B")
        assert [pair["chosen"][0], pair["rejected"][0]] == [message("assistant", "B"), message("assistant", "A")]
        assert record["meta"]["reasoning_dropped"] == 1 and pair["meta"]["reasoning_dropped"] == 2
        assert trained == "<think>\n\n</think>\n\nB<|im_end|>"
    else:
        assert record["messages"][-1] == message("assistant", "<think>\nIt is green.\n</think>\n\nB")
        assert "reasoning_dropped" not in record["meta"]
        assert trained == "<think>\nIt is green.\n</think>\n\nB<|im_end|>"


def test_build_refuses_enable_thinking_for_a_family_without_one(raw, tiny_family_model, tmp_path):
    from postvl.chatml.build import BuildConfig, run_build

    cfg = BuildConfig(
        inputs=(str(raw / "data.jsonl"),), out=str(tmp_path / "b"), model=tiny_family_model("qwen3_vl"),
        enable_thinking=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match="enable_thinking is set but Qwen3-VL has no thinking mode"):
        run_build(cfg, progress=False)
    assert not (tmp_path / "b" / "stats.json").exists()


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_eval_asks_and_judges_in_the_familys_convention(built, tiny_family_model, tmp_path, monkeypatch, name):
    """postvl eval on data built for each family: the family's prompt (system turn, <think> opened for Qwen3.5), boxes
    asked and judged in its convention, exact accuracies from known outputs."""
    from postvl.evaluation.stage import EvalConfig, run_eval

    monkeypatch.setattr("postvl.evaluation.stage._load_tokenizer", lambda model: None)
    family = get_family(name)
    gold = next(r for r in read_stage(built(name)) if r["id"] == "box")["answer"]

    def answer(request, i):
        if "Find the sky" in request.prompt:  # the gold box in the family's convention, then a wrong one
            final = f'Answer: [{{"bbox_2d": {json.loads(gold) if i % 2 == 0 else [0, 0, 5, 5]}, "label": "sky"}}]'
        elif "Does it move" in request.prompt:
            final = "Answer: yes"
        elif "Which colour" in request.prompt:
            final = "Answer: B"
        else:
            final = "\\boxed{5}"
        return ("Let me look.\n</think>\n\n" if family.thinking else "") + final

    gen = ScriptedGenerator(answer)
    cfg = EvalConfig(
        inputs=(str(built(name)),), out=str(tmp_path / "eval"), models=(f"m={tiny_family_model(name)}",), k=2,
        max_tokens=64, max_model_len=512, max_videos=1,
    )  # fmt: skip
    result = run_eval(cfg, generators={"m": gen}, progress=False)
    prompts = {r.key: r.prompt for r in gen.calls[0]}
    assert sorted(prompts) == ["box", "img", "text", "vid"]
    assert prompts["box"].startswith("<|im_start|>system\n") is (family.default_system is not None)
    assert prompts["box"].endswith("<|im_start|>assistant\n" + ("<think>\n" if family.thinking else ""))
    convention = "absolute pixel" if family.grounding == "absolute" else "relative to the image, as integers from 0"
    assert convention in prompts["box"]
    m = result.report["models"]["m"]
    assert result.report["thinking"] is family.thinking
    assert m["by_answer_type"]["bbox"]["accuracy"] == 0.5
    assert m["overall"]["accuracy"] == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    # records without a gold (the gif and the assistant image, where the family's build kept them) are no_answer
    stats = result.stats
    assert (stats["kept"], stats["rejected"]) == (4, read_stats(built(name))["kept"] - 4)
