"""The fused CPU epoch of the many-negative losses (contrastive, sampled softmax), as numba kernels.

The epoch's plan is the triplet loop's (:mod:`.strata`, :mod:`.cpu_train`): ``lanes`` parallel
streams over disjoint users, each step on a disjoint random item stratum, blocks of
``block_size`` pairs, bit-identical on any number of threads. Each pair, in order:

1. its ``N`` negatives: drawn for the pair (uniform over the user's non-positives, or in
   proportion to the items' pairs, positives redrawn), or the block's shared ones (drawn once per
   block and lane, the user's positives among them weighted 0; their gradients summed over the
   block and stepped once at its end, as a mini-batch would: stepped after every pair, a few
   rows took thousands of steps per block, and a one-seed probe on ml-100k leave-last-out scored
   NDCG@10 0.079 against 0.126 with negatives per pair), from the catalogue with one lane, else
   from the stratum;
2. the distances on the current rows, then the loss's rule (:func:`recsys_metric.losses.rules`,
   compiled in :mod:`.cpu_train` from the source the torch loop runs) gives ``c_pos`` and ``c_neg``;
3. the rows' gradients (the coefficients times the distances' gradients, all from the rows
   before this pair's updates), then Adagrad and the clip on every row with a nonzero
   coefficient: the negatives, the positive, the user.

A negative drawn twice for one pair gets its two steps one after the other (torch's loop sums
them into one); otherwise a block of one pair makes the torch loop's update
(``tests/test_loss_equivalence.py``).

numba is imported behind a guard (see :mod:`._numba_ops`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._numba_ops import _PAR, _hash, _mulhi, _require_numba, _stream_key, njit, prange
from .cpu import _TRIES, _draw, _is_positive, _sqdist
from .cpu_train import (
    _adagrad_row,
    _check_tables,
    _clip_row,
    _contrastive,
    _scratch,
    _softmax,
    _step,
    step_bounds,
)
from .strata import EpochPairs, _draw_stratum, plan_epoch

LOSS_IDS = {"triplet": 0, "contrastive": 1, "softmax": 2}  # triplet: apply_pairs only
_EPS = np.float32(1e-12)  # under the square roots of the norms, as losses.cosine_distance


@njit(inline="always")
def _dot_norms(ue, u, ie, i):
    """``(u . i, |u|^2 + eps, |i|^2 + eps)`` of rows ``ue[u]`` and ``ie[i]``."""
    dot = np.float32(0.0)
    nu2 = np.float32(0.0)
    ni2 = np.float32(0.0)
    for d in range(ue.shape[1]):
        a, b = ue[u, d], ie[i, d]
        dot += a * b
        nu2 += a * a
        ni2 += b * b
    return dot, nu2 + _EPS, ni2 + _EPS


@njit(inline="always")
def _dist(ue, u, ie, i, cosine):
    """Squared Euclidean distance, or ``1 - cos``, of rows ``ue[u]`` and ``ie[i]``."""
    if cosine:
        dot, nu2, ni2 = _dot_norms(ue, u, ie, i)
        return np.float32(1.0) - dot / (np.sqrt(nu2) * np.sqrt(ni2))
    return _sqdist(ue, u, ie, i)


@njit(inline="always")
def _add_grad(gu, gi, c, ue, u, ie, i, cosine):
    """``gu += c * dd/du`` and ``gi = c * dd/di`` for the distance ``d`` of rows ``u``, ``i``."""
    if cosine:
        dot, nu2, ni2 = _dot_norms(ue, u, ie, i)
        inv = np.float32(1.0) / np.sqrt(nu2 * ni2)
        cos = dot * inv
        for d in range(ue.shape[1]):
            a, b = ue[u, d], ie[i, d]
            gu[d] += np.float32(c * -(b * inv - cos * a / nu2))
            gi[d] = np.float32(c * -(a * inv - cos * b / ni2))
        return
    for d in range(ue.shape[1]):
        t = np.float32(2.0 * c) * (ue[u, d] - ie[i, d])
        gu[d] += t
        gi[d] = -t


@njit(inline="always")
def _apply(u, p, negs, n, c_pos, c_neg, grad, ue, ua, ie, ia, cosine, lr, clip, held):
    """Step 3 of the module docstring for one pair; returns whether any row moved. With
    ``held`` ``[n, dim]`` (shared negatives), the negatives' gradients are added to it instead
    of stepped."""
    gu, gp, gn = grad[0], grad[1], grad[2]
    eps = np.float32(1e-10)  # Adagrad's, as torch's
    gu[:] = 0.0
    _add_grad(gu, gp, c_pos, ue, u, ie, p, cosine)
    moved = c_pos != 0
    for j in range(n):
        c = c_neg[j]
        if c != 0:
            r = negs[j]
            _add_grad(gu, gn, c, ue, u, ie, r, cosine)
            if held.shape[0] > 0:
                for d in range(gn.shape[0]):
                    held[j, d] += gn[d]
            else:
                _clip_row(ie, r, _adagrad_row(ie, ia, r, gn, lr, eps), clip)
            moved = True
    if moved:
        _clip_row(ie, p, _adagrad_row(ie, ia, p, gp, lr, eps), clip)
        _clip_row(ue, u, _adagrad_row(ue, ua, u, gu, lr, eps), clip)
    return moved


@njit(inline="always")
def _pair(u, p, negs, w, n, dneg, grad, ue, ua, ie, ia, loss_id, p1, p2, cosine, lr, clip, held):
    """One pair's update (steps 2 and 3); returns ``(loss value, moved)``."""
    d_pos = _dist(ue, u, ie, p, cosine)
    for j in range(n):
        dneg[j] = _dist(ue, u, ie, negs[j], cosine) if w[j] > 0 else np.float32(0.0)
    if loss_id == 1:  # (two calls of _apply: the rules' outputs differ in type)
        value, c_pos, c_neg = _contrastive(d_pos, dneg[:n], w[:n], p1, p2)
        return value, _apply(u, p, negs, n, c_pos, c_neg, grad, ue, ua, ie, ia, cosine, lr, clip,
                             held)
    value, c_pos, c_neg = _softmax(d_pos, dneg[:n], w[:n], p1)
    return value, _apply(u, p, negs, n, c_pos, c_neg, grad, ue, ua, ie, ia, cosine, lr, clip,
                         held)


