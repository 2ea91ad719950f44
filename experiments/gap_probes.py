"""Probes of where CML's ml-latest-small HR@10 gap to ALS comes from, on validation splits only.

    .venv/bin/python experiments/gap_probes.py [--seeds 0 1 2] [--out PATH]

Splits as in tune_defaults.py (the test part is never read). Rows, each the mean over seeds:
CML with the defaults; the same models with ``beta * log(1 + train popularity)`` added to their
scores (a diagnostic of what an item bias could buy, not a model); CML with early stopping
(patience 5 on a split carved from the fit part, then refit). Last line: JSON of the rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tune_defaults import DATASETS

from recsys_metric import Recommender, TrainConfig, Trainer, leave_last_out, read_ratings
from recsys_metric.evaluation import evaluate_ranking
from recsys_metric.train import TrainResult

BETAS = (0.05, 0.1, 0.2)


class PopularityBlend:
    def __init__(self, model, log_pop: np.ndarray, beta: float) -> None:
        self.model, self.log_pop, self.beta = model, log_pop, beta

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return self.model.score_users(users) + self.beta * self.log_pop


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    rows: dict[str, dict] = {}
    names = [n for n in ("books", "ml-100k", "ml-latest-small") if DATASETS[n].is_file()]
    for name in names:
        train, _test = leave_last_out(read_ratings(DATASETS[name]))  # test: never read
        fit, valid = leave_last_out(train)
        log_pop = np.log1p(np.asarray(fit.matrix.sum(0)).ravel()).astype(np.float32)
        scores: dict[str, list] = {}
        for seed in a.seeds:
            res = Trainer(TrainConfig(seed=seed), show_progress=False).fit(fit.matrix)
            models = {"CML defaults": res,
                      **{f"+ {b} log-popularity": PopularityBlend(res, log_pop, b) for b in BETAS}}
            es = Recommender(TrainConfig(seed=seed, epochs=50, patience=5), index="exact").fit(
                fit, show_progress=False)
            models["early stopping (patience 5)"] = TrainResult(es.user_embeddings_,
                                                                es.item_embeddings_)
            for label, model in models.items():
                m = evaluate_ranking(model, fit.matrix, valid.matrix, k=10)
                scores.setdefault(label, []).append((m["NDCG@10"], m["HR@10"]))
        for label, values in scores.items():
            rows.setdefault(label, {})[name] = [float(x) for x in np.mean(values, axis=0)]
    lines = ["| CML | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, row in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[n][0]:.4f} / {row[n][1]:.4f}"
                                                 for n in names) + " |")
    table = "\n".join(lines)
    print(table)
    if a.out:
        a.out.write_text(table + "\n")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
