"""The model contract: what a model folder declares so that one generic flow (:mod:`flows.model`) can run it.

A model is its folder ``models/<name>/``: it exports one :class:`ModelSpec` (in ``models/<name>/pipeline.py``, as
``MODEL``) and the catalog (:mod:`models.catalog`) lists it in one line. The spec names

- its config class (a :class:`~data.config.StrictConfig` with the shared ``outputs`` and ``registry`` sections of
  :mod:`models.common.config`, and a ``train`` section on :class:`~models.common.config.TrainBase` or per-stage
  sections) and ``params.yaml`` section, its ``tiny`` preset
  (``models/<name>/tiny.py``: a small synthetic dataset and a config that trains on it in seconds) and its named
  variants (override presets, applied before ``--set``);
- the DVC data targets a scheduled run brings up to date first;
- its training stages, in order: each is a function ``train(cfg, run_id, done)`` that gets the frozen config, the
  MLflow run id and the results of the stages before it (``done[stage_name]``) and returns a small dict that holds
  at least ``weights`` (a path). A stage that depends on an earlier one (SGG on the detector, SFT on the pretrained
  LM) reads its weights from ``done`` and keys its checkpoints on its own config plus its upstream's;
- ``evaluate(cfg, run_id, done)``: scores the last stage's weights, writes the committed metrics and plots
  (``models/<name>/report.py``), returns an :class:`Evaluation` (the result and the registry gate's value);
- ``log_model(cfg, run_id, done)``: logs the pyfunc (with an input example) and returns its model URI;
- ``identity(cfg)``: the run's :class:`RunIdentity` (experiment, run name, DVC stage, registered model or none,
  alias scope, data paths for the tags).

Nothing in a model folder imports Prefect: the flow wraps the spec's functions in tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from data.config import StrictConfig, load_section
from models.common.config import OutputsConfig, RegistryConfig


def dvc_address(model: str, stage: str) -> str:
    """How DVC addresses ``stage`` of ``models/<model>/dvc.yaml`` from the repository root (``dvc repro <address>``)."""
    return f"models/{model}/dvc.yaml:{stage}"


@dataclass(frozen=True)
class Stage:
    """One training stage: ``train(cfg, run_id, done) -> {"weights": path, ...}`` (resumable from its checkpoints)."""

    name: str
    train: Callable[[Any, str, dict[str, dict]], dict]
    retries: int = 1  # a retry resumes from the newest checkpoint
    # True: ``train`` is data-parallel under torchrun (models.common.distributed) and the flow launches it on the
    # work pool's nproc_per_node x nnodes processes (flows/torchrun.py); False: always one process
    distributed: bool = False


@dataclass(frozen=True)
class RunIdentity:
    experiment: str
    run_name: str
    dvc_stage: str  # the DVC stage that runs this configuration, as dvc_address() gives it (tags, model card)
    registered_model: str | None  # None: tracked, not registered (ablations, baselines, pipeline checks)
    gate_metric: str
    gate_mode: str  # "max" | "min"
    scope: str | None = None  # alias scope: champion_<scope>; None = plain champion/challenger
    data_paths: tuple[str, ...] = ()  # their dvc.lock hashes become run tags
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    result: dict  # the flow's return value; without run ids and timings it is the committed metrics file
    gate_value: float
    registrable: bool = True  # False: this run may not be registered whatever the config says (e.g. a pipeline check)
    dvc_stage: str | None = None  # the DVC stage, where only the run could tell (else RunIdentity.dvc_stage)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # catalog key, CLI argument, params.yaml section, Prefect deployment name
    description: str
    config: type[StrictConfig]
    identity: Callable[[Any], RunIdentity]
    stages: tuple[Stage, ...]
    evaluate: Callable[[Any, str, dict[str, dict]], Evaluation]
    log_model: Callable[[Any, str, dict[str, dict]], str]
    # tests and the contract test: tiny(root) writes a small synthetic dataset under root and returns the params
    # section (plain JSON types) of a small model that trains on it in seconds
    tiny: Callable[[Path], dict] | None = None
    variants: Mapping[str, dict] = field(default_factory=dict)
    data_targets: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()  # DVC targets (or a function of the config)
    example: str = "--set train.epochs=1"  # a --set example for the command line's help

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"model {self.name}: stages must be non-empty with distinct names, got {names}")
        if self.tiny is None:
            raise TypeError(f"model {self.name}: no tiny preset (tests and the contract test train it)")
        for section, kind in (("outputs", OutputsConfig), ("registry", RegistryConfig)):
            field_ = self.config.model_fields.get(section)
            if field_ is None or not (isinstance(field_.annotation, type) and issubclass(field_.annotation, kind)):
                raise TypeError(f"model {self.name}: {self.config.__name__} needs a {section!r} section of type "
                                f"{kind.__name__} (models/common/config.py: the config shape every model shares)")

    @property
    def section(self) -> str:
        return self.name

    def load_config(self, params_path: str = "params.yaml", overrides: dict | None = None):
        """The validated, frozen config: ``params.yaml`` section + ``overrides`` (read once per run)."""
        return load_section(self.config, self.section, params_path, overrides)

    @classmethod
    def of(cls, module: str, **fields) -> "ModelSpec":
        """The spec of the pipeline module ``module`` (pass ``__name__``): its functions ``identity``, ``evaluate``,
        ``log_model`` and ``tiny`` fill the fields of the same names that ``fields`` does not give."""
        import sys

        namespace = vars(sys.modules[module])
        for name in ("identity", "evaluate", "log_model", "tiny"):
            if name not in fields and name in namespace:
                fields[name] = namespace[name]
        return cls(**fields)

    def variant(self, name: str | None) -> dict:
        """The overrides of the named variant (``{}`` for None)."""
        if name is None:
            return {}
        if name not in self.variants:
            raise ValueError(f"variant: {name!r} is not a variant of {self.name}; expected one of {sorted(self.variants)}")
        return dict(self.variants[name])

    def data_targets_for(self, cfg) -> list[str]:
        return list(self.data_targets(cfg) if callable(self.data_targets) else self.data_targets)

    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]
