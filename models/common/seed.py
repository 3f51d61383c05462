"""One seeding function for every model (python, numpy, torch, CUDA and cuDNN flags)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def set_seed(seed: int, deterministic: bool = True) -> int:
    """Seed every RNG the project uses; with ``deterministic`` also force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    return seed


def generator(*seeds: int) -> torch.Generator:
    """A torch CPU generator seeded from a tuple of ints (e.g. (order_seed, epoch)), independent of global state."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence(list(seeds)).generate_state(1, dtype=np.uint64)[0] % 2**63))
    return g


def select_device(spec: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; anything else is passed to torch.device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)
