import math

import pytest
import torch

from recsys_metric.losses import (
    CenterLoss,
    ContrastiveLoss,
    CovarianceLoss,
    TripletLoss,
    rank_weight,
)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def test_triplet_loss_matches_python_loop(gen):
    d_pos, d_neg = torch.rand(50, generator=gen) * 2, torch.rand(50, generator=gen) * 2
    viol = torch.randint(0, 11, (50,), generator=gen)
    n_items, U, m = 1000, 10, 0.5
    want_plain = sum(max(0.0, m + p - n) for p, n in zip(d_pos.tolist(), d_neg.tolist(),
                                                        strict=True)) / 50
    want_warp = sum(math.log(1 + math.floor(n_items * v / U)) * max(0.0, m + p - n)
                    for p, n, v in zip(d_pos.tolist(), d_neg.tolist(), viol.tolist(),
                                       strict=True)) / 50
    assert TripletLoss(m)(d_pos, d_neg).item() == pytest.approx(want_plain, rel=1e-5)
    assert TripletLoss(m, n_items)(d_pos, d_neg, viol, U).item() == pytest.approx(want_warp,
                                                                                   rel=1e-5)


def test_rank_weight_known_values():
    w = rank_weight(torch.tensor([0, 1, 10]), 10, 100)
    assert w.tolist() == pytest.approx([0.0, math.log(11), math.log(101)])


def test_contrastive_loss_matches_python_loop(gen):
    d = torch.rand(40, generator=gen) * 2
    y = torch.randint(0, 2, (40,), generator=gen)
    want = sum(di if yi else max(0.0, 1.5 - di) for di, yi in zip(d.tolist(), y.tolist(),
                                                                  strict=True)) / 40
    assert ContrastiveLoss(1.5)(d, y).item() == pytest.approx(want, rel=1e-5)


def test_center_loss_matches_python_loop(gen):
    x = torch.randn(12, 3, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 1, 2, 2])
    total = 0.0
    for i in range(12):
        members = [j for j in range(12) if labels[j] == labels[i]]
        c = [sum(x[j, d].item() for j in members) / len(members) for d in range(3)]
        total += sum((x[i, d].item() - c[d]) ** 2 for d in range(3))
    assert CenterLoss()(x, labels).item() == pytest.approx(total / 12, rel=1e-5)


def test_covariance_loss_matches_python_loop(gen):
    x = torch.randn(30, 4, generator=gen)
    n, k = x.shape
    mu = [sum(x[r, j].item() for r in range(n)) / n for j in range(k)]
    c = [[sum((x[r, i].item() - mu[i]) * (x[r, j].item() - mu[j]) for r in range(n)) / n
          for j in range(k)] for i in range(k)]
    want = sum(c[i][j] ** 2 for i in range(k) for j in range(k) if i != j) / n
    assert CovarianceLoss()(x).item() == pytest.approx(want, rel=1e-4)
    # Decorrelated columns have no off-diagonal energy.
    assert CovarianceLoss()(torch.eye(4).repeat(3, 1) * 2 - 0.5).item() < 0.1
