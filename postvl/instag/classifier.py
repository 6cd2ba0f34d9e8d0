"""The ``classifier`` backend: a small tagger trained on labelled QA pairs, the report's distilled Qwen2-VL-Instag.

    postvl tag train --labels runs/tag_llm_subset --out runs/tagger [--base PATH] [--eval held_out.jsonl]
    postvl tag runs/chatml --out runs/tagged --backend classifier --model runs/tagger

Labels are a tagged stage folder (``meta.domain`` / ``meta.subcategory``, e.g. ``llm`` labels of a subset) or a JSONL
of records with ``label_domain`` / ``label_subcategory`` (``tests/data/instag_dev.jsonl``). Two kinds of model:

- default (no ``--base``): a softmax-regression head over the embedding backend's sentence embedding of the question
  plus the structural signals (``features.py``), trained with Adam in numpy in seconds. The taxonomy's own
  descriptions and examples join the training set as extra labelled questions (``taxonomy_examples``), so a
  subcategory with few labels still has a prototype.
- ``--base PATH``: a local transformers model fine-tuned as ``AutoModelForSequenceClassification`` on the question
  and answer text (media appear as ``<image>`` / ``<video>`` markers). No hub: the base must be a local folder.

A stratified ``holdout_fraction`` of the labels is held out to measure accuracy, then (``refit``) the model is trained
again on every label. ``OUT/classifier.json`` holds the kind, the labels (subcategory ids), the taxonomy fingerprint
and the measured accuracies; the weights are ``OUT/head.npz`` or ``OUT/model/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postvl.instag.embedding import TagResult, _clip, _one_blas_thread
from postvl.instag.features import SIGNALS, media_counts, record_texts, signals
from postvl.instag.taxonomy import Taxonomy, load_taxonomy

logger = logging.getLogger(__name__)

CLASSIFIER_FILE = "classifier.json"
HEAD_FILE = "head.npz"
MODEL_SUBDIR = "model"
KINDS = ("embedding_head", "transformers")


@dataclass(frozen=True)
class TrainConfig:
    """Options of ``postvl tag train``.

    Attributes:
        labels: labelled data: tagged stage folders or JSONL files with ``label_subcategory``.
        out: the model folder to write.
        base: a local transformers model to fine-tune (``None``: the embedding head).
        taxonomy: the taxonomy YAML (default: ``configs/taxonomy.yaml``).
        encoder: sentence encoder of the embedding head.
        eval: more labelled files to measure the trained model on (reported, never trained on).
        holdout_fraction: share of the labels held out (stratified) to measure accuracy; 0 skips it.
        taxonomy_examples: add the taxonomy's descriptions and examples as training questions.
        refit: after measuring, train again on every label (the saved model).
        epochs: passes over the data (default: 300 for the head, 5 for a transformers base).
        learning_rate: default 0.05 for the head (Adam), 5e-5 for a transformers base (AdamW).
        l2: weight decay of the head.
        batch_size: examples per step of a transformers base.
        max_length: tokens of a transformers base's input.
        seed: split and initialisation seed.
    """

    labels: tuple[str, ...]
    out: str
    base: str | None = None
    taxonomy: str | None = None
    encoder: str = "use-multilingual"
    eval: tuple[str, ...] = ()
    holdout_fraction: float = 0.2
    taxonomy_examples: bool = True
    refit: bool = True
    epochs: int | None = None
    learning_rate: float | None = None
    l2: float = 1e-4
    batch_size: int = 16
    max_length: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple([self.labels] if isinstance(self.labels, str) else self.labels))
        object.__setattr__(self, "eval", tuple([self.eval] if isinstance(self.eval, str) else self.eval))
        errors = []
        if not self.labels:
            errors.append("give labelled data with --labels")
        missing = [p for p in (*self.labels, *self.eval) if not Path(p).exists()]
        if missing:
            errors.append(f"labelled data not found: {missing}")
        if self.base is not None and not Path(self.base).is_dir():
            errors.append(f"base {self.base!r} is not a local folder (the hub is not used: save the model first)")
        if not 0 <= self.holdout_fraction < 1:
            errors.append(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1 or self.max_length < 8:
            errors.append(
                f"epochs >= 1, batch_size >= 1, max_length >= 8, got {self.epochs}, {self.batch_size}, "
                f"{self.max_length}"
            )
        if (self.learning_rate is not None and self.learning_rate <= 0) or self.l2 < 0:
            errors.append(f"learning_rate must be > 0 and l2 >= 0, got {self.learning_rate}, {self.l2}")
        if errors:
            raise ValueError("postvl tag train: " + "; ".join(errors))


# --------------------------------------------------------------------------------------------------------------------
# Labels


def read_labels(paths: Sequence[str | Path], taxonomy: Taxonomy) -> tuple[list[dict[str, Any]], list[str]]:
    """Labelled records and their subcategory ids from stage folders and JSON / JSONL files.

    A record's label is ``label_subcategory`` (else ``meta.subcategory``); records without one are skipped.

    Raises:
        ValueError: a label is not a subcategory of the taxonomy (all such labels are listed), or no label was found.
    """
    from postvl.io import read_stage

    records: list[dict[str, Any]] = []
    for path in map(Path, paths):
        if path.is_dir():
            records += [r for kind in ("sft", "preference") for r in read_stage(path, kind=kind)]
        else:
            text = path.read_text(encoding="utf-8")
            rows = (
                json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
            )
            records += rows
    kept, labels, unknown = [], [], set()
    known = set(taxonomy.subcategory_ids)
    for record in records:
        meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
        label = record.get("label_subcategory") or meta.get("subcategory")
        if not label:
            continue
        if label not in known:
            unknown.add(label)
            continue
        kept.append(record)
        labels.append(label)
    if unknown:
        raise ValueError(
            f"labels {sorted(unknown)} are not subcategories of {taxonomy.source or 'the taxonomy'}; "
            "relabel them or pass the taxonomy they come from with --taxonomy"
        )
    if not kept:
        raise ValueError(
            f"no labelled record in {list(map(str, paths))}: records need label_subcategory or meta.subcategory"
        )
    logger.info("%d labelled records (of %d read)", len(kept), len(records))
    return kept, labels


def stratified_split(labels: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices ``(train, held_out)``: about ``fraction`` of each label's records held out (none of a single one)."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    train, held = [], []
    for label in sorted(by_label):
        rows = by_label[label]
        rng.shuffle(rows)
        k = round(len(rows) * fraction) if len(rows) > 1 else 0
        held += rows[:k]
        train += rows[k:]
    return sorted(train), sorted(held)


# --------------------------------------------------------------------------------------------------------------------
# The embedding head


def head_features(records: Sequence[dict[str, Any]], encoder: Any, max_chars: int = 256) -> Any:
    """Question embedding (``max_chars`` of it) followed by the 0/1 structural signals, one row per record."""
    import numpy as np

    questions, rows = [], []
    for record in records:
        question, answer = record_texts(record)
        questions.append(_clip(question, max_chars))
        found = signals(record, question, answer)
        rows.append([found.get(name, 0.0) for name in SIGNALS])
    return np.hstack([encoder.encode(questions), np.asarray(rows, dtype=np.float32).reshape(len(records), -1)])


def taxonomy_training_set(taxonomy: Taxonomy, encoder: Any) -> tuple[Any, list[str]]:
    """Features and labels of the taxonomy's descriptions and examples (as text-only questions, no signals)."""
    import numpy as np

    texts, labels = [], []
    for sub in taxonomy.subcategories:
        for text in sub.texts():
            texts.append(text)
            labels.append(sub.id)
    x = np.hstack([encoder.encode(texts), np.zeros((len(texts), len(SIGNALS)), dtype=np.float32)])
    return x, labels


