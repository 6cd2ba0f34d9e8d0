"""Stage 1 of data cleaning: tag every QA pair with a domain and a subcategory of a taxonomy.

The default taxonomy (``configs/taxonomy.yaml``) has the Qwen2.5-VL report's shape, 8 domains / 30 subcategories.
Backends: ``embedding`` (offline sentence embeddings + structural evidence, ``EmbeddingTagger``).
Importing this package is cheap: numpy and the encoder load when a tagger first tags.
"""

from postvl.instag.embedding import ENCODERS, EmbeddingTagger, TagResult, load_encoder
from postvl.instag.features import SIGNALS, detect_language, record_texts, signals
from postvl.instag.output import count_tags, plot_distribution, tag_meta
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
    "ENCODERS",
    "SIGNALS",
    "Domain",
    "EmbeddingTagger",
    "Subcategory",
    "TagResult",
    "Taxonomy",
    "TaxonomyError",
    "count_tags",
    "detect_language",
    "load_encoder",
    "load_taxonomy",
    "plot_distribution",
    "record_texts",
    "signals",
    "tag_meta",
    "taxonomy_from_dict",
]
