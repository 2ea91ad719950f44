"""Correctness and speed of the fused Triton sampler against the torch reference, on one GPU.

    PYTHONPATH=. python experiments/gpu_check.py [--quick] [--no-sweep] [--out results.md]
        [--skip-sampler] [--skip-train] [--train-out training.md]

(a) correctness on fresh random inputs: given-candidates mode bit-exact vs the reference
    (integer-valued embeddings, so fp32 sums are order-independent and ties are real), float
    embeddings within fp32 rounding, draw mode == scoring of ``sample_uniform``'s draws, no
    positive ever returned, -1 for users with every item, uniformity (chi-square), seeding;
(b) timing (CUDA events) of fused vs reference ``hardest_negatives`` at >= 1M pairs, printed as a
    markdown table with an estimate of the bytes the fused kernel moves against the measured
    device-to-device copy bandwidth; plus a small sweep of the kernel's tiling constants.

(c) the fused training step (experiments/gpu_train_fused.py): speed of the fused epoch vs the
    torch loop on an ML-1M-sized matrix, validation HR@10 of the fused / torch / CPU loops over
    3 seeds, a 25M-interaction fit; writes experiments/results/training_gpu.md (``--train-out``).
    ``--skip-sampler`` / ``--skip-train`` run one part only.

Every section is wrapped so one failure still prints the rest; exits 1 if any check failed.
CPU smoke test (small sizes, perf_counter timing): TRITON_INTERPRET=1 ... gpu_check.py --quick
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import traceback

import torch
from scipy.stats import chisquare

from recsys_metric.sampling import reference as ref
from recsys_metric.sampling import triton_kernel as tk

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
FAILURES: list[str] = []


def section(name):
    def wrap(fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            try:
                out = fn(*a, **k)
                print(f"[ok]   {name} ({time.perf_counter() - t0:.1f}s)", flush=True)
                return out
            except Exception as e:
                FAILURES.append(name)
                print(f"[FAIL] {name}: {type(e).__name__}: {e}", flush=True)
                traceback.print_exc()
        return run
    return wrap


def random_csr(n_users, n_items, nnz, seed):
    """Skewed random pattern (popular users/items) plus edge users: 0 has no positives, 1 has
    every item but the last, 2 has every item. Returns (indptr, indices int32, rows, cols) with
    (rows, cols) the random pairs only, so batches drawn from them are not dominated by
    users 1-2."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    u = (torch.rand(nnz, generator=g, device=DEV).pow(2) * n_users).long()
    i = (torch.rand(nnz, generator=g, device=DEV).pow(3) * n_items).long()
    keys = torch.unique(u * n_items + i)
    keys = keys[keys >= 3 * n_items]  # rebuild users 0-2 explicitly
    extra = torch.cat([n_items + torch.arange(n_items - 1, device=DEV),
                       2 * n_items + torch.arange(n_items, device=DEV)])
    keys = torch.cat([extra, keys])  # already sorted: user 1, user 2, then the rest
    rows, cols = keys // n_items, keys % n_items
    indptr = torch.zeros(n_users + 1, dtype=torch.long, device=DEV)
    indptr[1:] = torch.bincount(rows, minlength=n_users).cumsum(0)
    return indptr, cols.int(), rows[len(extra):], cols[len(extra):]


def is_positive(indptr, indices, n_items, users, items):
    """Membership test via the sorted global keys user * n_items + item."""
    rows = torch.repeat_interleave(torch.arange(len(indptr) - 1, device=DEV), indptr.diff())
    keys = rows * n_items + indices.long()
    q = users.long().unsqueeze(1) * n_items + items.clamp(min=0)
    pos = torch.searchsorted(keys, q).clamp(max=len(keys) - 1)
    return keys[pos] == q


def check(cond, msg):
    if not bool(cond):
        raise AssertionError(msg)


