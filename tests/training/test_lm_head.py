"""The plain LM head gives TRL's fused head's losses, gradients and metrics, in SFT and in DPO, on the same batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trl import DPOConfig, SFTConfig, SFTTrainer

from postvl.chatml.main import main as build_main
from postvl.dpo.data import PreferenceCollator, PreferenceEncoder, index_dataset
from postvl.dpo.train import frozen_copy, make_trainer
from postvl.modeling import freeze_vision, load_model_and_processor, lora_target_regex
from postvl.sft.data import PaddedCollator, bins_dataset
from postvl.training.config import DataArguments
from postvl.training.data import load_mixed_records
from postvl.training.encoding import RecordEncoder
from postvl.training.lm_head import use_lm_head

FORMATS = Path(__file__).parents[1] / "data" / "formats"
RTOL = 1e-5


def _build(root, model_dir):
    for name, src in (("sft", FORMATS / "llamafactory" / "data" / "mllm_demo.json"),
                      ("pairs", FORMATS / "trl" / "dpo_zen_image.jsonl")):
        assert build_main([str(src), "--out", str(root / name), "--model", model_dir]) == 0
    return root


@pytest.fixture(scope="module")
def stages(tmp_path_factory, tiny_model_small):
    return _build(tmp_path_factory.mktemp("lm_head"), tiny_model_small)


@pytest.fixture(scope="module")
def stages_qwen(tmp_path_factory, tiny_model_qwen):
    return _build(tmp_path_factory.mktemp("lm_head_qwen"), tiny_model_qwen)


def _lora(model):
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, target_modules=lora_target_regex(model), modules_to_save=["merger"],
                      task_type="CAUSAL_LM")


def _perturb(model):
    """Move the trainable weights off their start (a fresh LoRA adapter is a no-op, and a DPO policy would equal
    its reference)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


def _step(trainer, batch):
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
    return loss.detach(), grads, metrics


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _assert_same(plain, fused, metric_keys):
    assert _rel(plain[0], fused[0]) < RTOL
    assert plain[1].keys() == fused[1].keys() and any("merger" in n for n in fused[1])
    for name in fused[1]:
        assert _rel(plain[1][name], fused[1][name]) < RTOL, name
    for key in metric_keys:
        assert plain[2][key] == pytest.approx(fused[2][key], rel=RTOL, abs=1e-6), key


def _sft_trainer(model_dir, stages, tmp_path):
    model, processor = load_model_and_processor(model_dir, dtype="float32")
    freeze_vision(model, train_merger=True)
    records = load_mixed_records(DataArguments(datasets=[str(stages / "sft")]))
    collator = PaddedCollator(records, RecordEncoder(processor), processor.tokenizer.pad_token_id,
                              model.config.image_token_id, model.config.video_token_id)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, gradient_checkpointing=False,
                     report_to="none", remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})
    trainer = SFTTrainer(model=model, args=args, train_dataset=bins_dataset([[k] for k in range(len(records))]),
                         data_collator=collator, processing_class=processor, peft_config=_lora(model))
    _perturb(trainer.model)
    return trainer, collator([{"bin": [k]} for k in (0, 1, 2, 3)])


def test_sft_plain_head_equals_trls_fused_head(tiny_model_small, stages, tmp_path):
    trainer, batch = _sft_trainer(tiny_model_small, stages, tmp_path)
    assert int((batch["labels"][:, 1:] != -100).sum()) < batch["labels"][:, 1:].numel() / 2  # mostly untrained
    fused = _step(trainer, batch)
    words, counts = use_lm_head(trainer, "plain", max_logits_gb=2.0, token_metrics=True)
    assert words == "plain"
    plain = _step(trainer, batch)
    assert (counts.plain, counts.fused) == (1, 0)
    _assert_same(plain, fused, ("entropy", "mean_token_accuracy"))
    assert 0 < fused[2]["entropy"] and fused[2]["mean_token_accuracy"] >= 0


def test_auto_takes_the_plain_head_on_cpu_and_trls_above_the_memory_limit(tiny_model_small, stages, tmp_path):
    trainer, batch = _sft_trainer(tiny_model_small, stages, tmp_path)
    fused = _step(trainer, batch)
    vocab = trainer.model.get_output_embeddings().weight.shape[0]
    trained = int((batch["labels"][:, 1:] != -100).sum())
    limit_gb = (trained - 1) * vocab * 8 / 2**30  # one token short of the batch's plain logits
    words, counts = use_lm_head(trainer, "auto", max_logits_gb=limit_gb, token_metrics=False)
    assert words.startswith("plain (TRL's fused head for batches over")
    over = _step(trainer, batch)
    assert (counts.plain, counts.fused) == (0, 1)
    _assert_same(over, fused, ("entropy", "mean_token_accuracy"))
    # the same batch under a limit it fits: the plain head, its metrics off (NaN, never a made-up 0)
    trainer2, batch2 = _sft_trainer(tiny_model_small, stages, tmp_path / "fits")
    words, counts = use_lm_head(trainer2, "auto", max_logits_gb=(trained + 1) * vocab * 8 / 2**30,
                                token_metrics=False)
    fits = _step(trainer2, batch2)
    assert (counts.plain, counts.fused) == (1, 0)
    _assert_same(fits, fused, ())
    assert torch.isnan(torch.tensor([fits[2]["entropy"], fits[2]["mean_token_accuracy"]])).all()


