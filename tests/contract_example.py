"""A model written to the contract, for tests only (it is NOT in models/catalog.py): least-squares regression on a
synthetic line, as if it were ``models/line/pipeline.py``. tests/test_contract.py adds it to the catalog (one line)
and runs it through the generic flow, to show what a new model needs outside its own folder."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from pydantic import Field

from data.config import StrictConfig
from models.common import tracking
from models.common.checkpoint import atomic_torch_save, run_epochs
from models.common.contract import Evaluation, ModelSpec, RunIdentity, Stage
from models.common.config import OutputsConfig, RegistryConfig, TrainBase, fingerprint
from models.common.stopping import StopRule


class LineTrain(TrainBase):
    epochs: int = Field(30, ge=1)
    lr: float = Field(0.1, gt=0)
    patience: int = Field(5, ge=1)
    checkpoint_dir: str = "checkpoints/line"


class LineConfig(StrictConfig):
    data_path: str = "data/line.json"
    train: LineTrain = LineTrain()
    outputs: OutputsConfig = OutputsConfig(metrics_dir="metrics", plots_dir="plots")
    registry: RegistryConfig = RegistryConfig(model_name="line", experiment="line", gate_metric="mse", gate_mode="min")


def _xy(cfg: LineConfig) -> tuple[torch.Tensor, torch.Tensor]:
    d = json.loads(Path(cfg.data_path).read_text())
    return torch.tensor(d["x"]), torch.tensor(d["y"])


def train(cfg: LineConfig, run_id: str, done: dict) -> dict:
    x, y = _xy(cfg)
    torch.manual_seed(cfg.train.init_seed)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)

    def epoch(e: int) -> dict:
        loss = torch.nn.functional.mse_loss(model(x[:, None])[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"train_mse": float(loss)}

    history = run_epochs(model=model, optimizer=opt, epochs=cfg.train.epochs, ckpt_dir=cfg.train.checkpoint_dir,
                         fingerprint=fingerprint({"train": cfg.train}), seed=cfg.train.order_seed, train_epoch=epoch, on_epoch_end=[tracking.EpochLogger(run_id)],
                         should_stop=StopRule("train_mse", "min", cfg.train.patience, cfg.train.epochs), progress=False)
    weights = atomic_torch_save(model.state_dict(), Path("outputs/line") / run_id / "model.pt")
    return {"weights": str(weights), "epochs": len(history)}


def evaluate(cfg: LineConfig, run_id: str, done: dict) -> Evaluation:
    x, y = _xy(cfg)
    model = torch.nn.Linear(1, 1)
    model.load_state_dict(torch.load(done["train"]["weights"], weights_only=True))
    mse = float(torch.nn.functional.mse_loss(model(x[:, None])[:, 0], y).detach())
    result = {"run_id": run_id, "mse": mse, "epochs": done["train"]["epochs"]}
    tracking.write_metrics(Path(cfg.outputs.metrics_dir) / "line.json", result, run_id)
    return Evaluation(result, mse)


class LinePyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.state = torch.load(context.artifacts["weights"], weights_only=True)

    def predict(self, context, model_input, params=None):
        w, b = float(self.state["weight"][0, 0]), float(self.state["bias"][0])
        return pd.DataFrame({"y": [w * float(v) + b for v in model_input["x"]]})


def log_model(cfg: LineConfig, run_id: str, done: dict) -> str:
    return tracking.log_pyfunc(run_id, LinePyfunc(), {"weights": done["train"]["weights"]}, pd.DataFrame({"x": [0.5, 2.0]}))


def tiny(root: Path) -> dict:
    x = np.linspace(-1, 1, 32)
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / "line.json").write_text(json.dumps({"x": x.tolist(), "y": (3 * x + 1).tolist()}))
    return LineConfig.model_validate({"data_path": str(Path(root) / "line.json"), "outputs": {"metrics_dir": str(root), "plots_dir": str(root)},
                                      "train": {"epochs": 30, "checkpoint_dir": str(Path(root) / "ckpt")}}).model_dump(mode="json")


def identity(cfg: LineConfig) -> RunIdentity:
    r = cfg.registry
    return RunIdentity(experiment=r.experiment, run_name="line", dvc_stage="train_line", registered_model=r.model_name,
                       gate_metric=r.gate_metric, gate_mode=r.gate_mode)


MODEL = ModelSpec.of(__name__, name="line", description="least squares on a line (contract example)", config=LineConfig,
                     stages=(Stage("train", train),))
