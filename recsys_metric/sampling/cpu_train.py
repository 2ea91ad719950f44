"""A fused CML training epoch on CPU, as numba kernels, on top of the :mod:`.cpu` sampler.

:func:`train_epoch` runs one CML epoch (hardest-of-U negative, WARP rank weight, Adagrad, clipping)
in blocks: sample in parallel against the block-start embeddings, then apply the updates in pair
order (two threads may update pairs that share no row at the same time; see ``_train_kernel``),
so the result is bit-identical on any thread count. Candidates of pair ``i`` in epoch ``e`` are
exactly ``sample_uniform(indptr, indices, pair_users, n_items, U, seed, offset=e)[i]``.

:func:`train_epoch_hogwild` is the opt-in lock-free variant: each pair is sampled, scored and
updated at once, threads racing on shared rows (deterministic on one thread only). Both take
element-wise (``acc`` shaped like the table) or row-wise (``acc`` of shape ``[n, 1]``) Adagrad.

numba is imported behind a guard (see :mod:`._numba_ops`): without it this module still imports
and the public functions raise ``ImportError``.
"""

from __future__ import annotations

import numpy as np

from ._numba_ops import (
    _PAR,
    _atomic_add,
    _atomic_cas,
    _atomic_load,
    _atomic_store,
    _prefetch_row,
    _require_numba,
    _stream_key,
    _yield,
    njit,
    numba,
    prange,
)
from .cpu import _bits, _check_catalogue, _check_ids, _prefetch_pair, _score_sampled, _sqdist

_PREFETCH = 2  # pairs ahead whose rows phase (b) prefetches
_CHUNK = 64  # pairs per claim in train_epoch's phase (a)
_BCHUNK = 16  # pairs per claim in train_epoch's phase (b)
_HCHUNK = 256  # pairs per claim in train_epoch_hogwild


# ----------------------------------------------------------------------------------- kernels


@njit(inline="always")
def _adagrad_row(emb, acc, r, g, lr, eps):
    """Adagrad step of row ``r`` by gradient ``g``; returns the new squared norm.

    ``acc`` with one column: row-wise Adagrad, one accumulator per row that gains the mean of
    ``g**2`` over the row (one sqrt and division per row instead of per element, no acc row read).
    """
    sq = np.float32(0.0)
    if acc.shape[1] == 1:
        s = np.float32(0.0)
        for d in range(g.shape[0]):
            s += g[d] * g[d]
        a = acc[r, 0] + s / np.float32(g.shape[0])
        acc[r, 0] = a
        step = lr / (np.sqrt(a) + eps)
        for d in range(g.shape[0]):
            x = emb[r, d] - step * g[d]
            emb[r, d] = x
            sq += x * x
        return sq
    for d in range(g.shape[0]):
        a = acc[r, d] + g[d] * g[d]
        acc[r, d] = a
        x = emb[r, d] - lr * g[d] / (np.sqrt(a) + eps)
        emb[r, d] = x
        sq += x * x
    return sq


@njit(inline="always")
def _clip_row(a, r, sq, clip_norm):
    norm = np.sqrt(sq)
    if clip_norm > 0 and norm > clip_norm:
        scale = clip_norm / norm
        for d in range(a.shape[1]):
            a[r, d] *= scale


@njit(inline="always")
def _update_pair(u, p, n, w, user_emb, item_emb, user_acc, item_acc, margin, lr, clip_norm, grad):
    """One triplet step (Adagrad + clipping) if its hinge is positive; returns ``h`` or 0."""
    h = margin + _sqdist(user_emb, u, item_emb, p) - _sqdist(user_emb, u, item_emb, n)
    if h <= 0:
        return np.float32(0.0)
    eps = np.float32(1e-10)
    w2 = np.float32(2.0) * w
    gu, gp, gn = grad[0], grad[1], grad[2]
    # all three gradients from pre-update rows, into scratch; then one loop per row: loops over
    # separate arrays vectorise, one fused loop over all six rows did not (aliasing)
    for d in range(user_emb.shape[1]):
        gu[d] = w2 * (item_emb[n, d] - item_emb[p, d])
        gp[d] = -w2 * (user_emb[u, d] - item_emb[p, d])
        gn[d] = w2 * (user_emb[u, d] - item_emb[n, d])
    _clip_row(user_emb, u, _adagrad_row(user_emb, user_acc, u, gu, lr, eps), clip_norm)
    _clip_row(item_emb, p, _adagrad_row(item_emb, item_acc, p, gp, lr, eps), clip_norm)
    _clip_row(item_emb, n, _adagrad_row(item_emb, item_acc, n, gn, lr, eps), clip_norm)
    return h


