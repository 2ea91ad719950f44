"""Fold-in: a new point fitted to its items against a fixed table, with the model's own loss.

A user unseen in training (or a known one with new items) gets a point without retraining: start
at the mean of their items' rows, then take full-batch Adagrad steps on the user's rows alone,
each step drawing the negatives as training does (the sampler's reference: uniform
non-positives, the hardest of ``U`` for the triplet loss) and following the loss's rule of the
distances (:mod:`.losses`). Seeded by the items, so the same items give the same point, alone or
in a batch; a few milliseconds per user, and many users fold in together.

The same code folds a new item into a fixed user table: an item's "items" are the users who
liked it (the distance is symmetric, so the loss is the same rule with the roles swapped).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .losses import DISTANCE_FNS, loss_terms, rank_weight
from .model import pull_to_latest, unit_rows
from .sampling import reference

# Adagrad steps per fold-in (at the model's learning rate). On the bundled books, folding every
# train user back in from their items gives top-10 lists that share 84% of the trained ones from
# the mean of the items (and the pull) alone, 86-88% after 10 to 100 steps: 10 it is, a few
# milliseconds a user (tests/test_serving.py holds the overlap).
STEPS = 10
BLOCK_ROWS = 1024  # rows folded in together (their draws held at once)


def fold_in(table: np.ndarray, rows: Sequence[np.ndarray], config, steps: int = STEPS,
            pull: float = 0.0) -> np.ndarray:
    """Points ``[len(rows), dim]`` for rows of indices into ``table`` (each row's liked entries,
    oldest first), fitted with ``config``'s loss, distance, margin, negatives, learning rate and
    clip (a :class:`~recsys_metric.train.TrainConfig`). ``pull`` > 0 then moves each point that
    share toward its latest entries (weights ``config.pull_decay ** r``, ``r`` = 0 the newest), as
    training does for users with timestamps. A row with no entries gets the origin.

    A row's negatives are drawn from a generator seeded by the config's seed and the row's
    entries, so its point does not depend on the other rows folded in with it."""
    items = torch.as_tensor(np.ascontiguousarray(table, dtype=np.float32))
    out = np.zeros((len(rows), table.shape[1]), np.float32)
    for s in range(0, len(rows), BLOCK_ROWS):  # bounded memory: each block's draws
        out[s:s + BLOCK_ROWS] = _fold_block(items, rows[s:s + BLOCK_ROWS], config, steps)
    if config.distance == "cosine":
        out = unit_rows(out)
    if pull > 0:
        out = pull_to_latest(out, table, latest_weights(rows, len(table), config.pull_decay),
                             pull)
    return out


def _fold_block(items: torch.Tensor, rows: Sequence[np.ndarray], cfg, steps: int
                ) -> np.ndarray:
    n_items = len(items)
    deg = [len(r) for r in rows]
    flat = np.concatenate([np.asarray(r, np.int64) for r in rows]) if sum(deg) else []
    pattern = sp.csr_matrix((np.ones(len(flat), np.float32), flat, np.r_[0, np.cumsum(deg)]),
                            shape=(len(rows), n_items))
    pattern.sum_duplicates()  # a repeated item counts once, as in training
    mean = sp.diags(1.0 / np.maximum(np.diff(pattern.indptr), 1)) @ pattern
    u = torch.as_tensor(np.asarray(mean @ items.double().numpy(), dtype=np.float32))
    if pattern.nnz and n_items > 1 and steps > 0:
        u = _descend(u, items, pattern, cfg, steps)
    return u.numpy()


def _descend(u: torch.Tensor, items: torch.Tensor, pattern: sp.csr_matrix, cfg, steps: int
             ) -> torch.Tensor:
    """``steps`` full-batch Adagrad steps on the rows ``u`` (the items fixed), each row's
    gradient the mean over its pairs of the loss's rule times the distances' gradients."""
    n_items = len(items)
    n = cfg.negatives_for(n_items)
    indptr = torch.as_tensor(pattern.indptr.astype(np.int64))
    indices = torch.as_tensor(pattern.indices.astype(np.int32))
    degree = indptr.diff()
    pair_rows = torch.repeat_interleave(torch.arange(len(u)), degree)
    pair_items = indices.long()
    scale = (1.0 / degree.clamp(min=1).float())[pair_rows]  # each row: the mean over its pairs
    keys = reference._draw_keys(indptr, indices, n_items)
    draws = [np.random.default_rng([cfg.seed, *pattern.indices[a:b].tolist()]).random(
        (steps, b - a, n), dtype=np.float32) for a, b in zip(pattern.indptr[:-1],
                                                            pattern.indptr[1:], strict=True)]
    distance = DISTANCE_FNS[cfg.distance]
    acc = torch.zeros_like(u)
    for step in range(steps):
        cand = reference.map_to_negatives(
            indptr, indices, pair_rows, n_items,
            torch.from_numpy(np.concatenate([d[step] for d in draws])), keys)
        if cfg.loss == "triplet":  # the hardest of the U candidates, as the samplers choose it
            neg, viol = reference.score_candidates(u, items, pair_rows, pair_items, cand,
                                                   cfg.margin)
            w = (rank_weight(viol, n, n_items) if cfg.rank_weight
                 else torch.ones(len(neg))).unsqueeze(1)
            w = w * (neg >= 0).unsqueeze(1)
            neg = neg.clamp(min=0).unsqueeze(1)
        else:
            free = (n_items - degree[pair_rows]).float() / n
            w = free.unsqueeze(1) * (cand >= 0)
            neg = cand.clamp(min=0)
        x = u.clone().requires_grad_(True)
        xu = x[pair_rows]
        d_pos = distance(xu, items[pair_items])
        d_neg = distance(xu.unsqueeze(1), items[neg])
        with torch.no_grad():
            _, c_pos, c_neg = loss_terms(cfg.loss, d_pos, d_neg, w, margin=cfg.margin,
                                         negative_weight=cfg.negative_weight,
                                         temperature=cfg.temperature)
        (scale * (c_pos * d_pos + (c_neg * d_neg).sum(1))).sum().backward()
        with torch.no_grad():
            g = x.grad
            acc += g * g
            u = u - cfg.lr * g / (acc.sqrt() + 1e-10)
            if cfg.clip_norm > 0:
                u = u.renorm(2, 0, cfg.clip_norm)
    return u


def latest_weights(rows: Sequence[np.ndarray], n_items: int, decay: float) -> sp.csr_matrix:
    """The pull's weights for rows of entries given oldest first: ``decay**r`` for the ``r``-th
    newest, each non-empty row summing to 1 (as :meth:`.data.Interactions.latest_weights`)."""
    w = [float(decay) ** np.arange(len(r) - 1, -1, -1, dtype=np.float64) for r in rows]
    w = [x / x.sum() for x in w if len(x)]
    deg = [len(r) for r in rows]
    out = sp.csr_matrix((np.concatenate(w) if w else np.empty(0),
                         np.concatenate([np.asarray(r, np.int64) for r in rows]) if w
                         else np.empty(0, np.int64), np.r_[0, np.cumsum(deg)]),
                        shape=(len(rows), n_items))
    out.sum_duplicates()
    return out
