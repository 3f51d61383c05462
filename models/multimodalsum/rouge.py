"""MultimodalSum's ROUGE protocol (spec §5; official `src/test.py` `rouge_preprocess` / `calc_rouge`).

Protocol (the default, and the one that reproduces spec §6 exactly):

1. PlanSum-style preprocessing of every candidate and reference (`preprocess`): lower-case; every character outside
   ``[A-Za-z0-9]`` becomes a space (py-rouge's ``REMOVE_CHAR_PATTERN``); "cannot" is protected as ``_cannot_``;
   tokenise; stem the tokens in place with **py-rouge's own stemmer** (``Rouge.load_stemmer(True)``: NLTK Porter in
   ``ORIGINAL_ALGORITHM`` mode, after py-rouge's WordNet table incl. its special cases, tokens of > 3 characters
   only; ``Rouge.stem_tokens``); restore "cannot".
2. py-rouge 1.1 ``Rouge(metrics=['rouge-n', 'rouge-l'], max_n=2, limit_length=False, apply_avg=True,
   apply_best=False, stemming=False, alpha=0.5)``; F-measures x 100.
3. Several references per candidate (Amazon: 3): score the candidates against each reference *column* separately and
   average the column scores (not best-of, and not py-rouge's own multi-reference pooling of counts).
4. References are whitespace-collapsed (``" ".join(x.split())``) first; the official code does this for every
   summary column (Yelp and Amazon); after step 1 it changes nothing.

Offline details (py-rouge 1.1 as shipped would fail here):

- py-rouge tokenises with ``nltk.word_tokenize``, which loads the punkt model (an NLTK data download). Punctuation is
  already gone when it tokenises, so punkt cannot split anything and NLTK's ``TreebankWordTokenizer`` (the same
  contraction rules, e.g. "gonna" -> "gon na", "cannot" -> "can not", which is why "cannot" is protected) gives the
  same tokens. `preprocess` uses it directly, and the scorer is a subclass of ``Rouge`` whose ``tokenize_text`` is
  that tokenizer and whose ``split_into_sentences`` refuses punkt (py-rouge re-preprocesses its inputs inside
  ``get_scores``). Nothing is monkeypatched on py-rouge's own class.
- py-rouge imports setuptools' ``pkg_resources`` (gone from setuptools >= 82) only for ``resource_filename`` of its
  bundled WordNet tables. When ``pkg_resources`` is not importable, a minimal stand-in with just that function is put
  in ``sys.modules`` while ``rouge`` is imported and removed again right after (py-rouge keeps its own reference).

`rouge_score_secondary` is the secondary column: Google ``rouge-score`` 0.1.2 on the raw texts (its own tokenizer,
``use_stemmer=True``), types rouge1 / rouge2 / **rougeL** (summary-level LCS over the whole text; ``rougeLsum``
would need sentence splitting, i.e. punkt, and the summaries here are single paragraphs), per-pair F-measure averaged
over the references of a candidate, then over candidates (no bootstrap aggregation). It is about a point away from
the protocol; report it beside, never instead of, `rouge_scores`.

All public functions take plain lists: ``candidates: list[str]``, ``references: list[list[str]]`` (the references of
candidate i are ``references[i]``), and return ``{"rouge1", "rouge2", "rougeL", "mean"}`` in percent.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import sys
import types
from collections.abc import Sequence

from nltk.tokenize import TreebankWordTokenizer

KEYS = ("rouge1", "rouge2", "rougeL")
PY_ROUGE_VERSION = "1.1"
PY_ROUGE_KWARGS = {
    "metrics": ["rouge-n", "rouge-l"],
    "max_n": 2,
    "limit_length": False,
    "apply_avg": True,
    "apply_best": False,
    "stemming": False,
    "alpha": 0.5,
}
_PY_ROUGE_KEYS = {"rouge1": "rouge-1", "rouge2": "rouge-2", "rougeL": "rouge-l"}
_TREEBANK = TreebankWordTokenizer()
# a key of py-rouge's wordnet_key_value_special_cases.txt (not in the main table): proves the special cases are loaded
_SPECIAL_CASE_PROBE = ("accidentally", "accid")


def _import_py_rouge():
    """py-rouge's ``Rouge`` class, imported without needing setuptools' ``pkg_resources``."""
    added = False
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")
        shim.__doc__ = "stand-in for py-rouge 1.1's import (models/multimodalsum/rouge.py); only resource_filename"

        def resource_filename(package: str, resource: str) -> str:
            return os.path.join(os.path.dirname(sys.modules[package].__file__), resource)

        shim.resource_filename = resource_filename
        sys.modules["pkg_resources"] = shim
        added = True
    try:
        from rouge.rouge import Rouge
    finally:
        if added:
            sys.modules.pop("pkg_resources", None)
    version = importlib.metadata.version("py-rouge")
    if version != PY_ROUGE_VERSION or not hasattr(Rouge, "KEEP_CANNOT_IN_ONE_WORD"):
        raise ImportError(f"models.multimodalsum.rouge needs py-rouge=={PY_ROUGE_VERSION} (the `rouge` module); found py-rouge {version}")
    return Rouge


Rouge = _import_py_rouge()


class OfflineRouge(Rouge):
    """py-rouge 1.1 with NLTK's TreebankWordTokenizer instead of ``nltk.word_tokenize`` (which needs punkt)."""

    @staticmethod
    def tokenize_text(text, language="english"):
        return _TREEBANK.tokenize(text)

    @staticmethod
    def split_into_sentences(text, ensure_compatibility, language="english"):
        if not ensure_compatibility:
            raise ValueError("OfflineRouge: ensure_compatibility=False would split sentences with NLTK punkt (a data download)")
        return text.split("\n")


