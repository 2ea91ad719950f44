"""ImplicitCML: implicit's own evaluation and pipelines run with it unchanged, side by side with
implicit's AlternatingLeastSquares."""

import copy
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.evaluation import leave_k_out_split, ranking_metrics_at_k, train_test_split
from implicit.recommender_base import RecommenderBase

from recsys_metric import Recommender, TimeOrderWarning, TrainConfig
from recsys_metric.compat import PAD_SCORE, ImplicitCML
from recsys_metric.evaluation import evaluate_ranking

from .conftest import checkerboard

# tests/test_recommender.py's FAST, in implicit's names where it has them
FAST = dict(factors=8, iterations=20, random_state=0, n_negatives=5, batch_size=64, lr=0.1,
            margin=0.5)
GROUPS, GROUP_ITEMS, LIKED = 4, 10, 6
N_USERS, N_ITEMS = 80, GROUPS * GROUP_ITEMS


def grouped(seed: int = 0) -> sp.csr_matrix:
    """Users x items CSR: user u has taste u % 4 and likes 6 of that taste's 10 items (items
    10g..10g+9). Popularity is flat, so only the taste structure predicts held-out items."""
    rng = np.random.default_rng(seed)
    cols = np.concatenate([rng.choice(GROUP_ITEMS, LIKED, replace=False) + (u % GROUPS)
                           * GROUP_ITEMS for u in range(N_USERS)])
    rows = np.repeat(np.arange(N_USERS), LIKED)
    return sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(N_USERS, N_ITEMS))


@pytest.fixture(scope="module")
def split():
    return train_test_split(grouped(), train_percentage=0.8, random_state=0)


@pytest.fixture(scope="module")
def cml(split):
    model = ImplicitCML(**FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TimeOrderWarning)  # a matrix trains time-blind
        model.fit(split[0], show_progress=False)
    return model


@pytest.fixture(scope="module")
def als(split):
    model = AlternatingLeastSquares(factors=8, iterations=10, random_state=0)
    model.fit(split[0], show_progress=False)
    return model


class Popularity:
    """The least a model must beat, in implicit's interface: train counts, ties by index."""

    def __init__(self, train: sp.csr_matrix) -> None:
        self.counts = np.asarray(train.sum(0), dtype=np.float64).ravel()

    def recommend(self, userid, user_items, N=10, **_):
        scores = np.tile(self.counts, (len(np.asarray(userid)), 1))
        scores[user_items.nonzero()] = -np.inf
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :N].astype(np.int32)
        return ids, np.take_along_axis(scores, ids, 1).astype(np.float32)


def reference_metrics(model, train, test, K):
    """implicit's ranking_metrics_at_k written out slowly, one single-user recommend per user
    (implicit asks in batches of 1000)."""
    relevant = pr_div = total = mean_ap = ndcg = mean_auc = 0.0
    cg = 1.0 / np.log2(np.arange(2, K + 2))
    for u in range(test.shape[0]):
        likes = set(test[u].indices.tolist())
        if not likes:
            continue
        ids, _ = model.recommend(u, train[u], N=K)
        assert ids.shape == (K,)
        ap = hit = miss = auc = 0.0
        idcg = cg[:min(K, len(likes))].sum()
        for i, item in enumerate(ids):
            if int(item) in likes:
                relevant += 1
                hit += 1
                ap += hit / (i + 1)
                ndcg += cg[i] / idcg
            else:
                miss += 1
                auc += hit
        n_pos, n_neg = len(likes), test.shape[1] - len(likes)
        auc += (hit + n_pos) / 2.0 * (n_neg - miss)
        pr_div += min(K, len(likes))
        mean_ap += ap / min(K, len(likes))
        mean_auc += auc / (n_pos * n_neg)
        total += 1
    return {"precision": relevant / pr_div, "map": mean_ap / total, "ndcg": ndcg / total,
            "auc": mean_auc / total}


def group_of(ids) -> np.ndarray:
    return np.asarray(ids) // GROUP_ITEMS


