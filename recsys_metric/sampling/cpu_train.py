"""A fused CML training epoch on CPU, as numba kernels, on top of the :mod:`.cpu` sampler.

:func:`run_epoch` runs one CML epoch (hardest-of-U negative, WARP rank weight, Adagrad, clipping)
over pairs laid out once per fit by :func:`prepare_pairs` (:func:`train_epoch` does both, for a
single epoch), on accumulators from :func:`adagrad_accumulator`, in blocks of ``block_size``
pairs: (a) every pair's hardest negative against the tables as they are at the block start,
then (b) the updates in pair order, each hinge recomputed on the current rows. Negatives from
the block start, rather than drawn just before each update, gave better models on every
validation split (block 4096 vs 1: ml-latest-small NDCG@10 +11%, ml-100k +4%;
``experiments/results/cpu_training.md``).

Lanes run blocks in parallel on disjoint rows, as in stratified SGD for matrix factorisation
(DSGD; the epoch's plan and the stratum draw are in :mod:`.strata`): users are split into
``lanes`` contiguous ranges, and each epoch the items into ``lanes`` random strata, both of about
equal numbers of pairs. Lane ``l``'s pairs whose positive lies in stratum ``s`` form bucket ``(l,
s)``; at step ``t`` every lane takes the next block of its bucket with ``s = (l + t) % lanes``
and draws that block's candidates from stratum ``s`` only. The lanes of a step read and write
disjoint user rows and disjoint item rows: no copies, no merges, no locks, and the result
depends on ``lanes``, never on the threads (bit-identical on any number). Rotating the strata
every block, rather than running a whole bucket per round, kept ml-latest-small at one lane's
validation quality (a round per bucket lost 8% NDCG@10 there); over 20 seeds two lanes are
within noise of one (``cpu_training.md``). Earlier designs, measured and dropped: Hogwild
threads on shared tables (3x the cost per update on 2 threads, the popular items' cache lines
moving between cores) and lanes with private item copies merged after each block (the merges
cost as much as the updates on an ML-1M-sized catalogue).

One lane is the plain sequential loop: the whole catalogue, every block scored by all threads,
then updated in order. With ``shuffle`` the kernel draws the epoch's blocks itself (each a
random sample of its bucket, visited in the caller's order; built in parallel) instead of taking
the caller's order as it is.

numba is imported behind a guard (see :mod:`._numba_ops`): without it this module still imports
and :func:`train_epoch` raises ``ImportError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from ..losses import rules
from ._numba_ops import (
    _PAR,
    _atomic_add,
    _atomic_load,
    _prefetch_nta,
    _prefetch_row,
    _prefetch_row_nta,
    _require_numba,
    _stream_key,
    _triplet_rows,
    _yield,
    njit,
    numba,
    prange,
)
from .cpu import _score_sampled, _sqdist
from .strata import EpochPairs, _score_stratum, plan_epoch, prepare_pairs

_triplet32, _triplet64, _triplet128 = (_triplet_rows(d) for d in (32, 64, 128))


@njit(inline="always")
def _on(x):
    return (x > 0) * np.float32(1.0)


# the losses and the WARP weight, compiled from the rules the torch loop runs
_RULES = rules(SimpleNamespace(exp=np.exp, log=np.log, total=np.sum, top=np.max,
                               larger=np.maximum, on=_on))
_triplet, _rank_weight, _contrastive, _softmax = (
    njit(inline="always")(f) for f in (_RULES.triplet, _RULES.rank_weight, _RULES.contrastive,
                                       _RULES.softmax))
_PREFETCH = 3  # pairs ahead whose rows the updates prefetch (2: -2.5% with the vector update)
_GATHER_AHEAD = 4  # pairs ahead whose record the scoring prefetches
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
    # lr * g / (sqrt(a) + eps) as lr * g * rsqrt(a + eps**2): LLVM then emits the approximate
    # reciprocal square root with a Newton step in place of a square root and a division (the
    # same step to float precision; epochs 3-6% faster)
    eps2 = eps * eps
    for d in range(g.shape[0]):
        a = acc[r, d] + g[d] * g[d]
        acc[r, d] = a
        x = emb[r, d] - lr * g[d] * (np.float32(1.0) / np.sqrt(a + eps2))
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
def _step(u, p, n, w, user_emb, item_emb, user_acc, item_acc, margin, lr, clip_norm, grad):
    """One step of the triplet rule (``losses.rules``) on the current rows: if its coefficient
    ``c = dl/dd(u,p) = -dl/dd(u,n)`` is nonzero, Adagrad on the rows ``u``, ``p``, ``n`` by ``c``
    times the squared distances' gradients, then clipping; returns the loss (0: no step)."""
    value, c, _ = _triplet(_sqdist(user_emb, u, item_emb, p), _sqdist(user_emb, u, item_emb, n),
                           w, margin)
    if c == 0:
        return np.float32(0.0)
    eps = np.float32(1e-10)
    w2 = np.float32(2.0 * c)
    dim = user_emb.shape[1]
    if user_acc.shape[1] == dim and (dim == 32 or dim == 64 or dim == 128):
        # element-wise Adagrad at the usual widths: the same steps as vector code
        rows = (user_emb, user_acc, u, item_emb, item_acc, p, item_emb, item_acc, n, w2, lr,
                eps * eps, clip_norm)
        if dim == 64:
            _triplet64(*rows)
        elif dim == 32:
            _triplet32(*rows)
        else:
            _triplet128(*rows)
        return value
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
    return value


