"""The fast way to read a file: pyarrow, only the needed columns, ids dictionary-encoded (each
distinct id stored once: about 60 bytes per row at peak, ``experiments/results/ingest.md``).

It accepts well-formed files only and never words a data error itself: anything unusual (a
conversion error, a missing id, a non-finite number, an odd format) raises :class:`Fallback`,
and :mod:`.frame` reads the file instead, so a message never depends on which way read it.
pyarrow is imported here only, lazily: the package imports without it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..data import BLANK, MISSING_OR_EMPTY
from .files import open_binary, parquet_source
from .layout import Layout, Parsed


class Fallback(Exception):
    """The fast path cannot read this file as it is: the slow path will."""


# Bytes per pyarrow block (one batch). pyarrow queues up to 32 blocks read ahead, so this
# bounds the read buffers (128 MiB); smaller blocks cost more in per-batch dictionaries (5 M
# rows, experiments/bench_ingest.py: 1 MiB peaked at 67 bytes per row, 4 MiB at 56).
_BLOCK = 4 << 20


class _IdColumn:
    """A column of ids read batch by batch: each batch's dictionary (its distinct raw ids, in
    order of first appearance) is normalised as it comes; :meth:`finish` unifies them."""

    def __init__(self) -> None:
        self.chunks: list = []

    def add(self, arr) -> None:
        """Append an Arrow array of ids (dictionary-encoded or not); :class:`Fallback` at a
        null, empty or missing id."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if arr.null_count:
            raise Fallback()
        if not pa.types.is_dictionary(arr.type):
            arr = pc.dictionary_encode(arr)
        values = arr.dictionary
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            # a Parquet column of numbers: the text pandas gives them, as before
            values = pa.array(values.to_pandas().astype(str).tolist(), type=pa.string())
        norm = pc.utf8_trim(values.cast(pa.string()), BLANK)  # = normalize_id
        if pc.any(pc.is_in(pc.utf8_lower(norm), value_set=pa.array(MISSING_OR_EMPTY))).as_py():
            raise Fallback()
        indices = arr.indices.cast(pa.int32())
        distinct = pc.unique(norm)
        if len(distinct) < len(norm):  # ids alike once normalised (" a", "a"): one entry
            indices = pc.take(pc.index_in(norm, value_set=distinct), indices)
            norm = distinct
        self.chunks.append(pa.DictionaryArray.from_arrays(indices, norm))

    def finish(self) -> tuple[list[str], np.ndarray]:
        """The distinct ids in order of first appearance, and each row's int32 code."""
        import pyarrow as pa

        # one dictionary for all batches, in order of first appearance
        unified = pa.chunked_array(self.chunks).unify_dictionaries()
        self.chunks.clear()
        ids = unified.chunk(0).dictionary.to_pylist()
        return ids, _concat([c.indices for c in unified.chunks])


def _finite(arr):
    """An Arrow array of numbers as float64, all finite (else :class:`Fallback`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if arr.null_count or not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        raise Fallback()
    arr = arr.cast(pa.float64())
    if not pc.all(pc.is_finite(arr)).as_py():
        raise Fallback()
    return arr


class _Watch:
    """A stream that counts the quotes and newlines read through it and keeps the last bytes,
    to check pyarrow's reading of quotes afterwards."""

    KEEP = 1 << 16

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.tail, self.quotes, self.newlines = f, b"", 0, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.quotes += data.count(b'"')
        self.newlines += data.count(b"\n")
        self.tail = (self.tail + data[-self.KEEP:])[-self.KEEP:]
        return data

    def __getattr__(self, name: str):
        return getattr(self.f, name)

    def quotes_read_as_pandas(self, rows: int, header: bool, sep: str) -> bool:
        """Whether pyarrow's ``rows`` are surely pandas' rows. pyarrow silently closes a quote
        left open at the end of the file (pandas fails), even one opened many lines before:
        with quotes in the file, every line must be one row (no quoted newline, no blank
        line) and the last line must not end inside quotes."""
        if not self.quotes:
            return True
        lines = self.newlines + (not self.tail.endswith(b"\n"))
        return lines == rows + header and not _open_quote_at_end(self.tail, sep)


