"""Interactions in memory: id maps (raw id <-> index) and a sorted user x item CSR matrix.

Reading them from files is :mod:`recsys_metric.reading`. Raw ids are text, compared through
:func:`normalize_id` everywhere (reading, building, looking up), so an id reads and looks up
the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

# Ids that spreadsheets and dataframes write for a missing value (compared lower-cased). "NA"
# is not one of them: it is a real id (Namibia).
MISSING_IDS = frozenset({"nan", "null", "none", "<na>", "n/a", "#n/a", "nil"})
# What normalize_id strips: every character str.strip() strips (all below U+3001), and the BOM.
BLANK = "".join(c for c in map(chr, range(0x3001)) if c.isspace()) + "\ufeff"
MISSING_OR_EMPTY = sorted(MISSING_IDS | {""})


def normalize_id(raw: object) -> str:
    """The canonical text of a raw id: ``str(raw)`` without surrounding whitespace or U+FEFF.

    The readers, :meth:`Interactions.from_pairs` and every :class:`IdMap` lookup use it, so an
    id reads and looks up the same way (``" 196 "``, ``"\\ufeff196"`` and ``196`` are ``"196"``).

    Parameters
    ----------
    raw : any value; converted with ``str``.

    Returns
    -------
    str
    """
    return str(raw).strip(BLANK)


def is_missing(norm: str) -> bool:
    """Whether a normalised id stands for no id at all."""
    return norm == "" or norm.lower() in MISSING_IDS


def normalized(values: Iterable[object]) -> np.ndarray:
    """:func:`normalize_id` of each value (object array), computed once per distinct value."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(values, dtype=object)).astype(str))
    return np.asarray([normalize_id(x) for x in uniques], dtype=object)[codes]


class UnknownIdError(ValueError):
    """A raw user or item id the model has never seen."""


@dataclass(frozen=True, eq=False)
class IdMap:
    """Raw ids (kept as strings, as in the file) <-> contiguous indices 0..n-1.

    Ids are stored and looked up through :func:`normalize_id`: ``index(" 196 ")`` finds ``"196"``.
    """

    ids: np.ndarray  # object array of str, position = index
    _index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids",
                           np.asarray([normalize_id(x) for x in self.ids], dtype=object))
        object.__setattr__(self, "_index", {x: i for i, x in enumerate(self.ids)})
        if len(self._index) != len(self.ids):
            raise ValueError("IdMap: raw ids are not unique")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, raw: object) -> bool:
        return normalize_id(raw) in self._index

    def index(self, raw: object, kind: str = "id") -> int:
        """Index of one raw id; :class:`UnknownIdError` naming it if unknown."""
        try:
            return self._index[normalize_id(raw)]
        except KeyError:
            raise UnknownIdError(f"unknown {kind} id {str(raw)!r}") from None

    def indices(self, raws: Iterable[object], kind: str = "id") -> np.ndarray:
        """Indices of many raw ids (int64); :class:`UnknownIdError` naming the first unknown."""
        return np.fromiter((self.index(r, kind) for r in raws), dtype=np.int64)

    def raw(self, idx: int | np.ndarray) -> str | np.ndarray:
        return self.ids[idx]