@njit(inline="always")
def _scratch(n_lanes, rows, cols, dtype):
    """Per-lane ``[rows, cols]`` scratch, ``out[lane]``, with >= 64 bytes between two lanes' rows.

    Without the padding, the line at the boundary of two lanes' blocks, which run on different
    threads, is written by both on every update (false sharing).
    """
    pad = (64 + cols * 4 - 1) // (cols * 4)  # rows of >= 4-byte items: >= 64 bytes
    return np.empty((n_lanes, rows + pad, cols), dtype=dtype)


@njit(inline="always")
def _rank_weights(n_items, n_cand, rank_weight):
    """w = log(1 + floor(n_items * M / U)) takes only U + 1 values: tabulate, no log per update."""
    weights = np.ones(n_cand + 1, dtype=np.float32)
    if rank_weight:
        for m in range(n_cand + 1):
            weights[m] = np.float32(_rank_weight(np.int64(m), np.int64(n_cand), np.int64(n_items)))
    return weights


@njit(inline="always")
def _score_pairs(indptr, indices, bits, pairs, order, lo, hi, user_emb, item_emb, n_cand, margin,
                 key, items, item_ptr, sptr, spos, s, neg, viol, block_pairs, hashes):
    """(a) Hardest negative and violator count of the pairs ``order[lo:hi]``, into ``neg[k -
    lo]`` / ``viol[k - lo]``, against the tables as they are (the block start); candidates from
    the whole catalogue with one lane (``bits`` by user), else from stratum ``s`` (``bits`` by
    user and stratum). The pairs themselves are gathered into ``block_pairs`` for (b)."""
    L = item_ptr.shape[0] - 1
    for k in range(lo, hi):
        # the next records and bit rows are read once: non-temporal prefetches, which leave
        # L2 to the item rows (+2% on two threads, same tables)
        if k + _GATHER_AHEAD < hi:  # a record of the pairs: start loading it now
            _prefetch_nta(pairs, order[k + _GATHER_AHEAD], 0)
        if k + 1 < hi:
            g1 = order[k + 1]
            un = pairs[g1, 0]
            _prefetch_row(user_emb, un)
            _prefetch_row(item_emb, pairs[g1, 1])
            if bits.shape[0] > 0:
                _prefetch_row_nta(bits, un if L == 1 else un * L + s)
        g = order[k]
        u, p = pairs[g, 0], pairs[g, 1]
        block_pairs[k - lo, 0], block_pairs[k - lo, 1] = u, p
        ctr0 = np.uint64(g) * np.uint64(n_cand)
        if L == 1:
            neg[k - lo], viol[k - lo] = _score_sampled(
                indptr, indices, bits, user_emb, item_emb, u, p, n_cand, margin, key, ctr0)
        else:
            neg[k - lo], viol[k - lo] = _score_stratum(
                bits, user_emb, item_emb, u, p, n_cand, margin, key, ctr0, items, item_ptr[s],
                item_ptr[s + 1], sptr, spos, s, hashes)


