"""Choose the pull toward each user's latest items on validation (never the test): after
training, ``u <- (1 - b) u + b c``, ``c`` the mean of the user's history weighted ``decay**r``
(r = 0 the newest; ``TrainConfig.recent_pull`` = b, ``pull_decay``; ALS's same parameters).

    .venv/bin/python experiments/recent_point_probe.py [--model cml|als|als-weighted]
        [--seeds 0 1 ... 9] [--decays 0.3 0.5 0.7] [--betas 0 0.3 0.4 0.5 0.6] [--transitions W]

Validation split as in tune_defaults.py (each user's latest train item held out; the test part is
never read). One fit per seed without the pull (CML: every other default; ALS: implicit's
defaults, with or without a confidence of 4 on each user's latest 10%); every (decay, b) pulls
the same fit's users.
Cells: NDCG@10 / HR@10, mean over the seeds. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from tune_defaults import validation_interactions  # noqa: E402

from recsys_metric import TrainConfig, Trainer  # noqa: E402
from recsys_metric.baselines import make_baseline  # noqa: E402
from recsys_metric.evaluation import evaluate_ranking  # noqa: E402
from recsys_metric.model import pull_to_latest  # noqa: E402
from recsys_metric.train import TrainResult  # noqa: E402


class _Dot:
    def __init__(self, users, items):
        self.users, self.items = users, items

    def score_users(self, idx):
        return self.users[idx] @ self.items.T


def tables(model: str, fit, seed: int, transitions: int | None):
    """(user rows, item rows, scorer class) of one fit without the pull."""
    if model == "cml":
        cfg = {} if transitions is None else {"transitions": transitions}
        r = Trainer(TrainConfig(seed=seed, recent_pull=0.0, **cfg), show_progress=False).fit(fit)
        return r.user_embeddings, r.item_embeddings, TrainResult
    extra = {"recent_share": 0.1, "recent_weight": 4.0} if model == "als-weighted" else {}
    extra["transitions"] = transitions or 0
    b = make_baseline("als", seed=seed, recent_pull=0.0, **extra).fit(fit)
    return b.user_factors_, b.item_factors_, _Dot


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cml", choices=["cml", "als", "als-weighted"],
                    help="als-weighted: ALS with a confidence of 4 on each user's latest 10%%")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--decays", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.3, 0.4, 0.5, 0.6])
    ap.add_argument("--transitions", type=int, default=None,
                    help="context rows' window (CML: default TrainConfig's; ALS: default 0)")
    ap.add_argument("--datasets", nargs="+", default=["books", "ml-100k", "ml-latest-small"])
    a = ap.parse_args()
    splits = validation_interactions(a.datasets)
    grid = list(itertools.product(a.decays, a.betas))
    cells: dict = {g: {} for g in grid}
    for name, (fit, valid) in splits.items():
        weights = {d: fit.latest_weights(d) for d in a.decays}
        for s in a.seeds:
            users, items, scorer = tables(a.model, fit, s, a.transitions)
            for d, b in grid:
                m = evaluate_ranking(scorer(pull_to_latest(users, items, weights[d], b), items),
                                     fit.matrix, valid.matrix, k=10)
                cells[d, b].setdefault(name, []).append((m["NDCG@10"], m["HR@10"]))
        print(f"{name}: done", flush=True)
    print(f"\n{a.model}: NDCG@10 / HR@10 on validation, mean of seeds {a.seeds}\n")
    print("| pull_decay | recent_pull | " + " | ".join(splits) + " |")
    print("|---:|---:|" + "---|" * len(splits))
    out = []
    for (d, b), per in cells.items():
        means = {n: np.mean(per[n], 0).tolist() for n in splits}
        out.append({"pull_decay": d, "recent_pull": b, **means})
        print(f"| {d} | {b} | " + " | ".join(f"{means[n][0]:.4f} / {means[n][1]:.4f}"
                                             for n in splits) + " |")
    print(json.dumps({"model": a.model, "seeds": a.seeds, "rows": out}))


if __name__ == "__main__":
    main()
