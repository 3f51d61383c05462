"""EGTR training and evaluation recipes: stage 0 (detector pretraining) and stage 1 (SGG), then SGDet evaluation.

Both stages use the shared epoch loop (:func:`models.common.checkpoint.run_epochs`): one checkpoint per epoch,
resume from the newest, early stopping on validation loss (patience), the best weights by validation loss
kept. Each stage is two fits, as the official ``train_egtr.py`` / ``pretrain_detr.py``: the main fit, ``epochs`` at the
base rates with early stopping (``patience``), then -- always -- fine-tuning: the main fit's best weights, a fresh
AdamW at 0.1x every rate, at most ``finetune_epochs`` epochs with its own early stopping; the fine-tuning fit's best
weights are the stage's result (``best.pt``; the main fit's are in ``best_main.pt``, which is the result when
``finetune_epochs`` is 0). Gradient clipping at ``grad_clip`` (max norm), gradient accumulation ``grad_accum``.
Stopping is the shared :class:`models.common.stopping.StopRule` (validation loss, ``patience``, at most the fit's
epochs), and each fit reports what stopped it. A budget of training time (``time_budget_s`` > 0, summed epoch
times, so a resumed run stops where an uninterrupted one would; shared by the two fits in proportion to their
epochs) is an exploration option only: the epochs it allows depend on the machine, so the run is marked not
reproducible.

Checkpoint files carry their type: ``kind: "detector"`` (stage 0) or ``kind: "egtr"`` (stage 1). Loading an EGTR
model from a detector file (or the reverse) fails with a message that says which is which (naver-ai/egtr #5).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.common import distributed
from models.common.checkpoint import atomic_torch_save, check_finite, latest_checkpoint, run_epochs
from models.common.config import fingerprint as config_fingerprint
from models.common.seed import select_device, set_seed
from models.common.stopping import StopRule
from models.egtr.config import EgtrConfig, StageConfig
from models.egtr.data import SceneGraphDataset, collate, fg_matrix
from models.egtr.losses import HungarianMatcher, total_loss
from models.egtr.modeling import EGTR, param_groups


class CheckpointKindError(ValueError):
    """A checkpoint of the wrong type (detector vs EGTR) was given."""


def fingerprint(cfg: EgtrConfig, stage: str) -> str:
    """The checkpoint key of ``stage``: its own settings plus, for ``sgg``, its upstream's (the pretrained detector's
    path, or stage 0's settings), so SGG reuses stage 0 and a changed relation head leaves stage 0 alone."""
    keep = {"seed": cfg.seed, "data_dir": cfg.data_dir, "detector": cfg.detector, "loss": cfg.loss,
            "stage": getattr(cfg, stage), "augment": cfg.augment, "kind": stage}
    if stage == "sgg":  # the relation settings and the detector it starts from are part of its identity (not stage 0's)
        keep["relation"] = cfg.relation
        keep["init"] = cfg.pretrained or cfg.pretrain
    return config_fingerprint(keep)


def label_space(data_dir: str | Path) -> tuple[list[str], list[str]]:
    from data.sgg_schema import load_split

    sg = load_split(data_dir, "train")
    return list(sg.categories), list(sg.predicates)


def save_model(path: str | Path, model: EGTR, cfg: EgtrConfig, kind: str, categories: list[str], predicates: list[str],
               extra: dict | None = None) -> Path:
    state = {"kind": kind, "model": model.state_dict(), "detector_cfg": cfg.detector.model_dump(),
             "freq_bias": cfg.relation.freq_bias, "rel_init": cfg.relation.init, "categories": categories, "predicates": predicates,
             "eval_size": cfg.augment.eval_size, "eval_max_size": cfg.augment.eval_max_size, "obj_score": cfg.eval.obj_score,
             **(extra or {})}
    return atomic_torch_save(state, path)


def load_model(path: str | Path, kind: str = "egtr", map_location: str = "cpu") -> tuple[EGTR, dict]:
    """Load a saved model of type ``kind``; the label names travel with the weights."""
    from models.egtr.config import DetectorConfig

    state = torch.load(path, map_location=map_location, weights_only=True)
    found = state.get("kind")
    if found != kind:
        what = {"detector": "a stage-0 detector checkpoint (no relation head)", "egtr": "an EGTR (stage-1) checkpoint"}
        raise CheckpointKindError(f"{path}: expected {what.get(kind, kind)}, found {what.get(found, repr(found))}")
    det_cfg = DetectorConfig(**state["detector_cfg"])
    n_pred = len(state["predicates"]) if kind == "egtr" else 0
    model = EGTR(det_cfg, len(state["categories"]), n_pred, freq_bias=state.get("freq_bias", "log_counts"),
                 rel_init=state.get("rel_init", "official"))
    model.load_state_dict(state["model"])
    return model, state