# Full fastmath here only: it turns the Adagrad division into a refined reciprocal (Adagrad row
# 24 -> 15 ns); embeddings are finite in any sane run, and the sampler kernels keep inf semantics.
@njit(fastmath=True, error_model="numpy", cache=True)
def _update_chunk(pair_users, pair_items, s, lo, hi, neg, viol, dep, pair_done, stamp, pair_loss,
                  weights, user_emb, item_emb, user_acc, item_acc, margin, lr, clip_norm, grad):
    """Phase (b) for block-local pairs ``lo .. hi`` (block starts at pair ``s``), in order.

    A pair first waits until the earlier pairs ``dep[i]`` that touch one of its rows are done,
    so every row sees its updates in pair order: the result is exactly the sequential loop's.
    """
    for i in range(lo, hi):
        k = i + _PREFETCH  # the six rows of a later pair are random L2/L3 reads: start them now
        if k < hi and viol[k] > 0 and neg[k] >= 0:
            _prefetch_row(user_emb, pair_users[s + k])
            _prefetch_row(user_acc, pair_users[s + k])
            _prefetch_row(item_emb, pair_items[s + k])
            _prefetch_row(item_acc, pair_items[s + k])
            _prefetch_row(item_emb, neg[k])
            _prefetch_row(item_acc, neg[k])
        pair_loss[i] = -1.0  # not updated
        if viol[i] > 0 and neg[i] >= 0:
            for j in range(3):
                while dep[i, j] >= 0 and _atomic_load(pair_done, dep[i, j]) != stamp:
                    _yield()
            w = weights[viol[i]]
            h = _update_pair(pair_users[s + i], pair_items[s + i], neg[i], w, user_emb, item_emb,
                             user_acc, item_acc, margin, lr, clip_norm, grad)
            if h > 0:
                pair_loss[i] = w * h
        _atomic_store(pair_done, i, stamp)


@njit(inline="always")
def _find_deps(pair_users, pair_items, s, n_pairs, neg, viol, dep, last_u, last_i):
    """``dep[i]``: the latest earlier pair of the block sharing each of pair i's rows, or -1.

    ``last_*[row]`` is the global position of the row's latest candidate toucher (no reset
    between blocks: positions before ``s`` mean "not in this block").
    """
    for i in range(n_pairs):
        dep[i, 0] = dep[i, 1] = dep[i, 2] = -1
        if viol[i] == 0 or neg[i] < 0:
            continue
        g = s + i
        u = pair_users[g]
        dep[i, 0] = last_u[u] - s if last_u[u] >= s else -1
        last_u[u] = g
        for j, r in ((1, np.int64(pair_items[g])), (2, neg[i])):
            dep[i, j] = last_i[r] - s if last_i[r] >= s else -1
            last_i[r] = g


@njit(inline="always")
def _scratch(n_tasks, rows, cols, dtype):
    """Per-thread ``[rows, cols]`` scratch, ``out[t]``, with >= 64 bytes between two threads' rows.

    Without the padding, the line at the boundary of two threads' blocks is written by both on
    every update (false sharing), which serialised the lock-free kernel on 2 threads.
    """
    pad = (64 + cols * 4 - 1) // (cols * 4)  # rows of >= 4-byte items: >= 64 bytes
    return np.empty((n_tasks, rows + pad, cols), dtype=dtype)


