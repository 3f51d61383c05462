"""Training-free extractive baselines for the MultimodalSum gold sets: each picks ONE input review per entity.

Every selector takes ``entities: list[list[str]]`` (the input reviews of each entity, 8 in the gold sets) and returns
the chosen index per entity; `pick` turns indices into texts. The texts are then scored with the §5 protocol
(`models.multimodalsum.rouge.rouge_scores`).

- `random_review`: a uniformly random input review, ``random.Random(seed)``, one draw per entity in entity order.
- `clustroid_review`: the review with the highest mean ROUGE to the entity's other input reviews. "ROUGE" here is the
  protocol's own score of one pair, reduced to one number: the mean of py-rouge R1 / R2 / RL F after the PlanSum
  preprocessing (``rouge_per_candidate(...)["mean"]``), review i as candidate and review j as the single reference,
  over all j != i (all ordered pairs are computed; no symmetry is assumed).
- `lexrank_review`: LexRank (Erkan & Radev 2004) from the ``lexrank`` package (MIT): every input review is one
  "sentence" of the entity's graph, and the most central review is chosen (``LexRank.rank_sentences``). IDF comes from
  a background corpus in which every input review of the whole evaluated split is one document (by default the
  reviews passed in; pass ``background`` to use another set). English stop words from the package; continuous LexRank
  (``threshold=None``: row-normalised idf-modified-cosine weights, no 0/1 cut-off). The package tokenises with its own
  regexes and needs no downloaded data.
- `oracle_review`: the review with the best protocol ROUGE (the same one-number mean as the clustroid, averaged over
  the entity's references) against the references: the upper bound of single-review extraction. It reads the
  references, so it is not a system.

Ties go to the lowest index.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from models.multimodalsum.rouge import rouge_per_candidate

SELECTION_SCORE = "mean"  # mean of py-rouge R1/R2/RL F (percent) after PlanSum preprocessing
LEXRANK_THRESHOLD = None  # continuous LexRank


def _check_entities(entities: Sequence[Sequence[str]]) -> None:
    if isinstance(entities, str) or not entities:
        raise ValueError("entities must be a non-empty list of lists of input reviews")
    for i, revs in enumerate(entities):
        if isinstance(revs, str) or not revs or not all(isinstance(r, str) for r in revs):
            raise ValueError(f"entity {i}: expected a non-empty list of review strings")


def pick(entities: Sequence[Sequence[str]], indices: Sequence[int]) -> list[str]:
    if len(entities) != len(indices):
        raise ValueError(f"{len(entities)} entities but {len(indices)} indices")
    return [revs[i] for revs, i in zip(entities, indices)]


def random_review(entities: Sequence[Sequence[str]], seed: int = 0) -> list[int]:
    _check_entities(entities)
    rng = random.Random(seed)
    return [rng.randrange(len(revs)) for revs in entities]


def pairwise_rouge(reviews: Sequence[str]) -> np.ndarray:
    """[n, n] matrix: entry (i, j) is the selection score of review i as candidate against review j; diagonal NaN."""
    n = len(reviews)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    scores = rouge_per_candidate([reviews[i] for i, _ in pairs], [[reviews[j]] for _, j in pairs]) if pairs else []
    mat = np.full((n, n), np.nan)
    for (i, j), s in zip(pairs, scores):
        mat[i, j] = s[SELECTION_SCORE]
    return mat


def clustroid_review(entities: Sequence[Sequence[str]]) -> list[int]:
    _check_entities(entities)
    out = []
    for revs in entities:
        if len(revs) == 1:
            out.append(0)
            continue
        mean_to_others = np.nanmean(pairwise_rouge(revs), axis=1)
        out.append(int(np.argmax(mean_to_others)))  # first maximum
    return out


def oracle_scores(reviews: Sequence[str], references: Sequence[str]) -> list[float]:
    """Selection score of every input review against the entity's references (averaged over the references)."""
    return [s[SELECTION_SCORE] for s in rouge_per_candidate(list(reviews), [list(references)] * len(reviews))]


def oracle_review(entities: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> list[int]:
    _check_entities(entities)
    if len(entities) != len(references):
        raise ValueError(f"{len(entities)} entities but {len(references)} reference lists")
    return [int(np.argmax(oracle_scores(revs, refs))) for revs, refs in zip(entities, references)]


def lexrank_review(entities: Sequence[Sequence[str]], background: Sequence[str] | None = None, threshold: float | None = LEXRANK_THRESHOLD) -> list[int]:
    _check_entities(entities)
    from lexrank import STOPWORDS, LexRank

    corpus = list(background) if background is not None else [r for revs in entities for r in revs]
    ranker = LexRank([[doc] for doc in corpus], stopwords=STOPWORDS["en"])
    out = []
    for revs in entities:
        if len(revs) == 1:
            out.append(0)
            continue
        scores = np.asarray(ranker.rank_sentences(list(revs), threshold=threshold, fast_power_method=True), dtype=float)
        out.append(int(np.argmax(scores)))
    return out