def test_fused_is_kept_where_the_plain_head_cannot_reproduce_it(tiny_model_small, stages, tmp_path):
    trainer, _ = _sft_trainer(tiny_model_small, stages, tmp_path)
    assert use_lm_head(trainer, "fused", max_logits_gb=2.0, token_metrics=True)[0] == "fused (TRL)"
    trainer.model.get_base_model().config.get_text_config().final_logit_softcapping = 30.0
    words, _ = use_lm_head(trainer, "auto", max_logits_gb=2.0, token_metrics=True)
    assert words == "fused (TRL; the model soft-caps its logits)"
    with pytest.raises(ValueError, match="soft-caps its logits"):
        use_lm_head(trainer, "plain", max_logits_gb=2.0, token_metrics=True)


def _dpo_trainer(model_dir, stages, tmp_path, *, lora, loss_type):
    model, processor = load_model_and_processor(model_dir, dtype="float32")
    freeze_vision(model, train_merger=True)
    ref = None if lora else frozen_copy(model)
    records = load_mixed_records(DataArguments(datasets=[str(stages / "pairs")]), kind="preference")
    collator = PreferenceCollator(records, PreferenceEncoder(processor), processor.tokenizer.pad_token_id,
                                  model.config.image_token_id, model.config.video_token_id)
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, gradient_checkpointing=False,
                     report_to="none", remove_unused_columns=False, loss_type=[loss_type], beta=0.5, seed=0,
                     use_weighting=loss_type == "sigmoid" and not lora)
    trainer = make_trainer(model=model, ref_model=ref, args=args, train_dataset=index_dataset([0, 1, 2]),
                           data_collator=collator, processing_class=processor,
                           peft_config=_lora(model) if lora else None)
    _perturb(trainer.model)
    return trainer, collator([{"index": k} for k in (0, 1, 2)])


@pytest.mark.parametrize(("lora", "loss_type"), [(True, "sigmoid"), (False, "sigmoid"), (True, "ipo")],
                         ids=["lora", "full+ref+wpo", "lora-ipo"])
def test_dpo_plain_head_equals_trls_fused_head(tiny_model_small, stages, tmp_path, lora, loss_type):
    trainer, batch = _dpo_trainer(tiny_model_small, stages, tmp_path, lora=lora, loss_type=loss_type)
    fused = _step(trainer, batch)
    words, counts = use_lm_head(trainer, "plain", max_logits_gb=2.0, token_metrics=True)
    plain = _step(trainer, batch)
    assert counts.plain == 2 and counts.fused == 0  # policy and reference
    keys = ("rewards/chosen", "rewards/margins", "logps/chosen", "logps/rejected", "logits/chosen",
            "logits/rejected", "entropy", "mean_token_accuracy")
    _assert_same(plain, fused, [k for k in keys if k in fused[2] and not k.startswith("rewards/")])
    # A reward is beta x a difference of summed log-probs (the margin a difference of two of them): cancellation
    # turns the log-probs' relative error into an absolute error of RTOL x beta x the log-probs' size.
    scale = trainer.args.beta * (abs(fused[2]["logps/chosen"]) + abs(fused[2]["logps/rejected"]))
    for key in ("rewards/chosen", "rewards/margins"):
        assert plain[2][key] == pytest.approx(fused[2][key], rel=RTOL, abs=RTOL * scale), key
    assert fused[2]["rewards/chosen"] != 0.0  # the policy differs from the reference


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_final_losses_of_both_heads_are_equal_over_a_run(tiny_model_qwen, stages_qwen, tmp_path, stage, monkeypatch):
    """A few steps with the real 151k vocabulary (TRL's head then runs several vocabulary tiles)."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    configs = Path(__file__).parents[2] / "configs" / stage
    if stage == "sft":
        from postvl.sft.main import main
        data = str(stages_qwen / "sft")
    else:
        from postvl.dpo.main import main
        data = str(stages_qwen / "pairs")
    final = {}
    for head in ("fused", "plain"):
        out = tmp_path / head
        argv = ["--config", str(configs / "tiny_cpu.yaml"), "--model_name_or_path", tiny_model_qwen,
                "--datasets", data, "--output_dir", str(out), "--lm_head", head, "--max_steps", "3",
                "--save_strategy", "no", "--merge_adapter", "false", "--plot", "false"]
        assert main(argv) == 0
        summary = json.loads((out / f"{stage}_summary.json").read_text())
        assert summary["lm_head"].startswith(head)
        plain_calls, fused_calls = (int(x.split()[0]) for x in summary["lm_head_calls"].split(", "))
        assert fused_calls == 0 and (plain_calls > 0) == (head == "plain")  # TRL's head is not counted
        final[head] = summary["final_loss" if stage == "sft" else "loss"]
    assert final["plain"] == pytest.approx(final["fused"], rel=RTOL)
