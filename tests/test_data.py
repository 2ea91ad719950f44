import bz2
import gzip
import io
import lzma
import zipfile
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from recsys_metric import IdMap, Interactions, read_item_names, read_ratings, reading
from recsys_metric.data import UnknownIdError

from .conftest import ROOT, SHARED


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_with_header_string_ids_and_duplicates_keep_last(tmp_path):
    p = write(tmp_path, "r.csv", "userId,movieId,rating,timestamp\n"
              "a,x,5,10\na,y,3,11\nb,x,4,12\na,x,2,13\n")
    d = read_ratings(p)
    assert (d.n_users, d.n_items, d.nnz) == (2, 2, 3)
    assert list(d.users.ids) == ["a", "b"] and list(d.items.ids) == ["x", "y"]
    a, x = d.users.index("a"), d.items.index("x")
    k = d.matrix.indptr[a] + list(d.matrix[a].indices).index(x)
    assert d.timestamps[k] == 13 and d.rows[k] == 3  # the last duplicate row wins
    assert d.matrix.has_sorted_indices


def test_headerless_tsv_like_ml100k(tmp_path):
    p = write(tmp_path, "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    d = read_ratings(p)
    assert d.nnz == 2 and "196" in d.users and d.users.index(196) == 0


def test_double_colon_like_ml1m(tmp_path):
    p = write(tmp_path, "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    d = read_ratings(p)
    assert d.nnz == 2 and list(d.items.ids) == ["1193", "661"]
    assert list(d.timestamps) == [978300760.0, 978302109.0]


def test_parquet(tmp_path):
    p = tmp_path / "r.parquet"
    pd.DataFrame({"user_id": [1, 2], "item_id": ["a", "b"], "rating": [1.0, 5.0]}).to_parquet(p)
    d = read_ratings(p, min_rating=4)
    assert d.nnz == 1 and list(d.users.ids) == ["2"]


def test_min_rating_filters(tmp_path):
    p = write(tmp_path, "r.csv", "user,item,rating\na,x,5\na,y,3\nb,x,4\n")
    assert read_ratings(p, min_rating=4).nnz == 2
    assert read_ratings(p).nnz == 3


def test_explicit_columns_and_dates(tmp_path):
    p = write(tmp_path, "r.csv", "who;what;when\na;x;2024-01-02\na;y;2024-01-01\n")
    d = read_ratings(p, user_col="who", item_col="what", time_col="when")
    assert d.timestamps.max() - d.timestamps.min() == 86400


@pytest.mark.parametrize("text, needle", [
    ("user,item,rating\na,x,5\n,y,3\n", "row 3, column 'user': empty id"),
    ("user,item,rating\na,x,5\nb,y,lots\n", "row 3, column 'rating': expected a number"),
    ("user,item,rating,timestamp\na,x,5,1\nb,y,3,soon\n", "row 3, column 'timestamp'"),
    ("person,thing,stars\na,x,5\n", "cannot find the user column"),
    ("", "file is empty"),
])
def test_bad_input_names_file_row_column(tmp_path, text, needle):
    p = write(tmp_path, "bad.csv", text)
    with pytest.raises(ValueError, match="bad.csv") as e:
        read_ratings(p)
    assert needle in str(e.value)


def test_missing_file_and_unknown_column(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_ratings(tmp_path / "nope.csv")
    p = write(tmp_path, "r.csv", "user,item\na,x\n")
    with pytest.raises(ValueError, match="no column 'score'"):
        read_ratings(p, rating_col="score")
    with pytest.raises(ValueError, match="rating"):
        read_ratings(p, min_rating=3)  # needs a rating column


def test_idmap_roundtrip_and_unknown():
    m = IdMap(np.array(["b", "a", "7"], dtype=object))
    assert m.index("a") == 1 and m.index(7) == 2 and m.raw(0) == "b"
    np.testing.assert_array_equal(m.indices(["7", "b"]), [2, 0])
    with pytest.raises(UnknownIdError, match="unknown item id 'zz'"):
        m.index("zz", "item")


def test_bundled_dataset_and_names():
    d = read_ratings(ROOT / "data/books/ratings.csv")
    assert d.n_users == 1000 and d.n_items == 500 and d.timestamps is not None
    names = read_item_names(ROOT / "data/books/items.csv")
    assert len(names) == 500 and all(names[i] for i in d.items.ids)


@pytest.mark.skipif(not (SHARED / "ml-100k").is_dir(), reason="MovieLens not available")
def test_movielens_100k_and_item_names():
    d = read_ratings(SHARED / "ml-100k/u.data")
    assert (d.n_users, d.n_items, d.nnz) == (943, 1682, 100000)
    names = read_item_names(SHARED / "ml-100k/u.item")
    assert names["1"].startswith("Toy Story")


# --------------------------------------------------------------------------- issue 14: reading

RATINGS = "userId,movieId,rating,timestamp\na,x,5,10\na,y,3,11\nb,x,4,12\na,x,2,13\n"


def same(a, b):
    """Two Interactions hold the same ids (in order), CSR, timestamps and rows."""
    assert list(a.users.ids) == list(b.users.ids) and list(a.items.ids) == list(b.items.ids)
    for x, y in ((a.matrix.indptr, b.matrix.indptr), (a.matrix.indices, b.matrix.indices),
                 (a.timestamps, b.timestamps), (a.rows, b.rows)):
        np.testing.assert_array_equal(x, y)
    return True


def zipped(data: bytes, member: str = "ratings.csv") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(member, data)
    return buf.getvalue()


@pytest.mark.parametrize("name, text, pack, shape", [
    ("r.csv.gz", RATINGS, gzip.compress, (2, 2, 3)),
    ("r.tsv.bz2", RATINGS.replace(",", "\t"), bz2.compress, (2, 2, 3)),
    ("u.data.xz", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t242\t4\t9\n",
     lzma.compress, (2, 2, 2)),
    ("ratings.dat.gz", "1::1193::5::978300760\n1::661::3::978302109\n", gzip.compress,
     (1, 2, 2)),
    ("r.zip", RATINGS, zipped, (2, 2, 3)),
])
def test_compressed_file_reads_like_the_plain_file(tmp_path, name, text, pack, shape):
    plain = write(tmp_path, "plain" + (".dat" if ".dat" in name else ".txt"), text)
    packed = tmp_path / name
    packed.write_bytes(pack(text.encode()))
    d = read_ratings(packed)
    assert (d.n_users, d.n_items, d.nnz) == shape and d.source == str(packed)
    assert same(d, read_ratings(plain))


def test_compressed_parquet_and_item_names(tmp_path):
    p = tmp_path / "r.parquet"
    pd.DataFrame({"user_id": [1, 2], "item_id": ["a", "b"], "rating": [1.0, 5.0]}).to_parquet(p)
    (tmp_path / "r.parquet.gz").write_bytes(gzip.compress(p.read_bytes()))
    d = read_ratings(tmp_path / "r.parquet.gz", min_rating=4)
    assert list(d.users.ids) == ["2"] and d.nnz == 1
    (tmp_path / "items.csv.bz2").write_bytes(bz2.compress(b"movieId,title\n1,Toy Story\n"))
    assert read_item_names(tmp_path / "items.csv.bz2") == {"1": "Toy Story"}


def test_zip_of_two_files_names_the_archive_and_its_members(tmp_path):
    p = tmp_path / "ml.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("ratings.csv", RATINGS)
        z.writestr("movies.csv", "movieId,title\n")
    with pytest.raises(ValueError, match="ml.zip") as e:
        read_ratings(p)
    assert "exactly one file, it holds 2: ratings.csv, movies.csv" in str(e.value)


@pytest.mark.parametrize("damage", ["truncate", "flip", "not gzip"])
def test_corrupt_compressed_data_names_the_file(tmp_path, damage):
    data = gzip.compress(RATINGS.encode() * 200)
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data = data[:60] + bytes([data[60] ^ 0xFF]) + data[61:]
    else:
        data = RATINGS.encode()
    p = tmp_path / "r.csv.gz"
    p.write_bytes(data)
    with pytest.raises(ValueError, match=r"r\.csv\.gz: cannot read compressed data"):
        read_ratings(p)


def test_bom_on_a_headerless_tsv_and_at_line_starts(tmp_path):
    # a BOM-led u.data, and a second file's BOM after concatenation
    p = write(tmp_path, "u.data", "\ufeff196\t242\t3\t881250949\n"
                                  "\ufeff186\t302\t3\t891717742\n")
    d = read_ratings(p)
    assert list(d.users.ids) == ["196", "186"] and list(d.items.ids) == ["242", "302"]
    assert list(d.timestamps) == [881250949.0, 891717742.0]


def test_bom_on_a_header(tmp_path):
    text = "\ufeffuser,item,rating\na,x,5\n\ufeffb,\ufeffy,3\n"
    plain = write(tmp_path, "r.csv", text)
    (tmp_path / "r.csv.gz").write_bytes(gzip.compress(text.encode()))
    for p in (plain, tmp_path / "r.csv.gz"):
        d = read_ratings(p, min_rating=1)
        assert list(d.users.ids) == ["a", "b"] and list(d.items.ids) == ["x", "y"]


def test_double_colon_time_field_keeps_its_colons(tmp_path):
    p = write(tmp_path, "ratings.dat", "1::1193::5::2000-12-02 01:01:07\n"
                                       "1::661::3::2000-12-02 01:02:09\n")
    d = read_ratings(p)
    start = datetime(2000, 12, 2, 1, 1, 7, tzinfo=timezone.utc).timestamp()
    assert list(d.timestamps) == [start, start + 62]  # minutes and seconds kept
    p = write(tmp_path, "short.dat", "1::1193::5::978300760\n\n1::661\n")
    with pytest.raises(ValueError, match=r"short.dat: row 3: expected 4 fields separated by "
                                         r"'::', got 2"):
        read_ratings(p)


@pytest.mark.parametrize("raw, what", [
    ("NaN", "missing id 'NaN'"), ("null", "missing id 'null'"), ("None", "missing id 'None'"),
    (" N/A ", "missing id 'N/A'"), ("#N/A", "missing id '#N/A'"), ("nil", "missing id 'nil'"),
    ("<NA>", "missing id '<NA>'"), ("", "empty id"), ("  ", "empty id"), ("\ufeff", "empty id"),
])
@pytest.mark.parametrize("column", ["user", "item"])
def test_missing_ids_name_row_and_column(tmp_path, raw, what, column):
    row = f"{raw},y,3" if column == "user" else f"b,{raw},3"
    p = write(tmp_path, "bad.csv", f"user,item,rating\na,x,5\n{row}\nc,z,1\n")
    with pytest.raises(ValueError, match="bad.csv") as e:
        read_ratings(p)
    assert f"row 3, column '{column}': {what}" in str(e.value)


def test_na_is_an_id(tmp_path):  # Namibia
    d = read_ratings(write(tmp_path, "r.csv", "user,country\na,NA\nb,nan-ish\n"),
                     item_col="country")
    assert list(d.items.ids) == ["NA", "nan-ish"]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "NaN", "Infinity", "1e999"])
@pytest.mark.parametrize("column", ["rating", "timestamp"])
def test_ratings_and_timestamps_must_be_finite(tmp_path, value, column):
    row = f"b,y,{value},2" if column == "rating" else f"b,y,3,{value}"
    p = write(tmp_path, "bad.csv", f"user,item,rating,timestamp\na,x,5,1\n{row}\n")
    with pytest.raises(ValueError, match="bad.csv") as e:
        read_ratings(p)
    assert f"row 3, column '{column}': expected a finite number, got '{value}'" in str(e.value)


def test_idmap_and_from_pairs_strip_ids_as_the_reader_does(tmp_path):
    m = IdMap(np.array(["196", " 242 "], dtype=object))
    assert list(m.ids) == ["196", "242"]
    assert m.index(" 196 ") == 0 and m.index("\ufeff196") == 0 and m.index(242) == 1
    assert " 196\t" in m and "19" not in m
    np.testing.assert_array_equal(m.indices(["242 ", 196]), [1, 0])
    d = Interactions.from_pairs([" a", "a", "b "], ["x", " x", "y"])
    assert list(d.users.ids) == ["a", "b"] and list(d.items.ids) == ["x", "y"] and d.nnz == 2
    r = read_ratings(write(tmp_path, "u.data", "196\t242\t3\t881250949\n"))
    assert r.users.index(" 196 ") == 0


def test_parquet_null_and_missing_ids(tmp_path):
    for users, what in ((["1", None, "3"], "missing id (null)"),
                        ([1.0, np.nan, 3.0], "missing id (null)"),
                        (["1", "null", "3"], "missing id 'null'")):
        p = tmp_path / "r.parquet"
        pd.DataFrame({"user_id": users, "item_id": ["a", "b", "c"]}).to_parquet(p)
        with pytest.raises(ValueError, match="r.parquet") as e:
            read_ratings(p)
        assert f"row 2, column 'user_id': {what}" in str(e.value)


def test_parquet_timestamps_are_seconds_like_dates_in_text(tmp_path):
    p = tmp_path / "r.parquet"
    when = pd.to_datetime(["2024-01-01", "2024-01-02 00:00:01"], format="mixed")
    pd.DataFrame({"user": ["a", "a"], "item": ["x", "y"], "timestamp": when}).to_parquet(p)
    d = read_ratings(p)
    assert d.timestamps[1] - d.timestamps[0] == 86401
    assert d.timestamps[0] == datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("text, needle", [
    ("user,item\na,x\nb,y,9\n", "Expected 2 fields in line 3, saw 3"),  # as before
    ('user,item\na,x\nb,"y\n', "EOF inside string"),  # pyarrow would close the quote itself
    ('user,item\na,"x\nb,y\n', "EOF inside string"),
])
def test_malformed_csv_is_refused_as_pandas_refuses_it(tmp_path, text, needle):
    with pytest.raises(ValueError, match="cannot parse") as e:
        read_ratings(write(tmp_path, "bad.csv", text))
    assert needle in str(e.value)


# A tiny, slow reader written from the definitions, to check the fast reader against.

def reference_read(path, sep, header, min_rating=None):
    with open(path, encoding="utf-8-sig") as f:
        lines = [line.rstrip("\n") for line in f]
    fields = [line.split(sep, 3) if sep == "::" else line.split(sep)
              for line in lines[int(header):] if line]
    rows = [(r, f) for r, f in enumerate(fields)
            if min_rating is None or float(f[2]) >= min_rating]
    users = list(dict.fromkeys(f[0].strip() for _, f in rows))
    items = list(dict.fromkeys(f[1].strip() for _, f in rows))
    u_of, i_of = {x: k for k, x in enumerate(users)}, {x: k for k, x in enumerate(items)}
    last = {}
    for r, f in rows:  # a later row of a pair replaces the earlier
        last[u_of[f[0].strip()], i_of[f[1].strip()]] = (r, float(f[3]))
    entries = sorted((u, i, r, t) for (u, i), (r, t) in last.items())
    indptr = np.searchsorted([e[0] for e in entries], np.arange(len(users) + 1))
    return users, items, indptr, [e[1] for e in entries], [e[3] for e in entries], \
        [e[2] for e in entries]


def generated_ratings(tmp_path, seed, sep, header):
    rng = np.random.default_rng(seed)
    n = 3000
    pool = np.array(["7", "u12", " u3", "u3", "ü", "x y", "0042", "42", "Zoë", "NA"] +
                    [f"u{k}" for k in range(200)], dtype=object)
    users = pool[(len(pool) * rng.random(n) ** 2).astype(int)]
    items = np.array([f"i{k}" for k in range(300)], dtype=object)[rng.integers(0, 300, n)]
    ratings = rng.choice(["1", "2", "3.5", "4", "5", "4.0"], n)
    ts = rng.integers(0, 10**9, n)
    lines = [sep.join((u, i, r, str(t)))
             for u, i, r, t in zip(users, items, ratings, ts, strict=True)]
    head = [sep.join(("user", "item", "rating", "timestamp"))] if header else []
    name = {",": "r.csv", "\t": "u.data", "::": "ratings.dat", ";": "r.txt"}[sep]
    return write(tmp_path, name, "\n".join(head + lines) + "\n")


@pytest.mark.parametrize("seed, sep, header, min_rating", [
    (0, ",", True, None), (1, "\t", False, None), (2, "::", False, 4), (3, ";", True, 3.5),
    (4, ",", True, 4),
])
def test_reader_matches_a_reference_reader(tmp_path, seed, sep, header, min_rating):
    p = generated_ratings(tmp_path, seed, sep, header)
    d = read_ratings(p, min_rating=min_rating)
    users, items, indptr, indices, ts, rows = reference_read(p, sep, header, min_rating)
    assert list(d.users.ids) == users and list(d.items.ids) == items
    np.testing.assert_array_equal(d.matrix.indptr, indptr)
    np.testing.assert_array_equal(d.matrix.indices, indices)
    np.testing.assert_array_equal(d.timestamps, ts)
    np.testing.assert_array_equal(d.rows, rows)


@pytest.mark.parametrize("seed, sep, header", [(5, ",", True), (6, "::", False)])
def test_fast_and_slow_paths_agree(tmp_path, monkeypatch, seed, sep, header):
    p = generated_ratings(tmp_path, seed, sep, header)
    fast = read_ratings(p, min_rating=3)

    def refuse(*args, **kwargs):
        raise reading.Fallback()

    monkeypatch.setattr(reading, "scan_fast", refuse)
    assert same(read_ratings(p, min_rating=3), fast)


@pytest.mark.parametrize("name, sep, header", [
    ("ml-100k/u.data", "\t", False), ("ml-latest-small/ratings.csv", ",", True)])
def test_movielens_matches_the_reference_reader(name, sep, header):
    if not (SHARED / name).is_file():
        pytest.skip("MovieLens not available")
    d = read_ratings(SHARED / name, min_rating=4)
    users, items, indptr, indices, ts, rows = reference_read(SHARED / name, sep, header, 4)
    assert list(d.users.ids) == users and list(d.items.ids) == items
    np.testing.assert_array_equal(d.matrix.indptr, indptr)
    np.testing.assert_array_equal(d.matrix.indices, indices)
    np.testing.assert_array_equal(d.timestamps, ts)
    np.testing.assert_array_equal(d.rows, rows)


def test_protocol_readers_open_compressed_files_with_a_bom(tmp_path):
    from recsys_metric.protocols import read_lightgcn, read_negatives, sniff_lightgcn

    p = tmp_path / "train.txt.gz"
    p.write_bytes(gzip.compress("\ufeff0 1 2 3 4 5\n1 2\n".encode()))
    assert sniff_lightgcn(p)
    d = read_lightgcn(p)
    assert list(d.users.ids) == ["0", "1"] and d.nnz == 6
    users, items = IdMap(np.array(["0", "1"], dtype=object)), d.items
    ncf = tmp_path / "test.negative.bz2"
    ncf.write_bytes(bz2.compress("\ufeff(0,1)\t2\t3\n(1,2)\t4\n".encode()))
    negatives = read_negatives(ncf, users, items)
    assert {u: list(items.ids[v]) for u, v in negatives.items()} == {0: ["2", "3"], 1: ["4"]}
    table = tmp_path / "neg.csv.xz"
    table.write_bytes(lzma.compress("\ufeffuser,item\n0,5\n\ufeff1,4\n".encode()))
    negatives = read_negatives(table, users, items)
    assert {u: list(items.ids[v]) for u, v in negatives.items()} == {0: ["5"], 1: ["4"]}
