"""Negative sampling on CPU, as numba kernels.

Same semantics as :mod:`recsys_metric.sampling.reference` (read its docstring), with three CPU
specifics:

- **Counter-based RNG.** Candidate ``c`` of row ``b`` comes from the hash
  ``splitmix64(stream(seed, offset) + (b * U + c + 1) * golden)``: no generator state, so results
  are reproducible and do not depend on the number of threads or on how rows are chunked.
- **Draw.** Up to ``_TRIES`` rejection draws of an item uniform over the whole catalogue (tested
  against a bit-set of the positives when it fits ``BITSET_BUDGET_BYTES``, else by binary search
  in the row, which a training epoch speeds up with a filter per row, ``strata.stratum_rows``:
  same answer, only speed differs), then the reference's rejection-free map (``j``
  uniform in ``[0, n_items - deg)``, ``j + #{k : p_k - k <= j}``). Each stage is exactly uniform
  over the non-positives, so the mixture is too; the bit-set makes a typical draw ~5x cheaper
  than the binary search, and the fallback bounds the cost for users with almost every item.
  Hashes map to ranges by a multiply-high (bias below ``n / 2**64``).
- **No [B, U, dim] tensor.** Candidates are scored as they are drawn: memory is the outputs plus
  the bit-set (at most ``BITSET_BUDGET_BYTES``), whatever the batch size.

:mod:`.cpu_train` runs a whole CML epoch on these kernels (``train_epoch``); the numba building
blocks (RNG hash, intrinsics) are in :mod:`._numba_ops`.

numba is imported behind a guard: without it this module still imports (``HAS_NUMBA`` is False)
and the public functions raise ``ImportError``; the dispatcher should then use the reference.
"""

from __future__ import annotations

import numpy as np
import torch

from ._numba_ops import (
    _PAR,
    HAS_NUMBA,
    _hash,
    _mulhi,
    _prefetch_row,
    _require_numba,
    _sqdist_rows,
    _stream_key,
    njit,
    overload,
    prange,
    types,
)
from .reference import check_catalogue

__all__ = ["BITSET_BUDGET_BYTES", "HAS_NUMBA", "hardest_negatives", "sample_uniform"]

_sqdist32, _sqdist64, _sqdist128 = (_sqdist_rows(d) for d in (32, 64, 128))
_TRIES = 4  # rejection draws before the rank map; a user with half the catalogue falls back 1/16
# Largest positives bit-set (n_users x n_items bits) built to speed up the membership test; in
# the training epoch, largest bit rows or filters of the positives (strata.stratum_rows).
BITSET_BUDGET_BYTES = 128 << 20


# ----------------------------------------------------------------------------------- kernels


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


def _filtered(bits):
    """True for int64 ``bits``: the training epoch's positives (``strata.stratum_rows``: filters
    one word wide, or bit rows of two words or more) rather than this module's bit-set by user
    (uint64, :func:`_build_bits`). Decided when a kernel is typed: the kernels that may take
    either (``cpu_many``'s draws) compile only the tests of their own."""
    return bits.dtype == np.int64


@overload(_filtered)
def _filtered_typed(bits):
    flag = bits.dtype == types.int64
    return lambda bits: flag


@njit(inline="always")
def _filter_of(bits, row):
    """``(first word, shift)`` of row ``row``'s filter in the filters ``bits``
    (``strata._stratum_filters``: int64 ``[words, 1]``); ``(-1, 0)`` where ``bits`` holds none
    (empty, or a bit row per row: ``[rows, >= 2]`` as int64, any width as uint64)."""
    if bits.shape[0] == 0 or bits.shape[1] > 1 or not _filtered(bits):
        return np.int64(-1), np.int64(0)
    d = np.int64(bits[row, 0])
    return d >> 6, d & 63


