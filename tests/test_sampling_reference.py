"""The torch reference sampler (sampling/reference.py): the contract every backend matches."""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats
import torch

from recsys_metric.sampling import reference as ref


def csr(rows, n_items):
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.concatenate([sorted(r) for r in rows]).astype(np.int32) if indptr[-1] else \
        np.zeros(0, np.int32)
    return torch.as_tensor(indptr), torch.as_tensor(indices), n_items


def test_never_a_positive_and_uniform_chi_square():
    rng = np.random.default_rng(0)
    n_items = 30
    rows = [rng.choice(n_items, rng.integers(0, 25), replace=False) for _ in range(20)]
    indptr, indices, _ = csr(rows, n_items)
    users = torch.arange(20).repeat_interleave(300)
    neg = ref.sample_uniform(indptr, indices, users, n_items, 20, seed=3)
    for u in range(20):
        drawn = neg[users == u].flatten().numpy()
        assert not np.isin(drawn, rows[u]).any()
        free = np.setdiff1d(np.arange(n_items), rows[u])
        counts = np.array([(drawn == i).sum() for i in free])
        assert counts.sum() == drawn.size
        assert scipy.stats.chisquare(counts).pvalue > 1e-3


def test_edge_cases():
    n_items = 6
    indptr, indices, _ = csr([[], [0, 1, 2, 3, 4], list(range(6))], n_items)
    neg = ref.sample_uniform(indptr, indices, torch.tensor([0, 1, 2]), n_items, 50)
    assert set(neg[0].tolist()) <= set(range(6)) and len(set(neg[0].tolist())) > 1
    assert set(neg[1].tolist()) == {5}  # every item but one; U > number of non-positives
    assert set(neg[2].tolist()) == {-1}  # every item: no negative
    with pytest.raises(ValueError, match="at least 2 items"):
        ref.sample_uniform(indptr[:1], indices[:0], torch.tensor([0]), 1, 3)


def test_seed_and_offset():
    indptr, indices, n = csr([[1, 2], [0]], 50)
    users = torch.tensor([0, 1] * 10)
    a = ref.sample_uniform(indptr, indices, users, n, 8, seed=1, offset=4)
    assert torch.equal(a, ref.sample_uniform(indptr, indices, users, n, 8, seed=1, offset=4))
    assert not torch.equal(a, ref.sample_uniform(indptr, indices, users, n, 8, seed=1, offset=5))


def test_hardest_and_violators_against_loop():
    g = torch.Generator().manual_seed(0)
    n_users, n_items, dim, U, margin = 8, 40, 5, 7, 0.3
    m = sp.random(n_users, n_items, density=0.2, format="csr", random_state=1)
    m.sort_indices()
    indptr, indices = torch.as_tensor(m.indptr), torch.as_tensor(m.indices)
    ue, ie = torch.randn(n_users, dim, generator=g), torch.randn(n_items, dim, generator=g)
    users = torch.randint(0, n_users, (30,), generator=g)
    pos = torch.randint(0, n_items, (30,), generator=g)
    cand = ref.sample_uniform(indptr, indices, users, n_items, U, seed=2)
    cand[0, 3] = -1  # invalid candidates are ignored
    neg, viol = ref.hardest_negatives(indptr, indices, users, pos, ue, ie, U, margin,
                                      candidates=cand)
    for b in range(30):
        u, p = users[b], pos[b]
        dp = ((ue[u] - ie[p]) ** 2).sum().item()
        ds = [((ue[u] - ie[c]) ** 2).sum().item() if c >= 0 else float("inf")
              for c in cand[b].tolist()]
        assert viol[b] == sum(margin + dp - d > 0 for d in ds)
        assert neg[b] == cand[b, int(np.argmin(ds))]