@dataclass(eq=False)
class Interactions:
    """Implicit feedback: who interacted with what, and when.

    ``matrix`` is a CSR users x items matrix of ones with sorted column indices; ``timestamps`` and
    ``rows`` (the 0-based data row in the source file) are aligned with ``matrix.data`` and decide
    the leave-last-out order.
    """

    users: IdMap
    items: IdMap
    matrix: sp.csr_matrix
    timestamps: np.ndarray | None = None
    rows: np.ndarray | None = None
    source: str = "<memory>"
    item_names: dict[str, str] | None = None

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    def __repr__(self) -> str:
        return (f"Interactions({self.source!r}, users={self.n_users}, items={self.n_items}, "
                f"interactions={self.nnz})")

    @classmethod
    def from_pairs(
        cls,
        users: Sequence[object],
        items: Sequence[object],
        timestamps: Sequence[float] | None = None,
        user_map: IdMap | None = None,
        item_map: IdMap | None = None,
        source: str = "<memory>",
    ) -> Interactions:
        """Build from parallel sequences of raw ids; duplicates keep the last occurrence.

        Ids go through :func:`normalize_id`; without ``user_map`` / ``item_map`` the maps hold
        the ids in order of first appearance.
        """
        u_raw, i_raw = normalized(users), normalized(items)
        if len(u_raw) != len(i_raw):
            raise ValueError("from_pairs: users and items differ in length")
        user_map = user_map or IdMap(pd.unique(u_raw))
        item_map = item_map or IdMap(pd.unique(i_raw))
        u = user_map.indices(u_raw, "user")
        i = item_map.indices(i_raw, "item")
        ts = None if timestamps is None else np.asarray(timestamps, dtype=np.float64)
        return cls._build(user_map, item_map, u, i, ts, None, source)

    @classmethod
    def from_matrix(cls, matrix: sp.spmatrix, source: str = "<matrix>") -> Interactions:
        """From a users x items sparse matrix, as implicit takes one: every stored positive entry
        is an interaction (implicit reads a negative one as a dislike, so it is left out here
        too), user and item ids are the row and column numbers (``"0"``, ``"1"``, ...; every row
        and column kept), no timestamps."""
        if not sp.issparse(matrix) or matrix.ndim != 2:
            raise ValueError(f"expected a 2-d scipy sparse users x items matrix, got "
                             f"{type(matrix).__name__}")
        coo = matrix.tocoo()
        keep = coo.data > 0
        n_users, n_items = matrix.shape
        return cls._build(IdMap(np.arange(n_users).astype(str)),
                          IdMap(np.arange(n_items).astype(str)), coo.row[keep].astype(np.int64),
                          coo.col[keep].astype(np.int64), None, None, source)

    @classmethod
    def _build(cls, users: IdMap, items: IdMap, u: np.ndarray, i: np.ndarray,
               ts: np.ndarray | None, rows: np.ndarray | None, source: str,
               item_names: dict[str, str] | None = None) -> Interactions:
        """Entries (u[k], i[k]) -> CSR; of duplicate pairs the last one stays. ``rows`` None
        means entry k is data row k."""
        n_items = max(len(items), 1)
        key = np.asarray(u, dtype=np.int64) * n_items  # a new array: the in-place add is safe
        key += i
        # One stable argsort gives both the CSR order (user, then item) and, inside each run of
        # one pair, the file order: the run's last entry is the row to keep (np.unique +
        # lexsort took three sorts and more memory).
        order = np.argsort(key, kind="stable")
        key.sort()  # = key[order], without a second array
        last = np.ones(len(key), dtype=bool)
        np.not_equal(key[1:], key[:-1], out=last[:-1])
        # Row pointers in the sorted keys, less the duplicates dropped before each.
        starts = np.searchsorted(key, np.arange(len(users) + 1, dtype=np.int64) * n_items)
        del key
        indptr = starts - np.searchsorted(np.flatnonzero(~last), starts)
        if not last.all():
            order = order[last]
        del last
        indices = np.asarray(i)[order].astype(np.int32, copy=False)
        ts = None if ts is None else np.asarray(ts)[order]
        rows = order if rows is None else np.asarray(rows)[order].astype(np.int64, copy=False)
        del order
        m = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr),
                          shape=(len(users), len(items)))
        m.has_sorted_indices = True
        return cls(users, items, m, ts, rows, source, item_names)

    def subset(self, mask: np.ndarray) -> Interactions:
        """The same id maps with only the entries where ``mask`` (aligned with data) is True."""
        coo_rows = np.repeat(np.arange(self.n_users), np.diff(self.matrix.indptr))
        return Interactions._build(
            self.users, self.items, coo_rows[mask], self.matrix.indices[mask],
            None if self.timestamps is None else self.timestamps[mask],
            self.rows[mask] if self.rows is not None else np.flatnonzero(mask),
            self.source, self.item_names,
        )

    def time_order(self) -> np.ndarray:
        """Entry indices (into ``matrix.data``) sorted by user, then timestamp, then file row:
        each user's history, oldest first (file order alone when there are no timestamps)."""
        users = np.repeat(np.arange(self.n_users), np.diff(self.matrix.indptr))
        ts = self.timestamps if self.timestamps is not None else np.zeros(self.nnz)
        rows = self.rows if self.rows is not None else np.arange(self.nnz)
        return np.lexsort((rows, ts, users))

    def recency(self) -> np.ndarray:
        """Each entry's place in its user's history, aligned with ``matrix.data``: ``(rank +
        0.5) / degree`` with rank 0 the oldest, so in (0, 1) and above 1/2 for the newer half."""
        order = self.time_order()
        deg = np.diff(self.matrix.indptr)
        users = np.repeat(np.arange(self.n_users), deg)
        out = np.empty(self.nnz)
        # in time order each user's entries are still one contiguous run starting at indptr[u]
        out[order] = (np.arange(self.nnz) - self.matrix.indptr[users] + 0.5) / deg[users]
        return out

    def latest_weights(self, decay: float) -> sp.csr_matrix:
        """Users x items weights over each user's history, newest first: ``decay**r`` for the
        ``r``-th newest entry, each non-empty row summing to 1. ``decay`` 0 is the newest item
        alone, 1 the plain mean of the history."""
        order = self.time_order()
        ip = self.matrix.indptr
        deg = np.diff(ip)
        users = np.repeat(np.arange(self.n_users), deg)
        w = np.empty(self.nnz)
        # in time order, the entry at position k is its user's (indptr[u + 1] - 1 - k)-th newest
        w[order] = float(decay) ** (ip[users + 1] - 1 - np.arange(self.nnz))
        if self.nnz:
            w /= np.repeat(np.add.reduceat(w, ip[:-1][deg > 0]), deg[deg > 0])
        out = sp.csr_matrix((w, self.matrix.indices, ip), shape=self.matrix.shape)
        out.has_sorted_indices = True
        return out

    def transitions(self, window: int = 1) -> Interactions:
        """What follows each item: interactions whose "users" are the items (same ids), item
        ``j`` having liked every item that followed it within ``window`` steps of some user's
        history, at the later item's timestamp (the latest occurrence of a repeated pair)."""
        order = self.time_order()
        users = np.repeat(np.arange(self.n_users), np.diff(self.matrix.indptr))[order]
        seq = self.matrix.indices[order]
        ts = np.zeros(self.nnz) if self.timestamps is None else self.timestamps[order]
        prev, nxt, when, step = [], [], [], []
        for w in range(1, window + 1):
            same = users[w:] == users[:-w]
            prev.append(seq[:-w][same])
            nxt.append(seq[w:][same])
            when.append(ts[w:][same])
            step.append(np.flatnonzero(same) + w)  # the later item's place in time order
        prev, nxt, when, step = (np.concatenate(x) if x else np.empty(0, np.int64)
                                 for x in (prev, nxt, when, step))
        by_time = np.lexsort((step, when))  # so that a repeated pair keeps its latest time
        return Interactions._build(self.items, self.items, prev[by_time], nxt[by_time],
                                   when[by_time], step[by_time], f"{self.source} (transitions)")

    def to_frame(self) -> pd.DataFrame:
        coo = self.matrix.tocoo()
        df = pd.DataFrame({"user": self.users.raw(coo.row), "item": self.items.raw(coo.col)})
        if self.timestamps is not None:
            df["timestamp"] = self.timestamps
        return df
