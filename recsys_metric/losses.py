"""The training objectives, each defined once, as a function of distances (smaller = closer).

A loss is a rule ``(d_pos, d_neg, w, *params) -> (value, c_pos, c_neg)``: its value for a
(user, positive) pair and its negatives, and the derivatives ``c_pos = dl/dd_pos``, ``c_neg =
dl/dd_neg``. Every training loop follows the same rules, and the rows' gradients are those
coefficients times the distances' gradients:

- the torch loop (any device) calls them on tensors, ``d_pos`` ``[B, 1]``, ``d_neg`` ``[B, N]``,
  and backpropagates ``c_pos * d_pos + sum(c_neg * d_neg)`` (:func:`surrogate`) through the
  distances;
- the fused CPU loop (numba) compiles the same source for one pair, ``d_pos`` a scalar, ``d_neg``
  ``[N]``, and applies the chain rule by hand (:mod:`recsys_metric.sampling.cpu_many`,
  :mod:`recsys_metric.sampling.cpu_train`).

The rules are written once in :func:`rules` against a handful of array operations (``exp``,
``log``, sums and maxima over the negatives), which :data:`TORCH_OPS` and the numba loops supply.

``w[j] >= 0`` is how many catalogue items negative draw ``j`` stands for, 0 for a draw to ignore
(one of the user's positives among shared negatives, or no draw at all): the log-Q correction of
sampled softmax, ``log w[j] = -log(N q_j)`` for draws of probability ``q_j``, and the weights of
the contrastive loss's mean over the negatives.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import nn

LOSSES = ("triplet", "contrastive", "softmax")
DISTANCES = ("euclidean", "cosine")


def rules(ops: SimpleNamespace) -> SimpleNamespace:
    """The rules of every loss, on the array operations ``ops``: ``exp``, ``log``, ``total``
    and ``top`` (sum and maximum over the negatives, the last axis), ``larger`` (element-wise
    maximum of two), ``on`` (``x > 0`` as 1.0 / 0.0 of ``x``'s type)."""
    exp, log, total, top, larger, on = ops.exp, ops.log, ops.total, ops.top, ops.larger, ops.on

    def rank_weight(violators, n_candidates, n_items):
        """WARP's rank estimate ``log(1 + floor(n_items * M / U))`` from ``M`` violators among
        ``U`` draws (integers in, float out): a positive ranked below many negatives is pushed
        harder."""
        return log(1.0 + (n_items * violators) // n_candidates)

    def triplet(d_pos, d_neg, weight, margin):
        """``weight * [margin + d_pos - d_neg]_+``, ``d_neg`` the hardest of the candidates
        (chosen by the sampler, which also counts the violators for ``weight``)."""
        h = margin + d_pos - d_neg
        a = weight * on(h)
        return a * h, a, -a

    def contrastive(d_pos, d_neg, w, margin, negative_weight):
        """CCL (SimpleX's form): ``d_pos + negative_weight * mean_w [margin - d_neg]_+``, the
        positive pulled in, the negatives inside the margin pushed out."""
        v = margin - d_neg
        scale = negative_weight / larger(total(w), 1e-30)
        return d_pos + scale * total(w * v * on(v)), 1.0 + 0.0 * d_pos, -scale * w * on(v)

    def softmax(d_pos, d_neg, w, temperature):
        """Sampled softmax over ``-d / temperature``: ``-log(e_pos / (e_pos + sum w e_neg))``,
        each negative's term multiplied by the items it stands for (log-Q correction)."""
        z_pos = -d_pos / temperature
        z = -d_neg / temperature + log(w)
        m = larger(z_pos, top(z))  # for exp without overflow
        e_pos = exp(z_pos - m)
        e = exp(z - m)
        s = e_pos + total(e)
        return log(s) + m - z_pos, (1.0 - e_pos / s) / temperature, -(e / s) / temperature

    return SimpleNamespace(rank_weight=rank_weight, triplet=triplet, contrastive=contrastive,
                           softmax=softmax)


TORCH_OPS = SimpleNamespace(
    exp=torch.exp,
    log=torch.log,
    total=lambda x: x.sum(-1, keepdim=True),
    top=lambda x: x.amax(-1, keepdim=True),
    larger=lambda a, b: torch.maximum(a, torch.as_tensor(b, dtype=a.dtype, device=a.device)),
    on=lambda x: (x > 0).to(x.dtype),
)
TORCH = rules(TORCH_OPS)


def rank_weight(violators: torch.Tensor, n_candidates: int, n_items: int) -> torch.Tensor:
    """WARP weight of :func:`rules`'s ``rank_weight`` on a tensor of violator counts."""
    return TORCH.rank_weight(violators.long(), n_candidates, n_items).float()


def loss_terms(loss: str, d_pos: torch.Tensor, d_neg: torch.Tensor, w: torch.Tensor,
               **params: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(value [B], c_pos [B], c_neg [B, N])`` of loss ``loss`` for ``d_pos [B]``, ``d_neg [B,
    N]`` and the negatives' weights ``w [B, N]`` (the triplet loss: ``N = 1``, ``w`` its rank
    weight). ``params``: ``margin`` (triplet, contrastive), ``negative_weight`` (contrastive),
    ``temperature`` (softmax)."""
    d_pos = d_pos.unsqueeze(-1)
    if loss == "triplet":
        out = TORCH.triplet(d_pos, d_neg, w, params["margin"])
    elif loss == "contrastive":
        out = TORCH.contrastive(d_pos, d_neg, w, params["margin"], params["negative_weight"])
    elif loss == "softmax":
        out = TORCH.softmax(d_pos, d_neg, w, params["temperature"])
    else:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    value, c_pos, c_neg = out
    return value.squeeze(-1), c_pos.expand_as(value).squeeze(-1), c_neg


def surrogate(c_pos: torch.Tensor, d_pos: torch.Tensor, c_neg: torch.Tensor,
              d_neg: torch.Tensor) -> torch.Tensor:
    """A scalar whose gradient through the distances is the rules' (coefficients held fixed),
    averaged over the pairs: what the torch loop backpropagates."""
    return ((c_pos.detach() * d_pos).sum() + (c_neg.detach() * d_neg).sum()) / max(len(d_pos), 1)


Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def squared_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise squared Euclidean distance (broadcasting over leading dims)."""
    return (x - y).pow(2).sum(-1)


def cosine_distance(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``1 - cos(x, y)`` row-wise, in [0, 2] (broadcasting over leading dims)."""
    nx = x.pow(2).sum(-1).add(eps).sqrt()
    ny = y.pow(2).sum(-1).add(eps).sqrt()
    return 1.0 - (x * y).sum(-1) / (nx * ny)


DISTANCE_FNS: dict[str, Distance] = {"euclidean": squared_euclidean, "cosine": cosine_distance}


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
