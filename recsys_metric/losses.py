"""Losses, one small module each; distances are squared Euclidean (smaller = closer)."""

from __future__ import annotations

import torch
from torch import nn


def rank_weight(violators: torch.Tensor, n_candidates: int, n_items: int) -> torch.Tensor:
    """WARP rank estimate ``log(1 + floor(n_items * M / U))`` from M violators among U draws."""
    return torch.log1p(torch.floor(n_items * violators.float() / n_candidates))


class TripletLoss(nn.Module):
    """``w * [margin + d(u, p) - d(u, n)]_+`` averaged over triplets.

    With ``n_items`` given, ``w`` is the WARP rank weight of :func:`rank_weight` (a positive item
    ranked below many negatives gets a larger push); otherwise ``w = 1``.
    """

    def __init__(self, margin: float = 0.5, n_items: int | None = None) -> None:
        super().__init__()
        self.margin = margin
        self.n_items = n_items

    def forward(self, d_pos: torch.Tensor, d_neg: torch.Tensor,
                violators: torch.Tensor | None = None, n_candidates: int = 1) -> torch.Tensor:
        hinge = torch.relu(self.margin + d_pos - d_neg)
        if self.n_items is not None and violators is not None:
            hinge = hinge * rank_weight(violators, n_candidates, self.n_items)
        return hinge.mean()


class ContrastiveLoss(nn.Module):
    """``y * d + (1 - y) * [margin - d]_+`` over (user, item, label) pairs, averaged."""

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, d: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = y.float()
        return (y * d + (1.0 - y) * torch.relu(self.margin - d)).mean()


class CenterLoss(nn.Module):
    """Pulls item rows toward the mean of their category's rows in the batch:
    mean of ``||x - c_label||^2``."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.long()
        n = int(labels.max()) + 1
        sums = torch.zeros(n, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=n).clamp(min=1).unsqueeze(1).to(x.dtype)
        centers = sums / counts
        return (x - centers[labels]).pow(2).sum(1).mean()


class CovarianceLoss(nn.Module):
    """The CML paper's decorrelation term: off-diagonal energy of the rows' covariance,
    ``(||C||_F^2 - ||diag C||^2) / N`` with ``C = (X - mean)^T (X - mean) / N``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        xc = x - x.mean(0, keepdim=True)
        c = xc.T @ xc / n
        return (c.pow(2).sum() - c.diagonal().pow(2).sum()) / n