def train_softmax(x: Any, y: Any, n_classes: int, *, epochs: int, lr: float, l2: float) -> tuple[Any, Any]:
    """Multinomial logistic regression, full batch with Adam; returns ``(weights (d, k), bias (k,))``."""
    import numpy as np

    w = np.zeros((x.shape[1], n_classes))
    b = np.zeros(n_classes)
    moments = [[np.zeros_like(w), np.zeros_like(w)], [np.zeros_like(b), np.zeros_like(b)]]
    target = np.eye(n_classes)[y]
    with _one_blas_thread():
        for t in range(1, epochs + 1):
            z = x @ w + b
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            g = (p - target) / len(x)
            for param, grad, (m, v) in ((w, x.T @ g + l2 * w, moments[0]), (b, g.sum(axis=0), moments[1])):
                m *= 0.9
                m += 0.1 * grad
                v *= 0.999
                v += 0.001 * grad * grad
                param -= lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return w, b


# --------------------------------------------------------------------------------------------------------------------
# Tagging with a trained classifier


class ClassifierTagger:
    """Tags records with a trained classifier (either kind); ``tag_batch`` as the ``EmbeddingTagger``'s.

    Args:
        taxonomy: the taxonomy (its subcategories must include the classifier's labels).
        labels: the classifier's output classes (subcategory ids).
        predict: records -> probabilities ``(n, len(labels))``.
        batch_size: records per ``predict`` call.
    """

    def __init__(self, taxonomy: Taxonomy, labels: Sequence[str], predict: Any, batch_size: int = 256) -> None:
        domain_of = {s.id: s.domain for s in taxonomy.subcategories}
        unknown = [label for label in labels if label not in domain_of]
        if unknown:
            raise ValueError(
                f"classifier labels {unknown} are not in the taxonomy {taxonomy.source!r}: tag with the "
                "taxonomy it was trained on (--taxonomy)"
            )
        self.taxonomy = taxonomy
        self.labels = list(labels)
        self.domains = [domain_of[label] for label in self.labels]
        self.predict = predict
        self.batch_size = batch_size

    def tag_batch(self, records: Sequence[dict[str, Any]]) -> list[TagResult]:
        """One ``TagResult`` per record: the domain with the most probability, its best subcategory."""
        results: list[TagResult] = []
        for start in range(0, len(records), self.batch_size):
            chunk = records[start : start + self.batch_size]
            for record, prob in zip(chunk, self.predict(chunk), strict=True):
                mass: dict[str, float] = {}
                for domain, p in zip(self.domains, prob, strict=True):
                    mass[domain] = mass.get(domain, 0.0) + float(p)
                domain = max(mass, key=mass.__getitem__)
                j = max((j for j, d in enumerate(self.domains) if d == domain), key=lambda j: prob[j])
                results.append(
                    TagResult(
                        domain, self.labels[j], float(prob[j]), mass[domain], signals=tuple(sorted(signals(record)))
                    )
                )
        return results

    def tag(self, record: dict[str, Any]) -> TagResult:
        return self.tag_batch([record])[0]


