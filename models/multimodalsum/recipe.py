"""MultimodalSum training: the four steps of spec §3.2 on the shared toolkit (official ``src/bart-review.py``,
``text_pretrain.py``, ``img_pretrain.py``, ``table_pretrain.py``, ``multimodal_train.py``, ``train_utils.py``).

=====  ==========  ===========================================  ===========================  ======================
step   stage       trainable (``MultimodalSum.set_trainable``)  unit                         starts from
=====  ==========  ===========================================  ===========================  ======================
0      denoise     BART (``bart.*``)                            review chunks <= 128 BPE     pretrained / random BART
1      text        BART + rating vector                         9-review leave-one-out       step 0
2a     image       image encoder layer3 + projection            photos -> one review (x 9)   step 1
2b     table       table encoder (BART embedding frozen)        table -> one review (x 9)    step 1
3      multimodal  everything but conv1..layer2                 leave-one-out + photos/table  1 (BART), 2a, 2b
=====  ==========  ===========================================  ===========================  ======================

Every step (``_fit``): AdamW over :meth:`MultimodalSum.param_groups` (weight decay except biases and LayerNorm /
BatchNorm weights; step 0: the same rule over ``bart.*``), the learning rate set per optimizer step from the global
step (linear warm-up over ``warmup`` of ``epochs`` x batches, then linear decay to 0: ``get_linear_schedule_with_
warmup`` of the official ``train_utils.py``, recomputed instead of stored, so a resume needs no scheduler state),
gradient clipping at ``clip`` over the trainable parameters (0 = none), label smoothing and the pad switch
``model.pad_in_loss`` through ``modeling.label_smoothed_loss``. Epochs run through
:func:`models.common.checkpoint.run_epochs` (one checkpoint per epoch with model + optimizer + history, resume from
the newest) and stop on :class:`models.common.stopping.StopRule` (validation loss, ``patience``, at most ``epochs``;
never wall-clock time); the best-validation weights (``best.pt``) go to the next step. Every random draw of an epoch
(review sampling, order, noise, dropout, photo augmentation) is seeded from (``order_seed``, epoch), so a resumed fit
ends with the weights of an uninterrupted one. Progress bars: tqdm per epoch and per batch.

Checkpoint keys (:func:`fingerprints`): step 0 = its own config + data (config and the sha256 of the parquet files
training reads) + modalities + model (+ the ``tokenizers`` version when the BPE is trained here); every later step = its own section + its upstream's key (step 3: steps 1, 2a
and 2b), under ``<checkpoint_dir>/<stage>-<key>/``.

Step 3 starts, as the official ``MultimodalSum(bart_pretrained, table_pretrained, img_pretrained)``, from step 1's
BART and rating vector, step 2a's image encoder and step 2b's table encoder; its gates are the untrained ones of the
initial model (official: new modules at init). A disabled modality skips its step; both disabled = text-only: steps
2a, 2b and 3 are skipped and the step-1 weights are the model.

Official-code bugs (spec §7) and how they are handled here:

1. padding in the loss: ``model.pad_in_loss`` ``faithful`` (pads included, official) or ``fixed`` (masked out);
   recorded in every checkpoint, run tag and metrics file.
2. ``text_pretrain.py`` uses ``LabelSmoothingLoss`` without importing it (fails only with ``--label_smoothing``): one
   loss function serves every step here, so step 1 takes ``text.label_smoothing`` like the others (default 0, the
   official cross-entropy).
3. ``_yelp_img_preprocessing`` filters photo counts with an undefined ``x`` (should be ``business``): the preprocessing
   lives in ``data/stages/build_review_tables.py`` (``photo_percentile`` on the per-business photo count); here every
   photo of ``images.parquet`` is checked to decode before training and at most ``images.max_per_entity`` are used.
4. the Amazon metadata selection reads the column ``' ratings'`` (leading space, KeyError): the tables store the
   average rating as ``avg_rating`` (mean ``overall``, data/review_schema.py), which the Amazon table schema reads
   by that name (``modeling.AMAZON_SCHEMA``).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.common import distributed
from models.common.checkpoint import atomic_torch_save, check_finite, latest_checkpoint, run_epochs
from models.common.config import fingerprint
from models.common.seed import select_device, set_seed
from models.common.stopping import StopRule
from models.multimodalsum.config import MultimodalSumConfig, StepConfig
from models.multimodalsum.data import (PAD, Batcher, DenoiseData, ReviewCorpus, batches, epoch_loo, fit_hours,
                                       loo_picks, mixed_seed, pivot_rows, training_files_digest)
from models.multimodalsum.modeling import HoursClusters, MultimodalSum, label_smoothed_loss, tiny_bart_config
from models.multimodalsum.tokenizer import ReviewTokenizer, build_tokenizer

STAGES = ("denoise", "text", "image", "table", "multimodal")
STEP_CODES = {"denoise": "0", "text": "1", "image": "2a", "table": "2b", "multimodal": "3"}
KIND = "multimodalsum"


class CheckpointKindError(ValueError):
    """Not a MultimodalSum model file."""


# ------------------------------------------------------------------------------------------------ keys, folders
@functools.lru_cache(maxsize=16)
def _data_digest(folders: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(training_files_digest(folders).items()))


def fingerprints(cfg: MultimodalSumConfig) -> dict[str, str]:
    """The checkpoint key of every stage (module docstring)."""
    import tokenizers

    fp = {"denoise": fingerprint({"kind": "0", "data": cfg.data, "data_files": dict(_data_digest(tuple(cfg.data.folders))),
                                  "modalities": cfg.modalities, "model": cfg.model, "step": cfg.denoise,
                                  # the trained BPE is part of step 0's result
                                  "bpe": None if cfg.model.pretrained else tokenizers.__version__})}
    fp["text"] = fingerprint({"kind": "1", "step": cfg.text, "upstream": fp["denoise"]})
    fp["image"] = fingerprint({"kind": "2a", "step": cfg.image, "images": cfg.images, "upstream": fp["text"]})
    fp["table"] = fingerprint({"kind": "2b", "step": cfg.table, "upstream": fp["text"]})
    fp["multimodal"] = fingerprint({"kind": "3", "step": cfg.multimodal, "images": cfg.images,
                                    "upstream": [fp["text"], fp["image"] if cfg.modalities.images else None,
                                                 fp["table"] if cfg.modalities.table else None]})
    return fp


def stage_dir(cfg: MultimodalSumConfig, stage: str) -> Path:
    return Path(getattr(cfg, stage).checkpoint_dir) / f"{stage}-{fingerprints(cfg)[stage]}"


def runs_stage(cfg: MultimodalSumConfig, stage: str) -> bool:
    """Whether ``stage`` trains in this configuration (a disabled modality skips its steps)."""
    m = cfg.modalities
    return {"denoise": True, "text": True, "image": m.images, "table": m.table, "multimodal": not m.text_only}[stage]


# ------------------------------------------------------------------------------------------------- model files
def bart_config(cfg: MultimodalSumConfig, vocab_size: int):
    m = cfg.model
    return tiny_bart_config(vocab_size=vocab_size, d_model=m.d_model, layers=m.encoder_layers, heads=m.heads,
                            ffn=m.ffn_dim, max_positions=m.max_positions, decoder_layers=m.decoder_layers,
                            dropout=m.dropout, attention_dropout=m.attention_dropout,
                            activation_dropout=m.activation_dropout)


def build_model(cfg: MultimodalSumConfig, tok: ReviewTokenizer) -> MultimodalSum:
    m, mod = cfg.model, cfg.modalities
    bart = m.pretrained if m.pretrained else bart_config(cfg, tok.vocab_size)
    model = MultimodalSum(bart, table_schema=m.table_schema if mod.table else None,
                          image_backbone=m.image_backbone if mod.images else None, image_weights_path=m.image_weights,
                          official_dropouts=True, encode_padding_images=m.encode_padding_images)
    if model.config.vocab_size < tok.vocab_size:
        raise ValueError(f"model.pretrained: the BART vocabulary ({model.config.vocab_size}) is smaller than its tokenizer's "
                         f"({tok.vocab_size})")
    return model


def save_model(path: Path, model: MultimodalSum, cfg: MultimodalSumConfig, tok: ReviewTokenizer,
               hours: HoursClusters | None, stage: str, extra: dict | None = None) -> Path:
    """One self-contained model file: weights, BART config, tokenizer, hours clusters and the input settings."""
    state = {
        "kind": KIND, "stage": stage, "step": STEP_CODES[stage],
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "bart_config": json.loads(model.config.to_json_string()),
        "table_schema": model.table_schema.name if model.table_schema is not None else None,
        "image_backbone": model.image_encoder.backbone if model.image_encoder is not None else None,
        "encode_padding_images": model.encode_padding_images,
        "tokenizer": tok.to_str(),
        "hours_centers": hours.centers.tolist() if hours is not None else None,
        "images": cfg.images.model_dump(mode="json"),
        "data": {"max_review_tokens": cfg.data.max_review_tokens, "test_review_tokens": dict(cfg.data.test_review_tokens),
                 "pad_to_max": cfg.data.pad_to_max},
        "modalities": cfg.modalities.model_dump(mode="json"),
        "pad_in_loss": cfg.model.pad_in_loss,
        **(extra or {}),
    }
    return atomic_torch_save(state, path)


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[MultimodalSum, dict, ReviewTokenizer,
                                                                       HoursClusters | None]:
    """(model, the saved dict, tokenizer, hours clusters) of a file written by :func:`save_model`."""
    from transformers import BartConfig

    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("kind") != KIND:
        raise CheckpointKindError(f"{path}: not a MultimodalSum model file (kind {state.get('kind') if isinstance(state, dict) else None!r})")
    model = MultimodalSum(BartConfig.from_dict(state["bart_config"]), table_schema=state["table_schema"],
                          image_backbone=state["image_backbone"], encode_padding_images=state["encode_padding_images"])
    model.load_state_dict(state["model"])
    tok = ReviewTokenizer.from_str(state["tokenizer"])
    hours = None
    if state.get("hours_centers") is not None:
        hours = HoursClusters(centers=np.asarray(state["hours_centers"], dtype=np.float64), scores={})
    return model, state, tok, hours


def apply_threads(cfg: MultimodalSumConfig) -> None:
    """``torch.set_num_threads(cfg.torch_threads)`` unless 0 (torch's default)."""
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)


