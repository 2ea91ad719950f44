"""The careful way to read a file: pandas, text columns, checked one by one, so that a problem
is reported with its row and column; it also reads what :mod:`.arrow` does not (a regular
expression separator, dates in the time column, quoted oddities)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import is_missing, normalize_id
from .arrow import same_field_counts
from .files import error, open_binary, open_text, parquet_source
from .layout import Layout, Parsed, pandas_csv


def _split_dcolon(path: Path, layout: Layout, usecols: list[int]) -> pd.DataFrame:
    """A ``::`` file's lines split into at most 4 fields (the last keeps its colons, as in
    ``2000-12-02 01:01:07``); blank lines are skipped, as pandas does."""
    n, rows = len(layout.names), []
    with open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or (layout.header and line_no == 1):
                continue
            fields = line.split("::", 3)
            if len(fields) != n:
                raise error(path, f"row {line_no}: expected {n} fields separated by '::', "
                                   f"got {len(fields)}")
            rows.append([fields[k] for k in usecols])
    return pd.DataFrame(rows, columns=range(len(usecols)), dtype=object)


def read_frame(path: Path, layout: Layout, usecols: list[int] | None = None) -> pd.DataFrame:
    """The columns at ``usecols`` (sorted; all by default) as text (Parquet: as stored), one row
    per data row, named by the layout."""
    if layout.sep is None:
        try:
            return pd.read_parquet(parquet_source(path), columns=None if usecols is None
                                   else [layout.names[k] for k in usecols])
        except Exception as e:  # pyarrow raises many types for a corrupt file
            raise error(path, f"cannot read Parquet: {e}") from None
    if layout.sep == "::":
        df = _split_dcolon(path, layout, list(range(len(layout.names)))
                           if usecols is None else usecols)
    else:
        with open_binary(path) as f:
            # the python engine reads a missing trailing field as NaN, the C engine as ""
            df = pandas_csv(path, f, layout.sep, layout.header, usecols=usecols).fillna("")
    keys = range(df.shape[1]) if usecols is None else usecols
    df.columns = [layout.names[k] if k < len(layout.names) else f"col{k}" for k in keys]
    return df


def _frame_ids(path: Path, raw: pd.Series, col: str, first_line: int
               ) -> tuple[list[str], np.ndarray]:
    """The distinct normalised ids of a column in order of first appearance, and each row's
    code; ValueError at the first empty or missing id."""
    null = raw.isna().to_numpy()
    codes, uniques = pd.factorize(raw.astype(str))
    norm = np.asarray([normalize_id(x) for x in uniques], dtype=object)
    bad = null | np.fromiter(map(is_missing, norm), dtype=bool, count=len(norm))[codes]
    if bad.any():
        r = int(np.argmax(bad))
        what = ("missing id (null)" if null[r] else "empty id" if norm[codes[r]] == ""
                else f"missing id {norm[codes[r]]!r}")
        raise error(path, f"row {r + first_line}, column {col!r}: {what}")
    merged, ids = pd.factorize(norm)  # " a" and "a" are one id
    return list(ids), merged.astype(np.int32)[codes]


def _non_finite(text: str) -> bool:
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


def _epoch_seconds(dates: pd.Series) -> np.ndarray:
    if dates.dt.tz is None:
        dates = dates.dt.tz_localize("UTC")
    epoch = pd.Timestamp(0, tz="UTC")  # unit-agnostic: pandas 3 may parse to seconds
    return ((dates - epoch) / pd.Timedelta(seconds=1)).to_numpy(np.float64)


def _numeric(path: Path, raw: pd.Series, col: str, first_line: int, allow_dates: bool
             ) -> np.ndarray:
    """float64 values of a column, all finite; dates (``allow_dates``, every value a date) as
    seconds since the epoch (UTC). ValueError at the first bad value."""
    if pd.api.types.is_datetime64_any_dtype(raw):  # a Parquet timestamp column
        return _epoch_seconds(raw)
    numbers = pd.to_numeric(raw, errors="coerce")
    values = numbers.to_numpy(np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any() and allow_dates and numbers.isna().all():
        dates = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
        if dates.notna().all():
            return _epoch_seconds(dates)
        bad = dates.isna().to_numpy()
    if bad.any():
        r = int(np.argmax(bad))
        text = str(raw.iloc[r])
        kind = "a finite number" if _non_finite(text) else "a number"
        raise error(path, f"row {r + first_line}, column {col!r}: expected {kind}, got {text!r}")
    return values


def check_keep(path: Path, keep: np.ndarray, rcol: str, min_rating: float) -> None:
    if not keep.any():
        raise error(path, f"no row has {rcol} >= {min_rating}")


def scan_frame(path: Path, layout: Layout, pos: dict[str, int], min_rating: float | None
                ) -> Parsed:
    """Read with pandas and validate column by column: ids, ratings, timestamps. Only the
    needed columns are read, unless a line has another number of fields: pandas lets those
    through when it reads some columns only, and names them when it reads all."""
    keys = sorted(set(pos.values()))
    all_columns = not same_field_counts(path, layout)
    df = read_frame(path, layout, None if all_columns else keys)
    if len(df) == 0:
        raise error(path, "no data rows")
    first = layout.first_line

    def column(role: str) -> tuple[pd.Series, str]:
        k = pos[role]
        return df.iloc[:, k if all_columns else keys.index(k)], layout.names[k]

    user_ids, u = _frame_ids(path, *column("user"), first)
    item_ids, i = _frame_ids(path, *column("item"), first)
    keep = None
    if "rating" in pos:
        ratings = _numeric(path, *column("rating"), first, allow_dates=False)
        if min_rating is not None:
            keep = ratings >= min_rating
            check_keep(path, keep, layout.names[pos["rating"]], min_rating)
    ts = _numeric(path, *column("time"), first, allow_dates=True) if "time" in pos else None
    return Parsed(user_ids, u, item_ids, i, ts, keep)