def test_ranking_metrics_at_k_runs_unchanged_and_agrees(cml, split):
    train, test = split
    got = ranking_metrics_at_k(cml, train, test, K=10, show_progress=False)
    assert got == pytest.approx(reference_metrics(cml, train, test, 10), abs=1e-12)
    pop = ranking_metrics_at_k(Popularity(train), train, test, K=10, show_progress=False)
    assert got["precision"] > 2.5 * pop["precision"] and got["ndcg"] > 2.5 * pop["ndcg"]
    assert got["auc"] > 0.75 > 0.55 > pop["auc"]
    # our own evaluation, where the definitions coincide (binary NDCG@K; MAP@K over min(K, n))
    ours = evaluate_ranking(cml.recommender, train, test, k=10)
    assert ours["NDCG@10"] == pytest.approx(got["ndcg"], abs=1e-9)
    assert ours["MAP@10"] == pytest.approx(got["map"], abs=1e-9)


def test_interchangeable_with_implicit_als(cml, als, split):
    """The same pipeline, call for call, with both models: the same types, shapes, dtypes."""
    train, test = split
    users = np.arange(7)

    def pipeline(model):
        assert isinstance(model, RecommenderBase)
        out = {"metrics": ranking_metrics_at_k(model, train, test, K=5, show_progress=False)}
        out["one"] = model.recommend(3, train[3], N=5)
        out["many"] = model.recommend(users, train[users], N=5)
        out["list"] = model.recommend(users.tolist(), train[users], N=5)
        out["items"] = model.recommend(users, train[users], N=3, items=[0, 11, 12, 25, 39])
        out["refold"] = model.recommend(users, train[users], N=5, recalculate_user=True)
        out["unfiltered"] = model.recommend(users, None, N=5, filter_already_liked_items=False)
        out["sim_item"] = model.similar_items(4, N=6)
        out["sim_items"] = model.similar_items(np.arange(N_ITEMS), N=6)
        out["sim_user"] = model.similar_users(2, N=6)
        out["sim_users"] = model.similar_users(users, N=6)
        return out

    a, b = pipeline(cml), pipeline(als)
    assert a["metrics"].keys() == b["metrics"].keys()
    for key in a.keys() - {"metrics"}:
        for x, y in zip(a[key], b[key], strict=True):
            assert (type(x), x.dtype, x.shape) == (type(y), y.dtype, y.shape), key
    assert a["one"][0].dtype == np.int32 and a["one"][1].dtype == np.float32
    assert a["items"][0].dtype == np.int64  # implicit returns items[ids]
    # similar_* put the query itself first, as implicit's ALS does (ours with score 0)
    for out in (a, b):
        assert (out["sim_items"][0][:, 0] == np.arange(N_ITEMS)).all()
        assert (out["sim_users"][0][:, 0] == users).all() and out["sim_item"][0][0] == 4
    assert (a["sim_items"][1][:, 0] == 0).all() and (a["sim_items"][1][:, 1:] < 0).all()
    # the held-out item's taste is learnt: the other neighbours are mostly of the same taste
    near = a["sim_items"][0][:, 1:4]
    assert (group_of(near) == group_of(np.arange(N_ITEMS))[:, None]).mean() > 0.8
    assert cml.user_factors.shape == (N_USERS, 8) and cml.item_factors.shape == (N_ITEMS, 8)
    assert cml.user_factors.dtype == als.user_factors.dtype == np.float32


def test_leave_k_out_pipeline():
    train, test = leave_k_out_split(grouped(1), K=1, random_state=0)
    model = ImplicitCML(**{**FAST, "iterations": 10})
    model.fit(train, show_progress=False)
    got = ranking_metrics_at_k(model, train, test, K=10, show_progress=False)
    pop = ranking_metrics_at_k(Popularity(train), train, test, K=10, show_progress=False)
    assert got["precision"] > 2 * pop["precision"]  # hit rate: one held-out item per user


def test_single_and_batch_agree(cml, split):
    train, _ = split
    users = np.arange(N_USERS)
    ids, scores = cml.recommend(users, train, N=10)
    assert ids.shape == scores.shape == (N_USERS, 10)
    for u in (0, 1, 37, np.int64(79)):
        one, s = cml.recommend(u, train[u], N=10)
        assert one.shape == (10,) and (one == ids[u]).all()
        np.testing.assert_allclose(s, scores[u], rtol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 1e-6) and (scores <= 0).all()  # best first
    sub = np.array([5, 2, 5])
    again, _ = cml.recommend(sub, train[sub], N=10)
    assert (again == ids[sub]).all()


