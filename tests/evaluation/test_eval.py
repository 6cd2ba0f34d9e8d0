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
