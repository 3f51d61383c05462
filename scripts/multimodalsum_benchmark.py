"""MultimodalSum on CPU at bart-base sizes: training step, generation throughput, and the batched parallel-mean
cross-attention against a per-entity Python loop (written here, the reference).

The model is ``models/multimodalsum/modeling.py`` built from a ``BartConfig`` with the sizes of facebook/bart-base
(d_model 768, 6 + 6 layers, 12 heads, FFN 3072, vocabulary 50265, 1024 positions), random init (no download), the
Yelp table encoder and, by default, a ResNet-18 image encoder (``--backbone resnet101`` for the paper's one; it is
slow on CPU). Inputs are synthetic but paper-shaped: reviews of random ids with lengths uniform in [L/2, L]
(L = ``--review-tokens``, 128 as the recipe's ``pad_to_max``), ``--images`` photos of ``--image-size`` px per entity
(224 -> 196 tokens), a Yelp metadata table through ``build_table_batch`` (word-hash tokenizer). Every input of the
generation and decoder comparisons contains all-padding entities: example 1 has its last two reviews empty and no
real photo, the last example has no table; the attention inputs add an example whose entities are ALL padding.

Measured, per ``--threads`` setting (``torch.set_num_threads``), medians of ``--*-repeats`` after warm-up:

1. **Training step** (step 3, multimodal, as ``recipe._loo_step``): ``set_trainable("3")``, AdamW over
   ``param_groups("3")`` (lr 1e-5, eps 1e-6, weight decay 0.01), ``leave_one_out_loss`` with label smoothing 0.1 over
   ``--train-reviews`` (9 = the recipe's ``data.train_reviews``: each review the target of the other 8) + photos +
   table, backward, ``clip_grad_norm_(1.0)``, ``opt.step()``. ``--train-objective forward`` adds the plain
   ``forward(labels=...)`` step (``--reviews`` inputs, one target of L tokens). Train mode (dropout 0.1 on).
2. **Generation**: ``generate`` (encode + beam search), ``--num-beams`` 4, ``no_repeat_ngram_size`` 3, ``max_length``
   60, ``min_length`` = max_length - 1 by default: every example then decodes exactly max_length - 1 steps (``</s>``
   is banned before the last step and forced at it). ``min_length == max_length`` would ban the forced ``</s>`` too,
   so the last step would have only -inf scores; see the JSON's ``notes``. Entities / s = batch / median time.
   Also: the cross-attention K/V that beam search computes for ``B * num_beams`` rows vs for ``B`` rows.
3. **Batched vs loop** (``loop / batched`` = how many times faster the model's batched code is; target >= 3):
   a. the attention function: ``MultimodalSum.entity_mean_attention(attn, x, K, V, mask)`` vs
      :func:`loop_entity_mean_attention` on the same precomputed K/V, forward (no_grad) and forward + backward
      (gradients w.r.t. x, K, V and the q/out projections), N x E x S x T = 4 x 8 x 128 x 60;
   b. the same with the K/V projections of the encoder states included (the batched code projects all entities in
      one call as ``_cross_kv``; the loop projects entity by entity);
   c. one beam-search decoding step: N = batch x beams, T = 1, forward;
   d. the model's teacher-forced decoder (``forward(memory=..., labels=...)``: ``_cross_kv`` + the 6 layers with all
      three modalities + the loss, memory precomputed) with ``entity_mean_attention`` swapped for the loop, forward
      and forward + backward (eval mode, so both compute the same function);
   e. beam search from the encoded memory with the loop swapped in (generated ids compared).
   Max |difference| of outputs (and gradients) are recorded; all must be <= 1e-5 (exit status 1 otherwise).

    .venv/bin/python scripts/multimodalsum_benchmark.py --threads 1 2 --out docs/multimodalsum_benchmark.json
    .venv/bin/python scripts/multimodalsum_benchmark.py --quick --out /tmp/mms_quick.json   # smoke, < 30 s
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data.atomic import atomic_write_json  # noqa: E402
from models.multimodalsum.modeling import (  # noqa: E402
    YELP_SCHEMA,
    EntityMemory,
    Memory,
    MultimodalSum,
    build_table_batch,
    tiny_bart_config,
)

LOADS: list[float] = []  # the 1-min load averages seen before / after every timed block
TOLERANCE = 1e-5
TARGET_SPEEDUP = 3.0
LOOP_AGAINST = ("loop_entity_mean_attention (this script): a Python loop over the entities, each the ordinary "
                "attention of the query over that entity's K/V with the same projections, per-head contexts "
                "averaged over the non-empty entities, then out_proj; same inputs, same weights, same threads")

BART_BASE = dict(vocab_size=50265, d_model=768, layers=6, heads=12, ffn=3072, max_positions=1024)
QUICK_BART = dict(vocab_size=1000, d_model=64, layers=2, heads=4, ffn=128, max_positions=256)
QUICK = dict(train_batch=2, gen_batch=2, reviews=4, train_reviews=4, review_tokens=16, image_size=64,
             max_length=12, attn_examples=3, attn_entities=4, attn_keys=16, attn_queries=8,
             train_repeats=2, gen_repeats=2, gen_loop_repeats=1, attn_repeats=3, decoder_repeats=2, warmup=1)


# ---------------------------------------------------------------------------------------------- the reference
def _loop_core(attn, x: torch.Tensor, entity_kv: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
               mask: torch.Tensor, presummed: bool = False) -> torch.Tensor:
    """x [N, T, d]; ``entity_kv(j)`` -> (K_j, V_j) [N, H, S, dh] of entity j; mask [N, E, S] -> [N, T, d]: ordinary
    attention over each entity in turn, the per-head contexts averaged over the non-empty entities (``presummed``:
    V_j already carries the mean's weight w_j, as the model's layout does, so the contexts are summed)."""
    n, t, d = x.shape
    h, dh = attn.num_heads, attn.head_dim
    q = attn.q_proj(x).view(n, t, h, dh).transpose(1, 2)  # [N, H, T, dh]: the same query for every entity
    total = x.new_zeros(n, h, t, dh)
    count = x.new_zeros(n)
    for j in range(mask.size(1)):
        k, v = entity_kv(j)
        keep = mask[:, j]  # [N, S]
        scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scaling  # [N, H, T, S]: ordinary attention
        scores = scores.masked_fill(~keep[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = F.dropout(F.softmax(scores, dim=-1), p=attn.dropout, training=attn.training)
        ctx = torch.matmul(probs, v)  # [N, H, T, dh]: per-head contexts of entity j
        present = keep.any(-1).to(ctx.dtype)  # [N]: entity j is not all padding in that example
        total = total + ctx * present[:, None, None, None]
        count = count + present
    ctx = total if presummed else total / count.clamp(min=1.0)[:, None, None, None]  # none non-empty: 0
    return attn.out_proj(ctx.transpose(1, 2).reshape(n, t, d))


def loop_entity_mean_attention(attn, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               mask: torch.Tensor) -> torch.Tensor:
    """The reference of ``MultimodalSum.entity_mean_attention`` (same signature, the model's layout): K and the
    entity-weighted V' [N, H, E*S, dh] of ``MultimodalSum.entity_kv``, looped over E; entity j's K/V' is the view
    [N, H, S, dh] of its keys (no copy), and its weighted contexts are summed (= the mean). The independent check of
    the weighting itself is :func:`loop_from_states` (raw projections, mean over the non-empty entities) and the
    unit test against stock BART attention."""
    n, e, s = mask.shape
    k5, v5 = (y.view(n, y.size(1), e, s, y.size(-1)) for y in (k, v))
    return _loop_core(attn, x, lambda j: (k5[:, :, j], v5[:, :, j]), mask, presummed=True)


def _heads(attn, y: torch.Tensor) -> torch.Tensor:
    """[..., S, d] -> [..., H, S, dh]."""
    return y.view(*y.shape[:-1], attn.num_heads, attn.head_dim).transpose(-3, -2)


def loop_from_states(attn, x: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The loop with the K/V projections inside it: entity j's states [N, S, d] projected when it is attended."""
    return _loop_core(attn, x, lambda j: (_heads(attn, attn.k_proj(states[:, j])),
                                          _heads(attn, attn.v_proj(states[:, j]))), mask)


def batched_from_states(attn, x: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The model's path: all entities projected in one call (``MultimodalSum.entity_kv``, what ``_cross_kv`` does
    for one layer), then ``entity_mean_attention``."""
    return MultimodalSum.entity_mean_attention(attn, x, *MultimodalSum.entity_kv(attn, states, mask), mask)


@contextmanager
def attention_swapped(model: MultimodalSum, fn: Callable | None):
    """``model.entity_mean_attention`` replaced by ``fn`` (an instance attribute shadows the staticmethod that
    ``_fused_cross_attention`` calls); None: unchanged."""
    if fn is None:
        yield
        return
    model.entity_mean_attention = fn
    try:
        yield
    finally:
        del model.entity_mean_attention


# ------------------------------------------------------------------------------------------------------ inputs
def word_tokenizer(vocab: int) -> Callable[[str], list[int]]:
    """Deterministic word-hash ids in [4, vocab) (no special tokens): the ``tokenizer(text) -> ids`` of the table."""
    def tok(text: str) -> list[int]:
        out = []
        for w in text.split():
            h = int(hashlib.md5(w.encode()).hexdigest()[:8], 16)
            out.append(4 + h % (vocab - 4))
            if len(w) > 8:
                out.append(4 + (h // 7919) % (vocab - 4))
        return out
    return tok


def yelp_record(i: int) -> dict:
    return {"name": f"the golden spoon diner number {i}", "categories": ["breakfast brunch", "diners", "coffee tea"],
            "NoiseLevel": "average", "Alcohol": "beer and wine", "RestaurantsAttire": "casual", "WiFi": "free",
            "RestaurantsPriceRange2": str(1 + i % 4), "BikeParking": True, "HasTV": bool(i % 2),
            "Ambience_casual": True, "GoodForMeal_dinner": True, "BusinessParking_lot": False,
            "avg_rating": 3.5 + 0.5 * (i % 3), **{f"hours_{d}": (i + j) % 4 for j, d in enumerate(
                ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"))}}


def make_inputs(model: MultimodalSum, args, batch: int, reviews: int, seed: int, empty: bool) -> dict:
    """Reviews [B, R, L] (lengths uniform in [L/2, L], review 0 of example 0 full), photos, Yelp tables, ratings.
    ``empty``: example 1 gets its last two reviews empty and no real photo, the last example no table."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    length = args.review_tokens
    ids = torch.randint(4, cfg.vocab_size, (batch, reviews, length), generator=g)
    lengths = torch.randint(max(2, length // 2), length + 1, (batch, reviews), generator=g)
    lengths[0, 0] = length
    if empty and batch > 1 and reviews > 2:
        lengths[1, -2:] = 0
    mask = torch.arange(length)[None, None, :] < lengths[..., None]
    out = {"review_ids": ids.masked_fill(~mask, cfg.pad_token_id), "review_mask": mask,
           "ratings": torch.randint(1, 6, (batch, reviews), generator=g).float(),
           "summary": torch.randint(4, cfg.vocab_size, (batch, length), generator=g),
           "delta": torch.rand(batch, generator=g) * 4 - 2}
    if model.image_encoder is not None and args.images > 0:
        out["images"] = torch.randn(batch, args.images, 3, args.image_size, args.image_size, generator=g)
        image_mask = torch.ones(batch, args.images, dtype=torch.bool)
        if empty and batch > 1:
            image_mask[1] = False
        out["image_mask"] = image_mask
    if model.table_encoder is not None:
        records = [yelp_record(i) for i in range(batch)]
        if empty and batch > 1:
            records[-1] = None
        out["table"] = build_table_batch(records, YELP_SCHEMA, word_tokenizer(cfg.vocab_size), cfg.pad_token_id)
    return out


def model_kwargs(inp: dict) -> dict:
    return {k: inp[k] for k in ("review_ids", "review_mask", "images", "image_mask", "table") if k in inp}


def attention_inputs(attn, n: int, e: int, s: int, t: int, d: int, seed: int) -> dict:
    """Random encoder states [N, E, S, d], key lengths uniform in [S/2, S]; example 1's last two entities and
    every entity of the last example (N >= 3) all padding; K/V through the layer's own projections."""
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(n, e, s, d, generator=g)
    lengths = torch.randint(max(1, s // 2), s + 1, (n, e), generator=g)
    lengths[0, 0] = s
    if n > 1:
        lengths[1, -min(2, e - 1):] = 0
    if n > 2:
        lengths[-1] = 0
    mask = torch.arange(s)[None, None, :] < lengths[..., None]
    x = torch.randn(n, t, d, generator=g)
    with torch.no_grad():
        # the layout of ``_cross_kv``'s output ([N, H, E*S, dh], contiguous), detached: leaves for the gradient checks
        k, v = (y.detach() for y in MultimodalSum.entity_kv(attn, states, mask))
    return {"x": x, "states": states, "k": k, "v": v, "mask": mask, "cotangent": torch.randn(n, t, d, generator=g),
            "empty_entities": int((lengths == 0).sum()), "examples_without_entities": int((lengths.sum(1) == 0).sum())}


# ------------------------------------------------------------------------------------------------------ timing
def summary(times: list[float], calls: int = 1) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats_s": times,
            "repeats": len(times), "calls_per_repeat": calls}


def time_impls(fns: dict[str, Callable[[], object]], repeats: int, warmup: int, desc: str, progress: bool,
               calls: int = 1) -> dict[str, dict]:
    """Each repeat runs every implementation in turn (interleaved: drift of the machine hits all alike); a repeat
    times ``calls`` calls and records the time per call."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    load_before = os.getloadavg()[0]
    for i in tqdm(range(warmup + repeats), desc=desc, leave=False, disable=not progress, file=sys.stderr):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            dt = (time.perf_counter() - t0) / calls
            if i >= warmup:
                times[name].append(dt)
    load = {"load1_before": load_before, "load1_after": os.getloadavg()[0]}  # 1-min load average (this run included)
    LOADS.extend(load.values())
    return {k: {**summary(v, calls), **load} for k, v in times.items()}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def compare(name: str, what: str, shape: str, timings: dict[str, dict], diffs: dict[str, float]) -> dict:
    b, lp = timings["batched"]["median_s"], timings["loop"]["median_s"]
    worst = max(diffs.values()) if diffs else 0.0
    return {"name": name, "what": what, "shape": shape, "batched": timings["batched"], "loop": timings["loop"],
            "speedup_loop_over_batched": lp / b, "speedup_against": LOOP_AGAINST, "target_speedup": TARGET_SPEEDUP,
            "meets_target": lp / b >= TARGET_SPEEDUP, "max_abs_diff": diffs, "max_abs_diff_worst": worst,
            "within_tolerance": worst <= TOLERANCE}


# -------------------------------------------------------------------------------------------- batched vs loop
def bench_attention(model: MultimodalSum, args, progress: bool) -> list[dict]:
    attn = model.bart.model.decoder.layers[0].encoder_attn
    d = model.config.d_model
    n, e, s, t = args.attn_examples, args.attn_entities, args.attn_keys, args.attn_queries
    inp = attention_inputs(attn, n, e, s, t, d, args.seed + 11)
    x, k, v, mask, states, cot = inp["x"], inp["k"], inp["v"], inp["mask"], inp["states"], inp["cotangent"]
    shape = f"N={n} E={e} S={s} T={t} d={d} H={attn.num_heads} ({inp['empty_entities']} empty entities)"
    params = {"q_proj.weight": attn.q_proj.weight, "q_proj.bias": attn.q_proj.bias,
              "k_proj.weight": attn.k_proj.weight, "v_proj.weight": attn.v_proj.weight,
              "out_proj.weight": attn.out_proj.weight, "out_proj.bias": attn.out_proj.bias}
    function = {"batched": lambda: MultimodalSum.entity_mean_attention(attn, x, k, v, mask),
                "loop": lambda: loop_entity_mean_attention(attn, x, k, v, mask)}
    from_states = {"batched": lambda: batched_from_states(attn, x, states, mask),
                   "loop": lambda: loop_from_states(attn, x, states, mask)}
    rows = []
    for level, calls, impls, leaves in (
            ("attention function", args.attn_calls, function, {"x": x, "K": k, "V": v}),
            ("attention incl. K/V projections", max(1, args.attn_calls // 4), from_states,
             {"x": x, "states": states})):
        with torch.no_grad():
            outs = {name: fn() for name, fn in impls.items()}
        diffs = {"output": max_diff(outs["batched"], outs["loop"])}
        finite = all(bool(torch.isfinite(o).all()) for o in outs.values())
        # gradients: w.r.t. the inputs and the projections
        grads = {}
        for name, fn in impls.items():
            for leaf in leaves.values():
                leaf.requires_grad_(True)
                leaf.grad = None
            attn.zero_grad(set_to_none=True)
            (fn() * cot).sum().backward()
            grads[name] = {**{f"d{key}": leaf.grad.clone() for key, leaf in leaves.items()},
                           **{f"d{key}": p.grad.clone() for key, p in params.items() if p.grad is not None}}
        if "dV" in grads["batched"]:
            # V' of an all-padding entity is 0 (weight 0), so its gradient never reaches v_proj (d(w V)/dV = w = 0);
            # as a leaf, the batched code gives it the uniform probabilities' gradient, the loop none: compare dV'
            # on the keys of non-empty entities only
            live = mask.any(-1)[:, None, :, None, None].expand(-1, 1, -1, s, 1).reshape(n, 1, e * s, 1)
            for name in grads:
                grads[name]["dV"] = grads[name]["dV"] * live
        diffs.update({f"grad {key}": max_diff(grads["batched"][key], grads["loop"][key]) for key in grads["batched"]})

        def fwd(fn):
            def run():
                with torch.no_grad():
                    fn()
            return run

        def fwd_bwd(fn):
            def run():
                attn.zero_grad(set_to_none=True)
                for leaf in leaves.values():
                    leaf.grad = None
                (fn() * cot).sum().backward()
            return run

        fwd_impls = {nm: fwd(fn) for nm, fn in impls.items()}
        tf = time_impls(fwd_impls, args.attn_repeats, args.warmup, f"{level}: forward", progress, calls=calls)
        tb = time_impls({nm: fwd_bwd(fn) for nm, fn in impls.items()}, args.attn_repeats, args.warmup,
                        f"{level}: forward+backward", progress, calls=max(1, calls // 2))
        for leaf in leaves.values():
            leaf.requires_grad_(False)
            leaf.grad = None
        attn.zero_grad(set_to_none=True)
        out_diff = {"output": diffs["output"]}
        rows.append({**compare(f"{level}, forward", "no_grad forward", shape, tf, out_diff), "finite": finite})
        rows.append({**compare(f"{level}, forward+backward", "forward + backward (random cotangent)", shape, tb,
                               diffs), "finite": finite})
    # one beam-search decoding step: N = batch x beams, T = 1
    n1 = args.gen_batch * args.num_beams
    inp = attention_inputs(attn, n1, e, s, 1, d, args.seed + 12)
    x1, k1, v1, m1 = inp["x"], inp["k"], inp["v"], inp["mask"]
    impls = {"batched": lambda: MultimodalSum.entity_mean_attention(attn, x1, k1, v1, m1),
             "loop": lambda: loop_entity_mean_attention(attn, x1, k1, v1, m1)}
    with torch.no_grad():
        diff = {"output": max_diff(impls["batched"](), impls["loop"]())}

        def nograd(fn):
            def run():
                with torch.no_grad():
                    fn()
            return run
        td = time_impls({nm: nograd(fn) for nm, fn in impls.items()}, args.attn_repeats, args.warmup,
                        "decode step: forward", progress, calls=args.attn_calls * 10)
    shape1 = f"N={n1} (batch x beams) E={e} S={s} T=1 ({inp['empty_entities']} empty entities)"
    rows.append({**compare("attention function, one decoding step", "no_grad forward, T = 1", shape1, td, diff)})
    # the same step as the model's beam search runs it: one memory row per example, the beams as its queries
    # (x [B, beams, d] against B rows of K/V), against the loop on the official per-beam layout above
    b1 = args.gen_batch
    rows_of = torch.arange(n1).view(b1, args.num_beams)[:, 0]  # the per-beam memory repeats each example's row
    k2, v2, m2 = k1[rows_of].contiguous(), v1[rows_of].contiguous(), m1[rows_of]
    k1r, v1r, m1r = (y[rows_of].repeat_interleave(args.num_beams, 0) for y in (k1, v1, m1))
    x2 = x1.view(b1, args.num_beams, d)
    impls = {"batched": lambda: MultimodalSum.entity_mean_attention(attn, x2, k2, v2, m2),
             "loop": lambda: loop_entity_mean_attention(attn, x1, k1r, v1r, m1r)}
    with torch.no_grad():
        diff = {"output": max_diff(impls["batched"]().view(n1, 1, d), impls["loop"]())}
        td = time_impls({nm: nograd(fn) for nm, fn in impls.items()}, args.attn_repeats, args.warmup,
                        "decode step, shared memory: forward", progress, calls=args.attn_calls * 10)
    shape2 = (f"batched: N={b1} T={args.num_beams} (beams as queries); loop: N={n1} T=1 (memory per beam); "
              f"E={e} S={s}")
    rows.append({**compare("attention in one decoding step, the model's beam layout", "no_grad forward", shape2,
                           td, diff)})
    return rows


def bench_decoder(model: MultimodalSum, args, memory: Memory, labels: torch.Tensor, delta: torch.Tensor,
                  progress: bool) -> list[dict]:
    """The model's teacher-forced forward from a precomputed memory, batched vs the loop swapped in (eval mode)."""
    model.eval()
    calls = {"n": 0}

    def counting_loop(attn, x, k, v, mask):
        calls["n"] += 1
        return loop_entity_mean_attention(attn, x, k, v, mask)

    outs, grads = {}, {}
    for name, fn in (("batched", None), ("loop", counting_loop)):
        with attention_swapped(model, fn):
            with torch.no_grad():
                outs[name] = model(memory=memory, labels=labels, delta=delta, label_smoothing=0.1)
            model.zero_grad(set_to_none=True)
            model(memory=memory, labels=labels, delta=delta, label_smoothing=0.1).loss.backward()
            grads[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    modalities = len(memory.items())
    expected_calls = 2 * model.config.decoder_layers * modalities
    if calls["n"] != expected_calls:
        raise RuntimeError(f"the loop was called {calls['n']} times, expected {expected_calls}: the swap failed")
    model.zero_grad(set_to_none=True)
    diff_f = {"logits": max_diff(outs["batched"].logits, outs["loop"].logits),
              "loss": max_diff(outs["batched"].loss, outs["loop"].loss)}
    diff_b = dict(diff_f)
    diff_b["grad (all parameters)"] = max(max_diff(grads["batched"][n], grads["loop"][n]) for n in grads["batched"])
    grad_scale = max(float(g.abs().max()) for g in grads["batched"].values())
    del grads

    def fwd(fn):
        def run():
            with attention_swapped(model, fn), torch.no_grad():
                model(memory=memory, labels=labels, delta=delta, label_smoothing=0.1)
        return run

    def fwd_bwd(fn):
        def run():
            with attention_swapped(model, fn):
                model.zero_grad(set_to_none=True)
                model(memory=memory, labels=labels, delta=delta, label_smoothing=0.1).loss.backward()
        return run

    impls = {"batched": None, "loop": loop_entity_mean_attention}
    # the equivalence passes above (forward and forward + backward of both) were the warm-up
    tf = time_impls({k: fwd(v) for k, v in impls.items()}, args.decoder_repeats, 0, "decoder: forward", progress)
    tb = time_impls({k: fwd_bwd(v) for k, v in impls.items()}, args.decoder_repeats, 0,
                    "decoder: forward+backward", progress)
    model.zero_grad(set_to_none=True)
    sizes = {m: tuple(e.states.shape[1:3]) for m, e in memory.items()}
    shape = (f"B={labels.size(0)} T={labels.size(1)}, entities x tokens " +
             ", ".join(f"{m} {a}x{b}" for m, (a, b) in sizes.items()) +
             f", {model.config.decoder_layers} layers")
    finite = bool(torch.isfinite(outs["batched"].logits).all())
    return [{**compare("model decoder (teacher-forced), forward", "forward(memory=..., labels=...): _cross_kv + "
                       "decoder + loss, no_grad, eval", shape, tf, diff_f), "finite": finite},
            {**compare("model decoder (teacher-forced), forward+backward", "the same + backward to every decoder "
                       "parameter (memory precomputed)", shape, tb, diff_b), "finite": finite,
             "largest_gradient": grad_scale}]


def gen_kwargs(args) -> dict:
    return dict(num_beams=args.num_beams, max_length=args.max_length, min_length=args.min_length,
                no_repeat_ngram_size=args.no_repeat_ngram_size)


def bench_generation(model: MultimodalSum, args, inp: dict, memory: Memory, progress: bool) -> tuple[dict, list]:
    model.eval()
    b = inp["review_ids"].size(0)
    kw = gen_kwargs(args)
    with torch.no_grad():
        ids = model.generate(**model_kwargs(inp), **kw)
    full = ids.size(1) == args.max_length and bool(ids[:, -1].eq(model.config.eos_token_id).all())

    def end_to_end():
        with torch.no_grad():
            model.generate(**model_kwargs(inp), **kw)

    # the call above was the warm-up
    t = time_impls({"generate": end_to_end}, args.gen_repeats, 0, "generate (encode + beam search)",
                   progress)["generate"]
    # cross-attention K/V for B * num_beams rows (the official layout, memory.index_batch(expand)) vs B rows (the model's)
    expand = torch.arange(b).repeat_interleave(args.num_beams)

    def kv_rows():
        with torch.no_grad():
            model._cross_kv(memory.index_batch(expand))

    def kv_examples():
        with torch.no_grad():
            model._cross_kv(memory)

    tk = time_impls({"beam_rows": kv_rows, "example_rows": kv_examples}, args.gen_repeats, 1,
                    "cross K/V for B*beams vs B rows", progress)
    gen = {"name": "generate (encode + beam search)", "batch": b, **t, "entities_per_s": b / t["median_s"],
           "decoding_steps": args.max_length - 1, "output_shape": list(ids.shape),
           "all_examples_decoded_max_length": full,
           "cross_kv_for_beam_rows": tk["beam_rows"], "cross_kv_for_example_rows": tk["example_rows"],
           "cross_kv_beam_rows_share_of_generate": tk["beam_rows"]["median_s"] / t["median_s"]}
    rows = []
    if args.gen_loop_repeats > 0:
        outs = {}

        def beam(name, fn, shared):
            def run():
                model.share_memory_across_beams = shared
                try:
                    with attention_swapped(model, fn), torch.no_grad():
                        outs[name] = model.generate(memory=memory, **kw)
                finally:
                    model.share_memory_across_beams = True
            return run

        # no separate warm-up: the batched path is warm from the calls above, a call lasts many seconds.
        # "loop": the per-entity loop on the official layout (memory repeated per beam, as the official code and
        # Hugging Face's generate); "loop_shared_memory": the same loop on the model's one-row-per-example memory.
        tl = time_impls({"batched": beam("batched", None, True),
                         "loop": beam("loop", loop_entity_mean_attention, False),
                         "loop_shared_memory": beam("loop_shared_memory", loop_entity_mean_attention, True)},
                        args.gen_loop_repeats, 0, "beam search: batched vs loop", progress)
        identical = all(torch.equal(outs["batched"], outs[k]) for k in ("loop", "loop_shared_memory"))
        row = compare("beam search from the encoded memory", f"generate(memory=...), beams {args.num_beams}, "
                      f"{args.max_length - 1} steps; loop = per-entity loop with the memory repeated per beam",
                      f"B={b}, {args.num_beams} beams", tl, {})
        row.update({"generated_ids_identical": identical, "max_abs_diff": {}, "within_tolerance": True,
                    "entities_per_s": {k: b / v["median_s"] for k, v in tl.items()},
                    "loop_shared_memory_over_batched": tl["loop_shared_memory"]["median_s"] / tl["batched"]["median_s"]})
        rows.append(row)
    return gen, rows


# -------------------------------------------------------------------------------------------------- training
def bench_train(model: MultimodalSum, args, inp_loo: dict, inp_fwd: dict, progress: bool) -> list[dict]:
    model.train()
    model.set_trainable("3")
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]}
              for g in model.param_groups("3", weight_decay=0.01)]
    trainable = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=1e-5, eps=1e-6)
    losses: dict[str, list[float]] = {}
    out = []
    for objective in args.train_objective:
        inp = inp_loo if objective == "loo" else inp_fwd
        losses[objective] = []

        def step():
            opt.zero_grad(set_to_none=True)
            if objective == "loo":
                loss = model.leave_one_out_loss(inp["review_ids"], inp["review_mask"], inp["ratings"],
                                                images=inp.get("images"), image_mask=inp.get("image_mask"),
                                                table=inp.get("table"), label_smoothing=0.1)
            else:
                loss = model(**model_kwargs(inp), labels=inp["summary"], delta=inp["delta"],
                             label_smoothing=0.1).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            losses[objective].append(float(loss.detach()))

        t = time_impls({"step": step}, args.train_repeats, args.warmup, f"train step ({objective})",
                       progress)["step"]
        b, r = inp["review_ids"].shape[:2]
        what = (f"leave_one_out_loss: {r} reviews, each the target of the other {r - 1} ({r} decoder passes)"
                if objective == "loo" else f"forward(labels=...): {r} input reviews, one {inp['summary'].size(1)}-"
                                           "token target")
        out.append({"name": f"training step 3 ({objective})", "objective": objective, "what": what + ", photos + "
                    "table, label smoothing 0.1, backward, clip 1.0, AdamW step (train mode)", "batch": b, **t,
                    "entities_per_s": b / t["median_s"], "losses": losses[objective],
                    "trainable_parameters": sum(p.numel() for p in trainable)})
    opt.zero_grad(set_to_none=True)
    del opt
    model.requires_grad_(True)
    model.eval()
    return out


# ------------------------------------------------------------------------------------------------------ report
def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torchvision
    import transformers
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "affinity_cpus": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "mkldnn": torch.backends.mkldnn.is_available(),
            "mkl": torch.backends.mkl.is_available(), "default_threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "load_average_at_start": list(os.getloadavg())}
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                            check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = None
    info["modeling_py_sha256"] = hashlib.sha256((REPO / "models/multimodalsum/modeling.py").read_bytes()).hexdigest()
    return info


def fmt_s(x: float) -> str:
    return f"{x * 1e3:.2f} ms" if x < 1.0 else f"{x:.2f} s"


def print_tables(report: dict) -> None:
    cfg = report["config"]
    m = cfg["model"]
    print(f"\nMultimodalSum CPU benchmark: d_model {m['d_model']}, {m['encoder_layers']}+{m['decoder_layers']} layers, "
          f"{m['heads']} heads, FFN {m['ffn_dim']}, vocab {m['vocab_size']}, {m['parameters']:,} parameters; "
          f"image backbone {m['image_backbone']}; {report['machine']['cpu']} ({report['machine']['cpu_count']} CPUs), "
          f"torch {report['machine']['torch']}\n")
    print("| measurement | threads | median | min - max | repeats | throughput |")
    print("|---|---:|---:|---:|---:|---:|")
    for th, res in report["results"].items():
        for row in res["training"] + [res["generation"]]:
            print(f"| {row['name']} (batch {row['batch']}) | {th} | {fmt_s(row['median_s'])} | "
                  f"{fmt_s(row['min_s'])} - {fmt_s(row['max_s'])} | {row['repeats']} | "
                  f"{row['entities_per_s']:.3f} entities/s |")
    print()
    print("| batched vs loop | shape | threads | batched | loop | loop / batched (target >= 3) | max abs diff |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for th, res in report["results"].items():
        for row in res["batched_vs_loop"]:
            diff = (f"{row['max_abs_diff_worst']:.1e}" if row["max_abs_diff"] else
                    ("ids identical" if row.get("generated_ids_identical") else "ids DIFFER"))
            print(f"| {row['name']} | {row['shape']} | {th} | {fmt_s(row['batched']['median_s'])} | "
                  f"{fmt_s(row['loop']['median_s'])} | {row['speedup_loop_over_batched']:.2f}x"
                  f"{'' if row['meets_target'] else ' (not met)'} | {diff} |")
    print()
    for th, res in report["results"].items():
        g = res["generation"]
        print(f"threads {th}: cross K/V for B*beams rows (the official layout) "
              f"{fmt_s(g['cross_kv_for_beam_rows']['median_s'])} vs {fmt_s(g['cross_kv_for_example_rows']['median_s'])} "
              f"for the model's B rows ({100 * g['cross_kv_beam_rows_share_of_generate']:.1f}% of generate); all examples decoded "
              f"{cfg['generation']['max_length']} tokens: {g['all_examples_decoded_max_length']}")
    for th, res in report["results"].items():
        for row in res["batched_vs_loop"]:
            if "loop_shared_memory_over_batched" in row:
                print(f"threads {th}: beam search with the per-entity loop on the model's shared memory: "
                      f"loop / batched {row['loop_shared_memory_over_batched']:.2f}x (entity batching alone)")
    for th, res in report["results"].items():
        ld = res["load1_seen"]
        busy = ld["median"] > float(th) + 0.75
        print(f"threads {th}: 1-min load average during the timed blocks min {ld['min']:.2f} / median "
              f"{ld['median']:.2f} / max {ld['max']:.2f} (this run adds ~{th})" +
              (" -- OTHER WORK WAS RUNNING: timings are contended" if busy else ""))
    for name, r in report.get("thread_scaling", {}).items():
        print(f"thread scaling, {name}: {r['ratio']:.2f}x ({r['against']})")
    per_row: dict[str, float] = {}
    for key, v in report["max_abs_diff_summary"].items():
        row = key.split(": ")[0]
        per_row[row] = max(per_row.get(row, 0.0), v)
    print(f"\nmax abs differences, worst over outputs and gradients (tolerance {TOLERANCE:g}): " +
          "; ".join(f"{k} {v:.1e}" for k, v in per_row.items()) +
          f" -> {'all within' if report['all_within_tolerance'] else 'NOT all within'}; "
          f"total {report['runtime_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1],
                    help="torch.set_num_threads settings, each measured in turn (default: the CPU count)")
    ap.add_argument("--quick", action="store_true", help="a tiny model and inputs: a smoke run in seconds")
    ap.add_argument("--out", default=str(REPO / "docs" / "multimodalsum_benchmark.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--gen-batch", type=int, default=4)
    ap.add_argument("--reviews", type=int, default=8, help="input reviews per entity (generation, decoder)")
    ap.add_argument("--train-reviews", type=int, default=9,
                    help="reviews per entity of the leave-one-out step (9: each the target of the other 8)")
    ap.add_argument("--review-tokens", type=int, default=128, help="L: review lengths uniform in [L/2, L]")
    ap.add_argument("--images", type=int, default=1, help="photos per entity (0: none)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--backbone", default="resnet18", help="torchvision ResNet of the image encoder, or 'none'")
    ap.add_argument("--num-beams", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=60)
    ap.add_argument("--min-length", type=int, default=None, help="default max_length - 1 (see the docstring)")
    ap.add_argument("--no-repeat-ngram-size", type=int, default=3)
    ap.add_argument("--train-objective", nargs="+", choices=("loo", "forward"), default=["loo"])
    ap.add_argument("--attn-examples", type=int, default=4)
    ap.add_argument("--attn-entities", type=int, default=8)
    ap.add_argument("--attn-keys", type=int, default=128)
    ap.add_argument("--attn-queries", type=int, default=60)
    ap.add_argument("--attn-calls", type=int, default=4, help="calls per timed repeat of the attention function")
    ap.add_argument("--train-repeats", type=int, default=3)
    ap.add_argument("--gen-repeats", type=int, default=2, help="timed generate calls after one warm-up call")
    ap.add_argument("--gen-loop-repeats", type=int, default=1, help="0 skips beam search with the loop")
    ap.add_argument("--attn-repeats", type=int, default=15)
    ap.add_argument("--decoder-repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    if args.min_length is None:
        args.min_length = args.max_length - 1
    progress = not args.no_progress
    start = time.perf_counter()
    bart = QUICK_BART if args.quick else BART_BASE
    backbone = None if args.backbone.lower() == "none" or args.images <= 0 else args.backbone
    torch.manual_seed(args.seed)
    model = MultimodalSum(tiny_bart_config(**bart), table_schema="yelp", image_backbone=backbone).eval()
    cfg = model.config
    parameters = sum(p.numel() for p in model.parameters())
    inp_gen = make_inputs(model, args, args.gen_batch, args.reviews, args.seed + 1, empty=True)
    inp_loo = make_inputs(model, args, args.train_batch, args.train_reviews, args.seed + 2, empty=False)
    inp_fwd = make_inputs(model, args, args.train_batch, args.reviews, args.seed + 3, empty=True)
    g = torch.Generator().manual_seed(args.seed + 4)
    dec_t = args.attn_queries
    labels = torch.randint(4, cfg.vocab_size, (args.gen_batch, dec_t), generator=g)
    if args.gen_batch > 1:
        labels[1, dec_t // 2:] = cfg.pad_token_id  # a shorter target: the decoder padding mask path
    dec_delta = torch.rand(args.gen_batch, generator=g) * 4 - 2
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "machine": machine_info(),
        "config": {
            "quick": args.quick,
            "model": {"d_model": cfg.d_model, "encoder_layers": cfg.encoder_layers, "decoder_layers": cfg.decoder_layers,
                      "heads": cfg.decoder_attention_heads, "ffn_dim": cfg.decoder_ffn_dim, "vocab_size": cfg.vocab_size,
                      "max_positions": cfg.max_position_embeddings, "dropout": cfg.dropout,
                      "attention_dropout": cfg.attention_dropout, "init": "random (BartConfig, seed %d)" % args.seed,
                      "image_backbone": backbone, "table_schema": "yelp", "table_fields": YELP_SCHEMA.num_fields,
                      "parameters": parameters,
                      "parameters_by_part": {part: sum(p.numel() for n, p in model.named_parameters()
                                                       if n.startswith(part))
                                             for part in ("bart.", "image_encoder.", "table_encoder.", "gates.")}},
            "inputs": {"review_tokens_max": args.review_tokens, "review_lengths": "uniform in [L/2, L]",
                       "reviews_generation": args.reviews, "reviews_training_loo": args.train_reviews,
                       "images_per_entity": args.images if backbone else 0, "image_size": args.image_size,
                       "image_tokens_per_photo": (args.image_size // 16) ** 2 if backbone else 0,
                       "train_batch": args.train_batch, "gen_batch": args.gen_batch,
                       "padding_entities": "generation/decoder inputs: example 1 has its last 2 reviews empty and no "
                                           "real photo, the last example no table; LOO inputs: no empty review "
                                           "(leave_one_out_loss refuses them)"},
            "generation": {**gen_kwargs(args), "decoder_start": "official", "early_stopping": True,
                           "length_penalty": 1.0},
            "training": {"step": "3", "optimizer": "AdamW(param_groups('3'), lr 1e-5, eps 1e-6, weight decay 0.01)",
                         "clip_grad_norm": 1.0, "label_smoothing": 0.1, "objectives": args.train_objective},
            "attention": {"examples": args.attn_examples, "entities": args.attn_entities, "keys": args.attn_keys,
                          "queries": args.attn_queries, "decode_step_rows": args.gen_batch * args.num_beams,
                          "inputs": "random states; key lengths uniform in [S/2, S]; example 1: last 2 entities empty; "
                                    "the last example (N >= 3): every entity empty", "layer": "decoder layer 0"},
            "decoder_comparison": {"batch": args.gen_batch, "target_tokens": dec_t},
            "repeats": {k: getattr(args, k) for k in ("train_repeats", "gen_repeats", "gen_loop_repeats",
                                                      "attn_repeats", "attn_calls", "decoder_repeats", "warmup")},
        },
        "tolerance": TOLERANCE,
        "target_speedup": TARGET_SPEEDUP,
        "notes": [
            "loop / batched = median time of the per-entity loop divided by the model's batched code (> 1: batched "
            "is faster); " + LOOP_AGAINST,
            f"min_length = {args.min_length}, max_length = {args.max_length}: every example decodes "
            f"{args.max_length - 1} steps (</s> banned before the last step, forced at it); min_length = max_length "
            "would also ban the forced </s> at the last step (all scores -inf there).",
            "timings are medians of interleaved repeats after warm-up; time.perf_counter on CPU",
        ],
        "results": {},
    }
    print(f"model: {parameters:,} parameters; threads {args.threads}", file=sys.stderr)
    for threads in args.threads:
        torch.set_num_threads(threads)
        model.load_state_dict(initial)
        t0 = time.perf_counter()
        res: dict = {"threads": torch.get_num_threads()}
        rows = bench_attention(model, args, progress)
        with torch.no_grad():
            model.eval()
            memory = model.encode(**model_kwargs(inp_gen))
        rows += bench_decoder(model, args, memory, labels, dec_delta, progress)
        gen, gen_rows = bench_generation(model, args, inp_gen, memory, progress)
        rows += gen_rows
        res["batched_vs_loop"] = rows
        res["generation"] = gen
        del memory
        res["training"] = bench_train(model, args, inp_loo, inp_fwd, progress)
        res["seconds"] = time.perf_counter() - t0
        res["load1_seen"] = {"min": min(LOADS), "median": statistics.median(LOADS), "max": max(LOADS),
                             "note": f"1-min load average before / after each timed block; this run adds ~{threads}"}
        LOADS.clear()
        report["results"][str(threads)] = res
        print(f"threads {threads}: done in {res['seconds']:.0f} s", file=sys.stderr)
    model.load_state_dict(initial)
    if len(args.threads) > 1:
        lo, hi = str(min(args.threads)), str(max(args.threads))
        r_lo, r_hi = report["results"][lo], report["results"][hi]
        scaling = {f"generate, {hi} vs {lo} threads": r_lo["generation"]["median_s"] / r_hi["generation"]["median_s"]}
        for a, b in zip(r_lo["training"], r_hi["training"]):
            scaling[f"{a['name']}, {hi} vs {lo} threads"] = a["median_s"] / b["median_s"]
        report["thread_scaling"] = {k: {"ratio": v, "against": f"median time at {lo} threads / at {hi} threads"}
                                    for k, v in scaling.items()}
    worst: dict[str, float] = {}
    for res in report["results"].values():
        for row in res["batched_vs_loop"]:
            for k, v in row["max_abs_diff"].items():
                key = f"{row['name']}: {k}"
                worst[key] = max(worst.get(key, 0.0), v)
    report["max_abs_diff_summary"] = worst
    report["all_within_tolerance"] = all(v <= TOLERANCE for v in worst.values())
    report["generated_ids_identical"] = all(r.get("generated_ids_identical", True)
                                            for res in report["results"].values() for r in res["batched_vs_loop"])
    report["runtime_s"] = time.perf_counter() - start
    report["machine"]["load_average_at_end"] = list(os.getloadavg())  # 1/5/15 min: other work on the machine
    atomic_write_json(args.out, report)
    print_tables(report)
    print(f"wrote {args.out}")
    return 0 if report["all_within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
