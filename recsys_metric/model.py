"""User and item embedding tables in one Euclidean space; a user sits near the items they like."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .losses import DISTANCE_FNS


def pairwise_squared_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[a, d] x [b, d] -> [a, b]`` squared distances via one matmul (clamped: rounding can dip
    below zero)."""
    d = x.pow(2).sum(1, keepdim=True) - 2.0 * x @ y.T + y.pow(2).sum(1)
    return d.clamp_(min=0.0)


def unit_rows(a: np.ndarray) -> np.ndarray:
    """Rows scaled to norm 1 (zero rows stay zero): on them the squared Euclidean distance is
    ``2 - 2 cos``, so a model trained on the cosine distance is served, indexed and evaluated by
    the Euclidean code unchanged."""
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return (a / np.where(norms > 0, norms, 1.0)).astype(a.dtype)


def pull_to_latest(users: np.ndarray, items: np.ndarray, weights: sp.csr_matrix,
                   beta: float) -> np.ndarray:
    """``(1 - beta) * u + beta * c`` for each user with a history, ``c`` the ``weights``-mean of
    their items' rows (:meth:`Interactions.latest_weights`); users without one keep their row.

    The next item follows the latest ones: the query point moves toward them. A convex
    combination of rows in the unit ball stays in it.
    """
    out = users.copy()
    has = np.diff(weights.indptr) > 0
    target = np.asarray(weights[has] @ items.astype(np.float64))
    out[has] = ((1.0 - beta) * users[has] + beta * target).astype(users.dtype)
    return out


class CML(nn.Module):
    """Collaborative metric learning tables: score = minus the squared distance.

    Rows are kept inside the ball of radius ``clip_norm`` (the CML paper's regulariser in place
    of L2 weight decay); :meth:`clip_` is called after every optimiser step.
    """

    def __init__(self, n_users: int, n_items: int, dim: int, clip_norm: float = 1.0,
                 generator: torch.Generator | None = None, init_norm: float = 0.1,
                 distance: str = "euclidean") -> None:
        super().__init__()
        self.clip_norm = clip_norm
        self.distance_fn = DISTANCE_FNS[distance]
        # Sparse gradients: a batch touches a few thousand rows of tables that may hold millions.
        self.users = nn.Embedding(n_users, dim, sparse=True)
        self.items = nn.Embedding(n_items, dim, sparse=True)
        # Rows start near the origin (norm ~ init_norm): no item starts by chance close to a user,
        # each moves out only as far as the data pushes it (steadier than norm-1 starts).
        with torch.no_grad():
            for table in (self.users, self.items):
                table.weight.normal_(0.0, init_norm * dim ** -0.5, generator=generator)
        self.clip_()

    def distance(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Distances of rows ``users`` ``[B]`` to rows ``items`` ``[B]`` or ``[B, N]``."""
        u = self.users(users)
        return self.distance_fn(u if items.dim() == 1 else u.unsqueeze(1), self.items(items))

    @torch.no_grad()
    def clip_(self, *rows: tuple[nn.Embedding, torch.Tensor]) -> None:
        """Project rows onto the ball; all rows when none are given."""
        if self.clip_norm <= 0:
            return
        targets = rows or ((self.users, None), (self.items, None))
        for table, idx in targets:
            w = table.weight if idx is None else table.weight[idx]
            w = w.renorm(2, 0, self.clip_norm)
            if idx is None:
                table.weight.copy_(w)
            else:
                table.weight[idx] = w

    @torch.no_grad()
    def scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for the given users, ``[b, n_items]``, higher is closer."""
        return -pairwise_squared_distance(self.users.weight[users], self.items.weight)
