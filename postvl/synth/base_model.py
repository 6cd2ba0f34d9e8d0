"""``postvl demo-model``: the demo's base model, a tiny Qwen2.5-VL taught the synthetic tasks' answer forms.

    postvl demo-model runs/demo/model [--seed 0] [--n 600] [--steps 150] [--kinds color_name,yesno] [--retrain]

A random tiny model answers nothing right, so rejection sampling on it keeps nothing and DPO has no sampled pair. This
makes a weak but not hopeless one, offline and reproducibly:

1. ``postvl tiny-model`` (small vocabulary, ``seed``): the real architecture, random weights;
2. ``postvl synth`` with its own seed (``seed + 1000``, so record ids and media differ from the demo's data; no
   defects, no videos; ``kinds`` when given) into ``OUT/_base/raw``;
3. each clean question with a gold answer, asked as rejection sampling asks it (the record's question plus the
   chain-of-thought instruction of its answer type, ``postvl.rejection_sampling.prompts``), answered in the form the
   instruction names and nothing else: ``\\boxed{gold}`` or ``Answer: gold``;
4. ``postvl build`` and a short full fine-tune with ``postvl sft`` (``steps`` steps; vision tower frozen, as in the
   recipe), saved to ``OUT``.

The weights of ``--seed 0 --n 600 --steps 150 --kinds color_name,yesno`` (the demo's) ship in
``postvl/assets/demo_base/`` (2.7 MB; training them takes about two minutes on a 2-core CPU), so with those
arguments step 4 copies them, unless ``--retrain``; steps 1-3 always run
(seconds), so that ``OUT/_base/build`` holds what the model was trained on and ``postvl eval`` can check the eval
split against it.

The short training is the point: the model learns the answer forms and, on the colour questions, gets most right
some of the time (about three samples in four at temperature 1, its majority over 8 samples about nine in ten),
which is what rejection sampling, SFT on its selected samples and DPO on its right-vs-wrong pairs then improve.
The same arguments give the same model (seeded data, seeded training, one process).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

WORK = "_base"
SEED_OFFSET = 1000
SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "demo_base"
NOTE = "demo_base.json"
# SFT settings of the base model (TRL SFTConfig / ModelConfig keys and postvl's), on top of the tiny CPU config.
SFT_ARGS = {
    "use_peft": "false",
    "learning_rate": "2e-3",
    "lr_scheduler_type": "cosine",
    "warmup_steps": "10",
    "per_device_train_batch_size": "8",
    "max_length": "512",
    "save_strategy": "no",
    "logging_steps": "10",
}


def answer_text(record: dict[str, Any]) -> str | None:
    """The short final answer, in the form the sampling instruction asks for (``None``: not a sampled question)."""
    from postvl.rejection_sampling.prompts import DEFAULT_PROMPTS

    spec = DEFAULT_PROMPTS.get(record.get("answer_type") or "")
    if spec is None or record.get("answer") is None:
        return None
    gold = record["answer"]
    if spec.pattern is not None:  # grounding: the record's own JSON answer after "Answer:"
        last = record["messages"][-1]
        text = "".join(p.get("text") or "" for p in last["content"] if p["type"] == "text").strip()
        return f"Answer: {text}" if text else None
    return f"\\boxed{{{gold}}}" if spec.form == "boxed" else f"Answer: {gold}"


def training_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per clean single-image or text question: the sampling prompt and the short answer."""
    from postvl.rejection_sampling.prompts import DEFAULT_PROMPTS, question_messages, with_instruction

    out = []
    for record in records:
        if record["meta"].get("defect") or len(record.get("images") or []) > 1 or record.get("videos"):
            continue
        answer = answer_text(record)
        if answer is None:
            continue
        question = with_instruction(
            question_messages(record["messages"]), DEFAULT_PROMPTS[record["answer_type"]].instruction
        )
        out.append(
            record
            | {
                "messages": [*question, {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
                "meta": record["meta"] | {"demo_base": True},
            }
        )
    return out


def make_base_model(
    out: str | Path,
    *,
    seed: int = 0,
    n: int = 600,
    steps: int = 150,
    kinds: tuple[str, ...] | None = None,
    sft_config: str | None = None,
    retrain: bool = False,
) -> Path:
    """Write the demo base model to ``out`` (see the module docstring); returns ``out``.

    Args:
        out: the model folder to write (its ``_base/`` subfolder keeps the data it was trained on).
        seed: seed of the random weights, the data and the training.
        n: synthetic records to draw (the clean single-image and text questions among them are trained on).
        steps: optimizer steps.
        kinds: the synthetic kinds to draw (``postvl synth --kinds``; default: synth's default mix).
        sft_config: the SFT YAML the settings above are laid over (default: ``configs/sft/tiny_cpu.yaml``).
        retrain: train even when the shipped weights were made with these arguments.
    """
    from postvl.chatml.build import BuildConfig, run_build
    from postvl.modeling import build_tiny_model
    from postvl.synth.dataset import SynthConfig, generate

    out = Path(out)
    work = out / WORK
    if work.exists():
        shutil.rmtree(work)
    init = build_tiny_model(work / "init", vocab="small", seed=seed)
    raw = work / "raw"
    generate(SynthConfig(str(raw), n=n, seed=seed + SEED_OFFSET, defect_rate=0.0, videos=False, pairs=0, kinds=kinds))
    records = [json.loads(line) for line in (raw / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = training_records(records)
    (raw / "base.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    run_build(BuildConfig(inputs=(str(raw / "base.jsonl"),), out=str(work / "build"), model=str(init)), progress=False)
    settings = {"seed": seed, "n": n, "steps": steps, "kinds": list(kinds) if kinds else None}
    shipped = SHIPPED / NOTE
    if not retrain and sft_config is None and shipped.is_file() and _settings(shipped) == settings:
        logger.info("using the shipped weights of %s (made with %s; --retrain trains them again)", SHIPPED, settings)
        source = SHIPPED
    else:
        source = _train(init, work, seed=seed, steps=steps, sft_config=sft_config)
    for item in source.iterdir():  # the trained model and its processor, at the top of OUT
        if item.is_file() and item.name != NOTE and not item.name.startswith(("training_args", "trainer_state")):
            shutil.copy2(item, out / item.name)
    note = settings | {"trained_on": str(work / "build"), "records": len(rows), "weights": str(source)}
    (out / NOTE).write_text(json.dumps(note, indent=2) + "\n")
    return out


def _settings(note: Path) -> dict[str, Any]:
    data = json.loads(note.read_text())
    return {k: data.get(k) for k in ("seed", "n", "steps", "kinds")}


def _train(init: Path, work: Path, *, seed: int, steps: int, sft_config: str | None) -> Path:
    """``postvl sft`` (full fine-tuning, one process) of ``init`` on ``work/build``; returns its output folder."""
    config = sft_config or str(Path(__file__).resolve().parents[2] / "configs" / "sft" / "tiny_cpu.yaml")
    args = {**SFT_ARGS, "max_steps": str(steps), "seed": str(seed)}
    command = [sys.executable, "-m", "postvl.cli", "sft", "--config", config, "--model_name_or_path", str(init)]
    command += ["--datasets", str(work / "build"), "--output_dir", str(work / "sft")]
    for key, value in args.items():
        command += [f"--{key}", value]
    logger.info("training the demo base model: %s", " ".join(command))
    subprocess.run(command, check=True)
    return work / "sft"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="postvl demo-model", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="model folder to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, data and training (default 0)")
    parser.add_argument("--n", type=int, default=600, help="synthetic records to draw (default 600)")
    parser.add_argument("--steps", type=int, default=150, help="SFT steps (default 150)")
    parser.add_argument("--kinds", help="comma-separated synthetic kinds to train on (default: synth's default mix)")
    parser.add_argument("--sft-config", help="SFT YAML under the settings (default: configs/sft/tiny_cpu.yaml)")
    parser.add_argument("--retrain", action="store_true", help="train even where shipped weights match")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = make_base_model(
        args.out,
        seed=args.seed,
        n=args.n,
        steps=args.steps,
        kinds=tuple(args.kinds.split(",")) if args.kinds else None,
        sft_config=args.sft_config,
        retrain=args.retrain,
    )
    print(f"demo base model saved to {out} (trained on {out / WORK / 'build'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