def load_corpus(cfg: MultimodalSumConfig) -> ReviewCorpus:
    return ReviewCorpus(cfg.data, cfg.modalities, cfg.model.table_schema)


# ------------------------------------------------------------------------------------------------------- fitting
def bart_param_groups(model: MultimodalSum, weight_decay: float, rule: str) -> list[dict]:
    """Step 0: ``bart.*`` only, the same no-decay rule as :meth:`MultimodalSum.param_groups`."""
    chosen = [(n, p) for n, p in model.named_parameters() if n.startswith("bart.")]
    if rule == "official":
        no_decay = {n for n, _ in chosen if any(s in n for s in ("bias", "layer_norm.weight", "layernorm_embedding.weight"))}
    else:
        norms = {f"{mn}.weight" for mn, mod in model.named_modules() if isinstance(mod, (torch.nn.LayerNorm,))}
        no_decay = {n for n, _ in chosen if n.endswith(".bias") or n in norms}
    ids = {id(p) for _, p in chosen}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return [{"params": [p for n, p in chosen if n not in no_decay], "weight_decay": weight_decay},
            {"params": [p for n, p in chosen if n in no_decay], "weight_decay": 0.0}]


def lr_factor(step: int, total: int, warmup: float) -> float:
    """``get_linear_schedule_with_warmup`` (num_warmup_steps = int(total * warmup)) at optimizer step ``step``."""
    w = int(total * warmup)
    if step < w:
        return step / max(1, w)
    return max(0.0, (total - step) / max(1, total - w))


