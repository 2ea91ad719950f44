"""Hyper-parameter search on a validation split carved from train; the test split is never read.

:func:`tune` takes the *train* part of the user's split (the caller keeps test aside), carves a
validation split from it with :func:`recsys_metric.split.validation_split`, in the shape of the
test split (each user's latest train item for leave-last-out, a random 20% for a random
holdout, a cut in time for the temporal protocol), and runs Optuna's seeded TPE sampler: every
trial fits on the carved train part and scores the carved validation part by full ranking
(:func:`evaluate_ranking`). The same number of
trials tunes CML, implicit ALS, implicit BPR and EASE, so a comparison of tuned models is fair.
EASE is closed-form (no epochs or iterations): a trial is one fit of its ``l2``.

CML's number of epochs is not sampled: each trial trains up to the top of the epochs range,
evaluating the validation split after every epoch (the :class:`Trainer` does this when given a
validation matrix), and the best epoch within the range is the trial's value and its ``epochs``.
A trial stops once the metric has not improved for :data:`PLATEAU_EPOCHS` epochs.

Optuna is imported lazily, so the package imports without it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any

from .data import Interactions
from .evaluation import evaluate_ranking
from .split import validation_split
from .train import TrainConfig, Trainer

# A parameter's spec: ("categorical", [choices]) | ("float", low, high) | ("log", low, high)
# | ("int", low, high); any other value fixes the parameter to that value.
SPACES: dict[str, dict[str, Any]] = {
    "cml": {
        "dim": ("categorical", [16, 32, 64, 128]),
        "margin": ("float", 0.25, 2.0),
        "n_negatives": ("categorical", [None, 10, 20, 50, 100]),  # None: auto (1% of catalogue)
        "lr": ("log", 0.02, 0.5),
        "epochs": ("int", 5, 60),  # best epoch of one run to the top of the range
        "clip_norm": ("categorical", [0.5, 1.0, 2.0]),
        "init_norm": ("categorical", [0.1, 1.0]),
        "recent_share": ("categorical", [0.0, 0.1, 0.2, 0.3]),
        "recent_visits": ("categorical", [2, 3, 4]),
        "recent_pull": ("categorical", [0.0, 0.3, 0.4, 0.5, 0.6]),
        "pull_decay": ("categorical", [0.3, 0.5, 0.7]),
        "transitions": ("categorical", [0, 1, 2]),
    },
    "als": {
        # up to the large dimensions of tuned iALS (Rendle et al. 2022: 192 and more on ML-1M)
        "factors": ("categorical", [32, 64, 128, 256, 512]),
        "regularization": ("log", 1e-3, 1.0),
        "alpha": ("log", 0.5, 50.0),
        "iterations": ("int", 5, 30),
        # the time order CML's recent_share uses, as a confidence on each user's latest pairs
        "recent_share": ("categorical", [0.0, 0.1, 0.2, 0.3]),
        "recent_weight": ("categorical", [2.0, 4.0]),
        # and the pull toward the latest items (ALS's best pulls are larger than CML's)
        "recent_pull": ("categorical", [0.0, 0.9, 0.95, 0.98]),
        "pull_decay": ("categorical", [0.3, 0.5, 0.7]),
        "transitions": ("categorical", [0, 1, 2]),
    },
    "bpr": {
        "factors": ("categorical", [32, 64, 128]),
        "learning_rate": ("log", 1e-3, 0.1),
        "regularization": ("log", 1e-4, 0.1),
        "iterations": ("int", 20, 200),
    },
    # best NDCG@10 at l2 100-200 on the bundled books and ml-100k validation splits, 500 on
    # ml-100k's ua split (Steck: a few hundred to 1000 on larger MovieLens / Netflix data)
    "ease": {
        "l2": ("log", 1.0, 1e4),
    },
}
# CML's loss family (losses.py), searched on request (tune/compare --tune-losses, or in a space
# override): the many-negative losses fit 5-15x slower than the triplet loss on CPU and did not
# beat it on validation (experiments/results/losses.md). A loss's options are searched only in
# the trials that pick it (_LOSS_OPTIONS).
LOSS_SPACE: dict[str, Any] = {
    "loss": ("categorical", ["triplet", "softmax", "contrastive"]),
    "distance": ("categorical", ["euclidean", "cosine"]),
    "temperature": ("log", 0.02, 1.0),
    "negative_weight": ("log", 0.1, 100.0),
}
TUNABLE = tuple(SPACES)  # popularity has nothing to tune
# Metrics that may be maximised (Coverage and Novelty are properties, not quality).
METRICS = ("HR", "NDCG", "Recall", "Precision", "MAP", "MRR", "AUC")
PLATEAU_EPOCHS = 10
_KINDS = ("categorical", "float", "log", "int")


def _is_spec(v: Any) -> bool:
    return isinstance(v, tuple | list) and len(v) >= 2 and v[0] in _KINDS


def check_model(model: str) -> str:
    name = str(model).strip().lower()
    if name not in SPACES:
        raise ValueError(f"cannot tune model {model!r}: choose from {', '.join(TUNABLE)} "
                         "(popularity has no hyper-parameters)")
    return name


def check_metric(metric: str, k: int = 10) -> str:
    """``"NDCG"`` -> ``"NDCG@k"``; ``"NDCG@20"`` and ``"MRR"`` as they are; others raise."""
    name = str(metric).strip()
    base, _, cut = name.partition("@")
    if base not in METRICS:
        raise ValueError(f"cannot tune for metric {metric!r}: choose from "
                         f"{', '.join(METRICS)} (with @K for the first five, e.g. NDCG@10)")
    if base in ("MRR", "AUC"):
        if cut:
            raise ValueError(f"metric {base} has no cut-off, got {metric!r}")
        return base
    if not cut:
        return f"{base}@{int(k)}"
    if not cut.isdigit() or int(cut) < 1:
        raise ValueError(f"metric {metric!r}: the cut-off after @ must be a positive integer")
    return f"{base}@{int(cut)}"


def search_space(model: str, space: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The default search space of ``model`` updated with ``space`` (specs or fixed values)."""
    name = check_model(model)
    out = dict(SPACES[name])
    for key, spec in (space or {}).items():
        if key not in out:
            raise ValueError(f"{name} has no tuned hyper-parameter {key!r}; "
                             f"tuned: {', '.join(out)}")
        out[key] = tuple(spec) if _is_spec(spec) else spec
    return out


