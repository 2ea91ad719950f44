"""Serving a fitted model: batch recommendations against a slow reference, fold-in, in-place
updates, explanations, similar users and baskets, and the CLI's batch and fold-in modes."""

import json

import numpy as np
import pandas as pd
import pytest

from recsys_metric import Recommender, TrainConfig, UnknownIdError, read_ratings
from recsys_metric.cli import main
from recsys_metric.foldin import fold_in
from recsys_metric.index import ExactIndex

from .conftest import ROOT, checkerboard

BOOKS = ROOT / "data" / "books" / "ratings.csv"
FAST = dict(dim=16, epochs=15, n_negatives=10, batch_size=256)


@pytest.fixture(scope="module")
def books():
    data = read_ratings(BOOKS)
    return data, Recommender(TrainConfig(**FAST)).fit(data, show_progress=False)


def reference_top(model, u_vecs, liked, n, candidates=None):
    """Slow reference: every distance in float64, liked items out, sorted, best first."""
    out = []
    cand = np.arange(len(model.items_)) if candidates is None else candidates
    for v, mine in zip(u_vecs, liked, strict=True):
        d = ((model.item_embeddings_[cand].astype(np.float64) - v) ** 2).sum(1)
        order = [c for c in cand[np.argsort(d, kind="stable")] if c not in set(mine)]
        out.append(order[:n])
    return out


def test_batch_recommend_equals_reference(books):
    data, model = books
    users = list(data.users.ids[:300])
    ids, scores = model.recommend(users, N=10)
    idx = data.users.indices(users)
    liked = model._liked_rows(idx)
    want = reference_top(model, model.user_embeddings_[idx], liked, 10)
    agree = np.mean([list(model.items_.indices(a)) == b for a, b in zip(ids, want, strict=True)])
    assert agree >= 0.99  # float32 vs float64 may swap a near tie
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    for u, row in zip(users[:20], ids[:20], strict=True):  # one user at a time: the same lists
        assert list(model.recommend(u, N=10)[0]) == list(row)


def test_filter_items_and_candidates(books):
    data, model = books
    u = data.users.ids[3]
    top, _ = model.recommend(u, N=5)
    banned = list(top[:2])
    ids, _ = model.recommend(u, N=5, filter_items=banned)
    assert not set(banned) & set(ids) and list(ids[:3]) == list(top[2:])
    cand = list(model.items_.ids[::7])
    ids, scores = model.recommend([u, data.users.ids[4]], N=8, items=cand)
    assert set(ids.ravel()) - {""} <= set(cand)
    idx = data.users.indices([u, data.users.ids[4]])
    want = reference_top(model, model.user_embeddings_[idx], model._liked_rows(idx), 8,
                         np.asarray(model.items_.indices(cand)))
    assert [list(model.items_.indices(r)) for r in ids] == want


def test_exclusions_padding_and_exact_index_known_answer():
    items = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], np.float32)
    index = ExactIndex(items, batch_size=1)  # blocks of one query: the blocking is exercised
    ex = np.array([[1, 1, 0, 0], [0, 1, 1, 1]], np.float32)
    import scipy.sparse as sp
    ids, d = index.query(np.zeros((2, 2), np.float32), 3, sp.csr_matrix(ex))
    assert ids.tolist() == [[2, 3, -1], [0, -1, -1]]
    assert d[0, :2].tolist() == [4.0, 9.0] and np.isinf(d[0, 2]) and np.isinf(d[1, 1:]).all()


def test_empty_batch_and_short_catalogue_pad_to_n(books):
    data, model = books
    ids, scores = model.recommend([], N=5)
    assert ids.shape == scores.shape == (0, 5)
    ids, scores = model.recommend(list(data.users.ids[:2]), N=600, items=list(data.items.ids[:30]))
    assert ids.shape == (2, 600) and (ids[:, 30:] == "").all() and np.isneginf(scores[:, 30:]).all()


def test_fold_in_does_not_depend_on_the_batch(books):
    data, model = books
    rows = [model.liked_[u].indices for u in range(5)]
    alone = model._fold(rows[3:4])
    together = model._fold(rows)
    assert np.array_equal(alone[0], together[3])


def test_annoy_batch_never_returns_excluded_items():
    data = checkerboard(60, 40, density=0.6)
    model = Recommender(TrainConfig(**FAST), index="annoy").fit(data, show_progress=False)
    users = list(data.users.ids)
    ids, _ = model.recommend(users, N=10)
    exact = Recommender.__new__(Recommender)
    exact.__dict__.update(model.__dict__)
    exact.index_ = exact.exact_index_
    truth, _ = exact.recommend(users, N=10)
    for u, row, good in zip(users, ids, truth, strict=True):
        liked = set(data.items.raw(data.matrix[data.users.index(u)].indices))
        assert not liked & set(row)
        assert len(set(row) & set(good)) >= 8