def _split(items: Sequence, parts: int) -> list[list]:
    size = math.ceil(len(items) / parts)
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _fit(cfg: MultimodalSumConfig, stage: str, model: MultimodalSum, groups: list[dict], *,
         steps_per_epoch: int, epoch_batches: Callable[[int], list[list]], loss_fn: Callable[[list], torch.Tensor],
         validate: Callable[[], dict[str, float]], save_best: Callable[[Path, dict], None], progress: bool,
         on_epoch_end: Iterable[Callable] = ()) -> dict:
    """Train ``stage`` (see the module docstring); returns weights (best.pt), history, epochs, stop reason.

    Under torchrun (:mod:`models.common.distributed`) the micro-batches of each optimizer step are split over the
    ranks (each micro-batch's loss is a mean of its own, so the gradient is the single process's once DDP averages);
    rank 0 writes best.pt and the checkpoints. Validation runs on every rank (the same numbers)."""
    d = distributed.current()
    sc: StepConfig = getattr(cfg, stage)
    fp = fingerprints(cfg)[stage]
    run_dir = stage_dir(cfg, stage)
    ckpt_dir = run_dir / "checkpoints"
    best_path = run_dir / "best.pt"
    if best_path.exists() and (latest_checkpoint(ckpt_dir) is None or not sc.resume):
        distributed.barrier(d)  # every rank has looked before rank 0 deletes
        if d.main:
            best_path.unlink()  # a fresh fit never keeps the best weights of an older one
    best = {"val_loss": math.inf}
    if best_path.exists():
        best["val_loss"] = float(torch.load(best_path, map_location="cpu", weights_only=True).get("val_loss", math.inf))
    opt = torch.optim.AdamW(groups, lr=sc.lr, eps=sc.adam_eps)
    trainable = [p for g in groups for p in g["params"]]
    total = sc.epochs * steps_per_epoch
    net = distributed.wrap(_Call(model), d, find_unused_parameters=True)  # runs loss_fn(mb) as DDP's forward

    def train_epoch(epoch: int) -> dict[str, float]:
        t0 = time.perf_counter()
        torch.manual_seed(mixed_seed(sc.order_seed, epoch, 2))  # dropout and photo augmentation of this epoch
        model.train()
        losses, factor = [], 0.0
        bar = tqdm(epoch_batches(epoch), desc=f"{stage} epoch {epoch + 1}", leave=False, disable=not (progress and d.main))
        for i, micro in enumerate(bar):
            factor = lr_factor(epoch * steps_per_epoch + i, total, sc.warmup)
            for g in opt.param_groups:
                g["lr"] = sc.lr * factor
            opt.zero_grad(set_to_none=True)
            value = 0.0
            mine = list(distributed.shard(micro, d))
            # a rank with no micro-batch of this step still joins its gradient all-reduce, with a zero loss
            work = [(mb, 1.0) for mb in mine] or [(micro[0], 0.0)]
            for j, (mb, keep) in enumerate(work):
                with distributed.no_sync(net, j == len(work) - 1):
                    loss = net(loss_fn, mb) / len(micro)
                    check_finite(loss, epoch=epoch, step=i, ckpt_dir=ckpt_dir)
                    (loss * (keep * d.world)).backward()  # DDP averages over ranks: x world gives the sum
                value += keep * float(loss.detach())
            if d.world > 1:
                value = distributed.global_sum(value, d)
            if sc.clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, sc.clip)
            opt.step()
            losses.append(value)
            bar.set_postfix(loss=f"{value:.3f}")
        metrics = {"train_loss": float(np.mean(losses)) if losses else float("nan"), "lr": sc.lr * factor}
        model.eval()
        with torch.no_grad():
            metrics.update(validate())
        metrics["epoch_seconds"] = time.perf_counter() - t0
        if metrics["val_loss"] < best["val_loss"]:
            best["val_loss"] = metrics["val_loss"]
            if d.main:  # the other ranks read it after run_epochs' barrier
                save_best(best_path, {"epoch": epoch + 1, "val_loss": metrics["val_loss"]})
        return metrics

    rule = StopRule("val_loss", "min", sc.patience, sc.epochs)
    start = time.perf_counter()
    history = run_epochs(model=model, optimizer=opt, epochs=sc.epochs, ckpt_dir=ckpt_dir, fingerprint=fp,
                         seed=sc.order_seed, train_epoch=train_epoch, on_epoch_end=on_epoch_end, should_stop=rule,
                         resume=sc.resume, progress=progress)
    if history and not best_path.exists() and d.main:  # resumed after the last epoch with best.pt gone
        save_best(best_path, {"epoch": len(history), "val_loss": history[-1]["val_loss"]})
    distributed.barrier(d)
    return {"stage": stage, "step": STEP_CODES[stage], "weights": str(best_path), "fingerprint": fp, "history": history,
            "epochs_run": len(history), "stopped_by": rule.reason(history) or "interrupted",
            "best_epoch": rule.best_index(history) + 1, "best_val_loss": min(h["val_loss"] for h in history),
            "train_seconds": time.perf_counter() - start}


