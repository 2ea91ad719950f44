"""One split, every model trained on the same train part, scored by the same protocol.

:func:`run_comparison` returns the JSON contract of DESIGN.md (``evaluate --json``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .data import Interactions
from .evaluation import evaluate_ranking
from .split import leave_last_out, random_holdout, temporal
from .train import TrainConfig

PROTOCOLS = ("leave-last-out", "random", "temporal")
MODELS = ("cml", "popularity", "als", "bpr")
REFERENCE = "cml"  # the model every other one is paired with
# Per-user metrics tested in the paired comparison (novelty is a property, not a quality).
PAIRED_PREFIXES = ("HR@", "NDCG@", "Recall@", "Precision@", "MAP@", "MRR", "AUC")


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
                   dataset: str | None = None, show_progress: bool = True,
                   per_user: bool = False, n_boot: int = 0, alpha: float = 0.05) -> dict:
    """Split ``data``, fit each model on the train part, evaluate on the test part.

    Parameters
    ----------
    per_user : also return ``result["per_user"][model]``: numpy arrays aligned by position,
        ``user`` (raw ids), ``n_test`` and every per-user metric (see :func:`evaluate_ranking`).
        Not JSON: :func:`json_ready` drops it.
    n_boot : > 0 adds, per model, ``"METRIC_ci": [low, high]`` (percentile bootstrap over test
        users, level ``1 - alpha``) for every per-user metric, and, when ``"cml"`` is among the
        models, ``result["paired"][model][METRIC]``: a paired bootstrap test of CML minus that
        model over the same users (:func:`recsys_metric.stats.paired_test`). 0 skips both.

    CML's per-epoch validation curve (present when ``config.patience > 0``) is returned as
    ``result["validation"]["cml"]``: ``{"best_epoch": n, "history": [per-epoch dicts]}``.
    """
    from .stats import bootstrap_ci, paired_test

    config = config or TrainConfig(seed=seed)
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    train, test = split(data, protocol, seed)
    result: dict[str, Any] = {
        "dataset": dataset or data.source, "protocol": protocol, "k": list(k),
        "split": {"users": data.n_users, "items": data.n_items, "train": train.nnz,
                  "test": test.nnz,
                  "test_users": int((np.diff(test.matrix.indptr) > 0).sum())},
        "models": {},
    }
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for name in parse_models(models):
        t0 = time.perf_counter()
        model = fit_model(name, train, config, seed, show_progress)
        fit_seconds = time.perf_counter() - t0
        metrics = evaluate_ranking(model, train.matrix, test.matrix, k=k,
                                   per_user=per_user or n_boot > 0)
        arrays[name] = metrics.pop("per_user", {})
        metrics = {key: float(v) for key, v in metrics.items() if key != "users"}
        metrics["fit_seconds"] = round(fit_seconds, 3)
        if n_boot:
            for key, values in arrays[name].items():
                if key not in ("user", "n_test"):
                    metrics[f"{key}_ci"] = list(bootstrap_ci(values, n_boot, alpha, seed))
        result["models"][name] = metrics
        history = getattr(model, "validation_history_", None)
        if history:
            result.setdefault("validation", {})[name] = {
                "best_epoch": getattr(model, "best_epoch_", None),
                "history": [{key: float(v) for key, v in h.items()} for h in history]}
    if n_boot:
        result["stats"] = {
            "n_boot": int(n_boot), "alpha": float(alpha), "seed": int(seed),
            "ci": "percentile bootstrap of the mean over test users",
            "paired": f"{REFERENCE} minus model over the same test users: paired bootstrap "
                      "(two-sided, shifted to the null) and Wilcoxon signed-rank p-values"}
    if n_boot and REFERENCE in arrays and len(arrays) > 1:
        ref = arrays[REFERENCE]
        result["paired"] = {}
        for name, cols in arrays.items():
            if name == REFERENCE:
                continue
            tests = {}
            for key in cols:
                if key.startswith(PAIRED_PREFIXES):
                    t = paired_test(ref[key], cols[key], n_boot, alpha, seed)
                    tests[key] = {"diff": t["mean_diff"], "ci": t["ci"], "p_value": t["p_value"],
                                  "wilcoxon_p": t["wilcoxon_p"], REFERENCE: t["mean_a"],
                                  "model": t["mean_b"], "n": t["n"]}
            result["paired"][name] = tests
    if per_user:
        users = train.users
        result["per_user"] = {name: {"user": np.asarray(users.raw(cols["user"]), dtype=str),
                                     **{key: v for key, v in cols.items() if key != "user"}}
                              for name, cols in arrays.items()}
    return result


def json_ready(result: dict) -> dict:
    """``result`` without its per-user arrays, NaN as None: what ``--json`` and results.json
    hold."""

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        if isinstance(x, float | np.floating):
            return None if math.isnan(x) else float(x)
        if isinstance(x, np.integer):
            return int(x)
        return x

    return clean({k: v for k, v in result.items() if k != "per_user"})


def per_user_frame(result: dict):
    """The per-user metrics of :func:`run_comparison` (``per_user=True``) as one long pandas
    DataFrame: columns ``user`` (raw id), ``model``, ``n_test`` and the metrics."""
    import pandas as pd

    if "per_user" not in result:
        raise ValueError("run_comparison was called without per_user=True")
    frames = []
    for name, cols in result["per_user"].items():
        df = pd.DataFrame(cols)
        df.insert(1, "model", name)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def format_table(result: dict, columns: Sequence[str] | None = None) -> str:
    """A markdown table: one row per model, metrics as columns."""
    models = result["models"]
    if columns is None:
        columns = [c for c in next(iter(models.values()), {})
                   if c.startswith(("HR@", "NDCG@", "Recall@", "MRR")) and not c.endswith("_ci")]
        columns = list(columns) + ["fit_seconds"]
    lines = ["| model | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, m in models.items():
        cells = [f"{m[c]:.4f}" if c != "fit_seconds" else f"{m[c]:.1f}" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