def _softmax(z: Any) -> Any:
    import numpy as np

    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def head_tagger(taxonomy: Taxonomy, labels: Sequence[str], w: Any, b: Any, encoder: Any) -> ClassifierTagger:
    return ClassifierTagger(taxonomy, labels, lambda records: _softmax(head_features(records, encoder) @ w + b))


def load_classifier(model_dir: str | Path, *, taxonomy: Taxonomy | None = None) -> ClassifierTagger:
    """A ``ClassifierTagger`` from a folder written by ``train_classifier``.

    Raises:
        FileNotFoundError: the folder holds no ``classifier.json``.
    """
    from postvl.instag.embedding import load_encoder

    model_dir = Path(model_dir)
    spec_path = model_dir / CLASSIFIER_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(f"{model_dir} holds no {CLASSIFIER_FILE}: train one with `postvl tag train`")
    spec = json.loads(spec_path.read_text())
    taxonomy = taxonomy or load_taxonomy()
    if spec.get("taxonomy_fingerprint") != taxonomy.fingerprint():
        logger.warning("%s was trained on another version of the taxonomy (%s)", model_dir, spec.get("taxonomy"))
    if spec["kind"] == "embedding_head":
        import numpy as np

        weights = np.load(model_dir / HEAD_FILE)
        return head_tagger(taxonomy, spec["labels"], weights["w"], weights["b"], load_encoder(spec["encoder"]))
    if spec["kind"] == "transformers":
        return _transformers_tagger(taxonomy, spec, model_dir / MODEL_SUBDIR)
    raise ValueError(f"{spec_path}: unknown classifier kind {spec['kind']!r}; known: {KINDS}")


# --------------------------------------------------------------------------------------------------------------------
# A transformers sequence classifier


def classifier_text(record: dict[str, Any], max_chars: int = 2000) -> str:
    """The text a transformers classifier reads: media markers, the question and the start of the answer."""
    question, answer = record_texts(record)
    images, videos = media_counts(record)
    markers = "<image> " * images + "<video> " * videos
    return f"{markers}{_clip(question, max_chars)}\n\nAnswer: {_clip(answer, max_chars // 2)}"