class _Call(torch.nn.Module):
    """``forward(fn, *args) = fn(*args)``: a loss closure over ``model`` run as the forward of one module holding it,
    so that DDP wraps whatever the closure calls (``model.bart``, ``leave_one_out_loss``, ``model(...)``)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(*args)


def _weighted_mean(pairs: list[tuple[float, int]]) -> float:
    n = sum(k for _, k in pairs)
    return sum(v * k for v, k in pairs) / max(n, 1)


# -------------------------------------------------------------------------------------------------------- step 0
def train_denoise(cfg: MultimodalSumConfig, progress: bool = True, on_epoch_end: Iterable[Callable] = ()) -> dict:
    """Step 0: tokenizer (trained on the training reviews unless ``model.pretrained``), hours clusters, the initial
    model, then BART denoising further-pretraining (skipped with ``denoise.enabled: false``: the initial model)."""
    sc = cfg.denoise
    apply_threads(cfg)
    corpus = load_corpus(cfg)
    tok = build_tokenizer(cfg.model.pretrained, corpus.tokenizer_texts(), cfg.model.vocab_size, cfg.model.bpe_min_frequency)
    hours = fit_hours(corpus.hours_strings(), cfg.model.hours_ks, cfg.model.hours_coverage) if cfg.modalities.table else None
    set_seed(sc.init_seed)
    device = distributed.device_for(select_device(sc.device))
    model = build_model(cfg, tok).to(device)
    info = {"tokenizer_vocab": tok.vocab_size, "tokenizer_texts": len(corpus.tokenizer_texts()),
            "hours_k": hours.k if hours is not None else 0, "skipped_entities": dict(corpus.skipped),
            "train_entities": len(corpus.train), "val_entities": len(corpus.val)}

    def save_best(path: Path, extra: dict) -> None:
        save_model(path, model, cfg, tok, hours, "denoise", {**extra, "fingerprint": fingerprints(cfg)["denoise"]})

    if not sc.enabled:
        path = stage_dir(cfg, "denoise") / "best.pt"
        save_best(path, {"epoch": 0, "val_loss": float("nan")})
        return {"stage": "denoise", "step": "0", "weights": str(path), "fingerprint": fingerprints(cfg)["denoise"],
                "history": [], "epochs_run": 0, "stopped_by": "disabled (denoise.enabled: false)", "best_epoch": 0,
                "best_val_loss": float("nan"), "train_seconds": 0.0, **info}
    train = DenoiseData(corpus.tokenizer_texts(), tok, cfg)
    val = DenoiseData([r for e in corpus.val for r in e.reviews], tok, cfg)
    groups = bart_param_groups(model, sc.weight_decay, cfg.model.param_rule)
    pad_in_loss, pad_to_max = cfg.model.pad_in_loss, cfg.data.pad_to_max

    def loss_of(b: dict, smoothing: float) -> torch.Tensor:
        b = {k: v.to(device) for k, v in b.items()}
        logits = model.bart(input_ids=b["input_ids"], attention_mask=b["attention_mask"].long(),
                            decoder_input_ids=b["decoder_input_ids"],
                            decoder_attention_mask=b["decoder_input_ids"].ne(PAD).long(), use_cache=False).logits
        return label_smoothed_loss(logits, b["labels"], smoothing, PAD, pad_in_loss)

    def epoch_batches(epoch: int) -> list[list]:
        rs = np.random.RandomState(mixed_seed(sc.order_seed, epoch, 0))
        out = []
        for i, idx in enumerate(batches(rs.permutation(len(train)).tolist(), sc.batch_size)):
            out.append([(part, mixed_seed(sc.order_seed, epoch, i, j)) for j, part in enumerate(_split(idx, sc.grad_accum))])
        return out

    def loss_fn(mb) -> torch.Tensor:
        idx, seed = mb
        return loss_of(train.batch(idx, np.random.RandomState(seed), pad_to_max), sc.label_smoothing)

    def validate() -> dict[str, float]:
        pairs = []
        for i, idx in enumerate(batches(list(range(len(val))), sc.batch_size, drop_last=False)):
            b = val.batch(idx, np.random.RandomState(mixed_seed(cfg.data.val_seed, i)), pad_to_max)
            pairs.append((float(loss_of(b, sc.label_smoothing)), len(idx)))
        return {"val_loss": _weighted_mean(pairs)}

    n_steps = len(batches(list(range(len(train))), sc.batch_size))
    result = _fit(cfg, "denoise", model, groups, steps_per_epoch=n_steps, epoch_batches=epoch_batches, loss_fn=loss_fn,
                  validate=validate, save_best=save_best, progress=progress, on_epoch_end=on_epoch_end)
    return {**result, **info}


# ------------------------------------------------------------------------------------------------- steps 1 and 3
def _loo_step(cfg: MultimodalSumConfig, stage: str, model: MultimodalSum, tok: ReviewTokenizer,
              hours: HoursClusters | None, state: dict, progress: bool, on_epoch_end) -> dict:
    sc: StepConfig = getattr(cfg, stage)
    device = next(model.parameters()).device
    corpus = load_corpus(cfg)
    multimodal = stage == "multimodal"
    # step 1 reads text only
    train_b = Batcher(cfg, tok, hours, train=True, text_only=not multimodal)
    val_b = Batcher(cfg, tok, hours, train=False, text_only=not multimodal)
    groups = _groups(model, stage, sc, cfg.model.param_rule)
    k = cfg.data.train_reviews
    val_picks = loo_picks(corpus.val, k, None, cfg.data.val_seed)
    val_items = list(zip(corpus.val, val_picks))

    def loss_of(batcher: Batcher, items) -> torch.Tensor:
        rb = batcher.loo([e for e, _ in items], [p for _, p in items]).to(device)
        return model.leave_one_out_loss(rb.review_ids, rb.review_mask, rb.ratings, images=rb.images,
                                        image_mask=rb.image_mask, table=rb.table, label_smoothing=sc.label_smoothing,
                                        pad_in_loss=cfg.model.pad_in_loss)

    def epoch_batches(epoch: int) -> list[list]:
        samples = epoch_loo(corpus.train, k, sc.order_seed, epoch)
        return [_split(b, sc.grad_accum) for b in batches(samples, sc.batch_size)]

    def validate() -> dict[str, float]:
        pairs, alpha, beta = [], [], []
        for items in batches(val_items, sc.batch_size, drop_last=False):
            pairs.append((float(loss_of(val_b, items)), len(items)))
            if multimodal and model.gate_stats:
                a, b = model.gate_stats["alpha_present"], model.gate_stats["beta_present"]
                if not torch.isnan(a).all():
                    alpha.append((float(a.nanmean()), len(items)))
                if not torch.isnan(b).all():
                    beta.append((float(b.nanmean()), len(items)))
        out = {"val_loss": _weighted_mean(pairs)}
        if multimodal:
            out["val_alpha"] = _weighted_mean(alpha) if alpha else 0.0
            out["val_beta"] = _weighted_mean(beta) if beta else 0.0
        return out

    def save_best(path: Path, extra: dict) -> None:
        save_model(path, model, cfg, tok, hours, stage, {**extra, "fingerprint": fingerprints(cfg)[stage]})

    return _fit(cfg, stage, model, groups, steps_per_epoch=len(batches(corpus.train, sc.batch_size)),
                epoch_batches=epoch_batches, loss_fn=lambda items: loss_of(train_b, items), validate=validate,
                save_best=save_best, progress=progress, on_epoch_end=on_epoch_end)


def _groups(model: MultimodalSum, stage: str, sc: StepConfig, rule: str) -> list[dict]:
    """AdamW groups of the step's trainable set (``requires_grad`` set to exactly that set)."""
    model.set_trainable(STEP_CODES[stage])
    groups = model.param_groups(STEP_CODES[stage], sc.weight_decay, rule)
    return [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups]


