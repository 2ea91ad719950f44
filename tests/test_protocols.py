"""protocols.py (temporal unseen ids, pre-split files, negatives) and the sampled / index metrics of
evaluation.py, against small known answers and a plain-Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_metric import Interactions, Recommender, TrainConfig, leave_last_out
from recsys_metric.evaluation import evaluate_index, evaluate_ranking, sampled_metrics
from recsys_metric.protocols import (
    negative_items,
    parse_cut,
    read_interactions,
    read_lightgcn,
    read_lists,
    read_negatives,
    read_split,
    sample_negatives,
    sniff_lightgcn,
    temporal_split,
)

from .conftest import SHARED, checkerboard


def pairs_raw(inter: Interactions) -> set[tuple[str, str]]:
    f = inter.to_frame()
    return set(zip(f["user"], f["item"], strict=True))


# --------------------------------------------------------------------------- temporal


def test_temporal_counts_and_drops_unseen_users_and_items():
    # cut at t=4.5: train a-x a-y b-x b-z; test b-y (evaluated), c-x (user unseen),
    # a-w (item unseen), d-q (both unseen).
    d = Interactions.from_pairs(["a", "a", "b", "b", "b", "c", "a", "d"],
                                ["x", "y", "x", "z", "y", "x", "w", "q"],
                                [1, 2, 3, 4, 5, 6, 7, 8])
    train, test, info = temporal_split(d, 4.5)
    assert info["cut_time"] == 4.5 and info["data_users"] == 4 and info["data_items"] == 5
    assert info["test_pairs_total"] == 4 and info["test_pairs_unseen"] == 3
    assert info["test_unseen_users"] == 2 and info["test_unseen_items"] == 2  # c, d / w, q
    assert info["unseen"].startswith("dropped")
    assert list(train.users.ids) == ["a", "b"] and sorted(train.items.ids) == ["x", "y", "z"]
    assert test.users is train.users and test.items is train.items
    assert pairs_raw(test) == {("b", "y")}
    assert pairs_raw(train) == {("a", "x"), ("a", "y"), ("b", "x"), ("b", "z")}
    assert not pairs_raw(train) & pairs_raw(test)  # no leak
    # A quantile cut resolves to the same timestamp as split.temporal uses.
    _, _, q = temporal_split(d, 0.5)
    assert q["cut"] == 0.5 and q["cut_time"] == pytest.approx(np.quantile(np.arange(1, 9), 0.5))


def test_temporal_never_leaks_and_partitions_after_restriction():
    d = checkerboard(60, 30, seed=3, density=0.7)
    d.timestamps = np.random.default_rng(0).random(d.nnz) * 100
    train, test, info = temporal_split(d, 0.7)
    assert not pairs_raw(train) & pairs_raw(test)
    assert len(pairs_raw(train)) + len(pairs_raw(test)) + info["test_pairs_unseen"] == d.nnz
    assert (np.diff(train.matrix.indptr) > 0).all()  # every user of the maps has train
    assert (np.bincount(train.matrix.indices, minlength=train.n_items) > 0).all()


def test_temporal_errors():
    d = Interactions.from_pairs(["a", "b"], ["x", "y"], [1, 2])
    with pytest.raises(ValueError, match="leaves no test"):
        temporal_split(d, 5)
    with pytest.raises(ValueError, match="no test pair left"):
        temporal_split(d, 1.5)  # b, y: both unseen in train
    with pytest.raises(ValueError, match="needs a timestamp"):
        temporal_split(Interactions.from_pairs(["a"], ["x"]), 0.5)


def test_parse_cut():
    assert parse_cut("0.75") == 0.75 and parse_cut("978300760") == 978300760.0
    assert parse_cut("1970-01-02") == 86400.0
    for bad in ("0", "-3", "soon", "nan"):
        with pytest.raises(ValueError, match="--cut expects"):
            parse_cut(bad)


# --------------------------------------------------------------------------- pre-split


def test_read_split_csv_counts_unseen_and_overlap(tmp_path):
    tr, te = tmp_path / "train.csv", tmp_path / "test.csv"
    tr.write_text("user,item,timestamp\nu1,a,1\nu1,b,2\nu2,b,3\nu2,c,4\n")
    # u1-c evaluated; u2-b also in train (kept, counted); u3 unseen (dropped); u1-z: item z
    # has no train interaction, joins the catalogue and is evaluated.
    te.write_text("user,item,timestamp\nu1,c,5\nu2,b,6\nu3,a,7\nu1,z,8\nu1,c,9\n")
    train, test, info = read_split(tr, te)
    assert info["format"] == "ratings" and info["train_file"] == str(tr)
    assert info["test_pairs_total"] == 4  # the duplicate u1-c collapsed
    assert (info["test_unseen_users"], info["test_unseen_items"],
            info["test_pairs_unseen"]) == (1, 1, 1)
    assert (info["catalogue_items"], info["items_without_train"],
            info["test_pairs_item_without_train"]) == (4, 1, 1)
    assert info["test_pairs_in_train"] == 1 and info["unseen"].startswith("kept")
    assert test.users is train.users and test.items is train.items
    assert list(train.items.ids) == ["a", "b", "c", "z"]  # train's indices kept, z appended
    assert train.matrix.shape == (2, 4) and train.matrix[:, 3].nnz == 0
    assert pairs_raw(test) == {("u1", "c"), ("u2", "b"), ("u1", "z")}
    assert test.timestamps is not None and sorted(test.timestamps) == [6.0, 8.0, 9.0]


def test_read_split_catalogue_holds_the_negatives_items(tmp_path):
    """NCF files name items that no train row has (ml-1m.test.negative does): they are ranked."""
    tr, te, neg = tmp_path / "train.rating", tmp_path / "test.rating", tmp_path / "t.negative"
    tr.write_text("0\t1\t5\t10\n0\t2\t4\t11\n1\t2\t3\t12\n1\t3\t5\t13\n")
    te.write_text("0\t3\t5\t20\n1\t7\t4\t21\n")  # item 7: test file only
    neg.write_text("(0,3)\t8\t2\n(1,7)\t9\t1\n")  # items 8, 9: negatives only
    train, test, info = read_split(tr, te, negatives=neg)
    assert list(train.items.ids) == ["1", "2", "3", "7", "8", "9"]
    assert (info["items_without_train"], info["test_unseen_items"],
            info["negative_items_without_train"]) == (3, 1, 2)
    assert pairs_raw(test) == {("0", "3"), ("1", "7")}
    negs = read_negatives(neg, train.users, train.items)
    assert sorted(train.items.raw(negs[train.users.index("0")])) == ["2", "8"]
    assert negative_items(neg) == ["3", "8", "2", "7", "9", "1"]


LIGHTGCN_TRAIN = "0 10 11 12\n1 11 13\n2 12 13 14 15 16\n3\n"
LIGHTGCN_TEST = "0 13\n1 10 99\n7 11\n2 16\n"


def test_lightgcn_format_detected_and_read(tmp_path):
    tr, te = tmp_path / "train.txt", tmp_path / "test.txt"
    tr.write_text(LIGHTGCN_TRAIN)
    te.write_text(LIGHTGCN_TEST)
    assert sniff_lightgcn(tr) and sniff_lightgcn(te)
    train = read_lightgcn(tr)
    assert train.nnz == 10 and train.n_users == 3  # user 3 has no item: no interaction
    train, test, info = read_split(tr, te)
    assert info["format"] == "lightgcn"
    assert pairs_raw(test) == {("0", "13"), ("1", "10"), ("1", "99"), ("2", "16")}
    assert (info["test_unseen_users"], info["test_unseen_items"],
            info["test_pairs_unseen"], info["test_pairs_in_train"]) == (1, 1, 1, 1)
    # Columns files are not mistaken for it; the format can be forced.
    cols = tmp_path / "u.data"
    cols.write_text("1\t10\t5\t881250949\n2\t11\t3\t881250950\n")
    assert not sniff_lightgcn(cols)
    three = tmp_path / "three.txt"
    three.write_text("0 1 2\n1 2 3\n")
    assert not sniff_lightgcn(three)
    train, _, info = read_split(three, three, format="lightgcn")
    assert train.nnz == 4 and info["format"] == "lightgcn"
    bad = tmp_path / "bad.txt"
    bad.write_text("0 1 2\n1 x 3\n")
    with pytest.raises(ValueError, match=r"bad.txt: line 2: .*'x'"):
        read_lightgcn(bad)


LISTS = "3 10 11 12\n0\n\n2 11 13\n1 12\n"


def test_lists_format_known_answer(tmp_path):
    path = tmp_path / "users.dat"
    path.write_text(LISTS)
    d = read_interactions(path, format="lists")
    # user = 0-based line number; "0" and the empty line are users without items that keep
    # their line numbers, so the next users are 3 and 4
    assert list(d.users.ids) == ["0", "3", "4"] and list(d.items.ids) == ["10", "11", "12", "13"]
    assert pairs_raw(d) == {("0", "10"), ("0", "11"), ("0", "12"), ("3", "11"), ("3", "13"),
                            ("4", "12")}
    assert d.timestamps is None
    assert d.rows[d.time_order()].tolist() == list(range(6))  # file order
    # min_items leaves out the shorter users; the others keep their ids
    assert list(read_lists(path, min_items=2).users.ids) == ["0", "3"]
    assert read_interactions(path, format="lists", min_items=3).nnz == 3
    # never auto-detected: auto reads the same file as LightGCN's 'user item ...'
    assert sniff_lightgcn(path)
    train, test, info = read_split(path, path, format="lists")
    assert info["format"] == "lists" and train.nnz == 6


@pytest.mark.parametrize("text, line, needle", [
    ("2 10 11\n3 10 11\n", 2, "the count says 3 items but 2 follow"),
    ("1 10\n\n0 7\n", 3, "the count says 0 items but 1 follow"),
    ("1 10\nx 10\n", 2, "count of items, got 'x'"),
])
def test_lists_format_errors_name_file_and_line(tmp_path, text, line, needle):
    path = tmp_path / "users.dat"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"users.dat: line {line}: .*{needle}"):
        read_lists(path)


def test_lists_format_empty_and_bad_arguments(tmp_path):
    path = tmp_path / "users.dat"
    path.write_text("0\n1 5\n")
    with pytest.raises(ValueError, match="users.dat: no interactions .*at least 2 items"):
        read_lists(path, min_items=2)
    with pytest.raises(ValueError, match="min_items must be an integer >= 1"):
        read_lists(path, min_items=0)
    with pytest.raises(ValueError, match="no such file"):
        read_lists(tmp_path / "missing.dat")


CITEULIKE = SHARED / "citeulike-t" / "users.dat"


@pytest.mark.skipif(not CITEULIKE.is_file(), reason="citeulike-t not available")
def test_lists_format_reads_citeulike():
    d = read_lists(CITEULIKE)
    # as SOURCE.md: 7,947 users, 134,860 pairs (no duplicates), 25,584 distinct items
    assert (d.n_users, d.nnz, d.n_items) == (7947, 134860, 25584)
    five = read_lists(CITEULIKE, min_items=5)  # the benchmark's users (experiments/quality.py)
    assert (five.n_users, five.nnz) == (5219, 125580)
    assert np.diff(five.matrix.indptr).min() == 5


# --------------------------------------------------------------------------- negatives


@pytest.fixture
def maps():
    d = Interactions.from_pairs(["10", "10", "20", "30"], ["1", "2", "3", "4"])
    return d.users, d.items


def test_ncf_negatives_parser(tmp_path, maps):
    users, items = maps
    p = tmp_path / "ml.test.negative"
    p.write_text("(10,1)\t3\t4\n(20,3)\t1\t2\t4\n\n(10,2)\t4 3\n")
    neg = read_negatives(p, users, items)
    i = {raw: items.index(raw) for raw in "1234"}
    assert set(neg) == {users.index("10"), users.index("20")}
    assert neg[users.index("10")].tolist() == sorted([i["3"], i["4"]])  # two lines merged
    assert neg[users.index("20")].tolist() == sorted([i["1"], i["2"], i["4"]])


@pytest.mark.parametrize("text, line, needle", [
    ("(10,1)\t3\n10,1\t3\n", 2, "expected '(user,item)'"),
    ("(10,1)\t3\n(10)\t3\n", 2, "expected '(user,item)'"),
    ("(10,1)\t3\n(20,3)\n", 2, "no negative items"),
    ("(10,1)\t3\n(20,3)\t9\n", 2, "unknown item id '9'"),
    ("(10,1)\t3\n\n(99,3)\t1\n", 3, "unknown user id '99'"),
    ("(10,7)\t3\n", 1, "unknown item id '7'"),
])
def test_ncf_negatives_parser_errors_name_file_and_line(tmp_path, maps, text, line, needle):
    p = tmp_path / "x.test.negative"
    p.write_text(text)
    with pytest.raises(ValueError) as e:
        read_negatives(p, *maps)
    assert str(e.value).startswith(f"{p}: line {line}: ") and needle in str(e.value)


def test_table_negatives(tmp_path, maps):
    users, items = maps
    p = tmp_path / "neg.csv"
    p.write_text("user,item\n10,3\n10,4\n30,1\n")
    neg = read_negatives(p, users, items)
    assert neg[users.index("10")].tolist() == sorted([items.index("3"), items.index("4")])
    assert neg[users.index("30")].tolist() == [items.index("1")]
    p.write_text("user,item\n10,3\n10,8\n")
    with pytest.raises(ValueError, match=r"neg.csv: line 3: unknown item id '8'"):
        read_negatives(p, users, items)


def test_sample_negatives_excludes_interactions_and_is_seeded():
    d = checkerboard(30, 40, density=0.6)
    train, test = leave_last_out(d)
    a = sample_negatives(train.matrix, test.matrix, 7, seed=1)
    assert a.keys() == set(np.flatnonzero(np.diff(test.matrix.indptr)).tolist())
    both = (train.matrix + test.matrix).tocsr()
    for u, neg in a.items():
        assert len(neg) == 7 == len(set(neg.tolist()))
        assert not set(neg.tolist()) & set(both[u].indices.tolist())
    b = sample_negatives(train.matrix, test.matrix, 7, seed=1)
    assert all(np.array_equal(a[u], b[u]) for u in a)
    c = sample_negatives(train.matrix, test.matrix, 7, seed=2)
    assert any(not np.array_equal(a[u], c[u]) for u in a)
    every = sample_negatives(train.matrix, test.matrix, 1000, seed=0)  # fewer left: all of them
    assert all(len(every[u]) == 40 - both[u].nnz for u in every)


# --------------------------------------------------------------------------- sampled metrics


class FixedScores:
    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=np.float32)

    def score_users(self, user_idx):
        return self.scores[user_idx]


def reference_sampled(scores, train, test, negatives, ks):
    """Plain Python: sort each user's candidates by (-score, item), read off the ranks."""
    out = {f"{m}@{k}": [] for k in ks for m in ("HR", "NDCG", "Recall")} | {"MRR": []}
    for u in sorted(negatives):
        pos = set(test[u].indices.tolist())
        if not pos:
            continue
        liked = set(train[u].indices.tolist())
        rankable = pos - liked
        cand = rankable | (set(np.asarray(negatives[u]).tolist()) - pos - liked)
        order = sorted(cand, key=lambda i: (-float(scores[u, i]), i))
        ranks = [order.index(t) + 1 for t in rankable]
        for k in ks:
            hits = [r for r in ranks if r <= k]
            out[f"HR@{k}"].append(float(bool(hits)))
            idcg = sum(1 / math.log2(r + 1) for r in range(1, min(k, len(pos)) + 1))
            out[f"NDCG@{k}"].append(sum(1 / math.log2(r + 1) for r in hits) / idcg)
            out[f"Recall@{k}"].append(len(hits) / len(pos))
        out["MRR"].append(1 / min(ranks) if ranks else 0.0)
    return {f"sampled_{key}": float(np.mean(v)) for key, v in out.items()}


