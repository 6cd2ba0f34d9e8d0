"""``postvl sample`` end to end: scripted answers for the selection logic, the transformers backend and real vLLM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from postvl.io import read_stage, read_stats
from postvl.rejection_sampling.stage import load_config, run_sampling


def scripted(request, i):
    """Known answers per question (see conftest.QUESTIONS); ``None`` is a sample cut by max_tokens."""
    p = request.prompt
    if "Is the square red?" in p:
        return "The square looks red.\nAnswer: yes" if i % 2 == 0 else "It looks blue to me.\nAnswer: no"
    if "Is there a square?" in p:  # all correct; the first one loops
        return "yes " * 12 + "\nAnswer: yes" if i == 0 else "There is one square.\nAnswer: yes"
    if "2 + 3" in p:
        answers = [None, "Adding two and three gives \\boxed{5}.", "2 + 3 = 5, so \\boxed{5}.", "So \\boxed{5}."]
        return answers[i]
    if "Which colour" in p:
        return "The square is blue.\nAnswer: B"
    raise AssertionError(f"a record without a ground truth was sampled: {p!r}")


def _config(built, out, model, **overrides):
    values = dict(
        inputs=(str(built),),
        out=str(out),
        model=model,
        backend="transformers",
        k=4,
        max_tokens=64,
        max_model_len=512,
        pairs_per_question=2,
    )
    return load_config(None, **(values | overrides))


def test_stage_keeps_correct_hygienic_samples_writes_pairs_and_counts_questions(
    built_dataset, tiny_model_small, fake_generator, tmp_path
):
    gen = fake_generator(scripted)
    result = run_sampling(_config(built_dataset, tmp_path / "cot", tiny_model_small), generator=gen, progress=False)
    out = tmp_path / "cot"

    stats = read_stats(out)
    assert (stats["total"], stats["kept"], stats["rejected"]) == (5, 4, 1)  # one count per input record
    assert stats["reasons"] == {"no_correct_sample": 1}
    inputs = {r["id"]: r for r in read_stage(built_dataset)}

    # the generator saw the record's own system prompt and the CoT instruction of the answer type
    prompts = {r.key: r.prompt for batch in gen.calls for r in batch}
    assert set(prompts) == {"q-yes-1", "q-yes-2", "q-math", "q-choice"}
    assert prompts["q-math"].startswith("<|im_start|>system\nYou are a careful grader.<|im_end|>")
    assert "What is 2 + 3?\nThink step by step" in prompts["q-math"] and "\\boxed{}" in prompts["q-math"]
    assert prompts["q-choice"].endswith(
        '"Answer: X", where X is the letter of the correct option.<|im_end|>\n<|im_start|>assistant\n'
    )

    kept = {r["id"]: r for r in read_stage(out)}
    assert set(kept) == {"q-yes-1#s0", "q-yes-2#s1", "q-math#s3", "q-free"}
    math = kept["q-math#s3"]  # the shortest correct sample; #s0 was truncated
    assert math["messages"][:-1] == inputs["q-math"]["messages"][:-1]  # the original question, no instruction
    assert math["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "So \\boxed{5}."}]}
    assert math["answer"] == "5" and math["images"] == inputs["q-math"]["images"]
    original_meta = inputs["q-math"]["meta"]
    assert {k: math["meta"][k] for k in original_meta} == original_meta  # meta grows, never rewritten
    sampling = math["meta"]["sampling"]
    assert (sampling["k"], sampling["n_correct"], sampling["n_hygienic"], sampling["pass_rate"]) == (4, 3, 3, 0.75)
    assert [v["reason"] for v in sampling["verdicts"]] == ["truncated", None, None, None]
    assert sampling["question_id"] == "q-math" and sampling["difficulty"] is None
    easy = kept["q-yes-2#s1"]["meta"]["sampling"]
    assert easy["difficulty"] == "too_easy" and easy["verdicts"][0]["reason"] == "repetition_loop"
    assert (easy["n_correct"], easy["n_hygienic"]) == (4, 3)
    # no ground truth: passed through untouched, with a note
    free = kept["q-free"]
    assert free["meta"].pop("sampling") == {"skipped": "no_answer"}
    assert free == inputs["q-free"]

    # num_tokens is what the processor feeds the model under the dataset's pixel limits
    from postvl.chatml.render import render
    from postvl.generation import apply_pixels, load_image
    from postvl.media import PixelConfig
    from postvl.modeling import load_processor

    processor = load_processor(tiny_model_small)
    apply_pixels(
        processor, PixelConfig(**json.loads((built_dataset / "manifest.json").read_text())["config"]["pixels"])
    )
    media_root = json.loads((built_dataset / "manifest.json").read_text())["config"]["media_root"]
    image = load_image(Path(media_root) / math["images"][0])
    expected = processor(text=[render(math["messages"], family="qwen2_5_vl")], images=[image])["input_ids"][0]
    assert math["num_tokens"] == len(expected)

    pairs = {r["id"]: r for r in read_stage(out, kind="preference")}
    assert set(pairs) == {"q-yes-1#p0", "q-math#p0"}  # one distinct wrong answer each; q-yes-2 had none
    pair = pairs["q-yes-1#p0"]
    assert pair["prompt"] == inputs["q-yes-1"]["messages"][:-1]
    assert pair["chosen"][0]["content"][0]["text"].endswith("Answer: yes")
    assert pair["rejected"][0]["content"][0]["text"].endswith("Answer: no")
    assert pair["images"] == inputs["q-yes-1"]["images"] and pair["num_tokens"] > 0
    assert pairs["q-math#p0"]["meta"]["sampling"]["rejected_reason"] == "truncated"

    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rejected] == [("q-choice", "no_correct_sample")]
    assert {v["reason"] for v in rejected[0]["record"]["meta"]["sampling"]["verdicts"]} == {"mismatch"}

    summary = json.loads((out / "sampling_stats.json").read_text())
    assert summary == result.sampling
    overall = summary["overall"]
    assert overall["questions"] == 4 and overall["pass@1"] == pytest.approx((2 / 4 + 4 / 4 + 3 / 4 + 0) / 4)
    assert overall["pass@k"] == 0.75 and overall["acceptance"] == 0.75
    assert (summary["too_easy"], summary["too_hard"], summary["no_answer"]) == (1, 1, 1)
    assert (summary["cot_records"], summary["pairs"]) == (3, 2)
    assert summary["by_domain"]["perception"]["questions"] == 3 and summary["by_answer_type"]["math"]["kept"] == 1
    assert summary["n_correct_hist"] == [1, 0, 1, 1, 1]
    assert (out / "pass_rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_several_diverse_samples_per_question_and_drop_too_easy(
    built_dataset, tiny_model_small, fake_generator, tmp_path
):
    cfg = _config(
        built_dataset,
        tmp_path / "cot",
        tiny_model_small,
        keep_per_question=2,
        selection="diverse",
        drop_too_easy=True,
        pairs_per_question=0,
    )
    result = run_sampling(cfg, generator=fake_generator(scripted), progress=False)
    stats = read_stats(tmp_path / "cot")
    assert (stats["total"], stats["kept"], stats["rejected"]) == (5, 3, 2)
    assert stats["reasons"] == {"no_correct_sample": 1, "too_easy": 1}
    ids = sorted(r["id"] for r in read_stage(tmp_path / "cot"))
    # q-math: the shortest (#s3, "So \\boxed{5}.") then the one least like it (#s1, not the shorter #s2 "... so
    # \\boxed{5}."); q-yes-1's two correct samples are the same text, kept once
    assert ids == ["q-free", "q-math#s1", "q-math#s3", "q-yes-1#s0"]
    assert not list(read_stage(tmp_path / "cot", kind="preference"))
    assert result.sampling["cot_records"] == 3  # q-free passed through: not a CoT record


def test_keep_no_answer_off_rejects_records_without_a_ground_truth(
    built_dataset, tiny_model_small, fake_generator, tmp_path
):
    out = tmp_path / "cot"
    cfg = _config(built_dataset, out, tiny_model_small, keep_no_answer=False, pairs_per_question=0)
    result = run_sampling(cfg, generator=fake_generator(scripted), progress=False)
    stats = read_stats(out)
    assert (stats["total"], stats["kept"], stats["rejected"]) == (5, 3, 2)
    assert stats["reasons"] == {"no_correct_sample": 1, "no_answer": 1}
    assert sorted(r["id"] for r in read_stage(out)) == ["q-math#s3", "q-yes-1#s0", "q-yes-2#s1"]  # samples only
    rejected = {r["id"]: r for r in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}
    assert rejected["q-free"]["reason"] == "no_answer" and rejected["q-free"]["record"]["id"] == "q-free"
    assert result.sampling["no_answer"] == 1

    from postvl.rejection_sampling.stage import summary_table

    columns = summary_table(stats, result.sampling, str(out)).columns
    rows, counts = columns[0]._cells, columns[1]._cells
    assert "  rejected: no_answer" in rows and counts[rows.index("no answer: passed through")] == "0"


def test_rerun_skips_a_finished_shard_and_a_changed_config_reruns(
    built_dataset, tiny_model_small, fake_generator, tmp_path
):
    cfg = _config(built_dataset, tmp_path / "cot", tiny_model_small)
    run_sampling(cfg, generator=fake_generator(scripted), progress=False)
    parts = {p: p.stat().st_mtime_ns for p in (tmp_path / "cot").rglob("part-*.parquet")}

    def never(request, i):
        raise AssertionError("a finished shard was sampled again")

    again = run_sampling(cfg, generator=fake_generator(never), progress=False)
    assert again.skipped and again.stats["total"] == 5
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cot").rglob("part-*.parquet")} == parts
    assert json.loads((tmp_path / "cot" / "sampling_stats.json").read_text())["cot_records"] == 3

    changed = _config(built_dataset, tmp_path / "cot", tiny_model_small, k=2)
    gen = fake_generator(scripted)
    rerun = run_sampling(changed, generator=gen, progress=False)
    assert not rerun.skipped and gen.calls
    assert rerun.sampling["k"] == 2 and rerun.stats["total"] == 5
    assert json.loads((tmp_path / "cot" / "manifest.json").read_text())["config"]["k"] == 2


def test_ranks_sample_their_own_shards_and_rank_0_merges(built_dataset, tiny_model_small, fake_generator, tmp_path):
    from postvl.io import Shard

    cfg = _config(built_dataset, tmp_path / "cot", tiny_model_small)
    gens = [fake_generator(scripted), fake_generator(scripted)]
    run_sampling(cfg, generator=gens[1], shard=Shard(1, 2), progress=False)  # rank 1 does not wait for rank 0
    result = run_sampling(cfg, generator=gens[0], shard=Shard(0, 2), progress=False)
    asked = [{r.key for batch in g.calls for r in batch} for g in gens]
    assert asked[0] and asked[1] and not asked[0] & asked[1]
    assert asked[0] | asked[1] == {"q-yes-1", "q-yes-2", "q-math", "q-choice"}
    assert (result.stats["total"], result.stats["kept"], result.stats["rejected"]) == (5, 4, 1)
    assert result.sampling["questions"] == 4 and result.sampling["pairs"] == 2
    assert len(list(read_stage(tmp_path / "cot"))) == 4


def test_raw_input_is_built_in_process_first(raw_dataset, tiny_model_small, fake_generator, tmp_path):
    cfg = _config(raw_dataset, tmp_path / "cot", tiny_model_small)
    result = run_sampling(cfg, generator=fake_generator(scripted), progress=False)
    assert read_stats(tmp_path / "cot" / "_build")["kept"] == 5
    assert (result.stats["total"], result.stats["kept"]) == (5, 4)
    manifest = json.loads((tmp_path / "cot" / "manifest.json").read_text())
    assert manifest["config"]["media_root"] == str(raw_dataset.parent)
    assert manifest["config"]["pixels"]["max_pixels"] == 112 * 112  # the model processor's, as the build used


def test_bad_records_are_rejected_with_reasons(tiny_model_small, fake_generator, tmp_path):
    from PIL import Image

    from postvl.io import StageWriter
    from postvl.media import PixelConfig
    from postvl.records import image_part, message

    root = tmp_path / "media"
    root.mkdir()
    Image.new("RGB", (64, 64)).save(root / "ok.png")
    base = {"videos": [], "num_tokens": None, "meta": {"source": "x.jsonl:1"}}
    records = [
        base
        | {
            "id": "bad-gold",
            "messages": [message("user", image_part(), "Red?"), message("assistant", "yes")],
            "images": ["ok.png"],
            "answer": "maybe",
            "answer_type": "yesno",
        },
        base
        | {
            "id": "gone",
            "messages": [message("user", image_part(), "Red?"), message("assistant", "yes")],
            "images": ["gone.png"],
            "answer": "yes",
            "answer_type": "yesno",
        },
        base
        | {
            "id": "no-user",
            "messages": [message("system", "Hi"), message("assistant", "yes")],
            "images": [],
            "answer": "yes",
            "answer_type": "yesno",
        },
        base
        | {
            "id": "two-images",  # the engine takes one image per prompt (max_images: 1)
            "messages": [message("user", image_part(), image_part(), "Same?"), message("assistant", "yes")],
            "images": ["ok.png", "ok.png"],
            "answer": "yes",
            "answer_type": "yesno",
        },
    ]
    stage_cfg = {"media_root": str(root), "pixels": PixelConfig(max_pixels=56 * 56).__dict__}
    with StageWriter(tmp_path / "in", stage="test", config=stage_cfg) as writer:
        for record in records:
            writer.keep(record)
    cfg = _config(tmp_path / "in", tmp_path / "cot", tiny_model_small)
    result = run_sampling(cfg, generator=fake_generator(lambda r, i: "Answer: yes"), progress=False)
    assert result.stats["total"] == result.stats["kept"] + result.stats["rejected"] == 4
    assert result.stats["reasons"] == {"invalid_gold": 1, "missing_media": 1, "no_question": 1, "too_many_media": 1}
    assert result.sampling["rejections"] == result.stats["reasons"]


def test_cli_overrides_yaml_and_samples_with_transformers(built_dataset, yes_no_model, tmp_path, capsys):
    from postvl.cli import main

    out = tmp_path / "cot"
    config = Path(__file__).resolve().parents[2] / "configs" / "sampling" / "tiny_cpu.yaml"
    argv = [
        "sample",
        str(built_dataset),
        "--out",
        str(out),
        "--model",
        yes_no_model,
        "--config",
        str(config),
        "--backend",
        "transformers",
        "--k",
        "6",
        "--dtype",
        "float32",
        "--no-plot",
    ]
    assert main(argv) == 0
    assert "postvl sample" in capsys.readouterr().out  # the summary table
    config_used = json.loads((out / "manifest.json").read_text())["config"]
    assert (config_used["backend"], config_used["k"], config_used["max_tokens"]) == ("transformers", 6, 32)
    assert not (out / "pass_rates.png").exists()
    stats = read_stats(out)
    assert stats["total"] == stats["kept"] + stats["rejected"] == 5
    summary = json.loads((out / "sampling_stats.json").read_text())
    assert summary["by_answer_type"]["yesno"]["any_correct"] == 2 and summary["pairs"] >= 1


def test_unknown_config_key_names_the_closest_one(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("# postvl sample\nkeep_per_questoin: 2\n")
    with pytest.raises(ValueError, match="did you mean 'keep_per_question'"):
        load_config(path, inputs=("x",), out="y", model="z")


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[2] / "configs" / "sampling").glob("**/*.yaml")),
    ids=lambda p: p.name,
)
def test_sampling_configs_load_and_start_with_their_command(path):
    assert path.read_text().startswith("# ") and "postvl sample" in path.read_text().splitlines()[0]
    cfg = load_config(path, inputs=("in",), out="out", model="model")
    assert cfg.k >= 1 and cfg.backend in ("vllm", "transformers")


@pytest.mark.vllm
@pytest.mark.slow
def test_postvl_sample_with_vllm_end_to_end_then_resume(vllm_session):
    out = vllm_session["out"]
    stats = read_stats(out)
    assert stats["total"] == stats["kept"] + stats["rejected"] == 5
    summary = json.loads((out / "sampling_stats.json").read_text())
    assert summary["questions"] == 4 and summary["samples"] == 4 * 4  # k=4 samples per question with an answer
    verdicts = [r["meta"]["sampling"]["verdicts"] for r in read_stage(out) if "verdicts" in r["meta"]["sampling"]]
    verdicts += [
        json.loads(line)["record"]["meta"]["sampling"]["verdicts"]
        for line in (out / "rejected.jsonl").read_text().splitlines()
    ]
    assert len(verdicts) == 4 and all(len(v) == 4 for v in verdicts)
    # the rigged model says "Answer: yes" or "Answer: no": the two yes/no questions get right and wrong answers
    assert summary["by_answer_type"]["yesno"]["any_correct"] == 2
    assert stats["reasons"].get("no_correct_sample", 0) >= 2  # math and choice
    pairs = list(read_stage(out, kind="preference"))
    assert pairs and all(p["rejected"][0]["content"][0]["text"] == "Answer: no" for p in pairs)
    assert (out / "pass_rates.png").is_file()
    # vLLM used the dataset's pixel limits (56x56: 4 vision tokens per image), checked against the HF processor
    assert "vLLM prompt length matches the processor's" in vllm_session["log"]

    # the same command again: the finished shard is skipped without starting an engine
    parts = {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet")}
    _, model, stage_in, stage_out, config = vllm_session["args"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "postvl.cli",
            "sample",
            stage_in,
            "--out",
            stage_out,
            "--model",
            model,
            "--config",
            config,
        ],
        env=vllm_session["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping" in proc.stderr and "starting vLLM" not in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet")} == parts
    assert read_stats(out)["total"] == 5