def test_fold_in_of_train_users_matches_their_trained_lists():
    """The issue's test: a training user's own items, folded in, give a top-10 that shares at
    least 60% of their trained top-10 (bundled data, default configuration)."""
    data = read_ratings(BOOKS)
    model = Recommender().fit(data, show_progress=False)
    order, ip = data.time_order(), data.matrix.indptr
    overlaps = []
    for u in range(0, data.n_users, 10):
        raw = data.users.ids[u]
        mine = list(data.items.raw(data.matrix.indices[order[ip[u]:ip[u + 1]]]))  # oldest first
        trained, _ = model.recommend(raw, N=10)
        folded, _ = model.recommend(user_items=mine, N=10)
        overlaps.append(len(set(trained) & set(folded)) / 10)
    assert np.mean(overlaps) >= 0.6, np.mean(overlaps)


def test_fold_in_is_deterministic_and_leaves_the_model_alone(books):
    data, model = books
    u = data.users.ids[5]
    mine = list(data.items.raw(model.liked_[5].indices))
    before = model.user_embeddings_.copy()
    a = model.recommend(user_items=mine, N=10)
    b = model.recommend(u, N=10, recalculate_user=True)  # the same items: the same point
    assert list(a[0]) == list(b[0]) and np.array_equal(a[1], b[1])
    assert np.array_equal(before, model.user_embeddings_)
    extra = model.recommend(u, N=10, recalculate_user=True, user_items=[a[0][0]])
    assert a[0][0] not in extra[0]  # the new item counts as liked: filtered
    with pytest.raises(ValueError, match="recalculate_user"):
        model.recommend(u, user_items=mine)
    with pytest.raises(UnknownIdError, match="unknown item id 'nope'"):
        model.recommend(user_items=["nope"])


@pytest.mark.parametrize("loss,distance", [("triplet", "euclidean"), ("softmax", "cosine"),
                                           ("contrastive", "euclidean")])