def test_sampled_known_answer_ncf_style():
    # One test item (2) with score 0.5 among negatives scored 0.9, 0.1, 0.5 (item 1 < 2: ahead).
    scores = [[0.9, 0.5, 0.5, 0.1, 0.0]]
    test = sp.csr_matrix(([1.0], ([0], [2])), shape=(1, 5))
    res = sampled_metrics(FixedScores(scores), test, {0: np.array([0, 1, 3])}, k=[1, 2, 3])
    assert res["sampled_HR@1"] == 0 and res["sampled_HR@2"] == 0 and res["sampled_HR@3"] == 1
    assert res["sampled_NDCG@3"] == pytest.approx(1 / math.log2(4))
    assert res["sampled_MRR"] == pytest.approx(1 / 3)
    assert res["users"] == 1 and res["negatives_per_user"] == 3 and res["dropped_negatives"] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items = 40, 30
    scores = rng.integers(0, 6, (n_users, n_items)).astype(np.float32)  # many ties
    m = rng.random((n_users, n_items))
    train = sp.csr_matrix((m < 0.2).astype(np.float32))
    dense = ((m >= 0.2) & (m < 0.3)).astype(np.float32)
    dense[0, np.flatnonzero(train[0].toarray())[:1]] = 1.0  # a test item also in train: a miss
    test = sp.csr_matrix(dense)
    negatives = {u: rng.choice(n_items, 8, replace=False) for u in range(n_users) if u % 5}
    got = sampled_metrics(FixedScores(scores), test, negatives, k=[1, 3, 10], train=train,
                          batch_size=7)
    want = reference_sampled(scores, train, test, negatives, [1, 3, 10])
    for key, v in want.items():
        assert got[key] == pytest.approx(v), key
    assert got["dropped_negatives"] > 0  # some drawn negatives were train or test items


