"""CPU negative sampling and CML training throughput vs the torch reference and implicit's BPR.

(a) hardest-of-U negatives/s and peak memory: numba CPU path vs ``reference.hardest_negatives``,
    U in {1, 10, 50} x dim in {32, 64, 128}, each config in a fresh subprocess; peak = peak RSS
    of the timed calls over the RSS before them.
(b) end-to-end training: ``cpu_train.run_epoch`` triplets/s (sampling included, the pairs prepared
    once per fit as the Trainer does, U = 10 and 20, dim 64, and dim 32 for U = 10) against
    ``implicit`` BPR samples/s (nnz * iterations / fit seconds, factors = dim; as many CML epochs
    as BPR iterations) on the same matrix, run interleaved in one process so both see the
    same machine load; best of the rounds is kept. Element-wise and row-wise Adagrad; the
    default lanes, one lane, and lanes = threads with blocks of 4096 and 16384.
(c) the headline pair (BPR, CML with the defaults) again for several interleaved rounds: the
    per-round ratios and their median, as the machine's load moves both rates.

Data: ML-1M (``../shared/datasets/ml-1m/ratings.dat``) when present, else a generated matrix of the
same shape (6040 x 3706, ~1M nnz, Zipf-like item popularity, log-normal user degrees, seed 0).

    python experiments/bench_sampling.py [--quick] [--out PATH] [--threads 2]

The last line printed is one JSON object of the headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy/implicit load OpenBLAS

import numpy as np  # noqa: E402

from recsys_metric import TrainConfig  # noqa: E402

OPTIMIZERS = ("adagrad", "adagrad_row")

ROOT = Path(__file__).resolve().parents[1]
ML1M = ROOT.parent / "shared" / "datasets" / "ml-1m" / "ratings.dat"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)  # progress on stderr: stdout ends with the JSON line


def load_matrix(seed: int = 0) -> tuple[np.ndarray, np.ndarray, int, str]:
    """(indptr int64, indices int32 sorted per row, n_items, description)."""
    if ML1M.exists():
        raw = np.loadtxt(ML1M, delimiter="::", usecols=(0, 1), dtype=np.int64)
        _, u = np.unique(raw[:, 0], return_inverse=True)
        items, i = np.unique(raw[:, 1], return_inverse=True)
        key = np.unique(u * len(items) + i)
        u, i = key // len(items), key % len(items)
        indptr = np.zeros(u.max() + 2, np.int64)
        np.cumsum(np.bincount(u), out=indptr[1:])
        return indptr, i.astype(np.int32), len(items), "ML-1M"
    n_users, n_items, nnz = 6040, 3706, 1_000_000
    rng = np.random.default_rng(seed)
    share = rng.lognormal(0.0, 1.0, n_users)
    deg = 20 + share / share.sum() * (nnz - 20 * n_users)
    deg = np.clip(deg, 20, n_items // 2).astype(np.int64)
    log_pop = -0.9 * np.log(rng.permutation(n_items) + 1.0)  # Zipf-like popularity
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(deg, out=indptr[1:])
    indices = np.empty(indptr[-1], np.int32)
    for s in range(0, n_users, 512):  # Gumbel top-k: popularity-weighted, without replacement
        keys = log_pop + rng.gumbel(size=(min(n_users, s + 512) - s, n_items))
        for r, k in enumerate(keys):
            d = deg[s + r]
            indices[indptr[s + r] : indptr[s + r + 1]] = np.sort(np.argpartition(-k, d - 1)[:d])
    desc = f"generated ML-1M-sized ({n_users} x {n_items}, {indptr[-1]:,} nnz, seed {seed})"
    return indptr, indices, n_items, desc


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def reset_peak() -> float:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0); returns the current RSS in MB.

    Without it, ru_maxrss would hide any call whose peak stays under an earlier transient peak
    (importing torch, building the data).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mb("VmRSS:")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_mb() -> float:
    try:
        return _status_mb("VmHWM:")
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------- (a) sampler worker


def sampler_worker(path: str, backend: str, U: int, dim: int, B: int, threads: int) -> dict:
    import numba
    import torch

    from recsys_metric.sampling import cpu, reference

    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    z = np.load(path)
    indptr, indices = torch.from_numpy(z["indptr"]), torch.from_numpy(z["indices"])
    n_items = int(z["n_items"])
    rng = np.random.default_rng(1)
    pick = rng.integers(0, len(indices), B)
    rows = np.searchsorted(z["indptr"], pick, side="right") - 1
    users, pos = torch.from_numpy(rows), torch.from_numpy(z["indices"][pick].astype(np.int64))
    ue = torch.randn(len(indptr) - 1, dim) / dim**0.5
    ie = torch.randn(n_items, dim) / dim**0.5
    fn = cpu.hardest_negatives if backend == "cpu" else reference.hardest_negatives
    args = (indptr, indices, users, pos, ue, ie, U, 0.5)
    fn(indptr, indices, users[:4096], pos[:4096], ue, ie, U, 0.5)  # JIT / allocator warm-up
    if backend == "cpu":  # a 4096-pair call skips the bit-set: load its kernel too
        cpu._build_bits(z["indptr"], z["indices"], np.int64(n_items))
    base = reset_peak()
    best = float("inf")
    out = None
    for rep in range(3):
        out = None  # free the previous result first, as a training loop would
        t = time.perf_counter()
        out = fn(*args, seed=0, offset=rep)
        best = min(best, time.perf_counter() - t)
    peak = peak_mb() - base  # with `out` alive: the counter may miss pages already freed
    del out
    return {"pairs_per_s": B / best, "negs_per_s": B * U / best, "peak_mb": peak}


def bench_sampler(path: str, configs, B: int, threads: int) -> list[dict]:
    out = []
    for k, (U, dim) in enumerate(configs):
        for backend in ("cpu", "reference"):
            log(f"[sampler {k + 1}/{len(configs)}] U={U} dim={dim} {backend} ...")
            cmd = [sys.executable, __file__, "--_worker", path, backend, str(U), str(dim), str(B),
                   str(threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
            out.append({"U": U, "dim": dim, "backend": backend,
                        **json.loads(res.stdout.strip().splitlines()[-1])})
    return out


# ------------------------------------------------------------------------------ (b) training


def aligned(x: np.ndarray) -> np.ndarray:
    """A 64-byte aligned copy, as the Trainer's torch tables: a row of 64 floats is 4 lines."""
    buf = np.empty(x.nbytes + 64, np.uint8)
    off = -buf.ctypes.data % 64
    out = buf[off:off + x.nbytes].view(x.dtype).reshape(x.shape)
    out[:] = x
    return out


