"""The regularisers; the losses' rules are tested in test_loss_equivalence.py."""

import pytest
import torch

from recsys_metric.losses import CenterLoss, CovarianceLoss


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


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
