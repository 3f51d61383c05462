"""Wide&Deep and PPR baselines on the tiny MeLU data: they train and fit their training ratings."""

from __future__ import annotations

import numpy as np
import pytest

from models.melu.baselines import PPR, fit_baseline, predict_baseline
from models.melu.config import BaselineConfig
from models.melu.data import build_episodes, load_tables


@pytest.mark.parametrize("kind,lr", [("wide_deep", 1e-2), ("ppr", 5e-2)])
def test_baseline_fits_the_warm_ratings_better_than_their_mean(tiny_melu, tiny_cfg, kind, lr):
    tables = load_tables(tiny_melu[1])
    warm = build_episodes(tables, "warm_state", seed=0)
    cfg = BaselineConfig(epochs=30, lr=lr, batch_size=64, l2=1e-5)
    model = fit_baseline(kind, tables, warm, [], cfg, tiny_cfg.model, progress=False)
    pred = predict_baseline(model, tables, warm).numpy()
    y = warm.query_y.numpy()  # the warm query sets are training ratings of the baselines
    assert np.abs(pred - y).mean() < 0.8 * np.abs(y.mean() - y).mean()


def test_ppr_is_bilinear_over_active_feature_pairs(tiny_melu):
    import torch

    tables = load_tables(tiny_melu[1])
    model = PPR(tables)
    ids, offsets = model.pair_ids(torch.tensor([0]), torch.tensor([0]))
    fi = model.features
    assert len(ids) == len(fi.user_feats[0]) * len(fi.item_feats[0])  # every (user, item) feature pair, constants included
    with torch.no_grad():
        model.W.weight[ids] = 1.0
    assert model(tables, torch.tensor([0]), torch.tensor([0])).item() == pytest.approx(len(ids))
