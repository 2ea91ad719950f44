"""The training loop: user and item tables, a loss of their distances, Adagrad, unit-ball clip.

The losses (:mod:`.losses`: triplet with the hardest of U candidates and the WARP weight,
contrastive with many negatives, sampled softmax) are each one rule of the distances that every
loop follows:

- the torch loop, on any device: per batch the negatives are drawn under ``no_grad`` (the fused
  Triton sampler on CUDA for the triplet loss), the rule gives the coefficients and autograd the
  distances' gradients (:func:`.losses.surrogate`), a sparse Adagrad step updates the rows;
- the fused Triton loop (backend "triton": CUDA, or the interpreter), the torch loop's epoch with
  each step two kernels (sampler, rule, gradients, Adagrad, clip; :mod:`.sampling.triton_train`)
  and no autograd, for element-wise Adagrad and uniform per-pair negatives;
- the fused CPU loop (numba: :mod:`.sampling.cpu_train` for the triplet loss,
  :mod:`.sampling.cpu_many` for the others): per batch, the triplet negatives are chosen against
  the batch-start tables, then the pairs are applied one by one, in ``lanes`` parallel streams
  over disjoint users and, at each batch, disjoint random item strata (the negatives from the
  positive's stratum); the same seed and lanes give the same model on any thread count. Used on
  CPU for Adagrad (element-wise or row-wise) without the covariance term.

At batch size 1 the torch and CPU loops make the same updates (``tests/test_loss_equivalence.py``).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from . import sampling, time_order
from .checkpoint import Checkpoint, fingerprint, restore, state_of
from .data import Interactions
from .device import check_device_name, resolve_device
from .distributed import Group, ItemMerge
from .losses import DISTANCES, LOSSES, CovarianceLoss, loss_terms, rank_weight, surrogate
from .model import CML, pairwise_squared_distance, unit_rows

OPTIMIZERS = ("adagrad", "adagrad_row", "adam", "sgd")
SAMPLERS = ("uniform", "popularity")
# torch's sparse Adagrad warns on every construction of its internal sparse tensors.
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


@dataclass
class TrainConfig:
    """Hyper-parameters of CML training (defaults chosen on validation splits carved from train,
    see ``experiments/results/defaults.md``)."""

    # 64: with the context rows the item space does the predicting and uses the room
    # (ml-latest-small +14% over 32, books and ml-100k level; defaults.md section 11)
    dim: int = 64
    margin: float = 1.5
    # the loss of the distances (losses.py): "triplet" (the hardest of U candidates, WARP
    # weight), "contrastive" (CCL: the positive pulled in, the mean violation of N negatives
    # pushed out, times negative_weight), "softmax" (sampled softmax at temperature, log-Q
    # corrected)
    loss: str = "triplet"
    distance: str = "euclidean"  # or "cosine" (1 - cos; contrastive and softmax)
    # triplet: U candidates drawn per (user, positive) pair, the hardest is used; None = auto: 1%
    # of the catalogue within [10, 100], so the negative is about as hard on 500 items as on
    # 10,000. Contrastive and softmax: N negatives per pair; None = 100.
    n_negatives: int | None = None
    sampler: str = "uniform"  # or "popularity": negatives drawn in proportion to their pairs
    # one set of N negatives per batch, shared by its pairs (in-batch negatives: hundreds per
    # pair for the cost of N rows per batch); contrastive and softmax
    shared_negatives: bool = False
    negative_weight: float = 1.0  # contrastive: weight of the negatives' mean violation
    temperature: float = 0.1  # softmax
    epochs: int = 25
    # pairs whose negatives are drawn against the same tables (torch loop: one step each)
    batch_size: int = 4096
    lr: float = 0.1
    optimizer: str = "adagrad"
    rank_weight: bool = True  # WARP weight log(1 + floor(n_items * violators / U))
    clip_norm: float = 1.0  # rows live in this ball; <= 0 disables clipping
    init_norm: float = 0.1  # expected norm of the rows at initialisation
    cov_weight: float = 0.0  # CML's covariance regulariser (torch loop only)
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"  # sampler / loop: auto | torch | triton | cpu
    patience: int = 0  # > 0: early stopping on validation NDCG@10, then refit on all of train
    # fused CPU loop only: parallel streams over disjoint users and item strata (see cpu_train;
    # 2 as good as 1 on validation, experiments/results/cpu_training.md). The model depends on
    # lanes, never on the thread count; one lane per core is fastest.
    lanes: int = 2
    # the model is the mean of the tables after each of the last epochs (Polyak averaging of
    # the SGD iterates): +1-5% on every validation split, experiments/results/defaults.md.
    # 0: the last epoch's tables. Validation scores (and early stopping) see that mean too.
    average_last: int = 5
    # each user's latest interactions (this share of their history, by time) are visited
    # recent_visits times per epoch: the next item follows the recent ones (validation NDCG@10
    # +5% books, +14% ml-100k, +21% ml-latest-small, experiments/results/defaults.md section 6).
    # Needs the time order: Trainer.fit given Interactions (a bare matrix: every pair once).
    recent_share: float = 0.1  # 0: off
    recent_visits: int = 3  # 1: off
    # after training, each user's point moves toward their latest items: u <- (1 - recent_pull)
    # u + recent_pull c, c the mean of their history weighted pull_decay**r (r = 0 the newest).
    # Validation NDCG@10 +9% books, +26% ml-100k, +18% ml-latest-small (defaults.md section 9).
    # Needs timestamps: Trainer.fit given Interactions that have them (otherwise no pull).
    recent_pull: float = 0.5  # 0: off
    pull_decay: float = 0.5
    # each item also has a context row in the users' table, trained like a user whose liked
    # items are those that followed it within this many steps of someone's history: shapes
    # the item space for the pull (validation NDCG@10 +3% books, +7% ml-100k, +3%
    # ml-latest-small, defaults.md section 10). Needs timestamps, as the pull. 0: off.
    transitions: int = 1

    def validate(self) -> TrainConfig:
        """Check every field's type and range (``ValueError`` naming the field); ints given for
        float fields become floats. The device is checked by name only: a model trained on a GPU
        loads anywhere, and :class:`Trainer` checks that the device exists when it trains."""
        for name, (kind, low, high, what) in _FIELDS.items():
            v = getattr(self, name)
            if v is None and name == "n_negatives":  # automatic
                continue
            if kind is bool:
                if not isinstance(v, bool | np.bool_):
                    raise ValueError(f"{name} must be true or false, got {v!r}")
            elif kind is str:
                if not isinstance(v, str):
                    raise ValueError(f"{name} must be a string, got {v!r}")
            elif isinstance(v, bool | np.bool_) or not isinstance(v, _NUMBER[kind]):
                raise ValueError(f"{name} must be {_NOUN[kind]} {what}, got {v!r}")
            elif not (math.isfinite(v) and low <= v <= high) or (name in _POSITIVE and v <= 0):
                raise ValueError(f"{name} must be {_NOUN[kind]} {what}, got {v!r}")
            if kind is float:
                setattr(self, name, float(v))
        for name, allowed in (("loss", LOSSES), ("distance", DISTANCES),
                              ("sampler", SAMPLERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if self.loss == "triplet" and (self.distance, self.sampler, self.shared_negatives) != (
                "euclidean", "uniform", False):
            raise ValueError("the triplet loss draws its U candidates uniformly per pair and keeps "
                             "the hardest by Euclidean distance: distance='cosine', "
                             "sampler='popularity' and shared_negatives need loss='contrastive' "
                             "or 'softmax'")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        sampling.resolve_backend(self.backend, torch.device("cpu"))  # raises on unknown names
        check_device_name(self.device)
        return self

    def negatives_for(self, n_items: int) -> int:
        """The number of candidates U used on a catalogue of ``n_items``."""
        if self.n_negatives is not None:
            return self.n_negatives
        if self.loss != "triplet":
            return 100
        return int(min(100, max(10, round(n_items / 100))))

    def to_dict(self) -> dict:
        return asdict(self)

    def for_task(self, task: str, keep: Iterable[str] = ()) -> TrainConfig:
        """This config for a task: ``"next"`` (each user's next item, what the defaults were
        chosen for) keeps it; ``"any"`` (items from anywhere in a history, as a random holdout
        hides them) turns the time order off (:data:`TIME_BLIND`) but for the fields in
        ``keep`` (those a user set explicitly)."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if task == "next":
            return self
        return TrainConfig.from_dict({**self.to_dict(), **{k: v for k, v in TIME_BLIND.items()
                                                          if k not in set(keep)}})

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A validated config from a dict (a JSON file's object); ``ValueError`` naming the key
        that is unknown or of the wrong type or range."""
        if not isinstance(d, dict):
            raise ValueError(f"expected an object of TrainConfig fields, got {type(d).__name__}")
        d = {k: v for k, v in d.items() if k != "hogwild"}  # retired option of saved models
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(map(str, unknown)))}")
        return cls(**d).validate()


_INF = math.inf
# field: (type, lowest, highest, the range in words); _POSITIVE ones must be > 0
_FIELDS = {
    "dim": (int, 1, 1 << 16, ">= 1"), "margin": (float, 0, _INF, "> 0 and finite"),
    "n_negatives": (int, 1, 1 << 20, ">= 1 (or null: automatic)"),
    "epochs": (int, 1, 1 << 20, ">= 1"), "batch_size": (int, 1, 1 << 31, ">= 1"),
    "lr": (float, 0, _INF, "> 0 and finite"), "optimizer": (str, 0, 0, ""),
    "rank_weight": (bool, 0, 0, ""),
    "clip_norm": (float, -_INF, _INF, "(finite; <= 0 turns clipping off)"),
    "init_norm": (float, 0, _INF, "> 0 and finite"),
    "cov_weight": (float, 0, _INF, ">= 0 and finite"),
    "seed": (int, 0, (1 << 32) - 1, "in [0, 2**32)"), "device": (str, 0, 0, ""),
    "backend": (str, 0, 0, ""), "patience": (int, 0, 1 << 20, ">= 0"),
    "lanes": (int, 1, 1024, "in [1, 1024]"), "average_last": (int, 0, 1 << 20, ">= 0"),
    "recent_share": (float, 0, 1, "in [0, 1]"), "recent_visits": (int, 1, 1 << 10, ">= 1"),
    "recent_pull": (float, 0, 1, "in [0, 1]"), "pull_decay": (float, 0, 1, "in [0, 1]"),
    "transitions": (int, 0, 1 << 10, ">= 0"), "loss": (str, 0, 0, ""),
    "distance": (str, 0, 0, ""), "sampler": (str, 0, 0, ""), "shared_negatives": (bool, 0, 0, ""),
    "negative_weight": (float, 0, _INF, ">= 0 and finite"),
    "temperature": (float, 0, _INF, "> 0 and finite"),
}
_POSITIVE = {"margin", "lr", "init_norm", "temperature"}
_NUMBER = {int: (int, np.integer), float: (int, float, np.integer, np.floating)}
_NOUN = {int: "an integer", float: "a number"}


# TrainConfig fields that switch off every use of the time order (the recency visits, the
# context rows, the pull): for a task that is not the next item, such as a random holdout,
# where they cost ml-100k 35% of its NDCG@10 (README, "Measured comparison").
TIME_BLIND = {"recent_share": 0.0, "transitions": 0, "recent_pull": 0.0}
# What the test holds: "next", each user's next item (leave-last-out); "any", items from anywhere
# in a history (a random holdout) or several future ones (a cut in time), where the time order
# loses 9-37% of validation NDCG@10 or ties (experiments/results/task_defaults.md).
TASKS = ("next", "any")


class TimeOrderWarning(UserWarning):
    """The config uses the log's time order, but the interactions have no timestamps."""


class ConfigWarning(UserWarning):
    """A setting that cannot work on this data was changed to one that can."""


# The fused CPU loop draws a lane's negatives from its stratum of about n_items / lanes items: a
# stratum of a few items often holds only the user's positives, and the pairs train nothing.
MIN_STRATUM_ITEMS = 8


def fused_lanes(lanes: int, n_items: int) -> int:
    """``lanes``, lowered (with a :class:`ConfigWarning`) so each stratum holds at least
    :data:`MIN_STRATUM_ITEMS` items."""
    fit = max(1, n_items // MIN_STRATUM_ITEMS)
    if lanes > fit:
        warnings.warn(f"lanes={lanes} would split {n_items} items into strata of fewer than "
                      f"{MIN_STRATUM_ITEMS}, too few to hold a negative; training with "
                      f"lanes={fit}", ConfigWarning, stacklevel=3)
        return fit
    return lanes


@dataclass
class TrainResult:
    user_embeddings: np.ndarray
    item_embeddings: np.ndarray
    history: list[dict] = field(default_factory=list)  # one dict per epoch
    best_epoch: int | None = None
    seconds: float = 0.0
    loop: str = ""
    # the Adagrad accumulators of the users' and items' rows at the end ([n, dim] or [n, 1]):
    # a warm start continues with them, its steps as small as training's last (None: another
    # optimiser)
    accumulators: tuple[np.ndarray, np.ndarray] | None = None

    def score_users(self, user_idx: np.ndarray) -> np.ndarray:
        """Minus squared distances to every item, so a result can be evaluated directly."""
        users = torch.as_tensor(self.user_embeddings[np.asarray(user_idx)])
        return (-pairwise_squared_distance(users, torch.as_tensor(self.item_embeddings))).numpy()


class RowAdagrad(torch.optim.Optimizer):
    """Row-wise Adagrad for sparse embedding gradients: one accumulator per row, which gains the
    mean over the row of the squared (summed) gradient; step ``lr * g / (sqrt(acc) + eps)``.

    The fused CPU loop's ``adagrad_row`` (``[n, 1]`` accumulators in
    :func:`recsys_metric.sampling.cpu_train.train_epoch`) applies the same rule per triplet.
    """

    def __init__(self, params, lr: float = 0.1, eps: float = 1e-10) -> None:
        super().__init__(params, {"lr": lr, "eps": eps})
        for group in self.param_groups:  # created now, as torch's Adagrad does
            for p in group["params"]:
                self.state[p]["sum"] = torch.zeros(p.shape[0], 1, dtype=p.dtype,
                                                   device=p.device)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                acc = self.state[p]["sum"]
                if p.grad.is_sparse:
                    grad = p.grad.coalesce()
                    rows, g = grad.indices()[0], grad.values()
                    a = acc[rows] + g.pow(2).mean(1, keepdim=True)
                    acc[rows] = a
                    p.index_add_(0, rows, -group["lr"] * g / (a.sqrt() + group["eps"]))
                else:
                    g = p.grad
                    acc.add_(g.pow(2).mean(1, keepdim=True))
                    p.add_(-group["lr"] * g / (acc.sqrt() + group["eps"]))


class _Scorer:
    """Adapter for :func:`recsys_metric.evaluation.evaluate_ranking`."""

    def __init__(self, tables: tuple[np.ndarray, np.ndarray], device: torch.device) -> None:
        self.users, self.items = (torch.as_tensor(t, device=device) for t in tables)

    def score_users(self, user_idx: np.ndarray) -> np.ndarray:
        users = self.users[torch.as_tensor(user_idx, device=self.users.device)]
        return (-pairwise_squared_distance(users, self.items)).cpu().numpy()


Callback = Callable[[int, dict], bool | None]


def _no_pull(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    return users


class _TailMean:
    """Polyak averaging of the SGD iterates: the mean of the tables after the last ``k`` epochs
    passed to :meth:`add` (it stays in the unit ball).

    ``sliding`` (validation scores the mean after every epoch, so the oldest epoch leaves the
    window) keeps a copy of the tables per epoch; otherwise only the last ``k`` epochs are ever
    added, and a float64 running sum is kept instead: two float32 rows per table row, not
    ``k`` copies and their mean's temporaries (0.65 GB at 25 M interactions), and the same mean
    to the bit (the same additions in the same order).
    """

    def __init__(self, model: CML, k: int, sliding: bool = True) -> None:
        self.model = model
        self.tables: deque[list[torch.Tensor]] = deque(maxlen=max(k, 1))
        self.sliding = sliding
        self.sum: list[torch.Tensor] | None = None
        self.count = 0

    def _weights(self) -> list[torch.Tensor]:
        return [self.model.users.weight.detach(), self.model.items.weight.detach()]

    def add(self, tables: list[torch.Tensor] | None = None) -> None:
        """Add the model's tables (or ``tables``, a checkpoint's)."""
        tables = self._weights() if tables is None else tables
        if self.sliding:
            self.tables.append([t.clone() for t in tables])
        elif self.sum is None:
            self.sum, self.count = [t.double() for t in tables], 1
        else:
            for s, t in zip(self.sum, tables, strict=True):
                s.add_(t)
            self.count += 1

    def __len__(self) -> int:
        return len(self.tables) if self.sliding else self.count

    def state(self) -> dict:
        return {"tables": list(self.tables), "sum": self.sum, "count": self.count}

    def load(self, state: dict | list) -> None:
        if isinstance(state, list):  # a checkpoint written before the running sum
            for tables in state:
                self.add(tables)
        elif self.sliding:
            self.tables.extend(state["tables"])
        else:
            self.sum, self.count = state["sum"], state["count"]

    def _mean(self) -> list[torch.Tensor]:  # of the copies
        return [sum(t[i].double() for t in self.tables).div(len(self.tables)).float()
                for i in range(2)]

    def apply(self) -> None:
        """Replace the model's tables by the mean (nothing to do for fewer than two)."""
        if len(self) < 2:
            return
        with torch.no_grad():
            if self.sliding:
                for w, mean in zip(self._weights(), self._mean(), strict=True):
                    w.copy_(mean)
                return
            for w, s in zip(self._weights(), self.sum, strict=True):
                for lo in range(0, len(s), 1 << 16):  # a float64 quotient of 32 MB at a time
                    w[lo:lo + (1 << 16)].copy_(s[lo:lo + (1 << 16)] / self.count)

    @contextmanager
    def applied(self):
        """The mean in the model's tables inside the block, the current tables after it."""
        if len(self) < 2:
            yield
            return
        current = [w.clone() for w in self._weights()]
        self.apply()
        try:
            yield
        finally:
            with torch.no_grad():
                for w, c in zip(self._weights(), current, strict=True):
                    w.copy_(c)


class Trainer:
    """Fits a :class:`CML` model to :class:`Interactions` (or a bare users x items CSR matrix of
    positives, which has no time order: no recency visits, context rows or pull).

    ``callbacks`` are called after each epoch as ``cb(epoch, logs)``; returning True stops.
    With ``valid``, the logs hold ``val_NDCG@10`` and ``val_HR@10`` (early stopping uses the
    former), plus ``val_<key>`` for each :func:`~recsys_metric.evaluation.evaluate_ranking` key in
    ``valid_metrics`` (e.g. ``"Recall@20"``, ``"MRR"``), each scored on the model training would
    return if it stopped there (the mean of the last ``average_last`` epochs' tables, its users
    pulled toward their latest items).
    """

    def __init__(self, config: TrainConfig | None = None, callbacks: Sequence[Callback] = (),
                 show_progress: bool = True, valid_metrics: Sequence[str] = (),
                 group: Group | None = None) -> None:
        self.config = (config or TrainConfig()).validate()
        self.group = group or Group()  # one process unless torchrun started several
        self.lead = self.group.rank == 0  # validates, checkpoints, reports, calls callbacks
        self.callbacks = list(callbacks) if self.lead else []
        self.show_progress = show_progress and self.lead
        self.valid_metrics = list(valid_metrics)

    def fit(self, train: Interactions | sp.csr_matrix,
            valid: Interactions | sp.csr_matrix | None = None,
            init: tuple[np.ndarray, ...] | None = None,
            checkpoint: str | Path | None = None) -> TrainResult:
        """Train on ``train``. From :class:`Interactions`: each user's ``recent_share`` latest
        pairs visited ``recent_visits`` times per epoch (by file order without timestamps); with
        timestamps also the items' context rows (``transitions``) and, after training, the pull
        of each user toward their latest items (``recent_pull``). A bare matrix: every pair
        once, nothing else.

        ``init``: ``(user_rows, item_rows)`` to start from (a warm start), one row per user and
        item of ``train``; rows of NaN (new ids) start as a cold fit's do. Optionally also
        ``(user_acc, item_acc)``, the Adagrad accumulators those rows ended training with
        (:attr:`TrainResult.accumulators`; NaN rows start at 0): without them the first steps
        are as large as a cold fit's, and undo much of what the rows had learnt.
        ``checkpoint``: a file written atomically after every epoch (:mod:`.checkpoint`); a fit
        that finds one of the same config and data resumes after its last epoch, and ends with
        the tables the uninterrupted fit would have."""
        cfg = self.config
        again = None  # entries visited again in each epoch, once per extra visit
        pull = _no_pull
        rows = None  # the users' rows, then (with timestamps) the items' context rows
        if isinstance(train, Interactions):
            revisit = cfg.recent_share > 0 and cfg.recent_visits > 1
            order = time_order.build(train, cfg.recent_share if revisit else 0.0,
                                     cfg.transitions, cfg.pull_decay)
            if revisit:  # each row's latest entries, visited again
                again = np.repeat(np.flatnonzero(order.latest), cfg.recent_visits - 1)
            if cfg.recent_pull > 0 and order.pull_weights is not None:
                def pull(users: np.ndarray, items: np.ndarray) -> np.ndarray:
                    return order.pull(users, items, cfg.recent_pull)
            rows = order.rows
            train = train.matrix
        if isinstance(valid, Interactions):
            valid = valid.matrix
        n_users, n_items = train.shape
        cosine = cfg.distance == "cosine"

        def served(model: CML) -> tuple[np.ndarray, np.ndarray]:
            """The tables as served: unit rows for the cosine distance (on which the squared
            Euclidean distance ranks as the cosine does), the users pulled."""
            users = model.users.weight[:n_users].detach().cpu().numpy().copy()
            items = model.items.weight.detach().cpu().numpy().copy()
            if cosine:
                users, items = unit_rows(users), unit_rows(items)
            return pull(users, items), items

        sampling.reference.check_catalogue(n_items)
        if train.nnz == 0:
            raise ValueError("no training interactions")
        if rows is None:  # a bare matrix
            rows = train = train.tocsr()
            rows.sort_indices()
        self._again = again
        # this rank's rows of the users' table (all of them on one process), by pairs per row
        pairs_per_row = np.diff(rows.indptr)
        if again is not None:  # the row of entry e: the last indptr <= e
            pairs_per_row = pairs_per_row + np.bincount(
                np.searchsorted(rows.indptr, again, side="right") - 1, minlength=rows.shape[0])
        self._rows = self.group.row_range(pairs_per_row)
        self.n_pairs = int(pairs_per_row[slice(*self._rows)].sum())
        dev = resolve_device(cfg.device)
        self.n_negatives = cfg.negatives_for(n_items)
        gen = torch.Generator().manual_seed(cfg.seed)
        model = CML(rows.shape[0], n_items, cfg.dim, cfg.clip_norm, gen, cfg.init_norm,
                    cfg.distance)
        if init is not None:
            _warm_start(model, *init[:2])
        model = model.to(dev)
        backend = sampling.resolve_backend(cfg.backend, dev)
        adagrad = cfg.optimizer in ("adagrad", "adagrad_row") and cfg.cov_weight == 0
        if backend == "cpu" and adagrad:
            loop, build = "fused-cpu", self._fused_cpu_epoch
        elif (backend == "triton" and adagrad and cfg.optimizer == "adagrad"
              and cfg.sampler == "uniform" and not cfg.shared_negatives):
            loop, build = "fused-triton", self._fused_triton_epoch
        else:
            loop, build = f"torch+{backend}", self._torch_epoch
        epoch_fn, loop_state = build(model, rows, backend)
        accumulators = _accumulators(model, loop_state)
        if init is not None and len(init) == 4 and accumulators is not None:
            for acc, given in zip(accumulators, init[2:], strict=True):
                _copy_rows(acc, given)
        user_tables = [model.users.weight.data] + ([] if accumulators is None
                                                   else [accumulators[0]])

        result = TrainResult(np.empty(0), np.empty(0), loop=loop)
        best, best_state, waited = -1.0, None, 0
        validating = valid is not None and valid.nnz
        tail = _TailMean(model, cfg.average_last, sliding=bool(validating))
        start, stopped = 0, False
        ckpt = None
        if checkpoint is not None:
            g = self.group  # the ranks' partition and merges make another run of another job
            job = [] if g.world == 1 else [g.world, g.syncs, g.mode]
            ckpt = Checkpoint(checkpoint, fingerprint(
                cfg.to_dict(), rows, [None if valid is None else valid.nnz, init is not None,
                                      *job]))
            saved = ckpt.load()
            if saved is not None:  # resume after the saved epoch
                model.load_state_dict(saved["model"])
                restore(loop_state, saved["loop"])
                tail.load(saved["tail"])
                best, waited, best_state = saved["best"], saved["waited"], saved["best_state"]
                result.best_epoch, result.history = saved["best_epoch"], saved["history"]
                start, stopped = saved["epoch"], saved["stopped"]
                if self.show_progress:
                    print(f"recsys-metric: resuming from {checkpoint} after epoch {start}",
                          file=sys.stderr)
        t0 = time.perf_counter()
        # disable=None: a bar on a terminal only, never 6 KB of carriage returns in a log file
        bar = tqdm(range(start, cfg.epochs if not stopped else start), desc="train",
                   unit="epoch", initial=start, total=cfg.epochs,
                   disable=None if self.show_progress else True)
        for epoch in bar:
            t = time.perf_counter()
            self.merge.reset()  # the ranks' common item rows (they may have been restored)
            loss, active = epoch_fn(epoch)
            self.group.share_rows(user_tables, *self._rows)  # every rank: the whole model
            secs = time.perf_counter() - t
            logs = {"epoch": epoch + 1, "loss": loss, "active": active, "seconds": secs,
                    "triplets_per_s": self.n_pairs / max(secs, 1e-9)}
            if validating or epoch >= cfg.epochs - cfg.average_last:
                tail.add()
            if validating and self.lead:  # the model as it would be if training stopped here
                from .evaluation import evaluate_ranking
                ks = {10, *(int(key.split("@")[1]) for key in self.valid_metrics if "@" in key)}
                with tail.applied():
                    m = evaluate_ranking(_Scorer(served(model), dev), train, valid,
                                         k=sorted(ks), auc="AUC" in self.valid_metrics)
                    if m["NDCG@10"] > best:
                        best, waited, result.best_epoch = m["NDCG@10"], 0, epoch + 1
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    else:
                        waited += 1
                logs["val_NDCG@10"], logs["val_HR@10"] = m["NDCG@10"], m["HR@10"]
                logs.update({f"val_{key}": float(m[key]) for key in self.valid_metrics})
            result.history.append(logs)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()
                             if k in ("loss", "triplets_per_s", "val_NDCG@10")})
            stop = any(cb(epoch + 1, logs) for cb in self.callbacks)
            stop = bool(self.group.agree(stop or bool(cfg.patience and waited >= cfg.patience)))
            if ckpt is not None and self.lead:
                ckpt.save({"epoch": epoch + 1, "stopped": stop, "model": model.state_dict(),
                           "loop": state_of(loop_state), "tail": tail.state(),
                           "best": best, "waited": waited, "best_state": best_state,
                           "best_epoch": result.best_epoch, "history": result.history})
            if stop:
                break
        result.best_epoch = int(self.group.agree(result.best_epoch or 0)) or None
        if cfg.patience and best_state is not None:
            model.load_state_dict(best_state)
        else:
            tail.apply()
        result.seconds = time.perf_counter() - t0
        result.user_embeddings, result.item_embeddings = served(model)
        if accumulators is not None:
            result.accumulators = tuple(torch.as_tensor(a)[:n].detach().cpu().numpy().copy()
                                        for a, n in zip(accumulators, (n_users, n_items),
                                                        strict=True))
        return result

    # -- the two loops ---------------------------------------------------------------------------

    def _pairs(self, train: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's (user, item) pairs: every positive, then the latest ones again; of this
        rank's rows only."""
        users = np.repeat(np.arange(train.shape[0], dtype=np.int32), np.diff(train.indptr))
        items = train.indices.astype(np.int32)
        if self._again is not None:
            users = np.concatenate([users, users[self._again]])
            items = np.concatenate([items, items[self._again]])
        lo, hi = self._rows
        if (lo, hi) != (0, train.shape[0]):
            mine = (users >= lo) & (users < hi)
            users, items = users[mine], items[mine]
        return users, items

    def _permutation(self, nnz: int, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.config.seed, epoch)).permutation(nnz)

    def _fused_cpu_epoch(self, model: CML, train: sp.csr_matrix, backend: str):
        from .sampling import cpu_many, cpu_train
        from .warmup import compile_notice

        cfg = self.config
        compile_notice(cpu_train._train_kernel if cfg.loss == "triplet"
                       else cpu_many._many_kernel)
        # numpy views share memory with the torch tables: the kernel updates them in place.
        user_emb, item_emb = model.users.weight.data.numpy(), model.items.weight.data.numpy()
        pairs = cpu_train.prepare_pairs(train.indptr, train.indices, *self._pairs(train),
                                        user_emb.shape[0], item_emb.shape[0])  # once per fit
        rowwise = cfg.optimizer == "adagrad_row"  # [n, 1] accumulators
        user_acc = cpu_train.adagrad_accumulator(user_emb, rowwise)
        item_acc = cpu_train.adagrad_accumulator(item_emb, rowwise)

        lanes = fused_lanes(cfg.lanes, item_emb.shape[0])
        self.merge = ItemMerge(self.group, item_emb, item_acc, cfg.clip_norm)

        def run(epoch: int) -> tuple[float, int]:  # the kernel draws its random blocks itself
            common = dict(lr=cfg.lr, clip_norm=cfg.clip_norm, seed=cfg.seed, epoch=epoch,
                          lanes=lanes, block_size=cfg.batch_size, shuffle=True,
                          syncs=self.group.syncs, sync=self.merge)
            if cfg.loss == "triplet":
                loss_sum, active = cpu_train.run_epoch(
                    pairs, user_emb, item_emb, user_acc, item_acc, n_candidates=self.n_negatives,
                    margin=cfg.margin, rank_weight=cfg.rank_weight, **common)
            else:
                loss_sum, active = cpu_many.run_epoch(
                    pairs, user_emb, item_emb, user_acc, item_acc, loss=cfg.loss,
                    n_negatives=self.n_negatives, distance=cfg.distance, sampler=cfg.sampler,
                    shared=cfg.shared_negatives, margin=cfg.margin,
                    negative_weight=cfg.negative_weight, temperature=cfg.temperature, **common)
            return loss_sum / max(len(pairs), 1), int(active)

        return run, {"user_acc": user_acc, "item_acc": item_acc}

    def _fused_triton_epoch(self, model: CML, train: sp.csr_matrix, backend: str):
        """The torch loop's epoch with its step fused in two Triton kernels (sampler, loss rule,
        gradients, Adagrad, clip; :mod:`.sampling.triton_train`): same pairs, order and draws."""
        from .sampling import triton_train

        cfg = self.config
        dev = model.users.weight.device
        pair_users, pair_items = (torch.as_tensor(a, device=dev) for a in self._pairs(train))
        user_w, item_w = model.users.weight.data, model.items.weight.data
        user_acc, item_acc = torch.zeros_like(user_w), torch.zeros_like(item_w)
        fused = triton_train.FusedEpoch(
            torch.as_tensor(train.indptr.astype(np.int64), device=dev),
            torch.as_tensor(train.indices.astype(np.int32), device=dev), pair_users, pair_items,
            user_w, item_w, user_acc, item_acc, batch_size=cfg.batch_size, loss=cfg.loss,
            distance=cfg.distance, n_negatives=self.n_negatives, margin=cfg.margin,
            rank_weight=cfg.rank_weight, negative_weight=cfg.negative_weight,
            temperature=cfg.temperature, lr=cfg.lr, clip_norm=cfg.clip_norm, seed=cfg.seed)
        self.merge = ItemMerge(self.group, item_w, item_acc, cfg.clip_norm)

        def run(epoch: int) -> tuple[float, int]:
            perm = torch.as_tensor(self._permutation(len(pair_users), epoch), device=dev)
            return fused(epoch, perm, self.merge, self.group.syncs)

        return run, {"user_acc": user_acc, "item_acc": item_acc}

    def _torch_epoch(self, model: CML, train: sp.csr_matrix, backend: str):
        cfg = self.config
        dev = model.users.weight.device
        pair_users, pair_items = (torch.as_tensor(a, device=dev) for a in self._pairs(train))
        indptr = torch.as_tensor(train.indptr.astype(np.int64), device=dev)
        indices = torch.as_tensor(train.indices.astype(np.int32), device=dev)
        n_items = train.shape[1]
        draw = _TorchNegatives(cfg, train, pair_items, self.n_negatives, backend)
        opt = make_optimizer(model, cfg)
        acc = _accumulators(model, {"optimizer": opt})
        self.merge = ItemMerge(self.group, model.items.weight.data,
                               None if acc is None else acc[1], cfg.clip_norm)
        n_pairs = len(pair_users)
        n_steps = -(-n_pairs // cfg.batch_size)
        syncs = self.group.syncs

        def run(epoch: int) -> tuple[float, int]:
            perm = torch.as_tensor(self._permutation(n_pairs, epoch), device=dev)
            total = torch.zeros((), device=dev)
            active = torch.zeros((), dtype=torch.long, device=dev)
            # the ranks merge their item rows `syncs` times, after about equal runs of steps
            merges = deque(n_steps * k // syncs for k in range(1, syncs + 1))
            for step in range(n_steps):
                idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                u, p = pair_users[idx], pair_items[idx]
                if cfg.loss == "triplet":
                    neg, viol = sampling.hardest_negatives(
                        indptr, indices, u, p, model.users.weight.detach(),
                        model.items.weight.detach(), self.n_negatives, cfg.margin, cfg.seed,
                        epoch * n_steps + step, backend=backend)
                    ok = neg >= 0  # a user who has every item has no negative
                    u, p, neg = u[ok], p[ok], neg[ok].unsqueeze(1)
                    w = (rank_weight(viol[ok], self.n_negatives, n_items) if cfg.rank_weight
                         else torch.ones(len(u), device=dev)).unsqueeze(1)
                else:
                    neg, w = draw(u, epoch, step, epoch * n_steps + step)
                value, c_pos, c_neg = torch_step(model, opt, cfg, u, p, neg, w)
                # Accumulate on device: .item() here would be a CPU-GPU sync every step.
                total += value.sum()
                active += ((c_pos != 0) | (c_neg != 0).any(1)).sum()
                while merges and merges[0] <= step + 1:
                    merges.popleft()
                    self.merge()
            for _ in merges:  # a rank without pairs
                self.merge()
            return float(total) / max(n_pairs, 1), int(active)

        return run, {"optimizer": opt, "negatives": draw.gen}


def _warm_start(model: CML, users: np.ndarray, items: np.ndarray) -> None:
    """Copy the finite rows of ``users`` and ``items`` over the first rows of the tables."""
    with torch.no_grad():
        for table, rows in ((model.users, users), (model.items, items)):
            rows = torch.as_tensor(np.asarray(rows, dtype=np.float32))
            if rows.ndim != 2 or rows.shape[1] != table.weight.shape[1]:
                raise ValueError(f"warm start: rows of shape {tuple(rows.shape)} for a table of "
                                 f"dimension {table.weight.shape[1]}")
            n = min(len(rows), table.weight.shape[0])
            known = torch.isfinite(rows[:n]).all(1)
            table.weight[:n][known] = rows[:n][known]
    model.clip_()


def _accumulators(model: CML, loop_state: dict) -> tuple | None:
    """The users' and items' Adagrad accumulators of a loop (the fused loop's arrays, or the
    torch Adagrad's state tensors), or None for another optimiser."""
    if "user_acc" in loop_state:
        return loop_state["user_acc"], loop_state["item_acc"]
    opt = loop_state["optimizer"]
    if not isinstance(opt, torch.optim.Adagrad | RowAdagrad):
        return None
    return tuple(opt.state[t.weight]["sum"] for t in (model.users, model.items))


def _copy_rows(acc: np.ndarray, given: np.ndarray) -> None:
    """Copy the finite rows of accumulators ``given`` over the first rows of ``acc`` in place,
    averaged over a row or repeated along it where one is row-wise and the other not."""
    if isinstance(acc, torch.Tensor):  # the torch loop's state, maybe on a GPU
        host = acc.detach().cpu().numpy().copy()
        _copy_rows(host, given)
        acc.copy_(torch.as_tensor(host))
        return
    given = np.asarray(given, dtype=np.float32)
    if given.shape[1] != acc.shape[1]:
        given = (given.mean(1, keepdims=True) if acc.shape[1] == 1
                 else np.repeat(given, acc.shape[1], axis=1))
    n = min(len(given), len(acc))
    known = np.isfinite(given[:n]).all(1)
    acc[:n][known] = given[:n][known]


def make_optimizer(model: CML, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    return (torch.optim.Adagrad(params, lr=cfg.lr) if cfg.optimizer == "adagrad"
            else RowAdagrad(params, lr=cfg.lr) if cfg.optimizer == "adagrad_row"
            else torch.optim.SparseAdam(params, lr=cfg.lr) if cfg.optimizer == "adam"
            else torch.optim.SGD(params, lr=cfg.lr))


def torch_step(model: CML, opt: torch.optim.Optimizer, cfg: TrainConfig, u: torch.Tensor,
               p: torch.Tensor, neg: torch.Tensor, w: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the torch loop on pairs ``(u, p)`` ``[B]`` with negatives ``neg`` ``[B, N]``
    and their weights ``w`` (the triplet loss: ``N = 1``, ``w`` the rank weight): the loss's
    rule on the distances, its gradient through them, the optimiser's step and the clip of the
    touched rows. Returns the rule's ``(value, c_pos, c_neg)``."""
    d_pos, d_neg = model.distance(u, p), model.distance(u, neg)
    with torch.no_grad():
        value, c_pos, c_neg = loss_terms(cfg.loss, d_pos, d_neg, w, margin=cfg.margin,
                                         negative_weight=cfg.negative_weight,
                                         temperature=cfg.temperature)
    loss = surrogate(c_pos, d_pos, c_neg, d_neg)
    if cfg.cov_weight:
        rows = torch.cat([model.users(u), model.items(p), model.items(neg.flatten())])
        loss = loss + cfg.cov_weight * CovarianceLoss()(rows)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    model.clip_((model.users, u), (model.items, torch.cat([p, neg.flatten()])))
    return value, c_pos, c_neg


class _TorchNegatives:
    """The torch loop's N negatives per pair for the contrastive and softmax losses, with each
    draw's weight ``w`` (the items it stands for, 0 for a draw to ignore; see :mod:`.losses`):
    uniform over the user's non-positives (the sampler backends' ``sample_uniform``) or in
    proportion to the items' pairs, per pair or shared by the batch. A popularity or shared draw
    that hits one of the user's positives gets weight 0 (the fused loop redraws a per-pair
    popularity draw up to four times first, so the two loops' popularity draws differ there)."""

    def __init__(self, cfg: TrainConfig, train: sp.csr_matrix, pair_items: torch.Tensor,
                 n: int, backend: str) -> None:
        dev = pair_items.device
        self.cfg, self.n, self.backend, self.dev = cfg, n, backend, dev
        self.n_items = train.shape[1]
        self.indptr = torch.as_tensor(train.indptr.astype(np.int64), device=dev)
        self.indices = torch.as_tensor(train.indices.astype(np.int32), device=dev)
        self.degree = self.indptr.diff()
        # (user, item) keys of the positives, sorted (CSR rows in order, sorted within)
        rows = torch.repeat_interleave(torch.arange(train.shape[0], device=dev), self.degree)
        self.keys = rows * self.n_items + self.indices.long()
        counts = torch.bincount(pair_items.long(), minlength=self.n_items).double()
        self.q = counts / counts.sum()
        self.gen = torch.Generator(dev).manual_seed(cfg.seed)

    def _positive(self, u: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        key = u.long().unsqueeze(1) * self.n_items + items
        at = torch.searchsorted(self.keys, key).clamp(max=len(self.keys) - 1)
        return self.keys[at] == key

    def __call__(self, u: torch.Tensor, epoch: int, step: int, offset: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, n, b = self.cfg, self.n, len(u)
        popular = cfg.sampler == "popularity"
        if cfg.shared_negatives or popular:
            shape = (n,) if cfg.shared_negatives else (b, n)
            if popular:
                neg = torch.multinomial(self.q, n * (1 if cfg.shared_negatives else b),
                                        replacement=True, generator=self.gen).view(shape)
                w = 1.0 / (n * self.q[neg])
            else:
                neg = torch.randint(self.n_items, shape, generator=self.gen, device=self.dev)
                w = torch.full(shape, self.n_items / n, dtype=torch.float64, device=self.dev)
            neg, w = neg.expand(b, n), w.expand(b, n)
            w = w * ~self._positive(u, neg)
        else:
            neg = sampling.sample_uniform(self.indptr, self.indices, u, self.n_items, n,
                                          cfg.seed, offset, backend=self.backend)
            w = ((self.n_items - self.degree[u.long()]).double() / n).unsqueeze(1) * (neg >= 0)
            neg = neg.clamp(min=0)
        return neg.long(), w.float()
