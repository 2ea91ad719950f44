import numpy as np
import pandas as pd
import pytest

from recsys_metric import IdMap, read_item_names, read_ratings
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
