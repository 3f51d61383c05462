"""Evaluation of a MultimodalSum model (spec §3.3, §5; official ``src/test.py``).

Per dataset of the run (each folder of ``data.folders``: e.g. the Yelp and the Amazon gold set, scored apart):

1. **dev search** (spec §7.7): every combination of ``eval.num_beams`` x ``length_penalty`` x ``max_length`` x
   ``min_length`` decodes the dev entities (8 input reviews, BPE <= 160 Yelp / <= 120 Amazon, their photos with the
   test transform, their table; delta = 0; ``no_repeat_ngram_size`` 3, early stopping) and is scored with the §5
   protocol against the dev references; the best dev mean of ROUGE-1/2/L is chosen (first on ties, grid order) and
   recorded with the whole grid. Only dev references are read for the choice.
2. **test**: the chosen setting once; ROUGE (py-rouge 1.1 + PlanSum preprocessing, averaged over the reference
   columns: ``models.multimodalsum.rouge.rouge_scores``) and the secondary Google rouge-score column.
3. **gates** (diagnostic "the gates open"): a teacher-forced pass over the model's own test summaries; the per-entity
   mean over layers, positions and channels of alpha (table) and beta (photos), averaged over the test entities that
   have a table / photos, and over those that do not (exactly 0 by construction).
4. **baselines** beside the model, on the same test entities and protocol: the extractive systems of
   ``models.multimodalsum.extractive`` (random, clustroid, LexRank, oracle: the oracle reads the references, an upper
   bound, not a system) and, when the run has modalities, the same model text-only (its photos and table removed at
   inference: alpha = beta = 0) and the step-1 (text-only trained) model, each with its own dev search.

The gate metric of the registry is ``dev_rouge_mean``: the dev mean of ROUGE-1/2/L at the chosen setting, averaged
over the datasets.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from models.multimodalsum import extractive as ext
from models.multimodalsum.data import Batcher, Entity, ReviewCorpus, batches
from models.multimodalsum.modeling import MultimodalSum
from models.multimodalsum.rouge import rouge_score_secondary, rouge_scores
from models.multimodalsum.tokenizer import PAD, ReviewTokenizer

GRID_KEYS = ("num_beams", "length_penalty", "max_length", "min_length")


def grid(cfg) -> list[dict]:
    e = cfg.eval
    return [dict(zip(GRID_KEYS, combo)) for combo in itertools.product(e.num_beams, e.length_penalty, e.max_length,
                                                                         e.min_length)]


@torch.no_grad()
def generate(model: MultimodalSum, batcher: Batcher, tok: ReviewTokenizer, entities: Sequence[Entity], setting: dict,
             cfg, with_modalities: bool = True, progress: bool = False) -> tuple[list[str], list[torch.Tensor]]:
    """Summaries of ``entities`` (and their token ids) with one beam setting; delta = 0."""
    model.eval()
    device = next(model.parameters()).device
    texts, ids = [], []
    for group in tqdm(batches(list(entities), cfg.eval.batch_size, drop_last=False), desc="generate", leave=False,
                      disable=not progress):
        b = batcher.evaluation(group, with_modalities=with_modalities).to(device)
        out = model.generate(b.review_ids, b.review_mask, images=b.images, image_mask=b.image_mask, table=b.table,
                             num_beams=setting["num_beams"], length_penalty=setting["length_penalty"],
                             max_length=setting["max_length"], min_length=setting["min_length"],
                             no_repeat_ngram_size=cfg.eval.no_repeat_ngram_size, early_stopping=cfg.eval.early_stopping,
                             decoder_start=cfg.eval.decoder_start)
        for row in out.cpu():
            ids.append(row)
            texts.append(tok.decode(row.tolist()))
    return texts, ids


def score(candidates: Sequence[str], entities: Sequence[Entity], secondary: bool = False) -> dict:
    refs = [e.references for e in entities]
    out = {"rouge": rouge_scores(list(candidates), refs)}
    if secondary:
        out["rouge_score"] = rouge_score_secondary(list(candidates), refs)
    return out


def dev_search(model, batcher, tok, dev: Sequence[Entity], cfg, with_modalities: bool = True) -> dict:
    """Every grid setting on dev; the best dev mean ROUGE (first on ties)."""
    rows = []
    for setting in grid(cfg):
        texts, _ = generate(model, batcher, tok, dev, setting, cfg, with_modalities)
        rows.append({"setting": setting, "rouge": score(texts, dev)["rouge"],
                     "mean_words": float(np.mean([len(t.split()) for t in texts]))})
    best = max(range(len(rows)), key=lambda i: (rows[i]["rouge"]["mean"], -i))
    return {"chosen": rows[best]["setting"], "rouge": rows[best]["rouge"], "grid": rows}


@torch.no_grad()
def gate_statistics(model: MultimodalSum, batcher: Batcher, entities: Sequence[Entity], ids: Sequence[torch.Tensor],
                    cfg) -> dict:
    """Mean alpha / beta per entity (teacher-forced on its own summary), split by whether it has a table / photos."""
    if batcher.photos is None and not batcher.use_table:
        return {}
    model.eval()
    device = next(model.parameters()).device
    alpha, beta = [], []
    pairs = list(zip(entities, ids))
    for group in batches(pairs, cfg.eval.batch_size, drop_last=False):
        ents = [e for e, _ in group]
        width = max(len(t) for _, t in group)
        dec = torch.full((len(group), width), PAD, dtype=torch.long)
        for i, (_, t) in enumerate(group):
            dec[i, : len(t)] = t
        b = batcher.evaluation(ents).to(device)
        dec = dec.to(device)
        model(b.review_ids, b.review_mask, images=b.images, image_mask=b.image_mask, table=b.table,
              decoder_input_ids=dec, decoder_attention_mask=dec.ne(PAD), delta=0.0)
        alpha += model.gate_stats["alpha_per_example"].mean(0).tolist()
        beta += model.gate_stats["beta_per_example"].mean(0).tolist()

    def mean(values, keep):
        chosen = [v for v, k in zip(values, keep) if k]
        return float(np.mean(chosen)) if chosen else None

    has_table = [e.table is not None for e in entities]
    has_photos = [e.has_photos for e in entities]
    return {"alpha_with_table": mean(alpha, has_table), "alpha_without_table": mean(alpha, [not h for h in has_table]),
            "beta_with_photos": mean(beta, has_photos), "beta_without_photos": mean(beta, [not h for h in has_photos]),
            "entities_with_table": int(sum(has_table)), "entities_with_photos": int(sum(has_photos))}


def extractive_baselines(test: Sequence[Entity], seed: int) -> dict:
    """The four single-review extractive systems on the test entities (same protocol, secondary column too)."""
    reviews = [e.reviews for e in test]
    refs = [e.references for e in test]
    picks = {"random": ext.random_review(reviews, seed=seed), "clustroid": ext.clustroid_review(reviews),
             "lexrank": ext.lexrank_review(reviews), "oracle": ext.oracle_review(reviews, refs)}
    return {name: {"rouge": rouge_scores(ext.pick(reviews, idx), refs),
                   "rouge_score": rouge_score_secondary(ext.pick(reviews, idx), refs)} for name, idx in picks.items()}


def evaluate_system(model, batcher, tok, dev, test, cfg, with_modalities: bool = True, gates: bool = False,
                    progress: bool = True) -> dict:
    """Dev search, then test once with the chosen setting."""
    t0 = time.perf_counter()
    search = dev_search(model, batcher, tok, dev, cfg, with_modalities)
    t1 = time.perf_counter()
    texts, ids = generate(model, batcher, tok, test, search["chosen"], cfg, with_modalities, progress)
    gen_seconds = time.perf_counter() - t1
    out = {"dev": search, "test": {**score(texts, test, secondary=True), "entities": len(test),
                                   "mean_words": float(np.mean([len(t.split()) for t in texts]))},
           "summaries": texts, "dev_search_seconds": t1 - t0, "test_entities_per_s": len(test) / max(gen_seconds, 1e-9)}
    if gates and with_modalities:
        out["test"]["gates"] = gate_statistics(model, batcher, test, ids, cfg)
    return out


def evaluate_model(cfg, weights: str, corpus: ReviewCorpus, text_weights: str | None = None,
                   progress: bool = True) -> dict:
    """The whole evaluation (module docstring): ``{dataset: {...}}`` plus ``dev_rouge_mean``."""
    from models.common.seed import select_device
    from models.multimodalsum.recipe import apply_threads, load_model

    apply_threads(cfg)
    device = select_device(cfg.multimodal.device)
    model, _, tok, hours = load_model(weights)
    model.to(device)
    batcher = Batcher(cfg, tok, hours, train=False)
    has_modalities = not cfg.modalities.text_only
    text_model = None
    if has_modalities and cfg.eval.text_only_baselines and text_weights:
        text_model, _, text_tok, _ = load_model(text_weights)
        text_model.to(device)
        text_batcher = Batcher(cfg, text_tok, hours, train=False, text_only=True)
    out: dict = {"datasets": {}}
    limit = cfg.data.max_eval_entities
    for name in corpus.datasets():
        dev = corpus.eval_entities(cfg.data.dev_split, name, limit)
        test = corpus.eval_entities(cfg.data.test_split, name, limit)
        res = {"model": evaluate_system(model, batcher, tok, dev, test, cfg, gates=has_modalities, progress=progress)}
        if text_model is not None:
            res["text_only_ablation"] = evaluate_system(model, batcher, tok, dev, test, cfg, with_modalities=False,
                                                        progress=progress)
            res["text_step"] = evaluate_system(text_model, text_batcher, text_tok, dev, test, cfg, progress=progress)
        if cfg.eval.extractive:
            res["extractive"] = extractive_baselines(test, cfg.eval.random_seed)
        out["datasets"][name] = res
    out["dev_rouge_mean"] = float(np.mean([r["model"]["dev"]["rouge"]["mean"] for r in out["datasets"].values()]))
    return out