def _start(cfg: MultimodalSumConfig, stage: str, upstream: str):
    sc = getattr(cfg, stage)
    apply_threads(cfg)
    set_seed(sc.init_seed)
    model, state, tok, hours = load_model(upstream)
    return model.to(distributed.device_for(select_device(sc.device))), state, tok, hours


def skipped(stage: str, upstream: dict, reason: str) -> dict:
    """The result of a stage that does not train in this configuration: the upstream weights pass through."""
    return {"stage": stage, "step": STEP_CODES[stage], "weights": upstream["weights"], "fingerprint": upstream["fingerprint"],
            "history": [], "epochs_run": 0, "stopped_by": f"skipped ({reason})", "skipped": True, "train_seconds": 0.0}


def train_text(cfg: MultimodalSumConfig, upstream: dict, progress: bool = True, on_epoch_end=()) -> dict:
    """Step 1: text pretraining on leave-one-out pseudo-summaries, from step 0's weights."""
    model, state, tok, hours = _start(cfg, "text", upstream["weights"])
    return _loo_step(cfg, "text", model, tok, hours, state, progress, on_epoch_end)


def train_multimodal(cfg: MultimodalSumConfig, text: dict, image: dict | None, table: dict | None,
                     progress: bool = True, on_epoch_end=()) -> dict:
    """Step 3: step 1's BART + rating vector, step 2a's image encoder, step 2b's table encoder; everything trains."""
    if cfg.modalities.text_only:
        return skipped("multimodal", text, "text-only: modalities.images and modalities.table are false")
    model, state, tok, hours = _start(cfg, "multimodal", text["weights"])
    for prefix, part in (("image_encoder.", image), ("table_encoder.", table)):
        if part is None or part.get("skipped"):
            continue
        other = torch.load(part["weights"], map_location="cpu", weights_only=True)["model"]
        own = model.state_dict()
        own.update({k: v for k, v in other.items() if k.startswith(prefix)})
        model.load_state_dict(own)
    return _loo_step(cfg, "multimodal", model, tok, hours, state, progress, on_epoch_end)


