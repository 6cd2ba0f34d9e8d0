"""Trained tokens/s of SFT on a CUDA GPU (bf16): exact mRoPE packing vs padded batches, in one run.

    .venv/bin/python benchmarks/gpu_sft_tokens.py [--records 400] [--max-length 1024] [--batch-size 8]
        [--vocab small] [--family qwen2_5_vl] [--attn sdpa flash_attention_2]

The same records, model and training loop as benchmarks/sft_packing.py (its ``compare``), moved to the GPU in bf16,
once per attention implementation (``flash_attention_2`` only where the ``flash_attn`` wheel imports). Prints one
line per variant and, per attention implementation, ``RESULT gpu_sft_<attn>_packed_vs_padded <ratio> x | ...``.
Without CUDA it exits with status 2 and says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from sft_packing import compare, parse_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--attn", nargs="+", default=["sdpa", "flash_attention_2"])
    known, rest = extra.parse_known_args(argv)
    args = parse_args(rest)

    import torch

    if not torch.cuda.is_available():
        print("gpu_sft_tokens: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured.")
        return 2
    name = torch.cuda.get_device_name(0)
    for attn in known.attn:
        if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            print("flash_attention_2: the flash_attn wheel is not installed; skipped.")
            continue
        padded, packed, plan = compare(args, device="cuda", dtype="bfloat16", attn=attn)
        speed = {r["label"]: r["tokens"] / r["seconds"] for r in (padded, packed)}
        for label, value in speed.items():
            print(f"RESULT gpu_sft_{attn}_{label}_tokens_per_s {value:.0f} tokens/s | {args.family} tiny, {name}")
        print(
            f"RESULT gpu_sft_{attn}_packed_vs_padded {speed['packed'] / speed['padded']:.2f} x | "
            f"packed / padded trained tokens/s, bf16, {args.records} records, bins fill {100 * plan.fill:.1f}% of "
            f"{args.max_length}, padded batches of {args.batch_size}, {args.family} tiny, {name}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
