"""Would a popularity prior chosen per dataset help CML? Validation splits only.

    .venv/bin/python experiments/prior_probe.py [--seeds 0 1 ... 9]

For each dataset (splits as in tune_defaults.py; the test part is never read) and seed: CML with
its defaults scored on the validation split; the same model with ``0.05 * log(1 + popularity)``
added to its scores; and with the weight chosen from LAMBDAS on an inner split carved from the
fit part (a model trained there, the weight maximising NDCG@10 + HR@10), as a fit-time
calibration would. Prints one line per dataset: means of NDCG@10 / HR@10, the weights picked.
"""

from __future__ import annotations

import argparse

import numpy as np
from tune_defaults import DATASETS

from recsys_metric import TrainConfig, Trainer, leave_last_out, read_ratings
from recsys_metric.evaluation import evaluate_ranking

LAMBDAS = (0.0, 0.025, 0.05, 0.1, 0.2)


class Prior:
    def __init__(self, model, log_pop: np.ndarray, weight: float) -> None:
        self.model, self.log_pop, self.weight = model, log_pop, weight

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return self.model.score_users(users) + self.weight * self.log_pop


def log_pop(data) -> np.ndarray:
    return np.log1p(np.asarray(data.matrix.sum(0)).ravel()).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    a = ap.parse_args()
    for name in ("books", "ml-100k", "ml-latest-small"):
        if not DATASETS[name].is_file():
            print(f"skip {name}: {DATASETS[name]} not found")
            continue
        train, _test = leave_last_out(read_ratings(DATASETS[name]))  # test: never read
        fit, valid = leave_last_out(train)
        inner_fit, inner = leave_last_out(fit)
        rows: dict[str, list] = {"defaults": [], "fixed 0.05": [], "chosen on inner split": []}
        picks = []
        for seed in a.seeds:
            cfg = TrainConfig(seed=seed)
            m_in = Trainer(cfg, show_progress=False).fit(inner_fit.matrix)
            sc = [evaluate_ranking(Prior(m_in, log_pop(inner_fit), w), inner_fit.matrix,
                                   inner.matrix, k=10) for w in LAMBDAS]
            picks.append(LAMBDAS[int(np.argmax([s["NDCG@10"] + s["HR@10"] for s in sc]))])
            m = Trainer(cfg, show_progress=False).fit(fit.matrix)
            for label, w in (("defaults", 0.0), ("fixed 0.05", 0.05),
                             ("chosen on inner split", picks[-1])):
                r = evaluate_ranking(Prior(m, log_pop(fit), w), fit.matrix, valid.matrix, k=10)
                rows[label].append((r["NDCG@10"], r["HR@10"]))
        cells = " | ".join(f"{label} {np.mean(v, 0)[0]:.4f} / {np.mean(v, 0)[1]:.4f}"
                           for label, v in rows.items())
        print(f"{name}: {cells} | weights picked {picks}", flush=True)


if __name__ == "__main__":
    main()
