"""The fused Triton training step (recsys_metric.sampling.triton_train) on one GPU: speed and
quality against the torch loop (autograd + sparse Adagrad) and the fused CPU loop.

    PYTHONPATH=. python experiments/gpu_check.py            # sampler checks, then this
    PYTHONPATH=. python experiments/gpu_train_fused.py       # this only
    TRITON_INTERPRET=1 PYTHONPATH=. python experiments/gpu_train_fused.py --quick --out /tmp/t.md

Sections (each wrapped: one failure still runs and prints the rest):

1. speed on an ML-1M-sized planted matrix (6,040 x 3,706, ~1M pairs, dim 64, U = 10), batch
   4,096 / 16,384 / 65,536: the fused epoch alone (permutation already on the GPU, CUDA-synced
   wall time), the fused epoch inside ``Trainer`` (backend "triton": host permutation, H2D
   copy), the torch loop (:class:`AutogradTrainer`: the loop before the fused step); plus
   contrastive / softmax (N = 100) rows;
2. validation HR@10 / NDCG@10 on a planted split, seeds 0-2: fused vs torch loop vs CPU loop
   (numba; skipped without numba), Trainer defaults but U = 10 (triplet), dim 64;
3. a 25M-interaction fit (random power-law matrix generated on the GPU, 160k users x 60k items,
   25 epochs, batch 65,536): wall time only (target < 1 min);
4. a small tiling sweep of the fused step (optional: skipped past ``--budget`` seconds, as are
   the speed rows and the CPU loop that start after it).

Writes a markdown report (default experiments/results/training_gpu.md; ``--quick`` writes only
with ``--out``). ``--quick``: tiny sizes, runs on CPU under ``TRITON_INTERPRET=1`` (smoke test).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from recsys_metric.device import HAS_NUMBA
from recsys_metric.evaluation import evaluate_ranking
from recsys_metric.sampling import triton_train as tt
from recsys_metric.train import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_train_check import planted  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
ROOT = Path(__file__).resolve().parents[1]
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


def sync():
    if CUDA:
        torch.cuda.synchronize()


class AutogradTrainer(Trainer):
    """``Trainer`` with its torch loop (fused sampler, autograd, sparse Adagrad) where the fused
    Triton step would run: the loop before the fused step, for comparison."""

    def _fused_triton_epoch(self, model, train, backend):
        return self._torch_epoch(model, train, backend)


def device_csr(train):
    indptr = torch.as_tensor(train.indptr.astype(np.int64), device=DEV)
    indices = torch.as_tensor(train.indices.astype(np.int32), device=DEV)
    pair_users = torch.repeat_interleave(torch.arange(train.shape[0], dtype=torch.int32,
                                                      device=DEV), indptr.diff())
    return indptr, indices, pair_users, indices.long()


def fused_rate(train, loss, U, batch_size, epochs, distance="euclidean", dim=64):
    """Triplets/s of FusedEpoch alone: permutations on the device, wall time after a sync."""
    indptr, indices, pair_users, pair_items = device_csr(train)
    g = torch.Generator(device=DEV).manual_seed(0)
    ue = torch.randn(train.shape[0], dim, generator=g, device=DEV) * 0.1 / dim ** 0.5
    ie = torch.randn(train.shape[1], dim, generator=g, device=DEV) * 0.1 / dim ** 0.5
    fused = tt.FusedEpoch(indptr, indices, pair_users, pair_items, ue, ie, torch.zeros_like(ue),
                          torch.zeros_like(ie), batch_size=batch_size, loss=loss,
                          distance=distance, n_negatives=U, margin=1.5 if loss != "softmax"
                          else 1.0, lr=0.1, clip_norm=1.0, seed=0)
    n = len(pair_users)
    perms = [torch.randperm(n, generator=g, device=DEV) for _ in range(2)]
    fused(0, perms[0])  # compile
    times, losses = [], []
    for e in range(1, epochs + 1):
        sync()
        t = time.perf_counter()
        losses.append(fused(e, perms[e % 2])[0])  # ends with a host sync
        times.append(time.perf_counter() - t)
    return n / statistics.median(times), losses


def trainer_rate(trainer_cls, train, cfg):
    res = trainer_cls(cfg, show_progress=False).fit(train)
    rates = [h["triplets_per_s"] for h in res.history[1:]] or [res.history[0]["triplets_per_s"]]
    return statistics.median(rates), res


def mt(x):
    return f"{x / 1e6:,.1f} M" if x >= 1e5 else f"{x / 1e3:,.1f} k"


@section("1. speed: fused step vs torch loop")
def speed(train, q, lines, deadline):
    dev = "cuda" if CUDA else "cpu"
    sizes = (256, 1024) if q else (4096, 16384, 65536)
    epochs = 1 if q else 5
    lines += ["## 1. Speed, ML-1M-sized planted matrix", "",
              f"{train.shape[0]:,} users x {train.shape[1]:,} items, {train.nnz:,} train pairs, "
              "dim 64, triplet loss U = 10 (contrastive / softmax: N = 100). Triplets/s = pairs "
              "per second of an epoch, median over epochs after the first (compile). *fused "
              "epoch*: `FusedEpoch` alone, permutation already on the GPU; *fused in Trainer*: "
              "the same through `Trainer.fit`, backend \"triton\" (host `numpy` permutation + "
              "H2D copy per epoch); *torch loop*: the loop before the fused step "
              "(fused sampler, autograd, sparse Adagrad).", "",
              "| loss | batch | fused epoch | fused in Trainer | torch loop | speed-up (fused "
              "epoch / torch) |", "|---|---:|---:|---:|---:|---:|"]
    runs = [("triplet", "euclidean", 10, b) for b in sizes]
    runs += [("contrastive", "euclidean", 100 if not q else 8, sizes[-2 if not q else 0]),
             ("softmax", "cosine", 100 if not q else 8, sizes[-2 if not q else 0])]
    for loss, distance, U, bs in runs:
        if time.perf_counter() > deadline:
            lines.append(f"| {loss} | {bs:,} | skipped (time budget) | | | |")
            continue
        f_rate, f_losses = fused_rate(train, loss, U, bs, epochs, distance)
        cfg = dict(dim=64, loss=loss, distance=distance, n_negatives=U, batch_size=bs,
                   epochs=epochs + 1 if not q else 2, average_last=0, device=dev,
                   backend="triton", seed=0)
        ft_rate, _ = trainer_rate(Trainer, train, TrainConfig(**cfg))
        t_rate, _ = trainer_rate(AutogradTrainer, train,
                                 TrainConfig(**{**cfg, "epochs": 3 if not q else 1}))
        name = loss if loss == "triplet" else f"{loss} ({distance}, N={U})"
        lines.append(f"| {name} | {bs:,} | {mt(f_rate)} | {mt(ft_rate)} | {mt(t_rate)} | "
                     f"{f_rate / t_rate:.1f}x |")
        print("       " + lines[-1], flush=True)
    lines.append("")


@section("4. tiling sweep of the fused step")
def sweep(train, q, lines, deadline):
    bs = 1024 if q else 65536
    configs = [(64, 4, 32, 4), (64, 2, 32, 4), (128, 4, 32, 4), (32, 2, 32, 4), (64, 4, 16, 2),
               (64, 4, 64, 8)]  # (slots, warps, apply rows, apply warps); first: the defaults
    if q:
        configs = configs[:2]
    saved = tt.SLOTS_PER_PROGRAM, tt.NUM_WARPS, tt.APPLY_ROWS, tt.APPLY_WARPS
    lines += ["## 4. Tiling sweep of the fused step", "",
              f"Triplet, U = 10, batch {bs:,}; fused epoch triplets/s (as in section 1).", "",
              "| slots / program | warps | apply rows | apply warps | triplets/s |",
              "|---:|---:|---:|---:|---:|"]
    try:
        for slots, warps, rows, awarps in configs:
            if time.perf_counter() > deadline:
                lines.append(f"| {slots} | {warps} | {rows} | {awarps} | skipped (time) |")
                continue
            if not q:
                tt.SLOTS_PER_PROGRAM = slots
            tt.NUM_WARPS, tt.APPLY_ROWS, tt.APPLY_WARPS = warps, rows, awarps
            try:
                res = mt(fused_rate(train, "triplet", 10, bs, 1 if q else 3)[0])
            except Exception as e:  # one bad tiling is a result too
                res = f"failed: {type(e).__name__}"
            lines.append(f"| {slots} | {warps} | {rows} | {awarps} | {res} |")
            print("       " + lines[-1], flush=True)
    finally:
        tt.SLOTS_PER_PROGRAM, tt.NUM_WARPS, tt.APPLY_ROWS, tt.APPLY_WARPS = saved
    lines.append("")


@section("2. validation quality: fused vs torch loop vs CPU loop")
def quality(train, valid, q, lines, seeds, deadline):
    epochs = 2 if q else 20
    base = dict(dim=64, n_negatives=10, epochs=epochs, seed=0)
    loops = [("fused (Triton)", Trainer, dict(device="cuda" if CUDA else "cpu",
                                                   backend="triton")),
             ("torch loop (Triton sampler)", AutogradTrainer,
              dict(device="cuda" if CUDA else "cpu", backend="triton"))]
    if HAS_NUMBA:
        loops.append(("CPU loop (numba)", Trainer, dict(device="cpu", backend="cpu")))
    lines += ["## 2. Validation quality, planted split", "",
              f"{train.shape[0]:,} users x {train.shape[1]:,} items, {train.nnz:,} train pairs, "
              "one held-out pair per user. Trainer defaults (triplet, batch 4,096, Adagrad, "
              f"mean of the last 5 epochs) but dim 64, U = 10, {epochs} epochs; a bare matrix "
              "(no recency, no pull). HR@10 / NDCG@10 per seed, then mean.", "",
              "| loop | " + " | ".join(f"seed {s}" for s in seeds) + " | mean HR@10 | "
              "mean NDCG@10 | s / fit |", "|---|" + "---:|" * (len(seeds) + 3)]
    for name, cls, extra in loops:
        if time.perf_counter() > deadline and cls is Trainer and extra["backend"] == "cpu":
            lines.append(f"| {name} | skipped (time budget) | | | |")
            continue
        hrs, ndcgs, secs = [], [], []
        for s in seeds:
            t = time.perf_counter()
            res = cls(TrainConfig(**{**base, **extra, "seed": s}), show_progress=False).fit(train)
            secs.append(time.perf_counter() - t)
            m = evaluate_ranking(res, train, valid, k=10, auc=False)
            hrs.append(m["HR@10"])
            ndcgs.append(m["NDCG@10"])
        cells = " | ".join(f"{h:.4f} / {n:.4f}" for h, n in zip(hrs, ndcgs, strict=True))
        lines.append(f"| {name} | {cells} | {np.mean(hrs):.4f} | {np.mean(ndcgs):.4f} | "
                     f"{np.mean(secs):.1f} |")
        print("       " + lines[-1], flush=True)
    if not HAS_NUMBA:
        lines.append("| CPU loop (numba) | numba not installed: skipped | | | |")
    lines.append("")


def power_law_csr(n_users, n_items, nnz, seed):
    """Unique random (user, item) pairs, both sides power-law skewed, generated on the device."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    keys = torch.empty(0, dtype=torch.long, device=DEV)
    while len(keys) < nnz:
        n = int((nnz - len(keys)) * 1.3) + 16
        u = (torch.rand(n, generator=g, device=DEV).pow(1.5) * n_users).long()
        i = (torch.rand(n, generator=g, device=DEV).pow(2.0) * n_items).long()
        keys = torch.unique(torch.cat([keys, u * n_items + i]))
    keep = torch.randperm(len(keys), generator=g, device=DEV)[:nnz]
    keys = keys[keep].sort().values
    rows, cols = keys // n_items, keys % n_items
    indptr = torch.zeros(n_users + 1, dtype=torch.long, device=DEV)
    indptr[1:] = torch.bincount(rows, minlength=n_users).cumsum(0)
    return indptr, cols.int(), rows.int(), cols


