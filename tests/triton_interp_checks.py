"""Checks of the fused Triton sampler under Triton's CPU interpreter.

Run by tests/test_triton_kernel.py in a subprocess with TRITON_INTERPRET=1 (the variable must be set
before triton is imported, so it cannot be toggled inside the pytest process). Usage:

    TRITON_INTERPRET=1 python tests/triton_interp_checks.py [check names...]

Prints one PASS/FAIL line per check (with the reason) and exits 1 if any failed.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

import torch
from scipy.stats import chisquare

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recsys_metric.sampling import reference as ref  # noqa: E402
from recsys_metric.sampling import triton_kernel as tk  # noqa: E402


def make_csr(dense: torch.Tensor, index_dtype=torch.int64):
    indptr = torch.zeros(dense.shape[0] + 1, dtype=torch.int64)
    indptr[1:] = dense.sum(1).cumsum(0)
    return indptr, dense.nonzero()[:, 1].to(index_dtype).contiguous()


def fixture(seed=0, n_users=24, n_items=40, density=0.3):
    """Random pattern plus edge users: 0 none, 1 all but item 7, 2 every item, 3 all but 3 items."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(n_users, n_items, generator=g) < density
    dense[0] = False
    dense[1] = True
    dense[1, 7] = False
    dense[2] = True
    dense[3] = True
    dense[3, [0, 19, n_items - 1]] = False
    return dense


def assert_no_positives(dense, users, items):
    n_items = dense.shape[1]
    full = dense[users].all(1)
    assert ((items == -1) == full[:, None]).all(), "-1 exactly for users with every item"
    ok = items[~full]
    assert ((ok >= 0) & (ok < n_items)).all(), "item id out of range"
    hit = dense[users[~full, None].expand_as(ok), ok]
    assert not hit.any(), f"{int(hit.sum())} positives returned"


def check_no_positives():
    for index_dtype in (torch.int64, torch.int32):
        dense = fixture(1)
        indptr, indices = make_csr(dense, index_dtype)
        users = torch.randint(0, dense.shape[0], (150,), generator=torch.Generator().manual_seed(2))
        s = tk.sample_uniform(indptr, indices, users, dense.shape[1], 13, seed=5, offset=3)
        assert s.shape == (150, 13) and s.dtype == torch.int64
        assert_no_positives(dense, users, s)
        emb = torch.randn(dense.shape[0] + dense.shape[1], 8)
        pos = torch.zeros(150, dtype=torch.long)
        neg, viol = tk.hardest_negatives(indptr, indices, users, pos, emb[: dense.shape[0]],
                                         emb[dense.shape[0]:], 9, 0.5, seed=5, offset=3)
        assert neg.dtype == torch.int64 and viol.dtype == torch.int32
        assert_no_positives(dense, users, neg[:, None])
        assert ((viol >= 0) & (viol <= 9)).all()
        assert (viol[dense[users].all(1)] == 0).all(), "user with every item must have 0 violators"