def test_filters_items_and_padding(cml, split):
    train, _ = split
    u = 6
    liked = set(train[u].indices.tolist())
    ids, _ = cml.recommend(u, train[u], N=10)
    assert not liked & set(ids.tolist())
    everything, _ = cml.recommend(u, train[u], N=N_ITEMS, filter_already_liked_items=False)
    assert sorted(everything.tolist()) == list(range(N_ITEMS))
    banned = ids[:3].tolist()
    filtered, _ = cml.recommend(u, train[u], N=10, filter_items=banned)
    assert not set(banned) & set(filtered.tolist()) and filtered[0] == ids[3]
    only, s = cml.recommend(u, train[u], N=10, items=[38, 2, 7, 25])  # N is cut to 4
    assert only.shape == s.shape == (4,) and set(only[only >= 0].tolist()) <= {38, 2, 7, 25}
    with pytest.raises(ValueError, match="Can't set both"):
        cml.recommend(u, train[u], items=[1, 2], filter_items=[3])
    # fewer items left than asked: id -1 and score -FLT_MAX fill the row (implicit's padding)
    ids, scores = cml.recommend([u, u + 1], train[[u, u + 1]], N=N_ITEMS + 5)
    left = N_ITEMS - len(liked)
    assert (ids[0, left:] == -1).all() and (scores[0, left:] == PAD_SCORE).all()
    assert sorted(ids[0, :left].tolist()) == sorted(set(range(N_ITEMS)) - liked)
    assert PAD_SCORE == -np.finfo(np.float32).max
    with pytest.raises(ValueError, match="1 row for every user"):
        cml.recommend([1, 2], train[1], N=3)
    with pytest.raises(IndexError):
        cml.recommend(N_USERS, train[0], N=3)


def test_recalculate_user_folds_in(cml, split):
    train, _ = split
    users = np.arange(N_USERS)
    stored, _ = cml.recommend(users, train, N=3)
    folded, _ = cml.recommend(users, train, N=3, recalculate_user=True)
    taste = users % GROUPS
    assert (group_of(folded) == taste[:, None]).mean() > 0.7
    overlap = np.mean([len(set(a) & set(b)) / 3 for a, b in zip(stored, folded, strict=True)])
    assert overlap > 0.6
    # fold-in seeds each user's negatives by their items: alone or in a batch, the same list
    one, _ = cml.recommend(9, train[9], N=3, recalculate_user=True)
    assert list(one) == list(folded[9])
    # a user the model never saw: the id only labels the row, the items say who it is
    new = sp.csr_matrix(([1.0, 1.0, 1.0], [20, 22, 25], [0, 3]), shape=(1, N_ITEMS))
    ids, _ = cml.recommend(N_USERS + 100, new, N=4, recalculate_user=True)
    assert (group_of(ids) == 2).mean() >= 0.5 and not {20, 22, 25} & set(ids.tolist())


def test_similar_filters_and_subsets(cml):
    ids, scores = cml.similar_items(5, N=4, filter_items=[5])
    assert 5 not in ids and ids.shape == (4,) and (scores < 0).all()
    ids, _ = cml.similar_items([5, 35], N=3, items=[5, 30, 31, 32])
    assert ids[0, 0] == 5 and 35 not in ids[1]  # first where it is a candidate, else absent
    assert (group_of(ids[1]) == 3).all() and ids.dtype == np.int64
    ids, scores = cml.similar_users(4, N=5, users=[1, 4, 8, 12])
    assert ids[0] == 4 and scores[0] == 0 and ids[-1] == -1  # 4 candidates, N=5: padded
    assert set(ids[1:4].tolist()) == {1, 8, 12}
    ids, _ = cml.similar_users(np.arange(8), N=4, filter_users=[0, 1])
    assert not np.isin(ids, [0, 1]).any() and (ids[2:, 0] == np.arange(2, 8)).all()
    assert (group_of(cml.similar_items(np.arange(N_ITEMS), N=2)[0][:, 1])
            == group_of(np.arange(N_ITEMS))).mean() > 0.8


