"""The user-facing model: fit on :class:`Interactions`, recommend by raw ids, save and load."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from . import __version__
from .data import IdMap, Interactions
from .index import AnnoyIndex, ExactIndex, resolve_index
from .model import pairwise_squared_distance
from .split import validation_split
from .train import TimeOrderWarning, TrainConfig, Trainer

FORMAT = 1


class Recommender:
    """Collaborative metric learning recommender (implicit-style API, raw ids in and out).

    Parameters
    ----------
    config : training hyper-parameters; defaults when omitted.
    index : ``"auto"`` (exact below a measured catalogue size, Annoy above), ``"exact"`` or
        ``"annoy"``.
    recall_target : Annoy's ``search_k`` is raised until recall@10 against exact search on the
        model's own user vectors reaches this.
    """

    def __init__(self, config: TrainConfig | None = None, index: str = "auto",
                 n_trees: int = 50, recall_target: float = 0.98) -> None:
        self.config = config or TrainConfig()
        self.index = index
        self.n_trees = n_trees
        self.recall_target = recall_target

    # -- fitting ---------------------------------------------------------------------------------

    def fit(self, interactions: Interactions, valid: Interactions | None = None,
            show_progress: bool = True, callbacks: Sequence = ()) -> Recommender:
        """Train on ``interactions``. With ``config.patience > 0`` and no ``valid`` given, a
        validation split is carved from it (each user's latest item) to pick the number of epochs,
        then the model is refit on all of ``interactions`` for that many epochs."""
        cfg = self.config.validate()
        resolve_index(self.index, interactions.n_items)
        if interactions.timestamps is None and (cfg.transitions or cfg.recent_pull):
            warnings.warn(
                f"{interactions.source} has no timestamps: the items' context rows and the pull "
                "toward each user's latest items are off, and the recency visits take the file "
                "order. TrainConfig(**TIME_BLIND) trains without the time order and silences this.",
                TimeOrderWarning, stacklevel=2)
        t0 = time.perf_counter()
        train = interactions.matrix
        if cfg.patience and valid is None:
            sub, val = validation_split(interactions)
            probe = Trainer(cfg, callbacks, show_progress).fit(sub, val)
            self.validation_history_ = probe.history
            epochs = probe.best_epoch or cfg.epochs
            refit = TrainConfig.from_dict({**cfg.to_dict(), "epochs": epochs, "patience": 0})
            result = Trainer(refit, callbacks, show_progress).fit(interactions)
            self.best_epoch_ = epochs
        else:
            result = Trainer(cfg, callbacks, show_progress).fit(interactions, valid)
            self.validation_history_ = result.history if valid is not None else []
            self.best_epoch_ = result.best_epoch
        self.history_ = result.history
        self.training_loop_ = result.loop
        self._set_state(result.user_embeddings, result.item_embeddings, interactions.users,
                        interactions.items, train, interactions.item_names)
        self._build_index()
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _set_state(self, user_emb, item_emb, users: IdMap, items: IdMap, liked: sp.csr_matrix,
                   item_names: dict | None) -> None:
        self.user_embeddings_ = np.ascontiguousarray(user_emb, dtype=np.float32)
        self.item_embeddings_ = np.ascontiguousarray(item_emb, dtype=np.float32)
        self.users_, self.items_ = users, items
        self.liked_ = liked.tocsr()
        self.item_names_ = item_names or {}

    def _build_index(self) -> None:
        self.exact_index_ = ExactIndex(self.item_embeddings_)
        self.index_kind_ = resolve_index(self.index, len(self.items_))
        self.index_recall_ = 1.0
        if self.index_kind_ == "annoy":
            self.index_ = AnnoyIndex(self.item_embeddings_, self.n_trees, seed=self.config.seed)
            rng = np.random.default_rng(self.config.seed)
            probe = rng.choice(len(self.users_), min(500, len(self.users_)), replace=False)
            self.index_recall_ = self.index_.calibrate(self.user_embeddings_[probe],
                                                       self.exact_index_, 10, self.recall_target)
        else:
            self.index_ = self.exact_index_

    # -- scoring ---------------------------------------------------------------------------------

    def score_users(self, user_idx: np.ndarray) -> np.ndarray:
        """Scores (minus squared distance) of every item for internal user indices."""
        import torch

        u = torch.as_tensor(self.user_embeddings_[np.asarray(user_idx)])
        return (-pairwise_squared_distance(u, torch.as_tensor(self.item_embeddings_))).numpy()

    def _nearest(self, vector: np.ndarray, n: int, exclude: np.ndarray) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
        """The ``n`` items nearest ``vector`` outside ``exclude`` (sorted item indices)."""
        n = min(n, len(self.items_) - len(exclude))
        k = n + len(exclude)
        while True:  # Annoy may return fewer survivors than asked: fetch more until enough
            ids, dists = self.index_.query(vector, k)
            ids, dists = ids[0], dists[0]
            keep = (ids >= 0) & ~np.isin(ids, exclude)
            if keep.sum() >= n or k >= len(self.items_):
                return ids[keep][:n], -dists[keep][:n]
            k = min(2 * k, len(self.items_))

    def recommend(self, user: object | Sequence[object], N: int = 10,
                  filter_already_liked_items: bool = True,
                  filter_items: Sequence[object] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``N`` items for one raw user id, or for a list of them.

        Returns ``(item_ids, scores)``: raw item ids (str) best first and their scores (minus the
        squared distance, higher is better); 2-D ``[len(users), N]`` for a list, padded with ``""``
        and ``-inf`` where fewer items are left after filtering.
        """
        self._check_fitted()
        if N < 1:
            raise ValueError(f"N must be >= 1, got {N}")
        excluded = (self.items_.indices(filter_items, "item") if filter_items is not None
                    else np.empty(0, dtype=np.int64))
        single = isinstance(user, str | int | np.integer)
        rows = []
        for raw in [user] if single else list(user):
            u = self.users_.index(raw, "user")
            ex = excluded
            if filter_already_liked_items:
                ex = np.union1d(ex, self.liked_.indices[self.liked_.indptr[u]:
                                                        self.liked_.indptr[u + 1]])
            rows.append(self._nearest(self.user_embeddings_[u], N, ex))
        if single:
            ids, scores = rows[0]
            return self.items_.raw(ids).astype(str), scores
        width = max((len(r[0]) for r in rows), default=0)
        out_ids = np.full((len(rows), width), "", dtype=object)
        out_scores = np.full((len(rows), width), -np.inf, dtype=np.float32)
        for r, (ids, scores) in enumerate(rows):
            out_ids[r, :len(ids)] = self.items_.raw(ids)
            out_scores[r, :len(ids)] = scores
        return out_ids.astype(str), out_scores

    def similar_items(self, item: object, N: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``N`` items nearest to ``item`` (itself excluded): raw ids and scores."""
        self._check_fitted()
        i = self.items_.index(item, "item")
        ids, scores = self._nearest(self.item_embeddings_[i], N, np.array([i]))
        return self.items_.raw(ids).astype(str), scores

    def item_name(self, item: str) -> str | None:
        return self.item_names_.get(str(item))

    def _check_fitted(self) -> None:
        if not hasattr(self, "user_embeddings_"):
            raise ValueError("this Recommender is not fitted yet: call fit() or load()")

    # -- persistence -----------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the model to directory ``path`` (no pickle). The files are written to a sibling
        temporary directory that is renamed into place, so a crash never leaves half a model."""
        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            np.savez(tmp / "model.npz",
                     user_embeddings=self.user_embeddings_, item_embeddings=self.item_embeddings_,
                     user_ids=self.users_.ids.astype(str), item_ids=self.items_.ids.astype(str),
                     liked_indptr=self.liked_.indptr, liked_indices=self.liked_.indices)
            meta = {"format": FORMAT, "version": __version__, "config": self.config.to_dict(),
                    "index": {"requested": self.index, "kind": self.index_kind_,
                              "n_trees": self.n_trees, "recall_target": self.recall_target,
                              "search_k": getattr(self.index_, "search_k", None),
                              "recall@10": self.index_recall_},
                    "fit_seconds": getattr(self, "fit_seconds_", None),
                    "training_loop": getattr(self, "training_loop_", None),
                    "best_epoch": getattr(self, "best_epoch_", None),
                    "history": getattr(self, "history_", [])}
            (tmp / "config.json").write_text(json.dumps(meta, indent=2))
            (tmp / "item_names.json").write_text(json.dumps(self.item_names_, ensure_ascii=False))
            if self.index_kind_ == "annoy":
                self.index_.save(tmp / "items.ann")
            if path.exists():  # swap: the old model stays whole until the new one is in place
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
                os.replace(path, old / "model")
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        """Load a model saved by :meth:`save`; the Annoy file is memory-mapped."""
        path = Path(path)
        if not (path / "config.json").is_file() or not (path / "model.npz").is_file():
            raise ValueError(f"{path}: not a recsys-metric model directory "
                             "(config.json and model.npz expected)")
        meta = json.loads((path / "config.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: model format {meta.get('format')} is not supported")
        ix = meta["index"]
        model = cls(TrainConfig.from_dict(meta["config"]), ix["requested"], ix["n_trees"],
                    ix["recall_target"])
        with np.load(path / "model.npz", allow_pickle=False) as z:
            users, items = IdMap(z["user_ids"]), IdMap(z["item_ids"])
            liked = sp.csr_matrix((np.ones(len(z["liked_indices"]), dtype=np.float32),
                                   z["liked_indices"], z["liked_indptr"]),
                                  shape=(len(users), len(items)))
            model._set_state(z["user_embeddings"], z["item_embeddings"], users, items, liked,
                             json.loads((path / "item_names.json").read_text()))
        model.exact_index_ = ExactIndex(model.item_embeddings_)
        model.index_kind_, model.index_recall_ = ix["kind"], ix["recall@10"]
        model.index_ = (AnnoyIndex.load(path / "items.ann", model.item_embeddings_.shape[1],
                                        len(items), ix["n_trees"], ix["search_k"])
                        if ix["kind"] == "annoy" else model.exact_index_)
        model.history_ = meta.get("history", [])
        model.fit_seconds_ = meta.get("fit_seconds")
        model.best_epoch_ = meta.get("best_epoch")
        return model