@njit(inline="always")
def _step_held(negs, n, held, ie, ia, lr, clip):
    """The block's step of its shared negatives: each row once, by the sum of its gradients
    over the block's pairs (a row drawn twice: its slots merged first, as torch sums them)."""
    eps = np.float32(1e-10)
    for j in range(n):
        for k in range(j):
            if negs[k] == negs[j]:
                for d in range(held.shape[1]):
                    held[k, d] += held[j, d]
                    held[j, d] = 0.0
                break
    for j in range(n):
        nz = False
        for d in range(held.shape[1]):
            nz = nz or held[j, d] != 0
        if nz:
            r = negs[j]
            _clip_row(ie, r, _adagrad_row(ie, ia, r, held[j], lr, eps), clip)


@njit(inline="always")
def _popular(cum, lo, hi, x):
    """Position in ``[lo, hi)`` of the item hash ``x`` picks in proportion to its pairs (``cum``:
    the stratum's inclusive running counts), and the draw's weight ``total / count``."""
    total = cum[hi - 1]
    target = np.int64(_mulhi(x, total))
    a, b = lo, hi - 1
    while a < b:  # the first position whose running count exceeds target
        mid = (a + b) // 2
        if cum[mid] > target:
            b = mid
        else:
            a = mid + 1
    count = cum[a] - (cum[a - 1] if a > lo else 0)
    return a, np.float32(total / count)


