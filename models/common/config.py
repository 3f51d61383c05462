"""The config shape every model shares: training settings, outputs and registry, and the one fingerprint function.

Each model's section of ``params.yaml`` has the same three shared subsections:

- ``train`` (a subclass of :class:`TrainBase`): the model's own hyper-parameters plus the seeds, the device and the
  checkpoint settings every recipe has (EGTR's two stages are :class:`~models.egtr.config.StageConfig` sections);
- ``outputs`` (:class:`OutputsConfig`): where the committed metrics (``<metrics_dir>/<run>.json``) and plots
  (``<plots_dir>/<run>/``) go;
- ``registry`` (:class:`RegistryConfig`): the registered model name (``null`` = tracked, not registered: ablations,
  baselines), the MLflow experiment, the gate metric and its mode.

The checkpoint key of a configuration is :func:`fingerprint` of the sections that change the trained weights; a
config class lists its fields that do not (paths, device, resume) in ``not_in_fingerprint`` (and, where it depends
on the instance, returns them from ``unused_fields()``), and :func:`result_fields` leaves them out.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, ClassVar, Literal

from pydantic import Field

from data.config import Device, StrictConfig


class TrainBase(StrictConfig):
    """Settings of every recipe's training loop; ``checkpoint_dir`` holds one sub-folder per config fingerprint."""

    init_seed: int = 0  # parameter initialisation
    order_seed: int = 0  # per-epoch example order
    device: Device = "auto"  # auto = CUDA when present, else CPU
    checkpoint_dir: str = Field(min_length=1)
    resume: bool = True  # resume from the newest checkpoint of the same config

    not_in_fingerprint: ClassVar[frozenset[str]] = frozenset({"device", "checkpoint_dir", "resume"})


class OutputsConfig(StrictConfig):
    metrics_dir: str = Field(min_length=1)  # <metrics_dir>/<run>.json (DVC metrics, committed)
    plots_dir: str = Field(min_length=1)  # <plots_dir>/<run>/ curves and figures (DVC plots, committed)


class RegistryConfig(StrictConfig):
    model_name: str | None = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # None = tracked, not registered
    experiment: str = Field(min_length=1)  # MLflow experiment (per-dataset models append "-<dataset>")
    gate_metric: str = Field(min_length=1, pattern=r"^[^@]+$")  # compared with the champion's
    gate_mode: Literal["min", "max"]  # min = lower is better


def check_gate_metric(registry: RegistryConfig, pattern: str, ks: list[int], expected: str) -> None:
    """Raise (naming ``registry.gate_metric``) unless the gate metric matches ``pattern`` with a cut-off ``(?P<k>..)``
    the run computes (one of ``ks``); ``expected`` says what would be valid (e.g. ``val_R_at_K``)."""
    m = re.fullmatch(pattern, registry.gate_metric)
    if not m or int(m.group("k")) not in ks:
        raise ValueError(f"registry.gate_metric: {registry.gate_metric!r} is not a validation metric of this run; "
                         f"expected {expected} with K in eval.ks {list(ks)}")


def result_fields(section: Any) -> Any:
    """``section`` as plain values, recursively, without the fields that do not change the result: those its class
    declares in ``not_in_fingerprint`` and those its ``unused_fields()`` names for this instance (e.g. the sub-section
    of a model the config does not select)."""
    if isinstance(section, StrictConfig):
        skip = getattr(type(section), "not_in_fingerprint", frozenset())
        unused = getattr(section, "unused_fields", None)
        skip = skip | (unused() if unused else frozenset())
        return {name: result_fields(getattr(section, name)) for name in type(section).model_fields if name not in skip}
    if isinstance(section, (list, tuple)):
        return [result_fields(v) for v in section]
    if isinstance(section, dict):
        return {k: result_fields(v) for k, v in section.items()}
    return section


def fingerprint(payload: dict[str, Any]) -> str:
    """16 hex digits of SHA-256 over ``payload`` (config sections given as :class:`StrictConfig` objects or values):
    the key of a configuration's checkpoints, so a rerun of the same config resumes and a changed one starts fresh."""
    blob = json.dumps({k: result_fields(v) for k, v in payload.items()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