def test_fold_in_moves_toward_the_items(loss, distance):
    """From the items' mean, the model's loss pulls the point in: the liked items end up
    closer on average than the others, and cosine points are unit rows."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 8)).astype(np.float32)
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    cfg = TrainConfig(loss=loss, distance=distance, n_negatives=10)
    rows = [np.array([1, 2, 3]), np.array([40, 41]), np.array([], np.int64)]
    pts = fold_in(table, rows, cfg)
    assert pts.shape == (3, 8) and np.array_equal(pts, fold_in(table, rows, cfg))
    for p, r in zip(pts[:2], rows[:2], strict=True):
        d = ((table - p) ** 2).sum(1)
        assert d[r].mean() < np.delete(d, r).mean()
    if distance == "cosine":
        assert np.allclose(np.linalg.norm(pts[:2], axis=1), 1, atol=1e-5)
    assert np.array_equal(pts[2], np.zeros(8))


def test_partial_fit_users_and_items(books, tmp_path):
    data, fitted = books
    model = Recommender.load(fitted.save(tmp_path / "m"))
    u = data.users.ids[7]
    mine = list(data.items.raw(model.liked_[7].indices))
    folded, _ = model.recommend(user_items=mine[:6], N=10)
    model.partial_fit_users(["newcomer"], [mine[:6]])
    assert len(model.users_) == data.n_users + 1 and model.liked_.shape[0] == data.n_users + 1
    assert list(model.recommend("newcomer", N=10)[0]) == list(folded)
    model.partial_fit_users([u], [mine[:3]])  # a known user's items replaced
    assert set(data.items.raw(model.liked_[7].indices)) == set(mine[:3])
    # an item liked by the users of an existing one lands next to it
    item = data.items.ids[0]
    fans = list(data.users.raw(data.matrix[:, 0].nonzero()[0]))
    model.partial_fit_items(["copy"], [fans])
    assert model.liked_.shape == (data.n_users + 1, data.n_items + 1)
    assert item in model.similar_items("copy", N=10)[0]
    again = Recommender.load(model.save(tmp_path / "m2"))
    assert list(again.recommend("newcomer", N=5)[0]) == list(model.recommend("newcomer", N=5)[0])


def test_similar_users_basket_and_explain_known_answers(books):
    data, model = books
    u = data.users.ids[2]
    ids, scores = model.similar_users(u, N=5)
    d = ((model.user_embeddings_ - model.user_embeddings_[2]) ** 2).sum(1)
    d[2] = np.inf
    assert list(data.users.indices(ids)) == list(np.argsort(d)[:5])
    assert np.allclose(-scores, np.sort(d)[:5], atol=1e-5)
    basket = list(data.items.ids[:3])
    ids, _ = model.similar_items(basket, N=5)
    centre = model.item_embeddings_[:3].mean(0)
    d = ((model.item_embeddings_ - centre) ** 2).sum(1)
    d[:3] = np.inf
    assert list(model.items_.indices(ids)) == list(np.argsort(d)[:5])
    assert list(model.similar_items([basket[0]], N=5)[0]) == list(
        model.similar_items(basket[0], N=5)[0])
    top, _ = model.recommend(u, N=1)
    because, dist = model.explain(u, top[0], N=3)
    mine = model.liked_[2].indices
    d = ((model.item_embeddings_[mine] - model.item_embeddings_[
        model.items_.index(top[0])]) ** 2).sum(1)
    assert list(model.items_.indices(because)) == list(mine[np.argsort(d)[:3]])
    assert np.allclose(dist, np.sort(d)[:3], atol=1e-6)


def test_recommend_frame(books):
    data, model = books
    users = list(data.users.ids[:4])
    frame = model.recommend_frame(users, N=3, explain=True)
    assert list(frame.columns) == ["user", "rank", "item", "score", "name", "because"]
    assert frame["rank"].tolist() == [1, 2, 3] * 4 and frame["user"].tolist()[::3] == users
    assert frame["because"].str.count(r"\|").eq(2).all()


# ----------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def saved(books, tmp_path_factory):
    return str(books[1].save(tmp_path_factory.mktemp("m") / "model"))


def test_cli_batch_modes(saved, tmp_path, capsys, books):
    data, model = books
    a, b = data.users.ids[:2]
    assert main(["recommend", saved, "--user", f"{a},{b}", "-k", "3", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["user"] for x in lines] == [a, b]
    assert [i["item"] for i in lines[0]["items"]] == list(model.recommend(a, N=3)[0])
    users = tmp_path / "users.txt"
    users.write_text(f"{a}\n\n{b}\n")
    out = tmp_path / "recs.csv"
    assert main(["recommend", saved, "--users-file", str(users), "--user", a, "-k", "2",
                 "--out", str(out)]) == 0
    frame = pd.read_csv(out, dtype={"user": str, "item": str})
    assert frame["user"].tolist() == [a, a, b, b]  # each user once, in the order given
    assert frame["rank"].tolist() == [1, 2, 1, 2]
    assert main(["recommend", saved, "--all", "--out", str(out)]) == 2  # never overwritten
    assert "exists already" in capsys.readouterr().err
    pq = tmp_path / "all.parquet"
    assert main(["recommend", saved, "--all", "-k", "4", "--out", str(pq)]) == 0
    assert len(pd.read_parquet(pq)) == 4 * data.n_users


def test_cli_fold_in_explain_and_similar(saved, capsys, books, tmp_path):
    data, model = books
    mine = list(data.items.raw(model.liked_[0].indices))
    assert main(["recommend", saved, "--items", ",".join(mine), "-k", "3", "--json",
                 "--explain"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["user"] is None
    got_items = [i["item"] for i in got["items"]]
    assert got_items == list(model.recommend(user_items=mine, N=3)[0])
    assert all(set(x["item"] for x in i["because"]) <= set(mine) for i in got["items"])
    assert main(["recommend", saved, "--user", data.users.ids[0], "-k", "2"]) == 0
    text = capsys.readouterr().out
    assert "minus the squared distance" in text.splitlines()[0]
    assert main(["similar", saved, "--item", f"{mine[0]},{mine[1]}", "-k", "2"]) == 0
    assert "basket" in capsys.readouterr().out
    assert main(["recommend", saved]) == 2
    assert main(["recommend", saved, "--all", "--items", mine[0]]) == 2
    assert "--items are one user's" in capsys.readouterr().err
    out = tmp_path / "new.csv"
    assert main(["recommend", saved, "--items", ",".join(mine), "-k", "3", "--out", str(out)]) == 0
    assert pd.read_csv(out, dtype=str)["item"].tolist() == got_items
    assert "3 recommendations written" in capsys.readouterr().err
    assert main(["recommend", saved, "--items", "nope"]) == 2
    assert "unknown item id 'nope'" in capsys.readouterr().err
