"""``postvl eval`` on records whose outputs are known: exact accuracies, side by side, and the stage contract."""

from __future__ import annotations

import json

import pytest

from postvl.evaluation.stage import EvalConfig, load_config, run_eval, summary_rows

# Model "a": e-yes-1 2/4 (one sample cut by the token limit), e-yes-2 4/4, e-no-1 0/4, e-math 3/4.
A = {
    "e-yes-1": ["Answer: yes", "Answer: yes", "Answer: no", None],
    "e-yes-2": ["Answer: yes"] * 4,
    "e-no-1": ["Answer: yes"] * 4,
    "e-math": ["\\boxed{5}", "\\boxed{6}", "\\boxed{5}", "\\boxed{5}"],
}
# Model "b": only e-no-1 right (4/4); e-math without any final answer.
B = {
    "e-yes-1": ["Answer: no"] * 4,
    "e-yes-2": ["Answer: no"] * 4,
    "e-no-1": ["Answer: no"] * 4,
    "e-math": ["maybe"] * 4,
}


def _cfg(eval_data, tmp_path, model, **kw) -> EvalConfig:
    return EvalConfig(
        inputs=(str(eval_data),),
        out=str(tmp_path / "eval"),
        models=(f"a={model}", f"b={model}"),  # the generators are given: the folders tell the family
        k=4,
        max_tokens=8,
        max_model_len=512,
        **kw,
    )


def test_exact_accuracies_side_by_side(eval_data, tmp_path, monkeypatch, fixed_generator, tiny_model_small):
    FixedGenerator = fixed_generator
    monkeypatch.setattr("postvl.evaluation.stage._load_tokenizer", lambda model: None)
    result = run_eval(
        _cfg(eval_data, tmp_path, tiny_model_small),
        generators={"a": FixedGenerator(A), "b": FixedGenerator(B)},
        progress=False,
    )
    a, b = result.report["models"]["a"], result.report["models"]["b"]
    assert a["overall"]["questions"] == b["overall"]["questions"] == 4
    assert a["overall"]["accuracy"] == pytest.approx((0.5 + 1 + 0 + 0.75) / 4)
    assert a["overall"]["pass@k"] == pytest.approx(3 / 4)
    assert b["overall"]["accuracy"] == pytest.approx(0.25)
    assert b["overall"]["pass@k"] == pytest.approx(0.25)
    assert a["by_answer_type"]["yesno"]["accuracy"] == pytest.approx(0.5)
    assert a["by_answer_type"]["yesno"]["pass@k"] == pytest.approx(2 / 3)
    assert a["by_answer_type"]["math"]["accuracy"] == pytest.approx(0.75)
    assert a["by_domain"]["perception"]["questions"] == 3
    assert b["by_subcategory"]["perception/general_vqa"]["accuracy"] == pytest.approx(1 / 3)
    assert b["by_subcategory"]["math/text_math"]["accuracy"] == 0.0
    # 15 samples of 2-3 tokens (len(text.split()) + 1) and one cut at max_tokens=8
    assert a["overall"]["mean_tokens"] == pytest.approx((3 + 3 + 3 + 8 + 12 + 12 + 4 * 2) / 16)
    assert a["overall"]["truncated"] == pytest.approx(1 / 16)
    assert a["overall"]["hygiene_fail"] == pytest.approx(1 / 16)  # the cut sample has no "Answer:" line
    assert b["overall"]["no_final_answer"] == pytest.approx(4 / 16)
    assert b["overall"]["hygiene_fail"] == pytest.approx(4 / 16)  # "maybe" has no \boxed{}
    # the stage contract: the question without a gold answer is rejected with its reason
    stats = result.stats
    assert (stats["total"], stats["kept"], stats["rejected"]) == (5, 4, 1)
    assert stats["reasons"] == {"no_answer": 1}
    out = tmp_path / "eval"
    assert json.loads((out / "eval.json").read_text()) == result.report
    assert (out / "eval.png").stat().st_size > 0
    lines = [json.loads(x) for x in (out / "samples" / "a.jsonl").read_text().splitlines()]
    assert {x["id"]: x["n_correct"] for x in lines} == {"e-yes-1": 2, "e-yes-2": 4, "e-no-1": 0, "e-math": 3}
    assert lines[0]["samples"][3]["reason"] == "truncated"
    rows = summary_rows(result.report)
    assert rows[0] == ["", "questions", "a", "b"]
    assert rows[1] == ["accuracy (pass@1, %)", "4", "56.2", "25.0"]