# ------------------------------------------------------------------------------------------------ steps 2a / 2b
def train_pivot(cfg: MultimodalSumConfig, stage: str, text: dict, progress: bool = True, on_epoch_end=()) -> dict:
    """Step 2a (``image``) / 2b (``table``): the encoder learns against the frozen step-1 decoder (delta = 0)."""
    if stage not in ("image", "table"):
        raise ValueError(f"stage must be 'image' or 'table', got {stage!r}")
    modality = "images" if stage == "image" else "table"
    if not getattr(cfg.modalities, modality):
        return skipped(stage, text, f"modalities.{modality} is false")
    sc = getattr(cfg, stage)
    model, state, tok, hours = _start(cfg, stage, text["weights"])
    device = next(model.parameters()).device
    corpus = load_corpus(cfg)
    has = (lambda e: e.has_photos) if stage == "image" else (lambda e: e.table is not None)
    train_ents, val_ents = [e for e in corpus.train if has(e)], [e for e in corpus.val if has(e)]
    for name, ents in (("training", train_ents), ("validation", val_ents)):
        if not ents:
            raise ValueError(f"modalities.{modality}: true, but no {name} entity has "
                             f"{'photos' if stage == 'image' else 'a table'} ({', '.join(cfg.data.folders)})")
    train_b, val_b = Batcher(cfg, tok, hours, train=True), Batcher(cfg, tok, hours, train=False)
    groups = _groups(model, stage, sc, cfg.model.param_rule)
    val_rows = pivot_rows(val_ents, sc.rows_per_entity, None, cfg.data.val_seed)
    n_rows = sum(min(sc.rows_per_entity, len(e.reviews)) for e in train_ents)

    def loss_of(batcher: Batcher, rows) -> torch.Tensor:
        pb = batcher.pivot(rows, stage).to(device)
        return model(images=pb.images, image_mask=pb.image_mask, table=pb.table, labels=pb.labels, delta=0.0,
                     label_smoothing=sc.label_smoothing, pad_in_loss=cfg.model.pad_in_loss).loss

    def epoch_batches(epoch: int) -> list[list]:
        rows = pivot_rows(train_ents, sc.rows_per_entity, np.random.RandomState(mixed_seed(sc.order_seed, epoch, 3)))
        return [_split(b, sc.grad_accum) for b in batches(rows, sc.batch_size)]

    def validate() -> dict[str, float]:
        return {"val_loss": _weighted_mean([(float(loss_of(val_b, rows)), len(rows))
                                            for rows in batches(val_rows, sc.batch_size, drop_last=False)])}

    def save_best(path: Path, extra: dict) -> None:
        save_model(path, model, cfg, tok, hours, stage, {**extra, "fingerprint": fingerprints(cfg)[stage]})

    return _fit(cfg, stage, model, groups, steps_per_epoch=len(batches(list(range(n_rows)), sc.batch_size)),
                epoch_batches=epoch_batches, loss_fn=lambda rows: loss_of(train_b, rows), validate=validate,
                save_best=save_best, progress=progress, on_epoch_end=on_epoch_end)


def train_all(cfg: MultimodalSumConfig, progress: bool = True) -> dict[str, dict]:
    """Every stage in order (what the flow does, without tracking): {stage: result}."""
    done = {"denoise": train_denoise(cfg, progress)}
    done["text"] = train_text(cfg, done["denoise"], progress)
    done["image"] = train_pivot(cfg, "image", done["text"], progress)
    done["table"] = train_pivot(cfg, "table", done["text"], progress)
    done["multimodal"] = train_multimodal(cfg, done["text"], done["image"], done["table"], progress)
    return done
