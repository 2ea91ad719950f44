"""Negative sampling and a fused CML training epoch on CPU, as numba kernels.

Same semantics as :mod:`recsys_metric.sampling.reference` (read its docstring), with three CPU
specifics:

- **Counter-based RNG.** Candidate ``c`` of row ``b`` comes from the hash
  ``splitmix64(stream(seed, offset) + (b * U + c + 1) * golden)``: no generator state, so results
  are reproducible and do not depend on the number of threads or on how rows are chunked.
- **Draw.** Up to ``_TRIES`` rejection draws of an item uniform over the whole catalogue (tested
  against a bit-set of the positives when it fits ``BITSET_BUDGET_BYTES``, else by binary search
  in the row: same answer, only speed differs), then the reference's rejection-free map (``j``
  uniform in ``[0, n_items - deg)``, ``j + #{k : p_k - k <= j}``). Each stage is exactly uniform
  over the non-positives, so the mixture is too; the bit-set makes a typical draw ~5x cheaper
  than the binary search, and the fallback bounds the cost for users with almost every item.
  Hashes map to ranges by a multiply-high (bias below ``n / 2**64``).
- **No [B, U, dim] tensor.** Candidates are scored as they are drawn: memory is the outputs plus
  the bit-set (at most ``BITSET_BUDGET_BYTES``), whatever the batch size.

:func:`train_epoch` runs one CML epoch (hardest-of-U negative, WARP rank weight, Adagrad, clipping)
in blocks: sample in parallel against the block-start embeddings, then apply the updates in pair
order (two threads may update pairs that share no row at the same time; see ``_train_kernel``),
so the result is bit-identical on any thread count. Candidates of pair ``i`` in epoch ``e`` are
exactly ``sample_uniform(indptr, indices, pair_users, n_items, U, seed, offset=e)[i]``.

:func:`train_epoch_hogwild` is the opt-in lock-free variant: each pair is sampled, scored and
updated at once, threads racing on shared rows (deterministic on one thread only). Both take
element-wise (``acc`` shaped like the table) or row-wise (``acc`` of shape ``[n, 1]``) Adagrad.

numba is imported behind a guard: without it this module still imports (``HAS_NUMBA`` is False)
and the public functions raise ``ImportError``; the dispatcher should then use the reference.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .reference import check_catalogue

# Before numba starts its OpenMP pool: idle workers sleep instead of spinning. With a parallel
# region per training block (an earlier design), at load 3-4 on 2 shared cores 2 threads ran at
# 0.4 M triplets/s with the default spin policy vs 2.0 with passive, and passive was no slower at
# load ~1.3. train_epoch now opens one region per epoch; the sampler kernels still benefit when
# called in a loop. setdefault: an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

try:
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    HAS_NUMBA = True
except ImportError:  # pragma: no cover - exercised in a subprocess test
    HAS_NUMBA = False
    prange = range

    def njit(*args, **kwargs):  # lets the kernels below be defined (never called) without numba
        return args[0] if args and callable(args[0]) else (lambda f: f)

    intrinsic = njit


# fastmath minus "nnan"/"ninf": the kernels rely on inf/NaN behaving (an empty row, a diverged
# embedding); "reassoc" + "contract" are what buy the vectorised fp32 reductions and FMAs.
_FM = {"reassoc", "contract", "arcp", "nsz", "afn"}
# error_model="numpy": no ZeroDivisionError branch inside loops, which would block vectorisation.
_PAR = dict(parallel=True, fastmath=_FM, error_model="numpy", cache=True)
_TRIES = 4  # rejection draws before the rank map; a user with half the catalogue falls back 1/16
# Largest positives bit-set (n_users x n_items bits) built to speed up the membership test.
BITSET_BUDGET_BYTES = 64 << 20
_PREFETCH = 2  # pairs ahead whose rows phase (b) prefetches
_CHUNK = 64  # pairs per claim in train_epoch's phase (a)
_BCHUNK = 16  # pairs per claim in train_epoch's phase (b)
_HCHUNK = 256  # pairs per claim in train_epoch_hogwild

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _mix_py(z: int) -> int:
    z &= _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _stream_key(seed: int, offset: int) -> np.uint64:
    """64-bit key of the stream ``(seed, offset)``; the kernels add ``(counter + 1) * golden``."""
    return np.uint64(_mix_py(_mix_py(int(seed)) + (int(offset) & _MASK) * _M2))


def _require_numba() -> None:
    if not HAS_NUMBA:
        raise ImportError(
            "recsys_metric.sampling.cpu needs numba; use recsys_metric.sampling.reference instead"
        )


# ----------------------------------------------------------------------------------- kernels


@njit(inline="always")
def _hash(key, ctr):
    z = key + (ctr + np.uint64(1)) * np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


@intrinsic
def _prefetch(typingctx, arr, row, col):
    """``llvm.prefetch`` of the cache line holding ``arr[row, col]`` (no bounds check)."""

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = [context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], sig.args[1:])]
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
        )
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])  # read, keep, data
        return context.get_dummy_value()

    return types.void(arr, row, col), codegen


@njit(inline="always")
def _prefetch_row(a, r):
    for d in range(0, a.shape[1], 64 // a.itemsize):
        _prefetch(a, r, d)


def _elem_ptr(context, builder, sig, args):
    aryty = sig.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    idx = context.cast(builder, args[1], sig.args[1], types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [idx])


@intrinsic
def _atomic_add(typingctx, arr, i, v):
    """``arr[i] += v`` atomically (int64 ``arr``); returns the old value."""

    def codegen(context, builder, sig, args):
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", _elem_ptr(context, builder, sig, args), val, "seq_cst")

    return types.int64(arr, i, v), codegen


@intrinsic
def _atomic_load(typingctx, arr, i):
    def codegen(context, builder, sig, args):
        return builder.load_atomic(_elem_ptr(context, builder, sig, args), "acquire", 8)

    return types.int64(arr, i), codegen


@intrinsic
def _atomic_store(typingctx, arr, i, v):
    def codegen(context, builder, sig, args):
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(val, _elem_ptr(context, builder, sig, args), "release", 8)
        return context.get_dummy_value()

    return types.void(arr, i, v), codegen


@intrinsic
def _atomic_cas(typingctx, arr, i, old, new):
    """``arr[i] = new`` if it equals ``old``, atomically; True if this call did it."""

    def codegen(context, builder, sig, args):
        o, n = (context.cast(builder, a, t, types.int64) for a, t in zip(args[2:], sig.args[2:]))
        res = builder.cmpxchg(_elem_ptr(context, builder, sig, args), o, n, "seq_cst", "seq_cst")
        return builder.extract_value(res, 1)

    return types.boolean(arr, i, old, new), codegen


@intrinsic
def _yield(typingctx):
    """``sched_yield()``: a waiting thread hands its core to whoever can use it."""

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        builder.call(cgutils.get_or_insert_function(builder.module, fnty, "sched_yield"), [])
        return context.get_dummy_value()

    return types.void(), codegen


@njit(inline="always")
def _mulhi(x, n):
    """``floor(x * n / 2**64)`` for ``n < 2**32``, without 128-bit integers."""
    nn = np.uint64(n)
    t = (x >> np.uint64(32)) * nn + (((x & np.uint64(0xFFFFFFFF)) * nn) >> np.uint64(32))
    return np.int64(t >> np.uint64(32))


@njit(inline="always")
def _count_le(indices, start, deg, j, rank):
    """``#{k < deg : indices[start + k] - rank * k <= j}`` for a row sorted on that key.

    Branchless (the select compiles to a cmov), so the U searches of a pair overlap in the
    pipeline instead of stalling on mispredicted branches.
    """
    if deg == 0:
        return np.int64(0)
    base = np.int64(0)
    n = deg
    while n > 1:
        half = n >> 1
        mid = base + half
        base = mid if indices[start + mid] - rank * mid <= j else base
        n -= half
    return base + (1 if indices[start + base] - rank * base <= j else 0)


@njit(inline="always")
def _is_positive(indices, start, deg, bits, u, item):
    if bits.shape[0] > 0:
        return (bits[u, item >> 6] >> np.uint64(item & 63)) & np.uint64(1) != 0
    c = _count_le(indices, start, deg, item - 1, 0)
    return c < deg and indices[start + c] == item


@njit(inline="always")
def _draw(indptr, indices, bits, u, n_items, key, ctr):
    """One uniform non-positive item of user ``u`` (``-1`` if none), from counter ``ctr``.

    See the module docstring: rejection tries, then the rank map; ``bits`` may be empty.
    """
    start = indptr[u]
    deg = indptr[u + 1] - start
    n_free = n_items - deg
    if n_free <= 0:
        return np.int64(-1)
    x = _hash(key, ctr)
    for t in range(_TRIES):
        item = _mulhi(x, n_items)
        if not _is_positive(indices, start, deg, bits, u, item):
            return item
        x = _hash(x, np.uint64(t))
    j = _mulhi(x, n_free)
    return j + _count_le(indices, start, deg, j, 1)


@njit(**_PAR)
def _build_bits(indptr, indices, n_items):
    n_users = indptr.shape[0] - 1
    bits = np.zeros((n_users, (n_items + 63) // 64), dtype=np.uint64)
    for u in prange(n_users):  # rows are word-aligned, so threads never share a word
        for k in range(indptr[u], indptr[u + 1]):
            i = indices[k]
            bits[u, i >> 6] |= np.uint64(1) << np.uint64(i & 63)
    return bits


@njit(inline="always")
def _sqdist(a, ia, b, ib):
    s = np.float32(0.0)
    for d in range(a.shape[1]):
        t = a[ia, d] - b[ib, d]
        s += t * t
    return s


@njit(inline="always")
def _score(user_emb, item_emb, u, p, cands, margin):
    """(hardest, violators) of one pair over its candidate row ``cands`` (``-1`` = invalid)."""
    thr = margin + _sqdist(user_emb, u, item_emb, p)  # violator <=> margin + d_pos - d_neg > 0
    best = np.int64(-1)
    best_d = np.float32(np.inf)
    m = 0
    for c in range(cands.shape[0]):
        item = cands[c]
        if item < 0:  # the reference scores an invalid candidate as +inf: never picked/counted
            continue
        d = _sqdist(user_emb, u, item_emb, item)
        if d < thr:
            m += 1
        if d < best_d or best < 0:  # first on ties; `best < 0` also admits a NaN/inf first one
            best_d = d
            best = item
    return best, m


@njit(inline="always")
def _score_sampled(indptr, indices, bits, user_emb, item_emb, u, p, n_cand, margin, key, ctr0):
    """(hardest, violators) of one pair over ``n_cand`` fresh draws, each scored as drawn.

    Drawing and scoring in one loop lets the CPU overlap a draw with the previous distance; a
    draw-all-then-score variant (with prefetch) measured ~1.4x slower.
    """
    thr = margin + _sqdist(user_emb, u, item_emb, p)
    best = np.int64(-1)
    best_d = np.float32(np.inf)
    m = 0
    for c in range(n_cand):
        item = _draw(indptr, indices, bits, u, item_emb.shape[0], key, ctr0 + np.uint64(c))
        if item < 0:
            return best, m  # no negative at all: every draw of this row is -1
        d = _sqdist(user_emb, u, item_emb, item)
        if d < thr:
            m += 1
        if d < best_d or best < 0:
            best_d = d
            best = item
    return best, m


@njit(inline="always")
def _prefetch_pair(bits, user_emb, item_emb, u, p):
    """Start loading the rows the next pair's scoring reads first (~10% faster sampling)."""
    _prefetch_row(user_emb, u)
    _prefetch_row(item_emb, p)
    if bits.shape[0] > 0:
        _prefetch_row(bits, u)


