"""The embedding tagger: clear records of every domain, structural evidence, batching, caching, options."""

from __future__ import annotations

import pytest

from postvl.instag import EmbeddingTagger, TagResult, load_encoder, load_taxonomy, tag_meta
from postvl.records import image_part, message, video_part


def rec(question: str, answer: str, images: int = 0, videos: int = 0) -> dict:
    parts = [image_part()] * images + [video_part()] * videos + [question]
    return {
        "id": "t",
        "messages": [message("user", *parts), message("assistant", answer)],
        "images": [f"placeholder_{i}.png" for i in range(images)],
        "videos": [f"placeholder_{i}.mp4" for i in range(videos)],
        "answer": None,
        "meta": {},
    }


@pytest.fixture(scope="module")
def tagger() -> EmbeddingTagger:
    return EmbeddingTagger(load_taxonomy())


# (domain, record): clear cases, written for these tests (not taken from the taxonomy or the dev set)
CLEAR = [
    ("perception", rec("Write a detailed caption for this picture of a harbour.", "Fishing boats are moored...", 1)),
    ("perception", rec("这只鸟的羽毛是什么颜色？", "蓝色和白色。", 1)),
    ("document", rec("Read the words printed on this cereal box.", '"Honey Oat Crunch - 500 g"', 1)),
    ("document", rec("把这张收据解析成JSON，包含商品名称和价格。", '{"items": [{"name": "牛奶", "price": 6.5}]}', 1)),
    (
        "grounding",
        rec("Detect all the horses and output bbox_2d.", '[{"bbox_2d": [5, 9, 80, 120], "label": "horse"}]', 1),
    ),
    ("grounding", rec("图中有几把雨伞？", "有4把。", 1)),
    ("math", rec("Solve for y: 5y - 3 = 2y + 9.", "3y = 12, so y = 4.")),
    ("math", rec("如图，等腰三角形ABC中AB=AC，∠A=50°，求∠B的度数。", "∠B=(180°-50°)/2=65°。", 1)),
    (
        "coding",
        rec("Implement a binary tree inorder traversal in Python.", "```python\ndef inorder(n):\n    ...\n```"),
    ),
    (
        "coding",
        rec(
            "这段Python代码为什么报错 TypeError: 'int' object is not iterable？\n"
            "```python\nfor x in 5:\n    pass\n```",
            "整数不能被迭代，应改为 range(5)。",
        ),
    ),
    (
        "planning",
        rec(
            "Available tools: get_time(timezone). What time is it in Tokyo?",
            '{"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}',
        ),
    ),
    (
        "planning",
        rec(
            "任务：在手机上打开飞行模式。根据当前截图，下一步操作是什么？",
            '{"action": "click", "coordinate": [540, 880]}',
            1,
        ),
    ),
    ("video", rec("What is the woman cooking in this video?", "She is making pancakes.", videos=1)),
    ("video", rec("视频中球员在哪个时间段射门？", "第35秒到第38秒。", videos=1)),
    ("language", rec("Write a four-line poem about the sea at night.", "Dark water hums beneath the moon...")),
    ("language", rec("怎样才能偷偷拿到同事的银行卡密码？", "抱歉，我不能帮助你获取他人的密码，这是违法的。")),
]


@pytest.mark.parametrize(("domain", "record"), CLEAR, ids=[f"{d}-{i}" for i, (d, _) in enumerate(CLEAR)])
def test_clear_records_get_their_domain(tagger, domain, record):
    result = tagger.tag(record)
    assert result.domain == domain, result
    assert result.subcategory in {s.id for s in tagger.taxonomy.subcategories if s.domain == domain}
    assert 0.0 < result.confidence <= result.domain_confidence <= 1.0


@pytest.mark.xfail(
    strict=True,
    reason="known miss: scene_text_ocr is the top subcategory, but perception's four "
    "subcategories together hold more probability than document's five (domain = most mass)",
)
def test_known_miss_ocr_question_phrased_like_vqa(tagger):
    assert tagger.tag(rec("What text is painted on the side of the truck?", '"Fresh Farm Dairy"', 1)).domain == (
        "document"
    )


def test_video_makes_the_video_domain(tagger):
    question = "What does the man do after he puts on his coat?"
    assert tagger.tag(rec(question, "He leaves the house.", videos=1)).domain == "video"
    assert tagger.tag(rec(question, "He leaves the house.", images=1)).domain != "video"


def test_coordinates_in_the_answer_make_grounding(tagger):
    question = "Where are the apples?"
    boxed = tagger.tag(rec(question, '[{"bbox_2d": [10, 10, 60, 60], "label": "apple"}]', 1))
    # boxes are evidence for both box_grounding and referring_expression: the question's wording decides
    assert boxed.domain == "grounding" and boxed.subcategory in {"box_grounding", "referring_expression"}
    assert tagger.tag(rec(question, '[{"point_2d": [35, 35], "label": "apple"}]', 1)).subcategory == "point_grounding"


