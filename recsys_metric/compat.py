"""A drop-in for implicit's models: :class:`ImplicitCML`, implicit's ``RecommenderBase`` interface
backed by :class:`~recsys_metric.recommender.Recommender`.

Code written for ``implicit`` >= 0.5 (``fit(user_items)``, ``recommend(userid,
user_items[userid])``, ``implicit.evaluation.ranking_metrics_at_k``, ...) runs unchanged with a
CML model::

    model = ImplicitCML(factors=64, iterations=25, random_state=0)
    model.fit(train)                                  # users x items CSR
    ids, scores = model.recommend(userids, train[userids], N=10)
    ranking_metrics_at_k(model, train, test, K=10)

The same as implicit (read off implicit 0.7.3's ``MatrixFactorizationBase`` and checked against
its ``AlternatingLeastSquares`` in ``tests/test_compat.py``):

- ids are the row and column numbers of the fitted matrix; results are ``(ids, scores)`` with
  ``int32`` ids and ``float32`` scores, best first: 1-D for a scalar id, 2-D ``[len(ids), N]``
  for an array (a list, a numpy array or the Cython memoryview ``ranking_metrics_at_k`` passes).
  With ``items=`` the ids come back in the dtype of ``np.unique(items)``, as implicit's do.
- ``user_items`` holds one row per requested user; its stored entries are the liked items
  filtered out (their values do not matter) and, with ``recalculate_user=True``, the items the
  user is folded in from (the stored user point is not used, so the user id may be a new one).
- ``filter_items`` together with ``items`` is a ``ValueError``; ``N`` is cut to ``len(items)``.
- ``similar_items`` / ``similar_users`` return the query itself first (unless it is filtered
  out or not among ``items`` / ``users``), as implicit's cosine search does. Here it is put
  there explicitly, with its exact score 0, instead of left to rounding.
- ``partial_fit_users`` / ``partial_fit_items`` grow the tables for ids past the end, the ids
  in between getting a point at the origin (implicit: zero factors).

What differs:

- scores are minus squared Euclidean distances (higher is better, at most 0), not dot
  products; ``similar_*`` scores likewise, not cosines.
- where fewer than ``N`` items are left after filtering (or ``N`` exceeds the catalogue), the
  row is padded with id ``-1`` and score ``-FLT_MAX``, the padding of implicit's ``_batch_call``
  (implicit's matrix-factorisation models instead return the filtered items themselves at
  ``-FLT_MAX``, and zeros past the catalogue).
- ``recalculate_user`` / ``recalculate_item`` and ``partial_fit_*`` fold points in with a few
  seeded Adagrad steps on sampled negatives (:mod:`recsys_metric.foldin`), not ALS's exact
  solve: deterministic (the negatives are seeded by the row's items, so a user folded alone
  lands on the same point as among others), a few milliseconds per user.
- ``fit`` treats every positive entry as one interaction (the weights, implicit's confidences,
  are ignored; entries <= 0 are dropped) and the matrix has no time order, so the model trains
  time-blind (:data:`~recsys_metric.train.TIME_BLIND`) unless the user set those fields.
- ``save(path)`` writes a model *directory* (:meth:`Recommender.save`: manifest, checksums, no
  pickle), not one ``.npz`` file, and ``load(path)`` reads one; file objects are refused.
- ids out of range are an ``IndexError`` (implicit wraps negative ones around), duplicates in
  ``items`` / ``users`` count once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
from implicit.recommender_base import RecommenderBase

from .foldin import fold_in
from .index import ExactIndex
from .recommender import Recommender
from .train import TIME_BLIND, TrainConfig

# implicit's argument names for TrainConfig fields
ALIASES = {"factors": "dim", "iterations": "epochs", "random_state": "seed"}
# the score of a padding slot: implicit's (-np.finfo(np.float32).max in its _batch_call)
PAD_SCORE = -np.finfo(np.float32).max

Ids = Any  # an int, or an array-like of ints (list, ndarray, Cython memoryview)


class ImplicitCML(RecommenderBase):
    """Collaborative metric learning with implicit's model interface (see the module docstring).

    Parameters
    ----------
    config : training hyper-parameters; defaults when omitted.
    index, n_trees, recall_target : as :class:`Recommender`.
    **fields : any :class:`TrainConfig` field, overriding ``config``; implicit's ``factors``,
        ``iterations`` and ``random_state`` stand for ``dim``, ``epochs`` and ``seed``
        (``random_state=None`` keeps the seed). The time-order fields (:data:`TIME_BLIND`) are
        turned off unless given here or set away from their defaults in ``config``.

    Attributes
    ----------
    recommender : the :class:`Recommender` doing the work (raw ids ``"0"``, ``"1"``, ...).
    """

    def __init__(self, config: TrainConfig | None = None, *, index: str = "auto",
                 n_trees: int = 50, recall_target: float = 0.98, **fields: Any) -> None:
        given: dict[str, Any] = {}
        for name, value in fields.items():
            key = ALIASES.get(name, name)
            if key in given:
                raise TypeError(f"ImplicitCML: {name!r} and {key!r} name the same setting")
            if not (name == "random_state" and value is None):
                given[key] = value
        base = config or TrainConfig()
        defaults = TrainConfig()
        keep = set(given) | ({k for k in TIME_BLIND if getattr(base, k) != getattr(defaults, k)}
                             if config is not None else set())
        cfg = TrainConfig.from_dict({**base.to_dict(), **given}).for_task("any", keep=keep)
        self.recommender = Recommender(cfg, index=index, n_trees=n_trees,
                                       recall_target=recall_target)
        self._user_index: tuple[np.ndarray, ExactIndex] | None = None
        self._checked: tuple = ()  # the id maps _fitted found to be row numbers

    @classmethod
    def from_recommender(cls, recommender: Recommender) -> ImplicitCML:
        """Wrap a fitted :class:`Recommender` whose raw ids are the row and column numbers
        (fitted on a matrix, e.g. by this class); ``ValueError`` otherwise."""
        model = cls()
        model.recommender = recommender
        model._fitted()
        return model

    def __repr__(self) -> str:
        rec = self.recommender
        shape = (f"{len(rec.users_)} users x {len(rec.items_)} items"
                 if hasattr(rec, "users_") else "not fitted")
        return f"ImplicitCML(dim={rec.config.dim}, epochs={rec.config.epochs}, {shape})"

    @property
    def config(self) -> TrainConfig:
        return self.recommender.config

    @property
    def user_factors(self) -> np.ndarray:
        """``[n_users, dim]`` float32 user points (implicit's name)."""
        return self._fitted().user_embeddings_

    @property
    def item_factors(self) -> np.ndarray:
        """``[n_items, dim]`` float32 item points (implicit's name)."""
        return self._fitted().item_embeddings_

    # -- fitting -----------------------------------------------------------------------------

    def fit(self, user_items: sp.spmatrix, show_progress: bool = True,
            callback: Callable | None = None) -> ImplicitCML:
        """Train on a users x items sparse matrix: each positive entry is one interaction.
        ``callback(epoch, seconds, loss)`` is called after each epoch (0-based), as implicit's
        ALS calls it; its return value is ignored."""
        if not sp.issparse(user_items) or user_items.ndim != 2:
            raise ValueError("user_items needs to be a users x items scipy sparse matrix")

        def each_epoch(epoch: int, logs: dict) -> bool:
            callback(epoch - 1, logs["seconds"], logs["loss"])
            return False  # never stops training: implicit ignores what a callback returns

        self.recommender.fit(_positive(user_items, user_items.shape[1]),
                             show_progress=show_progress,
                             callbacks=[each_epoch] if callback is not None else [])
        self._fitted()
        return self

    def partial_fit_users(self, userids: Ids, user_items: sp.spmatrix) -> ImplicitCML:
        """Fold users in again (known ids) or anew (ids past the end) from ``user_items``, one
        row per id (:meth:`Recommender.partial_fit_users`); their liked items become these."""
        rec = self._fitted()
        ids, rows = _grown(userids, user_items, len(rec.users_), len(rec.items_), "user")
        rec.partial_fit_users(ids.astype(str), rows)
        return self

    def partial_fit_items(self, itemids: Ids, item_users: sp.spmatrix) -> ImplicitCML:
        """Fold items in again or anew from ``item_users`` (items x users, one row per id), as
        :meth:`Recommender.partial_fit_items`; the index is rebuilt."""
        rec = self._fitted()
        ids, rows = _grown(itemids, item_users, len(rec.items_), len(rec.users_), "item")
        rec.partial_fit_items(ids.astype(str), rows)
        return self

    # -- serving -----------------------------------------------------------------------------

    def recommend(self, userid: Ids, user_items: sp.csr_matrix | None, N: int = 10,
                  filter_already_liked_items: bool = True, filter_items: Ids | None = None,
                  recalculate_user: bool = False, items: Ids | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``N`` items for a user id or an array of them; see implicit's
        ``RecommenderBase.recommend`` and the module docstring for the differences."""
        rec = self._fitted()
        scalar, users = _ids(userid)
        n_items = len(rec.items_)
        _check_n(N)
        if filter_already_liked_items or recalculate_user:  # implicit's own checks and words
            if not isinstance(user_items, sp.csr_matrix):
                raise ValueError("user_items needs to be a CSR sparse matrix")
            if user_items.shape[0] != len(users):
                raise ValueError("user_items must contain 1 row for every user in userids")
        if recalculate_user:
            vectors = rec._fold(_rows(_positive(user_items, n_items)))
        else:
            vectors = rec.user_embeddings_[_in_range(users, len(rec.users_), "userid")]
        exclude = _pattern(user_items, n_items) if filter_already_liked_items else None
        if _given(filter_items):
            if items is not None:
                raise ValueError("Can't set both items and filter_items in recommend call")
            exclude = _add_to_rows(exclude, _unique(filter_items, n_items, "filter_items"),
                                   len(users), n_items)
        id_dtype: np.dtype = np.dtype(np.int32)
        if items is not None:
            cand = _unique(items, n_items, "items")
            N, id_dtype = min(N, len(cand)), cand.dtype
            ids, scores = _exact(rec.item_embeddings_, cand, vectors, N, exclude)
        else:
            ids, scores = (rec._search(vectors, N, exclude) if len(vectors)
                           else (np.empty((0, N), np.int64), np.empty((0, N), np.float32)))
        return _finish(_pad(ids, scores, N, id_dtype), scalar)

    def similar_items(self, itemid: Ids, N: int = 10, recalculate_item: bool = False,
                      item_users: sp.csr_matrix | None = None, filter_items: Ids | None = None,
                      items: Ids | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``N`` items nearest to an item (itself first) or to each of an array of them.
        With ``recalculate_item`` the query is the item folded in from ``item_users`` (items x
        users, one row per id) against the user table: a plain nearest-item search, the stored
        item ranked wherever its point falls."""
        rec = self._fitted()
        scalar, query_ids = _ids(itemid)
        n_items = len(rec.items_)
        _check_n(N)
        if recalculate_item:
            if not isinstance(item_users, sp.csr_matrix):
                raise ValueError("item_users needs to be a CSR sparse matrix")
            if item_users.shape[0] != len(query_ids):
                raise ValueError("item_users must contain 1 row for every item in itemid")
            rows = _rows(_positive(item_users, len(rec.users_)))
            query, selves = fold_in(rec.user_embeddings_, rows, rec.config), None
        else:
            selves = _in_range(query_ids, n_items, "itemid")
            query = rec.item_embeddings_[selves]

        def search(q, k, exclude, cand):
            if cand is not None:
                return _exact(rec.item_embeddings_, cand, q, k, exclude)
            return rec._search(q, k, exclude)  # the model's index: Annoy on a large catalogue

        return self._neighbours(query, selves, n_items, N, filter_items, items, search, scalar,
                                "items")

    def similar_users(self, userid: Ids, N: int = 10, filter_users: Ids | None = None,
                      users: Ids | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``N`` users nearest to a user (itself first) or to each of an array of them,
        exact search over the user table."""
        rec = self._fitted()
        scalar, query_ids = _ids(userid)
        _check_n(N)
        selves = _in_range(query_ids, len(rec.users_), "userid")

        def search(q, k, exclude, cand):
            if cand is not None:
                return _exact(rec.user_embeddings_, cand, q, k, exclude)
            ids, dists = self._users_index().query(q, k, exclude)
            return ids, -dists

        return self._neighbours(rec.user_embeddings_[selves], selves, len(rec.users_), N,
                                filter_users, users, search, scalar, "users")

    def _neighbours(self, query: np.ndarray, selves: np.ndarray | None, n_rows: int, N: int,
                    filter_ids: Ids | None, subset: Ids | None, search: Callable,
                    scalar: bool, what: str) -> tuple[np.ndarray, np.ndarray]:
        """Nearest rows of a table to ``query``: ``search(query, k, exclude, candidates)`` does
        the search with ``selves`` (the query rows' own ids, or None) excluded, then each is
        put first with its score 0 where it is allowed: implicit's self-inclusion, exact."""
        b = len(query)
        banned = np.empty(0, np.int64)
        if _given(filter_ids):
            if subset is not None:
                raise ValueError(f"Can't set both {what} and filter_{what} in similar_{what} "
                                 "call")
            banned = _unique(filter_ids, n_rows, f"filter_{what}")
        cand = _unique(subset, n_rows, what) if subset is not None else None
        exclude = _add_to_rows(None, banned, b, n_rows)
        if selves is not None:
            own = sp.csr_matrix((np.ones(b, np.float32), selves, np.arange(b + 1)),
                                shape=(b, n_rows))
            exclude = own if exclude is None else (exclude + own).tocsr()
        ids, scores = (search(query, N, exclude, cand) if b
                       else (np.empty((0, N), np.int64), np.empty((0, N), np.float32)))
        ids, scores = _pad(ids, scores, N, cand.dtype if cand is not None else np.int32)
        if selves is not None:
            first = ~np.isin(selves, banned)
            if cand is not None:
                first &= np.isin(selves, cand)
            ids[first] = np.c_[selves[first], ids[first, :N - 1]]
            scores[first] = np.c_[np.zeros(first.sum(), np.float32), scores[first, :N - 1]]
        return _finish((ids, scores), scalar)

    def _users_index(self) -> ExactIndex:
        # cached per user table: partial_fit_users replaces the array, which drops the cache
        table = self.recommender.user_embeddings_
        if self._user_index is None or self._user_index[0] is not table:
            self._user_index = (table, ExactIndex(table))
        return self._user_index[1]

    # -- persistence -------------------------------------------------------------------------

    def save(self, fileobj_or_path: str | os.PathLike) -> None:
        """Write the model to the *directory* ``fileobj_or_path`` (:meth:`Recommender.save`:
        replaced atomically, checked on load; no pickle). implicit writes one ``.npz`` file and
        takes file objects too; a model directory cannot be one file object."""
        if not isinstance(fileobj_or_path, str | os.PathLike):
            raise TypeError("ImplicitCML.save writes a model directory: give its path, not a "
                            f"{type(fileobj_or_path).__name__}")
        self._fitted()
        self.recommender.save(fileobj_or_path)

    @classmethod
    def load(cls, fileobj_or_path: str | os.PathLike) -> ImplicitCML:
        """Read a model directory written by :meth:`save` (or by :meth:`Recommender.save` for a
        model fitted on a matrix)."""
        if not isinstance(fileobj_or_path, str | os.PathLike):
            raise TypeError("ImplicitCML.load reads a model directory: give its path, not a "
                            f"{type(fileobj_or_path).__name__}")
        return cls.from_recommender(Recommender.load(fileobj_or_path))

    def _fitted(self) -> Recommender:
        rec = self.recommender
        rec._check_fitted()
        # ids are positions: the raw ids must be "0".."n-1" in order (from_matrix makes them so
        # and _grown keeps them so), or an int id would name another row. Checked once per id
        # map (O(n) strings), not on every call: the maps are replaced, never changed in place.
        if self._checked != (rec.users_, rec.items_):
            for kind, idmap in (("user", rec.users_), ("item", rec.items_)):
                if not np.array_equal(idmap.ids, np.arange(len(idmap)).astype(str)):
                    raise ValueError(f"ImplicitCML: the model's {kind} ids are not its row "
                                     "numbers (it was not fitted on a matrix); use Recommender "
                                     "directly")
            self._checked = (rec.users_, rec.items_)
        return rec


# ----------------------------------------------------------------------------- helpers


def _ids(given: Ids) -> tuple[bool, np.ndarray]:
    """(whether one id was given, the ids as a 1-D int64 array)."""
    scalar = bool(np.isscalar(given))
    ids = np.atleast_1d(np.asarray(given))  # a Cython memoryview becomes an array here too
    if ids.ndim != 1 or (len(ids) and ids.dtype.kind not in "iu"):
        raise ValueError(f"expected an integer id or a 1-D array of them, got {given!r}")
    return scalar, ids.astype(np.int64, copy=False)


def _in_range(ids: np.ndarray, n: int, what: str) -> np.ndarray:
    if len(ids) and (ids.min() < 0 or ids.max() >= n):
        bad = ids[(ids < 0) | (ids >= n)][0]
        raise IndexError(f"{what} {bad} is out of range: the model has {n}")
    return ids


def _unique(given: Ids, n: int, what: str) -> np.ndarray:
    """Sorted distinct ids, in the dtype given (implicit returns ``items[ids]``)."""
    arr = np.unique(np.asarray(given))
    if not len(arr):
        raise ValueError(f"{what} is empty")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integer ids, got {arr.dtype}")
    _in_range(arr.astype(np.int64), n, what)
    return arr


def _given(ids: Ids | None) -> bool:
    return ids is not None and np.asarray(ids).size > 0


def _check_n(N: int) -> None:
    if not isinstance(N, int | np.integer) or N < 1:
        raise ValueError(f"N must be a positive integer, got {N!r}")


def _restrict(m: sp.spmatrix, n_cols: int, positive: bool = False) -> sp.csr_matrix:
    """``m``'s stored entries (its positive ones only, with ``positive``) as a CSR of ones with
    ``n_cols`` columns: entries past them (items or users the model lacks) are dropped."""
    coo = sp.coo_matrix(m)
    ok = coo.col < n_cols
    if positive:
        ok &= coo.data > 0
    out = sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (coo.row[ok], coo.col[ok])),
                        shape=(m.shape[0], n_cols))
    out.sum_duplicates()
    return out


def _pattern(m: sp.csr_matrix, n_cols: int) -> sp.csr_matrix:
    """The stored entries of ``m``, whatever their values (implicit filters them all)."""
    return _restrict(m, n_cols)


def _positive(m: sp.spmatrix, n_cols: int) -> sp.csr_matrix:
    """The positive entries of ``m``: the interactions a model is fitted or folded from."""
    return _restrict(m, n_cols, positive=True)


def _rows(m: sp.csr_matrix) -> list[np.ndarray]:
    return np.split(m.indices.astype(np.int64), m.indptr[1:-1])


def _add_to_rows(exclude: sp.csr_matrix | None, cols: np.ndarray, n: int, n_cols: int
                 ) -> sp.csr_matrix | None:
    """``exclude`` with ``cols`` added to each of its ``n`` rows."""
    if not len(cols):
        return exclude
    every = sp.csr_matrix((np.ones(n * len(cols), np.float32), np.tile(cols.astype(np.int64), n),
                           np.arange(n + 1) * len(cols)), shape=(n, n_cols))
    return every if exclude is None else (exclude + every).tocsr()


def _exact(table: np.ndarray, cand: np.ndarray, query: np.ndarray, k: int,
           exclude: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``table`` among ``cand`` (sorted ids): ids (-1 padded), scores."""
    idx = cand.astype(np.int64)
    ids, dists = ExactIndex(table[idx]).query(
        query, k, None if exclude is None else exclude[:, idx].tocsr())
    return np.where(ids >= 0, idx[np.maximum(ids, 0)], -1), -dists


def _pad(ids: np.ndarray, scores: np.ndarray, N: int, id_dtype) -> tuple[np.ndarray, np.ndarray]:
    """``[b, N]`` ids and float32 scores: missing slots id -1, score ``-FLT_MAX``."""
    b, k = ids.shape
    if np.dtype(id_dtype).kind == "u":  # -1 must fit
        id_dtype = np.int64
    out_ids = np.full((b, N), -1, dtype=id_dtype)
    out_scores = np.full((b, N), PAD_SCORE, dtype=np.float32)
    found = ids >= 0
    out_ids[:, :k] = np.where(found, ids, -1)
    out_scores[:, :k] = np.where(found, scores, PAD_SCORE)
    return out_ids, out_scores


def _finish(result: tuple[np.ndarray, np.ndarray], scalar: bool
            ) -> tuple[np.ndarray, np.ndarray]:
    ids, scores = result
    return (ids[0], scores[0]) if scalar else (ids, scores)


def _grown(given: Ids, m: sp.spmatrix, n: int, n_cols: int, what: str
           ) -> tuple[np.ndarray, sp.csr_matrix]:
    """The ids and rows to hand to ``Recommender.partial_fit_*`` so that raw id ``str(i)``
    stays row ``i``: ids past the end come first, in order, with those skipped over (given
    no row: a point at the origin), then the known ones."""
    _, ids = _ids(given)
    if not sp.issparse(m) or m.shape[0] != len(ids):
        raise ValueError(f"{what}s need a sparse matrix with 1 row for every id")
    if not len(ids):
        raise ValueError(f"no {what} ids given")
    if ids.min() < 0:
        raise IndexError(f"{what} id {ids.min()} is negative")
    top = max(n, int(ids.max()) + 1)
    order = np.r_[np.arange(n, top), np.unique(ids[ids < n])]
    source = np.full(top, len(ids))  # row len(ids): the empty row appended below
    source[ids] = np.arange(len(ids))  # of repeated ids the last row stands
    rows = sp.vstack([_positive(m, n_cols), sp.csr_matrix((1, n_cols), dtype=np.float32)])
    return order, rows.tocsr()[source[order]]