def test_prompts_are_the_sampling_prompts_with_the_image(
    eval_data, tmp_path, monkeypatch, fixed_generator, tiny_model_small
):
    FixedGenerator = fixed_generator
    monkeypatch.setattr("postvl.evaluation.stage._load_tokenizer", lambda model: None)
    gen_a, gen_b = FixedGenerator(A), FixedGenerator(B)
    run_eval(_cfg(eval_data, tmp_path, tiny_model_small), generators={"a": gen_a, "b": gen_b}, progress=False)
    (requests,) = gen_a.calls
    assert [r.key for r in requests] == ["e-yes-1", "e-yes-2", "e-no-1", "e-math"]
    assert [r.prompt for r in requests] == [r.prompt for r in gen_b.calls[0]]
    yes = requests[0].prompt
    assert yes.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>Look closely" in yes
    assert yes.endswith('"Answer: yes" or "Answer: no".<|im_end|>\n<|im_start|>assistant\n')
    assert requests[3].prompt.endswith("put the final answer in \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")
    assert all(len(r.images) == 1 and r.images[0].size == (112, 112) for r in requests)


def test_a_rerun_with_the_same_models_and_data_is_skipped(
    eval_data, tmp_path, monkeypatch, fixed_generator, tiny_model_small
):
    FixedGenerator = fixed_generator
    monkeypatch.setattr("postvl.evaluation.stage._load_tokenizer", lambda model: None)
    first = run_eval(
        _cfg(eval_data, tmp_path, tiny_model_small),
        generators={"a": FixedGenerator(A), "b": FixedGenerator(B)},
        progress=False,
    )
    again = FixedGenerator(A)
    second = run_eval(
        _cfg(eval_data, tmp_path, tiny_model_small), generators={"a": again, "b": FixedGenerator(B)}, progress=False
    )
    assert second.skipped and not again.calls and second.report == first.report


def test_config_errors_are_collected_and_named(tmp_path):
    with pytest.raises(ValueError) as err:
        EvalConfig(inputs=("x",), out="o", models=("m=a", "m=b"), k=0, backend="tgi")
    message = str(err.value)
    assert "model names must differ" in message and "k must be >= 1" in message and "'tgi'" in message
    bad = tmp_path / "e.yaml"
    bad.write_text("temprature: 0.5\n")
    with pytest.raises(ValueError, match="did you mean 'temperature'"):
        load_config(bad, inputs=("x",), out="o", models=("m",))
    assert EvalConfig(inputs="x", out="o", models=("runs/demo/06_sft/merged", "dpo=runs/x")).named_models() == [
        ("merged", "runs/demo/06_sft/merged"),
        ("dpo", "runs/x"),
    ]


# Qwen3.5 with thinking on: the prompt opens <think>, so a sample is "reasoning\n</think>\n\nfinal answer" and only
# the final answer counts. e-yes-1: 1/4 (right; the thinking says yes but the answer no; thinking never closed; cut),
# e-yes-2 4/4, e-no-1 0/4 (the thinking says no, the answer yes), e-math 3/4.
THINKING = {
    "e-yes-1": [
        "It is red.\n</think>\n\nAnswer: yes",
        "Answer: yes?\n</think>\n\nAnswer: no",
        "Answer: yes, but let me look again",
        None,
    ],
    "e-yes-2": ["\n</think>\n\nAnswer: yes"] * 4,
    "e-no-1": ["Answer: no\n</think>\n\nAnswer: yes"] * 4,
    "e-math": ["\\boxed{5}\n</think>\n\n\\boxed{6}", *["2 + 3\n</think>\n\n\\boxed{5}"] * 3],
}


