"""One split, every model trained on the same train part, scored by the same protocol.

:func:`run_comparison` returns the JSON contract of DESIGN.md (``evaluate --json``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data import Interactions
from .evaluation import evaluate_index, evaluate_ranking, sampled_metrics
from .protocols import task_of, temporal_split
from .split import PROTOCOLS, split
from .train import TIME_BLIND, TrainConfig

MODELS = ("cml", "popularity", "als", "bpr", "als-recency", "ease")
DEFAULT_MODELS = MODELS[:4]  # the JSON contract's models (als-recency: baselines.PRESETS)
REFERENCE = "cml"  # the model every other one is paired with
# Per-user metrics tested in the paired comparison (novelty is a property, not a quality).
PAIRED_PREFIXES = ("HR@", "NDCG@", "Recall@", "Precision@", "MAP@", "MRR", "AUC")


def parse_models(spec: str | Sequence[str]) -> list[str]:
    names = [m.strip().lower() for m in (spec.split(",") if isinstance(spec, str) else spec)]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        raise ValueError(f"unknown model(s) {', '.join(unknown) or '(none)'}; "
                         f"choose from {', '.join(MODELS)}")
    return list(dict.fromkeys(names))


def fit_model(name: str, train: Interactions, config: TrainConfig, seed: int,
              show_progress: bool = False, params: dict | None = None, index: str = "exact",
              validation: str = "leave-last-out"):
    """Fit model ``name`` on ``train``; the result has ``score_users`` for evaluation.

    ``config`` is CML's; ``params`` are a baseline's constructor arguments (e.g. tuned ones).
    ``index`` is CML's serving index (its ``score_users`` is exact either way); ``validation``
    the shape of the split CML's early stopping carves (with ``config.patience``).
    """
    if name == "cml":
        from .recommender import Recommender

        return Recommender(config, index=index).fit(train, show_progress=show_progress,
                                                    validation=validation)
    from .baselines import make_baseline, takes_seed

    # seed only for the seeded ones: popularity and EASE are deterministic
    return make_baseline(name, **({"seed": seed} if takes_seed(name) else {}),
                         **(params or {})).fit(train)


def tune_models(train: Interactions, names: Sequence[str], trials: int, config: TrainConfig,
                seed: int = 0, show_progress: bool = True,
                space: dict[str, dict] | None = None, validation: str = "leave-last-out"
                ) -> dict[str, dict]:
    """Tune every tunable model of ``names`` with the same number of trials on ``train`` (the
    train part only: :func:`recsys_metric.tune.tune` carves its validation split from it, in
    the shape ``validation``). ``config`` gives CML's parameters that are not searched;
    ``space[model]`` overrides that model's search space. Returns ``{model: tune result}``."""
    from .tune import TUNABLE, tune

    return {name: tune(train, name, trials, seed, show_progress=show_progress,
                       base=config if name == "cml" else None, space=(space or {}).get(name),
                       protocol=validation)
            for name in names if name in TUNABLE}


def task_config(task: str, train: Interactions, test: Interactions, config: TrainConfig,
                keep: Sequence[str] = (), space: dict | None = None
                ) -> tuple[dict, TrainConfig, dict]:
    """The task of a split (``"auto"``: :func:`recsys_metric.protocols.task_of`; else as
    asked, with the split's statistics), CML's config for it (:meth:`TrainConfig.for_task`)
    and CML's tuning-space overrides ``space``, with the time order fixed off for ``"any"``;
    the fields in ``keep`` (given by the user) stay as they are."""
    info = task_of(train, test)
    if task != "auto":
        info = {**info, "task": task, "reason": "as asked"}
    blind = {k: v for k, v in TIME_BLIND.items() if k not in set(keep)}
    space = {**(blind if info["task"] == "any" else {}), **(space or {})}
    return info, config.for_task(info["task"], keep), space


def validation_shape(protocol: str, task: str) -> str:
    """The protocol a validation split carved from train follows: the test's own, and for a
    given split (whose shape is unknown) leave-last-out for the next item, else random."""
    if protocol in PROTOCOLS:
        return protocol
    return "leave-last-out" if task == "next" else "random"