# CML's options that only one loss reads: searched only when the trial picked that loss.
_LOSS_OPTIONS = {"distance": ("softmax", "contrastive"), "temperature": ("softmax",),
                 "negative_weight": ("contrastive",), "sampler": ("softmax", "contrastive"),
                 "shared_negatives": ("softmax", "contrastive")}


def _suggest(trial, space: Mapping[str, Any], skip: tuple[str, ...] = (),
             base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    params = {}
    for key, spec in space.items():
        if key in skip:
            continue
        loss = params.get("loss", (base or {}).get("loss", "triplet"))
        if key in _LOSS_OPTIONS and loss not in _LOSS_OPTIONS[key]:
            continue
        if not _is_spec(spec):
            params[key] = spec
        elif spec[0] == "categorical":
            params[key] = trial.suggest_categorical(key, list(spec[1]))
        elif spec[0] == "int":
            params[key] = trial.suggest_int(key, int(spec[1]), int(spec[2]))
        else:
            params[key] = trial.suggest_float(key, float(spec[1]), float(spec[2]),
                                              log=spec[0] == "log")
    return params


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise ValueError("tuning needs Optuna: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _base_dict(base: TrainConfig | Mapping[str, Any] | None) -> dict[str, Any]:
    if isinstance(base, TrainConfig):
        return base.to_dict()
    return dict(base or {})


def tune(data: Interactions, model: str = "cml", trials: int = 20, seed: int = 0, k: int = 10,
         metric: str = "NDCG@10", timeout: float | None = None, show_progress: bool = True,
         base: TrainConfig | Mapping[str, Any] | None = None,
         space: Mapping[str, Any] | None = None, protocol: str = "leave-last-out"
         ) -> dict[str, Any]:
    """Search ``model``'s hyper-parameters on a validation split carved from ``data``.

    Parameters
    ----------
    data : the **train** part of the user's split. Never pass the test part: the validation
        split is carved from this, in the shape of ``protocol``
        (:func:`recsys_metric.split.validation_split`: by default each user's latest
        interaction; ``"random"`` 20% of each user's items; ``"temporal"`` after the 0.8 time
        quantile), so that tuning aims at what the test split scores.
    model : ``"cml"``, ``"als"``, ``"bpr"`` or ``"ease"``.
    trials : number of Optuna trials (the same for every model keeps a comparison fair).
    seed : seeds the TPE sampler and every seeded model (all but EASE).
    k, metric : the validation metric maximised, a key of :func:`evaluate_ranking`;
        ``"NDCG"`` alone means ``f"NDCG@{k}"``.
    timeout : stop starting new trials after this many seconds (then fewer trials may run).
    show_progress : Optuna's progress bar over trials.
    base : the values of the parameters not searched: for CML a :class:`TrainConfig` (or dict of
        its fields; device, backend, batch size, seed...), for a baseline its constructor
        arguments.
    space : overrides of :data:`SPACES` for ``model``: a spec tuple (``("int", 1, 5)``,
        ``("log", 1e-3, 1.0)``, ``("float", a, b)``, ``("categorical", [...])``) changes a
        range, any other value fixes the parameter.

    Returns
    -------
    dict with ``model``, ``metric``, ``best_value`` (validation), ``best_params`` (the searched
    and fixed ones; CML's include the chosen ``epochs``), ``config`` (for CML a
    ``TrainConfig.to_dict()`` with patience 0, accepted by ``train --config``; for the baselines
    the keyword arguments of :func:`recsys_metric.baselines.make_baseline` without ``seed``),
    ``trials`` (one dict per trial: ``number``, ``value``, ``params``, ``seconds``, ``state``),
    ``n_trials``, ``seconds``, ``seed``, ``validation`` (sizes of the carved split) and, for
    CML, ``history``: the best trial's per-epoch validation logs.
    """
    name = check_model(model)
    metric = check_metric(metric, k)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"trials must be an integer >= 1, got {trials!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    params_space = search_space(name, space)
    base_values = _base_dict(base)
    if name == "cml":
        base_values["seed"] = base_values.get("seed", seed)
        TrainConfig.from_dict({**base_values, "patience": 0})  # fail before any trial
    optuna = _import_optuna()

    fit, valid = validation_split(data, protocol, seed)
    if valid.nnz == 0:
        raise ValueError(f"{data.source}: cannot carve a {protocol} validation split from "
                         "train: no user has two or more train interactions")
    ks = sorted({int(k), *([int(metric.split("@")[1])] if "@" in metric else [])})
    histories: dict[int, list[dict]] = {}

    def objective(trial) -> float:
        t0 = time.perf_counter()
        if name == "cml":
            value, params, history = _cml_trial(trial, params_space, base_values, fit, valid,
                                                metric)
            histories[trial.number] = history
        else:
            params = _suggest(trial, params_space)
            from .baselines import make_baseline, takes_seed

            seeded = {"seed": seed} if takes_seed(name) else {}  # EASE is deterministic
            fitted = make_baseline(name, **{**base_values, **params, **seeded}).fit(fit)
            value = float(evaluate_ranking(fitted, fit.matrix, valid.matrix, k=ks,
                                           auc=metric == "AUC")[metric])
        trial.set_user_attr("params", params)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        return value

    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    t0 = time.perf_counter()
    # optuna's bar is tqdm's, always drawn when asked: on a terminal only, never into a log file
    study.optimize(objective, n_trials=trials, timeout=timeout,
                   show_progress_bar=show_progress and sys.stderr.isatty())
    seconds = time.perf_counter() - t0
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise ValueError(f"no {name} trial completed (timeout {timeout} s too short?)")
    best = max(done, key=lambda t: (t.value if not math.isnan(t.value) else -math.inf,
                                    -t.number))
    best_params = dict(best.user_attrs["params"])
    if name == "cml":
        config = TrainConfig.from_dict({**base_values, **best_params, "patience": 0}).to_dict()
    else:
        config = {**{key: v for key, v in base_values.items() if key != "seed"}, **best_params}
    result: dict[str, Any] = {
        "model": name, "metric": metric, "best_value": float(best.value),
        "best_params": best_params, "config": config,
        "trials": [{"number": t.number, "value": None if t.value is None else float(t.value),
                    "params": t.user_attrs.get("params", dict(t.params)),
                    "seconds": round(float(t.user_attrs.get("seconds", 0.0)), 3),
                    "state": t.state.name} for t in study.trials],
        "n_trials": len(done), "seconds": round(seconds, 3), "seed": int(seed),
        "validation": {"split": f"{protocol}, carved from train (validation_split)",
                       "protocol": protocol, "fit": fit.nnz, "valid": valid.nnz,
                       "valid_users": int((valid.matrix.getnnz(axis=1) > 0).sum())},
    }
    if name == "cml":
        result["history"] = histories.get(best.number, [])
    return result


def _cml_trial(trial, space: Mapping[str, Any], base: dict, fit: Interactions,
               valid: Interactions, metric: str) -> tuple[float, dict, list[dict]]:
    """Train up to the top of the epochs range once; the best epoch in range is the value."""
    params = _suggest(trial, space, skip=("epochs",), base=base)
    epochs = space["epochs"]
    if _is_spec(epochs):
        if epochs[0] != "int":
            raise ValueError(f"CML's epochs range must be ('int', low, high), got {epochs!r}")
        low, high = int(epochs[1]), int(epochs[2])
    else:  # fixed: train that many epochs and score the last one
        low = high = int(epochs)
    if not 1 <= low <= high:
        raise ValueError(f"CML's epochs range must satisfy 1 <= low <= high, got {epochs!r}")
    config = TrainConfig.from_dict({**base, **params, "epochs": high, "patience": 0})
    key = f"val_{metric}"
    state = {"best": -math.inf, "epoch": 0}

    def plateau(epoch: int, logs: dict) -> bool:
        if logs[key] > state["best"]:
            state["best"], state["epoch"] = logs[key], epoch
        return epoch >= low and epoch - state["epoch"] >= PLATEAU_EPOCHS

    history = Trainer(config, [plateau], show_progress=False, valid_metrics=[metric]).fit(
        fit, valid).history
    in_range = [h for h in history if h["epoch"] >= low]
    chosen = max(in_range, key=lambda h: (h[key], -h["epoch"]))  # ties: fewer epochs
    params["epochs"] = int(chosen["epoch"])
    history = [{k: float(v) for k, v in h.items()} for h in history]
    return float(chosen[key]), params, history
