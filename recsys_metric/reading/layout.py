"""What a file looks like: its separator, whether it has a header, its columns, and which
column holds the users, items, ratings and times; and :class:`Parsed`, what either way of
reading it (:mod:`.arrow`, :mod:`.frame`) returns."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from ..data import BLANK, normalize_id
from .files import error, is_parquet, open_binary, open_text, parquet_source

USER_NAMES = ("user", "userid", "user_id", "users", "uid")
ITEM_NAMES = ("item", "itemid", "item_id", "movieid", "movie_id", "movie", "iid", "items")
RATING_NAMES = ("rating", "ratings", "score", "value", "weight")
TIME_NAMES = ("timestamp", "ts", "time", "datetime", "date")
ID_NAMES = ITEM_NAMES + ("id",)
TITLE_NAMES = ("title", "name", "item_name", "movie_title")
# Column order of headerless files: MovieLens u.data (TSV) and ratings.dat ("::").
HEADERLESS = ("user", "item", "rating", "timestamp")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def sniff(path: Path, names_given: bool = False) -> tuple[str, bool]:
    """Guess the separator, and whether the first line is a header: it names a known column,
    columns were named by the caller, or a field is text where the next line has a number."""
    with open_text(path) as f:
        first, second = f.readline().strip(BLANK), f.readline().strip(BLANK)
    if not first:
        raise error(path, "file is empty")
    for sep in ("::", "\t", ",", ";", "|"):
        if sep in first:
            break
    else:
        sep = r"\s+"

    def fields(line: str) -> list[str]:
        return [x.strip(BLANK).strip('"')
                for x in (line.split() if sep == r"\s+" else line.split(sep))]

    known = USER_NAMES + ITEM_NAMES + RATING_NAMES + TIME_NAMES + TITLE_NAMES + ("id",)
    head, nxt = fields(first), fields(second)
    header = (names_given or any(f.lower() in known for f in head)
              or any(not _is_number(a) and _is_number(b) for a, b in zip(head, nxt, strict=False)))
    return sep, header


@dataclass(frozen=True)
class Layout:
    """A file's separator (None: Parquet), whether line 1 is a header, and its column names
    (normalised; :data:`HEADERLESS` names by position without a header)."""

    sep: str | None
    header: bool
    names: list[str]

    @property
    def first_line(self) -> int:
        """The 1-based file line of data row 0 (Parquet rows count from 1)."""
        return 2 if self.header and self.sep is not None else 1


@dataclass
class Parsed:
    """The needed columns, compact: ids as int32 codes into the distinct normalised ids (in
    order of first appearance), timestamps, and the rows ``min_rating`` keeps."""

    user_ids: list[str]
    u: np.ndarray
    item_ids: list[str]
    i: np.ndarray
    ts: np.ndarray | None
    keep: np.ndarray | None


def pandas_csv(path: Path, f: BinaryIO, sep: str, header: bool, encoding: str = "utf-8",
                **kw) -> pd.DataFrame:
    """``pandas.read_csv`` of text columns; its parse errors named after the file."""
    try:
        return pd.read_csv(f, sep=sep, engine="python" if len(sep) > 1 else "c", dtype=str,
                           keep_default_na=False, header=0 if header else None,
                           encoding=encoding, encoding_errors="replace", **kw)
    except pd.errors.EmptyDataError:
        raise error(path, "file is empty") from None
    except (ValueError, csv.Error) as e:  # pandas.errors.ParserError is a ValueError
        raise error(path, f"cannot parse: {e}") from None


def _parquet_names(path: Path) -> list[str]:
    source = parquet_source(path)
    try:
        import pyarrow.parquet as pq

        schema = pq.read_schema(source)
    except ImportError:
        raise error(path, "reading Parquet needs pyarrow (pip install pyarrow)") from None
    except Exception as e:  # pyarrow raises many types for a corrupt file
        raise error(path, f"cannot read Parquet: {e}") from None
    index = {c for c in (schema.pandas_metadata or {}).get("index_columns", [])
             if isinstance(c, str)}  # a stored pandas index is no column of the data
    return [n for n in schema.names if n not in index]


def read_layout(path: Path, sep: str | None, names_given: bool) -> Layout:
    if is_parquet(path):
        return Layout(None, True, _parquet_names(path))
    sniffed, header = sniff(path, names_given)
    sep = sep or sniffed
    if sep == "::":
        with open_text(path) as f:
            fields = f.readline().rstrip("\r\n").split("::", 3)
    else:  # pandas reads the header, so names (deduplicated, "Unnamed: k") are as before
        with open_binary(path) as f:
            fields = list(pandas_csv(path, f, sep, header, nrows=0 if header else 1).columns)
    if header:
        return Layout(sep, True, [normalize_id(x) for x in fields])
    return Layout(sep, False, [HEADERLESS[k] if k < len(HEADERLESS) else f"col{k}"
                                for k in range(len(fields))])


def find_column(path: Path, columns: Iterable, given: str | None, names: tuple, role: str,
                 required: bool) -> str | None:
    """The column for ``role``: ``given`` (checked), else the first of ``names`` present
    (any case). ``columns``: names, or a DataFrame."""
    columns = list(columns)
    if given is not None:
        if given not in columns:
            raise error(path, f"no column {given!r} for the {role}; columns are "
                               f"{', '.join(map(str, columns))}")
        return given
    lower = {str(c).lower(): c for c in columns}
    for n in names:
        if n in lower:
            return lower[n]
    if required:
        raise error(path, f"cannot find the {role} column (tried {', '.join(names)}); "
                           f"columns are {', '.join(map(str, columns))}; name it explicitly")
    return None
