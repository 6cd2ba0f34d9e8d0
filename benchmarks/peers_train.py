"""Training speed and memory against the peers: postvl, ms-swift 4.6 and LLaMA-Factory 0.9.5 on one workload.

    .venv/bin/python benchmarks/peers_train.py [--quick] [--tools postvl,ms-swift,llamafactory] [--work runs/peers]

Every tool trains the same tiny Qwen2.5-VL (``postvl tiny-model --vocab qwen``: 39 M parameters, the real 151k
vocabulary) on the same synthetic records, exported to its own format: LoRA r 8 / alpha 16 on every Linear of the
language model plus the trained merger, ViT frozen, batch 4, one epoch, float32, CPU, one process, no gradient
checkpointing, lr 1e-4. Images keep the processor's pixel limits (56x56 to 112x112: 4 to 16 image tokens) in every
tool; ms-swift reads them from ``MAX_PIXELS`` / ``MIN_PIXELS``, LLaMA-Factory from ``image_max_pixels`` /
``image_min_pixels``. Workloads: SFT padded (every tool), SFT packed (postvl only: ms-swift's packing needs
flash-attn and LLaMA-Factory's ``neat_packing`` crashes on rows without an image, both on CPU), DPO (beta 0.1,
sigmoid). The full workload is the one of the issue (400 SFT records, 100 pairs = 25 DPO steps); ``--quick`` takes
64 records and 32 pairs.

The peers run in benchmark-only virtual environments under ``WORK/venvs`` (built on first use from PyPI with their
own pins, beside CPU torch 2.13.0 and the project's torchvision fix; reused when present). LLaMA-Factory needs
``torchaudio``, for which no wheel fits CPU torch 2.13.0: it gets a stub that raises if audio is used.

Per run: the train loop (the Trainer's ``train_runtime``), the whole command's wall time, tokens/s (the same token
count for every tool: the records' tokens as the model's processor counts them, over the train loop) and the peak RSS
of the training process. Headline ratios (``RESULT`` lines) are speeds and memory against ms-swift padded, measured in
the same run. The machine is shared: compare ratios from one run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = ["torch==2.13.0", "torchvision==0.28.0"]
PEERS = {
    "ms-swift": {"packages": ["ms-swift==4.6.0", "qwen-vl-utils==0.0.14"], "no_deps": []},
    "llamafactory": {
        # torchaudio has no wheel beside CPU torch 2.13.0: install LLaMA-Factory without its deps, then those
        # (its own pins, from its METADATA) without torchaudio; a stub torchaudio stands in (audio unused here).
        "no_deps": ["llamafactory==0.9.5"],
        "packages": [
            "accelerate>=1.3.0,<=1.11.0", "av>=10.0.0,<=16.0.0", "datasets>=2.16.0,<=4.0.0", "einops", "fire",
            "matplotlib>=3.7.0", "modelscope", "numpy", "omegaconf", "packaging", "pandas", "peft>=0.18.0,<=0.18.1",
            "protobuf", "pydantic", "pyyaml", "safetensors", "scipy", "sentencepiece", "tiktoken",
            "torchdata>=0.10.0,<=0.11.0", "transformers>=4.55.0,<=5.6.0,!=4.57.0", "trl>=0.18.0,<=0.24.0",
            "tyro<0.9.0", "fastapi", "sse-starlette", "uvicorn", "gradio>=4.38.0,<=5.50.0", "hf-transfer",
        ],
    },
}
TORCHAUDIO_STUB = '''"""Stand-in for torchaudio (no wheel fits CPU torch 2.13.0); the benchmark feeds no audio."""
__version__ = "2.13.0"


def __getattr__(name):
    raise ImportError(f"torchaudio.{name}: torchaudio is a stub in this benchmark venv (no audio is used)")
'''
WORDS = "the red square sits left of a blue circle and the chart shows sales rising every year since 2019".split()
MAX_LENGTH = 1024
BATCH = 4


# --------------------------------------------------------------------------------------------------------------------
# Virtual environments


def venv_python(work: Path, tool: str) -> Path:
    return work / "venvs" / tool / "bin" / "python"


def ensure_venv(work: Path, tool: str) -> Path:
    """Build ``WORK/venvs/TOOL`` unless a finished one (its stamp matches the spec) is there; return its python."""
    spec = PEERS[tool]
    want = hashlib.sha256(json.dumps([TORCH, spec, TORCHAUDIO_STUB], sort_keys=True).encode()).hexdigest()[:16]
    folder = work / "venvs" / tool
    stamp = folder / ".bench-stamp"
    if stamp.is_file() and stamp.read_text() == want:
        return venv_python(work, tool)
    print(f"[setup] building {folder} (a few minutes, once)", flush=True)
    start = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    py = str(venv_python(work, tool))
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *TORCH], check=True)  # alone first, so that nothing below pulls a CUDA torch
    if spec["no_deps"]:
        subprocess.run([*pip, "--no-deps", *spec["no_deps"]], check=True)
    subprocess.run([*pip, *TORCH, *spec["packages"]], check=True)
    # CUDA builds of torchaudio / torchcodec cannot load beside CPU torch and break `import transformers`
    subprocess.run([py, "-m", "pip", "uninstall", "-q", "-y", "torchaudio", "torchcodec"], check=False)
    subprocess.run([py, str(ROOT / "scripts" / "fix_cpu_torchvision.py")], check=True)
    if tool == "llamafactory":
        site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        (Path(site) / "torchaudio").mkdir(exist_ok=True)
        (Path(site) / "torchaudio" / "__init__.py").write_text(TORCHAUDIO_STUB)
    subprocess.run([py, "-c", "import transformers, torchvision; from transformers import Qwen2_5_VLProcessor"],
                   check=True)
    stamp.write_text(want)
    print(f"[setup] {folder} ready in {time.perf_counter() - start:.0f} s", flush=True)
    return Path(py)


# --------------------------------------------------------------------------------------------------------------------
# Data: the same records in every tool's format


def make_sources(root: Path, n_sft: int, n_pairs: int, seed: int = 0) -> tuple[Path, Path]:
    """Synthetic SFT records (long-tailed answers, half with an image) and image preference pairs, TRL format."""
    from PIL import Image

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)

    def text(mu: float) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(min(int(rng.lognormvariate(mu, 0.9)) + 2, 500))) + "."

    def image(name: str, i: int) -> str:
        size = (rng.choice([56, 84, 112]), rng.choice([56, 84, 112]))
        Image.new("RGB", size, ((37 * i) % 255, (91 * i) % 255, 128)).save(root / "images" / name)
        return f"images/{name}"

    sft = []
    for i in range(n_sft):
        question, answer = "Describe the chart in detail.", text(3.6)
        if i % 2 == 0:
            sft.append({"id": f"sft-{i}", "images": [image(f"s{i}.png", i)], "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]}]})
        else:
            sft.append({"id": f"sft-{i}", "images": [], "messages": [
                {"role": "user", "content": [{"type": "text", "text": question}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]}]})
    pairs = []
    for i in range(n_pairs):
        pairs.append({"id": f"pair-{i}", "images": [image(f"p{i}.png", i + 7)],
                      "prompt": [{"role": "user", "content": [{"type": "image"},
                                                              {"type": "text", "text": "What does it show?"}]}],
                      "chosen": [{"role": "assistant", "content": [{"type": "text", "text": text(2.5)}]}],
                      "rejected": [{"role": "assistant", "content": [{"type": "text", "text": text(2.5)}]}]})
    for name, rows in (("sft.jsonl", sft), ("pairs.jsonl", pairs)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "sft.jsonl", root / "pairs.jsonl"


def _plain(message: dict) -> str:
    return "".join("<image>" if p["type"] == "image" else p["text"] for p in message["content"])


def export_ms_swift(src_root: Path, sft: Path, pairs: Path, out: Path) -> dict[str, Path]:
    """ms-swift's ``messages`` JSONL with ``<image>`` tags and absolute image paths; DPO adds ``rejected_response``."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in map(json.loads, sft.read_text().splitlines()):
        lines.append({"messages": [{"role": m["role"], "content": _plain(m)} for m in r["messages"]],
                      "images": [str(src_root / p) for p in r["images"]]})
    (out / "sft.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    lines = []
    for r in map(json.loads, pairs.read_text().splitlines()):
        lines.append({"messages": [{"role": "user", "content": _plain(r["prompt"][0])},
                                   {"role": "assistant", "content": _plain(r["chosen"][0])}],
                      "rejected_response": _plain(r["rejected"][0]),
                      "images": [str(src_root / p) for p in r["images"]]})
    (out / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {"sft": out / "sft.jsonl", "dpo": out / "pairs.jsonl"}


def export_llamafactory(src_root: Path, sft: Path, pairs: Path, out: Path) -> Path:
    """LLaMA-Factory's sharegpt JSON (``messages`` / ``images``; ranking rows for DPO) and ``dataset_info.json``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"messages": [{"role": m["role"], "content": _plain(m)} for m in r["messages"]],
             "images": [str(src_root / p) for p in r["images"]]}
            for r in map(json.loads, sft.read_text().splitlines())]
    (out / "sft.json").write_text(json.dumps(rows))
    rows = [{"conversations": [{"from": "human", "value": _plain(r["prompt"][0])}],
             "chosen": {"from": "gpt", "value": _plain(r["chosen"][0])},
             "rejected": {"from": "gpt", "value": _plain(r["rejected"][0])},
             "images": [str(src_root / p) for p in r["images"]]}
            for r in map(json.loads, pairs.read_text().splitlines())]
    (out / "pairs.json").write_text(json.dumps(rows))
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    info = {
        "bench_sft": {"file_name": "sft.json", "formatting": "sharegpt",
                      "columns": {"messages": "messages", "images": "images"}, "tags": tags},
        "bench_dpo": {"file_name": "pairs.json", "formatting": "sharegpt", "ranking": True,
                      "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected",
                                  "images": "images"}},
    }
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return out


# --------------------------------------------------------------------------------------------------------------------
# Running and measuring

# Runs a command and writes the peak RSS of its largest process (`getrusage` of the children) as JSON.
RSS_WRAPPER = textwrap.dedent("""
    import json, resource, subprocess, sys
    rc = subprocess.run(sys.argv[2:]).returncode
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    open(sys.argv[1], "w").write(json.dumps({"rc": rc, "peak_rss_kb": peak_kb}))
    sys.exit(rc)
""")
RUNTIME = re.compile(r"""['"]train_runtime['"]\s*:\s*['"]?([0-9.]+)""")  # the Trainer's last log, in every tool


@dataclass
class Run:
    tool: str
    workload: str
    tokens: int
    train_s: float | None = None
    wall_s: float | None = None
    rss_gb: float | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.train_s if self.train_s else None


def measure(run: Run, cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> Run:
    """Run ``cmd`` once; fill wall time, train-loop time (``train_runtime`` in its log) and peak RSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    rss_file = log.with_suffix(".rss.json")
    full_env = {**os.environ, **env}
    print(f"[run] {run.tool} {run.workload}: {' '.join(cmd[:3])} ... (log {log})", flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-c", RSS_WRAPPER, str(rss_file), *cmd], stdout=f,
                              stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
    run.wall_s = time.perf_counter() - start
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        tail = [line for line in text.splitlines() if line.strip()][-3:]
        run.error = f"exit {proc.returncode}: {' | '.join(tail)[-300:]}"
        return run
    runtimes = RUNTIME.findall(text)
    run.train_s = float(runtimes[-1]) if runtimes else None
    if run.train_s is None:
        run.error = "no train_runtime in the log"
    run.rss_gb = json.loads(rss_file.read_text())["peak_rss_kb"] / 2**20
    return run


COMMON_ENV = {"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
              "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "WANDB_DISABLED": "true"}


def postvl_cmd(stage: str, model: Path, data: Path, out: Path, *, packing: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", f"postvl.{stage}", "--model_name_or_path", str(model), "--datasets", str(data),
           "--output_dir", str(out), "--dtype", "float32", "--use_peft", "true", "--lora_r", "8", "--lora_alpha",
           "16", "--lora_dropout", "0", "--freeze_vision", "true", "--train_merger", "true", "--use_cpu", "true",
           "--bf16", "false", "--gradient_checkpointing", "false", "--max_length", str(MAX_LENGTH),
           "--per_device_train_batch_size", str(BATCH), "--num_train_epochs", "1", "--learning_rate", "1e-4",
           "--lr_scheduler_type", "constant", "--save_strategy", "no", "--logging_steps", "5", "--report_to", "none",
           "--dataloader_num_workers", "0", "--seed", "0", "--merge_adapter", "false", "--plot", "false"]
    if stage == "sft":
        cmd += ["--packing", str(packing).lower()]
        if packing:  # rows of up to max_length tokens hold ~4 padded batches' worth of records each
            cmd += ["--per_device_train_batch_size", "1"]
    else:
        cmd += ["--beta", "0.1", "--loss_type", "sigmoid"]
    return cmd


def swift_cmd(py: Path, stage: str, model: Path, data: Path, out: Path, lora_regex: str) -> list[str]:
    cmd = [str(py.parent / "swift"), "sft" if stage == "sft" else "rlhf"]
    if stage == "dpo":
        cmd += ["--rlhf_type", "dpo", "--beta", "0.1", "--loss_type", "sigmoid"]
    options = {
        "model": model, "model_type": "qwen2_5_vl", "template": "qwen2_5_vl", "dataset": data,
        "tuner_type": "lora", "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0, "target_regex": lora_regex,
        "modules_to_save": "merger", "freeze_vit": "true", "freeze_aligner": "false", "torch_dtype": "float32",
        "bf16": "false", "fp16": "false", "use_cpu": "true", "gradient_checkpointing": "false",
        "max_length": MAX_LENGTH, "per_device_train_batch_size": BATCH, "gradient_accumulation_steps": 1,
        "num_train_epochs": 1, "learning_rate": 1e-4, "lr_scheduler_type": "constant", "warmup_ratio": 0,
        "save_strategy": "no", "logging_steps": 5, "report_to": "none", "dataloader_num_workers": 0,
        "dataset_num_proc": 1, "split_dataset_ratio": 0, "seed": 0, "output_dir": out,
    }
    return cmd + [x for k, v in options.items() for x in (f"--{k}", str(v))]


def llamafactory_cmd(py: Path, stage: str, model: Path, data_dir: Path, out: Path, pixels: tuple[int, int]) -> list:
    cfg = {
        "model_name_or_path": str(model), "trust_remote_code": True, "stage": stage, "do_train": True,
        "finetuning_type": "lora", "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lora_target": "all",
        "freeze_vision_tower": True, "freeze_multi_modal_projector": False, "additional_target": "merger",
        "image_min_pixels": pixels[0], "image_max_pixels": pixels[1],
        "dataset": "bench_sft" if stage == "sft" else "bench_dpo", "dataset_dir": str(data_dir),
        "template": "qwen2_vl", "cutoff_len": MAX_LENGTH, "overwrite_cache": True, "preprocessing_num_workers": 1,
        "output_dir": str(out), "overwrite_output_dir": True, "save_strategy": "no", "logging_steps": 5,
        "plot_loss": False, "report_to": "none", "per_device_train_batch_size": BATCH,
        "gradient_accumulation_steps": 1, "learning_rate": 1e-4, "num_train_epochs": 1.0,
        "lr_scheduler_type": "constant", "bf16": False, "fp16": False, "use_cpu": True,
        "dataloader_num_workers": 0, "seed": 0, "disable_gradient_checkpointing": True,
    }
    if stage == "dpo":
        cfg.update({"pref_beta": 0.1, "pref_loss": "sigmoid"})
    out.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items()))
    return [str(py.parent / "llamafactory-cli"), "train", str(path)]


# --------------------------------------------------------------------------------------------------------------------
# Main


def language_model_lora_regex(model: Path) -> str:
    """postvl's LoRA targets (every Linear of the language model) as a regex, handed to ms-swift as well, so that
    both adapt the same modules; the merger trains in full in every tool (``modules_to_save``)."""
    from postvl.modeling import load_model_and_processor, lora_target_regex

    loaded, _ = load_model_and_processor(str(model), dtype="float32")
    return lora_target_regex(loaded, "all-linear")


def count_tokens(model: Path, sft_stage: Path, dpo_stage: Path) -> tuple[int, int]:
    """The trained sequences' tokens as the model's processor counts them: SFT records, both sides of each pair."""
    from postvl.dpo.data import PreferenceEncoder
    from postvl.modeling import load_processor
    from postvl.training.config import DataArguments
    from postvl.training.data import load_mixed_records

    sft = load_mixed_records(DataArguments(datasets=[str(sft_stage)]))
    pairs = load_mixed_records(DataArguments(datasets=[str(dpo_stage)]), kind="preference")
    encoder = PreferenceEncoder(load_processor(str(model)), train_turn_newline=True)
    dpo_tokens = 0
    for k in range(len(pairs)):
        pair = encoder(pairs[k], pairs.media_root_of(k))
        dpo_tokens += len(pair.chosen_ids) + len(pair.rejected_ids)
    return sum(sft.num_tokens()), dpo_tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 SFT records and 32 pairs instead of 400 and 100")
    parser.add_argument("--records", type=int, default=None)
    parser.add_argument("--pairs", type=int, default=None)
    parser.add_argument("--tools", default="postvl,ms-swift,llamafactory")
    parser.add_argument("--workloads", default="sft_padded,sft_packed,dpo")
    parser.add_argument("--work", default=str(ROOT / "runs" / "peers"))
    args = parser.parse_args(argv)
    n_sft = args.records or (64 if args.quick else 400)
    n_pairs = args.pairs or (32 if args.quick else 100)
    tools = args.tools.split(",")
    workloads = args.workloads.split(",")
    work = Path(args.work).resolve()
    unknown = set(tools) - {"postvl", *PEERS}
    if unknown:
        parser.error(f"unknown tools {sorted(unknown)}: choose from postvl, {', '.join(PEERS)}")

    # Set-up: the peers' venvs, the tiny model, the records in every format, postvl's built datasets.
    pythons = {tool: ensure_venv(work, tool) for tool in tools if tool in PEERS}
    from postvl.chatml.main import main as build_main
    from postvl.modeling import TINY_MAX_PIXELS, TINY_MIN_PIXELS, build_tiny_model

    model = work / "tiny_qwen"
    if not (model / "config.json").is_file():
        build_tiny_model(model, vocab="qwen", seed=0)
        # float32 in the config too: LLaMA-Factory takes the config's dtype where the others take the flag
        config = json.loads((model / "config.json").read_text())
        for section in (config, config.get("text_config") or {}, config.get("vision_config") or {}):
            if "dtype" in section:
                section["dtype"] = "float32"
        (model / "config.json").write_text(json.dumps(config, indent=2))
    data = work / f"data_{n_sft}_{n_pairs}"
    shutil.rmtree(data, ignore_errors=True)
    sft_src, pairs_src = make_sources(data / "source", n_sft, n_pairs)
    for name, src in (("sft", sft_src), ("dpo", pairs_src)):
        if build_main([str(src), "--out", str(data / "postvl" / name), "--model", str(model)]) != 0:
            raise RuntimeError(f"postvl build failed on {src}")
    swift_data = export_ms_swift(data / "source", sft_src, pairs_src, data / "ms-swift")
    lf_data = export_llamafactory(data / "source", sft_src, pairs_src, data / "llamafactory")
    sft_tokens, dpo_tokens = count_tokens(model, data / "postvl" / "sft", data / "postvl" / "dpo")
    pixels = (TINY_MIN_PIXELS, TINY_MAX_PIXELS)
    lora_regex = language_model_lora_regex(model)
    swift_env = {"MAX_PIXELS": str(pixels[1]), "MIN_PIXELS": str(pixels[0])}
    lf_env = {"DISABLE_VERSION_CHECK": "1", "ALLOW_EXTRA_ARGS": "1"}

    # Runs: one after the other, each a fresh process.
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    runs: list[Run] = []
    for workload in workloads:
        stage = "dpo" if workload == "dpo" else "sft"
        tokens = dpo_tokens if stage == "dpo" else sft_tokens
        for tool in tools:
            run = Run(tool, workload, tokens)
            target = out / f"{tool}_{workload}"
            if tool == "postvl":
                cmd = postvl_cmd(stage, model, data / "postvl" / stage, target, packing=workload == "sft_packed")
                env = {**COMMON_ENV, "PYTHONPATH": str(ROOT)}
            elif workload == "sft_packed":
                continue  # neither peer packs vision data on a CPU (see the module docstring)
            elif tool == "ms-swift":
                cmd = swift_cmd(pythons[tool], stage, model, swift_data[stage], target, lora_regex)
                env = {**COMMON_ENV, **swift_env}
            else:
                cmd = llamafactory_cmd(pythons[tool], stage, model, lf_data, target, pixels)
                env = {**COMMON_ENV, **lf_env}
            runs.append(measure(run, cmd, out / "logs" / f"{tool}_{workload}.log", env, cwd=work))
            print(f"    -> {_row(run)}", flush=True)

    print_table(runs, n_sft, n_pairs, sft_tokens, dpo_tokens)
    print_results(runs)
    return 0 if all(r.error is None for r in runs) else 1


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _row(r: Run) -> str:
    if r.error:
        return f"{r.tool:<13} {r.workload:<11} FAILED {r.error}"
    return (f"{r.tool:<13} {r.workload:<11} {_fmt(r.train_s, '9.1f')} {_fmt(r.wall_s, '9.1f')} "
            f"{_fmt(r.tokens_per_s, '10.0f')} {_fmt(r.rss_gb, '8.2f')}")


def print_table(runs: list[Run], n_sft: int, n_pairs: int, sft_tokens: int, dpo_tokens: int) -> None:
    print()
    print(f"Training on CPU, float32, LoRA r8 + merger, batch {BATCH}, 1 epoch: {n_sft} SFT records "
          f"({sft_tokens} tokens), {n_pairs} DPO pairs ({dpo_tokens} tokens, both sides)")
    print(f"{'tool':<13} {'workload':<11} {'train s':>9} {'wall s':>9} {'tokens/s':>10} {'RSS GB':>8}")
    for r in runs:
        print(_row(r))
    print()


def _find(runs: list[Run], tool: str, workload: str) -> Run | None:
    return next((r for r in runs if r.tool == tool and r.workload == workload and r.error is None), None)


def print_results(runs: list[Run]) -> None:
    def speed(ours: Run | None, peer: Run | None) -> float | None:
        return ours.tokens_per_s / peer.tokens_per_s if ours and peer and ours.train_s and peer.train_s else None

    lines = []
    for peer in ("ms-swift", "llamafactory"):
        key = "ms_swift" if peer == "ms-swift" else "llamafactory"
        padded = _find(runs, peer, "sft_padded")
        for workload, desc in (("sft_padded", "SFT padded"), ("sft_packed", "SFT packed")):
            ratio = speed(_find(runs, "postvl", workload), padded)
            if ratio is not None:
                lines.append((f"{workload}_vs_{key}_padded", ratio, "x",
                              f"{desc} tokens/s of postvl / {peer} SFT padded, same records, same run"))
        ratio = speed(_find(runs, "postvl", "dpo"), _find(runs, peer, "dpo"))
        if ratio is not None:
            lines.append((f"dpo_vs_{key}", ratio, "x", f"DPO tokens/s of postvl / {peer} DPO, same pairs"))
        for workload in ("sft_padded", "dpo"):
            ours, theirs = _find(runs, "postvl", workload), _find(runs, peer, workload)
            worst = max((r.rss_gb for r in runs if r.tool == "postvl" and r.error is None
                         and r.workload.startswith(workload[:3])), default=None)
            if ours and theirs and worst:
                lines.append((f"rss_{workload[:3]}_vs_{key}", worst / theirs.rss_gb, "x",
                              f"peak RSS of postvl {workload[:3].upper()} (worst of its runs) / {peer} {workload}"))
    for name, value, unit, desc in lines:
        print(f"RESULT {name} {value:.2f} {unit} | {desc}")


if __name__ == "__main__":
    sys.exit(main())