def _open_quote_at_end(tail: bytes, sep: str) -> bool:
    """Whether the file (its last bytes: ``tail``, every newline in it a row's end) ends inside a
    quoted field; a last line longer than the tail counts as open (the slow path decides)."""
    text = tail.decode("utf-8", errors="replace").rstrip("\r\n")
    cut = max(text.rfind("\n"), text.rfind("\r"))
    if cut < 0 and len(tail) >= _Watch.KEEP:
        return True
    inside, field_start, k, line = False, True, 0, text[cut + 1:]
    while k < len(line):
        c = line[k]
        if inside and c == '"':
            if line[k + 1:k + 2] == '"':
                k += 1  # a doubled quote inside quotes is a quote
            else:
                inside = False
        elif not inside and c == '"' and field_start:
            inside = True
        field_start = not inside and c == sep
        k += 1
    return inside


def _csv_batches(path: Path, layout: Layout, columns: dict[int, bool]) -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = [f"c{k}" for k in range(len(layout.names))]
    types = {names[k]: pa.dictionary(pa.int32(), pa.string()) if is_id else pa.float64()
             for k, is_id in columns.items()}
    # one thread: as fast on 2 cores (measured), and the memory does not grow with the cores
    read = pacsv.ReadOptions(column_names=names, skip_rows=int(layout.header),
                             block_size=_BLOCK, use_threads=False)
    # no null values: an empty rating fails conversion instead of reading as missing
    convert = pacsv.ConvertOptions(include_columns=list(types), column_types=types,
                                   null_values=[], strings_can_be_null=False)
    rows = 0
    with open_binary(path) as raw:
        f = _Watch(raw)
        for batch in pacsv.open_csv(f, read_options=read, convert_options=convert,
                                    parse_options=pacsv.ParseOptions(delimiter=layout.sep)):
            rows += batch.num_rows
            yield {k: batch.column(names[k]) for k in columns}
    if not f.quotes_read_as_pandas(rows, layout.header, layout.sep):
        raise Fallback()


def _dcolon_batches(path: Path, layout: Layout, columns: dict[int, bool]) -> Iterator[dict]:
    """``::`` files: whole lines (a control character as the delimiter, no quoting), split on
    ``::`` into at most 4 fields, so a time field keeps its colons."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    n = len(layout.names)
    read = pacsv.ReadOptions(column_names=["line"], skip_rows=int(layout.header),
                             block_size=_BLOCK, use_threads=False)
    parse = pacsv.ParseOptions(delimiter="\x1f", quote_char=False)
    convert = pacsv.ConvertOptions(column_types={"line": pa.string()}, null_values=[],
                                   strings_can_be_null=False)
    with open_binary(path) as f:
        for batch in pacsv.open_csv(f, read_options=read, parse_options=parse,
                                    convert_options=convert):
            fields = pc.split_pattern(batch.column(0), "::", max_splits=3)
            span = pc.min_max(pc.list_value_length(fields))
            if span["min"].as_py() != n or span["max"].as_py() != n:
                raise Fallback()  # the slow path names the line
            # numbers trimmed of spaces and tabs, as pyarrow's CSV conversion does
            yield {k: pc.list_element(fields, k) if is_id else
                   pc.cast(pc.utf8_trim(pc.list_element(fields, k), " \t"), pa.float64())
                   for k, is_id in columns.items()}


def _parquet_batches(path: Path, layout: Layout, columns: dict[int, bool]) -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = {k: layout.names[k] for k in columns}
    for batch in pq.ParquetFile(parquet_source(path)).iter_batches(
            batch_size=1 << 20, columns=list(names.values())):
        out = {k: batch.column(name) for k, name in names.items()}
        # a categorical's dictionary may list ids no row has: decode, and encode what is there
        yield {k: a.dictionary_decode() if pa.types.is_dictionary(a.type) else a
               for k, a in out.items()}


def _arrow_batches(path: Path, layout: Layout, columns: dict[int, bool]) -> Iterator[dict]:
    """Per batch, the needed columns ``{position: Arrow array}`` (``columns``: position ->
    whether it holds ids)."""
    if layout.sep is None:
        return _parquet_batches(path, layout, columns)
    if layout.sep == "::":
        return _dcolon_batches(path, layout, columns)
    if len(layout.sep) == 1:
        return _csv_batches(path, layout, columns)
    raise Fallback()  # a regular expression (r"\s+"): pandas only


def _concat(chunks: list) -> np.ndarray:
    """One numpy array of Arrow chunks. Per-row data stays in Arrow's memory pool (returned
    to the system when freed) rather than in many mid-sized mallocs, which the C heap keeps
    after they are freed."""
    import pyarrow as pa

    out = pa.concat_arrays(chunks).to_numpy(zero_copy_only=False)
    chunks.clear()  # free the chunks before the next column is joined
    return out


def release_arrow_memory() -> None:
    """Return the memory Arrow's pool keeps for reuse to the system (if pyarrow is loaded)."""
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pa.default_memory_pool().release_unused()