def _negatives(result: dict, train: Interactions, test: Interactions,
               negatives: str | Path | dict | None, sample_negatives: int, seed: int
               ) -> dict[int, np.ndarray] | None:
    """The sampled protocol's negatives per user (None when not asked); notes their source in
    ``result["sampled"]``."""
    from .protocols import read_negatives
    from .protocols import sample_negatives as draw

    if negatives is not None and sample_negatives:
        raise ValueError("give negatives or sample_negatives, not both")
    if isinstance(negatives, dict):
        neg, source = negatives, "given"
    elif negatives is not None:
        neg, source = read_negatives(negatives, train.users, train.items), str(negatives)
    elif sample_negatives:
        neg = draw(train.matrix, test.matrix, sample_negatives, seed)
        source = f"{sample_negatives} drawn uniformly per test user (seed {seed})"
    else:
        return None
    result["sampled"] = {"negatives": source}
    return neg


# Why a split can leave nothing to evaluate, by protocol.
NOTHING_TO_TEST = {
    "leave-last-out": "every user has a single interaction (those stay train-only)",
    "random": "every user has a single interaction, or the holdout rounds to zero items",
    "temporal": "no test interaction after the cut has a user and an item seen before it",
    "pre-split": "no test pair has a user and an item that the train file has",
}