def _ensure_py_rouge_resources() -> None:
    """py-rouge's stemmer in ORIGINAL_ALGORITHM mode and its WordNet table with the special cases (class-level state)."""
    if Rouge.STEMMER is None or getattr(Rouge.STEMMER, "mode", None) != "ORIGINAL_ALGORITHM":
        Rouge.load_stemmer(True)
    if not Rouge.WORDNET_KEY_VALUE:
        Rouge.load_wordnet_db(True)
    key, value = _SPECIAL_CASE_PROBE
    if Rouge.WORDNET_KEY_VALUE.get(key) != value:
        raise RuntimeError("py-rouge's WordNet table was loaded without its special cases (ensure_compatibility=False elsewhere in this process)")


@functools.lru_cache(maxsize=200_000)
def _preprocess_cached(text: str) -> str:
    text = Rouge.REMOVE_CHAR_PATTERN.sub(" ", text.lower()).strip()
    tokens = _TREEBANK.tokenize(Rouge.KEEP_CANNOT_IN_ONE_WORD.sub("_cannot_", text))
    Rouge.stem_tokens(tokens)  # in place
    return Rouge.KEEP_CANNOT_IN_ONE_WORD_REVERSED.sub("cannot", " ".join(tokens))


def preprocess(text: str) -> str:
    """PlanSum-style preprocessing (module docstring, step 1): lower-cased, stemmed tokens joined by spaces."""
    if not isinstance(text, str):
        raise TypeError(f"preprocess expects a str, got {type(text).__name__}")
    _ensure_py_rouge_resources()
    return _preprocess_cached(text)


def collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


@functools.lru_cache(maxsize=None)
def _scorer(apply_avg: bool = True):
    _ensure_py_rouge_resources()
    return OfflineRouge(**{**PY_ROUGE_KWARGS, "apply_avg": apply_avg})


def _check_inputs(candidates: Sequence[str], references: Sequence[Sequence[str]], *, same_count: bool) -> int:
    if isinstance(candidates, str) or isinstance(references, str):
        raise TypeError("candidates must be a list of str and references a list of lists of str")
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        raise ValueError("no candidates to score")
    counts = set()
    for i, (cand, refs) in enumerate(zip(candidates, references)):
        if not isinstance(cand, str):
            raise TypeError(f"candidate {i} is {type(cand).__name__}, not str")
        if isinstance(refs, str) or not refs:
            raise TypeError(f"references[{i}] must be a non-empty list of str (got {refs!r:.60})")
        if not all(isinstance(r, str) for r in refs):
            raise TypeError(f"references[{i}] holds a non-str reference")
        counts.add(len(refs))
    if same_count and len(counts) != 1:
        raise ValueError(f"every candidate needs the same number of references (column-wise averaging); got counts {sorted(counts)}")
    return max(counts)


def _with_mean(scores: dict[str, float]) -> dict[str, float]:
    out = {k: float(scores[k]) for k in KEYS}
    out["mean"] = sum(out[k] for k in KEYS) / len(KEYS)
    return out


def rouge_scores(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """The protocol score (percent): py-rouge F per reference column, averaged over the columns."""
    n_refs = _check_inputs(candidates, references, same_count=True)
    scorer = _scorer(True)
    hyps = [preprocess(c) for c in candidates]
    columns = []
    for j in range(n_refs):
        refs = [preprocess(collapse_whitespace(r[j])) for r in references]
        s = scorer.get_scores(hyps, refs)
        columns.append({k: s[_PY_ROUGE_KEYS[k]]["f"] * 100 for k in KEYS})
    return _with_mean({k: sum(c[k] for c in columns) / n_refs for k in KEYS})


def rouge_per_candidate(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[dict[str, float]]:
    """Protocol scores of each candidate alone (percent), averaged over its own references (their number may vary).

    The mean of these over candidates equals `rouge_scores` (up to float summation order) when every candidate has the
    same number of references. Used for the clustroid and oracle selections.
    """
    _check_inputs(candidates, references, same_count=False)
    scorer = _scorer(False)  # apply_avg=False: one F per (candidate, reference) pair
    hyps = [preprocess(c) for c in candidates]
    out = []
    for hyp, refs in zip(hyps, references):
        s = scorer.get_scores([hyp], [[preprocess(collapse_whitespace(r)) for r in refs]])
        per = {}
        for k in KEYS:
            fs = s[_PY_ROUGE_KEYS[k]][0]["f"]
            per[k] = sum(fs) / len(fs) * 100
        out.append(_with_mean(per))
    return out


@functools.lru_cache(maxsize=None)
def _google_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(KEYS), use_stemmer=True)


def rouge_score_secondary(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Secondary column (percent): Google rouge-score rouge1/rouge2/rougeL F (module docstring)."""
    _check_inputs(candidates, references, same_count=False)
    scorer = _google_scorer()
    totals = dict.fromkeys(KEYS, 0.0)
    for cand, refs in zip(candidates, references):
        per = dict.fromkeys(KEYS, 0.0)
        for ref in refs:
            s = scorer.score(collapse_whitespace(ref), cand)  # score(target, prediction)
            for k in KEYS:
                per[k] += s[k].fmeasure
        for k in KEYS:
            totals[k] += per[k] / len(refs)
    return _with_mean({k: totals[k] / len(candidates) * 100 for k in KEYS})