def scan_fast(path: Path, layout: Layout, pos: dict[str, int],
               min_rating: float | None) -> Parsed:
    """Read the columns at ``pos`` (role -> position) with pyarrow; :class:`Fallback` on
    anything unusual, from a conversion error to an empty id."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError:  # without pyarrow, text files are still read (by pandas, slowly)
        raise Fallback() from None
    columns: dict[int, bool] = {}
    for role, k in pos.items():
        if columns.setdefault(k, role in ("user", "item")) != (role in ("user", "item")):
            raise Fallback()  # one column read both as ids and as numbers
    users, items = _IdColumn(), _IdColumn()
    ts: list = []
    keep: list = []
    try:
        for batch in _arrow_batches(path, layout, columns):
            users.add(batch[pos["user"]])
            items.add(batch[pos["item"]])
            if "rating" in pos:  # validated even when unused; only the kept mask is stored
                ratings = _finite(batch[pos["rating"]])
                if min_rating is not None:
                    keep.append(pc.greater_equal(ratings, min_rating))
            if "time" in pos:
                ts.append(_finite(batch[pos["time"]]))
    except pa.ArrowException:  # its row numbers are not trusted: the slow path finds it
        raise Fallback() from None
    if not sum(map(len, users.chunks)):
        raise Fallback()  # no data rows: the slow path says so
    parsed = Parsed(*users.finish(), *items.finish(), _concat(ts) if ts else None,
                     _concat(keep) if keep else None)
    release_arrow_memory()  # the batches' memory, before the big sort
    return parsed


def same_field_counts(path: Path, layout: Layout) -> bool:
    """Whether every line has the first line's number of fields (a pyarrow parse that converts
    nothing; False where pyarrow cannot tell)."""
    if layout.sep is None or layout.sep == "::":
        return True  # Parquet; the '::' reader checks the counts itself
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:
        return False
    if len(layout.sep) != 1:
        return False
    names = [f"c{k}" for k in range(len(layout.names))]
    read = pacsv.ReadOptions(column_names=names, skip_rows=int(layout.header),
                             block_size=_BLOCK, use_threads=False)
    convert = pacsv.ConvertOptions(include_columns=names[:1], column_types={names[0]: pa.binary()})
    try:
        with open_binary(path) as f:
            for _ in pacsv.open_csv(f, read_options=read, convert_options=convert,
                                    parse_options=pacsv.ParseOptions(delimiter=layout.sep)):
                pass
    except pa.ArrowException:
        return False
    return True
