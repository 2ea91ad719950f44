"""End-to-end CML training on one GPU: the fused Triton sampler vs the torch reference sampler.

    PYTHONPATH=. python experiments/gpu_train_check.py [--quick]

Trains the same config on the same ML-1M-sized synthetic matrix (planted taste clusters, popularity
skew) with ``backend="triton"`` and ``backend="torch"`` on CUDA, and prints a markdown table of
triplets/s (sampling included), the first and last epoch loss, and validation HR@10 on held-out
pairs, so a regression in either loop shows up as a quality gap. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import scipy.sparse as sp
import torch

from recsys_metric.evaluation import evaluate_ranking
from recsys_metric.train import TrainConfig, Trainer


def planted(n_users: int, n_items: int, per_user: int, seed: int = 0):
    """Users and items in 8 taste clusters; a user reads mostly in their cluster, popular first.
    Returns (train, valid) CSR with one held-out pair per user."""
    rng = np.random.default_rng(seed)
    item_cluster = rng.integers(0, 8, n_items)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.7
    rows, cols = [], []
    for u in range(n_users):
        c = rng.integers(0, 8)
        p = pop * np.where(item_cluster == c, 20.0, 1.0)
        items = rng.choice(n_items, per_user, replace=False, p=p / p.sum())
        rows += [u] * per_user
        cols += items.tolist()
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    held = m.indptr[:-1] + rng.integers(0, per_user, n_users)
    mask = np.zeros(m.nnz, bool)
    mask[held] = True
    coo = m.tocoo()
    part = [sp.csr_matrix((coo.data[k], (coo.row[k], coo.col[k])), shape=m.shape)
            for k in (~mask, mask)]
    return part[0], part[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device")
        return 2
    n_users, n_items, per = (2000, 1000, 50) if a.quick else (6040, 3706, 166)
    train, valid = planted(n_users, n_items, per)
    rows, summary = [], {}
    for backend in ("triton", "torch"):
        cfg = TrainConfig(dim=64, n_negatives=20, epochs=3 if a.quick else 8,
                          batch_size=50_000, device="cuda", backend=backend, seed=0)
        res = Trainer(cfg, show_progress=False).fit(train)
        hr = evaluate_ranking(res, train, valid, k=10)["HR@10"]
        tps = np.median([h["triplets_per_s"] for h in res.history[1:]])  # skip compile epoch
        rows.append(f"| {backend} ({res.loop}) | {train.nnz:,} | {tps:,.0f} | "
                    f"{res.history[0]['loss']:.4f} | {res.history[-1]['loss']:.4f} | {hr:.4f} |")
        summary[backend] = {"triplets_per_s": float(tps), "val_HR@10": float(hr)}
    print(f"CML training on {torch.cuda.get_device_name()}, torch {torch.__version__}: "
          f"{n_users} users x {n_items} items, dim 64, U 20, batch 50,000; median triplets/s "
          "over epochs after the first.\n")
    print("| sampler | train pairs | triplets/s | loss epoch 1 | loss last | val HR@10 |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    summary["speedup"] = summary["triton"]["triplets_per_s"] / summary["torch"]["triplets_per_s"]
    print("\n" + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
