"""Where CML trails ALS on ml-latest-small: HR@10 by user degree and test-item popularity.

    .venv/bin/python experiments/gap_breakdown.py [--seeds 0 1 2 3 4]

Validation split as in tune_defaults.py (the test part is never read). CML with its defaults
(hit rates averaged over the seeds) and implicit ALS with its defaults (one fit), full ranking,
fit items excluded. Prints HR@10 per bucket of the users' number of fit interactions and of
the validation item's popularity in the fit part, and the mean popularity of the top-10 lists.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from tune_defaults import DATASETS  # noqa: E402

from recsys_metric import TrainConfig, Trainer, leave_last_out, read_ratings  # noqa: E402
from recsys_metric.baselines import make_baseline  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--dataset", default="ml-latest-small")
    a = ap.parse_args()
    train, _test = leave_last_out(read_ratings(DATASETS[a.dataset]))  # test: never read
    fit, valid = leave_last_out(train)
    F, V = fit.matrix, valid.matrix.tocsr()
    pop = np.asarray(F.sum(0)).ravel()
    users = np.flatnonzero(np.diff(V.indptr))
    item = V.indices[V.indptr[users]]  # one validation item per user (leave-last-out)

    def top10(model) -> np.ndarray:
        s = model.score_users(users)
        s[F[users].nonzero()] = -np.inf
        return np.argsort(-s, axis=1)[:, :10]

    cml_hit, cml_pop = np.zeros(len(users)), 0.0
    for seed in a.seeds:
        top = top10(Trainer(TrainConfig(seed=seed), show_progress=False).fit(fit))
        cml_hit += (top == item[:, None]).any(1) / len(a.seeds)
        cml_pop += pop[top].mean() / len(a.seeds)
    top = top10(make_baseline("als").fit(F))
    als_hit, als_pop = (top == item[:, None]).any(1), pop[top].mean()
    print(f"{a.dataset}, validation split, {len(users)} users: HR@10 CML {cml_hit.mean():.4f} "
          f"(mean of {len(a.seeds)} seeds), ALS {als_hit.mean():.4f}\n")
    for title, key, edges in (
            ("user's fit interactions", np.diff(F.indptr)[users], [0, 30, 60, 120, 300, 10**9]),
            ("validation item's popularity", pop[item], [0, 5, 20, 50, 100, 10**9])):
        print(f"| {title} | users | CML HR@10 | ALS HR@10 |\n|---|---:|---:|---:|")
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            m = (key >= lo) & (key < hi)
            span = f"{lo}+" if hi == 10**9 else f"{lo}-{hi - 1}"
            print(f"| {span} | {m.sum()} | {cml_hit[m].mean():.3f} | {als_hit[m].mean():.3f} |")
        print()
    print(f"Mean fit popularity of the recommended items: CML {cml_pop:.1f}, ALS {als_pop:.1f}")


if __name__ == "__main__":
    main()