# Full fastmath here only: it lets LLVM turn the Adagrad step's divisions and square roots into
# approximate reciprocals refined by a Newton step (Adagrad row 24 -> 15 ns); embeddings are
# finite in any sane run. The scoring keeps inf semantics (and measured 25% slower when compiled
# under full fastmath).
# _nrt=False: no reference counting in here (nothing is allocated). When _step was its own
# function, each call increfed and decrefed the five arrays it was passed: ten atomic operations
# per pair on counters both threads write. Without them two threads ran 9% faster (same tables).
@njit(fastmath=True, error_model="numpy", cache=True, _nrt=False)
def _update_block(block_pairs, n_pairs, user_emb, user_acc, item_emb, item_acc, margin, lr,
                  clip_norm, weights, grad, neg, viol):
    """(b) The updates of the block's pairs ``block_pairs[:n_pairs]``, in order, each hinge
    recomputed on the current rows."""
    loss = 0.0
    active = 0
    for k in range(n_pairs):
        a = k + _PREFETCH  # the six rows of a later pair are random L2/L3 reads: start now
        if a < n_pairs and viol[a] > 0 and neg[a] >= 0:
            _prefetch_row(user_emb, block_pairs[a, 0])
            _prefetch_row(user_acc, block_pairs[a, 0])
            _prefetch_row(item_emb, block_pairs[a, 1])
            _prefetch_row(item_acc, block_pairs[a, 1])
            _prefetch_row(item_emb, neg[a])
            _prefetch_row(item_acc, neg[a])
        m, n = viol[k], neg[k]
        if m > 0 and n >= 0:
            value = _step(block_pairs[k, 0], block_pairs[k, 1], n, weights[m], user_emb,
                          item_emb, user_acc, item_acc, margin, lr, clip_norm, grad)
            if value > 0:
                loss += value
                active += 1
    return loss, active


@njit(inline="always")
def _wait(ctl, field, value):
    while _atomic_load(ctl, field) < value:
        _yield()