def uses_random_crop(cfg: EgtrConfig, stage: str) -> bool:
    """The DETR random crop: stage 0 only (a crop cuts relations), and only with ``augment.random_crop``."""
    return stage == "pretrain" and cfg.augment.random_crop


def _dataset(cfg: EgtrConfig, split: str, train: bool, crop: bool) -> SceneGraphDataset:
    return SceneGraphDataset(cfg.data_dir, split, cfg.augment, train=train, crop=crop, seed=cfg.seed)


def _batches(ds: SceneGraphDataset, batch_size: int, order: list[int], num_workers: int):
    """The batches of ``order``; under torchrun this rank's share of each (a final batch smaller than the number of
    processes is left out there, so that every rank has a part of every batch)."""
    d = distributed.current()
    if d.world == 1:
        subset = torch.utils.data.Subset(ds, order)
        return DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)
    parts = [list(distributed.shard(b, d)) for b in _global_batches(order, batch_size, d.world)]
    return DataLoader(ds, batch_sampler=parts, collate_fn=collate, num_workers=num_workers)


def _global_batches(order: list[int], batch_size: int, world: int) -> list[list[int]]:
    """The global batches of ``order`` that every one of ``world`` processes gets a part of."""
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size) if len(order[i:i + batch_size]) >= world]


def _reduce_count(d: distributed.Dist):
    """The loss normaliser under DDP: a count of this rank -> global count / world (None for one process)."""
    if d.world == 1:
        return None
    return lambda local: distributed.global_sum(local, d) / d.world


def _to(targets: list[dict], device) -> list[dict]:
    return [{**t, "labels": distributed.to_device(t["labels"], device), "boxes": distributed.to_device(t["boxes"], device)}
            for t in targets]


@torch.no_grad()
def validation_loss(model: EGTR, ds: SceneGraphDataset, cfg: EgtrConfig, stage_cfg: StageConfig, device) -> dict:
    """Mean loss on the validation split (no relation sampling: the mean over all N x N x P entries)."""
    model.eval()
    matcher = HungarianMatcher(cfg.loss)
    totals, n = {}, 0
    # under torchrun each rank scores a share of the whole batches (each batch's loss as one process has it)
    starts = distributed.shard(range(0, len(ds), stage_cfg.batch_size))
    batches = [list(range(i, min(i + stage_cfg.batch_size, len(ds)))) for i in starts]
    for pixel_values, pixel_mask, targets in DataLoader(ds, batch_sampler=batches, collate_fn=collate):
        out = model(pixel_values.to(device), pixel_mask.to(device))
        _, logs = total_loss(out, _to(targets, device), matcher, cfg.loss, aux_loss=stage_cfg.aux_loss, sample=False)
        for k, v in logs.items():
            totals[k] = totals.get(k, 0.0) + v * len(targets)
        n += len(targets)
    totals = distributed.sum_dict({**totals, "__n": n})
    n = totals.pop("__n")
    return {f"val_{k}": v / max(n, 1) for k, v in totals.items()}


def stage_dir(cfg: EgtrConfig, stage: str) -> Path:
    """``<out_dir>/<stage>-<config fingerprint>``: a rerun of the same config resumes, a changed one starts fresh."""
    return Path(cfg.out_dir) / f"{stage}-{fingerprint(cfg, stage)}"