@njit(**_PAR)
def _sample_kernel(indptr, indices, bits, users, n_items, n, key):
    out = np.empty((users.shape[0], n), dtype=np.int64)
    for b in prange(users.shape[0]):
        for c in range(n):
            out[b, c] = _draw(indptr, indices, bits, users[b], n_items, key, np.uint64(b * n + c))
    return out


@njit(**_PAR)
def _hardest_sampled_kernel(indptr, indices, bits, users, pos, user_emb, item_emb, n_cand, margin,
                            key):
    B = users.shape[0]
    neg = np.empty(B, dtype=np.int64)
    viol = np.empty(B, dtype=np.int32)
    for b in prange(B):
        if b + 1 < B:
            _prefetch_pair(bits, user_emb, item_emb, users[b + 1], pos[b + 1])
        neg[b], viol[b] = _score_sampled(indptr, indices, bits, user_emb, item_emb, users[b],
                                         pos[b], n_cand, margin, key, np.uint64(b * n_cand))
    return neg, viol


@njit(**_PAR)
def _hardest_given_kernel(users, pos, cands, user_emb, item_emb, margin):
    B = cands.shape[0]
    neg = np.empty(B, dtype=np.int64)
    viol = np.empty(B, dtype=np.int32)
    for b in prange(B):
        neg[b], viol[b] = _score(user_emb, item_emb, users[b], pos[b], cands[b], margin)
    return neg, viol


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


