"""Read interaction logs into ``Interactions``: id maps plus a sorted user x item CSR matrix.

Every user mistake (missing file, unknown column, empty id, non-numeric rating) raises
``ValueError`` with a message naming the file, the row and the column, so the CLI can print it
and exit 2 instead of showing a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

USER_NAMES = ("user", "userid", "user_id", "users", "uid")
ITEM_NAMES = ("item", "itemid", "item_id", "movieid", "movie_id", "movie", "iid", "items")
RATING_NAMES = ("rating", "ratings", "score", "value", "weight")
TIME_NAMES = ("timestamp", "ts", "time", "datetime", "date")
ID_NAMES = ITEM_NAMES + ("id",)
TITLE_NAMES = ("title", "name", "item_name", "movie_title")
# Column order of headerless files: MovieLens u.data (TSV) and ratings.dat ("::").
HEADERLESS = ("user", "item", "rating", "timestamp")


class UnknownIdError(ValueError):
    """A raw user or item id the model has never seen."""


@dataclass(frozen=True, eq=False)
class IdMap:
    """Raw ids (kept as strings, as in the file) <-> contiguous indices 0..n-1."""

    ids: np.ndarray  # object array of str, position = index
    _index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", np.asarray([str(x) for x in self.ids], dtype=object))
        object.__setattr__(self, "_index", {x: i for i, x in enumerate(self.ids)})
        if len(self._index) != len(self.ids):
            raise ValueError("IdMap: raw ids are not unique")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, raw: object) -> bool:
        return str(raw) in self._index

    def index(self, raw: object, kind: str = "id") -> int:
        """Index of one raw id; :class:`UnknownIdError` naming it if unknown."""
        try:
            return self._index[str(raw)]
        except KeyError:
            raise UnknownIdError(f"unknown {kind} id {str(raw)!r}") from None

    def indices(self, raws: Iterable[object], kind: str = "id") -> np.ndarray:
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
        """Build from parallel sequences of raw ids; duplicates keep the last occurrence."""
        u_raw = pd.Series(np.asarray(users, dtype=object)).astype(str)
        i_raw = pd.Series(np.asarray(items, dtype=object)).astype(str)
        if len(u_raw) != len(i_raw):
            raise ValueError("from_pairs: users and items differ in length")
        user_map = user_map or IdMap(pd.unique(u_raw))
        item_map = item_map or IdMap(pd.unique(i_raw))
        u = user_map.indices(u_raw, "user")
        i = item_map.indices(i_raw, "item")
        ts = None if timestamps is None else np.asarray(timestamps, dtype=np.float64)
        return cls._build(user_map, item_map, u, i, ts, np.arange(len(u)), source)

    @classmethod
    def _build(cls, users, items, u, i, ts, rows, source, item_names=None) -> Interactions:
        # Keep the last row of each (user, item) pair, then sort by (user, item) = CSR order.
        key = u.astype(np.int64) * max(len(items), 1) + i
        _, last_from_end = np.unique(key[::-1], return_index=True)
        keep = np.sort(len(key) - 1 - last_from_end)
        order = keep[np.lexsort((i[keep], u[keep]))]
        u, i, rows = u[order], i[order], rows[order]
        ts = None if ts is None else ts[order]
        indptr = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(np.bincount(u, minlength=len(users)), out=indptr[1:])
        m = sp.csr_matrix(
            (np.ones(len(i), dtype=np.float32), i.astype(np.int32), indptr),
            shape=(len(users), len(items)),
        )
        m.has_sorted_indices = True
        return cls(users, items, m, ts, rows.astype(np.int64), source, item_names)

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


def _error(path: Path, msg: str) -> ValueError:
    return ValueError(f"{path}: {msg}")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _sniff(path: Path, names_given: bool = False) -> tuple[str, bool]:
    """Guess the separator, and whether the first line is a header: it names a known column,
    columns were named by the caller, or a field is text where the next line has a number."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first, second = f.readline().strip(), f.readline().strip()
    if not first:
        raise _error(path, "file is empty")
    for sep in ("::", "\t", ",", ";", "|"):
        if sep in first:
            break
    else:
        sep = r"\s+"

    def fields(line: str) -> list[str]:
        return [x.strip().strip('"') for x in (line.split() if sep == r"\s+" else line.split(sep))]

    known = USER_NAMES + ITEM_NAMES + RATING_NAMES + TIME_NAMES + TITLE_NAMES + ("id",)
    head, nxt = fields(first), fields(second)
    header = (names_given or any(f.lower() in known for f in head)
              or any(not _is_number(a) and _is_number(b) for a, b in zip(head, nxt, strict=False)))
    return sep, header


def _read_table(path: Path, sep: str | None, names_given: bool = False
                ) -> tuple[pd.DataFrame, int]:
    """Read every column as text; returns the frame and the file line of data row 0 (1-based)."""
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises many types for a corrupt file
            raise _error(path, f"cannot read Parquet: {e}") from None
        return df, 1
    sniffed, header = _sniff(path, names_given)
    sep = sep or sniffed
    kw = dict(dtype=str, keep_default_na=False, header=0 if header else None)
    try:
        if sep == "::":  # multi-char separators force pandas' slow python engine; split on ':'
            df = pd.read_csv(path, sep=":", **kw, encoding_errors="replace")
            df = df.iloc[:, ::2]
        else:
            df = pd.read_csv(path, sep=sep, engine="python" if len(sep) > 1 else "c", **kw,
                             encoding_errors="replace")
    except pd.errors.ParserError as e:
        raise _error(path, f"cannot parse: {e}") from None
    except pd.errors.EmptyDataError:
        raise _error(path, "file is empty") from None
    if not header:
        df.columns = [HEADERLESS[k] if k < len(HEADERLESS) else f"col{k}"
                      for k in range(df.shape[1])]
    df.columns = [str(c).strip() for c in df.columns]
    return df, 2 if header else 1