def bench_cml(indptr, indices, n_items, U, dim, epochs, threads, lanes, optimizer, block,
              seed=0) -> dict:
    import numba

    from recsys_metric.sampling import cpu, cpu_train

    numba.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    n_users = len(indptr) - 1
    pu = np.repeat(np.arange(n_users, dtype=np.int32), np.diff(indptr))
    pi = indices.astype(np.int32)

    def init(n):  # CML init: N(0, 1/dim), rows clipped to the unit ball
        x = rng.standard_normal((n, dim)).astype(np.float32) / np.float32(dim**0.5)
        return aligned(x / np.maximum(1.0, np.linalg.norm(x, axis=1, keepdims=True)))

    ue, ie = init(n_users), init(n_items)
    ua, ia = (cpu_train.adagrad_accumulator(x, optimizer == "adagrad_row") for x in (ue, ie))
    d = TrainConfig()
    hp = dict(n_candidates=U, margin=d.margin, lr=d.lr, rank_weight=d.rank_weight,
              clip_norm=d.clip_norm, seed=seed, lanes=lanes, block_size=block)
    # epoch 0, untimed: JIT (or cache load) and the large first updates
    warm = cpu_train.prepare_pairs(indptr, indices, pu, pi, n_users, n_items)
    cpu_train.run_epoch(warm, ue, ie, ua, ia, epoch=0, shuffle=True, **hp)
    # timed as the Trainer fits: the pairs prepared once, then the epochs (the kernel's shuffle,
    # as the Trainer uses it, is part of an epoch's cost); BPR's fit time has its setup too
    t = time.perf_counter()
    pairs = cpu_train.prepare_pairs(indptr, indices, pu, pi, n_users, n_items)
    for epoch in range(1, epochs + 1):
        _, active = cpu_train.run_epoch(pairs, ue, ie, ua, ia, epoch=epoch, shuffle=True, **hp)
    dt = time.perf_counter() - t
    # sampling alone at the trained state, to split an epoch into sampling and the rest
    import torch

    t = time.perf_counter()
    cpu.hardest_negatives(torch.from_numpy(indptr), torch.from_numpy(indices), torch.from_numpy(pu),
                          torch.from_numpy(pi), torch.from_numpy(ue), torch.from_numpy(ie), U,
                          hp["margin"], seed=seed, offset=epochs + 1)
    sample_dt = time.perf_counter() - t
    return {"triplets_per_s": len(pu) * epochs / dt, "active": active / len(pu),
            "sampling_ns": 1e9 * sample_dt / len(pu), "epoch_ns": 1e9 * dt / epochs / len(pu)}


