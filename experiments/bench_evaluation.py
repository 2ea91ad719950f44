"""Evaluation speed: the one-pass ranking kernel (``recsys_metric.ranking``) against the torch
reference it replaced, side by side in one process, on the same scores.

Cases (random train/test of ~150 train items and one test item per user; the scores are a fixed
matrix, so the model's scoring is a copy of its rows):

- ML-1M's shape, 6,040 users x 3,706 items, float scores;
- the 25 M scale benchmark's catalogue (59,047 items), 8,192 users, float scores (CML's case)
  and integer scores (popularity's: ties at the cut-off everywhere).

Each case runs both paths ``--repeats`` times, alternating, AUC left out as in
``bench_scale.py``; the metrics of the two paths must be equal. Seconds are the fastest run
(the machine is shared), ns per score = seconds / (users x items).

    python experiments/bench_evaluation.py            # writes results/evaluation_speed.md
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import date
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recsys_metric import evaluation
from recsys_metric.evaluation import evaluate_ranking

HERE = Path(__file__).resolve().parent


class Fixed:
    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores

    def score_users(self, u: np.ndarray) -> np.ndarray:
        return self.scores[u]


def case(n_users: int, n_items: int, integer: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = (rng.integers(0, 500, (n_users, n_items)).astype(np.float32) if integer
              else rng.standard_normal((n_users, n_items), dtype=np.float32))
    nnz = 150 * n_users
    train = sp.csr_matrix((np.ones(nnz, np.float32), (rng.integers(0, n_users, nnz),
                                                      rng.integers(0, n_items, nnz))),
                          shape=(n_users, n_items))
    test = sp.csr_matrix((np.ones(n_users, np.float32),
                          (np.arange(n_users), rng.integers(0, n_items, n_users))),
                         shape=(n_users, n_items))
    test = (test - test.multiply(train > 0)).tocsr()
    test.eliminate_zeros()
    return Fixed(scores), train, test


def timed(path: str, model, train, test) -> tuple[float, dict]:
    evaluation.HAS_NUMBA = path == "kernel"
    t = time.perf_counter()
    m = evaluate_ranking(model, train, test, k=(10,), auc=False)
    return time.perf_counter() - t, m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--md", type=Path, default=HERE / "results" / "evaluation_speed.md")
    args = ap.parse_args()
    has_numba = evaluation.HAS_NUMBA
    if not has_numba:
        raise SystemExit("bench_evaluation: numba is not installed; nothing to compare")
    cases = [("ML-1M shape, float scores", 6040, 3706, False),
             ("59,047 items, float scores (CML)", 8192, 59047, False),
             ("59,047 items, integer scores (popularity)", 8192, 59047, True)]
    evaluate_ranking(*case(50, 40, False)[:3], k=(10,), auc=False)  # the kernel compiled/loaded
    rows = []
    for name, n_users, n_items, integer in cases:
        model, train, test = case(n_users, n_items, integer)
        best = {"kernel": np.inf, "torch": np.inf}
        results = {}
        for _ in range(args.repeats):
            for path in ("kernel", "torch"):
                secs, results[path] = timed(path, model, train, test)
                best[path] = min(best[path], secs)
        a, b = results["kernel"], results["torch"]  # the same metrics, to the bit (NaN: AUC)
        assert a.keys() == b.keys() and all(a[k] == b[k] or a[k] != a[k] and b[k] != b[k]
                                            for k in a), name
        cells = n_users * n_items
        rows.append((name, n_users, n_items, best["torch"], best["kernel"],
                     best["torch"] * 1e9 / cells, best["kernel"] * 1e9 / cells,
                     best["torch"] / best["kernel"], results["kernel"]["HR@10"]))
        print(rows[-1], flush=True)
    evaluation.HAS_NUMBA = has_numba
    lines = ["# Evaluation speed: one pass per row against the torch reference", "",
             f"Command: `python experiments/bench_evaluation.py --repeats {args.repeats}`, run "
             f"{date.today()}, load average {os.getloadavg()[0]:.1f} at the end (2 shared "
             "cores). `evaluate_ranking(..., k=(10,), auc=False)` on a fixed score matrix (the "
             "model's scoring is a copy of its rows, timed in both); fastest of the repeats, "
             "the two paths alternating; their metrics are equal in every case.", "",
             "| case | users | items | torch s | kernel s | torch ns / score | kernel ns / score "
             "| speed-up | HR@10 (both) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, u, n, ts, ks, tns, kns, ratio, hr in rows:
        lines.append(f"| {name} | {u:,} | {n:,} | {ts:.2f} | {ks:.2f} | {tns:.1f} | {kns:.1f} "
                     f"| **{ratio:.1f}x** | {hr:.4f} |")
    args.md.write_text("\n".join(lines) + "\n")
    print(args.md.read_text())


if __name__ == "__main__":
    main()