def test_qwen3_5_with_thinking_is_judged_on_the_final_answer_after_think(
    eval_data_qwen3_5, tmp_path, monkeypatch, fixed_generator, tiny_family_model
):
    monkeypatch.setattr("postvl.evaluation.stage._load_tokenizer", lambda model: None)
    model = tiny_family_model("qwen3_5")
    gen = fixed_generator(THINKING)
    cfg = EvalConfig(
        inputs=(str(eval_data_qwen3_5),), out=str(tmp_path / "eval"), models=(f"a={model}",), k=4, max_tokens=8,
        max_model_len=512,
    )  # fmt: skip
    result = run_eval(cfg, generators={"a": gen}, progress=False)
    assert all(r.prompt.endswith("<|im_start|>assistant\n<think>\n") for r in gen.calls[0])
    assert not gen.calls[0][0].prompt.startswith("<|im_start|>system")  # Qwen3.5 adds no system turn
    a = result.report["models"]["a"]
    assert result.report["thinking"] is True
    assert a["overall"]["accuracy"] == pytest.approx((0.25 + 1 + 0 + 0.75) / 4)
    assert a["overall"]["pass@k"] == pytest.approx(3 / 4)
    assert a["by_answer_type"]["math"]["accuracy"] == pytest.approx(0.75)
    assert a["overall"]["unfinished_thinking"] == a["overall"]["no_final_answer"] == pytest.approx(1 / 16)
    lines = {x["id"]: x for x in map(json.loads, (tmp_path / "eval" / "samples" / "a.jsonl").read_text().splitlines())}
    reasons = [s["reason"] for s in lines["e-yes-1"]["samples"]]
    assert reasons == [None, "mismatch", "unfinished_thinking", "truncated"]
    assert [s["extracted"] for s in lines["e-no-1"]["samples"]] == ["yes"] * 4


def test_qwen3_5_with_thinking_off_reads_the_whole_answer(
    eval_data_qwen3_5, tmp_path, monkeypatch, fixed_generator, tiny_family_model
):
    monkeypatch.setattr("postvl.evaluation.stage._load_tokenizer", lambda model: None)
    model = tiny_family_model("qwen3_5")
    gen = fixed_generator(lambda request, i: "\\boxed{5}" if "2 + 3" in request.prompt else "Answer: yes")
    cfg = load_config(
        None, inputs=(str(eval_data_qwen3_5),), out=str(tmp_path / "eval"), models=(f"a={model}",), k=2,
        max_tokens=8, max_model_len=512, enable_thinking=False,
    )  # fmt: skip
    result = run_eval(cfg, generators={"a": gen}, progress=False)
    assert all(r.prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") for r in gen.calls[0])
    a = result.report["models"]["a"]
    assert result.report["thinking"] is False
    assert a["overall"]["accuracy"] == pytest.approx(3 / 4)  # yes, yes, (no: wrong), 5
    assert a["overall"]["unfinished_thinking"] == 0.0


def test_enable_thinking_is_refused_for_a_family_without_one(eval_data, tmp_path, fixed_generator, tiny_model_small):
    cfg = _cfg(eval_data, tmp_path, tiny_model_small, enable_thinking=True)
    gen = fixed_generator(A)
    with pytest.raises(ValueError, match="enable_thinking is set but Qwen2.5-VL has no thinking mode"):
        run_eval(cfg, generators={"a": gen, "b": gen}, progress=False)
    assert not gen.calls and not (tmp_path / "eval" / "stats.json").exists()


def test_enable_thinking_is_a_flag_of_postvl_eval():
    from postvl.evaluation.main import make_parser

    def parsed(*flags):
        return make_parser().parse_args(["data", "--model", "m", "--out", "o", *flags]).enable_thinking

    assert (parsed(), parsed("--enable-thinking"), parsed("--no-enable-thinking")) == (None, True, False)