def train_stage(cfg: EgtrConfig, stage: str, init_from: str | Path | None = None,
                progress: bool = True, on_epoch_end=()) -> dict:
    """Train stage ``pretrain`` (detector) or ``sgg`` (EGTR from a detector checkpoint ``init_from``).

    Returns ``{"weights": best.pt, "history": [...], "epochs_run", "stopped_by", "seconds"}``.

    Under torchrun (:mod:`models.common.distributed`) each batch of ``batch_size`` images is split over the ranks
    and every loss normaliser is global (:func:`models.egtr.losses.total_loss` ``reduce``), so W processes make the
    update of one: exactly so when the images of a batch have one size and with the default top-k relation sampling.
    Each process pads its images to the largest of its own part, as the official multi-GPU DETR training does, so
    with mixed sizes (multi-scale, random crop) the padded borders, hence the features, differ slightly from one
    process's; the random non-matching sampling of Open Images draws per process. Rank 0 writes the checkpoints and
    best weights.
    """
    d = distributed.current()
    if stage not in ("pretrain", "sgg"):
        raise ValueError(f"stage must be 'pretrain' or 'sgg' (got {stage!r})")
    sc: StageConfig = getattr(cfg, stage)
    set_seed(cfg.seed)
    device = distributed.device_for(select_device(cfg.device))
    categories, predicates = label_space(cfg.data_dir)
    if stage == "pretrain":
        model = EGTR(cfg.detector, len(categories), 0)
        new_keys = None
    else:
        fg = fg_matrix(cfg.data_dir, len(categories), len(predicates))
        model = EGTR(cfg.detector, len(categories), len(predicates), fg_matrix=fg, freq_bias=cfg.relation.freq_bias,
                     rel_init=cfg.relation.init)
        new_keys = {n for n, _ in model.named_parameters()}
        if init_from is not None:
            det, det_state = load_model(init_from, kind="detector")
            if det_state["categories"] != categories:
                raise ValueError(f"{init_from}: detector trained on categories {det_state['categories'][:5]}..., "
                                 f"dataset {cfg.data_dir} has {categories[:5]}...")
            missing, unexpected = model.load_state_dict(det.state_dict(), strict=False)
            if unexpected:
                raise ValueError(f"{init_from}: unexpected keys {unexpected[:5]}")
            new_keys = set(missing) & new_keys
    model.to(device)
    net = distributed.wrap(model, d, find_unused_parameters=True)  # the model itself for one process
    reduce = _reduce_count(d)
    train_ds = _dataset(cfg, "train", True, crop=uses_random_crop(cfg, stage))  # no random crop in the SGG stage
    val_ds = _dataset(cfg, "val", False, crop=False)
    matcher = HungarianMatcher(cfg.loss)
    run_dir = stage_dir(cfg, stage)
    kind = "detector" if stage == "pretrain" else "egtr"
    fp = fingerprint(cfg, stage)
    total = sc.epochs + sc.finetune_epochs
    # the training-time budget (summed epoch times) is shared in proportion to the epochs of the two fits
    main_budget = sc.time_budget_s * sc.epochs / total if sc.time_budget_s and total else 0.0

    def make_optimizer(factor: float) -> torch.optim.AdamW:
        groups = param_groups(model, stage, sc.lr * factor, sc.lr_detector * factor, sc.lr_backbone * factor,
                              sc.weight_decay, new_keys)
        return torch.optim.AdamW(groups, lr=sc.lr * factor, weight_decay=sc.weight_decay)

    def run_phase(phase: str, epochs: int, factor: float, best_path: Path, epoch_offset: int,
                  budget_s: float, spent_s: float) -> tuple[list[dict], str]:
        """One fit: ``epochs`` at ``factor`` x the base rates, its own checkpoints, best weights and early stopping."""
        optimizer = make_optimizer(factor)
        ckpt_dir = run_dir / ("checkpoints" if phase == "main" else "finetune_checkpoints")
        state = {"best": math.inf}
        if best_path.exists():
            if latest_checkpoint(ckpt_dir) is None:
                distributed.barrier(d)  # every rank has looked before rank 0 deletes
                if d.main:
                    best_path.unlink()  # a fresh run: never keep the best weights of an older one
            else:
                state["best"] = float(torch.load(best_path, map_location="cpu", weights_only=True).get("val_loss", math.inf))

        def train_epoch(epoch: int) -> dict[str, float]:
            t0 = time.monotonic()
            model.train()
            global_epoch = epoch_offset + epoch
            train_ds.set_epoch(global_epoch)
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + global_epoch)
            order = torch.randperm(len(train_ds), generator=gen).tolist()
            sums, seen, n = {}, {}, 0
            optimizer.zero_grad(set_to_none=True)
            batches = _batches(train_ds, sc.batch_size, order, sc.num_workers)
            global_sizes = [len(b) for b in _global_batches(order, sc.batch_size, d.world)]
            bar = tqdm(batches, desc=f"{stage} {phase} epoch {epoch + 1}", leave=False, disable=not progress)
            for step, (pixel_values, pixel_mask, targets) in enumerate(bar):
                syncs = (step + 1) % sc.grad_accum == 0 or step + 1 == len(batches)
                with distributed.no_sync(net, syncs):
                    out = net(distributed.to_device(pixel_values, device), distributed.to_device(pixel_mask, device))
                    loss, logs = total_loss(out, _to(targets, device), matcher, cfg.loss, aux_loss=sc.aux_loss,
                                            generator=gen, reduce=reduce)
                    check_finite(loss, epoch=global_epoch, step=step, ckpt_dir=ckpt_dir)
                    (loss / sc.grad_accum).backward()
                if syncs:
                    if sc.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), sc.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                # under DDP a rank's loss is its share of the global batch's mean: rank values x (batch / world)
                # sum over the ranks to the batch mean x batch, as one process's value x len(targets)
                weight = len(targets) if d.world == 1 else global_sizes[step] / d.world
                for k, v in logs.items():
                    if not (isinstance(v, float) and math.isnan(v)):
                        sums[k] = sums.get(k, 0.0) + v * weight
                        seen[k] = seen.get(k, 0) + 1
                n += len(targets)
                bar.set_postfix(loss=f"{logs['loss']:.3f}")
            if d.world > 1:
                # a value NaN in every batch of every rank is left out, as one process leaves it out
                sums, seen = distributed.sum_dict(sums, d), distributed.sum_dict(seen, d)
                sums = {k: v for k, v in sums.items() if seen.get(k)}
                n = int(distributed.global_sum(n, d))
            metrics = {f"train_{k}": v / max(n, 1) for k, v in sums.items()}
            metrics.update(validation_loss(model, val_ds, cfg, sc, device))
            metrics["lr_factor"] = factor
            metrics["epoch_s"] = time.monotonic() - t0
            if metrics["val_loss"] < state["best"]:
                state["best"] = metrics["val_loss"]
                if d.main:  # the other ranks read it after run_epochs' barrier
                    save_model(best_path, model, cfg, kind, categories, predicates,
                               {"epoch": global_epoch + 1, "phase": phase, "val_loss": state["best"]})
            return metrics

        # training time only (sum of epoch times), so a resumed run stops where an uninterrupted one would
        rule = StopRule("val_loss", "min", sc.patience, epochs, budget_s, time_keys=("epoch_s",))

        def should_stop(history: list[dict[str, float]]) -> bool:
            return rule.reason(history, spent_s) is not None

        callbacks = [lambda e, m, cb=cb: cb(epoch_offset + e, m) for cb in on_epoch_end]
        history = run_epochs(model=model, optimizer=optimizer, epochs=epochs, ckpt_dir=ckpt_dir,
                             fingerprint=f"{fp}-{phase}", seed=cfg.seed, train_epoch=train_epoch,
                             on_epoch_end=callbacks, should_stop=should_stop, progress=progress)
        if history and not best_path.exists() and d.main:  # resumed after the last epoch: from the final weights
            save_model(best_path, model, cfg, kind, categories, predicates,
                       {"epoch": epoch_offset + len(history), "phase": phase})
        distributed.barrier(d)
        return history, (rule.reason(history, spent_s) or "interrupted") if history else "no epochs"

    start = time.monotonic()
    main_best = run_dir / "best_main.pt"
    history, stopped_by = run_phase("main", sc.epochs, 1.0, main_best, 0, main_budget, 0.0)
    best_path = run_dir / "best.pt"
    if sc.finetune_epochs > 0:
        # official: fine-tuning always runs, from the main phase's best weights, with a fresh AdamW at 0.1x every
        # rate and its own early stopping; its best checkpoint is the result
        if main_best.exists():
            model.load_state_dict(torch.load(main_best, map_location="cpu", weights_only=True)["model"])
        spent = sum(h["epoch_s"] for h in history)
        ft_history, ft_stopped = run_phase("finetune", sc.finetune_epochs, 0.1, best_path, len(history),
                                           sc.time_budget_s, spent)
        history, stopped_by = history + ft_history, f"main: {stopped_by}; finetune: {ft_stopped}"
    else:
        best_path = main_best
    return {"weights": str(best_path), "history": history, "epochs_run": len(history),
            "stopped_by": stopped_by, "seconds": time.monotonic() - start}