@section("3. 25M-interaction fit")
def big_fit(q, lines):
    n_users, n_items, nnz = (300, 200, 3000) if q else (160_000, 60_000, 25_000_000)
    epochs, bs, dim = (2, 1024, 16) if q else (25, 65536, 64)
    t = time.perf_counter()
    indptr, indices, pair_users, pair_items = power_law_csr(n_users, n_items, nnz, seed=0)
    sync()
    t_gen = time.perf_counter() - t
    g = torch.Generator(device=DEV).manual_seed(1)
    ue = torch.randn(n_users, dim, generator=g, device=DEV) * 0.1 / dim ** 0.5
    ie = torch.randn(n_items, dim, generator=g, device=DEV) * 0.1 / dim ** 0.5
    sync()
    t0 = time.perf_counter()
    fused = tt.FusedEpoch(indptr, indices, pair_users, pair_items, ue, ie, torch.zeros_like(ue),
                          torch.zeros_like(ie), batch_size=bs, loss="triplet", n_negatives=10,
                          margin=1.5, lr=0.1, clip_norm=1.0, seed=0)
    history = []
    for epoch in range(epochs):
        perm = torch.randperm(nnz, device=DEV)
        history.append(fused(epoch, perm))
    sync()
    wall = time.perf_counter() - t0
    deg = indptr.diff()
    lines += ["## 3. 25M-interaction fit", "",
              f"Random power-law matrix generated on the device ({t_gen:.1f} s): {n_users:,} "
              f"users x {n_items:,} items, {nnz:,} pairs (max user degree {int(deg.max()):,}); "
              f"triplet loss, U = 10, dim {dim}, batch {bs:,}, {epochs} epochs, permutations by "
              "`torch.randperm` on the device; wall time includes the first epoch's compile.", "",
              "| pairs | epochs | wall time | triplets/s | loss epoch 1 | loss last "
              "| active last |",
              "|---:|---:|---:|---:|---:|---:|---:|",
              f"| {nnz:,} | {epochs} | {wall:.1f} s | {mt(nnz * epochs / wall)} | "
              f"{history[0][0]:.4f} | {history[-1][0]:.4f} | {history[-1][1]:,} |", ""]
    print("       " + lines[-2], flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--out", help="markdown report (default experiments/results/training_gpu.md,"
                                  " none with --quick)")
    ap.add_argument("--budget", type=float, default=150.0,
                    help="seconds after which the optional parts (speed rows, CPU loop, tiling "
                         "sweep) are skipped")
    a = ap.parse_args(argv)
    return run(a.quick, a.out, a.budget, " ".join(["python", *sys.argv]))


def run(quick: bool, out: str | None, budget: float = 150.0, command: str = "") -> int:
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    if not tt.HAS_TRITON or not (CUDA or interp):
        print("needs triton and a CUDA device (or TRITON_INTERPRET=1 with --quick)")
        return 2
    if interp:  # the interpreter pays per program: big tiles keep a CPU smoke run short
        tt.SLOTS_PER_PROGRAM, tt.TILE_ELEMS, tt.APPLY_ROWS = 4096, 1 << 16, 4096
    import triton

    FAILURES.clear()
    deadline = time.perf_counter() + (float("inf") if quick else budget)  # smoke: run all
    dev_name = torch.cuda.get_device_name() if CUDA else "CPU (Triton interpreter)"
    print(f"# fused training: {dev_name}, torch {torch.__version__}, triton "
          f"{triton.__version__}", flush=True)
    q = quick
    t = time.perf_counter()
    train, valid = planted(*((200, 120, 10) if q else (6040, 3706, 166)))
    print(f"planted matrix: {train.nnz:,} train pairs ({time.perf_counter() - t:.1f} s)")
    lines = ["# Fused Triton training step on one GPU", "",
             f"Device: {dev_name}; torch {torch.__version__}, triton {triton.__version__}.", "",
             "Command: `PYTHONPATH=. " + (command or "python experiments/gpu_train_fused.py")
             + "`", "",
             "Target (issue 17): >= 200 M triplets/s end to end on ML-1M, the 25M fit < 1 min.",
             ""]
    speed(train, q, lines, deadline)
    quality(train, valid, q, lines, (0,) if q else (0, 1, 2), deadline)
    big_fit(q, lines)
    sweep(train, q, lines, deadline)  # optional: last
    if FAILURES:
        lines += [f"FAILED sections: {', '.join(FAILURES)}", ""]
    text = "\n".join(lines)
    print("\n" + text)
    path = out if out else (None if q else str(ROOT / "experiments/results/training_gpu.md"))
    if path:
        Path(path).write_text(text)
        print(f"wrote {path}")
    if FAILURES:
        print(f"\nFAILED: {', '.join(FAILURES)}")
        return 1
    print("\nall training sections ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