def _transformers_predict(model: Any, tokenizer: Any, max_length: int) -> Any:
    import torch

    def predict(records: Sequence[dict[str, Any]]) -> Any:
        inputs = tokenizer(
            [classifier_text(r) for r in records],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            return torch.softmax(model(**inputs).logits.float(), dim=-1).numpy()

    return predict


def _transformers_tagger(taxonomy: Taxonomy, spec: dict[str, Any], model_dir: Path) -> ClassifierTagger:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    return ClassifierTagger(
        taxonomy, spec["labels"], _transformers_predict(model, tokenizer, spec["max_length"]), batch_size=32
    )


def _train_transformers(cfg: TrainConfig, texts: list[str], y: list[int], labels: list[str], out: Path | None) -> Any:
    """Fine-tune ``cfg.base`` as a sequence classifier; save it to ``out`` when given. Returns
    ``(model, tokenizer, mean loss per epoch)``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg.base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate or 5e-5)
    order = list(range(len(texts)))
    rng = random.Random(cfg.seed)
    model.train()
    losses: list[float] = []
    for epoch in range(cfg.epochs or 5):
        rng.shuffle(order)
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            batch = tokenizer(
                [texts[i] for i in rows], padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt"
            )
            loss = model(**batch, labels=torch.tensor([y[i] for i in rows])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            total += loss.detach().item() * len(rows)
        losses.append(round(total / len(order), 5))
        logger.info("epoch %d: loss %.4f", epoch + 1, losses[-1])
    model.eval()
    if out is not None:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return model, tokenizer, losses


# --------------------------------------------------------------------------------------------------------------------
# Training


def accuracy(tagger: Any, records: Sequence[dict[str, Any]], labels: Sequence[str], taxonomy: Taxonomy) -> dict:
    """Domain and subcategory accuracy of ``tagger`` on labelled records, overall and per language."""
    from postvl.instag.evaluate import evaluate

    labelled = [
        r | {"label_subcategory": s, "label_domain": taxonomy.domain_of(s)}
        for r, s in zip(records, labels, strict=True)
    ]
    report = evaluate(tagger, labelled)
    report["errors"] = report["errors"][:20]
    return report


def train_classifier(cfg: TrainConfig) -> dict[str, Any]:
    """Train, measure and save a classifier; returns the report also saved in ``OUT/classifier.json``.

    The report holds ``held_out`` (accuracy on the held-out split, when ``holdout_fraction`` > 0) and ``eval``
    (accuracy on each ``cfg.eval`` file).
    """
    from postvl.instag.embedding import load_encoder

    taxonomy = load_taxonomy(cfg.taxonomy)
    records, labels = read_labels(cfg.labels, taxonomy)
    classes = list(taxonomy.subcategory_ids)
    index = {label: i for i, label in enumerate(classes)}
    train_rows, held_rows = stratified_split(labels, cfg.holdout_fraction, cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = load_encoder(cfg.encoder) if cfg.base is None else None
    extra_texts = [t for sub in taxonomy.subcategories for t in sub.texts()]
    extra_y = [index[sub.id] for sub in taxonomy.subcategories for _ in sub.texts()]
    extra_x = taxonomy_training_set(taxonomy, encoder)[0] if cfg.base is None and cfg.taxonomy_examples else None

    def fit(rows: list[int], save: bool) -> ClassifierTagger:
        import numpy as np

        subset = [records[i] for i in rows]
        y = [index[labels[i]] for i in rows]
        if cfg.base is None:
            x = head_features(subset, encoder)
            if extra_x is not None:
                x = np.vstack([x, extra_x])
                y = y + extra_y
            w, b = train_softmax(
                x, np.asarray(y), len(classes), epochs=cfg.epochs or 300, lr=cfg.learning_rate or 0.05, l2=cfg.l2
            )
            if save:
                np.savez(out / HEAD_FILE, w=w, b=b)
            return head_tagger(taxonomy, classes, w, b, encoder)
        texts = [classifier_text(r) for r in subset]
        if cfg.taxonomy_examples:
            texts += extra_texts
            y = y + extra_y
        model, tokenizer, losses = _train_transformers(cfg, texts, y, classes, out / MODEL_SUBDIR if save else None)
        report["train_loss"] = losses
        return ClassifierTagger(taxonomy, classes, _transformers_predict(model, tokenizer, cfg.max_length), 32)

    report: dict[str, Any] = {"n_labels": len(records), "n_train": len(train_rows), "n_held_out": len(held_rows)}
    final_rows = list(range(len(records))) if cfg.refit else train_rows
    if held_rows:
        split_tagger = fit(train_rows, save=not cfg.refit)
        report["held_out"] = accuracy(
            split_tagger, [records[i] for i in held_rows], [labels[i] for i in held_rows], taxonomy
        )
        logger.info(
            "held-out accuracy: domain %.3f, subcategory %.3f (n=%d)",
            report["held_out"]["domain_accuracy"],
            report["held_out"]["subcategory_accuracy"],
            len(held_rows),
        )
    tagger = fit(final_rows, save=True) if (cfg.refit or not held_rows) else split_tagger
    report["eval"] = {}
    for path in cfg.eval:
        eval_records, eval_labels = read_labels([path], taxonomy)
        report["eval"][str(path)] = accuracy(tagger, eval_records, eval_labels, taxonomy)
    spec = {
        "kind": "embedding_head" if cfg.base is None else "transformers",
        "labels": classes,
        "encoder": cfg.encoder,
        "max_length": cfg.max_length,
        "taxonomy": taxonomy.source,
        "taxonomy_fingerprint": taxonomy.fingerprint(),
        "config": dataclasses.asdict(cfg),
        "report": report,
    }
    from postvl.io import write_json_atomic

    write_json_atomic(out / CLASSIFIER_FILE, spec)  # last: a folder with classifier.json is a finished model
    return report
