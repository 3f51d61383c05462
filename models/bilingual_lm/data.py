"""Pretraining data for the bilingual LM: the token mixture, fill-in-the-middle, packing (spec §3.2).

* **Mixture by tokens** (:func:`mixture_plan`): the corpus stage keeps every clean document and records the language
  weights (``mixture.json``); here, with each document's token count known, each language contributes
  ``weight * total`` tokens, where ``total`` is the largest that no language has to repeat documents for
  (``max_repeat`` = 1, the default) or repeats each language at most ``max_repeat`` times (upsampling a small
  language). Documents are taken in a seeded order per language; the realised shares are returned and logged.
* **FIM** (:func:`apply_fim`, Bavarian et al. 2022): with probability ``fim_rate`` a document (code by default;
  text too with ``fim_text``) is cut at two character positions drawn uniformly (sorted) into prefix / middle /
  suffix, each part tokenized on its own, and laid out as PSM ``<|fim_prefix|> prefix <|fim_suffix|> suffix
  <|fim_middle|> middle`` or, with probability ``spm_rate`` among FIM documents, SPM (Bavarian's variant)
  ``<|fim_prefix|> <|fim_suffix|> suffix <|fim_middle|> prefix middle``; ``<|eos|>`` follows every document (FIM or
  not) at packing. The loss is taken on all tokens (spec default). Spec defaults: rate 0.5, PSM:SPM 50:50.
* **Packing** (:func:`pack`): the documents' ids, each followed by ``<|eos|>``, concatenated in order and cut into
  rows of ``seq_len + 1`` ids (inputs = row[:-1], labels = row[1:]); the last partial row is dropped (counted). A
  document longer than a row simply continues in the next row.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"


@dataclass(frozen=True)
class FimIds:
    prefix: int
    suffix: int
    middle: int

    @classmethod
    def from_tokenizer(cls, tok) -> "FimIds":
        ids = [tok.convert_tokens_to_ids(t) for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)]
        if any(i is None or i == getattr(tok, "unk_token_id", -1) for i in ids):
            raise ValueError(f"the tokenizer lacks the FIM sentinels {FIM_PREFIX}, {FIM_SUFFIX}, {FIM_MIDDLE}")
        return cls(*ids)


def fim_split(text: str, rng: random.Random) -> tuple[str, str, str]:
    """Two cut points uniform over the character positions 0..len(text), sorted: (prefix, middle, suffix)."""
    a, b = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    return text[:a], text[a:b], text[b:]


def apply_fim(text: str, encode: Callable[[str], list[int]], ids: FimIds, rng: random.Random, *,
              fim_rate: float = 0.5, spm_rate: float = 0.5) -> tuple[list[int], str]:
    """The ids of one document and its format: ``plain``, ``psm`` or ``spm`` (no ``<|eos|>``: :func:`pack` adds
    it). The random draws happen in a fixed order (FIM?, the two cuts, SPM?) so a seed fixes the result."""
    if not (0.0 <= fim_rate <= 1.0 and 0.0 <= spm_rate <= 1.0):
        raise ValueError(f"fim_rate and spm_rate must be in [0, 1], got {fim_rate}, {spm_rate}")
    if rng.random() >= fim_rate:
        return encode(text), "plain"
    prefix, middle, suffix = fim_split(text, rng)
    p, m, s = encode(prefix), encode(middle), encode(suffix)
    if rng.random() < spm_rate:
        return [ids.prefix, ids.suffix, *s, ids.middle, *p, *m], "spm"
    return [ids.prefix, *p, ids.suffix, *s, ids.middle, *m], "psm"


def fim_restore(ids: Sequence[int], fim: FimIds, decode: Callable[[list[int]], str]) -> str:
    """The original document from a FIM sequence (tests: no character is lost or added)."""
    ids = list(ids)
    if not ids or ids[0] != fim.prefix:
        return decode(ids)
    if ids[1] == fim.suffix:  # SPM: prefix suffix-sentinel suffix middle-sentinel (prefix + middle)
        j = ids.index(fim.middle)
        return decode(ids[j + 1:]) + decode(ids[2:j])
    i, j = ids.index(fim.suffix), ids.index(fim.middle)
    return decode(ids[1:i]) + decode(ids[j + 1:]) + decode(ids[i + 1:j])


def pack(docs: Sequence[Sequence[int]], eos_id: int, seq_len: int, dtype=np.int32) -> tuple[np.ndarray, dict]:
    """[rows, seq_len + 1] ids: every document followed by ``eos_id``, concatenated, cut into rows."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    total = sum(len(d) + 1 for d in docs)
    stream = np.empty(total, dtype=dtype)
    pos = 0
    for d in docs:
        n = len(d)
        stream[pos:pos + n] = d
        stream[pos + n] = eos_id
        pos += n + 1
    width = seq_len + 1
    rows = total // width
    return stream[:rows * width].reshape(rows, width), {"tokens": int(total), "rows": int(rows),
                                                       "dropped_tail_tokens": int(total - rows * width)}


def mixture_plan(token_counts: dict[str, Sequence[int]], weights: dict[str, float], *, seed: int = 0,
                 max_repeat: float = 1.0) -> tuple[dict[str, list[int]], dict]:
    """Which documents (indices, in order; a document may repeat when ``max_repeat`` > 1) each language contributes
    so the token shares follow ``weights``. Returns (plan, report with target and realised shares)."""
    if set(weights) != set(token_counts):
        raise ValueError(f"weights {sorted(weights)} and languages {sorted(token_counts)} differ")
    if abs(sum(weights.values()) - 1.0) > 1e-6 or any(w < 0 for w in weights.values()):
        raise ValueError(f"weights must be non-negative shares summing to 1, got {weights}")
    if max_repeat < 1.0:
        raise ValueError(f"max_repeat must be >= 1, got {max_repeat}")
    avail = {lang: int(sum(c)) for lang, c in token_counts.items()}
    live = {lang: w for lang, w in weights.items() if w > 0}
    empty = [lang for lang in live if avail[lang] == 0]
    if empty:
        raise ValueError(f"languages {empty} have weight > 0 but no tokens")
    total = min(max_repeat * avail[lang] / w for lang, w in live.items())
    plan, realised = {}, {}
    for lang, counts in token_counts.items():
        budget = weights[lang] * total
        order = list(range(len(counts)))
        random.Random(f"{seed}:{lang}").shuffle(order)
        chosen, got, k = [], 0, 0
        while order and got < budget - 0.5:  # whole documents; the last one may overshoot by < one document
            i = order[k % len(order)]
            chosen.append(i)
            got += counts[i]
            k += 1
        plan[lang], realised[lang] = chosen, got
    n = sum(realised.values()) or 1
    report = {"target_shares": dict(weights), "realised_shares": {k: v / n for k, v in realised.items()},
              "tokens": realised, "available_tokens": avail, "total_tokens": sum(realised.values()),
              "documents": {k: len(v) for k, v in plan.items()},
              "repeated_documents": {k: len(v) - len(set(v)) for k, v in plan.items()}}
    return plan, report
