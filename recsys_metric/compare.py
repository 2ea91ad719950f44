"""One split, every model trained on the same train part, scored by the same protocol.

:func:`run_comparison` returns the JSON contract of DESIGN.md (``evaluate --json``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from .data import Interactions
from .evaluation import evaluate_ranking
from .split import leave_last_out, random_holdout, temporal
from .train import TrainConfig

PROTOCOLS = ("leave-last-out", "random", "temporal")
MODELS = ("cml", "popularity", "als", "bpr")


def split(data: Interactions, protocol: str, seed: int = 0
          ) -> tuple[Interactions, Interactions]:
    if protocol == "leave-last-out":
        return leave_last_out(data)
    if protocol == "random":
        return random_holdout(data, 0.2, seed)
    if protocol == "temporal":
        return temporal(data, 0.8)
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


def parse_models(spec: str | Sequence[str]) -> list[str]:
    names = [m.strip().lower() for m in (spec.split(",") if isinstance(spec, str) else spec)]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        raise ValueError(f"unknown model(s) {', '.join(unknown) or '(none)'}; "
                         f"choose from {', '.join(MODELS)}")
    return list(dict.fromkeys(names))


def fit_model(name: str, train: Interactions, config: TrainConfig, seed: int,
              show_progress: bool = False):
    """Fit model ``name`` on ``train``; the result has ``score_users`` for evaluation."""
    if name == "cml":
        from .recommender import Recommender

        return Recommender(config, index="exact").fit(train, show_progress=show_progress)
    from .baselines import make_baseline

    return make_baseline(name, **({} if name == "popularity" else {"seed": seed})).fit(
        train.matrix)


def run_comparison(data: Interactions, protocol: str = "leave-last-out",
                   models: Sequence[str] = MODELS, k: Sequence[int] = (10,),
                   config: TrainConfig | None = None, seed: int = 0,
                   dataset: str | None = None, show_progress: bool = True) -> dict:
    """Split ``data``, fit each model on the train part, evaluate on the test part."""
    config = config or TrainConfig(seed=seed)
    train, test = split(data, protocol, seed)
    result = {
        "dataset": dataset or data.source, "protocol": protocol, "k": list(k),
        "split": {"users": data.n_users, "items": data.n_items, "train": train.nnz,
                  "test": test.nnz,
                  "test_users": int((np.diff(test.matrix.indptr) > 0).sum())},
        "models": {},
    }
    for name in parse_models(models):
        t0 = time.perf_counter()
        model = fit_model(name, train, config, seed, show_progress)
        fit_seconds = time.perf_counter() - t0
        metrics = evaluate_ranking(model, train.matrix, test.matrix, k=k)
        metrics = {key: float(v) for key, v in metrics.items() if key != "users"}
        metrics["fit_seconds"] = round(fit_seconds, 3)
        result["models"][name] = metrics
    return result


def format_table(result: dict, columns: Sequence[str] | None = None) -> str:
    """A markdown table: one row per model, metrics as columns."""
    models = result["models"]
    if columns is None:
        columns = [c for c in next(iter(models.values()), {})
                   if any(c.startswith(p) for p in ("HR@", "NDCG@", "Recall@", "MRR"))]
        columns = list(columns) + ["fit_seconds"]
    lines = ["| model | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, m in models.items():
        cells = [f"{m[c]:.4f}" if c != "fit_seconds" else f"{m[c]:.1f}" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
