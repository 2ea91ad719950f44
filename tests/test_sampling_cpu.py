"""CPU (numba) sampler and training epoch against the torch reference and a plain-numpy loop."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from recsys_metric.sampling import reference as ref

cpu = pytest.importorskip("recsys_metric.sampling.cpu")
if not cpu.HAS_NUMBA:
    pytest.skip("numba not installed", allow_module_level=True)
import numba  # noqa: E402

from recsys_metric.sampling import cpu_train, strata  # noqa: E402


def csr(rows, n_items):
    """(indptr int64, indices int32) torch tensors from a list of item lists (sorted here)."""
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=indptr[1:])
    indices = np.concatenate([np.sort(r) for r in rows] + [np.zeros(0)]).astype(np.int32)
    assert all(0 <= i < n_items for i in indices)
    return torch.from_numpy(indptr), torch.from_numpy(indices)


def random_rows(rng, n_users, n_items, extra=()):
    rows = [rng.choice(n_items, rng.integers(0, n_items // 2), replace=False)
            for _ in range(n_users)]
    return rows + [np.asarray(r) for r in extra]


@pytest.fixture
def no_bitset(monkeypatch):
    monkeypatch.setattr(cpu, "BITSET_BUDGET_BYTES", -1)


def no_bits(m, per_pos):
    """Within monkeypatch context ``m``: no exact bit rows, then the lists with filters of
    ``per_pos`` (a ``_FILTER_BITS``) bits per positive, or alone (``None``)."""
    if per_pos is None:
        m.setattr(cpu, "BITSET_BUDGET_BYTES", -1)
    else:  # the budget admits the filters (one row of words), never the bit rows
        m.setattr(strata, "_bits_pay", lambda rows, words, nnz, n_draws: rows == 1)
        m.setattr(strata, "_FILTER_BITS", per_pos)


@pytest.fixture
def threads():
    """Restore numba's thread count after a test that changes it."""
    n = numba.get_num_threads()
    yield numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(n)


# ------------------------------------------------------------------------------ sampling


def test_never_returns_a_positive_and_bitset_only_changes_speed(monkeypatch):
    rng = np.random.default_rng(0)
    n_items = 40
    rows = random_rows(rng, 60, n_items, extra=[[], np.arange(39), np.arange(n_items)])
    indptr, indices = csr(rows, n_items)
    users = torch.arange(len(rows)).repeat(3)
    got = cpu.sample_uniform(indptr, indices, users, n_items, 200, seed=3, offset=1)
    assert got.dtype == torch.int64 and got.shape == (len(users), 200)
    for b, u in enumerate(users.tolist()):
        if len(rows[u]) == n_items:
            assert (got[b] == -1).all()
        else:
            assert got[b].min() >= 0 and got[b].max() < n_items
            assert not np.isin(got[b].numpy(), rows[u]).any()
    monkeypatch.setattr(cpu, "BITSET_BUDGET_BYTES", -1)  # membership by binary search instead
    assert torch.equal(got, cpu.sample_uniform(indptr, indices, users, n_items, 200, 3, 1))


@pytest.mark.parametrize("bitset", [True, False])
@pytest.mark.parametrize("deg", [0, 3, 15, 26])  # rejection only ... mostly the rank map
def test_uniform_over_non_positives(request, bitset, deg):
    if not bitset:
        request.getfixturevalue("no_bitset")
    n_items = 30
    rng = np.random.default_rng(deg)
    pos = rng.choice(n_items, deg, replace=False)
    indptr, indices = csr([pos], n_items)
    got = cpu.sample_uniform(indptr, indices, torch.zeros(3000, dtype=torch.long), n_items, 20)
    counts = np.bincount(got.numpy().ravel(), minlength=n_items)
    assert counts[pos].sum() == 0
    free = np.setdiff1d(np.arange(n_items), pos)
    assert chisquare(counts[free]).pvalue > 1e-3


def test_reproducible_and_thread_independent(threads):
    rng = np.random.default_rng(1)
    indptr, indices = csr(random_rows(rng, 100, 50), 50)
    users = torch.from_numpy(rng.integers(0, 100, 5000))
    a = cpu.sample_uniform(indptr, indices, users, 50, 10, seed=7, offset=2)
    assert torch.equal(a, cpu.sample_uniform(indptr, indices, users, 50, 10, seed=7, offset=2))
    for seed, offset in ((7, 3), (8, 2)):
        b = cpu.sample_uniform(indptr, indices, users, 50, 10, seed=seed, offset=offset)
        assert (a != b).float().mean() > 0.5
    if threads >= 2:
        numba.set_num_threads(1)
        assert torch.equal(a, cpu.sample_uniform(indptr, indices, users, 50, 10, seed=7, offset=2))


