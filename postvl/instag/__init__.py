"""Stage 1 of data cleaning: tag every QA pair with a domain and a subcategory of a taxonomy.

The default taxonomy (``configs/taxonomy.yaml``) has the Qwen2.5-VL report's shape, 8 domains / 30 subcategories.
Backends: ``embedding`` (offline sentence embeddings + structural evidence, ``EmbeddingTagger``), ``llm`` (a VLM
through the shared generator, ``LLMTagger``) and ``classifier`` (trained by ``postvl tag train``,
``ClassifierTagger``); the stage is ``run_tagging(TagConfig(...))`` (``postvl tag``).
Importing this package is cheap: numpy and the encoder load when a tagger first tags.
"""

from postvl.instag.classifier import ClassifierTagger, TrainConfig, load_classifier, train_classifier
from postvl.instag.embedding import ENCODERS, EmbeddingTagger, TagResult, load_encoder
from postvl.instag.features import SIGNALS, detect_language, record_texts, signals
from postvl.instag.llm import LLMTagger, parse_output
from postvl.instag.normalize import TagVocabulary, normalize_tag
from postvl.instag.output import count_tags, plot_distribution, tag_meta
from postvl.instag.stage import TagConfig, run_tagging
from postvl.instag.taxonomy import (
    DEFAULT_TAXONOMY_PATH,
    Domain,
    Subcategory,
    Taxonomy,
    TaxonomyError,
    load_taxonomy,
    taxonomy_from_dict,
)

__all__ = [
    "DEFAULT_TAXONOMY_PATH",
    "ClassifierTagger",
    "LLMTagger",
    "TagConfig",
    "TagVocabulary",
    "TrainConfig",
    "ENCODERS",
    "SIGNALS",
    "Domain",
    "EmbeddingTagger",
    "Subcategory",
    "TagResult",
    "Taxonomy",
    "TaxonomyError",
    "count_tags",
    "normalize_tag",
    "parse_output",
    "detect_language",
    "load_classifier",
    "load_encoder",
    "load_taxonomy",
    "plot_distribution",
    "record_texts",
    "run_tagging",
    "signals",
    "tag_meta",
    "taxonomy_from_dict",
    "train_classifier",
]