def _np(t: torch.Tensor, dtype) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dtype)


def _bits(ip: np.ndarray, ix: np.ndarray, n_items: int, n_draws: int) -> np.ndarray:
    """Positives bit-set when it fits the budget and the draws amortise its O(nnz) build.

    Only a speed-up: the draws are the same with or without it (see ``_draw``).
    """
    nbytes = (len(ip) - 1) * ((n_items + 63) // 64) * 8
    if nbytes <= BITSET_BUDGET_BYTES and 4 * n_draws >= len(ix) + nbytes // 8:
        return _build_bits(ip, ix, np.int64(n_items))
    return np.zeros((0, 1), dtype=np.uint64)


def _check_catalogue(n_items: int) -> None:
    check_catalogue(n_items)
    if n_items >= 2**31:  # int32 item ids, and the multiply-high needs n < 2**32
        raise ValueError(f"n_items={n_items} does not fit int32 item ids")


def _check_ids(name: str, ids: np.ndarray, n: int) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise ValueError(f"{name} must lie in [0, {n}), got range [{ids.min()}, {ids.max()}]")


def sample_uniform(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    users: torch.Tensor,
    n_items: int,
    n: int,
    seed: int = 0,
    offset: int = 0,
) -> torch.Tensor:
    """Draw ``n`` uniform non-positive items per user (with replacement), on CPU.

    Parameters
    ----------
    indptr, indices : torch.Tensor
        CSR pattern of the positives, column indices sorted within each row.
    users : torch.Tensor
        ``[B]`` user ids.
    n_items : int
        Catalogue size (at least 2).
    n : int
        Draws per user.
    seed, offset : int
        Stream key; the same pair gives the same draws on any thread count.

    Returns
    -------
    torch.Tensor
        int64 ``[B, n]`` item ids; ``-1`` rows for users who have every item.
    """
    _require_numba()
    _check_catalogue(n_items)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    ip, ix, us = _np(indptr, np.int64), _np(indices, np.int32), _np(users, np.int64)
    _check_ids("users", us, len(ip) - 1)
    bits = _bits(ip, ix, n_items, len(us) * n)
    key = _stream_key(seed, offset)
    out = _sample_kernel(ip, ix, bits, us, np.int64(n_items), np.int64(n), key)
    return torch.from_numpy(out)


def hardest_negatives(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    users: torch.Tensor,
    pos_items: torch.Tensor,
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    n_candidates: int,
    margin: float,
    seed: int = 0,
    offset: int = 0,
    candidates: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hardest of ``n_candidates`` uniform negatives and the violator count, per pair, on CPU.

    Same contract as :func:`recsys_metric.sampling.reference.hardest_negatives`; with
    ``candidates`` given the result equals the reference's. Sampled candidates are those of
    :func:`sample_uniform` with the same ``seed``/``offset``; they are scored as drawn, so memory is
    ``O(B)`` whatever ``n_candidates`` and ``dim``.

    Returns
    -------
    neg : torch.Tensor
        int64 ``[B]``: the candidate closest to the user (first on ties), ``-1`` if none.
    violators : torch.Tensor
        int32 ``[B]``: candidates with ``margin + d(u,p) - d(u,c) > 0`` (squared distances, fp32).
    """
    _require_numba()
    n_items = item_emb.shape[0]
    _check_catalogue(n_items)
    us, ps = _np(users, np.int64), _np(pos_items, np.int64)
    if len(us) != len(ps) or (candidates is not None and candidates.shape[0] != len(us)):
        raise ValueError("users, pos_items (and candidates rows) must have the same length")
    ue = _np(user_emb, np.float32)
    ie = _np(item_emb, np.float32)
    if ue.ndim != 2 or ie.ndim != 2 or ue.shape[1] != ie.shape[1]:
        raise ValueError(f"embedding tables must be 2-d with one dim: {ue.shape} vs {ie.shape}")
    _check_ids("users", us, ue.shape[0])
    _check_ids("pos_items", ps, n_items)
    m = np.float32(margin)
    if candidates is not None:
        cs = _np(candidates, np.int64)
        if cs.size and cs.max() >= n_items:
            raise ValueError(f"candidates must be < n_items={n_items}, got {cs.max()}")
        neg, viol = _hardest_given_kernel(us, ps, cs, ue, ie, m)
    else:
        if n_candidates < 1:
            raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
        ip, ix = _np(indptr, np.int64), _np(indices, np.int32)
        _check_ids("users", us, len(ip) - 1)
        bits = _bits(ip, ix, n_items, len(us) * n_candidates)
        neg, viol = _hardest_sampled_kernel(
            ip, ix, bits, us, ps, ue, ie, np.int64(n_candidates), m, _stream_key(seed, offset)
        )
    return torch.from_numpy(neg), torch.from_numpy(viol)


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
