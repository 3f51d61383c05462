"""Checkpoints and the shared epoch loop: atomic writes, resume, non-finite loss guard.

A checkpoint is one ``torch.save`` file per epoch (model + optimizer + epoch + history + config
fingerprint + seed), written to a temporary file and renamed, so a kill never leaves a truncated
checkpoint. :func:`run_epochs` resumes from the newest checkpoint in its directory. The data order of an
epoch is derived from (seed, epoch) by the models; the global generators that dropout and other sampling draw
from (torch CPU and CUDA, NumPy, Python ``random``) are saved in every checkpoint and restored on resume, so a
resumed run ends with exactly the metrics of an uninterrupted one.
"""

from __future__ import annotations

import math
import random
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm import tqdm

from data.atomic import atomic_file
from models.common import distributed

_CKPT_RE = re.compile(r"^epoch-(\d+)\.pt$")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left untouched."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint directory holds a run with a different configuration."""


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    # through the file object, not the path: torch.save names the zip's inner folder after a path it is given,
    # and the temporary name is random, so the same tensors would give different bytes (and DVC hashes)
    with atomic_file(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def rng_state() -> dict:
    """The global random generators' state, in types ``torch.load(weights_only=True)`` reads back."""
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    import numpy as np

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def save_checkpoint(ckpt_dir: str | Path, epoch: int, state: dict, keep_last: int = 2) -> Path:
    path = atomic_torch_save(state, Path(ckpt_dir) / f"epoch-{epoch:04d}.pt")
    for _, old in list_checkpoints(ckpt_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def check_finite(loss: torch.Tensor | float, *, epoch: int, step: int, ckpt_dir: str | Path) -> None:
    value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        last = latest_checkpoint(ckpt_dir)
        where = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
        raise NonFiniteLossError(f"non-finite loss {value} at epoch {epoch + 1}, step {step}; training stopped ({where})")


def run_epochs(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    ckpt_dir: str | Path,
    fingerprint: str,
    seed: int,
    train_epoch: Callable[[int], dict[str, float]],
    on_epoch_end: Iterable[Callable[[int, dict[str, float]], None]] = (),
    should_stop: Callable[[list[dict[str, float]]], bool] | None = None,
    resume: bool = True,
    keep_last: int = 2,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Run ``train_epoch(epoch)`` for the remaining epochs, checkpointing after each one.

    ``should_stop(history)`` (e.g. early stopping) is checked after every checkpoint, also right after a
    resume, so a resumed run stops where an uninterrupted one would.
    Returns the per-epoch metric history (including epochs restored from a checkpoint).

    Under ``torchrun`` (:mod:`models.common.distributed`) every rank runs the loop; ``train_epoch`` must return the
    same (all-reduced) metrics on every rank, so all stop together; rank 0 alone writes the checkpoints and calls
    ``on_epoch_end`` (MLflow), and every rank waits for the checkpoint before the next epoch.

    Raises:
        CheckpointMismatchError: the newest checkpoint in ``ckpt_dir`` was written with another config.
        NonFiniteLossError: raised by ``train_epoch`` (via :func:`check_finite`); no checkpoint is written.
    """
    d = distributed.current()
    start, history = 0, []
    last = latest_checkpoint(ckpt_dir) if resume else None
    if last is not None:
        state = load_checkpoint(last)
        if state["fingerprint"] != fingerprint:
            raise CheckpointMismatchError(
                f"{last} was written by a run with config fingerprint {state['fingerprint']}, "
                f"this run has {fingerprint}; use another checkpoint directory or delete it"
            )
        if state["seed"] != seed:
            warnings.warn(f"resuming from {last} saved with seed {state['seed']}, this run has seed {seed}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "rng" in state:
            set_rng_state(state["rng"])
        else:
            warnings.warn(f"{last} holds no random-generator state (written before it was saved): the resumed "
                          "epochs draw dropout from another stream than an uninterrupted run would")
        start, history = int(state["epoch"]), list(state["history"])
        if d.main:
            print(f"resuming from {last}: {start} of {epochs} epochs done", file=sys.stderr, flush=True)
    if should_stop is not None and history and should_stop(history):
        return history
    bar = tqdm(range(start, epochs), desc="epochs", initial=start, total=epochs, disable=not (progress and d.main))
    for epoch in bar:
        metrics = {k: float(v) for k, v in train_epoch(epoch).items()}
        history.append(metrics)
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "history": history,
            "fingerprint": fingerprint,
            "seed": seed,
            "rng": rng_state(),  # after the epoch: the state the next epoch starts from
        }
        if d.main:  # under torchrun rank 0 writes, then every rank waits for the file
            save_checkpoint(ckpt_dir, epoch + 1, state, keep_last=keep_last)
            for cb in on_epoch_end:
                cb(epoch, metrics)
        distributed.barrier(d)
        bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()})
        if should_stop is not None and should_stop(history):
            break
    return history