@njit(inline="always")
def _rank_weights(n_items, n_cand, rank_weight):
    """w = log(1 + floor(n_items * M / U)) takes only U + 1 values: tabulate, no log per update."""
    weights = np.ones(n_cand + 1, dtype=np.float32)
    if rank_weight:
        for m in range(n_cand + 1):
            weights[m] = np.float32(np.log(1.0 + np.float64((np.int64(n_items) * m) // n_cand)))
    return weights


@njit(inline="always")
def _wait(ctl, k, field, value):
    while _atomic_load(ctl[k], field) < value:
        _yield()


@njit(**_PAR)
def _train_kernel(indptr, indices, bits, pair_users, pair_items, user_emb, item_emb, user_acc,
                  item_acc, n_cand, margin, lr, rank_weight, clip_norm, key, block, n_tasks,
                  b_chunk):
    """Blocks of (a) parallel sampling then (b) updates in pair order, on persistent threads.

    One parallel region per epoch (not a fork/join per block, which on a busy shared machine made
    2 threads several times slower than 1): threads claim chunks with atomic counters and wait,
    yielding their core, only for work another thread has claimed. Per block k:

    1. (a) chunks: hardest negative and violators of each pair, against the embeddings as they
       are at the block start (chunks of block k are claimed only once block k - 1 is done);
    2. one thread finds, for each pair, the earlier pairs of the block that share a row;
    3. (b) chunks, claimed in order: a pair updates once the pairs it depends on are done, so
       every row sees exactly the sequential sequence of updates, whatever the thread count;
    4. whoever finishes the last (b) chunk sums the block's loss in pair order.
    """
    n_pairs = pair_users.shape[0]
    n_blocks = (n_pairs + block - 1) // block
    neg = np.empty(block, dtype=np.int64)
    viol = np.empty(block, dtype=np.int32)
    dep = np.empty((block, 3), dtype=np.int64)
    pair_done = np.zeros(block, dtype=np.int64)  # == k + 1 once pair i of block k is updated
    pair_loss = np.empty(block)
    last_u = np.full(user_emb.shape[0], -1, dtype=np.int64)
    last_i = np.full(item_emb.shape[0], -1, dtype=np.int64)
    grad = _scratch(n_tasks, 3, user_emb.shape[1], np.float32)
    weights = _rank_weights(item_emb.shape[0], n_cand, rank_weight)
    # per block: (a) claimed, (a) done, deps state, (b) claimed, (b) done, block state
    ctl = np.zeros((n_blocks, 6), dtype=np.int64)
    block_loss = np.zeros(n_blocks)
    block_active = np.zeros(n_blocks, dtype=np.int64)
    for t in prange(n_tasks):
        for k in range(n_blocks):
            s = k * block
            n = min(n_pairs, s + block) - s
            n_a = (n + _CHUNK - 1) // _CHUNK
            n_b = (n + b_chunk - 1) // b_chunk
            if k > 0:
                _wait(ctl, k - 1, 5, 2)
            while True:  # 1. (a)
                c = _atomic_add(ctl[k], 0, 1)
                if c >= n_a:
                    break
                for g in range(s + c * _CHUNK, s + min(n, (c + 1) * _CHUNK)):
                    if g + 1 < s + n:
                        _prefetch_pair(bits, user_emb, item_emb, pair_users[g + 1],
                                       pair_items[g + 1])
                    neg[g - s], viol[g - s] = _score_sampled(
                        indptr, indices, bits, user_emb, item_emb, pair_users[g], pair_items[g],
                        n_cand, margin, key, np.uint64(g) * np.uint64(n_cand),
                    )
                _atomic_add(ctl[k], 1, 1)
            _wait(ctl, k, 1, n_a)
            if _atomic_cas(ctl[k], 2, 0, 1):  # 2. dependencies
                _find_deps(pair_users, pair_items, s, n, neg, viol, dep, last_u, last_i)
                _atomic_store(ctl[k], 2, 2)
            _wait(ctl, k, 2, 2)
            while True:  # 3. (b)
                c = _atomic_add(ctl[k], 3, 1)
                if c >= n_b:
                    break
                _update_chunk(pair_users, pair_items, s, c * b_chunk, min(n, (c + 1) * b_chunk),
                              neg, viol, dep, pair_done, k + 1, pair_loss, weights, user_emb,
                              item_emb, user_acc, item_acc, margin, lr, clip_norm, grad[t])
                if _atomic_add(ctl[k], 4, 1) == n_b - 1:  # 4. the last (b) chunk: sum in order
                    for i in range(n):
                        if pair_loss[i] >= 0:
                            block_loss[k] += pair_loss[i]
                            block_active[k] += 1
                    _atomic_store(ctl[k], 5, 2)
    loss = 0.0
    for k in range(n_blocks):
        loss += block_loss[k]
    return loss, block_active.sum()


@njit(fastmath=True, error_model="numpy", cache=True)
def _hogwild_step(u, p, n, w, user_emb, item_emb, user_acc, item_acc, margin, lr, clip_norm, grad):
    """``_update_pair`` under full fastmath (see ``_update_chunk``), for the Hogwild kernel."""
    return _update_pair(u, p, n, w, user_emb, item_emb, user_acc, item_acc, margin, lr, clip_norm,
                        grad)


@njit(**_PAR)
def _hogwild_kernel(indptr, indices, bits, pair_users, pair_items, user_emb, item_emb, user_acc,
                    item_acc, n_cand, margin, lr, rank_weight, clip_norm, key, n_tasks, chunk):
    """Lock-free SGD: threads claim chunks of pairs in order; each pair is sampled, scored and
    updated at once against the current (possibly concurrently written) tables.

    Tried and dropped (no faster, 1M pairs, U=10, dim 64): drawing a pair ahead and prefetching
    its candidate rows (~20% slower on one thread), PREFETCHW of the next pair's rows, one cache
    line per row-wise accumulator. On two threads the updates cost ~2x what they cost on one:
    both cores read the whole (small) item table while scoring, so every item-row write
    invalidates the other core's copy.
    """
    n_pairs = pair_users.shape[0]
    n_chunks = (n_pairs + chunk - 1) // chunk
    ctl = np.zeros(1, dtype=np.int64)
    grad = _scratch(n_tasks, 3, user_emb.shape[1], np.float32)
    weights = _rank_weights(item_emb.shape[0], n_cand, rank_weight)
    loss = np.zeros(n_tasks)
    active = np.zeros(n_tasks, dtype=np.int64)
    for t in prange(n_tasks):
        t_loss, t_active = 0.0, 0  # locals: loss[t] per pair would false-share a cache line
        while True:
            c = _atomic_add(ctl, 0, 1)
            if c >= n_chunks:
                break
            hi = min(n_pairs, (c + 1) * chunk)
            for g in range(c * chunk, hi):
                u, p = pair_users[g], pair_items[g]
                if g + 1 < hi:
                    _prefetch_pair(bits, user_emb, item_emb, pair_users[g + 1], pair_items[g + 1])
                    _prefetch_row(user_acc, pair_users[g + 1])
                    _prefetch_row(item_acc, pair_items[g + 1])
                n, m = _score_sampled(indptr, indices, bits, user_emb, item_emb, u, p, n_cand,
                                      margin, key, np.uint64(g) * np.uint64(n_cand))
                if m > 0 and n >= 0:
                    w = weights[m]
                    h = _hogwild_step(u, p, n, w, user_emb, item_emb, user_acc, item_acc, margin,
                                      lr, clip_norm, grad[t])
                    if h > 0:
                        t_loss += w * h
                        t_active += 1
        loss[t] = t_loss
        active[t] = t_active
    return loss.sum(), active.sum()


# ------------------------------------------------------------------------------- public API


def _prepare_epoch(indptr, indices, pair_users, pair_items, user_emb, item_emb, user_acc,
                   item_acc, n_candidates):
    """Checks of an epoch's inputs; (indptr, indices, pair_users, pair_items, bits)."""
    _require_numba()
    n_items = item_emb.shape[0]
    _check_catalogue(n_items)
    for name, a, ref in (("user", user_acc, user_emb), ("item", item_acc, item_emb)):
        for arr in (a, ref):
            if arr.dtype != np.float32 or not arr.flags.c_contiguous or arr.ndim != 2:
                raise ValueError(f"{name} tables must be float32 C-contiguous 2-d arrays")
        if a.shape != ref.shape and a.shape != (ref.shape[0], 1):
            raise ValueError(f"{name}_acc shape {a.shape} is neither {name}_emb's {ref.shape} "
                             f"nor ({ref.shape[0]}, 1)")
    if user_acc.shape[1] != item_acc.shape[1]:
        raise ValueError("user_acc and item_acc must both be element-wise or both row-wise")
    if user_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(f"dims differ: {user_emb.shape[1]} vs {item_emb.shape[1]}")
    if n_candidates < 1:
        raise ValueError("n_candidates must be >= 1")
    ip = np.ascontiguousarray(indptr, dtype=np.int64)
    ix = np.ascontiguousarray(indices, dtype=np.int32)
    pu = np.ascontiguousarray(pair_users, dtype=np.int32)
    pi = np.ascontiguousarray(pair_items, dtype=np.int32)
    if len(ip) - 1 != user_emb.shape[0] or len(pu) != len(pi):
        raise ValueError("indptr must have n_users + 1 entries and pairs equal lengths")
    _check_ids("pair_users", pu, user_emb.shape[0])
    _check_ids("pair_items", pi, n_items)
    _check_ids("indices", ix, n_items)
    bits = _bits(ip, ix, n_items, len(pu) * n_candidates)
    return ip, ix, pu, pi, bits


def train_epoch(
    indptr: np.ndarray,
    indices: np.ndarray,
    pair_users: np.ndarray,
    pair_items: np.ndarray,
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    user_acc: np.ndarray,
    item_acc: np.ndarray,
    *,
    n_candidates: int,
    margin: float,
    lr: float,
    rank_weight: bool,
    clip_norm: float,
    seed: int,
    epoch: int,
    block_size: int = 4096,
) -> tuple[float, int]:
    """One CML epoch over ``(pair_users[i], pair_items[i])`` in the given order, in place.

    For each block of ``block_size`` pairs: (a) in parallel, against the embeddings at block start,
    draw ``n_candidates`` negatives per pair (those of ``sample_uniform(..., pair_users, ...,
    seed=seed, offset=epoch)``) and keep the hardest ``n`` and violator count ``M``; (b) in pair
    order, skip if ``M == 0`` or ``n == -1``, weight ``w = log(1 + floor(n_items * M / U))`` (or 1),
    recompute ``h = margin + d(u,p) - d(u,n)`` on the current embeddings, skip if ``h <= 0``, else
    take one Adagrad step on ``w * h`` for the rows ``u``, ``p``, ``n`` and clip them to
    ``clip_norm``. Bit-identical for a given seed whatever the number of threads.

    Parameters
    ----------
    indptr, indices : np.ndarray
        int64 / int32 CSR of the training positives, sorted within each row.
    pair_users, pair_items : np.ndarray
        int32 ``[P]`` pairs to visit, already shuffled by the caller.
    user_emb, item_emb : np.ndarray
        float32 C-contiguous ``[n, dim]`` tables, updated in place.
    user_acc, item_acc : np.ndarray
        float32 Adagrad accumulators, updated in place: the embeddings' shapes (element-wise
        Adagrad) or ``[n, 1]`` both (row-wise Adagrad: each row's accumulator gains the mean of
        ``g**2`` over the row, the step is ``lr * g / (sqrt(acc) + 1e-10)``).
    n_candidates, margin, lr, rank_weight, clip_norm : see above (``clip_norm <= 0``: no clipping).
    seed, epoch : int
        RNG stream key.
    block_size : int
        Pairs sampled together, against the same embeddings. Extra memory: ``O(block_size)``,
        ``O(n_users + n_items)`` integers and the positives bit-set (``<= BITSET_BUDGET_BYTES``).

    Returns
    -------
    loss_sum : float
        Sum of ``w * h`` over the pairs that were updated.
    n_active : int
        Number of pairs that were updated.
    """
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    ip, ix, pu, pi, bits = _prepare_epoch(indptr, indices, pair_users, pair_items, user_emb,
                                          item_emb, user_acc, item_acc, n_candidates)
    loss, active = _train_kernel(
        ip, ix, bits, pu, pi, user_emb, item_emb, user_acc, item_acc, np.int64(n_candidates),
        np.float32(margin), np.float32(lr), bool(rank_weight), np.float32(clip_norm),
        _stream_key(seed, epoch), np.int64(min(block_size, max(1, len(pu)))),
        np.int64(numba.get_num_threads()), np.int64(_BCHUNK),
    )
    return float(loss), int(active)


def train_epoch_hogwild(
    indptr: np.ndarray,
    indices: np.ndarray,
    pair_users: np.ndarray,
    pair_items: np.ndarray,
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    user_acc: np.ndarray,
    item_acc: np.ndarray,
    *,
    n_candidates: int,
    margin: float,
    lr: float,
    rank_weight: bool,
    clip_norm: float,
    seed: int,
    epoch: int,
) -> tuple[float, int]:
    """One lock-free (Hogwild) CML epoch: :func:`train_epoch`'s loss, sampler and clipping, but
    each pair is sampled against the current tables and updated at once.

    Threads claim chunks of pairs in order. For pair ``i`` a thread draws the same candidates as
    :func:`train_epoch` (``sample_uniform(..., pair_users, ..., seed=seed, offset=epoch)[i]``),
    picks the hardest ``n`` and counts the violators ``M`` against the tables as they are now,
    and if ``M > 0`` (so ``h > 0``) takes the Adagrad step on ``w * h`` and clips the three rows,
    without locks. On one thread (``numba.set_num_threads(1)``) this is plain sequential SGD with
    fresh negatives, hence deterministic; on more, threads race on shared rows (a lost or mixed
    update, a row briefly outside the ball), as in implicit's BPR or LightFM, so results vary from
    run to run. Same parameters and returns as :func:`train_epoch` (no ``block_size``).
    """
    ip, ix, pu, pi, bits = _prepare_epoch(indptr, indices, pair_users, pair_items, user_emb,
                                          item_emb, user_acc, item_acc, n_candidates)
    loss, active = _hogwild_kernel(
        ip, ix, bits, pu, pi, user_emb, item_emb, user_acc, item_acc, np.int64(n_candidates),
        np.float32(margin), np.float32(lr), bool(rank_weight), np.float32(clip_norm),
        _stream_key(seed, epoch), np.int64(numba.get_num_threads()), np.int64(_HCHUNK),
    )
    return float(loss), int(active)