# --------------------------------------------------------------------------- through the index

FAST = dict(dim=8, epochs=20, n_negatives=5, batch_size=64, lr=0.1, margin=0.5)


@pytest.fixture(scope="module")
def board_split():
    return leave_last_out(checkerboard(40, 20, density=0.8))


def test_index_metrics_equal_exact_ones_through_the_exact_index(board_split):
    train, test = board_split
    model = Recommender(TrainConfig(**FAST), index="exact").fit(train, show_progress=False)
    exact = evaluate_ranking(model, train.matrix, test.matrix, k=[1, 5])
    served = evaluate_index(model, train.matrix, test.matrix, k=[1, 5], prefix="exact_")
    for key in ("HR@1", "HR@5", "NDCG@5", "Recall@5"):
        assert served[f"exact_{key}"] == pytest.approx(exact[key]), key
    assert served["exact_recall_vs_exact@5"] == pytest.approx(1.0)


def test_annoy_metrics_present_and_close_to_exact(board_split):
    train, test = board_split
    model = Recommender(TrainConfig(**FAST), index="annoy").fit(train, show_progress=False)
    assert model.index_kind_ == "annoy"
    exact = evaluate_ranking(model, train.matrix, test.matrix, k=[5])
    res = evaluate_index(model, train.matrix, test.matrix, k=[5])
    assert {"annoy_HR@5", "annoy_NDCG@5", "annoy_Recall@5", "annoy_recall_vs_exact@5"} <= set(res)
    assert res["users"] == exact["users"]
    assert res["annoy_recall_vs_exact@5"] >= 0.9
    assert abs(res["annoy_HR@5"] - exact["HR@5"]) <= 0.1


