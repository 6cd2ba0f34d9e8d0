"""Trained tokens/s of SFT with exact mRoPE packing vs padded batches, in one run, on the same records.

    .venv/bin/python benchmarks/sft_packing.py [--records 400] [--max-length 1024] [--batch-size 8] [--vocab small]
        [--family qwen2_5_vl]

Records have a long-tailed length mix (log-normal answer lengths, a share with one image). Both variants train the
same tiny Qwen2.5-VL from the same initial weights for one pass over the same records (forward, backward, AdamW
step): padded batches of ``--batch-size`` records in random order, each padded to its longest record, or packed rows
of up to ``--max-length`` tokens (best-fit-decreasing bins, per-record mRoPE positions, no attention mask). Prints
non-pad token shares and tokens/s for both, the speed ratio (packed / padded) and the same as a ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

WORDS = "the red square sits left of a blue circle and the chart shows sales rising every year since 2019".split()


def make_records(n: int, root: Path, seed: int) -> list[dict]:
    from PIL import Image

    from postvl.records import image_part, message

    rng = random.Random(seed)
    records = []
    for i in range(n):
        words = min(int(rng.lognormvariate(3.2, 1.0)) + 2, 700)
        answer = " ".join(rng.choice(WORDS) for _ in range(words)) + "."
        if rng.random() < 0.3:
            name = f"{i}.png"
            Image.new("RGB", (rng.choice([56, 84, 112]), rng.choice([56, 84, 112])), (i % 255, 0, 0)).save(root / name)
            user = message("user", image_part(), "Describe the image.")
            records.append({"messages": [user, message("assistant", answer)], "images": [name]})
        else:
            records.append(
                {"messages": [message("user", "Tell me about sales."), message("assistant", answer)], "images": []}
            )
    return records


def run(
    model_dir: str, collator, batches: list, label: str, *, device: str = "cpu", dtype: str = "float32", attn=None
) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText

    from postvl.modeling import freeze_vision

    torch.manual_seed(0)
    extra = {"attn_implementation": attn} if attn else {}
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=getattr(torch, dtype), **extra).to(device)
    freeze_vision(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    # encoding (image processing, tokenizing) is the same work for both, done before the clock starts
    encoded = [{k: v.to(device) for k, v in collator(b).items()} for b in batches]
    real = slots = 0
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in encoded:
        out = model(**batch, use_cache=False)
        logits = out.logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        mask = batch.get("attention_mask")
        real += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        slots += batch["input_ids"].numel()
    if device.startswith("cuda"):
        torch.cuda.synchronize()  # kernels run asynchronously: stop the clock when they are done
    seconds = time.perf_counter() - start
    result = {"label": label, "steps": len(encoded), "tokens": real, "slots": slots, "seconds": seconds}
    print(
        f"{label:>7}: {len(encoded):4d} steps, {real:7d} tokens in {slots:7d} slots "
        f"({100 * real / slots:5.1f}% non-pad), {seconds:6.1f} s, {real / seconds:8.0f} tokens/s"
    )
    return result


def compare(args: argparse.Namespace, *, device: str = "cpu", dtype: str = "float32", attn=None):
    """Train the padded then the packed variant on the same records; returns (padded, packed, packing plan)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from postvl.modeling import build_tiny_model
    from postvl.sft.data import PackedCollator, PaddedCollator, find_rope_index, plan_packing
    from postvl.training.encoding import RecordEncoder, RecordList

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = str(build_tiny_model(root / "model", vocab=args.vocab, family=args.family))
        records = make_records(args.records, root, args.seed)
        processor = AutoProcessor.from_pretrained(model_dir)
        encoder = RecordEncoder(processor)
        source = RecordList(records, str(root))
        lengths = [len(encoder(r, str(root)).input_ids) for r in records]
        keep = [i for i, n in enumerate(lengths) if n <= args.max_length]
        print(
            f"{len(records)} records, lengths p50 {sorted(lengths)[len(lengths) // 2]}, max {max(lengths)}; "
            f"{len(keep)} fit in {args.max_length} tokens"
        )

        config = AutoModelForImageTextToText.from_pretrained(model_dir).config
        plan = plan_packing([lengths[i] for i in keep], args.max_length)
        packed_batches = [{"bin": [keep[j] for j in b]} for b in plan.bins]
        order = keep[:]
        random.Random(args.seed).shuffle(order)
        padded_batches = [{"bin": order[i : i + args.batch_size]} for i in range(0, len(order), args.batch_size)]
        # one "bin" item per step: a padded batch is one bin of batch_size records, each its own row
        packed = PackedCollator(
            source,
            encoder,
            find_rope_index(AutoModelForImageTextToText.from_pretrained(model_dir)),
            config.image_token_id,
            config.video_token_id,
        )
        padded = PaddedCollator(
            source, encoder, processor.tokenizer.pad_token_id, config.image_token_id, config.video_token_id
        )
        kw = {"device": device, "dtype": dtype, "attn": attn}
        a = run(model_dir, padded, [[b] for b in padded_batches], "padded", **kw)
        b = run(model_dir, packed, [[b] for b in packed_batches], "packed", **kw)
        assert a["tokens"] == b["tokens"], "both variants must train the same tokens"
    return a, b, plan


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vocab", choices=("small", "qwen"), default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", default="qwen2_5_vl", help="tiny model family (postvl.families.FAMILY_NAMES)")
    return parser.parse_args(argv)


def main() -> None:
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    a, b, plan = compare(parse_args())
    print(
        f"non-pad share: packed {100 * b['tokens'] / b['slots']:.1f}% (rows are not padded; bins fill "
        f"{100 * plan.fill:.1f}% of max_length), padded {100 * a['tokens'] / a['slots']:.1f}%"
    )
    speedup = (b["tokens"] / b["seconds"]) / (a["tokens"] / a["seconds"])
    print(f"speedup: {speedup:.2f}")
    print(
        f"RESULT sft_packed_vs_padded {speedup:.2f} x | trained tokens/s of SFT with exact mRoPE packing / padded "
        f"batches, same records and initial weights ({b['tokens']:,} tokens each)"
    )


if __name__ == "__main__":
    main()