def _find_column(path: Path, df: pd.DataFrame, given: str | None, names: tuple, role: str,
                 required: bool) -> str | None:
    if given is not None:
        if given not in df.columns:
            raise _error(path, f"no column {given!r} for the {role}; columns are "
                               f"{', '.join(map(str, df.columns))}")
        return given
    lower = {str(c).lower(): c for c in df.columns}
    for n in names:
        if n in lower:
            return lower[n]
    if required:
        raise _error(path, f"cannot find the {role} column (tried {', '.join(names)}); "
                           f"columns are {', '.join(map(str, df.columns))}; name it explicitly")
    return None


def _numeric(path: Path, df: pd.DataFrame, col: str, first_line: int, allow_dates: bool
             ) -> np.ndarray:
    raw = df[col]
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any() and allow_dates and bad.all():
        dates = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
        if dates.notna().all():
            epoch = pd.Timestamp(0, tz="UTC")  # unit-agnostic: pandas 3 may parse to seconds
            return ((dates - epoch) / pd.Timedelta(seconds=1)).to_numpy(np.float64)
        bad = dates.isna().to_numpy()
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise _error(path, f"row {r + first_line}, column {col!r}: "
                           f"expected a number, got {str(raw.iloc[r])!r}")
    return values.to_numpy(np.float64)


def read_ratings(
    path: str | Path,
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    time_col: str | None = None,
    sep: str | None = None,
    min_rating: float | None = None,
) -> Interactions:
    """Read a ratings / interactions file into :class:`Interactions`.

    Parameters
    ----------
    path : CSV with a header (``userId,movieId,rating,timestamp``), headerless TSV (MovieLens
        ``u.data``), ``::``-separated (``ratings.dat``) or Parquet.
    user_col, item_col, rating_col, time_col : column names; found by common names when omitted.
    sep : field separator; sniffed from the first line when omitted.
    min_rating : keep only rows rated at least this (explicit ratings -> implicit feedback);
        by default every row is a positive interaction.

    Raises
    ------
    ValueError
        Naming the file, row and column of the first problem found.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    names_given = any(c is not None for c in (user_col, item_col, rating_col, time_col))
    df, first_line = _read_table(path, sep, names_given)
    if len(df) == 0:
        raise _error(path, "no data rows")
    ucol = _find_column(path, df, user_col, USER_NAMES, "user", True)
    icol = _find_column(path, df, item_col, ITEM_NAMES, "item", True)
    rcol = _find_column(path, df, rating_col, RATING_NAMES, "rating", min_rating is not None)
    tcol = _find_column(path, df, time_col, TIME_NAMES, "timestamp", False)

    for col in (ucol, icol):
        ids = df[col].astype(str).str.strip()
        empty = df[col].isna().to_numpy() | (ids == "").to_numpy()
        if empty.any():
            r = int(np.flatnonzero(empty)[0])
            raise _error(path, f"row {r + first_line}, column {col!r}: empty id")
        df[col] = ids
    keep = np.ones(len(df), dtype=bool)
    if rcol is not None:
        ratings = _numeric(path, df, rcol, first_line, allow_dates=False)
        if min_rating is not None:
            keep = ratings >= min_rating
            if not keep.any():
                raise _error(path, f"no row has {rcol} >= {min_rating}")
    ts = _numeric(path, df, tcol, first_line, allow_dates=True) if tcol else None

    rows = np.flatnonzero(keep)
    u_raw, i_raw = df[ucol].to_numpy()[keep], df[icol].to_numpy()[keep]
    users, items = IdMap(pd.unique(u_raw)), IdMap(pd.unique(i_raw))
    u = pd.Index(users.ids).get_indexer(u_raw)
    i = pd.Index(items.ids).get_indexer(i_raw)
    return Interactions._build(users, items, u, i, None if ts is None else ts[keep], rows,
                               str(path))


def read_item_names(path: str | Path) -> dict[str, str]:
    """Item id -> readable name from a catalogue file (``items.csv``, MovieLens ``movies.csv``
    or ``u.item``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    sep, header = _sniff(path)
    if sep == "|" and not header:  # MovieLens 100K u.item: id|title|date|...
        df = pd.read_csv(path, sep="|", header=None, dtype=str, encoding="latin-1",
                         keep_default_na=False)
        return dict(zip(df[0].str.strip(), df[1].str.strip(), strict=True))
    df, _ = _read_table(path, None)
    id_col = _find_column(path, df, None, ID_NAMES, "item id", True)
    name_col = _find_column(path, df, None, TITLE_NAMES, "item name", True)
    return dict(zip(df[id_col].astype(str).str.strip(), df[name_col].astype(str), strict=True))