def check_exact_given_candidates():
    g = torch.Generator().manual_seed(3)
    dense = fixture(3)
    indptr, indices = make_csr(dense)
    n_users, n_items = dense.shape
    cases = [(37, 6, 5, 1.0), (70, 17, 37, 0.0), (9, 1, 1, 2.0), (40, 64, 70, 3.0)]
    for B, U, dim, margin in cases:
        # Small integer embeddings: fp32 sums are exact in any order, so ties and margin
        # equalities are real and both implementations must resolve them identically.
        ue = torch.randint(-2, 3, (n_users, dim), generator=g).float()
        ie = torch.randint(-2, 3, (n_items, dim), generator=g).float()
        users = torch.randint(0, n_users, (B,), generator=g)
        pos = torch.randint(0, n_items, (B,), generator=g)
        cand = torch.randint(0, n_items, (B, U), generator=g)
        cand[torch.rand(B, U, generator=g) < 0.2] = -1
        cand[0] = -1  # a row without any valid candidate
        got = tk.hardest_negatives(indptr, indices, users, pos, ue, ie, U, margin, candidates=cand)
        want = ref.hardest_negatives(indptr, indices, users, pos, ue, ie, U, margin,
                                     candidates=cand)
        assert torch.equal(got[0], want[0]), f"neg differs (B={B} U={U} dim={dim})"
        assert torch.equal(got[1], want[1]), f"violators differ (B={B} U={U} dim={dim})"
        assert got[0][0] == -1 and got[1][0] == 0
    # Float embeddings (half precision input, fp32 maths): agree up to summation order.
    ue, ie = torch.randn(n_users, 33, generator=g), torch.randn(n_items, 33, generator=g)
    users, pos = torch.randint(0, n_users, (50,), generator=g), torch.randint(0, n_items, (50,))
    cand = torch.randint(0, n_items, (50, 12), generator=g)
    for dt in (torch.float32, torch.float16):
        got = tk.hardest_negatives(indptr, indices, users, pos, ue.to(dt), ie.to(dt), 12, 1.0,
                                   candidates=cand)
        want = ref.hardest_negatives(indptr, indices, users, pos, ue.to(dt), ie.to(dt), 12, 1.0,
                                     candidates=cand)
        def d(n, dt=dt):
            return (ue.to(dt).float()[users] - ie.to(dt).float()[n]).pow(2).sum(1)

        assert torch.allclose(d(got[0]), d(want[0]), rtol=1e-5, atol=1e-5), f"{dt} hardest"
        assert (got[1] - want[1]).abs().max() <= 1, f"{dt} violators"


def check_drawn_matches_sample_uniform():
    """Draw mode scores exactly the candidates sample_uniform returns for the same seed/offset."""
    g = torch.Generator().manual_seed(4)
    dense = fixture(4)
    indptr, indices = make_csr(dense)
    n_users, n_items = dense.shape
    ue = torch.randint(-1, 2, (n_users, 20), generator=g).float()
    ie = torch.randint(-1, 2, (n_items, 20), generator=g).float()
    users = torch.randint(0, n_users, (90,), generator=g)
    pos = torch.randint(0, n_items, (90,), generator=g)
    cand = tk.sample_uniform(indptr, indices, users, n_items, 11, seed=9, offset=12)
    got = tk.hardest_negatives(indptr, indices, users, pos, ue, ie, 11, 1.0, seed=9, offset=12)
    want = ref.score_candidates(ue, ie, users, pos, cand, 1.0)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), "draw != sample_uniform"


def check_uniform():
    # Big tiles: few interpreted programs (fast), and a second tiling besides the default one.
    saved = tk.SLOTS_PER_PROGRAM, tk.SAMPLE_BLOCK_U
    tk.SLOTS_PER_PROGRAM, tk.SAMPLE_BLOCK_U = 2048, 2048
    try:
        _uniform()
    finally:
        tk.SLOTS_PER_PROGRAM, tk.SAMPLE_BLOCK_U = saved


def _uniform():
    n_items = 50
    dense = torch.zeros(4, n_items, dtype=torch.bool)
    dense[1, ::3] = True  # 17 positives, 33 free
    dense[2, 5:45] = True  # 10 free at both ends
    dense[3] = True
    dense[3, [4, 30]] = False  # 2 free
    indptr, indices = make_csr(dense)
    for u in range(4):
        free = (~dense[u]).nonzero()[:, 0]
        users = torch.full((8,), u, dtype=torch.long)
        s = tk.sample_uniform(indptr, indices, users, n_items, 1600, seed=11, offset=u)
        assert_no_positives(dense, users, s)
        counts = torch.bincount(s.flatten(), minlength=n_items)[free].numpy()
        p = chisquare(counts).pvalue
        assert counts.sum() == s.numel() and p > 1e-3, f"user {u}: chi-square p={p:.2e}"
    # Hardest-of-U with all distances tied is the first draw, so it must be uniform too.
    users = torch.full((3000,), 1, dtype=torch.long)
    zero_u, zero_i = torch.zeros(4, 3), torch.zeros(n_items, 3)
    neg, viol = tk.hardest_negatives(indptr, indices, users, users, zero_u, zero_i, 4, 1.0, seed=2)
    counts = torch.bincount(neg, minlength=n_items)[~dense[1]].numpy()
    assert counts.sum() == 3000 and chisquare(counts).pvalue > 1e-3, "hardest-of-U not uniform"
    assert (viol == 4).all(), "margin 1 > 0 distance gap: every candidate violates"