def bench_bpr(indptr, indices, n_items, iterations, threads, factors=64, seed=0) -> dict:
    import scipy.sparse as sp
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    m = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr),
                      shape=(len(indptr) - 1, n_items))
    model = BayesianPersonalizedRanking(factors=factors, iterations=iterations,
                                        num_threads=threads, random_state=seed)
    t = time.perf_counter()
    model.fit(m, show_progress=False)
    return {"samples_per_s": m.nnz * iterations / (time.perf_counter() - t)}


# ------------------------------------------------------------------------------------ report


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small grid, finishes in under a minute")
    ap.add_argument("--out", type=Path, help="also write the markdown tables here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--_worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        path, backend, U, dim, B, threads = args._worker
        print(json.dumps(sampler_worker(path, backend, int(U), int(dim), int(B), int(threads))))
        return {}

    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    indptr, indices, n_items, desc = load_matrix()
    quick = args.quick
    configs = [(10, 64)] if quick else [(U, d) for U in (1, 10, 50) for d in (32, 64, 128)]
    B = 20_000 if quick else 100_000
    rounds, iters = (1, 2) if quick else (3, 5)
    epochs = iters  # CML epochs per fit, as BPR's iterations

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "csr.npz")
        np.savez(path, indptr=indptr, indices=indices, n_items=n_items)
        sampler = bench_sampler(path, configs, B, args.threads)

    # (model, threads, lanes, optimizer, block, dim): dim 64 (BPR with 64 factors): the
    # defaults (2 lanes, batch 4096), one lane, and lanes = threads with a larger block; dim 32
    # (BPR with 32 factors) at the default lanes and block
    d = TrainConfig()
    runs = {}
    for th in [args.threads] + ([] if quick or args.threads == 1 else [1]):
        for dim in (64,) if quick or th != args.threads else (64, 32):
            runs[("bpr", th, 0, "", 0, dim)] = lambda th=th, dim=dim: bench_bpr(
                indptr, indices, n_items, iters, th, factors=dim)
        for U in (10,) if quick else (10, 20):
            combos = {(1, d.batch_size, 64), (d.lanes, d.batch_size, 64)}
            if th > 1:
                combos |= {(th, d.batch_size, 64), (th, 4 * d.batch_size, 64)}
            if th == args.threads and U == 10 and not quick:
                combos |= {(d.lanes, d.batch_size, 32)}
            for lanes, block, dim in sorted(combos):
                for opt in OPTIMIZERS:
                    runs[(f"cml_u{U}", th, lanes, opt, block, dim)] = (
                        lambda th=th, U=U, lanes=lanes, opt=opt, block=block, dim=dim: bench_cml(
                            indptr, indices, n_items, U, dim, epochs, th, lanes, opt, block))
        if th == args.threads and not quick:  # every TrainConfig default: the automatic U, dim
            U = d.negatives_for(n_items)
            runs[(f"cml_u{U}", th, d.lanes, d.optimizer, d.batch_size, d.dim)] = (
                lambda th=th, U=U: bench_cml(indptr, indices, n_items, U, d.dim, epochs, th,
                                             d.lanes, d.optimizer, d.batch_size))
    best: dict[tuple, dict] = {}
    for r in range(rounds):  # interleaved, so a burst of load on the shared machine hits all
        for k, (key, run) in enumerate(runs.items()):
            log(f"[train round {r + 1}/{rounds}, {k + 1}/{len(runs)}] {key[0]} "
                f"threads={key[1]} lanes={key[2]} {key[3]} block={key[4]} dim={key[5]} ...")
            res = run()
            rate = "samples_per_s" if key[0] == "bpr" else "triplets_per_s"
            if key not in best or res[rate] > best[key][rate]:
                best[key] = res

    # the headline pair again, BPR then CML with the defaults, round after round: the spread of
    # their ratio over rounds (on a shared machine CML's rate moves by up to ~12% between
    # minutes, BPR's less; cpu_training.md)
    pair_rounds = []
    for r in range(2 if quick else 7):
        log(f"[headline round {r + 1}] bpr, cml_u10 defaults ...")
        b = bench_bpr(indptr, indices, n_items, iters, args.threads)["samples_per_s"]
        c = bench_cml(indptr, indices, n_items, 10, 64, epochs, args.threads, d.lanes,
                      d.optimizer, d.batch_size)["triplets_per_s"]
        pair_rounds.append((b, c))
    round_ratios = [c / b for b, c in pair_rounds]
    bpr = best[("bpr", args.threads, 0, "", 0, 64)]["samples_per_s"]
    lines = [
        f"Data: {desc}. Threads: {args.threads} (numba, torch, implicit); OPENBLAS_NUM_THREADS=1. "
        f"Load average at start {load0:.2f}, at end {os.getloadavg()[0]:.2f} "
        f"({os.cpu_count()} cores, shared with other users).",
        "",
        f"### (a) Hardest-of-U negatives, {B:,} (user, positive) pairs per call, best of 3",
        "",
        "negatives/s = pairs x U / seconds (sampling + scoring). Peak = peak RSS during the timed "
        "calls minus RSS before them (VmHWM after a reset, last result still alive), in a fresh "
        "warmed-up process; the counter can miss pages freed inside a call. By construction the "
        "CPU path holds 12 B/pair of outputs plus, while it runs, the positives bit-set "
        "(n_users x ceil(n_items/64) x 8 B = "
        f"{(len(indptr) - 1) * ((n_items + 63) // 64) * 8 / 2**20:.1f} MiB here, built when the "
        "draws amortise it), whatever U and dim; the reference's sampling holds several [B, U] "
        "int64/float tensors and its scoring chunks of up to 16 M floats.",
        "",
        "| U | dim | CPU negatives/s | reference negatives/s | speed-up | CPU peak MB "
        "| reference peak MB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for U, dim in configs:
        c, r = (next(x for x in sampler if x["U"] == U and x["dim"] == dim and x["backend"] == b)
                for b in ("cpu", "reference"))
        lines.append(f"| {U} | {dim} | {c['negs_per_s'] / 1e6:.1f} M | "
                     f"{r['negs_per_s'] / 1e6:.1f} M | {c['negs_per_s'] / r['negs_per_s']:.1f}x | "
                     f"{c['peak_mb']:.1f} | {r['peak_mb']:.0f} |")
    lines += [
        "",
        f"### (b) Training throughput, best of {rounds} interleaved round(s)",
        "",
        f"CML: `run_epoch` (TrainConfig's margin, lr, rank weight and clip), timed as a fit of "
        f"{epochs} epochs after one warm-up epoch: `prepare_pairs` once, then the epochs, the "
        f"kernel's shuffle included (as the Trainer runs them); 'active' = share of pairs updated "
        f"in the last epoch. Block: pairs whose negatives "
        f"are drawn against the same tables (`batch_size`, default 4096). Lanes: parallel "
        f"streams over disjoint users and, at each step, disjoint item strata (default 2; the "
        f"result depends on the lanes, never on the threads). Adagrad: element-wise (`adagrad`, "
        f"the default) or one accumulator per row (`adagrad_row`). BPR: implicit {iters} "
        f"iterations, factors = dim, lock-free threads. Ratio: to BPR at the same thread count "
        f"and dim. "
        + ("" if quick else f"The U={d.negatives_for(n_items)} row at dim {d.dim} is a Trainer "
           f"with every default (its automatic U: 1% of the catalogue within [10, 100]). ")
        + "Epoch (the fit's time per epoch, the preparation included) and sampling in wall "
        "ns per pair; sampling = `hardest_negatives` over "
        "the same pairs at the trained state (parallel, candidates from the whole catalogue), "
        "the rest of an epoch is mostly the updates.",
        "",
        "| model | dim | threads | lanes | block | Adagrad | per second | ratio to BPR | active "
        "| epoch ns/pair | sampling ns/pair |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    headline: dict[tuple, dict] = {}
    for (name, th, lanes, opt, block, dim), res in sorted(
            best.items(), key=lambda kv: (-kv[0][5], -kv[0][1], kv[0])):
        if name == "bpr":
            lines.append(f"| implicit BPR | {dim} | {th} | | | | "
                         f"{res['samples_per_s'] / 1e6:.2f} M samples | 1.00 | | "
                         f"{1e9 / res['samples_per_s']:.0f} | |")
            continue
        ratio = res["triplets_per_s"] / best[("bpr", th, 0, "", 0, dim)]["samples_per_s"]
        U = int(name[5:])
        if th == args.threads:
            headline[(U, lanes, opt, block, dim)] = {
                "train_triplets_per_s": res["triplets_per_s"], "ratio": ratio}
        lines.append(f"| CML U={U} | {dim} | {th} | {lanes} | {block} | {opt} | "
                     f"{res['triplets_per_s'] / 1e6:.2f} M triplets | {ratio:.2f} | "
                     f"{res['active']:.2f} | {res['epoch_ns']:.0f} | {res['sampling_ns']:.0f} |")
    lines += [
        "",
        f"### (c) The headline pair, {len(pair_rounds)} more interleaved rounds",
        "",
        f"implicit BPR then CML with the defaults (U=10, dim 64, {args.threads} threads), each "
        "round a fresh fit as in (b); ratio = CML triplets/s over BPR samples/s of the same "
        f"round. Median ratio **{np.median(round_ratios):.2f}**, range "
        f"{min(round_ratios):.2f}-{max(round_ratios):.2f}.",
        "",
        "| round | BPR samples/s | CML triplets/s | ratio |",
        "|---:|---:|---:|---:|",
        *(f"| {r + 1} | {b / 1e6:.2f} M | {c / 1e6:.2f} M | {c / b:.2f} |"
          for r, (b, c) in enumerate(pair_rounds)),
    ]
    lines.append(f"\nTotal bench time {time.perf_counter() - t0:.0f} s.")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = " ".join(["python experiments/bench_sampling.py", *(argv or sys.argv[1:])])
        args.out.write_text(f"# CPU sampling and training benchmark\n\nCommand: `{cmd}`\n\n"
                            f"{table}\n")
    # headline: U=10, dim 64, with the defaults; and the fastest setting measured at dim 64
    default = headline[(10, d.lanes, d.optimizer, d.batch_size, 64)]
    fastest = max(((k, v) for k, v in headline.items() if k[0] == 10 and k[4] == 64),
                  key=lambda kv: kv[1]["ratio"])
    summary = {
        "train_triplets_per_s": round(default["train_triplets_per_s"]),
        "implicit_bpr_samples_per_s": round(bpr),
        "ratio": round(default["ratio"], 3),
        "U": 10,
        "dim": 64,
        "trainer_defaults": ({"U": d.negatives_for(n_items), "dim": d.dim, "ratio": round(
            headline[(d.negatives_for(n_items), d.lanes, d.optimizer, d.batch_size, d.dim)][
                "ratio"], 3)} if not quick else None),
        "fastest": {"lanes": fastest[0][1], "optimizer": fastest[0][2], "block": fastest[0][3],
                    "train_triplets_per_s": round(fastest[1]["train_triplets_per_s"]),
                    "ratio": round(fastest[1]["ratio"], 3)},
        "ratios": {f"U={u} dim={dm} lanes={la} {o} block={b}": round(d["ratio"], 3)
                   for (u, la, o, b, dm), d in sorted(headline.items())},
        "ratio_rounds": [round(x, 3) for x in round_ratios],
        "ratio_median": round(float(np.median(round_ratios)), 3),
        "threads": args.threads,
        "sampler": [{k: (round(v) if isinstance(v, float) and v > 100 else v) for k, v in x.items()}
                    for x in sampler],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
