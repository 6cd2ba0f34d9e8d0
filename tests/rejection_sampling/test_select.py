"""Judging, selection, DPO pairing and statistics of rejection sampling; the CoT prompts."""

from __future__ import annotations

import pytest

from postvl.generation import Sample
from postvl.records import ANSWER_TYPES
from postvl.rejection_sampling.hygiene import FinalAnswerForm, HygieneChecker, RepetitionLoop
from postvl.rejection_sampling.prompts import (
    DEFAULT_PROMPTS,
    question_messages,
    resolve_prompts,
    with_instruction,
)
from postvl.rejection_sampling.select import (
    Judged,
    SamplingStats,
    char_ngrams,
    decide,
    jaccard_distance,
    judge,
    preference_pairs,
    select_samples,
)

BOXED = HygieneChecker([RepetitionLoop(), FinalAnswerForm("boxed")])


def s(text: str, tokens: int | None = None, finish: str = "stop") -> Sample:
    return Sample(text, len(text.split()) if tokens is None else tokens, finish)


def usable(index: int, text: str, tokens: int | None = None) -> Judged:
    return Judged(index, s(text, tokens), True)


def wrong(index: int, text: str, reason: str = "mismatch") -> Judged:
    return Judged(index, s(text), False, None, reason)


# --------------------------------------------------------------------------------------------------------------------
# judge


def test_judge_gives_each_sample_one_reason():
    samples = [
        s("2 + 3 = 5, so \\boxed{5}."),
        s("It is \\boxed{6}."),
        s("the answer the answer the answer the answer the answer the answer \\boxed{5}"),
        s("The answer is 5."),  # correct, but not in the form the prompt asked for
        s("Let me think \\boxed{5}", finish="length"),
        s("Hmm."),
    ]
    judged = judge(samples, "5", "math", BOXED)
    assert [(j.correct, j.reason) for j in judged] == [
        (True, None),
        (False, "mismatch"),
        (True, "repetition_loop"),
        (True, "missing_boxed_answer"),
        (False, "truncated"),
        (False, "no_final_answer"),
    ]
    assert [j.usable for j in judged] == [True, False, False, False, False, False]
    assert judged[0].extracted == "5" and judged[0].as_meta()["finish_reason"] == "stop"


def test_judge_passes_choice_options_and_raises_on_a_bad_gold():
    checker = HygieneChecker([FinalAnswerForm("answer_line")])
    (j,) = judge([s("The sky is blue.\nAnswer: blue")], "B", "choice", checker, options=["red", "blue"])
    assert j.usable and j.extracted == "B"
    with pytest.raises(ValueError):
        judge([s("Answer: yes")], "maybe", "yesno", checker)


# --------------------------------------------------------------------------------------------------------------------
# selection


def test_shortest_keeps_the_fewest_tokens_and_each_text_once():
    judged = [
        usable(0, "a long answer", 30),
        wrong(1, "x"),
        usable(2, "short", 5),
        usable(3, "short", 5),
        usable(4, "medium", 10),
    ]
    assert [j.index for j in select_samples(judged, 2)] == [2, 4]
    assert [j.index for j in select_samples(judged, 9)] == [2, 4, 0]
    assert select_samples([wrong(0, "x")], 3) == []


def test_diverse_picks_the_answer_least_like_those_chosen():
    judged = [
        usable(0, "The square is red so the answer is yes.", 10),
        usable(1, "The square is red so the answer is yes!", 11),  # a near copy of #0
        usable(2, "Counting the pixels, every one of them is crimson: yes.", 12),
    ]
    assert [j.index for j in select_samples(judged, 2, strategy="diverse")] == [0, 2]
    assert [j.index for j in select_samples(judged, 2, strategy="shortest")] == [0, 1]


def test_char_ngram_distance():
    a, b = char_ngrams("abcdef", 3), char_ngrams("abc  def", 3)
    assert jaccard_distance(a, a) == 0.0
    assert 0 < jaccard_distance(a, b) < 1
    assert jaccard_distance(char_ngrams("abc", 3), char_ngrams("xyz", 3)) == 1.0


def test_selection_arguments_are_checked():
    with pytest.raises(ValueError, match="selection must be one of"):
        select_samples([], 1, strategy="random")
    with pytest.raises(ValueError, match="m .* must be >= 1"):
        select_samples([], 0)


def test_pairs_use_each_wrong_answer_once_wrong_answers_before_truncated_ones():
    judged = [
        usable(0, "right A"),
        wrong(1, "cut", "truncated"),
        wrong(2, "no answer", "no_final_answer"),
        wrong(3, "wrong answer"),
        usable(4, "right B"),
        wrong(5, "wrong answer"),
    ]
    kept = [judged[4]]
    pairs = preference_pairs(judged, kept, 5)
    assert [(c.index, r.index) for c, r in pairs] == [(4, 3), (0, 2), (4, 1)]  # #5 repeats #3's text
    assert [(c.index, r.index) for c, r in preference_pairs(judged, kept, 1)] == [(4, 3)]
    assert preference_pairs(judged, kept, 0) == []
    assert preference_pairs([wrong(0, "x"), Judged(1, s("y"), True, None, "code_switching")], [], 3) == []