def check_reproducible():
    dense = fixture(5)
    indptr, indices = make_csr(dense)
    users = torch.arange(dense.shape[0]).repeat(4)
    draw = lambda seed, off: tk.sample_uniform(  # noqa: E731
        indptr, indices, users, dense.shape[1], 16, seed=seed, offset=off)
    a = draw(7, 0)
    assert torch.equal(a, draw(7, 0)), "same seed+offset must reproduce"
    big = draw(7, 2**31 - 1)
    assert torch.equal(big, draw(7, 2**31 - 1)), "large offsets reproduce too"
    for other in (draw(7, 1), draw(8, 0), big, draw(2**40, 0)):
        assert (a != other).float().mean() > 0.5, "different seed/offset must change the draws"
    emb = torch.randn(dense.shape[0] + dense.shape[1], 8)
    ue, ie, pos = emb[: dense.shape[0]], emb[dense.shape[0]:], torch.zeros_like(users)
    h = lambda off: tk.hardest_negatives(  # noqa: E731
        indptr, indices, users, pos, ue, ie, 5, 1.0, seed=3, offset=off)
    assert torch.equal(h(4)[0], h(4)[0]) and not torch.equal(h(4)[0], h(5)[0])


def check_edge_cases():
    n_items = 12
    dense = torch.zeros(4, n_items, dtype=torch.bool)
    dense[1] = True
    dense[1, 9] = False  # every item but 9
    dense[2] = True  # every item
    dense[3, :9] = True  # 3 free items (9, 10, 11), fewer than U
    for idt in (torch.int64, torch.int32):
        indptr, indices = make_csr(dense, idt)
        for ptr in (indptr, indptr.int()):
            users = torch.tensor([0, 1, 2, 3] * 5)
            s = tk.sample_uniform(ptr, indices, users, n_items, 40, seed=1)
            assert_no_positives(dense, users, s)
            assert set(s[users == 0].unique().tolist()) == set(range(n_items)), "no positives"
            assert (s[users == 1] == 9).all(), "all-but-one must always give the one item"
            assert (s[users == 2] == -1).all(), "user with every item must get -1"
            assert set(s[users == 3].unique().tolist()) == {9, 10, 11}, "U > free items"
            ue, ie = torch.randn(4, 3), torch.randn(n_items, 3)
            neg, viol = tk.hardest_negatives(ptr, indices, users, users, ue, ie, 20, 1.0, seed=1)
            assert (neg[users == 1] == 9).all() and (neg[users == 2] == -1).all()
            assert (viol[users == 2] == 0).all()
            assert set(neg[users == 3].tolist()) <= {9, 10, 11}
    empty = torch.empty(0, dtype=torch.long)
    assert tk.sample_uniform(indptr, indices, empty, n_items, 3).shape == (0, 3)
    assert tk.hardest_negatives(indptr, indices, empty, empty, ue, ie, 3, 1.0)[0].shape == (0,)
    one = torch.zeros(2, 1, dtype=torch.bool)
    indptr, indices = make_csr(one)
    users = torch.tensor([0, 1])
    for fn, args in [
        (tk.sample_uniform, (indptr, indices, users, 1, 4)),
        (tk.hardest_negatives, (indptr, indices, users, users * 0, torch.zeros(2, 3),
                                torch.zeros(1, 3), 4, 1.0)),
    ]:
        try:
            fn(*args)
        except ValueError:
            continue
        raise AssertionError(f"{fn.__name__} with n_items == 1 must raise ValueError")


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}


def main(names: list[str]) -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("FAIL setup: run with TRITON_INTERPRET=1 (set before triton is imported)")
        return 1
    failed = []
    for name in names or list(CHECKS):
        t0 = time.perf_counter()
        try:
            CHECKS[name]()
            print(f"PASS {name} ({time.perf_counter() - t0:.1f}s)", flush=True)
        except Exception as e:  # report every check, then fail
            failed.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
    print(f"{len(failed)} failed: {' '.join(failed)}" if failed else "all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