@njit(inline="always")
def _is_pos(indptr, indices, bits, sptr, spos, u, s, L, item, j):
    """Whether ``item`` (position ``j`` of stratum ``s``) is one of user ``u``'s positives."""
    if L == 1:
        return _is_positive(indices, indptr[u], indptr[u + 1] - indptr[u], bits, u, item)
    a = sptr[u, s]
    return _is_positive(spos, a, sptr[u, s + 1] - a, bits, u * L + s, j)


@njit(**_PAR)
def _many_kernel(indptr, indices, pairs, order, bucket_ptr, items, item_ptr, sptr, spos, bits, cum,
                 user_emb, user_acc, item_emb, item_acc, n_neg, loss_id, p1, p2, cosine, popular,
                 shared, lr, clip_norm, key, block, t_lo, t_hi):
    L = item_ptr.shape[0] - 1
    n_items, dim = item_emb.shape
    P = pairs.shape[0]
    pad = 16  # >= 64 bytes between two lanes' scratch rows
    negs = np.empty((L, n_neg + pad), np.int64)
    w = np.empty((L, n_neg + pad), np.float32)
    dneg = np.empty((L, n_neg + pad), np.float32)
    s_negs = np.empty((L, n_neg + pad), np.int64)  # the block's shared draws
    s_pos = np.empty((L, n_neg + pad), np.int64)  # their positions in the stratum
    s_w = np.empty((L, n_neg + pad), np.float32)
    grad = _scratch(L, 3, dim, np.float32)
    held = _scratch(L, n_neg if shared else 0, dim, np.float32)
    lane_loss = np.zeros((L, 8))
    lane_active = np.zeros((L, 8), np.int64)
    n_blocks = 0
    for b in range(L * L):
        n_blocks = max(n_blocks, (bucket_ptr[b + 1] - bucket_ptr[b] + block - 1) // block)
    for t in range(t_lo, min(n_blocks * L, t_hi)):
        for lane in prange(L):
            s = (lane + t) % L
            b = lane * L + s
            lo = bucket_ptr[b] + (t // L) * block
            hi = min(lo + block, bucket_ptr[b + 1])
            if lo >= hi:
                continue
            ilo, ihi = item_ptr[s], item_ptr[s + 1]
            if shared:  # one set for the block, positives not excluded here
                for c in range(n_neg):
                    x = _hash(key, np.uint64(P * n_neg + lo * n_neg + c))
                    if popular:
                        j, wt = _popular(cum, ilo, ihi, x)
                        j -= ilo
                    else:
                        j, wt = np.int64(_mulhi(x, ihi - ilo)), np.float32(ihi - ilo)
                    s_pos[lane, c] = j
                    s_negs[lane, c] = items[ilo + j]
                    s_w[lane, c] = wt / n_neg
                held[lane, :n_neg] = 0.0
            for k in range(lo, hi):
                g = order[k]
                u, p = pairs[g, 0], pairs[g, 1]
                for c in range(n_neg):
                    if shared:
                        negs[lane, c] = s_negs[lane, c]
                        hit = _is_pos(indptr, indices, bits, sptr, spos, u, s, L,
                                      s_negs[lane, c], s_pos[lane, c])
                        w[lane, c] = np.float32(0.0) if hit else s_w[lane, c]
                        continue
                    ctr = np.uint64(g) * np.uint64(n_neg) + np.uint64(c)
                    if popular:
                        x = _hash(key, ctr)
                        w[lane, c] = np.float32(0.0)
                        negs[lane, c] = 0
                        for tr in range(_TRIES):
                            j, wt = _popular(cum, ilo, ihi, x)
                            item = items[j]
                            if not _is_pos(indptr, indices, bits, sptr, spos, u, s, L, item,
                                           j - ilo):
                                negs[lane, c], w[lane, c] = item, wt / n_neg
                                break
                            x = _hash(x, np.uint64(tr))
                    else:
                        if L == 1:
                            item = _draw(indptr, indices, bits, u, n_items, key, ctr)
                            free = n_items - (indptr[u + 1] - indptr[u])
                        else:
                            item = _draw_stratum(bits, u, items, ilo, ihi, sptr, spos, s, key,
                                                 ctr)
                            free = ihi - ilo - (sptr[u, s + 1] - sptr[u, s])
                        negs[lane, c] = max(item, 0)
                        w[lane, c] = np.float32(free / n_neg) if item >= 0 else np.float32(0.0)
                value, moved = _pair(u, p, negs[lane], w[lane], n_neg, dneg[lane], grad[lane],
                                     user_emb, user_acc, item_emb, item_acc, loss_id, p1, p2,
                                     cosine, lr, clip_norm, held[lane, :n_neg if shared else 0])
                lane_loss[lane, 0] += value
                lane_active[lane, 0] += moved
            if shared:
                _step_held(s_negs[lane], n_neg, held[lane], item_emb, item_acc, lr, clip_norm)
    return lane_loss[:, 0].sum(), lane_active[:, 0].sum()


@njit(cache=True)
def _apply_given(pairs, negs, w, user_emb, user_acc, item_emb, item_acc, loss_id, p1, p2, cosine,
                 lr, clip_norm):
    """The pairs ``pairs[k]`` with negatives ``negs[k]`` and weights ``w[k]``, one after the
    other (steps 2-3): the fused loop's update of a block of one pair, for tests."""
    n = negs.shape[1]
    dneg = np.empty(n, np.float32)
    grad = np.empty((3, user_emb.shape[1]), np.float32)
    held = np.zeros((0, user_emb.shape[1]), np.float32)
    total = 0.0
    for k in range(pairs.shape[0]):
        if loss_id == 0:  # the triplet loop's step (cpu_train), on the given hardest negative
            total += _step(pairs[k, 0], pairs[k, 1], negs[k, 0], w[k, 0], user_emb, item_emb,
                           user_acc, item_acc, p1, lr, clip_norm, grad)
            continue
        value, _ = _pair(pairs[k, 0], pairs[k, 1], negs[k], w[k], n, dneg, grad, user_emb,
                         user_acc, item_emb, item_acc, loss_id, p1, p2, cosine, lr, clip_norm,
                         held)
        total += value
    return total


def _params(loss: str, margin: float, negative_weight: float, temperature: float):
    if loss not in LOSS_IDS:
        raise ValueError(f"loss must be one of {', '.join(LOSS_IDS)}, got {loss!r}")
    if loss == "triplet":
        return np.int64(0), np.float32(margin), np.float32(0.0)
    if loss == "contrastive":
        return np.int64(1), np.float32(margin), np.float32(negative_weight)
    return np.int64(2), np.float32(temperature), np.float32(0.0)


def apply_pairs(pairs: np.ndarray, negatives: np.ndarray, weights: np.ndarray,
                user_emb: np.ndarray, item_emb: np.ndarray, user_acc: np.ndarray,
                item_acc: np.ndarray, *, loss: str, distance: str = "euclidean",
                margin: float = 0.5, negative_weight: float = 1.0, temperature: float = 0.1,
                lr: float = 0.1, clip_norm: float = 1.0) -> float:
    """Apply ``(user, positive)`` ``pairs`` ``[P, 2]`` with given ``negatives`` ``[P, N]`` and
    their ``weights`` ``[P, N]``, one pair at a time, in place, as the epochs do (the triplet
    loss: ``N = 1``, the hardest negative and its rank weight, :mod:`.cpu_train`'s step; the
    Euclidean distance); returns the summed loss. For tests and inspection."""
    _require_numba()
    _check_tables(user_emb, item_emb, user_acc, item_acc)
    loss_id, p1, p2 = _params(loss, margin, negative_weight, temperature)
    return float(_apply_given(
        np.ascontiguousarray(pairs, np.int64), np.ascontiguousarray(negatives, np.int64),
        np.ascontiguousarray(weights, np.float32), user_emb, user_acc, item_emb, item_acc,
        loss_id, p1, p2, distance == "cosine", np.float32(lr), np.float32(clip_norm)))


def _running_counts(pairs: EpochPairs, items: np.ndarray, item_ptr: np.ndarray) -> np.ndarray:
    """Inclusive running counts of the items' pairs, restarting at each stratum (each item
    counted at least once, so every item can be drawn)."""
    counts = np.maximum(pairs.item_pairs[items], 1)
    cum = np.cumsum(counts)
    starts = np.repeat(np.concatenate([[0], cum[item_ptr[1:-1] - 1]]), np.diff(item_ptr))
    return (cum - starts).astype(np.int64)


def run_epoch(pairs: EpochPairs, user_emb: np.ndarray, item_emb: np.ndarray,
              user_acc: np.ndarray, item_acc: np.ndarray, *, loss: str, n_negatives: int,
              distance: str = "euclidean", sampler: str = "uniform", shared: bool = False,
              margin: float = 0.5, negative_weight: float = 1.0, temperature: float = 0.1,
              lr: float = 0.1, clip_norm: float = 1.0, seed: int = 0, epoch: int = 0,
              lanes: int = 1, block_size: int = 4096, shuffle: bool = True, syncs: int = 1,
              sync: Callable[[], None] | None = None) -> tuple[float, int]:
    """One epoch of the contrastive or softmax loss over the prepared pairs, in place (the
    module docstring; the plan, ``lanes``, ``block_size`` and ``shuffle`` as
    :func:`.cpu_train.run_epoch`, and so are ``syncs`` and ``sync``). Returns the summed loss and
    the number of pairs that moved a row."""
    _require_numba()
    _check_tables(user_emb, item_emb, user_acc, item_acc)
    if user_emb.shape[0] != pairs.n_users or item_emb.shape[0] != pairs.n_items:
        raise ValueError(f"tables of {user_emb.shape[0]} users and {item_emb.shape[0]} items, "
                         f"pairs of {pairs.n_users} and {pairs.n_items}")
    if n_negatives < 1 or lanes < 1 or block_size < 1:
        raise ValueError("n_negatives, lanes and block_size must be >= 1")
    if loss == "triplet":
        raise ValueError("the triplet loss's epoch is cpu_train.run_epoch")
    loss_id, p1, p2 = _params(loss, margin, negative_weight, temperature)
    key = _stream_key(seed, epoch)
    block = min(block_size, max(1, len(pairs)))
    order, bucket_ptr, items, item_ptr, sptr, spos, bits = plan_epoch(
        pairs, lanes, key, bool(shuffle), block, len(pairs) * n_negatives)
    if len(item_ptr) == 2:  # one lane: the whole catalogue, in id order
        items = np.arange(pairs.n_items, dtype=np.int32)
    cum = (_running_counts(pairs, items, item_ptr) if sampler == "popularity"
           else np.zeros(1, np.int64))
    loss_sum, active = 0.0, 0
    bounds = step_bounds(bucket_ptr, block, syncs)
    for t_lo, t_hi in zip(bounds[:-1], bounds[1:], strict=True):
        part = _many_kernel(
            pairs.indptr, pairs.indices, pairs.pairs, order, bucket_ptr, items, item_ptr, sptr,
            spos, bits, cum, user_emb, user_acc, item_emb, item_acc, np.int64(n_negatives),
            loss_id, p1, p2, distance == "cosine", sampler == "popularity", bool(shared),
            np.float32(lr), np.float32(clip_norm), key, np.int64(block), np.int64(t_lo),
            np.int64(t_hi))
        loss_sum, active = loss_sum + float(part[0]), active + int(part[1])
        if sync is not None:
            sync()
    return loss_sum, active


__all__ = ["LOSS_IDS", "apply_pairs", "run_epoch"]
