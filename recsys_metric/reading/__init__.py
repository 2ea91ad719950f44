"""Read interaction logs (and item catalogues) into :class:`~recsys_metric.data.Interactions`.

Every user mistake (missing file, unknown column, empty or missing id, non-numeric or infinite
rating, ragged line, corrupt compressed data) raises ``ValueError`` naming the file, the row and
the column, so the CLI can print it and exit 2 instead of showing a traceback.

The flow: :mod:`.files` opens (decompressing by suffix), :mod:`.layout` finds the separator,
header and columns, then :mod:`.arrow` reads the needed columns fast, or :mod:`.frame` reads
the file carefully where the fast way declines; both give a :class:`.layout.Parsed`, which
becomes the id maps and the CSR matrix here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data import IdMap, Interactions, normalized
from .arrow import Fallback, release_arrow_memory, scan_fast
from .files import check_file, is_parquet, open_binary, open_text
from .frame import check_keep, read_frame, scan_frame
from .layout import (
    ID_NAMES,
    ITEM_NAMES,
    RATING_NAMES,
    TIME_NAMES,
    TITLE_NAMES,
    USER_NAMES,
    Parsed,
    find_column,
    pandas_csv,
    read_layout,
    sniff,
)

__all__ = ["open_binary", "open_text", "read_item_names", "read_ratings", "read_table"]


def _first_seen(codes: np.ndarray, ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Renumber ``codes`` in order of first appearance, dropping the ids that no longer occur."""
    present, first = np.unique(codes, return_index=True)
    order = present[np.argsort(first)]
    lut = np.zeros(len(ids), dtype=np.int32)
    lut[order] = np.arange(len(order), dtype=np.int32)
    return lut[codes], [ids[k] for k in order]


def _finish(path: Path, p: Parsed, rcol: str | None, min_rating: float | None
            ) -> Interactions:
    u, i, ts, rows, user_ids, item_ids = p.u, p.i, p.ts, None, p.user_ids, p.item_ids
    if p.keep is not None and not p.keep.all():
        check_keep(path, p.keep, rcol, min_rating)
        rows = np.flatnonzero(p.keep)
        # ids that only filtered-out rows have are not in the maps
        u, user_ids = _first_seen(u[rows], user_ids)
        i, item_ids = _first_seen(i[rows], item_ids)
        ts = None if ts is None else ts[rows]
    return Interactions._build(IdMap(user_ids), IdMap(item_ids), u, i, ts, rows, str(path))


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
        ``u.data``), ``::``-separated (``ratings.dat``; the 4th field may be a date-time with
        colons) or Parquet; optionally compressed (``.gz``, ``.bz2``, ``.xz``, a ``.zip`` of
        one file), the format then named by the suffix before (``ratings.csv.gz``).
    user_col, item_col, rating_col, time_col : column names; found by common names when omitted.
    sep : field separator; sniffed from the first line when omitted.
    min_rating : keep only rows rated at least this (explicit ratings -> implicit feedback);
        by default every row is a positive interaction.

    Returns
    -------
    Interactions
        Ids (stripped of blanks and BOMs) in order of first appearance among the kept rows;
        duplicates of a (user, item) pair keep the last row; ``rows`` are 0-based data rows.

    Raises
    ------
    ValueError
        Naming the file, row and column of the first problem found: an empty or missing id
        (``NaN``, ``null``, ``None``, ...), a rating or timestamp that is not a finite number,
        a ragged line, corrupt compressed data.
    """
    path = Path(path)
    check_file(path)
    names_given = any(c is not None for c in (user_col, item_col, rating_col, time_col))
    layout = read_layout(path, sep, names_given)
    cols = {
        "user": find_column(path, layout.names, user_col, USER_NAMES, "user", True),
        "item": find_column(path, layout.names, item_col, ITEM_NAMES, "item", True),
        "rating": find_column(path, layout.names, rating_col, RATING_NAMES, "rating",
                               min_rating is not None),
        "time": find_column(path, layout.names, time_col, TIME_NAMES, "timestamp", False),
    }
    pos = {role: layout.names.index(c) for role, c in cols.items() if c is not None}
    try:
        parsed = scan_fast(path, layout, pos, min_rating)
    except Fallback:
        parsed = scan_frame(path, layout, pos, min_rating)
    data = _finish(path, parsed, cols["rating"], min_rating)
    del parsed  # its arrays may live in Arrow's pool: give that memory back now
    release_arrow_memory()
    return data


def read_table(path: Path, sep: str | None, names_given: bool = False
                ) -> tuple[pd.DataFrame, int]:
    """Every column as text (Parquet: as stored), named; and the file line of data row 0."""
    layout = read_layout(path, sep, names_given)
    return read_frame(path, layout), layout.first_line


def read_item_names(path: str | Path) -> dict[str, str]:
    """Item id -> readable name from a catalogue file (``items.csv``, MovieLens ``movies.csv``
    or ``u.item``), optionally compressed like :func:`read_ratings`' files.

    Parameters
    ----------
    path : the catalogue.

    Returns
    -------
    dict
        Normalised item id (:func:`normalize_id`) -> name.
    """
    path = Path(path)
    check_file(path)
    if not is_parquet(path) and sniff(path) == ("|", False):
        # MovieLens 100K u.item: id|title|date|..., in Latin-1
        with open_binary(path) as f:
            df = pandas_csv(path, f, "|", False, encoding="latin-1")
        return dict(zip(normalized(df[0]), df[1].str.strip(), strict=True))
    df, _ = read_table(path, None)
    id_col = find_column(path, df, None, ID_NAMES, "item id", True)
    name_col = find_column(path, df, None, TITLE_NAMES, "item name", True)
    return dict(zip(normalized(df[id_col]), df[name_col].astype(str), strict=True))