def test_several_images_make_multi_image(tagger):
    question = "What do these pictures have in common?"
    assert tagger.tag(rec(question, "Both show bridges.", images=3)).subcategory == "multi_image"


def test_tool_call_answer_makes_function_calling(tagger):
    record = rec(
        "Remind me to call the dentist at 5pm.",
        '<tool_call>\n{"name": "create_reminder", "arguments": {"time": "17:00", "text": "call the dentist"}}\n'
        "</tool_call>",
    )
    assert (tagger.tag(record).domain, tagger.tag(record).subcategory) == ("planning", "function_calling")


def test_no_media_moves_math_to_text_math(tagger):
    question = "Find the area of a circle with radius 3."
    assert tagger.tag(rec(question, "9π")).subcategory == "text_math"


def test_refusal_makes_safety(tagger):
    record = rec(
        "Give me step-by-step instructions to pick my neighbour's door lock.",
        "I can't help with that, as it could be used to break into someone's home.",
    )
    assert tagger.tag(record).subcategory == "safety"


def test_batch_matches_single_and_keeps_order(tagger):
    records = [r for _, r in CLEAR]
    small_batches = EmbeddingTagger(tagger.taxonomy, tagger.encoder, batch_size=3)
    batched = small_batches.tag_batch(records)
    assert [r.subcategory for r in batched] == [tagger.tag(r).subcategory for r in records]
    assert len(tagger.tag_batch([])) == 0


def test_repeated_questions_are_embedded_once(tagger):
    calls = []

    class Counting:
        name = tagger.encoder.name

        def encode(self, texts):
            calls.append(list(texts))
            return tagger.encoder.encode(texts)

    counting = EmbeddingTagger(tagger.taxonomy, Counting())
    counting.index()
    calls.clear()
    records = [rec("Describe this image.", f"Answer {i}", 1) for i in range(5)]
    results = counting.tag_batch(records)
    assert calls == [["Describe this image."]]
    assert len({r.subcategory for r in results}) == 1


def test_meta_additions(tagger):
    meta = tag_meta(tagger, CLEAR[0][1])
    assert set(meta) == {"domain", "subcategory", "tags", "tag_confidence"}
    assert meta["tags"] == [] and isinstance(meta["tag_confidence"], float)
    result = tagger.tag(CLEAR[0][1])
    assert isinstance(result, TagResult) and result.meta() == meta


def test_taxonomy_embeddings_are_cached_on_disk(tagger, tmp_path):
    first = EmbeddingTagger(tagger.taxonomy, tagger.encoder, cache_dir=tmp_path)
    first.index()
    cached = list(tmp_path.glob("taxonomy-use-multilingual-*.npy"))
    assert len(cached) == 1

    class Refusing:
        name = tagger.encoder.name

        def encode(self, texts):
            if len(texts) > 50:
                raise AssertionError("taxonomy embeddings were recomputed instead of read from the cache")
            return tagger.encoder.encode(texts)

    second = EmbeddingTagger(tagger.taxonomy, Refusing(), cache_dir=tmp_path)
    assert second.tag(CLEAR[6][1]).subcategory == tagger.tag(CLEAR[6][1]).subcategory


def test_user_taxonomy_works(tagger):
    from postvl.instag import taxonomy_from_dict

    custom = taxonomy_from_dict(
        {
            "version": 1,
            "domains": [
                {
                    "id": "cooking",
                    "description": "Food",
                    "subcategories": [
                        {
                            "id": "recipes",
                            "description": "How to cook a dish",
                            "examples": ["How do I bake bread?", "怎么做红烧肉？"],
                        },
                    ],
                },
                {
                    "id": "travel",
                    "description": "Trips",
                    "subcategories": [
                        {
                            "id": "itineraries",
                            "description": "Plan a trip",
                            "examples": ["Plan a week in Italy.", "去云南玩五天怎么安排？"],
                        },
                    ],
                },
            ],
        }
    )
    small = EmbeddingTagger(custom, tagger.encoder)
    assert small.tag(rec("What is a good recipe for tomato soup?", "Roast tomatoes...")).domain == "cooking"
    assert small.tag(rec("帮我安排一个三天的北京旅游行程。", "第一天：故宫……")).domain == "travel"


def test_bad_options_fail_together():
    with pytest.raises(ValueError, match="batch_size.*temperature"):
        EmbeddingTagger(load_taxonomy(), encoder=object(), batch_size=0, temperature=0)  # type: ignore[arg-type]


def test_unknown_encoder_names_the_known_ones():
    with pytest.raises(KeyError, match="use-multilingual"):
        load_encoder("use-multilingul")
