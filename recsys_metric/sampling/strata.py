"""Stratified lanes for the CPU training epoch: how an epoch's pairs are split, and the draw.

:func:`.cpu_train.train_epoch` runs ``lanes`` parallel streams on disjoint rows (stratified SGD,
as DSGD for matrix factorisation). Once per fit (:func:`prepare_pairs`): the ids checked, the
pairs as 8-byte records, the pairs per user and per item counted. Per epoch (:func:`plan_epoch`):
users in ``lanes`` contiguous ranges of about equal numbers of pairs (:func:`_lanes`); items in
``lanes`` random strata of about equal numbers of pairs (:func:`_strata`); the pairs' positions
bucketed by (lane, stratum of the positive), shuffled or not (:func:`_visit_order`); each user's
positives by stratum, as exact bit rows, or as sorted lists with a filter per row that answers
most tests alone, or as lists only (:func:`stratum_rows`). A lane's candidates come from one
stratum, uniform over the user's non-positives there (:func:`_draw_stratum`: rejection tries,
then an exact rank map, as :func:`.cpu._draw` does over the whole catalogue); whichever form
the positives take, the draws are the same.

numba is imported behind a guard (see :mod:`._numba_ops`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._numba_ops import (
    _PAR,
    _ctz,
    _hash,
    _mulhi,
    _popcount,
    _prefetch,
    _prefetch_row,
    _require_numba,
    _stream_key,
    njit,
    prange,
)
from .cpu import (
    _TRIES,
    _bits_pay,
    _check_catalogue,
    _check_ids,
    _count_le,
    _filter_of,
    _in_row,
    _keep,
    _positive_at,
    _sqdist,
)

_SORT_CHUNKS = 16  # pieces of the pairs bucketed in parallel
_ITEMS_AHEAD = 8  # candidates ahead whose item rows the scoring prefetches (4: 5% slower)
# Filter bits per positive tried, finest first, where exact bit rows pass the budget
# (:func:`stratum_rows`)
_FILTER_BITS = (64, 32, 16, 8, 4, 2, 1)

# ----------------------------------------------------------------------------------- kernels


@njit(**_PAR)
def _visit_order(pairs, lane_of, stratum_of, lanes, key, shuffle, order, block):
    """Fills ``order`` with the pairs' positions grouped by bucket ``lane * lanes + stratum``,
    ``order[bucket_ptr[b]:bucket_ptr[b + 1]]``, and returns ``bucket_ptr``.

    Lane ``lane_of[u]`` holds user ``u`` (:func:`_lanes`); the stratum is the positive item's.
    Within a bucket: the pairs' order, or with ``shuffle`` random blocks: each pair goes to one
    of ~``size / block`` bins of its bucket at random (keyed by ``key``), the bins follow one
    another, and each bin keeps the pairs' order. A block is then a random sample of the
    bucket's pairs, visited in the caller's (the Trainer's: user-major) order, so a lane walks
    its user rows, their bit rows and the pair records in ascending addresses. Against a
    uniform permutation of each bucket: epochs 6% faster on one thread and 3.5% on two,
    validation level (``cpu_training.md``). Positions only (4 or 8 bytes a pair): the kernel
    gathers each pair from ``pairs`` as it goes, with a prefetch.
    """
    n = pairs.shape[0]
    R = max(1, n // (lanes * lanes * block)) if shuffle else 1  # bins per bucket
    k_bin = _hash(key, np.uint64(0xFFFFFFFFFFFFFFFE))  # a stream no draw counter reaches
    nb = lanes * lanes * R
    # a counting sort in _SORT_CHUNKS fixed pieces of the input (the order does not depend on
    # the threads): bins, then pieces, then the input order
    C = _SORT_CHUNKS
    step = (n + C - 1) // C
    counts = np.zeros((C, nb), np.int64)
    bin_of = np.empty(n, np.int32)
    for c in prange(C):
        for g in range(c * step, min(n, (c + 1) * step)):
            b = (lane_of[pairs[g, 0]] * lanes + stratum_of[pairs[g, 1]]) * R
            if shuffle:
                b += _mulhi(_hash(k_bin, np.uint64(g)), R)
            bin_of[g] = b
            counts[c, b] += 1
    bin_ptr = np.zeros(nb + 1, np.int64)
    start = np.empty((C, nb), np.int64)
    total = 0
    for b in range(nb):
        bin_ptr[b] = total
        for c in range(C):
            start[c, b] = total
            total += counts[c, b]
    bin_ptr[nb] = total
    for c in prange(C):
        fill = start[c]
        for g in range(c * step, min(n, (c + 1) * step)):
            order[fill[bin_of[g]]] = g
            fill[bin_of[g]] += 1
    return bin_ptr[::R].copy()


@njit(cache=True)
def _layout(pair_users, pair_items, n_users, n_items):
    """``(pairs, user_ptr, item_pairs)`` of :class:`EpochPairs`, in one pass (numpy's
    ``bincount``s and the copy took 4x as long)."""
    n = pair_users.shape[0]
    pairs = np.empty((n, 2), np.int32)
    user_ptr = np.zeros(n_users + 1, np.int64)
    item_pairs = np.zeros(n_items, np.int64)
    for g in range(n):
        u, i = pair_users[g], pair_items[g]
        pairs[g, 0], pairs[g, 1] = u, i
        user_ptr[u + 1] += 1
        item_pairs[i] += 1
    for u in range(n_users):
        user_ptr[u + 1] += user_ptr[u]
    return pairs, user_ptr, item_pairs


@njit(cache=True)
def _strata(n_items, lanes, key, pairs):
    """``(items, item_ptr, stratum_of)``: the items split into ``lanes`` strata, a new split for
    each ``key`` (epoch); ``items[item_ptr[s]:item_ptr[s + 1]]`` are the ids of stratum ``s``,
    ascending. ``pairs[i]``: the epoch's pairs with positive ``i``.

    Items are taken in a random order (keyed hashes) and each goes to the stratum with the
    fewest pairs so far, so the lanes' buckets are even within one item's pairs (a split
    by item count left 10% more pairs in one stratum on an ML-1M-sized matrix).
    """
    skey = _hash(key, np.uint64(0xFFFFFFFFFFFFFFFF))  # a stream no draw counter reaches
    h = np.empty(n_items, np.uint64)
    for i in range(n_items):
        h[i] = _hash(skey, np.uint64(i))
    load = np.zeros(lanes, np.int64)
    stratum_of = np.empty(n_items, np.int64)
    item_ptr = np.zeros(lanes + 1, np.int64)
    for i in np.argsort(h):
        s = 0
        for t in range(1, lanes):
            if load[t] < load[s] or (load[t] == load[s] and item_ptr[t + 1] < item_ptr[s + 1]):
                s = t
        stratum_of[i] = s
        load[s] += pairs[i]
        item_ptr[s + 1] += 1
    for s in range(lanes):
        item_ptr[s + 1] += item_ptr[s]
    fill = item_ptr[:-1].copy()
    items = np.empty(n_items, np.int32)
    for i in range(n_items):
        items[fill[stratum_of[i]]] = i
        fill[stratum_of[i]] += 1
    return items, item_ptr, stratum_of


@njit(**_PAR)
def _stratum_rows(indptr, indices, items, item_ptr, words):
    """``(sptr, spos, bits)``: user ``u``'s positives in stratum ``s`` by their positions within
    the stratum's list; ``sptr[u, s + 1] - sptr[u, s]`` of them.

    ``words`` > 0: as an exact bit-set, row ``u * L + s``, ``words`` uint64 each (``spos``
    empty). ``words`` == 0: ascending in ``spos[sptr[u, s]:sptr[u, s + 1]]`` (``bits`` empty),
    what the draw then searches, as ``cpu._draw`` searches the row, where the row's filter
    (:func:`_stratum_filters`) cannot answer alone.
    """
    n_users, L, n_items = indptr.shape[0] - 1, item_ptr.shape[0] - 1, items.shape[0]
    stratum_of = np.empty(n_items, np.int64)
    pos_in = np.empty(n_items, np.int32)
    for s in range(L):
        for k in range(item_ptr[s], item_ptr[s + 1]):
            stratum_of[items[k]] = s
            pos_in[items[k]] = k - item_ptr[s]
    sptr = np.zeros((n_users, L + 1), np.int64)
    bits = np.zeros((n_users * L if words > 0 else 0, max(words, 1)), np.uint64)
    spos = np.empty(indices.shape[0] if words == 0 else 0, np.int32)
    for u in prange(n_users):  # bit rows are word-aligned, so threads never share a word
        for k in range(indptr[u], indptr[u + 1]):
            s = stratum_of[indices[k]]
            sptr[u, s + 1] += 1
            if words > 0:
                j = pos_in[indices[k]]
                bits[u * L + s, j >> 6] |= np.uint64(1) << np.uint64(j & 63)
        sptr[u, 0] = indptr[u]
        for s in range(L):
            sptr[u, s + 1] += sptr[u, s]
        if words == 0:
            for s in range(L):  # items ascend in the row and in a stratum
                f = sptr[u, s]
                for k in range(indptr[u], indptr[u + 1]):
                    if stratum_of[indices[k]] == s:
                        spos[f] = pos_in[indices[k]]
                        f += 1
    return sptr, spos, bits


@njit(inline="always")
def _filter_shift(n_pos, size, per_pos):
    """The least shift that leaves a row of ``n_pos`` positives among ``size`` positions at
    most ``max(64, per_pos * n_pos)`` filter bits (0: one bit per position, exact)."""
    cap = max(64, per_pos * n_pos)
    shift = 0
    while ((size - 1) >> shift) + 1 > cap:
        shift += 1
    return shift


@njit(inline="always")
def _filter_words(size, shift):
    return (((size - 1) >> shift) + 64) >> 6


@njit(cache=True)
def _filters_size(sptr, item_ptr, per_pos):
    """Words of :func:`_stratum_filters`' output at ``per_pos`` bits per positive."""
    n_users, L = sptr.shape[0], sptr.shape[1] - 1
    total = n_users * L
    for u in range(n_users):
        for s in range(L):
            size = item_ptr[s + 1] - item_ptr[s]
            total += _filter_words(size, _filter_shift(sptr[u, s + 1] - sptr[u, s], size,
                                                       per_pos))
    return total


@njit(**_PAR)
def _stratum_filters(sptr, spos, item_ptr, per_pos, n_words):
    """A filter of each row ``r = u * L + s`` of positives (:func:`_stratum_rows`), uint64
    ``[n_words, 1]`` (``n_words`` from :func:`_filters_size`): word ``r`` holds ``(first word
    << 6) | shift``, and bit ``b`` of the row's words is set if a positive lies in ``[b << shift,
    (b + 1) << shift)`` (``cpu._positive_at`` reads it).

    With ``per_pos`` bits per positive a row's test of a free position stops at its bit about
    ``1 - exp(-1 / per_pos)``-ths of the time or more, whatever the row's length, where a bit
    row per position needs the whole stratum per row; a row whose ``per_pos * n_pos`` covers
    its stratum gets one bit per position, an exact bit-set row.
    """
    n_users, L = sptr.shape[0], sptr.shape[1] - 1
    out = np.zeros((n_words, 1), np.uint64)
    w = n_users * L
    for u in range(n_users):  # where each row's words start: a running sum
        for s in range(L):
            size = item_ptr[s + 1] - item_ptr[s]
            shift = _filter_shift(sptr[u, s + 1] - sptr[u, s], size, per_pos)
            out[u * L + s, 0] = np.uint64((w << 6) | shift)
            w += _filter_words(size, shift)
    for u in prange(n_users):  # a row's words are its own, so threads never share a word
        for s in range(L):
            d = np.int64(out[u * L + s, 0])
            base, shift = d >> 6, d & 63
            for k in range(sptr[u, s], sptr[u, s + 1]):
                b = np.int64(spos[k]) >> shift
                out[base + (b >> 6), 0] |= np.uint64(1) << np.uint64(b & 63)
    return out


@njit(inline="always")
def _select_free(bits, row, j):
    """Position of the ``j``-th (from 0) zero bit of bit-set row ``row``: the ``j``-th free
    position, as ``j + _count_le(spos, ..., j, 1)`` finds it from the list."""
    w = 0
    z = ~np.uint64(bits[row, 0])
    c = np.int64(_popcount(z))
    while j >= c:
        j -= c
        w += 1
        z = ~np.uint64(bits[row, w])
        c = np.int64(_popcount(z))
    for _ in range(j):
        z &= z - np.uint64(1)  # clear the lowest set bit
    return np.int64(w * 64) + np.int64(_ctz(z))


@njit(inline="always")
def _draw_stratum(bits, u, items, lo, hi, sptr, spos, s, key, ctr):
    """One item uniform over user ``u``'s non-positives in stratum ``s`` = ``items[lo:hi]``
    (``-1`` if none), from counter ``ctr``: as ``cpu._draw``, rejection tries, then the rank map,
    both on the positions within the stratum (each stage exactly uniform, so their mixture is).

    ``bits`` (an exact bit row per user and stratum, the filters, or empty) and ``spos``: see
    :func:`stratum_rows`. A stratum's row needs no lookup of the item id before its test:
    epochs ran 3% faster than with the catalogue-wide bit-set.
    """
    a = sptr[u, s]
    n_pos = sptr[u, s + 1] - a
    if hi - lo - n_pos <= 0:
        return np.int64(-1)
    row = u * (sptr.shape[1] - 1) + s
    base, shift = _filter_of(bits, row)
    x = _hash(key, ctr)
    j = _mulhi(x, hi - lo)
    if not _positive_at(spos, a, n_pos, bits, row, base, shift, j):
        return np.int64(items[lo + j])
    return _redraw(x, bits, row, base, shift, items, lo, hi, spos, a, n_pos)


@njit(inline="always")
def _redraw(x, bits, row, base, shift, items, lo, hi, spos, a, n_pos):
    """:func:`_draw_stratum` once its first try (hash ``x``) has hit a positive: the other
    tries, then the rank map."""
    x = _hash(x, np.uint64(0))
    for t in range(1, _TRIES):
        j = _mulhi(x, hi - lo)
        if not _positive_at(spos, a, n_pos, bits, row, base, shift, j):
            return np.int64(items[lo + j])
        x = _hash(x, np.uint64(t))
    j = _mulhi(x, hi - lo - n_pos)
    if bits.shape[0] > 0 and base < 0:  # exact bit rows (and no lists)
        return np.int64(items[lo + _select_free(bits, row, j)])
    return np.int64(items[lo + j + _count_le(spos, a, n_pos, j, 1)])


@njit(inline="always")
def _score_stratum(bits, user_emb, item_emb, u, p, n_cand, margin, key, ctr0, items, lo, hi,
                   sptr, spos, s, hashes):
    """``cpu._score_sampled`` with the candidates drawn by :func:`_draw_stratum`; with exact bit
    rows in one pass (:func:`_score_exact`), with filters or lists in three
    (:func:`_score_filtered`). Same candidates either way."""
    a = sptr[u, s]
    n_pos = sptr[u, s + 1] - a
    if hi - lo - n_pos <= 0:
        return np.int64(-1), 0
    row = u * (sptr.shape[1] - 1) + s
    base, shift = _filter_of(bits, row)
    if bits.shape[0] > 0 and base < 0:
        return _score_exact(bits, row, user_emb, item_emb, u, p, n_cand, margin, key, ctr0,
                            items, lo, hi, spos, a, n_pos, hashes)
    return _score_filtered(bits, row, base, shift, user_emb, item_emb, u, p, n_cand, margin,
                           key, ctr0, items, lo, hi, spos, a, n_pos, hashes)


@njit(inline="always")
def _score_exact(bits, row, user_emb, item_emb, u, p, n_cand, margin, key, ctr0, items, lo, hi,
                 spos, a, n_pos, hashes):
    """:func:`_score_stratum` on exact bit rows, each candidate scored as drawn (the kernel
    has prefetched the pair's whole bit row).

    The first hashes of all ``n_cand`` draws are computed first, into scratch ``hashes``: that
    takes them off each candidate's chain of hash, test, branch, row load and distance, so a
    test (and a mispredicted branch) resolves sooner. Same candidates; epochs +3% on one and
    on two threads.
    """
    for c in range(n_cand):
        hashes[c] = _hash(key, ctr0 + np.uint64(c))
    thr = margin + _sqdist(user_emb, u, item_emb, p)
    best = np.int64(-1)
    best_d = np.float32(np.inf)
    m = 0
    for c in range(n_cand):
        j = _mulhi(hashes[c], hi - lo)
        if _positive_at(spos, a, n_pos, bits, row, -1, 0, j):
            item = _redraw(hashes[c], bits, row, -1, 0, items, lo, hi, spos, a, n_pos)
        else:
            item = np.int64(items[lo + j])
        best, best_d, m = _keep(_sqdist(user_emb, u, item_emb, item), item, thr, best, best_d, m)
    return best, m


@njit(inline="always")
def _score_filtered(bits, row, base, shift, user_emb, item_emb, u, p, n_cand, margin, key, ctr0,
                    items, lo, hi, spos, a, n_pos, hashes):
    """:func:`_score_stratum` on the sorted lists and their filters (``base`` < 0: none), in
    three passes over the candidates, with the ``n_cand`` words of scratch ``hashes`` as two
    32-bit halves each:

    1. every draw's first try, with no branch: its item into the second half of its word, and
       the tries whose filter bit is set (all, without filters) listed, as they come, in the
       first halves (the ``k``-th such try into word ``k``);
    2. the listed tries tested exactly (a set bit of an exact filter row, else the binary
       search), and the positives drawn again (:func:`_redraw`);
    3. the distances, the item rows prefetched ``_ITEMS_AHEAD`` candidates ahead.

    Branching on each filter bit in the scoring loop mispredicted at every set bit and dropped
    the item rows in flight: at 25 M interactions the scoring took 54 ns per candidate that
    way, 38 in three passes (``experiments/results/epoch_scale.md``). With exact bit rows,
    whose test rarely hits, the one pass is as fast.
    """
    size = hi - lo
    if base >= 0:  # the row's filter, for pass 1 (the kernel prefetched its first word)
        for w in range(base, base + _filter_words(size, shift), 8):
            _prefetch(bits, w, 0)
    half = hashes.view(np.uint32)  # word c: halves 2c and 2c + 1
    k = 0
    for c in range(n_cand):
        j = _mulhi(_hash(key, ctr0 + np.uint64(c)), size)
        hit = 1
        if base >= 0:
            b = j >> shift
            hit = (np.int64(bits[base + (b >> 6), 0]) >> (b & 63)) & 1
        half[2 * c + 1] = items[lo + j]
        half[2 * k] = c
        k += hit
    for i in range(k):
        c = np.int64(half[2 * i])
        x = _hash(key, ctr0 + np.uint64(c))
        j = _mulhi(x, size)
        if (base >= 0 and shift == 0) or _in_row(spos, a, n_pos, j):
            half[2 * c + 1] = _redraw(x, bits, row, base, shift, items, lo, hi, spos, a, n_pos)
    thr = margin + _sqdist(user_emb, u, item_emb, p)
    best = np.int64(-1)
    best_d = np.float32(np.inf)
    m = 0
    for c in range(n_cand):
        if c + _ITEMS_AHEAD < n_cand:
            _prefetch_row(item_emb, half[2 * (c + _ITEMS_AHEAD) + 1])
        item = np.int64(half[2 * c + 1])
        best, best_d, m = _keep(_sqdist(user_emb, u, item_emb, item), item, thr, best, best_d, m)
    return best, m


@njit(**_PAR)
def _stratum_sample_kernel(bits, users, strata, items, item_ptr, sptr, spos, n, key):
    out = np.empty((users.shape[0], n), dtype=np.int64)
    for b in prange(users.shape[0]):
        u, s = users[b], strata[b]
        for c in range(n):
            out[b, c] = _draw_stratum(bits, u, items, item_ptr[s], item_ptr[s + 1], sptr, spos, s,
                                      key, np.uint64(b * n + c))
    return out


# ------------------------------------------------------------------------------- public API


@dataclass(eq=False)
class EpochPairs:
    """The pairs an epoch visits and the training positives, checked and laid out once for all
    the epochs of a fit (:func:`prepare_pairs`), with what the epochs' plans share."""

    indptr: np.ndarray  # int64 [n_users + 1]: CSR of the training positives
    indices: np.ndarray  # int32, sorted within each row
    pairs: np.ndarray  # int32 [P, 2]: (user, positive item), one 8-byte record per pair
    n_users: int
    n_items: int
    user_ptr: np.ndarray  # int64 [n_users + 1]: pairs per user, cumulated
    item_pairs: np.ndarray  # int64 [n_items]: pairs per positive item
    _bits: tuple | None = field(default=None, repr=False)  # (choice, catalogue_bits)

    def __len__(self) -> int:
        return self.pairs.shape[0]

    def catalogue_bits(self, n_draws: int) -> np.ndarray:
        """The positives by user over the whole catalogue (one stratum whose positions are the
        item ids), as :func:`stratum_rows` chooses them, built on first use: an exact bit row
        per user, else the filters of the rows (which ``cpu._draw`` then searches), else none."""
        words = max(2, (self.n_items + 63) // 64)
        sptr = ptr = None
        if _bits_pay(self.n_users, words, len(self.indices), n_draws):
            choice = -1
        else:
            sptr = np.stack([self.indptr[:-1], self.indptr[1:]], axis=1)
            ptr = np.array([0, self.n_items], np.int64)
            choice = _filter_bits(sptr, ptr, len(self.indices), n_draws)
        if self._bits is None or self._bits[0] != choice:
            if choice < 0:
                bits = _stratum_rows(self.indptr, self.indices,
                                     np.arange(self.n_items, dtype=np.int32),
                                     np.array([0, self.n_items], np.int64),
                                     np.int64(words))[2].view(np.int64)
            else:
                bits = filters(sptr, self.indices, ptr, choice)
            self._bits = choice, bits
        return self._bits[1]


def prepare_pairs(indptr: np.ndarray, indices: np.ndarray, pair_users: np.ndarray,
                  pair_items: np.ndarray, n_users: int, n_items: int) -> EpochPairs:
    """Check the ids and lay the pairs out for :func:`.cpu_train.run_epoch`, once per fit.

    ``indptr``/``indices``: CSR of the training positives, sorted within each row;
    ``pair_users``/``pair_items``: the ``P`` pairs an epoch visits. Raises ``ValueError`` on an id
    out of range or mismatched lengths. Memory: 8 bytes per pair, plus the counts.
    """
    _require_numba()
    _check_catalogue(n_items)
    ip = np.ascontiguousarray(indptr, dtype=np.int64)
    pu, pi = np.asarray(pair_users), np.asarray(pair_items)
    if len(ip) - 1 != n_users or len(pu) != len(pi):
        raise ValueError("indptr must have n_users + 1 entries and pairs equal lengths")
    _check_ids("pair_users", pu, n_users)
    _check_ids("pair_items", pi, n_items)
    _check_ids("indices", np.asarray(indices), n_items)
    pairs, user_ptr, item_pairs = _layout(np.ascontiguousarray(pu, dtype=np.int32),
                                          np.ascontiguousarray(pi, dtype=np.int32),
                                          np.int64(n_users), np.int64(n_items))
    return EpochPairs(ip, np.ascontiguousarray(indices, dtype=np.int32), pairs, int(n_users),
                      int(n_items), user_ptr, item_pairs)


def _lanes(user_ptr: np.ndarray, lanes: int) -> np.ndarray:
    """Each user's lane: the one holding the user's median pair when the pairs, by user, are
    cut into ``lanes`` ranges of about equal size (contiguous, so two lanes' user rows share no
    cache line but at a boundary)."""
    return np.minimum(lanes - 1, (user_ptr[:-1] + user_ptr[1:]) // 2 * lanes
                      // max(int(user_ptr[-1]), 1))


def plan_epoch(pairs: EpochPairs, lanes: int, key: np.uint64, shuffle: bool, block: int,
               n_draws: int) -> tuple:
    """The epoch's visiting order, buckets and strata: ``(order, bucket_ptr, strata_items,
    item_ptr, sptr, spos, bits)``; ``order`` holds positions in ``pairs.pairs``."""
    n_users, n_items, P = pairs.n_users, pairs.n_items, len(pairs)
    L = min(lanes, n_items)  # no empty stratum
    order = np.empty(P, np.int32 if P < 2**31 else np.int64)
    if L == 1:  # no strata: the whole catalogue
        no_strata = (np.zeros(1, np.int32), np.array([0, n_items], np.int64),
                     np.zeros((1, 2), np.int64), np.zeros(1, np.int32),
                     pairs.catalogue_bits(n_draws))
        if not shuffle:  # the pairs in the caller's order
            order[:] = np.arange(P)
            return order, np.array([0, P], np.int64), *no_strata
        return (order, _visit_order(pairs.pairs, np.zeros(n_users, np.int64),
                                    np.zeros(n_items, np.int64), np.int64(1), key, True, order,
                                    np.int64(block)),
                *no_strata)
    items, item_ptr, stratum_of = _strata(np.int64(n_items), np.int64(L), key, pairs.item_pairs)
    bucket_ptr = _visit_order(pairs.pairs, _lanes(pairs.user_ptr, L), stratum_of, np.int64(L),
                              key, bool(shuffle), order, np.int64(block))
    return (order, bucket_ptr, items, item_ptr,
            *stratum_rows(pairs.indptr, pairs.indices, items, item_ptr, n_draws))


def _filter_bits(sptr: np.ndarray, item_ptr: np.ndarray, nnz: int, n_draws: int) -> int:
    """The finest of ``_FILTER_BITS`` whose filters fit ``cpu.BITSET_BUDGET_BYTES`` and that
    ``n_draws`` amortise; 0: none does."""
    for per_pos in _FILTER_BITS:
        if _bits_pay(1, _filters_size(sptr, item_ptr, np.int64(per_pos)), nnz, n_draws):
            return per_pos
    return 0


def filters(sptr: np.ndarray, spos: np.ndarray, item_ptr: np.ndarray,
            per_pos: int) -> np.ndarray:
    """:func:`_stratum_filters` at ``per_pos`` bits per positive, as int64 (``cpu._filtered``);
    0: none (an empty array: binary searches only)."""
    if per_pos == 0:
        return np.zeros((0, 1), np.int64)
    return _stratum_filters(sptr, spos, item_ptr, np.int64(per_pos),
                            _filters_size(sptr, item_ptr, np.int64(per_pos))).view(np.int64)


def stratum_rows(ip: np.ndarray, ix: np.ndarray, items: np.ndarray, item_ptr: np.ndarray,
                 n_draws: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The users' positives by stratum, ``(sptr, spos, bits)`` (:func:`_stratum_rows`), the
    fastest form that fits ``cpu.BITSET_BUDGET_BYTES`` and that ``n_draws`` amortise: an exact
    bit row per user and stratum (two words or more: ``spos`` empty); else the sorted lists
    with their finest :func:`filters` (``_FILTER_BITS``), or with none. Only the speed
    differs: the draws are the same. Int64 whatever the form, so the kernels see one type
    (each type is a compilation of ``cpu_train._train_kernel``, a minute or two).

    The bit rows cost a stratum's bits per row (25 M interactions: 1.6 GB), the filters
    ``_FILTER_BITS`` per positive and a word per row (25 M: 131 MB at 32 bits). With bit rows
    the kernel prefetches a pair's whole row ahead of it and each test is one bit, the fastest;
    past the budget, the scoring per candidate at 25 M (``experiments/results/epoch_scale.md``):
    the lists alone 88 ns, with filters of 4 bits per positive 53, 16 bits 39, 64 bits 36.
    """
    n_rows = (len(ip) - 1) * (len(item_ptr) - 1)
    words = max(2, (int(np.diff(item_ptr).max()) + 63) // 64)  # 2: not a filter (cpu._filter_of)
    if _bits_pay(n_rows, words, len(ix), n_draws):
        sptr, spos, bits = _stratum_rows(ip, ix, items, item_ptr, np.int64(words))
        return sptr, spos, bits.view(np.int64)
    sptr, spos, _ = _stratum_rows(ip, ix, items, item_ptr, np.int64(0))
    return sptr, spos, filters(sptr, spos, item_ptr,
                               _filter_bits(sptr, item_ptr, len(ix), n_draws))


def stratum_candidates(indptr: np.ndarray, indices: np.ndarray, pair_users: np.ndarray,
                       pair_items: np.ndarray, n_items: int, n_candidates: int, *, seed: int,
                       epoch: int, lanes: int) -> np.ndarray:
    """int64 ``[P, n_candidates]``: the candidates :func:`.cpu_train.train_epoch` draws for each
    pair with ``lanes`` > 1 (uniform over the user's non-positives in the positive's stratum,
    ``-1`` where there is none); for tests and inspection."""
    _require_numba()
    ip = np.ascontiguousarray(indptr, dtype=np.int64)
    ix = np.ascontiguousarray(indices, dtype=np.int32)
    pu = np.ascontiguousarray(pair_users, dtype=np.int32)
    pi = np.ascontiguousarray(pair_items, dtype=np.int32)
    key = _stream_key(seed, epoch)
    items, item_ptr, stratum_of = _strata(np.int64(n_items), np.int64(min(lanes, n_items)), key,
                                          np.bincount(pi, minlength=n_items).astype(np.int64))
    sptr, spos, bits = stratum_rows(ip, ix, items, item_ptr, len(pu) * n_candidates)
    return _stratum_sample_kernel(bits, pu, stratum_of[pi], items, item_ptr, sptr, spos,
                                  np.int64(n_candidates), key)