def test_edge_cases():
    n_items = 6
    rows = [[], [0, 1, 2, 4, 5], list(range(n_items)), [1]]
    indptr, indices = csr(rows, n_items)
    got = cpu.sample_uniform(indptr, indices, torch.tensor([0, 1, 2, 3]), n_items, 300)
    assert set(got[0].tolist()) == set(range(n_items))  # no positives: the whole catalogue
    assert (got[1] == 3).all()  # every item but one
    assert (got[2] == -1).all()  # every item: no negative
    assert set(got[3].tolist()) == {0, 2, 3, 4, 5}  # U larger than the non-positives
    g = torch.Generator().manual_seed(0)
    emb_u, emb_i = torch.randn(4, 3, generator=g), torch.randn(n_items, 3, generator=g)
    neg, viol = cpu.hardest_negatives(
        indptr, indices, torch.tensor([2, 1]), torch.tensor([0, 0]), emb_u, emb_i, 5, 1.0
    )
    assert neg.tolist() == [-1, 3] and viol[0] == 0
    empty = cpu.sample_uniform(indptr, indices, torch.zeros(0, dtype=torch.long), n_items, 4)
    assert empty.shape == (0, 4)


def test_single_item_catalogue_raises():
    indptr, indices = csr([[0], []], 1)
    with pytest.raises(ValueError, match="at least 2 items"):
        cpu.sample_uniform(indptr, indices, torch.tensor([1]), 1, 3)
    with pytest.raises(ValueError, match="at least 2 items"):
        cpu.hardest_negatives(
            indptr, indices, torch.tensor([1]), torch.tensor([0]), torch.ones(2, 2),
            torch.ones(1, 2), 3, 1.0,
        )
    with pytest.raises(ValueError, match="at least 2 items"):
        z = np.zeros((1, 2), np.float32)
        cpu_train.train_epoch(
            indptr.numpy(), indices.numpy(), np.zeros(1, np.int32), np.zeros(1, np.int32),
            np.zeros((2, 2), np.float32), z, np.zeros((2, 2), np.float32), z.copy(),
            n_candidates=2, margin=1.0, lr=0.1, rank_weight=True, clip_norm=1.0, seed=0, epoch=0,
        )


def test_given_candidates_match_reference_exactly():
    rng = np.random.default_rng(2)
    n_users, n_items, dim, B, U = 30, 25, 16, 400, 12
    indptr, indices = csr(random_rows(rng, n_users, n_items), n_items)
    g = torch.Generator().manual_seed(2)
    ue, ie = torch.randn(n_users, dim, generator=g), torch.randn(n_items, dim, generator=g)
    users = torch.from_numpy(rng.integers(0, n_users, B))
    users[:60] = 0
    ie[3] = ie[7] = ue[0]  # both at distance 0 from user 0: an exact tie, the first one wins
    pos = torch.from_numpy(rng.integers(0, n_items, B))
    cands = torch.from_numpy(rng.integers(-1, n_items, (B, U)))  # -1: invalid candidate
    cands[:40, :2] = torch.tensor([7, 3])
    cands[40:60, :3] = torch.tensor([3, 7, 3])  # duplicates tie too
    cands[60:70] = -1  # no valid candidate at all
    for margin in (0.0, 5.0, 50.0):
        args = (indptr, indices, users, pos, ue, ie, U, margin)
        want = ref.hardest_negatives(*args, candidates=cands)
        got = cpu.hardest_negatives(*args, candidates=cands)
        assert got[0].dtype == torch.int64 and got[1].dtype == torch.int32
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert (got[0][60:70] == -1).all()
    assert (got[0][:40] == 7).all() and (got[0][40:60] == 3).all()


def test_sampled_hardest_scores_the_sample_uniform_candidates():
    rng = np.random.default_rng(3)
    n_users, n_items, dim, B, U = 40, 50, 8, 500, 10
    indptr, indices = csr(random_rows(rng, n_users, n_items, extra=[range(n_items)]), n_items)
    g = torch.Generator().manual_seed(3)
    ue, ie = torch.randn(n_users + 1, dim, generator=g), torch.randn(n_items, dim, generator=g)
    users = torch.from_numpy(rng.integers(0, n_users + 1, B))
    pos = torch.from_numpy(rng.integers(0, n_items, B))
    cands = cpu.sample_uniform(indptr, indices, users, n_items, U, seed=5, offset=9)
    want = ref.hardest_negatives(indptr, indices, users, pos, ue, ie, U, 2.0, candidates=cands)
    got = cpu.hardest_negatives(indptr, indices, users, pos, ue, ie, U, 2.0, seed=5, offset=9)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ------------------------------------------------------------------------------- training


def slow_steps(grads, lr, clip):
    """Adagrad (element-wise, or row-wise for [n, 1] accumulators) and clipping, in numpy."""
    f32 = np.float32
    for emb, acc, r, g in grads:
        acc[r] += g * g if acc.shape[1] > 1 else (g * g).mean()
        emb[r] -= f32(lr) * g / (np.sqrt(acc[r]) + f32(1e-10))
        norm = np.sqrt((emb[r] ** 2).sum())
        if clip > 0 and norm > clip:
            emb[r] *= f32(clip) / norm