def test_decide_flags_difficulty_and_gives_the_rejection_reason():
    all_right = [usable(i, f"right {i}") for i in range(4)]
    outcome = decide(all_right, m=1, p=1, strategy="shortest", ngram=4, drop_too_easy=False)
    assert outcome.reason is None and outcome.meta["difficulty"] == "too_easy" and outcome.pairs == []
    assert decide(all_right, m=1, p=1, strategy="shortest", ngram=4, drop_too_easy=True).reason == "too_easy"

    none_right = [wrong(i, f"wrong {i}") for i in range(4)]
    outcome = decide(none_right, m=1, p=1, strategy="shortest", ngram=4, drop_too_easy=False)
    assert (outcome.reason, outcome.meta["difficulty"], outcome.kept) == ("no_correct_sample", "too_hard", [])

    unclean = [Judged(0, s("right"), True, "5", "code_switching"), wrong(1, "wrong")]
    outcome = decide(unclean, m=1, p=1, strategy="shortest", ngram=4, drop_too_easy=False)
    assert outcome.reason == "no_hygienic_sample" and outcome.pairs == []
    assert {k: outcome.meta[k] for k in ("k", "n_correct", "n_hygienic", "pass_rate")} == {
        "k": 2,
        "n_correct": 1,
        "n_hygienic": 0,
        "pass_rate": 0.5,
    }
    assert outcome.meta["verdicts"][0] == {
        "correct": True,
        "reason": "code_switching",
        "extracted": "5",
        "num_tokens": 1,
        "finish_reason": "stop",
    }


def test_stats_add_up_and_merge_across_ranks():
    def outcome(n_right, k=4):
        judged = [usable(i, f"r{i}") for i in range(n_right)] + [wrong(i, f"w{i}") for i in range(n_right, k)]
        return decide(judged, m=1, p=1, strategy="shortest", ngram=4, drop_too_easy=False)

    rank0, rank1 = SamplingStats(k=4), SamplingStats(k=4)
    rank0.add(outcome(4), domain="math", answer_type="math")
    rank0.add(outcome(0), domain="math", answer_type="math")
    rank1.add(outcome(1), domain=None, answer_type="choice")
    rank1.reject("missing_media")
    merged = SamplingStats.merged([rank0.as_dict(), rank1.as_dict()], k=4).as_dict()
    assert merged["questions"] == 3 and merged["kept_questions"] == 2 and merged["pairs"] == 1
    assert merged["overall"]["pass@1"] == pytest.approx((1 + 0 + 0.25) / 3)
    assert merged["overall"]["pass@k"] == pytest.approx(2 / 3)
    assert merged["by_domain"]["math"]["acceptance"] == 0.5 and merged["by_domain"]["(none)"]["questions"] == 1
    assert merged["rejections"] == {"missing_media": 1, "no_correct_sample": 1}
    assert merged["n_correct_hist"] == [1, 1, 0, 0, 1]
    assert (merged["too_easy"], merged["too_hard"], merged["samples"]) == (1, 1, 12)
    assert merged["sample_reasons"] == {"mismatch": 7, "usable": 5}


# --------------------------------------------------------------------------------------------------------------------
# prompts


def test_every_answer_type_has_a_prompt_and_a_form_check():
    assert set(DEFAULT_PROMPTS) == set(ANSWER_TYPES)
    assert DEFAULT_PROMPTS["math"].form_check() == {"form": "boxed", "pattern": None}
    assert DEFAULT_PROMPTS["choice"].form == "answer_line" and "Answer: X" in DEFAULT_PROMPTS["choice"].instruction
    bbox = FinalAnswerForm(**DEFAULT_PROMPTS["bbox"].form_check())
    assert bbox.check('Answer: [{"bbox_2d": [1, 2, 30, 40], "label": "cat"}]') is None
    assert bbox.check("Answer: the cat") == "missing_answer_line"


def test_yaml_overrides_replace_the_instruction_or_the_form():
    specs = resolve_prompts(
        {"math": "Solve it; box the result.", "text": {"instruction": "Say it.", "form": "boxed"}}, family="qwen2_5_vl"
    )
    assert specs["math"].instruction == "Solve it; box the result." and specs["math"].form == "boxed"
    assert (specs["text"].instruction, specs["text"].form) == ("Say it.", "boxed")
    with pytest.raises(KeyError, match="Did you mean 'count'"):
        resolve_prompts({"cuont": "x"}, family="qwen2_5_vl")
    with pytest.raises(ValueError, match="unknown keys"):
        resolve_prompts({"math": {"text": "x"}}, family="qwen2_5_vl")
    with pytest.raises(ValueError, match="form must be one of"):
        resolve_prompts({"math": {"form": "json"}}, family="qwen2_5_vl")


def test_instruction_goes_after_the_last_user_turn_and_the_system_prompt_stays():
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be terse."}]},
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
        {"role": "user", "content": [{"type": "text", "text": "And the shape?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Square."}]},
    ]
    question = question_messages(messages)
    assert question == messages[:4]
    prompt = with_instruction(question, "Think step by step.")
    assert prompt[:3] == messages[:3]
    assert prompt[3]["content"] == [
        {"type": "text", "text": "And the shape?"},
        {"type": "text", "text": "\nThink step by step."},
    ]
    assert question == messages[:4]  # not modified in place
    from postvl.chatml.render import render

    assert render(prompt, family="qwen2_5_vl", add_generation_prompt=True).endswith(
        "And the shape?\nThink step by step.<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(ValueError, match="no user turn"):
        question_messages([messages[0], messages[2]])
