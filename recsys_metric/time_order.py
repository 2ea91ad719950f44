"""The time order of a log as the models use it, built once by :func:`build` for CML's Trainer
and implicit's ALS alike: the rows to fit (the users', then the items' context rows), which
entries are each row's latest, and the pull of the users toward their latest items."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .data import Interactions
from .model import pull_to_latest


@dataclass(eq=False)
class TimeOrder:
    rows: sp.csr_matrix  # the users' rows, then (timestamps, transitions > 0) the items' context
    # rows: item j "liked" what followed it (Interactions.transitions); sorted CSR
    n_users: int
    latest: np.ndarray  # bool per stored entry of rows: in the latest recent_share of its row
    pull_weights: sp.csr_matrix | None  # Interactions.latest_weights (timestamps only)

    def pull(self, users: np.ndarray, items: np.ndarray, beta: float) -> np.ndarray:
        """Each user's point moved a share ``beta`` toward their latest items
        (:func:`.model.pull_to_latest`); unchanged without timestamps or with ``beta`` 0."""
        if self.pull_weights is None or beta <= 0:
            return users
        return pull_to_latest(users, items, self.pull_weights, beta)


def build(train: Interactions, recent_share: float = 0.0, transitions: int = 0,
          pull_decay: float | None = None) -> TimeOrder:
    """The :class:`TimeOrder` of ``train``: context rows with a window of ``transitions`` steps
    (with timestamps; 0: none), the latest ``recent_share`` of every row (by time, file order on
    ties or without timestamps), and the pull's weights with ``pull_decay`` (with timestamps and a
    decay given)."""
    timed = train.timestamps is not None
    parts = [train, *([train.transitions(transitions)] if timed and transitions else [])]
    rows = parts[0].matrix if len(parts) == 1 else sp.vstack([p.matrix for p in parts],
                                                             format="csr")
    rows.sort_indices()  # (an Interactions' matrix is sorted already: aligned with recency())
    latest = (np.concatenate([p.recency() >= 1 - recent_share for p in parts])
              if recent_share > 0 else np.zeros(rows.nnz, bool))
    weights = train.latest_weights(pull_decay) if timed and pull_decay is not None else None
    return TimeOrder(rows, train.n_users, latest, weights)
