"""The user-facing model: fit on :class:`Interactions`, recommend by raw ids, save and load."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from . import __version__, modeldir
from .data import IdMap, Interactions
from .index import AnnoyIndex, ExactIndex, resolve_index
from .model import pairwise_squared_distance
from .split import validation_split
from .train import TimeOrderWarning, TrainConfig, Trainer

FORMAT = 2  # of config.json; 1: before manifests


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

    def fit(self, interactions: Interactions | sp.spmatrix, valid: Interactions | None = None,
            show_progress: bool = True, callbacks: Sequence = (),
            validation: str = "leave-last-out") -> Recommender:
        """Train on ``interactions`` (or a users x items sparse matrix, as implicit's models
        take: :meth:`Interactions.from_matrix`, ids the row and column numbers). With
        ``config.patience > 0`` and no ``valid`` given, a validation split is carved from it in
        the shape ``validation`` (a protocol of :func:`recsys_metric.split.validation_split`; by
        default each user's latest item) to pick the number of epochs, then the model is refit
        on all of ``interactions`` for that many epochs."""
        if sp.issparse(interactions):
            interactions = Interactions.from_matrix(interactions)
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
            sub, val = validation_split(interactions, validation, cfg.seed)
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
        """Write the model to directory ``path`` (no pickle), replacing a previous model there.

        ``path`` must be new, an empty directory or a model directory; anything else is refused
        with ``ValueError`` (:func:`recsys_metric.modeldir.check_target`). The files go to a
        hidden sibling directory, ``manifest.json`` last, which is swapped into place
        atomically: at every instant ``path`` holds the old model or the new one, whole."""
        self._check_fitted()
        return modeldir.write_dir(path, self._write)

    def _write(self, tmp: Path) -> None:
        np.savez(tmp / "model.npz",
                 user_embeddings=self.user_embeddings_, item_embeddings=self.item_embeddings_,
                 user_ids=self.users_.ids.astype(str), item_ids=self.items_.ids.astype(str),
                 liked_indptr=self.liked_.indptr.astype(np.int64),
                 liked_indices=self.liked_.indices.astype(np.int32))
        index = {"requested": self.index, "kind": self.index_kind_, "n_trees": self.n_trees,
                 "recall_target": self.recall_target,
                 "search_k": getattr(self.index_, "search_k", None),
                 "calibrated_k": getattr(self.index_, "calibrated_k", None),
                 "recall@10": self.index_recall_}
        meta = {"format": FORMAT, "version": __version__, "config": self.config.to_dict(),
                "index": index,
                "fit_seconds": getattr(self, "fit_seconds_", None),
                "training_loop": getattr(self, "training_loop_", None),
                "best_epoch": getattr(self, "best_epoch_", None),
                "history": getattr(self, "history_", [])}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        (tmp / "item_names.json").write_text(json.dumps(self.item_names_, ensure_ascii=False))
        if self.index_kind_ == "annoy":
            self.index_.save(tmp / "items.ann")
            index = {**index, "file": "items.ann", "metric": "euclidean",
                     "node_bytes": modeldir.annoy_node_bytes(self.item_embeddings_.shape[1])}
        n_users, dim = self.user_embeddings_.shape
        modeldir.write_manifest(tmp, {
            "package_version": __version__, "dim": int(dim), "n_users": int(n_users),
            "n_items": int(len(self.item_embeddings_)), "interactions": int(self.liked_.nnz),
            "shapes": {"user_embeddings": [int(n_users), int(dim)],
                       "item_embeddings": [int(len(self.item_embeddings_)), int(dim)],
                       "liked_indices": [int(self.liked_.nnz)]},
            "index": index})

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> Recommender:
        """Load a model saved by :meth:`save`; the Annoy file is memory-mapped.

        The directory is checked against its manifest (every file's size and SHA-256) before
        anything is parsed, then every table against the others and the Annoy file's structure
        against the item table; ``verify=False`` skips the hashes only. Raises ``ValueError``
        naming the file and what is wrong: a damaged model is an error, never a crash or a wrong
        answer. A model trained on a GPU loads on a machine without one."""
        path = Path(path)
        manifest = modeldir.verify(path, hashes=verify)
        cfg_path = path / "config.json"
        meta = modeldir.read_json(cfg_path, dict)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{cfg_path}: model format {meta.get('format')!r} is not supported")
        try:
            config = TrainConfig.from_dict(_field(meta, "config", dict))
            ix = _field(meta, "index", dict)
            kind, n_trees = _field(ix, "kind", str), _field(ix, "n_trees", int)
            search_k = _field(ix, "search_k", int) if kind == "annoy" else None
            model = cls(config, _field(ix, "requested", str), n_trees,
                        float(_field(ix, "recall_target", (int, float))))
            resolve_index(model.index, 0)
            if kind not in ("exact", "annoy") or not 1 <= n_trees < 2**31:
                raise ValueError(f"index kind {kind!r} with {n_trees} trees")
            if search_k is not None and not -1 <= search_k < 2**31:
                raise ValueError(f"index search_k {search_k} out of range")
        except ValueError as e:
            raise ValueError(f"{cfg_path}: {e}") from None
        names = modeldir.read_json(path / "item_names.json", dict)
        if not all(isinstance(v, str) for v in names.values()):
            raise ValueError(f"{path / 'item_names.json'}: item names must be strings")
        users, items, user_emb, item_emb, liked = _read_tables(path / "model.npz", manifest)
        model._set_state(user_emb, item_emb, users, items, liked, names)
        model.exact_index_ = ExactIndex(model.item_embeddings_)
        model.index_kind_ = kind
        model.index_recall_ = ix.get("recall@10")
        if kind == "annoy":
            ann = path / "items.ann"
            if "items.ann" not in manifest["files"]:
                raise ValueError(f"{path / modeldir.MANIFEST}: damaged: the index is Annoy but "
                                 "items.ann is not listed")
            modeldir.check_annoy_file(ann, user_emb.shape[1], model.item_embeddings_, n_trees)
            model.index_ = AnnoyIndex.load(ann, user_emb.shape[1], len(items), n_trees,
                                           search_k)
            calibrated = ix.get("calibrated_k")
            if isinstance(calibrated, int) and calibrated > 0:
                model.index_.calibrated_k = calibrated
        else:
            model.index_ = model.exact_index_
        model.history_ = meta.get("history", [])
        model.fit_seconds_ = meta.get("fit_seconds")
        model.best_epoch_ = meta.get("best_epoch")
        return model


# ----------------------------------------------------------------------------- reading a model


def _field(d: dict, key: str, kind):
    value = d.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"key {key!r}: expected {getattr(kind, '__name__', 'a number')}, got "
                         f"{value!r}")
    return value


TABLES = ("user_embeddings", "item_embeddings", "user_ids", "item_ids", "liked_indptr",
          "liked_indices")


def _read_tables(path: Path, manifest: dict):
    """The arrays of ``model.npz``, each checked against the others and the manifest."""
    def bad(what: str) -> ValueError:
        return ValueError(f"{path}: {what}")

    try:  # np.load parses bytes: a damaged file can raise almost anything, none of it a bug here
        with np.load(path, allow_pickle=False) as z:
            t = {k: z[k] for k in TABLES if k in z.files}
    except Exception as e:
        raise bad(f"damaged ({type(e).__name__}: {e})") from None
    missing = [k for k in TABLES if k not in t]
    if missing:
        raise bad(f"lacks {', '.join(missing)}")
    ue, ie = t["user_embeddings"], t["item_embeddings"]
    for name in ("user_embeddings", "item_embeddings"):
        a = t[name]
        if a.ndim != 2 or a.dtype.kind != "f" or a.shape[1] < 1:
            raise bad(f"{name} is {a.dtype} {a.shape}, expected a 2-D float table")
        if not np.isfinite(a).all():
            raise bad(f"{name} holds non-finite values")
    if ue.shape[1] != ie.shape[1]:
        raise bad(f"user rows have {ue.shape[1]} dimensions, item rows {ie.shape[1]}")
    shapes = manifest.get("shapes", {})
    for name in ("user_embeddings", "item_embeddings"):
        if list(t[name].shape) != shapes.get(name):
            raise bad(f"{name} is {list(t[name].shape)}, the manifest says {shapes.get(name)}")
    if manifest.get("dim") != ue.shape[1]:
        raise bad(f"{ue.shape[1]} dimensions, the manifest says {manifest.get('dim')}")
    for name, n in (("user_ids", len(ue)), ("item_ids", len(ie))):
        if t[name].ndim != 1 or t[name].dtype.kind != "U" or len(t[name]) != n:
            raise bad(f"{name} is {t[name].dtype} {t[name].shape}, expected {n} strings")
    ip, ix = t["liked_indptr"], t["liked_indices"]
    if (ip.ndim != 1 or ix.ndim != 1 or ip.dtype.kind not in "iu" or ix.dtype.kind not in "iu"
            or len(ip) != len(ue) + 1 or ip[0] != 0 or ip[-1] != len(ix)
            or (np.diff(ip) < 0).any() or (len(ix) and (ix.min() < 0 or ix.max() >= len(ie)))):
        raise bad("the liked-items matrix (liked_indptr, liked_indices) is inconsistent")
    try:
        users, items = IdMap(t["user_ids"]), IdMap(t["item_ids"])
    except ValueError as e:
        raise bad(str(e)) from None
    liked = sp.csr_matrix((np.ones(len(ix), dtype=np.float32), ix, ip),
                          shape=(len(users), len(items)))
    return users, items, ue, ie, liked