@njit(inline="always")
def _positive_at(indices, start, deg, bits, row, base, shift, j):
    """Whether ``j`` is in the sorted row ``indices[start:start + deg]``: with a filter
    ``(base, shift)`` from :func:`_filter_of`, a clear bit ``j >> shift`` says no at once (most
    tests), a set bit of an exact filter (``shift`` 0) yes, else the binary search says; with
    none, bit ``j`` of bit row ``row`` (``bits`` not empty) or the binary search."""
    if base >= 0:
        b = j >> shift
        if ((np.int64(bits[base + (b >> 6), 0]) >> (b & 63)) & 1) == 0:
            return False
        if shift == 0:
            return True
    elif bits.shape[0] > 0:
        return ((np.int64(bits[row, j >> 6]) >> (j & 63)) & 1) != 0
    return _in_row(indices, start, deg, j)


@njit(inline="always")
def _is_positive(indices, start, deg, bits, u, item):
    """Whether ``item`` is in the sorted row ``indices[start:start + deg]``: by bit row ``u`` of
    a bit-set (uint64 ``bits``, or int64 of two words or more), by filter ``u`` of the filters
    (int64, one word: ``strata._stratum_filters``), or by binary search (``bits`` empty)."""
    base, shift = _filter_of(bits, u)
    return _positive_at(indices, start, deg, bits, u, base, shift, item)


@njit(inline="always")
def _in_row(indices, start, deg, item):
    """Whether ``item`` is in the sorted row ``indices[start:start + deg]`` (binary search)."""
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
    dim = a.shape[1]  # the usual widths as straight-line vector code (a branch LLVM hoists)
    if dim == 64:
        return _sqdist64(a, ia, b, ib)
    if dim == 32:
        return _sqdist32(a, ia, b, ib)
    if dim == 128:
        return _sqdist128(a, ia, b, ib)
    s = np.float32(0.0)
    for d in range(a.shape[1]):
        t = a[ia, d] - b[ib, d]
        s += t * t
    return s


@njit(inline="always")
def _keep(d, item, thr, best, best_d, m):
    """One scored candidate: counted if it violates (``d < thr``), kept if the closest so far
    (first on ties; ``best < 0`` also admits a NaN/inf first one). Returns (best, best_d, m)."""
    if d < thr:
        m += 1
    if d < best_d or best < 0:
        return item, d, m
    return best, best_d, m


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
        best, best_d, m = _keep(_sqdist(user_emb, u, item_emb, item), item, thr, best, best_d, m)
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
        best, best_d, m = _keep(_sqdist(user_emb, u, item_emb, item), item, thr, best, best_d, m)
    return best, m


@njit(inline="always")
def _prefetch_pair(bits, row, user_emb, item_emb, u, p):
    """Start loading the rows the next pair's scoring reads first (~10% faster sampling):
    ``row`` of the bit-set, ``u`` of the users, ``p`` of the items."""
    _prefetch_row(user_emb, u)
    _prefetch_row(item_emb, p)
    if bits.shape[0] > 0:
        _prefetch_row(bits, row)


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
            _prefetch_pair(bits, users[b + 1], user_emb, item_emb, users[b + 1], pos[b + 1])
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


# ------------------------------------------------------------------------------- public API


def _np(t: torch.Tensor, dtype) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dtype)


def _bits(ip: np.ndarray, ix: np.ndarray, n_items: int, n_draws: int) -> np.ndarray:
    """Positives bit-set when it fits the budget and the draws amortise its O(nnz) build.

    Only a speed-up: the draws are the same with or without it (see ``_draw``).
    """
    if _bits_pay(len(ip) - 1, (n_items + 63) // 64, len(ix), n_draws):
        return _build_bits(ip, ix, np.int64(n_items))
    return np.zeros((0, 1), dtype=np.uint64)


def _bits_pay(rows: int, words: int, nnz: int, n_draws: int) -> bool:
    """A ``rows x words`` bit-set of ``nnz`` positives fits the budget and the draws amortise it."""
    nbytes = rows * words * 8
    return nbytes <= BITSET_BUDGET_BYTES and 4 * n_draws >= nnz + nbytes // 8


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

