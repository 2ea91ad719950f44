"""A fused CML training epoch on CPU, as numba kernels, on top of the :mod:`.cpu` sampler.

:func:`train_epoch` runs one CML epoch (hardest-of-U negative, WARP rank weight, Adagrad, clipping)
in blocks of ``block_size`` pairs: (a) every pair's hardest negative against the tables as they
are at the block start, scored in parallel, then (b) the updates in pair order, each hinge
recomputed on the current rows. Negatives from the block start, rather than drawn just before
each update, gave better models on every validation split (block 4096 vs 1: ml-latest-small
NDCG@10 +11%, ml-100k +4%; ``experiments/results/cpu_training.md``).

Phase (b) is sequential within a lane. Users are split into ``lanes`` contiguous ranges with
about equal numbers of pairs; a lane takes its users' pairs in the caller's order, blocks of
``block_size`` each, writing the user table directly (no other lane has those rows) and its own
copy of the item table; after each block, an item row changed by one lane takes that lane's
row, one changed by several takes the mean of their changes (their Adagrad accumulators the
sum), clipped again, and all copies continue from there. Two lanes on 2 threads: 1.1-1.2x one
lane, and as good on validation over 7 seeds; summing the changes instead cost 2-10% NDCG@10
(``cpu_training.md``). Lock-free threads on one shared table (Hogwild, as implicit's BPR; an
earlier option here) spent most of their time moving the popular items' cache lines between the
cores: 3x the cost per update on 2 threads. The result depends on ``lanes``, never on the number
of threads: it is bit-identical on any.

numba is imported behind a guard (see :mod:`._numba_ops`): without it this module still imports
and :func:`train_epoch` raises ``ImportError``.
"""

from __future__ import annotations

import numpy as np

from ._numba_ops import (
    _PAR,
    _atomic_add,
    _atomic_load,
    _prefetch_row,
    _require_numba,
    _stream_key,
    _yield,
    njit,
    numba,
    prange,
)
from .cpu import _bits, _check_catalogue, _check_ids, _prefetch_pair, _score_sampled, _sqdist

_MERGE_PIECE = 256  # dirty-list entries per claim in a merge
_PREFETCH = 2  # pairs ahead whose rows the updates prefetch
_CHUNK = 64  # pairs per claim in the scoring phase

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


# Full fastmath here only: it turns the Adagrad division into a refined reciprocal (Adagrad row
# 24 -> 15 ns); embeddings are finite in any sane run. The scoring keeps inf semantics (and
# measured 25% slower when compiled under full fastmath).
@njit(fastmath=True, error_model="numpy", cache=True)
def _step(u, p, n, w, user_emb, item_emb, user_acc, item_acc, margin, lr, clip_norm, grad):
    """One triplet step on ``w * h`` (Adagrad on the rows ``u``, ``p``, ``n``, then clipping) if
    ``h = margin + d(u,p) - d(u,n)`` on the current rows is positive; returns ``h`` or 0."""
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