@section("correctness: given candidates, exact vs reference")
def check_exact(csr, n_items, B, dims, U):
    indptr, indices, rows, cols = csr
    g = torch.Generator(device=DEV).manual_seed(1)
    idx = torch.randint(0, len(rows), (B,), generator=g, device=DEV)
    users, pos = rows[idx], cols[idx]
    users[:3] = torch.arange(3, device=DEV)
    n_users = len(indptr) - 1
    for dim in dims:
        for margin in (0.0, 1.0, 4.0):
            ue = torch.randint(-2, 3, (n_users, dim), generator=g, device=DEV).float()
            ie = torch.randint(-2, 3, (n_items, dim), generator=g, device=DEV).float()
            cand = torch.randint(0, n_items, (B, U), generator=g, device=DEV)
            cand[torch.rand(B, U, generator=g, device=DEV) < 0.1] = -1
            cand[::97] = -1
            got = tk.hardest_negatives(indptr, indices, users, pos, ue, ie, U, margin,
                                       candidates=cand)
            want = ref.hardest_negatives(indptr, indices, users, pos, ue, ie, U, margin,
                                         candidates=cand)
            bad = (got[0] != want[0]).sum().item(), (got[1] != want[1]).sum().item()
            check(bad == (0, 0), f"dim={dim} margin={margin}: {bad} neg/violator mismatches")
    # Real-valued fp32 / fp16 embeddings: only summation order differs.
    dim = dims[-1]
    for dt in (torch.float32, torch.float16):
        ue = torch.randn(n_users, dim, generator=g, device=DEV).to(dt)
        ie = torch.randn(n_items, dim, generator=g, device=DEV).to(dt)
        cand = torch.randint(0, n_items, (B, U), generator=g, device=DEV)
        got = tk.hardest_negatives(indptr, indices, users, pos, ue, ie, U, 1.0, candidates=cand)
        want = ref.hardest_negatives(indptr, indices, users, pos, ue, ie, U, 1.0, candidates=cand)
        def d(n, ue=ue, ie=ie):
            return (ue[users].float() - ie[n].float()).pow(2).sum(1)

        check(torch.allclose(d(got[0]), d(want[0]), rtol=1e-4, atol=1e-4), f"{dt}: hardest")
        check((got[1] - want[1]).abs().max() <= 2, f"{dt}: violators off by more than 2")
        print(f"       {dt}: neg identical for {(got[0] == want[0]).float().mean():.5%} of pairs")


@section("correctness: draw mode, no positives, -1, seeding")
def check_draws(csr, n_items, B, U):
    indptr, indices, rows, cols = csr
    g = torch.Generator(device=DEV).manual_seed(2)
    idx = torch.randint(0, len(rows), (B,), generator=g, device=DEV)
    users, pos = rows[idx], cols[idx]
    users[:30] = torch.arange(3, device=DEV).repeat(10)
    s = tk.sample_uniform(indptr, indices, users, n_items, U, seed=5, offset=7)
    full = indptr.diff()[users] == n_items
    check(((s == -1) == full[:, None]).all(), "-1 exactly for users with every item")
    check(((s[~full] >= 0) & (s[~full] < n_items)).all(), "ids in range")
    check(not is_positive(indptr, indices, n_items, users[~full], s[~full]).any(), "positive!")
    check((s[users == 1] == n_items - 1).all(), "all-but-one user must get the one item")
    check(torch.equal(s, tk.sample_uniform(indptr, indices, users, n_items, U, 5, 7)), "repro")
    other = tk.sample_uniform(indptr, indices, users, n_items, U, 5, 8)
    many = indptr.diff()[users] <= n_items - 10  # >= 10 free items: draws rarely coincide
    check((s != other)[many].float().mean() > 0.8, "offset must change the draws")
    n_users = len(indptr) - 1
    ue = torch.randint(-2, 3, (n_users, 32), generator=g, device=DEV).float()
    ie = torch.randint(-2, 3, (n_items, 32), generator=g, device=DEV).float()
    got = tk.hardest_negatives(indptr, indices, users, pos, ue, ie, U, 1.0, seed=5, offset=7)
    want = ref.score_candidates(ue, ie, users, pos, s, 1.0)
    check(torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]),
          "draw mode must score exactly sample_uniform's candidates")


@section("correctness: uniform over non-positives (chi-square)")
def check_uniform(csr, n_items, draws_per_user):
    indptr, indices, _, _ = csr
    deg = indptr.diff()
    # User 0 (no positives) plus the users whose degree is closest to 5%, 30%, 90% of items.
    gap = lambda f: (deg[3:] - f * n_items).abs()  # noqa: E731
    picks = [0] + [3 + int(gap(f).argmin()) for f in (0.05, 0.3, 0.9)]
    n_per = 1024 if CUDA else 64
    for u in dict.fromkeys(picks):
        users = torch.full((n_per,), u, dtype=torch.long, device=DEV)
        n = max(1, draws_per_user // n_per)
        s = tk.sample_uniform(indptr, indices, users, n_items, n, seed=u, offset=3).flatten()
        counts = torch.bincount(s, minlength=n_items)
        free = ~is_positive(indptr, indices, n_items, torch.tensor([u], device=DEV),
                            torch.arange(n_items, device=DEV)[None])[0]
        check(counts[~free].sum() == 0, f"user {u}: positives drawn")
        p = chisquare(counts[free].cpu().double().numpy()).pvalue
        print(f"       user {u}: deg {int(deg[u])}, {s.numel()} draws, chi-square p = {p:.3f}")
        check(p > 1e-3, f"user {u}: chi-square p = {p:.2e}")
    # All distances tied -> the hardest is the first draw, so it must be uniform as well.
    users = torch.zeros(draws_per_user, dtype=torch.long, device=DEV)
    z_u, z_i = torch.zeros(len(indptr) - 1, 4, device=DEV), torch.zeros(n_items, 4, device=DEV)
    neg, _ = tk.hardest_negatives(indptr, indices, users, users, z_u, z_i, 5, 1.0, seed=1)
    p = chisquare(torch.bincount(neg, minlength=n_items).cpu().double().numpy()).pvalue
    check(p > 1e-3, f"hardest-of-U under ties: chi-square p = {p:.2e}")


def timer(fn, reps):
    fn()  # compile / warm up
    times = []
    for _ in range(reps):
        if CUDA:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@section("copy bandwidth")
def copy_bandwidth(n_bytes):
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=DEV).uniform_()
    dst = torch.empty_like(src)
    t = timer(lambda: dst.copy_(src), 10)
    return 2 * src.numel() * 4 / t  # read + write