def test_annoy_query_longer_than_calibrated_is_not_short():
    # Found by evaluate_index: search_k calibrated for an unfiltered top 10 returned 1-2 items
    # instead of 10 once recommend() asked for N + the liked items (Annoy counts an item once per
    # tree, so 50 trees x one 10-item leaf exhaust search_k = 500 inside the user's cluster).
    from recsys_metric.index import AnnoyIndex

    rng = np.random.default_rng(0)
    centers = np.zeros((2, 8), dtype=np.float32)
    centers[1, 0] = 10.0
    items = np.repeat(centers, 10, axis=0) + 0.01 * rng.standard_normal((20, 8))
    index = AnnoyIndex(items.astype(np.float32), n_trees=50, search_k=500)
    ids, _ = index.query(centers[0], 20)
    assert (ids >= 0).all() and sorted(ids[0].tolist()) == list(range(20))
    top, _ = index.query(centers[0], 10)
    assert sorted(top[0].tolist()) == list(range(10))


# --------------------------------------------------------------------------- the task of a split


def test_task_of_a_split_known_answers():
    from recsys_metric import TIME_BLIND, random_holdout, temporal
    from recsys_metric.protocols import share_after, task_of

    data = checkerboard(40, 20)  # each user's items at times 0..9
    train, test = leave_last_out(data)
    assert share_after(train, test) == 1.0
    t = task_of(train, test)
    assert t["task"] == "next" and t["test_items_per_user"] == 1.0
    train, test = random_holdout(data, 0.3, seed=0)
    assert task_of(train, test)["task"] == "any" and share_after(train, test) < 0.5
    train, test = temporal(data, 0.5)  # every user's later half: several future items each
    t = task_of(train, test)
    assert t["task"] == "any" and t["share_after"] == 1.0 and t["test_items_per_user"] == 5.0
    untimed = Interactions.from_pairs(*zip(*pairs_raw(data), strict=True))
    train, test = leave_last_out(untimed)
    assert task_of(train, test) == {"task": "any", "reason": "no timestamps to tell the next "
                                    "item", "share_after": None, "test_items_per_user": 1.0}
    cfg = TrainConfig(recent_pull=0.3)
    assert cfg.for_task("next") is cfg
    blind = cfg.for_task("any")
    assert {k: getattr(blind, k) for k in TIME_BLIND} == TIME_BLIND and cfg.recent_pull == 0.3
    assert cfg.for_task("any", keep=["recent_pull"]).recent_pull == 0.3
    with pytest.raises(ValueError, match="task must be one of next, any"):
        cfg.for_task("auto")


@pytest.mark.skipif(not (SHARED / "ml-100k").is_dir(), reason="MovieLens not available")
def test_the_given_ml100k_splits_are_not_next_item_tasks():
    from recsys_metric.protocols import task_of

    for name in ("ua", "ub"):
        train, test, _ = read_split(SHARED / f"ml-100k/{name}.base",
                                    SHARED / f"ml-100k/{name}.test")
        t = task_of(train, test)
        assert t["task"] == "any" and t["share_after"] < 0.1 and t["test_items_per_user"] == 10
