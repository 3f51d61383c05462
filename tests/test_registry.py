"""Champion/challenger alias rules, including concurrent promotions."""

from __future__ import annotations

import threading

import mlflow
import pytest
from mlflow import MlflowClient

from models.common.registry import promote


class Const(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def _versions(name: str, n: int) -> list[str]:
    out = []
    for i in range(n):
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(name="model", python_model=Const(), pip_requirements=["mlflow"])
        out.append(mlflow.register_model(info.model_uri, name).version)
    return out


def test_alias_rules(mlflow_store):
    c = MlflowClient()
    v1, v2, v3 = _versions("m", 3)
    r1 = promote("m", v1, "mae", 0.9, "min")
    assert r1["promoted"] and r1["champion_version"] is None
    r2 = promote("m", v2, "mae", 0.95, "min")  # worse: stays challenger
    assert not r2["promoted"] and r2["champion_value"] == pytest.approx(0.9)
    assert str(c.get_model_version_by_alias("m", "champion").version) == str(v1)
    assert str(c.get_model_version_by_alias("m", "challenger").version) == str(v2)
    r3 = promote("m", v3, "mae", 0.85, "min")  # better: champion
    assert r3["promoted"] and str(c.get_model_version_by_alias("m", "champion").version) == str(v3)
    assert c.get_model_version("m", v2).tags["validation_status"] == "challenger"
    assert c.get_model_version("m", v3).tags["gate_value"] == repr(0.85)


def test_concurrent_promotions_end_with_the_best_champion(mlflow_store):
    vs = _versions("race", 6)
    values = [0.80, 0.75, 0.90, 0.70, 0.95, 0.72]
    records = [None] * len(vs)
    barrier = threading.Barrier(len(vs))

    def go(i):
        barrier.wait()
        records[i] = promote("race", vs[i], "mae", values[i], "min")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(vs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    champ = MlflowClient().get_model_version_by_alias("race", "champion")
    assert str(champ.version) == str(vs[values.index(min(values))])
    # serialised decisions: each promotion beat the champion it saw, and that champion was the previous winner
    winners = sorted((r for r in records if r["promoted"]), key=lambda r: r["decided_at"])
    for prev, nxt in zip(winners, winners[1:]):
        assert nxt["champion_version"] == prev["candidate_version"] and nxt["candidate_value"] < prev["candidate_value"]


def test_max_mode_and_nan_never_promotes(mlflow_store):
    v1, v2 = _versions("acc", 2)
    assert promote("acc", v1, "acc", 0.5, "max")["promoted"]
    assert not promote("acc", v2, "acc", float("nan"), "max")["promoted"]


def test_scoped_aliases_gate_each_dataset_separately(mlflow_store):
    """A validation NDCG on Yelp is never compared with one on Beauty: scopes have their own aliases."""
    c = MlflowClient()
    v1, v2, v3 = _versions("seq", 3)
    assert promote("seq", v1, "ndcg", 0.05, "max", scope="beauty")["promoted"]
    r2 = promote("seq", v2, "ndcg", 0.02, "max", scope="yelp")  # lower, but the first on its dataset
    assert r2["promoted"] and r2["champion_alias"] == "champion_yelp" and r2["champion_version"] is None
    r3 = promote("seq", v3, "ndcg", 0.03, "max", scope="beauty")  # beats yelp's, not beauty's
    assert not r3["promoted"] and r3["champion_value"] == pytest.approx(0.05)
    assert str(c.get_model_version_by_alias("seq", "champion_beauty").version) == str(v1)
    assert str(c.get_model_version_by_alias("seq", "challenger_beauty").version) == str(v3)
    assert str(c.get_model_version_by_alias("seq", "champion_yelp").version) == str(v2)
    assert c.get_model_version("seq", v3).tags["validation_status"] == "challenger_beauty"
    with pytest.raises(ValueError, match="scope"):
        promote("seq", v3, "ndcg", 0.1, "max", scope="bad scope!")