def bytes_per_pair(U, dim, mean_deg, esize=4):
    """Candidate rows + user and positive rows + users/pos/indptr reads + ~log2(deg+1) binary
    search reads of int32 indices per candidate + outputs."""
    return U * dim * esize + 2 * dim * esize + 32 + U * math.log2(mean_deg + 1) * 4 + 12


@section("timing")
def timing(name, csr, n_items, B, configs, reps, copy_bw, rows_out):
    indptr, indices, rows, cols = csr
    g = torch.Generator(device=DEV).manual_seed(3)
    idx = torch.randint(0, len(rows), (B,), generator=g, device=DEV)
    users, pos = rows[idx], cols[idx]
    mean_deg = indptr.diff()[users].float().mean().item()
    n_users = len(indptr) - 1
    for U, dim in configs:
        ue = torch.randn(n_users, dim, generator=g, device=DEV) * 0.1
        ie = torch.randn(n_items, dim, generator=g, device=DEV) * 0.1
        args = (indptr, indices, users, pos, ue, ie, U, 0.5)
        t_f = timer(lambda: tk.hardest_negatives(*args, seed=1, offset=2), reps)  # noqa: B023
        t_r = timer(lambda: ref.hardest_negatives(*args, seed=1, offset=2),  # noqa: B023
                    max(1, reps // 3))
        bw = B * bytes_per_pair(U, dim, mean_deg) / t_f
        pct = f"{bw / copy_bw:.0%}" if copy_bw else "n/a"
        rows_out.append(f"| {name} | {B:,} | {U} | {dim} | {B * U / t_f / 1e6:,.1f} M | "
                        f"{B * U / t_r / 1e6:,.1f} M | {t_r / t_f:.1f}x | "
                        f"{bw / 1e9:,.0f} GB/s | {pct} |")
        print("       " + rows_out[-1], flush=True)


@section("tiling sweep")
def sweep(name, csr, n_items, B, U, dim, reps, rows_out, n_configs=None):
    indptr, indices, rows, cols = csr
    g = torch.Generator(device=DEV).manual_seed(4)
    idx = torch.randint(0, len(rows), (B,), generator=g, device=DEV)
    ue = torch.randn(len(indptr) - 1, dim, generator=g, device=DEV)
    ie = torch.randn(n_items, dim, generator=g, device=DEV)
    args = (indptr, indices, rows[idx], cols[idx], ue, ie, U, 0.5)
    saved = tk.SLOTS_PER_PROGRAM, tk.MAX_BLOCK_D, tk.TILE_ELEMS, tk.NUM_WARPS
    try:
        configs = [(64, 32, 4), (32, 32, 2), (64, 16, 4), (128, 16, 4), (128, 32, 4),
                   (128, 32, 8), (256, 16, 8), (64, 64, 4)]  # (64, 32, 4): the default
        for slots, bd, warps in configs[:n_configs]:
            tk.SLOTS_PER_PROGRAM, tk.MAX_BLOCK_D, tk.NUM_WARPS = slots, bd, warps
            tk.TILE_ELEMS = 1 << 20  # let MAX_BLOCK_D decide
            try:
                t = timer(lambda: tk.hardest_negatives(*args, seed=1), reps)  # noqa: B023
                res = f"{B * U / t / 1e6:,.1f} M"
            except Exception as e:  # one bad tiling (e.g. out of resources) is a result too
                res = f"failed: {type(e).__name__}"
            rows_out.append(f"| {name} U={U} dim={dim} | {slots} | {bd} | {warps} | {res} |")
            print("       " + rows_out[-1], flush=True)
    finally:
        tk.SLOTS_PER_PROGRAM, tk.MAX_BLOCK_D, tk.TILE_ELEMS, tk.NUM_WARPS = saved


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--no-sweep", action="store_true", help="skip the tiling sweep")
    ap.add_argument("--out", help="also write the markdown tables to this file")
    ap.add_argument("--skip-sampler", action="store_true", help="only the training part")
    ap.add_argument("--skip-train", action="store_true", help="only the sampler part")
    ap.add_argument("--train-out", help="the training report (default "
                    "experiments/results/training_gpu.md; none with --quick)")
    a = ap.parse_args()
    code = 0 if a.skip_sampler else sampler_checks(a)
    if not a.skip_train:
        import gpu_train_fused

        code = max(code, gpu_train_fused.run(a.quick, a.train_out,
                                             command=" ".join(["python", *sys.argv])))
    return code


def sampler_checks(a):
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    if not tk.HAS_TRITON or not (CUDA or interp):
        print("needs triton and a CUDA device (or TRITON_INTERPRET=1 with --quick)")
        return 2
    if interp:  # the interpreter pays per program: big tiles keep a CPU smoke run short
        tk.SLOTS_PER_PROGRAM, tk.TILE_ELEMS, tk.SAMPLE_BLOCK_U = 4096, 1 << 16, 1024
    dev_name = torch.cuda.get_device_name() if CUDA else "CPU (Triton interpreter)"
    import triton

    print(f"# {dev_name}, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    q = a.quick
    n1, nb = (200, 5000) if q else (3706, 1_000_000)
    ml1m = random_csr(*((300, n1, 6000) if q else (6040, n1, 1_000_000)), seed=0)
    big = random_csr(*((100, nb, 3000) if q else (100_000, nb, 20_000_000)), seed=1)
    print(f"ml-1m-sized CSR: {len(ml1m[1]):,} nnz; large catalogue: {len(big[1]):,} nnz")

    check_exact(ml1m, n1, 500 if q else 200_000, (8, 37) if q else (64, 37, 128), 10 if q else 50)
    check_draws(ml1m, n1, 500 if q else 1_000_000, 10 if q else 50)
    check_draws(big, nb, 500 if q else 1_000_000, 10 if q else 50)
    check_uniform(ml1m, n1, 20_000 if q else 2_000_000)

    copy_bw = copy_bandwidth(2**24 if q else 2**31)
    table = []
    B = 2000 if q else 2**20
    reps = 1 if q else 10
    timing("ml-1m" if not q else "tiny", ml1m, n1, B,
           [(4, 8), (10, 16)] if q else [(10, 64), (10, 128), (50, 64), (50, 128)],
           reps, copy_bw, table)
    timing("small x 5k items" if q else "100k x 1M items", big, nb, B,
           [(4, 8)] if q else [(10, 64), (50, 128)], reps, copy_bw, table)
    sweep_rows = []
    if q and not a.no_sweep:  # smoke-test the sweep: two tilings, tiny batch
        sweep("tiny", ml1m, n1, 64, 10, 16, 1, sweep_rows, n_configs=2)
    elif not a.no_sweep:
        sweep("ml-1m", ml1m, n1, B, 50, 128, 5, sweep_rows)
        sweep("100k x 1M", big, nb, B, 50, 128, 5, sweep_rows)

    lines = [f"Fused Triton vs torch reference `hardest_negatives` on {dev_name} "
             f"(torch {torch.__version__}, triton {triton.__version__}); negatives/s = pairs x U "
             f"per second, median of {reps} runs."
             + (f" Copy bandwidth (D2D, read+write): {copy_bw / 1e9:,.0f} GB/s." if copy_bw
                else ""), "",
             "| config | pairs | U | dim | fused neg/s | reference neg/s | speed-up "
             "| fused bytes/s (est.) | of copy BW |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|", *table]
    if sweep_rows:
        lines += ["", "Tiling sweep (fused neg/s):", "",
                  "| config | slots/program | BLOCK_D | warps | neg/s |",
                  "|---|---:|---:|---:|---:|",
                  *sweep_rows]
    lines += ["", "Bytes estimate per pair: U x dim x 4 (candidate rows) + 2 x dim x 4 (user, "
              "positive) + index reads (U x log2(deg+1) x 4 + 32) + 12 (outputs). For the "
              "ML-1M-sized catalogue the item table fits in L2, so the percentage can exceed "
              "100%; the 1M-item catalogue is the DRAM-bound case."]
    print("\n" + "\n".join(lines))
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    if FAILURES:
        print(f"\nFAILED: {', '.join(FAILURES)}")
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
