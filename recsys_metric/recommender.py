"""The user-facing model: fit on :class:`Interactions`, recommend by raw ids, save and load."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from . import __version__, modeldir
from .data import IdMap, Interactions, normalize_id
from .distributed import Group
from .foldin import fold_in
from .index import AnnoyIndex, ExactIndex, resolve_index
from .model import pairwise_squared_distance
from .split import validation_split
from .train import TimeOrderWarning, TrainConfig, Trainer

if TYPE_CHECKING:
    import pandas as pd

FORMAT = 2  # of config.json; 1: before manifests
# Users scored per block in batch serving: a progress bar's step, the index blocks within it.
BLOCK_USERS = 4096


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
            validation: str = "leave-last-out",
            warm_start: Recommender | str | Path | None = None,
            checkpoint_dir: str | Path | None = None, distributed: Group | None = None
            ) -> Recommender:
        """Train on ``interactions`` (or a users x items sparse matrix, as implicit's models
        take: :meth:`Interactions.from_matrix`, ids the row and column numbers). With
        ``config.patience > 0`` and no ``valid`` given, a validation split is carved from it in
        the shape ``validation`` (a protocol of :func:`recsys_metric.split.validation_split`; by
        default each user's latest item) to pick the number of epochs, then the model is refit
        on all of ``interactions`` for that many epochs.

        ``warm_start``: a fitted model (or its directory) to continue from: the users and items
        it knows start at its points, new ones as a cold fit's do; the fitted model holds the
        ids of both (those only in ``warm_start`` keep their points and liked items).
        ``checkpoint_dir``: each epoch's state is written there atomically
        (:mod:`recsys_metric.checkpoint`); the same fit run again resumes after the last
        epoch written and ends with the same tables.
        ``distributed``: this process's :class:`~recsys_metric.distributed.Group` in a
        data-parallel fit (every rank calls ``fit`` on the same data; rank 0 checkpoints and
        should save)."""
        if sp.issparse(interactions):
            interactions = Interactions.from_matrix(interactions)
        cfg = self.config.validate()
        resolve_index(self.index, interactions.n_items)
        base = (None if warm_start is None else warm_start
                if isinstance(warm_start, Recommender) else Recommender.load(warm_start))
        init = None if base is None else base._rows_for(interactions.users, interactions.items,
                                                        cfg)
        if interactions.timestamps is None and (cfg.transitions or cfg.recent_pull):
            warnings.warn(
                f"{interactions.source} has no timestamps: the items' context rows and the pull "
                "toward each user's latest items are off, and the recency visits take the file "
                "order. TrainConfig(**TIME_BLIND) trains without the time order and silences this.",
                TimeOrderWarning, stacklevel=2)

        def checkpoint(name: str) -> Path | None:
            return None if checkpoint_dir is None else Path(checkpoint_dir) / f"{name}.pt"

        t0 = time.perf_counter()
        train = interactions.matrix

        def trainer(config: TrainConfig) -> Trainer:
            return Trainer(config, callbacks, show_progress, group=distributed)

        if cfg.patience and valid is None:
            sub, val = validation_split(interactions, validation, cfg.seed)
            probe = trainer(cfg).fit(sub, val, init, checkpoint("probe"))
            self.validation_history_ = probe.history
            epochs = probe.best_epoch or cfg.epochs
            refit = TrainConfig.from_dict({**cfg.to_dict(), "epochs": epochs, "patience": 0})
            result = trainer(refit).fit(interactions, None, init, checkpoint("fit"))
            self.best_epoch_ = epochs
        else:
            result = trainer(cfg).fit(interactions, valid, init, checkpoint("fit"))
            self.validation_history_ = result.history if valid is not None else []
            self.best_epoch_ = result.best_epoch
        self.history_ = result.history
        self.training_loop_ = result.loop
        self.accumulators_ = result.accumulators
        # the trained users were pulled toward their latest items: folded-in ones are too
        self.pulled_ = interactions.timestamps is not None and cfg.recent_pull > 0
        if base is None:
            self._set_state(result.user_embeddings, result.item_embeddings, interactions.users,
                            interactions.items, train, interactions.item_names)
        else:
            self._set_state(*_merge(base, interactions, result),
                            {**base.item_names_, **(interactions.item_names or {})})
            self.accumulators_ = _merge_accumulators(base, self, interactions, result)
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

    # -- scoring and serving ---------------------------------------------------------------------

    def score_users(self, user_idx: np.ndarray) -> np.ndarray:
        """Scores (minus squared distance) of every item for internal user indices."""
        import torch

        u = torch.as_tensor(self.user_embeddings_[np.asarray(user_idx)])
        return (-pairwise_squared_distance(u, torch.as_tensor(self.item_embeddings_))).numpy()

    def recommend(self, user: object | Sequence[object] | None = None, N: int = 10,
                  filter_already_liked_items: bool = True,
                  filter_items: Sequence[object] | None = None,
                  user_items: Sequence | None = None, recalculate_user: bool = False,
                  items: Sequence[object] | None = None, show_progress: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``N`` items for one raw user id, a list of them, or a new user.

        Parameters
        ----------
        user : a raw user id, a list of them (scored together, in blocks), or None for a user
            unseen in training, given by ``user_items``.
        filter_already_liked_items : leave out the items the user has (in training, plus
            ``user_items``).
        filter_items : raw item ids left out for everyone.
        user_items : raw item ids, oldest first: a new user's items (``user`` None), or a known
            user's new ones (with ``recalculate_user``; a list of such lists for a list of
            users). The user's point is folded in: fitted to their items against the fixed
            item table with the model's own loss (:mod:`recsys_metric.foldin`), deterministic.
        recalculate_user : fold the known user(s) in again from their items (and
            ``user_items``) instead of using the trained point; the model is not changed
            (:meth:`partial_fit_users` changes it).
        items : raw item ids: rank only these (exact search over them).
        show_progress : a progress bar over blocks of users (on a terminal only).

        Returns ``(item_ids, scores)``: raw item ids (str) best first and their scores (minus the
        squared distance to the user, higher is better; 0 would be the user's own point). 1-D
        for one user, 2-D ``[len(users), N]`` for a list, padded with ``""`` and ``-inf`` where
        fewer items are left after filtering.
        """
        self._check_fitted()
        if N < 1:
            raise ValueError(f"N must be >= 1, got {N}")
        single = user is None or _is_id(user)
        if not single and len(user) == 0:
            return np.empty((0, N), dtype=str), np.empty((0, N), dtype=np.float32)
        if user is None:
            if user_items is None:
                raise ValueError("recommend: give a user id, a list of them, or the items of a "
                                 "new user (user_items)")
            liked = [self._item_indices(user_items)]
            vectors = self._fold(liked)
        else:
            idx = self._user_indices([user] if single else user)
            liked = self._liked_rows(idx)
            if recalculate_user:
                extra = ([user_items] if single else user_items) if user_items is not None else None
                if extra is not None:
                    if len(extra) != len(idx):
                        raise ValueError(f"recommend: {len(idx)} users but {len(extra)} lists "
                                         "of user_items")
                    liked = [np.concatenate([known, self._item_indices(new)])
                             for known, new in zip(liked, extra, strict=True)]
                vectors = self._fold(liked)
            elif user_items is not None:
                raise ValueError("recommend: user_items for a known user need "
                                 "recalculate_user=True (or pass user=None for a new user)")
            else:
                vectors = self.user_embeddings_[idx]
        exclude = self._exclusions(liked if filter_already_liked_items else None, len(vectors),
                                   filter_items)
        ids, scores = self._search(vectors, N, exclude, items, show_progress)
        raw = self._raw_items(ids)
        return (raw[0][ids[0] >= 0], scores[0][ids[0] >= 0]) if single else (raw, scores)

    def recommend_frame(self, users: Sequence[object], N: int = 10,
                        filter_already_liked_items: bool = True,
                        filter_items: Sequence[object] | None = None, show_progress: bool = False,
                        explain: bool = False) -> pd.DataFrame:
        """:meth:`recommend` for many users as a table: one row per (user, rank), columns
        ``user, rank, item, score, name`` (rank from 1; name empty where unknown), and with
        ``explain`` a ``because`` column: the user's liked items nearest to the item
        (:meth:`explain`), joined by ``|``."""
        import pandas as pd

        users = [str(u) for u in users]
        ids, scores = self.recommend(users, N, filter_already_liked_items, filter_items,
                                     show_progress=show_progress)
        keep = ids != ""
        rows, ranks = np.nonzero(keep)
        frame = pd.DataFrame({
            "user": np.asarray(users, dtype=object)[rows], "rank": ranks + 1,
            "item": ids[keep], "score": scores[keep],
            "name": [self.item_names_.get(i, "") for i in ids[keep]]})
        if explain:
            frame["because"] = ["|".join(self.explain(u, i)[0])
                                for u, i in zip(frame["user"], frame["item"], strict=True)]
        return frame

    def similar_items(self, item: object | Sequence[object], N: int = 10,
                      filter_items: Sequence[object] | None = None,
                      items: Sequence[object] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``N`` items nearest to ``item`` (itself excluded), or to a basket: a list of raw
        item ids, queried by the mean of their points (the basket excluded). Raw ids and scores
        (minus squared distances); ``filter_items`` and ``items`` as in :meth:`recommend`."""
        self._check_fitted()
        basket = self._item_indices([item] if _is_id(item) else item)
        if not len(basket):
            raise ValueError("similar_items: the basket is empty")
        query = self.item_embeddings_[basket].astype(np.float64).mean(0, keepdims=True)
        exclude = self._exclusions([basket], 1, filter_items)
        ids, scores = self._search(query.astype(np.float32), N, exclude, items)
        keep = ids[0] >= 0
        return self._raw_items(ids)[0][keep], scores[0][keep]

    def similar_users(self, user: object | None = None, N: int = 10,
                      user_items: Sequence[object] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The ``N`` trained users nearest to ``user`` (itself excluded), or to a new user
        given by ``user_items`` (folded in): raw user ids and scores (minus squared
        distances), exact search."""
        self._check_fitted()
        if user is None:
            if user_items is None:
                raise ValueError("similar_users: give a user id or user_items")
            query, exclude = self._fold([self._item_indices(user_items)]), None
        else:
            u = self.users_.index(user, "user")
            query = self.user_embeddings_[[u]]
            exclude = sp.csr_matrix(([1.0], [u], [0, 1]), shape=(1, len(self.users_)))
        if getattr(self, "user_index_", None) is None:
            self.user_index_ = ExactIndex(self.user_embeddings_)
        ids, dists = self.user_index_.query(query, N, exclude)
        keep = ids[0] >= 0
        return self.users_.raw(ids[0][keep]).astype(str), -dists[0][keep]

    def explain(self, user: object | None, item: object, N: int = 3,
                user_items: Sequence[object] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Why ``item`` suits ``user``: the user's liked items nearest to it ("because you liked
        X"), closest first, as raw ids and squared distances between the items' points. A new
        user is given by ``user_items`` (``user`` None); a known user's ``user_items`` count
        with their trained ones."""
        self._check_fitted()
        liked = [] if user is None else list(self._liked_rows([self.users_.index(user,
                                                                                  "user")]))
        extra = self._item_indices(user_items) if user_items is not None else np.empty(0, int)
        mine = np.unique(np.concatenate([*liked, extra]).astype(np.int64))
        if not len(mine):
            raise ValueError("explain: the user has no liked items")
        target = self.item_embeddings_[self.items_.index(item, "item")]
        d = ((self.item_embeddings_[mine] - target) ** 2).sum(1)
        top = np.argsort(d, kind="stable")[:N]
        return self.items_.raw(mine[top]).astype(str), d[top].astype(np.float32)

    # -- updating a fitted model -----------------------------------------------------------------

    def partial_fit_users(self, users: Sequence[object], user_items: Sequence | sp.spmatrix
                          ) -> Recommender:
        """Fold users in (new ids are added) or refit known ones from their items, in place, as
        implicit's ``partial_fit_users``: ``user_items`` a list of lists of raw item ids (oldest
        first), or a ``[len(users), n_items]`` sparse matrix over the model's item indices. Their
        liked items become these; the item table does not change."""
        self._check_fitted()
        users = [users] if _is_id(users) else list(users)
        rows = self._rows_of(user_items, len(users), len(self.items_), "user_items")
        rows = [self._item_indices(r) if not isinstance(r, np.ndarray) else r for r in rows]
        points = self._fold(rows)
        self.users_, idx = _extend(self.users_, users)
        self.user_embeddings_ = _grow(self.user_embeddings_, len(self.users_))
        self.user_embeddings_[idx] = points
        self._grow_accumulators()
        self.liked_ = _set_rows(self.liked_, idx, rows, len(self.users_), len(self.items_))
        self.user_index_ = None
        return self

    def partial_fit_items(self, items: Sequence[object], item_users: Sequence | sp.spmatrix
                          ) -> Recommender:
        """Fold items in (new ids are added) or refit known ones from the users who liked them,
        in place, as implicit's ``partial_fit_items``: ``item_users`` a list of lists of raw user
        ids, or a ``[len(items), n_users]`` sparse matrix over the model's user indices. Each
        item's point is fitted against the fixed user table with the model's loss (the roles
        swapped); their liked-by users become these, and the index is rebuilt."""
        self._check_fitted()
        items = [items] if _is_id(items) else list(items)
        rows = self._rows_of(item_users, len(items), len(self.users_), "item_users")
        rows = [self.users_.indices(r, "user") if not isinstance(r, np.ndarray) else r
                for r in rows]
        points = fold_in(self.user_embeddings_, rows, self.config)
        self.items_, idx = _extend(self.items_, items)
        self.item_embeddings_ = _grow(self.item_embeddings_, len(self.items_))
        self.item_embeddings_[idx] = points
        self._grow_accumulators()
        liked_t = _set_rows(self.liked_.T.tocsr(), idx, rows, len(self.items_), len(self.users_))
        self.liked_ = liked_t.T.tocsr()
        self._build_index()
        return self

    def _rows_for(self, users: IdMap, items: IdMap, config: TrainConfig
                  ) -> tuple[np.ndarray, ...]:
        """This model's points for ``users`` and ``items`` (rows of NaN for ids it lacks), then
        their Adagrad accumulators where the model kept them: a warm start's initial state
        (:meth:`Trainer.fit`'s ``init``), for a ``config`` of the same space."""
        self._check_fitted()
        dim = self.user_embeddings_.shape[1]
        if (config.dim, config.distance) != (dim, self.config.distance):
            raise ValueError(f"warm start: the model has dim {dim} and the {self.config.distance}"
                             f" distance, the config dim {config.dim} and the {config.distance}")
        acc = getattr(self, "accumulators_", None) or (None, None)
        tables, accs = [], []
        for ids, mine, table, a in ((users, self.users_, self.user_embeddings_, acc[0]),
                                    (items, self.items_, self.item_embeddings_, acc[1])):
            at = _positions(mine, ids)
            for source, out in ((table, tables), (a, accs)):
                if source is not None:
                    rows = np.full((len(ids), source.shape[1]), np.nan, np.float32)
                    rows[at >= 0] = source[at[at >= 0]]
                    out.append(rows)
        return (*tables, *accs)

    def _grow_accumulators(self) -> None:
        """Accumulators for rows added by a partial fit: 0, as a new row's in training."""
        acc = getattr(self, "accumulators_", None)
        if acc is not None:
            self.accumulators_ = (_grow(acc[0], len(self.users_)), _grow(acc[1], len(self.items_)))

    # -- serving internals -----------------------------------------------------------------------

    def _fold(self, rows: list[np.ndarray]) -> np.ndarray:
        """Folded-in points for rows of item indices (oldest first), pulled toward the latest
        items as the trained users were."""
        pull = self.config.recent_pull if getattr(self, "pulled_", False) else 0.0
        return fold_in(self.item_embeddings_, rows, self.config, pull=pull)

    def _item_indices(self, raws) -> np.ndarray:
        if isinstance(raws, str) or not isinstance(raws, Sequence | np.ndarray):
            raise ValueError(f"expected a list of item ids, got {raws!r}")
        return self.items_.indices(raws, "item")

    def _user_indices(self, raws) -> np.ndarray:
        if isinstance(raws, str) or not isinstance(raws, Sequence | np.ndarray):
            raise ValueError(f"expected a user id or a list of them, got {raws!r}")
        return self.users_.indices(raws, "user")

    def _liked_rows(self, idx: np.ndarray) -> list[np.ndarray]:
        ip, ix = self.liked_.indptr, self.liked_.indices
        return [ix[ip[u]:ip[u + 1]] for u in idx]

    def _exclusions(self, liked: list[np.ndarray] | None, n: int,
                    filter_items: Sequence[object] | None) -> sp.csr_matrix | None:
        """The ``[n, n_items]`` pattern of items left out per query: its liked items (when
        given) and ``filter_items`` for every query."""
        parts = []
        if liked is not None:
            deg = [len(r) for r in liked]
            ix = np.concatenate(liked).astype(np.int64) if sum(deg) else np.empty(0, np.int64)
            parts.append(sp.csr_matrix((np.ones(len(ix), np.float32), ix, np.r_[0, np.cumsum(deg)]),
                                       shape=(n, len(self.items_))))
        if filter_items is not None:
            f = np.unique(self._item_indices(filter_items))
            parts.append(sp.csr_matrix((np.ones(n * len(f), np.float32), np.tile(f, n),
                                        np.arange(n + 1) * len(f)), shape=(n, len(self.items_))))
        if not parts:
            return None
        out = sum(parts[1:], parts[0]).tocsr()
        out.sum_duplicates()
        return out

    def _search(self, vectors: np.ndarray, N: int, exclude: sp.csr_matrix | None,
                candidates: Sequence[object] | None = None, show_progress: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``N`` item indices ``[b, N]`` (-1 padded) and scores for query points, blocks of
        :data:`BLOCK_USERS` at a time: the model's index over the whole catalogue, or exact
        search over ``candidates``."""
        index = self.index_
        if candidates is not None:
            cand = np.unique(self._item_indices(candidates))
            index = ExactIndex(self.item_embeddings_[cand])
            exclude = exclude[:, cand].tocsr() if exclude is not None else None
        if len(vectors) <= BLOCK_USERS:  # one block: no bar, no slicing (the server's case)
            ids, dists = index.query(vectors, N, exclude)
        else:
            ids, dists = [], []
            for s in tqdm(range(0, len(vectors), BLOCK_USERS), desc="recommend", unit="block",
                          disable=None if show_progress else True):
                block = None if exclude is None else exclude[s:s + BLOCK_USERS]
                i, d = index.query(vectors[s:s + BLOCK_USERS], N, block)
                ids.append(i)
                dists.append(d)
            ids, dists = np.concatenate(ids), np.concatenate(dists)
        if candidates is not None:
            ids = np.where(ids >= 0, cand[np.maximum(ids, 0)], -1)
        if ids.shape[1] < N:  # fewer items than asked: every row is padded to N
            ids = np.pad(ids, ((0, 0), (0, N - ids.shape[1])), constant_values=-1)
            dists = np.pad(dists, ((0, 0), (0, N - dists.shape[1])), constant_values=np.inf)
        return ids, -dists

    def _raw_items(self, ids: np.ndarray) -> np.ndarray:
        raw = self.items_.ids[np.maximum(ids, 0)].astype(str)
        raw[ids < 0] = ""
        return raw

    @staticmethod
    def _rows_of(given, n: int, n_cols: int, name: str) -> list:
        if sp.issparse(given):
            m = sp.csr_matrix(given)
            if m.shape != (n, n_cols):
                raise ValueError(f"{name} is a {m.shape[0]} x {m.shape[1]} matrix, expected "
                                 f"{n} x {n_cols}")
            return [m.indices[m.indptr[r]:m.indptr[r + 1]].astype(np.int64) for r in range(n)]
        given = list(given)
        if len(given) != n:
            raise ValueError(f"{name}: {len(given)} lists for {n} ids")
        return given

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
                 liked_indices=self.liked_.indices.astype(np.int32),
                 **_accumulator_arrays(getattr(self, "accumulators_", None)))
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
                "pulled": bool(getattr(self, "pulled_", False)),
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
        users, items, user_emb, item_emb, liked, acc = _read_tables(path / "model.npz",
                                                                    manifest)
        model._set_state(user_emb, item_emb, users, items, liked, names)
        model.accumulators_ = acc
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
        model.pulled_ = bool(meta.get("pulled", config.recent_pull > 0))
        return model


# ----------------------------------------------------------------------------- helpers


def items_json(model: Recommender, ids: Sequence, scores: Sequence,
               because: Sequence[tuple[Sequence, Sequence]] | None = None) -> list[dict]:
    """A ranked list as the JSON contract's items (DESIGN.md): ``{"item", "score", "name"}``
    (``name`` where the model knows it), and with ``because`` (:meth:`Recommender.explain`'s
    answers, one per item) ``"because": [{"item", "distance", "name"}, ...]``, closest first.
    The CLI's ``--json`` and the server both write it."""
    names = model.item_names_

    def entry(item, key: str, value) -> dict:
        out = {"item": str(item), key: float(value)}
        if (name := names.get(out["item"])) is not None:
            out["name"] = name
        return out

    # tolist(): plain str and float in one call, rather than a numpy scalar per field
    out = [entry(i, "score", s) for i, s in zip(_list(ids), _list(scores), strict=True)]
    for it, (liked, dist) in zip(out, because or (), strict=False):
        it["because"] = [entry(j, "distance", d)
                         for j, d in zip(_list(liked), _list(dist), strict=True)]
    return out


def _list(a) -> list:
    return a.tolist() if hasattr(a, "tolist") else list(a)


def _is_id(x) -> bool:
    return isinstance(x, str | int | np.integer)


def _extend(ids: IdMap, raws: list) -> tuple[IdMap, np.ndarray]:
    """``ids`` with the unknown ones of ``raws`` appended, and the indices of ``raws``."""
    new = [r for r in dict.fromkeys(normalize_id(r) for r in raws) if r not in ids._index]
    if new:
        ids = IdMap(np.concatenate([ids.ids, np.asarray(new, dtype=object)]))
    return ids, ids.indices(raws)


def _positions(ids: IdMap, raws: IdMap) -> np.ndarray:
    """Index in ``ids`` of each id of ``raws`` (-1 where absent)."""
    import pandas as pd

    return pd.Index(ids.ids).get_indexer(raws.ids)


def _merge(base: Recommender, data: Interactions, result) -> tuple:
    """The state after a warm start: ``base``'s ids, then ``data``'s new ones; ``result``'s
    tables and ``data``'s liked items for the ids in ``data``, ``base``'s for the rest."""
    users, _ = _extend(base.users_, list(data.users.ids))
    items, _ = _extend(base.items_, list(data.items.ids))
    u_at, i_at = _positions(users, data.users), _positions(items, data.items)
    user_emb = _grow(base.user_embeddings_, len(users))
    item_emb = _grow(base.item_embeddings_, len(items))
    user_emb[u_at], item_emb[i_at] = result.user_embeddings, result.item_embeddings
    m = data.matrix
    rows = [i_at[m.indices[m.indptr[u]:m.indptr[u + 1]]] for u in range(m.shape[0])]
    liked = _set_rows(base.liked_, u_at, rows, len(users), len(items))
    return user_emb, item_emb, users, items, liked


def _merge_accumulators(base: Recommender, merged: Recommender, data: Interactions,
                        result) -> tuple | None:
    """The accumulators after a warm start in ``merged``'s layout (as :func:`_merge`): the
    fit's for the ids in ``data``, ``base``'s for the rest (0 where it kept none)."""
    new, old = result.accumulators, getattr(base, "accumulators_", None)
    if new is None:
        return None
    out = []
    for k, (ids, merged_ids) in enumerate(((data.users, merged.users_),
                                           (data.items, merged.items_))):
        grown = np.zeros((len(merged_ids), new[k].shape[1]), np.float32)
        if old is not None and old[k].shape[1] == new[k].shape[1]:
            grown[:len(old[k])] = old[k]
        grown[_positions(merged_ids, ids)] = new[k]
        out.append(grown)
    return tuple(out)


def _grow(table: np.ndarray, n: int) -> np.ndarray:
    if len(table) >= n:
        return table.copy()
    return np.vstack([table, np.zeros((n - len(table), table.shape[1]), table.dtype)])


def _set_rows(m: sp.csr_matrix, idx: np.ndarray, rows: list[np.ndarray], n_rows: int,
              n_cols: int) -> sp.csr_matrix:
    """``m`` grown to ``n_rows x n_cols`` with rows ``idx`` replaced by the patterns ``rows``."""
    m = sp.csr_matrix(m, copy=True)
    m.resize(n_rows, n_cols)
    keep = np.ones(n_rows, bool)
    keep[idx] = False
    m = (sp.diags(keep.astype(np.float32)) @ m).tocsr()
    m.eliminate_zeros()
    deg = [len(r) for r in rows]
    ix = np.concatenate(rows).astype(np.int64) if sum(deg) else np.empty(0, np.int64)
    new = sp.csr_matrix((np.ones(len(ix), np.float32), (np.repeat(idx, deg), ix)),
                        shape=(n_rows, n_cols))
    out = (m + new).tocsr()
    out.data[:] = 1.0
    out.eliminate_zeros()
    out.sort_indices()
    return out


# ----------------------------------------------------------------------------- reading a model


def _field(d: dict, key: str, kind):
    value = d.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"key {key!r}: expected {getattr(kind, '__name__', 'a number')}, got "
                         f"{value!r}")
    return value


TABLES = ("user_embeddings", "item_embeddings", "user_ids", "item_ids", "liked_indptr",
          "liked_indices")


ACCUMULATORS = ("user_adagrad", "item_adagrad")  # optional: for warm starts


def _accumulator_arrays(acc: tuple | None) -> dict:
    return {} if acc is None else dict(zip(ACCUMULATORS, acc, strict=True))


def _read_tables(path: Path, manifest: dict):
    """The arrays of ``model.npz``, each checked against the others and the manifest."""
    def bad(what: str) -> ValueError:
        return ValueError(f"{path}: {what}")

    try:  # np.load parses bytes: a damaged file can raise almost anything, none of it a bug here
        with np.load(path, allow_pickle=False) as z:
            t = {k: z[k] for k in (*TABLES, *ACCUMULATORS) if k in z.files}
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
    acc = None
    if any(k in t for k in ACCUMULATORS):  # optional: models from before they were kept lack it
        acc = tuple(t.get(k) for k in ACCUMULATORS)
        for name, a, n in zip(ACCUMULATORS, acc, (len(ue), len(ie)), strict=True):
            if (a is None or a.ndim != 2 or a.dtype != np.float32 or len(a) != n
                    or a.shape[1] not in (1, ue.shape[1]) or not (np.isfinite(a) & (a >= 0)).all()):
                raise bad(f"{name} is not {n} rows of non-negative float32 accumulators")
    return users, items, ue, ie, liked, acc