def test_partial_fit_grows_like_als(cml, als, split):
    train, _ = split
    ours, theirs = copy.deepcopy(cml), copy.deepcopy(als)
    new = sp.csr_matrix(([1.0, 1.0, 1.0, 1.0], [30, 31, 33, 35], [0, 4]), shape=(1, N_ITEMS))
    for model in (ours, theirs):
        model.partial_fit_users([N_USERS + 2], new)
        assert model.user_factors.shape[0] == N_USERS + 3  # the ids between: zeros
        assert not model.user_factors[N_USERS:N_USERS + 2].any()
    ids, _ = ours.recommend(N_USERS + 2, new, N=3)
    assert (group_of(ids) == 3).mean() >= 2 / 3 and not {30, 31, 33, 35} & set(ids.tolist())
    assert ours.similar_users(N_USERS + 2, N=3)[0][0] == N_USERS + 2
    # a new item liked by taste-1 users lands among taste-1 items
    fans = np.arange(1, N_USERS, GROUPS)[:10]
    item_users = sp.csr_matrix((np.ones(len(fans)), fans, [0, len(fans)]), shape=(1, N_USERS))
    for model in (ours, theirs):
        model.partial_fit_items([N_ITEMS], item_users)
        assert model.item_factors.shape[0] == N_ITEMS + 1
    sim, _ = ours.similar_items(N_ITEMS, N=4)
    assert sim[0] == N_ITEMS and (group_of(sim[1:]) == 1).mean() >= 2 / 3
    # refit a known user: their liked items are replaced by the given row
    ours.partial_fit_users([0], new)
    assert ours.recommender.liked_[0].indices.tolist() == [30, 31, 33, 35]
    assert (ours.item_factors[:N_ITEMS] == cml.item_factors).all()  # items untouched
    assert cml.user_factors.shape[0] == N_USERS  # the original is unchanged


def test_save_load_roundtrip(cml, split, tmp_path):
    train, _ = split
    cml.save(tmp_path / "model")
    again = ImplicitCML.load(str(tmp_path / "model"))
    users = np.arange(N_USERS)
    for x, y in zip(cml.recommend(users, train, N=10), again.recommend(users, train, N=10),
                    strict=True):
        assert np.array_equal(x, y)
    assert np.array_equal(cml.similar_items(np.arange(N_ITEMS))[0],
                          again.similar_items(np.arange(N_ITEMS))[0])
    assert np.array_equal(cml.user_factors, again.user_factors)
    assert again.config == cml.config
    with open(tmp_path / "x.npz", "wb") as f, pytest.raises(TypeError, match="model directory"):
        cml.save(f)


def test_config_names_callback_and_weights():
    model = ImplicitCML(factors=16, iterations=3, random_state=7, lr=0.05)
    cfg = model.config
    assert (cfg.dim, cfg.epochs, cfg.seed, cfg.lr) == (16, 3, 7, 0.05)
    assert (cfg.recent_pull, cfg.transitions, cfg.recent_share) == (0.0, 0, 0.0)  # time-blind
    assert ImplicitCML(recent_pull=0.3).config.recent_pull == 0.3  # set by the user: kept
    assert ImplicitCML(TrainConfig(transitions=2)).config.transitions == 2
    assert ImplicitCML(TrainConfig(dim=4), factors=6).config.dim == 6
    assert ImplicitCML(random_state=None).config.seed == TrainConfig().seed
    with pytest.raises(TypeError, match="same setting"):
        ImplicitCML(factors=8, dim=8)
    with pytest.raises(ValueError, match="unknown config keys: colour"):
        ImplicitCML(colour=1)
    # weights are confidences in implicit: here each positive entry is one interaction
    m = grouped(2).tolil()
    m[0, 39], m[1, 38] = -1.0, 5.0
    seen = []
    model = ImplicitCML(factors=4, iterations=3, n_negatives=5, batch_size=64)
    model.fit(m.tocsr(), show_progress=False, callback=lambda *a: seen.append(a))
    assert [e for e, _, _ in seen] == [0, 1, 2] and all(np.isfinite(x[2]) for x in seen)
    liked = model.recommender.liked_
    assert 39 not in liked[0].indices and 38 in liked[1].indices


def test_refuses_a_model_with_other_ids():
    rec = Recommender(TrainConfig(dim=4, epochs=1, lanes=1)).fit(checkerboard(10, 10),
                                                         show_progress=False)
    with pytest.raises(ValueError, match="not its row numbers"):
        ImplicitCML.from_recommender(rec)
