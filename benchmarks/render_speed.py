"""Speed of ``count_tokens`` / ``tokenize_with_labels`` against running the real processor on every record.

    python benchmarks/render_speed.py [--records 2000] [--vocab qwen|small]

Builds the tiny Qwen2.5-VL processor offline (pixels 56*56..112*112) and random conversations with 0-3 images of
random sizes. The baseline is ``len(processor(text=..., images=...)["input_ids"][0])`` per record (what counting
tokens costs without ``postvl.chatml.render``); the image-token counts ``count_tokens`` takes are computed beforehand
from the image sizes (a builder reads them from image headers). Every count is checked against the baseline's.
Prints records/s per method, the ratio to the baseline measured in the same run, and a ``RESULT`` line for
``count_tokens_batch`` (what ``postvl build`` uses).
"""

from __future__ import annotations

import argparse
import random
import time

from PIL import Image

from postvl.chatml.render import count_media, count_tokens, count_tokens_batch, render, tokenize_with_labels
from postvl.modeling import build_tiny_processor, build_tokenizer
from postvl.records import image_part, message

WORDS = "the a cat dog chart shows value 你好 世界 图片 answer is 3 12.5 % red blue square moves left right".split()
FAMILY = "qwen2_5_vl"  # the tiny processor's family
SIZES = [(112, 112), (56, 56), (200, 100), (30, 300), (640, 480), (1024, 768)]


def random_record(rng: random.Random) -> tuple[list[dict], list[Image.Image]]:
    def sentence() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))

    n_images = rng.randint(0, 3)
    images = [Image.new("RGB", rng.choice(SIZES), "red") for _ in range(n_images)]
    messages = [message("user", *[image_part() for _ in images], sentence()), message("assistant", sentence())]
    if rng.random() < 0.3:
        messages += [message("user", sentence()), message("assistant", sentence() + "\n\n" + sentence())]
    return messages, images


def image_tokens(processor, image: Image.Image) -> int:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    size = processor.image_processor.size
    height, width = smart_resize(
        image.height, image.width, factor=28, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"]
    )
    return (height // 28) * (width // 28)


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:10.0f} records/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--vocab", choices=("qwen", "small"), default="qwen")
    args = parser.parse_args()
    processor = build_tiny_processor(build_tokenizer(args.vocab))
    tokenizer = processor.tokenizer
    rng = random.Random(0)
    records = [random_record(rng) for _ in range(args.records)]
    counts = [[image_tokens(processor, im) for im in images] for _, images in records]
    assert all(count_media(m)[0] == len(c) for (m, _), c in zip(records, counts, strict=True))

    start = time.perf_counter()
    baseline = [
        len(processor(text=[render(m, family=FAMILY)], images=ims or None)["input_ids"][0]) for m, ims in records
    ]
    t_processor = time.perf_counter() - start

    start = time.perf_counter()
    for messages, _ in records:
        render(messages, family=FAMILY)
    t_render = time.perf_counter() - start

    start = time.perf_counter()
    single = [count_tokens(m, c, [], tokenizer, family=FAMILY) for (m, _), c in zip(records, counts, strict=True)]
    t_single = time.perf_counter() - start

    start = time.perf_counter()
    batched: list[int] = []
    for i in range(0, len(records), 256):
        chunk = records[i : i + 256]
        batched += count_tokens_batch(
            [m for m, _ in chunk], counts[i : i + 256], [[]] * len(chunk), tokenizer, family=FAMILY
        )
    t_batch = time.perf_counter() - start

    start = time.perf_counter()
    for (messages, _), c in zip(records, counts, strict=True):
        tokenize_with_labels(messages, tokenizer, c, [], family=FAMILY)
    t_labels = time.perf_counter() - start

    if single != baseline or batched != baseline:
        raise SystemExit("count_tokens disagrees with the processor")
    n = len(records)
    print(f"{n} records, {sum(map(len, counts))} images, {args.vocab} vocabulary")
    print(f"processor(text, images)      {rate(n, t_processor)}   1.0x")
    print(f"render                       {rate(n, t_render)}  {t_processor / t_render:6.1f}x")
    print(f"count_tokens                 {rate(n, t_single)}  {t_processor / t_single:6.1f}x")
    print(f"count_tokens_batch (256)     {rate(n, t_batch)}  {t_processor / t_batch:6.1f}x")
    print(f"tokenize_with_labels         {rate(n, t_labels)}  {t_processor / t_labels:6.1f}x")
    print(
        f"RESULT render_count_tokens_vs_processor {t_processor / t_batch:.1f} x | records/s of count_tokens_batch / "
        f"the processor run per record ({n} records, identical counts)"
    )


if __name__ == "__main__":
    main()