def run_comparison(data: Interactions | None, protocol: str = "leave-last-out",
                   models: Sequence[str] = DEFAULT_MODELS, k: Sequence[int] = (10,),
                   config: TrainConfig | None = None, seed: int = 0,
                   dataset: str | None = None, show_progress: bool = True,
                   per_user: bool = False, n_boot: int = 0, alpha: float = 0.05,
                   tune_trials: int = 0, tune_space: dict[str, dict] | None = None,
                   cut: float | None = None,
                   presplit: tuple[Interactions, Interactions, dict] | None = None,
                   negatives: str | Path | dict | None = None, sample_negatives: int = 0,
                   approximate: bool = False, task: str = "auto", keep: Sequence[str] = ()
                   ) -> dict:
    """Split ``data``, fit each model on the train part, evaluate on the test part.

    Parameters
    ----------
    cut : the temporal protocol's cut (:func:`recsys_metric.split.temporal`; default 0.8). The
        temporal protocol drops test pairs whose user or item is unseen in train and counts them
        in ``result["split"]`` (:func:`recsys_metric.protocols.temporal_split`).
    presplit : ``(train, test, info)`` from :func:`recsys_metric.protocols.read_split`: used as
        is (``data`` may be None; ``protocol`` becomes ``"pre-split"``; ``info`` joins
        ``result["split"]``).
    negatives, sample_negatives : the sampled protocol, for reproducing papers only: a negatives
        file (:func:`recsys_metric.protocols.read_negatives`) or ``{user index: items}``, or
        ``sample_negatives`` uniform negatives per test user (seeded). Adds ``sampled_*`` keys
        (:func:`recsys_metric.evaluation.sampled_metrics`) to every model and
        ``result["sampled"]``.
    approximate : also rank CML's test users through an Annoy index (CML is then fitted with
        ``index="annoy"``): adds ``annoy_*`` keys to ``result["models"]["cml"]``
        (:func:`recsys_metric.evaluation.evaluate_index`).
    per_user : also return ``result["per_user"][model]``: numpy arrays aligned by position,
        ``user`` (raw ids), ``n_test`` and every per-user metric (see :func:`evaluate_ranking`).
        Not JSON: :func:`json_ready` drops it.
    n_boot : > 0 adds, per model, ``"METRIC_ci": [low, high]`` (percentile bootstrap over test
        users, level ``1 - alpha``) for every per-user metric, and, when ``"cml"`` is among the
        models, ``result["paired"][model][METRIC]``: a paired bootstrap test of CML minus that
        model over the same users (:func:`recsys_metric.stats.paired_test`). 0 skips both.

    tune_trials : > 0 first tunes CML, ALS, BPR and EASE (those in ``models``) with this many
        Optuna trials each on a validation split carved from the train part
        (:func:`tune_models`; the test part is never seen), then fits each with its best
        parameters on the whole train part. ``result["tuned"][model]``: ``params``,
        ``config``, ``metric``, ``validation_value``, ``n_trials``, ``seconds``, ``trials``.
        ``tune_space`` as in :func:`tune_models`.

    task : ``"auto"`` (read from the split: :func:`recsys_metric.protocols.task_of`),
        ``"next"`` or ``"any"``; for ``"any"`` CML is trained time-blind
        (:meth:`TrainConfig.for_task`) but for the fields in ``keep``. ``result["task"]``
        says which and why, and ``["validation"]`` the shape of the validation splits that
        tuning and CML's early stopping carve from train (:func:`validation_shape`);
        ``result["cml_config"]`` is the config CML was fitted with.

    CML's per-epoch validation curve (present when ``config.patience > 0``, or from the best
    tuning trial) is returned as ``result["validation"]["cml"]``: ``{"best_epoch": n,
    "history": [per-epoch dicts]}``.
    """
    from .stats import bootstrap_ci, paired_test

    config = config or TrainConfig(seed=seed)
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    info: dict[str, Any] = {}
    if presplit is not None:
        train, test, info = presplit
        protocol = "pre-split"
    elif protocol == "temporal":
        train, test, info = temporal_split(data, 0.8 if cut is None else cut)
    else:
        train, test = split(data, protocol, seed, cut)
    result: dict[str, Any] = {
        "dataset": dataset or (data.source if data is not None else train.source),
        "protocol": protocol, "k": list(k),
        "split": {"users": train.n_users, "items": train.n_items, "train": train.nnz,
                  "test": test.nnz,
                  "test_users": int((np.diff(test.matrix.indptr) > 0).sum()), **info},
        "models": {},
    }
    result["task"], config, cml_space = task_config(task, train, test, config, keep,
                                                    (tune_space or {}).get("cml"))
    tune_space = {**(tune_space or {}), "cml": cml_space}
    if REFERENCE in parse_models(models):
        result["cml_config"] = config.to_dict()
    if result["split"]["test_users"] == 0:
        raise ValueError(f"{result['dataset']}: no user has a test item after the {protocol} "
                         f"split (train {train.nnz}, test {test.nnz} interactions): "
                         f"{NOTHING_TO_TEST.get(protocol, 'nothing to evaluate')}")
    neg = _negatives(result, train, test, negatives, sample_negatives, seed)
    if approximate and REFERENCE not in parse_models(models):
        raise ValueError(f"evaluating through the Annoy index needs {REFERENCE} among the models")
    arrays: dict[str, dict[str, np.ndarray]] = {}
    names = parse_models(models)
    shape = validation_shape(protocol, result["task"]["task"])
    result["task"]["validation"] = shape  # what tuning and early stopping carve from train
    tuned = (tune_models(train, names, tune_trials, config, seed, show_progress, tune_space,
                         shape) if tune_trials else {})
    if "cml" in tuned:
        result["cml_config"] = tuned["cml"]["config"]
    if tuned:
        result["tuned"] = {name: {"params": t["best_params"], "config": t["config"],
                                  "metric": t["metric"], "validation_value": t["best_value"],
                                  "n_trials": t["n_trials"], "seconds": t["seconds"],
                                  "trials": t["trials"]} for name, t in tuned.items()}
    for name in names:
        t0 = time.perf_counter()
        tuned_config = tuned.get(name, {}).get("config")
        model = fit_model(name, train,
                          TrainConfig.from_dict(tuned_config) if name == "cml" and tuned_config
                          else config, seed, show_progress,
                          tuned_config if name != "cml" else None,
                          index="annoy" if approximate else "exact", validation=shape)
        fit_seconds = time.perf_counter() - t0
        metrics = evaluate_ranking(model, train.matrix, test.matrix, k=k,
                                   per_user=per_user or n_boot > 0)
        arrays[name] = metrics.pop("per_user", {})
        metrics = {key: float(v) for key, v in metrics.items() if key != "users"}
        metrics["fit_seconds"] = round(fit_seconds, 3)
        if neg is not None:
            sampled = sampled_metrics(model, test.matrix, neg, k, train=train.matrix)
            result["sampled"].update({key: sampled.pop(key) for key in
                                      ("users", "negatives_per_user", "dropped_negatives")})
            metrics.update(sampled)
        if approximate and name == REFERENCE:
            metrics.update({key: v for key, v in
                            evaluate_index(model, train.matrix, test.matrix, k).items()
                            if key != "users"})
            metrics["annoy_search_k"] = int(model.index_.search_k)
            metrics["annoy_calibrated_recall@10"] = float(model.index_recall_)
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
        elif tuned.get(name, {}).get("history"):  # the best tuning trial's curve
            result.setdefault("validation", {})[name] = {
                "best_epoch": tuned[name]["best_params"].get("epochs"),
                "history": tuned[name]["history"], "source": "best tuning trial"}
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
