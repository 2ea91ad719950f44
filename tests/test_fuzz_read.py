"""Fuzzing ``read_ratings``: whatever the bytes, it returns well-formed ``Interactions`` or raises
``ValueError`` (never another exception type), and its fast path (pyarrow) reads what its slow
path (pandas) reads."""

import bz2
import gzip
import io
import lzma
import tempfile
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys_metric import read_ratings, reading
from recsys_metric.data import MISSING_IDS, normalize_id


def zipped(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ratings.csv", data)
    return buf.getvalue()


PACK = {"": lambda b: b, ".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
        ".zip": zipped}
CLEAN_IDS = st.sampled_from(["a", "b", "c", "196", " 7 ", "NA", "ü", "x y", "\ufeffa", '"q"'])
IDS = st.one_of(
    CLEAN_IDS,
    st.sampled_from(["", "  ", "NaN", "null", "None", '"', "a::b", "1,2", "\t"]),
    st.text(max_size=6))
CLEAN_NUMBERS = st.sampled_from(["1", "5", "3.5", " 4", "+2", "1e3", "0"])
NUMBERS = st.one_of(
    CLEAN_NUMBERS,
    st.sampled_from(["inf", "-inf", "nan", "NaN", "", "x", "2000-01-01", "2000-12-02 01:01:07",
                     "0x10", "1_0", "\ufeff3"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**12, 10**12).map(str))


@st.composite
def ratings_files(draw) -> tuple[bytes, bytes, str]:
    """(content, file bytes, file name): ratings-like text (half of the files well-formed),
    sometimes random bytes; the file maybe compressed."""
    if draw(st.integers(0, 9)) == 0:
        data = draw(st.binary(max_size=200))
    else:
        clean = draw(st.booleans())
        ids, numbers = (CLEAN_IDS, CLEAN_NUMBERS) if clean else (IDS, NUMBERS)
        sep = draw(st.sampled_from([",", "\t", ";", "|", "::", " "]))
        ncols = draw(st.integers(2, 4))
        lines = []
        if draw(st.booleans()):
            lines.append(sep.join(["user", "item", "rating", "timestamp"][:ncols]))
        for _ in range(draw(st.integers(1, 12))):
            fields = [draw(ids), draw(ids), draw(numbers), draw(numbers)][:ncols]
            if not clean and draw(st.integers(0, 9)) == 0:  # a ragged line
                fields = fields[:draw(st.integers(1, ncols + 1))]
            bom = "\ufeff" if draw(st.integers(0, 9)) == 0 else ""
            lines.append(bom + sep.join(fields))
        text = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)
        data = (draw(st.sampled_from(["", "\ufeff"])) + text
                + draw(st.sampled_from(["", "\n"]))).encode("utf-8", errors="replace")
    name = draw(st.sampled_from(["r.csv", "u.data", "ratings.dat", "r.tsv"]))
    suffix = draw(st.sampled_from(list(PACK)))
    return data, PACK[suffix](data), name + suffix


def check(d, content: bytes) -> None:
    """The invariants of a read: shapes, sorted unique columns per row, ids used and clean,
    no more entries than lines."""
    lines = content.count(b"\n") + content.count(b"\r") + 1
    assert d.nnz <= lines and (d.nnz == 0 or d.rows.max() < lines)
    m = d.matrix
    assert m.shape == (d.n_users, d.n_items) and d.nnz <= m.shape[0] * m.shape[1]
    assert m.indptr[0] == 0 and np.all(np.diff(m.indptr) >= 1)  # every user has an entry
    for u in range(d.n_users):
        assert np.all(np.diff(m.indices[m.indptr[u]:m.indptr[u + 1]]) > 0)
    assert len(np.unique(m.indices)) == d.n_items  # every item has an entry
    assert len(d.rows) == d.nnz and len(np.unique(d.rows)) == d.nnz and d.rows.min() >= 0
    if d.timestamps is not None:
        assert len(d.timestamps) == d.nnz and np.isfinite(d.timestamps).all()
    for x in (*d.users.ids, *d.items.ids):
        assert x == normalize_id(x) and x and x.lower() not in MISSING_IDS


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ratings_files(), st.sampled_from([None, 3]))
def test_read_ratings_returns_clean_data_or_raises_value_error(file, min_rating):
    content, data, name = file
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            d = read_ratings(path, min_rating=min_rating)
        except ValueError as e:
            assert str(e).startswith(str(path))  # the message names the file
            return
        check(d, content)


def outcome(path: Path):
    try:
        d = read_ratings(path, min_rating=3)
    except ValueError as e:
        return str(e)
    return (list(d.users.ids), list(d.items.ids), d.matrix.indptr.tolist(),
            d.matrix.indices.tolist(), None if d.timestamps is None else d.timestamps.tolist(),
            d.rows.tolist())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ratings_files())
def test_the_fast_path_reads_what_the_slow_path_reads(file):
    """The same data, or the same message, whichever path reads the file."""
    _, data, name = file
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        either = outcome(path)
        with mock.patch.object(reading, "scan_fast", side_effect=reading.Fallback):
            assert outcome(path) == either