@njit(inline="always")
def _scratch(n_tasks, rows, cols, dtype):
    """Per-thread ``[rows, cols]`` scratch, ``out[t]``, with >= 64 bytes between two threads' rows.

    Without the padding, the line at the boundary of two threads' blocks is written by both on
    every update (false sharing).
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


@njit(cache=True)
def _lane_order(pair_users, n_users, lanes):
    """``(order, lane_ptr)``: pair positions grouped by lane, in the caller's order within one.

    Lane ``l`` holds the users of the ``l``-th contiguous range with about ``P / lanes`` pairs
    (contiguous, so two lanes' user rows share no cache line but at a boundary).
    """
    count = np.zeros(n_users + 1, np.int64)
    for u in pair_users:
        count[u + 1] += 1
    for u in range(n_users):
        count[u + 1] += count[u]
    lane_of = np.empty(n_users, np.int64)
    n = pair_users.shape[0]
    for u in range(n_users):  # the lane holding the pair at the user's median position
        lane_of[u] = min(lanes - 1, ((count[u] + count[u + 1]) // 2 * lanes) // max(n, 1))
    lane_ptr = np.zeros(lanes + 1, np.int64)
    for u in pair_users:
        lane_ptr[lane_of[u] + 1] += 1
    for lane in range(lanes):
        lane_ptr[lane + 1] += lane_ptr[lane]
    fill = lane_ptr[:-1].copy()
    order = np.empty(n, np.int64)
    for g in range(n):
        lane = lane_of[pair_users[g]]
        order[fill[lane]] = g
        fill[lane] += 1
    return order, lane_ptr


@njit(inline="always")
def _mark(stamp, dirty, n_dirty, r, s):
    """Record that this lane changed item row ``r`` in the block stamped ``s``."""
    if stamp[r] != s:
        stamp[r] = s
        dirty[n_dirty[0]] = r
        n_dirty[0] += 1


@njit(inline="always")
def _score_chunk(indptr, indices, bits, pair_users, pair_items, order, lo, hi, user_emb,
                 item_emb, n_cand, margin, key, neg, viol):
    """(a) Hardest negative and violator count of the pairs ``order[lo:hi]`` of one lane, into
    ``neg[k - lo]`` / ``viol[k - lo]``, against the tables as they are (the block start)."""
    for k in range(lo, hi):
        g = order[k]
        if k + 1 < hi:
            _prefetch_pair(bits, user_emb, item_emb, pair_users[order[k + 1]],
                           pair_items[order[k + 1]])
        neg[k - lo], viol[k - lo] = _score_sampled(
            indptr, indices, bits, user_emb, item_emb, pair_users[g], pair_items[g], n_cand,
            margin, key, np.uint64(g) * np.uint64(n_cand))


@njit(inline="always")
def _update_block(pair_users, pair_items, order, lo, hi, user_emb, user_acc, item_emb, item_acc,
                  margin, lr, clip_norm, weights, grad, neg, viol, stamp, dirty, n_dirty, s,
                  track):
    """(b) The updates of the pairs ``order[lo:hi]`` of one lane, in order, each hinge
    recomputed on the current rows; records the item rows changed when ``track``."""
    loss = 0.0
    active = 0
    for k in range(lo, hi):
        a = k + _PREFETCH - lo  # the six rows of a later pair are random L2/L3 reads: start now
        if a < hi - lo and viol[a] > 0 and neg[a] >= 0:
            g = order[lo + a]
            _prefetch_row(user_emb, pair_users[g])
            _prefetch_row(user_acc, pair_users[g])
            _prefetch_row(item_emb, pair_items[g])
            _prefetch_row(item_acc, pair_items[g])
            _prefetch_row(item_emb, neg[a])
            _prefetch_row(item_acc, neg[a])
        m, n = viol[k - lo], neg[k - lo]
        if m > 0 and n >= 0:
            g = order[k]
            u, p = pair_users[g], pair_items[g]
            h = _step(u, p, n, weights[m], user_emb, item_emb, user_acc, item_acc, margin, lr,
                      clip_norm, grad)
            if h > 0:
                loss += weights[m] * h
                active += 1
                if track:
                    _mark(stamp, dirty, n_dirty, np.int64(p), s)
                    _mark(stamp, dirty, n_dirty, n, s)
    return loss, active


@njit(inline="always")
def _merge_row(r, first, s, stamp, item_emb, item_acc, lane_emb, lane_acc, clip_norm):
    """Item row ``r``, changed in block ``s`` by lane ``first`` and maybe later lanes: master
    (``item_*``, still the block-start row) gains the mean of the lanes' changes to the row and
    the sum of their changes to its accumulator, then all copies get it."""
    L = lane_emb.shape[0]
    dim, cols = item_emb.shape[1], item_acc.shape[1]
    alone = True
    for lane in range(first + 1, L):
        if stamp[lane, r] == s:
            alone = False
    if alone:  # the usual case for rare items: a copy, bit-exact
        for d in range(dim):
            item_emb[r, d] = lane_emb[first, r, d]
        for d in range(cols):
            item_acc[r, d] = lane_acc[first, r, d]
    else:
        sq = np.float32(0.0)
        cnt = np.float32(1.0)  # lanes that changed the row
        for lane in range(first + 1, L):
            if stamp[lane, r] == s:
                cnt += np.float32(1.0)
        for d in range(dim):
            base = item_emb[r, d]
            x = lane_emb[first, r, d] - base
            for lane in range(first + 1, L):
                if stamp[lane, r] == s:
                    x += lane_emb[lane, r, d] - base
            x = base + x / cnt
            item_emb[r, d] = x
            sq += x * x
        _clip_row(item_emb, r, sq, clip_norm)
        for d in range(cols):
            base = item_acc[r, d]
            x = lane_acc[first, r, d]
            for lane in range(first + 1, L):
                if stamp[lane, r] == s:
                    x += lane_acc[lane, r, d] - base
            item_acc[r, d] = x
    for lane in range(L):
        if alone and lane == first:
            continue
        for d in range(dim):
            lane_emb[lane, r, d] = item_emb[r, d]
        for d in range(cols):
            lane_acc[lane, r, d] = item_acc[r, d]


@njit(inline="always")
def _wait(ctl, field, value):
    while _atomic_load(ctl, field) < value:
        _yield()


@njit(**_PAR)
def _train_kernel(indptr, indices, bits, pair_users, pair_items, order, lane_ptr, user_emb,
                  user_acc, item_emb, item_acc, lane_emb, lane_acc, n_cand, margin, lr,
                  rank_weight, clip_norm, key, block, n_tasks):
    """Per block: (a) the lanes' pairs scored, in chunks, (b) each lane's updates, (c) the merge
    of the item rows the lanes changed.

    ``lane_emb`` / ``lane_acc``: the lanes' item copies ``[L, n_items, *]``; with one lane, views
    of the master tables themselves (updated in place, no merge). Threads claim work (a chunk of
    pairs, a lane's updates, a piece of a lane's list of changed rows) with atomic counters and
    wait, yielding their core, only for work another thread has claimed: no thread count can
    deadlock, and none changes the result, since a lane's updates and a row's merge read only
    the lanes' own copies, in lane order. With fewer lanes than threads the scoring still uses
    every thread.
    """
    L = lane_ptr.shape[0] - 1
    n_items, dim = item_emb.shape
    track = L > 1
    if track:
        for lane in prange(L):
            lane_emb[lane] = item_emb
            lane_acc[lane] = item_acc
    n_blocks = 0
    for lane in range(L):
        n_blocks = max(n_blocks, (lane_ptr[lane + 1] - lane_ptr[lane] + block - 1) // block)
    n_chunks = (block + _CHUNK - 1) // _CHUNK  # (a) claims per lane and block
    stamp = np.zeros((L, n_items if track else 1), np.int64)  # block j + 1: changed in j
    neg = np.empty((L, block), np.int64)
    viol = np.empty((L, block), np.int32)
    dirty = np.empty((L, 2 * block), np.int64)
    n_dirty = np.zeros((L, 8), np.int64)  # [lane, 0]; a line per lane: no false sharing
    grad = _scratch(n_tasks, 3, dim, np.float32)
    weights = _rank_weights(n_items, n_cand, rank_weight)
    lane_loss = np.zeros((L, 8))
    lane_active = np.zeros((L, 8), np.int64)
    # per block: -, chunks done; lanes claimed, done; pieces claimed, done; pieces + 1
    ctl = np.zeros((n_blocks, 8), np.int64)
    claims = np.zeros((n_blocks, L, 8), np.int64)  # chunks claimed per block and lane
    for t in prange(n_tasks):
        for j in range(n_blocks):
            for i in range(L):  # (a), own lane first: its copy is in this core's cache
                lane = (t + i) % L
                while True:
                    c = _atomic_add(claims[j, lane], 0, 1)
                    if c >= n_chunks:
                        break
                    start = min(lane_ptr[lane] + j * block, lane_ptr[lane + 1])
                    lo = min(start + c * _CHUNK, lane_ptr[lane + 1])
                    hi = min(lo + _CHUNK, start + block, lane_ptr[lane + 1])
                    _score_chunk(indptr, indices, bits, pair_users, pair_items, order, lo, hi,
                                 user_emb, lane_emb[lane], n_cand, margin, key,
                                 neg[lane, lo - start:], viol[lane, lo - start:])
                    _atomic_add(ctl[j], 1, 1)
            _wait(ctl[j], 1, L * n_chunks)
            while True:  # (b)
                lane = _atomic_add(ctl[j], 2, 1)
                if lane >= L:
                    break
                lo = min(lane_ptr[lane] + j * block, lane_ptr[lane + 1])
                hi = min(lo + block, lane_ptr[lane + 1])
                n_dirty[lane, 0] = 0
                loss, active = _update_block(
                    pair_users, pair_items, order, lo, hi, user_emb, user_acc, lane_emb[lane],
                    lane_acc[lane], margin, lr, clip_norm, weights, grad[t], neg[lane],
                    viol[lane], stamp[lane], dirty[lane], n_dirty[lane], j + 1, track)
                lane_loss[lane, 0] += loss
                lane_active[lane, 0] += active
                if _atomic_add(ctl[j], 3, 1) == L - 1 and track:  # the last lane: count pieces
                    total = 0
                    for other in range(L):
                        total += (n_dirty[other, 0] + _MERGE_PIECE - 1) // _MERGE_PIECE
                    _atomic_add(ctl[j], 6, total + 1)  # published once: a late thread reads
                    # this, not n_dirty, which block j + 1 may already be refilling
            _wait(ctl[j], 3, L)
            if not track:
                continue
            _wait(ctl[j], 6, 1)  # (c) pieces of the lanes' lists of changed rows, in lane order
            total = _atomic_load(ctl[j], 6) - 1
            while True:
                c = _atomic_add(ctl[j], 4, 1)
                if c >= total:
                    break
                lane = 0
                while c >= (n_dirty[lane, 0] + _MERGE_PIECE - 1) // _MERGE_PIECE:
                    c -= (n_dirty[lane, 0] + _MERGE_PIECE - 1) // _MERGE_PIECE
                    lane += 1
                for k in range(c * _MERGE_PIECE, min(n_dirty[lane, 0], (c + 1) * _MERGE_PIECE)):
                    r = dirty[lane, k]
                    first = True  # merged once, by the first lane that changed it
                    for other in range(lane):
                        if stamp[other, r] == j + 1:
                            first = False
                    if first:
                        _merge_row(r, lane, j + 1, stamp, item_emb, item_acc, lane_emb, lane_acc,
                                   clip_norm)
                _atomic_add(ctl[j], 5, 1)
            _wait(ctl[j], 5, total)
    return lane_loss[:, 0].sum(), lane_active[:, 0].sum()


# ------------------------------------------------------------------------------- public API


def _aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """float32 array whose rows start on 64-byte lines (a dim-64 row is 4 whole lines)."""
    n = int(np.prod(shape))
    buf = np.empty(n + 16, np.float32)
    start = (-buf.ctypes.data % 64) // 4
    return buf[start:start + n].reshape(shape)


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
    lanes: int = 1,
    block_size: int = 4096,
) -> tuple[float, int]:
    """One CML epoch over ``(pair_users[i], pair_items[i])``, in place.

    Each lane (see the module docstring) takes its pairs in order, in blocks of ``block_size``:
    (a) for each pair ``i`` the candidates ``sample_uniform(..., pair_users, ..., seed=seed,
    offset=epoch)[i]``, the hardest ``n`` and the violator count ``M`` against the block-start
    tables; (b) in order, skip if ``M == 0`` or ``n == -1``, weight ``w = log(1 + floor(n_items *
    M / U))`` (or 1), recompute ``h = margin + d(u,p) - d(u,n)`` on the current rows, skip if
    ``h <= 0``, else one Adagrad step on ``w * h`` for the rows ``u``, ``p``, ``n`` and clipping
    to ``clip_norm``. After each block the lanes' item changes are merged into the master table
    (a row changed by several lanes: the mean of their changes, clipped again, its accumulator
    the sum) and shared. Bit-identical for given ``seed`` and ``lanes`` whatever the number of
    threads.

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
    lanes : int
        Parallel streams over disjoint users (one per thread is fastest). Extra memory:
        ``lanes`` copies of ``item_emb`` and ``item_acc`` (none for one lane).
    block_size : int
        Pairs per lane whose negatives are drawn against the same tables; the lanes merge
        after each block. Extra memory ``O(lanes * block_size)``, ``O(lanes * n_items)``
        integers and the positives bit-set (``<= BITSET_BUDGET_BYTES``).

    Returns
    -------
    loss_sum : float
        Sum of ``w * h`` over the pairs that were updated.
    n_active : int
        Number of pairs that were updated.
    """
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
    if lanes < 1 or block_size < 1:
        raise ValueError("lanes and block_size must be >= 1")
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
    order, lane_ptr = _lane_order(pu, np.int64(user_emb.shape[0]), np.int64(lanes))
    if lanes == 1:  # the lane works on the master tables
        lane_emb, lane_acc = item_emb[None], item_acc[None]
    else:
        lane_emb = _aligned_empty((lanes, *item_emb.shape))
        lane_acc = _aligned_empty((lanes, *item_acc.shape))
    loss, active = _train_kernel(
        ip, ix, bits, pu, pi, order, lane_ptr, user_emb, user_acc, item_emb, item_acc, lane_emb,
        lane_acc, np.int64(n_candidates), np.float32(margin), np.float32(lr), bool(rank_weight),
        np.float32(clip_norm), _stream_key(seed, epoch),
        np.int64(min(block_size, max(1, len(pu)))), np.int64(numba.get_num_threads()),
    )
    return float(loss), int(active)
