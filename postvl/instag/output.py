"""What the tagging stage writes: the ``meta`` additions of a record and a plot of the tag distribution.

from postvl.instag.output import tag_meta, count_tags, plot_distribution
record["meta"] = {**decode_meta(record["meta"]), **tag_meta(tagger, record)}
plot_distribution([decode_meta(r["meta"]) for r in records], "out/tag_distribution.png", taxonomy)
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from postvl.instag.embedding import EmbeddingTagger, TagResult
    from postvl.instag.taxonomy import Taxonomy

logger = logging.getLogger(__name__)

META_KEYS = ("domain", "subcategory", "tags", "tag_confidence")


def tag_meta(tagger: EmbeddingTagger, record: dict[str, Any]) -> dict[str, Any]:
    """The ``meta`` keys tagging adds to one record: ``domain``, ``subcategory``, ``tags``, ``tag_confidence``.

    For many records call ``tagger.tag_batch(records)`` and take ``result.meta()`` of each (batched encoder).
    """
    return tagger.tag(record).meta()


def count_tags(items: Iterable[Mapping[str, Any] | TagResult]) -> dict[str, dict[str, int]]:
    """Counts per domain and per subcategory from ``meta`` dicts (or ``TagResult`` objects).

    Returns:
        ``{"domains": {id: n}, "subcategories": {id: n}}``, most frequent first.
    """
    domains: Counter[str] = Counter()
    subs: Counter[str] = Counter()
    for item in items:
        meta = item if isinstance(item, Mapping) else item.meta()
        domains[meta["domain"]] += 1
        subs[meta["subcategory"]] += 1
    return {"domains": dict(domains.most_common()), "subcategories": dict(subs.most_common())}


def plot_distribution(
    items: Iterable[Mapping[str, Any] | TagResult],
    path: str | Path,
    taxonomy: Taxonomy | None = None,
    title: str = "Domain / subcategory distribution",
) -> Path:
    """Write a PNG bar chart: records per domain (left) and per subcategory, coloured by domain (right).

    Args:
        items: ``meta`` dicts (with ``domain`` and ``subcategory``) or ``TagResult`` objects.
        path: the PNG to write (its folder is created); written to a temporary name, then renamed.
        taxonomy: when given, every domain and subcategory is shown in taxonomy order, zeros included.
        title: the figure title.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = count_tags(items)
    if taxonomy is not None:
        domain_ids = list(taxonomy.domain_ids)
        sub_ids = list(taxonomy.subcategory_ids)
        sub_domain = {s.id: s.domain for s in taxonomy.subcategories}
        # tags outside the taxonomy (an older run, another file) are still shown, after the known ones
        domain_ids += [d for d in counts["domains"] if d not in domain_ids]
        sub_ids += [s for s in counts["subcategories"] if s not in sub_domain]
    else:
        domain_ids = list(counts["domains"])
        sub_ids = list(counts["subcategories"])
        sub_domain = {}
    colours = plt.get_cmap("tab10")
    domain_colour = {d: colours(i % 10) for i, d in enumerate(domain_ids)}
    total = sum(counts["domains"].values())

    fig, (ax_d, ax_s) = plt.subplots(
        1, 2, figsize=(14, max(4.0, 0.28 * len(sub_ids) + 1.5)), gridspec_kw={"width_ratios": [1, 1.6]}
    )
    d_values = [counts["domains"].get(d, 0) for d in domain_ids]
    ax_d.barh(domain_ids, d_values, color=[domain_colour[d] for d in domain_ids])
    ax_d.invert_yaxis()
    ax_d.set_xlabel("records")
    ax_d.set_title(f"domains (n={total})")
    for y, v in enumerate(d_values):
        ax_d.text(v, y, f" {v}", va="center", fontsize=8)
    s_values = [counts["subcategories"].get(s, 0) for s in sub_ids]
    s_colours = [domain_colour.get(sub_domain.get(s, ""), "grey") for s in sub_ids]
    ax_s.barh(sub_ids, s_values, color=s_colours)
    ax_s.invert_yaxis()
    ax_s.tick_params(axis="y", labelsize=8)
    ax_s.set_xlabel("records")
    ax_s.set_title("subcategories (colour = domain)")
    for y, v in enumerate(s_values):
        ax_s.text(v, y, f" {v}", va="center", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(path)
    logger.info("tag distribution plot written to %s", path)
    return path