@njit(**_PAR)
def _train_kernel(indptr, indices, pairs, order, bucket_ptr, items, item_ptr, sptr, spos, bits,
                  user_emb, user_acc, item_emb, item_acc, n_cand, margin, lr, rank_weight,
                  clip_norm, key, block, n_tasks, t_lo, t_hi):
    """Steps ``t_lo`` to ``t_hi`` (excluded) of (a) scoring and (b) updates, one block per lane
    and step.

    ``L`` > 1 lanes: at step ``t`` lane ``l`` takes block ``t // L`` of its bucket of stratum
    ``(l + t) % L``: the lanes of a step touch disjoint user rows and disjoint item rows, so
    they run in parallel unsynchronised, and the result cannot depend on the threads. One
    lane: step ``t`` is block ``t`` of all the pairs, over the whole catalogue, its scoring
    shared by all threads in chunks, then its updates in order.

    ``n_tasks`` persistent tasks (one per thread) claim work with atomic counters and wait,
    yielding their core, only for work another task has claimed: no thread count can
    deadlock, and none changes the result. (One parallel region per epoch: a region per step
    paid the threads' wake-up at every block.)
    """
    L = item_ptr.shape[0] - 1
    n_items, dim = item_emb.shape
    weights = _rank_weights(n_items, n_cand, rank_weight)
    pad = 16  # >= 64 bytes between two lanes' scratch rows
    neg = np.empty((L, block + pad), np.int64)
    viol = np.empty((L, block + pad), np.int32)
    block_pairs = _scratch(L, block, 2, np.int32)
    hashes = _scratch(L, 1, n_cand, np.uint64)  # the draws' first hashes, per pair
    grad = _scratch(L, 3, dim, np.float32)
    lane_loss = np.zeros((L, 8))
    lane_active = np.zeros((L, 8), np.int64)
    n_blocks = 0  # per bucket, at most
    for b in range(L * L):
        n_blocks = max(n_blocks, (bucket_ptr[b + 1] - bucket_ptr[b] + block - 1) // block)
    n_steps = min(n_blocks * L, t_hi)
    n_chunks = (block + _CHUNK - 1) // _CHUNK if L == 1 else 0  # (a) claims per step, one lane
    # per step: chunks claimed, done; lanes claimed, done
    ctl = np.zeros((max(n_steps, 1), 8), np.int64)
    for _task in prange(n_tasks):
        for t in range(t_lo, n_steps):
            lo0 = t * block  # one lane: the step's pairs
            hi0 = min(lo0 + block, bucket_ptr[1])
            while True:  # (a), one lane: chunks of the block, by any task
                c = _atomic_add(ctl[t], 0, 1)
                if c >= n_chunks:
                    break
                lo = min(lo0 + c * _CHUNK, hi0)
                _score_pairs(indptr, indices, bits, pairs, order, lo, min(lo + _CHUNK, hi0),
                             user_emb, item_emb, n_cand, margin, key, items, item_ptr, sptr, spos,
                             0, neg[0, lo - lo0:], viol[0, lo - lo0:],
                             block_pairs[0, lo - lo0:], hashes[0, 0])
                _atomic_add(ctl[t], 1, 1)
            _wait(ctl[t], 1, n_chunks)
            while True:  # (b): lanes, by any task
                lane = _atomic_add(ctl[t], 2, 1)
                if lane >= L:
                    break
                s = (lane + t) % L
                b = lane * L + s
                lo = bucket_ptr[b] + (t // L) * block if L > 1 else lo0
                hi = min(lo + block, bucket_ptr[b + 1])
                if lo < hi:
                    if L > 1:
                        _score_pairs(indptr, indices, bits, pairs, order, lo, hi, user_emb,
                                     item_emb, n_cand, margin, key, items, item_ptr, sptr, spos,
                                     s, neg[lane], viol[lane], block_pairs[lane],
                                     hashes[lane, 0])
                    loss, active = _update_block(block_pairs[lane], hi - lo, user_emb, user_acc,
                                                 item_emb, item_acc, margin, lr, clip_norm,
                                                 weights, grad[lane], neg[lane], viol[lane])
                    lane_loss[lane, 0] += loss
                    lane_active[lane, 0] += active
                _atomic_add(ctl[t], 3, 1)
            _wait(ctl[t], 3, L)
    return lane_loss[:, 0].sum(), lane_active[:, 0].sum()


# ------------------------------------------------------------------------------- public API


def adagrad_accumulator(emb: np.ndarray, rowwise: bool = False) -> np.ndarray:
    """Zeroed float32 Adagrad accumulator for table ``emb``: ``emb``'s shape, or ``[n, 1]``
    with ``rowwise``. 64-byte aligned (two lanes' rows never share a cache line when the
    table's rows are whole lines) and half a page (2 KB, modulo 4 KB) away from ``emb``: with
    every table at one offset within a page, as fresh allocations are, epochs ran 3-6% slower
    on two threads (``cpu_training.md``)."""
    shape = (emb.shape[0], 1 if rowwise else emb.shape[1])
    nbytes = shape[0] * shape[1] * 4
    buf = np.zeros(nbytes + 4096, np.uint8)  # calloc'd: the pages are zeroed on first touch
    target = (emb.ctypes.data + 2048) % 4096 // 64 * 64  # offset within a page
    start = (target - buf.ctypes.data) % 4096
    return buf[start:start + nbytes].view(np.float32).reshape(shape)


def train_epoch(
    indptr: np.ndarray,
    indices: np.ndarray,
    pair_users: np.ndarray,
    pair_items: np.ndarray,
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    user_acc: np.ndarray,
    item_acc: np.ndarray,
    **kwargs,
) -> tuple[float, int]:
    """One CML epoch over ``(pair_users[i], pair_items[i])``, in place: :func:`run_epoch` on
    ``prepare_pairs(indptr, indices, pair_users, pair_items, n_users, n_items)``. A loop over
    epochs should prepare the pairs once and call :func:`run_epoch` (as the Trainer does).

    ``indptr``, ``indices``: int64 / int32 CSR of the training positives, sorted within each
    row; ``pair_users``, ``pair_items``: int32 ``[P]`` pairs to visit (in the order to visit
    them, unless ``shuffle``). The rest: see :func:`run_epoch`.
    """
    _require_numba()
    _check_tables(user_emb, item_emb, user_acc, item_acc)
    pairs = prepare_pairs(indptr, indices, pair_users, pair_items, user_emb.shape[0],
                          item_emb.shape[0])
    return run_epoch(pairs, user_emb, item_emb, user_acc, item_acc, **kwargs)


def _check_tables(user_emb, item_emb, user_acc, item_acc) -> None:
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


def run_epoch(
    pairs: EpochPairs,
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
    shuffle: bool = False,
    syncs: int = 1,
    sync: Callable[[], None] | None = None,
) -> tuple[float, int]:
    """One CML epoch over the prepared pairs (:func:`prepare_pairs`), in place.

    The pairs are visited in lanes, buckets and blocks as the module docstring says; for the
    pair at position ``i`` of the caller's arrays: (a) candidates ``sample_uniform(...,
    pair_users, ..., seed=seed, offset=epoch)[i]`` with one lane, else
    ``stratum_candidates(...)[i]`` (uniform over the user's non-positives in the positive's
    stratum); the hardest ``n`` and the violator count ``M`` against the tables at the block
    start; (b) in order, skip if ``M == 0`` or ``n == -1``, weight ``w = log(1 + floor(n_items
    * M / U))`` (or 1), recompute ``h = margin + d(u,p) - d(u,n)`` on the current rows, skip if
    ``h <= 0``, else one Adagrad step on ``w * h`` for the rows ``u``, ``p``, ``n`` and clipping
    to ``clip_norm``. Bit-identical for given ``seed``, ``epoch``, ``lanes`` and ``shuffle``
    whatever the number of threads.

    Parameters
    ----------
    pairs : EpochPairs
        The pairs and positives, from :func:`prepare_pairs`.
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
        Parallel streams over disjoint users and item strata (one per thread is fastest; at
        most ``n_items`` are used).
    block_size : int
        Pairs per lane whose negatives are drawn against the same tables.
    shuffle : bool
        Draw each block as a random sample of its bucket's pairs, from ``(seed, epoch)``, and
        visit it in the caller's order (the Trainer's choice; see ``strata._visit_order``),
        rather than cutting the caller's order into blocks as it is.
    syncs, sync : int, callable
        The epoch's steps are run in ``syncs`` ranges of about equal length (:func:`step_bounds`),
        ``sync()`` called after each (data-parallel training merges the item rows there,
        :mod:`recsys_metric.distributed`). The ranges alone change nothing: the same tables.

    Extra memory: the visiting order (4 B per pair), the positives by stratum (exact bit rows
    of at most ``BITSET_BUDGET_BYTES``, else 4 B per positive plus their filters, again at most
    ``BITSET_BUDGET_BYTES``: ``strata.stratum_rows``) and ``O(lanes * block_size)``, whatever U
    and dim.

    Returns
    -------
    loss_sum : float
        Sum of ``w * h`` over the pairs that were updated.
    n_active : int
        Number of pairs that were updated.
    """
    _require_numba()
    _check_tables(user_emb, item_emb, user_acc, item_acc)
    if user_emb.shape[0] != pairs.n_users or item_emb.shape[0] != pairs.n_items:
        raise ValueError(f"tables of {user_emb.shape[0]} users and {item_emb.shape[0]} items, "
                         f"pairs of {pairs.n_users} and {pairs.n_items}")
    if n_candidates < 1:
        raise ValueError("n_candidates must be >= 1")
    if lanes < 1 or block_size < 1:
        raise ValueError("lanes and block_size must be >= 1")
    key = _stream_key(seed, epoch)
    block = min(block_size, max(1, len(pairs)))
    plan = plan_epoch(pairs, lanes, key, bool(shuffle), block, len(pairs) * n_candidates)
    loss, active = 0.0, 0
    bounds = step_bounds(plan[1], block, syncs)
    for t_lo, t_hi in zip(bounds[:-1], bounds[1:], strict=True):
        part = _train_kernel(
            pairs.indptr, pairs.indices, pairs.pairs, *plan, user_emb, user_acc, item_emb,
            item_acc, np.int64(n_candidates), np.float32(margin), np.float32(lr),
            bool(rank_weight), np.float32(clip_norm), key, np.int64(block),
            np.int64(numba.get_num_threads()), np.int64(t_lo), np.int64(t_hi),
        )
        loss, active = loss + float(part[0]), active + int(part[1])
        if sync is not None:
            sync()
    return loss, active


def step_bounds(bucket_ptr: np.ndarray, block: int, parts: int) -> list[int]:
    """The steps of an epoch planned into buckets ``bucket_ptr`` (``lanes**2`` of them, each
    run ``block`` pairs per step, the lanes' blocks of a step in parallel) cut into ``parts``
    ranges of about equal length: ``parts + 1`` bounds."""
    if parts < 1:
        raise ValueError(f"syncs must be >= 1, got {parts}")
    lanes = math.isqrt(len(bucket_ptr) - 1)
    n_steps = -(-int(np.diff(bucket_ptr).max(initial=0)) // block) * lanes
    return [n_steps * k // parts for k in range(parts + 1)]