def slow_update(ue, ie, ua, ia, u, p, n, m, *, U, margin, lr, rank_weight, clip):
    """Step of one scored pair on the current rows; ``w * h`` or None when it does not update."""
    if m == 0 or n < 0:
        return None
    f32 = np.float32
    w = f32(np.log1p((ie.shape[0] * m) // U)) if rank_weight else f32(1.0)
    h = f32(margin) + ((ue[u] - ie[p]) ** 2).sum() - ((ue[u] - ie[n]) ** 2).sum()
    if h <= 0:
        return None
    slow_steps([(ue, ua, u, 2 * w * (ie[n] - ie[p])), (ie, ia, p, -2 * w * (ue[u] - ie[p])),
                (ie, ia, n, 2 * w * (ue[u] - ie[n]))], lr, clip)
    return float(w * h)


def slow_candidates(indptr, indices, pu, n_items, U, seed, epoch):
    return cpu.sample_uniform(torch.from_numpy(indptr), torch.from_numpy(indices),
                              torch.from_numpy(pu.astype(np.int64)), n_items, U, seed, epoch)


def slow_sequential_epoch(indptr, indices, pu, pi, ue, ie, ua, ia, *, U, seed, epoch, **kw):
    """Plain SGD over the pairs in order, each scored on the current tables."""
    cands = slow_candidates(indptr, indices, pu, ie.shape[0], U, seed, epoch)
    loss, active = 0.0, 0
    for i in range(len(pu)):
        u, p = int(pu[i]), int(pi[i])
        neg, viol = ref.score_candidates(torch.from_numpy(ue), torch.from_numpy(ie),
                                         torch.tensor([u]), torch.tensor([p]), cands[i:i + 1],
                                         kw["margin"])
        out = slow_update(ue, ie, ua, ia, u, p, int(neg[0]), int(viol[0]), U=U, **kw)
        if out is not None:
            loss, active = loss + out, active + 1
    return loss, active


def slow_strata_epoch(indptr, indices, pu, pi, ue, ie, ua, ia, *, U, seed, epoch, lanes, block,
                      shuffle=False, **kw):
    """train_epoch in numpy: users in ``lanes`` contiguous ranges, items in ``lanes`` strata;
    lane l's pairs whose positive is in stratum s form bucket (l, s), in the caller's order (or
    shuffled: the kernel's own order, checked to be a permutation of the bucket); at step t,
    lane l takes block t // lanes of its bucket with s = (l + t) % lanes, scores it against
    the tables at the block start (candidates from stratum s), then updates the pairs one by
    one. One lane: the whole catalogue, every pair, block after block. (The lanes of a step
    touch disjoint rows, so running them one after another is exact.)"""
    L = lanes
    key = strata._stream_key(seed, epoch)
    if L == 1:
        cands = slow_candidates(indptr, indices, pu, ie.shape[0], U, seed, epoch)
        stratum_of = np.zeros(ie.shape[0], np.int64)
    else:
        cands = torch.from_numpy(strata.stratum_candidates(
            indptr, indices, pu, pi, ie.shape[0], U, seed=seed, epoch=epoch, lanes=L))
        items, ptr, stratum_of = strata._strata(np.int64(ie.shape[0]), np.int64(L), key,
                                                item_pairs(pi, ie.shape[0]))
    pairs = strata.prepare_pairs(indptr, indices, pu, pi, len(ue), ie.shape[0])
    pos = np.empty(len(pu), np.int32)
    bptr = strata._visit_order(pairs.pairs, strata._lanes(pairs.user_ptr, L), stratum_of,
                               np.int64(L), key, shuffle, pos, np.int64(block))
    lane_of = np.empty(len(pu), np.int64)  # lane of each pair
    lane_of[pos] = np.repeat(np.arange(L * L) // L, np.diff(bptr))
    assert (np.diff(lane_of[np.argsort(pu, kind="stable")]) >= 0).all()  # user ranges
    per_lane = np.bincount(lane_of, minlength=L)
    assert per_lane.max() - per_lane.min() <= 2 * np.bincount(pu).max()  # balanced
    bucket = {}
    for lane in range(L):
        for s in range(L):
            g = np.flatnonzero((lane_of == lane) & (stratum_of[pi] == s))  # caller's order
            got = pos[bptr[lane * L + s]:bptr[lane * L + s + 1]]
            if shuffle:
                np.testing.assert_array_equal(np.sort(got), g)
                g = got
            np.testing.assert_array_equal(got, g)
            bucket[lane, s] = g
    n_steps = L * max(-(-len(g) // block) for g in bucket.values())
    blocks = [bucket[lane, (lane + t) % L][t // L * block:(t // L + 1) * block]
              for t in range(n_steps) for lane in range(L)]
    loss, active = 0.0, 0
    for idx in blocks:
        neg, viol = ref.score_candidates(
            torch.from_numpy(ue.copy()), torch.from_numpy(ie.copy()),
            torch.from_numpy(pu[idx].astype(np.int64)),
            torch.from_numpy(pi[idx].astype(np.int64)), cands[idx], kw["margin"])
        for k, i in enumerate(idx):
            out = slow_update(ue, ie, ua, ia, int(pu[i]), int(pi[i]), int(neg[k]), int(viol[k]),
                              U=U, **kw)
            if out is not None:
                loss, active = loss + out, active + 1
    return loss, active


def item_pairs(pi, n_items):
    return np.bincount(pi, minlength=n_items).astype(np.int64)


def accumulators(ue, ie, rowwise):
    if rowwise:
        return np.zeros((len(ue), 1), np.float32), np.zeros((len(ie), 1), np.float32)
    return np.zeros_like(ue), np.zeros_like(ie)


def toy_problem(seed=0, n_users=25, n_items=20, dim=6):
    rng = np.random.default_rng(seed)
    rows = random_rows(rng, n_users - 1, n_items, extra=[np.arange(n_items - 1)])
    indptr, indices = (t.numpy() for t in csr(rows, n_items))
    pu = np.repeat(np.arange(n_users, dtype=np.int32), np.diff(indptr))
    pi = indices.copy()
    order = rng.permutation(len(pu))
    ue = (rng.standard_normal((n_users, dim)) * 0.3).astype(np.float32)
    ie = (rng.standard_normal((n_items, dim)) * 0.3).astype(np.float32)
    return indptr, indices, pu[order], pi[order], ue, ie


@pytest.mark.parametrize("lanes,rank_weight,clip,rowwise,shuffle", [
    (1, True, 1.0, False, False), (1, True, 1.0, False, True), (2, True, 1.0, False, False),
    (2, False, 0.0, False, True), (3, True, 1.0, True, True)])
def test_train_epoch_matches_slow_strata(threads, lanes, rank_weight, clip, rowwise, shuffle):
    indptr, indices, pu, pi, ue, ie = toy_problem(seed=1, n_users=60, n_items=40, dim=6)
    kw = dict(margin=0.8, lr=0.05, rank_weight=rank_weight, seed=11)
    fast = [ue.copy(), ie.copy(), *accumulators(ue, ie, rowwise)]
    slow = [a.copy() for a in fast]
    for epoch in range(2):
        got = cpu_train.train_epoch(indptr, indices, pu, pi, *fast, n_candidates=5, clip_norm=clip,
                                    epoch=epoch, lanes=lanes, block_size=50, **kw)
        want = slow_strata_epoch(indptr, indices, pu, pi, *slow, U=5, clip=clip, epoch=epoch,
                                lanes=lanes, block=50, **kw)
        assert got[1] == want[1] > 0
        assert got[0] == pytest.approx(want[0], rel=1e-4)
        for a, b in zip(fast, slow, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dim", [8, 32, 40, 64, 128])
def test_sqdist_vector_code_is_the_distance(dim):
    """dims 32, 64, 128 take the straight-line vector intrinsic, the others the loop."""
    dist = numba.njit(lambda a, ia, b, ib: cpu._sqdist(a, ia, b, ib))
    rng = np.random.default_rng(dim)
    a = rng.standard_normal((5, dim)).astype(np.float32)
    b = rng.standard_normal((7, dim)).astype(np.float32)
    for ia, ib in [(0, 0), (4, 6), (2, 3)]:
        want = float(((a[ia].astype(np.float64) - b[ib]) ** 2).sum())
        assert dist(a, ia, b, ib) == pytest.approx(want, rel=1e-5)
    assert dist(a, 1, a, 1) == 0.0


@pytest.mark.parametrize("dim", [32, 64])
def test_train_epoch_matches_slow_strata_at_vector_widths(threads, dim):
    """dims 32, 64, 128 take the vector code (distances, triplet updates) in an epoch"""
    indptr, indices, pu, pi, ue, ie = toy_problem(seed=5, n_users=40, n_items=30, dim=dim)
    kw = dict(margin=0.8, lr=0.05, rank_weight=True, seed=2)
    fast = [ue.copy(), ie.copy(), *accumulators(ue, ie, False)]
    slow = [a.copy() for a in fast]
    got = cpu_train.train_epoch(indptr, indices, pu, pi, *fast, n_candidates=5, clip_norm=1.0,
                                epoch=0, lanes=2, block_size=40, shuffle=True, **kw)
    want = slow_strata_epoch(indptr, indices, pu, pi, *slow, U=5, clip=1.0, epoch=0, lanes=2,
                             block=40, shuffle=True, **kw)
    assert got[1] == want[1] > 0
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rowwise", [False, True])
def test_blocks_of_one_pair_are_the_sequential_loop(threads, rowwise):
    indptr, indices, pu, pi, ue, ie = toy_problem(seed=2)
    kw = dict(margin=0.8, lr=0.05, rank_weight=True, seed=3)
    fast = [ue.copy(), ie.copy(), *accumulators(ue, ie, rowwise)]
    slow = [a.copy() for a in fast]
    for epoch in range(3):
        got = cpu_train.train_epoch(indptr, indices, pu, pi, *fast, n_candidates=5, clip_norm=1.0,
                                    epoch=epoch, lanes=1, block_size=1, **kw)
        want = slow_sequential_epoch(indptr, indices, pu, pi, *slow, U=5, clip=1.0, epoch=epoch,
                                     **kw)
        assert got[1] == want[1] > 0
        assert got[0] == pytest.approx(want[0], rel=1e-4)
        for a, b in zip(fast, slow, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("deg", [0, 12, 27])  # rejection only ... mostly the rank map
def test_stratum_candidates_uniform_over_the_stratum_non_positives(deg, monkeypatch):
    n_items, lanes = 60, 2
    rng = np.random.default_rng(deg)
    pos = rng.choice(n_items, deg, replace=False)
    indptr, indices = (t.numpy() for t in csr([pos, [], list(range(n_items))], n_items))
    pu = np.zeros(4000, np.int32)
    pi = rng.integers(0, n_items, 4000).astype(np.int32)
    key = strata._stream_key(3, 1)
    items, ptr, stratum_of = strata._strata(np.int64(n_items), np.int64(lanes), key,
                                            item_pairs(pi, n_items))
    got = strata.stratum_candidates(indptr, indices, pu, pi, n_items, 20, seed=3, epoch=1,
                                       lanes=lanes)
    assert got.shape == (4000, 20) and (got >= 0).all()
    assert (stratum_of[got] == stratum_of[pi][:, None]).all()  # the positive's stratum
    for per_pos in (None, (1,), (2,)):
        with monkeypatch.context() as m:  # lists only, or coarse filters: only the speed
            no_bits(m, per_pos)
            assert np.array_equal(got, strata.stratum_candidates(
                indptr, indices, pu, pi, n_items, 20, seed=3, epoch=1, lanes=lanes))
    for s in range(lanes):
        counts = np.bincount(got[stratum_of[pi] == s].ravel(), minlength=n_items)
        free = np.setdiff1d(items[ptr[s]:ptr[s + 1]], pos)
        assert counts.sum() == counts[free].sum()  # never a positive, never another stratum
        assert chisquare(counts[free]).pvalue > 1e-3
    # a user with nothing: anything of the stratum; a user with everything: no negative
    other = strata.stratum_candidates(indptr, indices, np.array([1, 2], np.int32),
                                         np.array([0, 0], np.int32), n_items, 50, seed=0,
                                         epoch=0, lanes=lanes)
    assert (other[0] >= 0).all() and (other[1] == -1).all()


@numba.njit
def answers(spos, sptr, bits, item_ptr):
    """cpu._is_positive at every position of every row (r = u * L + s) of the strata."""
    n_users, L = sptr.shape[0], sptr.shape[1] - 1
    out = np.zeros(n_users * item_ptr[-1], np.bool_)
    for u in range(n_users):
        for s in range(L):
            a = sptr[u, s]
            for j in range(item_ptr[s + 1] - item_ptr[s]):
                out[u * item_ptr[-1] + item_ptr[s] + j] = cpu._is_positive(
                    spos, a, sptr[u, s + 1] - a, bits, u * L + s, np.int64(j))
    return out


@pytest.mark.parametrize("lanes", [1, 3])
def test_filters_answer_every_position_as_the_sorted_rows(lanes):
    # the positives' filters: a clear bit answers "free", a set bit of an exact (shift 0) row
    # "positive", the binary search the rest; whatever their resolution, every answer is the
    # sorted rows', across word boundaries, for empty and full rows
    rng = np.random.default_rng(lanes)
    n_items = 1000
    rows = [rng.choice(n_items, k, replace=False)
            for k in (0, 1, 2, 5, 30, 100, 400, 999, n_items)]
    indptr, indices = (t.numpy() for t in csr(rows, n_items))
    items, ptr, _ = strata._strata(np.int64(n_items), np.int64(lanes), strata._stream_key(0, 0),
                                   np.ones(n_items, np.int64))
    sptr, spos, _ = strata._stratum_rows(indptr, indices, items, ptr, np.int64(0))
    want = answers(spos, sptr, np.zeros((0, 1), np.int64), ptr)  # binary searches only
    member = np.zeros((len(rows), n_items), bool)
    for u, r in enumerate(rows):
        member[u, r] = True
    assert np.array_equal(want, member[:, items].ravel())
    words = max(2, (int(np.diff(ptr).max()) + 63) // 64)
    exact = strata._stratum_rows(indptr, indices, items, ptr, np.int64(words))
    assert np.array_equal(exact[0], sptr)  # the bit rows alone, no lists
    assert np.array_equal(answers(exact[1], sptr, exact[2].view(np.int64), ptr), want)
    for per_pos in (1, 2, 16, 1 << 31):
        bits = strata.filters(sptr, spos, ptr, per_pos)
        assert bits.dtype == np.int64 and bits.shape == (
            strata._filters_size(sptr, ptr, np.int64(per_pos)), 1)
        shifts = bits[:len(rows) * lanes, 0] & 63
        n_pos, size = np.diff(sptr, axis=1).ravel(), np.repeat(np.diff(ptr)[None], len(rows), 0)
        assert (((size.ravel() - 1) >> shifts) + 1 <= np.maximum(64, per_pos * n_pos)).all()
        assert (shifts[n_pos > 0] == 0).all() == (per_pos == 1 << 31)  # exact: every row
        assert np.array_equal(answers(spos, sptr, bits, ptr), want), per_pos


@pytest.mark.parametrize("lanes", [1, 2])
def test_run_epoch_on_pairs_prepared_once_is_train_epoch(lanes):
    # the Trainer prepares the pairs once per fit (and, with one lane, the positives bit-set
    # with them): every epoch must still be train_epoch's
    indptr, indices, pu, pi, ue, ie = toy_problem(seed=5, n_users=80, n_items=50, dim=8)
    once = [ue.copy(), ie.copy(), np.zeros_like(ue), np.zeros_like(ie)]
    each = [a.copy() for a in once]
    pairs = cpu_train.prepare_pairs(indptr, indices, pu, pi, len(ue), len(ie))
    assert len(pairs) == len(pu) and np.array_equal(pairs.pairs, np.stack([pu, pi], axis=1))
    kw = dict(n_candidates=5, margin=0.5, lr=0.1, rank_weight=True, clip_norm=1.0, seed=2,
              lanes=lanes, block_size=32, shuffle=True)
    for epoch in range(3):
        got = cpu_train.run_epoch(pairs, *once, epoch=epoch, **kw)
        assert got == cpu_train.train_epoch(indptr, indices, pu, pi, *each, epoch=epoch, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(once, each, strict=True))
    with pytest.raises(ValueError, match="tables of 79 users and 50 items, pairs of 80 and 50"):
        cpu_train.run_epoch(pairs, ue[1:].copy(), ie.copy(), np.zeros_like(ue[1:]),
                            np.zeros_like(ie), epoch=0, **kw)


@pytest.mark.parametrize("lanes", [1, 2])
def test_filters_only_change_the_speed_of_an_epoch(lanes, monkeypatch):
    # exact bit rows (the default here), the lists with coarse filters (some rows then
    # searched too), with fine ones, or alone: the same epochs, bit for bit
    indptr, indices, pu, pi, ue, ie = toy_problem(seed=6, n_users=80, n_items=300, dim=8)
    kw = dict(n_candidates=8, margin=0.5, lr=0.1, rank_weight=True, clip_norm=1.0, seed=2,
              lanes=lanes, block_size=32, shuffle=True)
    out = []
    for form in ("bit rows", (1,), (64,), None):
        with monkeypatch.context() as m:
            if form != "bit rows":
                no_bits(m, form)
            pairs = cpu_train.prepare_pairs(indptr, indices, pu, pi, len(ue), len(ie))
            n_draws = len(pairs) * kw["n_candidates"]
            if lanes == 1:
                bits = pairs.catalogue_bits(n_draws)
            else:
                plan = strata.plan_epoch(pairs, lanes, strata._stream_key(2, 0), True, 32,
                                         n_draws)
                bits = plan[-1]
            assert bits.dtype == np.int64 and (bits.shape[0] > 0) == (form is not None)
            assert (bits.shape[1] > 1) == (form == "bit rows")
            if form == (1,):
                assert (bits[:len(ue) * lanes, 0] & 63).any()  # coarse rows
            tables = [ue.copy(), ie.copy(), np.zeros_like(ue), np.zeros_like(ie)]
            res = [cpu_train.run_epoch(pairs, *tables, epoch=e, **kw) for e in range(2)]
            out.append((res, tables))
    for res, tables in out[1:]:
        assert res == out[0][0]
        assert all(np.array_equal(a, b) for a, b in zip(tables, out[0][1], strict=True))


@pytest.mark.parametrize("rowwise", [False, True])
def test_adagrad_accumulator_is_zeros_half_a_page_from_its_table(rowwise):
    base = np.ones((1000, 64), np.float32)
    for emb in (base, base[1:], base.ravel()[3:3 + 999 * 64].reshape(999, 64)):  # any offsets
        acc = cpu_train.adagrad_accumulator(emb, rowwise)
        assert acc.shape == (len(emb), 1 if rowwise else 64) and acc.dtype == np.float32
        assert acc.flags.c_contiguous and acc.flags.writeable and not acc.any()
        assert acc.ctypes.data % 64 == 0
        assert 2048 - 64 < (acc.ctypes.data - emb.ctypes.data) % 4096 <= 2048


def test_strata_partition_the_items_evenly_and_change_every_epoch():
    rng = np.random.default_rng(0)
    n_items = 500
    pi = (rng.pareto(1.0, 20000) * 5).astype(np.int32) % n_items  # skewed popularity
    pairs = np.bincount(pi, minlength=n_items)
    splits = []
    for epoch in range(3):
        items, ptr, stratum_of = strata._strata(
            np.int64(n_items), np.int64(3), strata._stream_key(0, epoch), pairs)
        assert sorted(items.tolist()) == list(range(n_items))
        for s in range(3):
            assert (stratum_of[items[ptr[s]:ptr[s + 1]]] == s).all()
            assert (np.diff(items[ptr[s]:ptr[s + 1]]) > 0).all()
        load = np.bincount(stratum_of, weights=pairs, minlength=3)
        assert load.max() - load.min() <= pairs.max()  # even work per lane and round
        splits.append(stratum_of)
    assert (splits[0] != splits[1]).mean() > 0.4 and (splits[1] != splits[2]).mean() > 0.4


def test_shuffle_draws_random_blocks_each_in_the_callers_order():
    n, block = 2500, 500  # one lane and stratum: 5 random bins of ~500 pairs, in order
    pairs = np.stack([np.zeros(n, np.int32), np.arange(n, dtype=np.int32)], axis=1)
    where = np.zeros((3, 5), np.int64)  # bins of pairs 0, 1250, 2499 over many epochs
    pos = np.empty(n, np.int32)
    orders = set()
    for epoch in range(1000):
        ptr = strata._visit_order(pairs, np.zeros(1, np.int64), np.zeros(n, np.int64),
                                  np.int64(1), strata._stream_key(0, epoch), True, pos,
                                  np.int64(block))
        assert ptr.tolist() == [0, n] and np.array_equal(np.sort(pos), np.arange(n))
        run = np.concatenate([[0], np.cumsum(np.diff(pos) < 0)])  # ascending runs: the bins
        assert run[-1] <= 4
        for r, g in enumerate((0, 1250, 2499)):
            where[r, run[pos == g][0]] += 1
        orders.add(pos[:50].tobytes())
    assert len(orders) == 1000  # a new sample each epoch
    for r in range(3):  # each pair in each bin with equal probability
        assert chisquare(where[r]).pvalue > 1e-3
    strata._visit_order(pairs, np.zeros(1, np.int64), np.zeros(n, np.int64), np.int64(1),
                        strata._stream_key(0, 0), False, pos, np.int64(block))
    assert np.array_equal(pos, np.arange(n))  # no shuffle: the caller's order


@pytest.mark.parametrize("lanes", [2, 3])  # 3: more lanes than threads
def test_train_epoch_bit_identical_on_1_and_2_threads(threads, lanes):
    if threads < 2:
        pytest.skip("numba has a single thread here")
    indptr, indices, pu, pi, ue, ie = toy_problem(seed=4, n_users=300, n_items=120, dim=16)
    out = []
    for n in (1, 2):
        numba.set_num_threads(n)
        arrays = [ue.copy(), ie.copy(), np.zeros_like(ue), np.zeros_like(ie)]
        res = [cpu_train.train_epoch(indptr, indices, pu, pi, *arrays, n_candidates=10, margin=0.5,
                                     lr=0.1, rank_weight=True, clip_norm=1.0, seed=1, epoch=e,
                                     lanes=lanes, block_size=256) for e in range(2)]
        out.append((res, arrays))
    assert out[0][0] == out[1][0]
    for a, b in zip(out[0][1], out[1][1], strict=True):
        assert np.array_equal(a, b)


def update_block_asm(**override):
    """Assembly of the per-pair update loop, compiled afresh (cached code cannot be inspected)."""
    opts = {**cpu_train._update_block.targetoptions, **override}
    for k in ("cache", "nopython"):
        opts.pop(k, None)
    fn = numba.njit(**opts)(cpu_train._update_block.py_func)
    rng = np.random.default_rng(0)
    ue, ie = (rng.standard_normal((n, 8)).astype(np.float32) for n in (4, 6))
    pairs = np.array([[0, 0], [1, 1], [2, 2]], np.int32)
    fn(pairs, 3, ue, np.zeros_like(ue), ie, np.zeros_like(ie), np.float32(1.0),
       np.float32(0.1), np.float32(1.0), np.ones(11, np.float32), np.empty((3, 8), np.float32),
       np.array([3, 4, 5], np.int64), np.ones(3, np.int32))
    return "".join(fn.inspect_asm().values())


def test_update_loop_makes_no_reference_count_calls():
    # every incref/decref is an atomic operation on a counter both threads write: in the loop
    # over a block's pairs they cost two threads 9% of an epoch
    asm = update_block_asm()
    assert "NRT_incref" not in asm and "NRT_decref" not in asm
    assert "NRT_decref" in update_block_asm(_nrt=True)  # the check can see them


@pytest.mark.parametrize("lanes", [1, 3])
def test_more_tasks_than_threads_neither_hang_nor_change_the_result(lanes):
    # the kernel's tasks wait for one another's claimed work: with more tasks than threads, some
    # start only when others are done. In a subprocess with a timeout, so that a deadlock fails
    # the test instead of hanging the run.
    code = f"""
import numba, numpy as np
from recsys_metric.sampling import cpu_train
from tests.test_sampling_cpu import toy_problem
indptr, indices, pu, pi, ue, ie = toy_problem(seed=4, n_users=300, n_items=120, dim=16)
out = []
for tasks in (None, 5):
    if tasks:
        numba.get_num_threads = lambda: tasks
    arrays = [ue.copy(), ie.copy(), np.zeros_like(ue), np.zeros_like(ie)]
    res = [cpu_train.train_epoch(indptr, indices, pu, pi, *arrays, n_candidates=10, margin=0.5,
                                 lr=0.1, rank_weight=True, clip_norm=1.0, seed=1, epoch=e,
                                 lanes={lanes}, block_size=64, shuffle=True) for e in range(2)]
    out.append((res, arrays))
assert out[0][0] == out[1][0]
assert all(np.array_equal(a, b) for a, b in zip(out[0][1], out[1][1], strict=True))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr


def test_train_epoch_learns_planted_clusters_within_clip_norm():
    rng = np.random.default_rng(5)
    n, dim, clip = 40, 8, 1.0
    half = n // 2
    rows = [rng.choice(half, 15, replace=False) + (u >= half) * half for u in range(n)]
    indptr, indices = (t.numpy() for t in csr(rows, n))
    pu = np.repeat(np.arange(n, dtype=np.int32), np.diff(indptr))
    pi = indices.copy()
    ue = (rng.standard_normal((n, dim)) * 0.1).astype(np.float32)
    ie = (rng.standard_normal((n, dim)) * 0.1).astype(np.float32)
    ua, ia = np.zeros_like(ue), np.zeros_like(ie)
    losses = []
    for epoch in range(12):
        order = rng.permutation(len(pu))
        loss, active = cpu_train.train_epoch(
            indptr, indices, pu[order], pi[order], ue, ie, ua, ia, n_candidates=10, margin=0.5,
            lr=0.1, rank_weight=True, clip_norm=clip, seed=0, epoch=epoch, lanes=2, block_size=64,
        )
        losses.append(loss / len(pu))
    assert losses[-1] < 0.15 * losses[0]
    assert np.linalg.norm(ue, axis=1).max() <= clip * (1 + 1e-5)
    assert np.linalg.norm(ie, axis=1).max() <= clip * (1 + 1e-5)
    d = ((ue[:, None] - ie[None]) ** 2).sum(-1)
    same = np.equal.outer(np.arange(n) >= half, np.arange(n) >= half)
    assert (np.where(same, d, 0).sum(1) / half < np.where(~same, d, 0).sum(1) / half).all()


@pytest.mark.parametrize("backend,optimizer", [("cpu", "adagrad"), ("cpu", "adagrad_row"),
                                               ("torch", "adagrad_row")])  # torch ignores lanes
def test_two_lanes_learn_the_checkerboard(threads, backend, optimizer):
    from recsys_metric import Recommender, TrainConfig

    from .conftest import checkerboard
    from .test_recommender import FAST, half_of

    model = Recommender(TrainConfig(**FAST, backend=backend, lanes=2, optimizer=optimizer),
                        index="exact").fit(checkerboard(40, 20), show_progress=False)
    assert model.training_loop_ == ("fused-cpu" if backend == "cpu" else "torch+torch")
    for u in range(40):
        ids, _ = model.recommend(f"u{u}", N=10, filter_already_liked_items=False)
        assert all(half_of(i) == u % 2 for i in ids), (u, ids)
    for table in (model.user_embeddings_, model.item_embeddings_):
        assert np.linalg.norm(table, axis=1).max() <= 1.0 + 1e-5


def test_row_adagrad_torch_optimizer_matches_the_numpy_rule():
    from recsys_metric.train import RowAdagrad

    emb = torch.nn.Embedding(5, 4, sparse=True)
    w0 = emb.weight.detach().numpy().copy()
    opt = RowAdagrad(emb.parameters(), lr=0.1)
    acc = np.zeros((5, 1), np.float32)
    for rows in ([0, 2, 2], [1, 2]):
        idx = torch.tensor(rows)
        opt.zero_grad()
        (emb(idx) ** 2).sum().backward()
        g = np.zeros_like(w0)
        np.add.at(g, rows, 2 * w0[rows])  # duplicates summed, as the coalesced sparse grad
        for r in sorted(set(rows)):
            acc[r] += (g[r] ** 2).mean()
            w0[r] -= np.float32(0.1) * g[r] / (np.sqrt(acc[r]) + np.float32(1e-10))
        opt.step()
        np.testing.assert_allclose(emb.weight.detach().numpy(), w0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(opt.state[emb.weight]["sum"].numpy(), acc, rtol=1e-5)


def test_lanes_config_flag():
    from recsys_metric import TrainConfig
    from recsys_metric.cli import _config, build_parser

    for bad in (0, 1.5, "2", None):
        with pytest.raises(ValueError, match="lanes"):
            TrainConfig(lanes=bad).validate()
    assert TrainConfig().lanes == 2 and TrainConfig.from_dict({"lanes": 3}).lanes == 3
    assert TrainConfig.from_dict({"hogwild": True}) == TrainConfig()  # saved by an earlier version
    args = build_parser().parse_args(["train", "r.csv", "--out", "m", "--lanes", "3"])
    assert _config(args).lanes == 3


def test_train_epoch_rejects_bad_tables():
    indptr, indices, pu, pi, ue, ie = toy_problem()
    with pytest.raises(ValueError, match="float32"):
        cpu_train.train_epoch(indptr, indices, pu, pi, ue.astype(np.float64), ie, np.zeros_like(ue),
                              np.zeros_like(ie), n_candidates=3, margin=1.0, lr=0.1,
                              rank_weight=True, clip_norm=1.0, seed=0, epoch=0)
    with pytest.raises(ValueError, match="pair_items"):
        cpu_train.train_epoch(indptr, indices, pu, pi + 100, ue, ie, np.zeros_like(ue),
                              np.zeros_like(ie), n_candidates=3, margin=1.0, lr=0.1,
                              rank_weight=True, clip_norm=1.0, seed=0, epoch=0)


def test_imports_without_numba():
    # a fresh interpreter: `import numba` raises ImportError there (sys.modules entry None), so
    # cpu, cpu_train and _numba_ops are all imported from scratch without it
    code = """
import sys
sys.modules["numba"] = None
import torch
import recsys_metric.sampling
from recsys_metric.sampling import _numba_ops, cpu, cpu_train, strata
assert not cpu.HAS_NUMBA and not _numba_ops.HAS_NUMBA
for call in (
    lambda: cpu.sample_uniform(torch.tensor([0, 0]), torch.zeros(0, dtype=torch.int32),
                               torch.tensor([0]), 3, 2),
    lambda: cpu_train.train_epoch(None, None, None, None, None, None, None, None,
                                  n_candidates=1, margin=1.0, lr=0.1, rank_weight=True,
                                  clip_norm=1.0, seed=0, epoch=0),
    lambda: strata.stratum_candidates(None, None, None, None, 3, 1, seed=0, epoch=0, lanes=2),
):
    try:
        call()
    except ImportError as e:
        assert "needs numba" in str(e), e
    else:
        raise AssertionError("no ImportError")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
