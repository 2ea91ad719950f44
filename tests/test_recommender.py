import json

import numpy as np
import pytest

from recsys_metric import Recommender, TrainConfig, UnknownIdError, leave_last_out

from .conftest import checkerboard

FAST = dict(dim=8, epochs=20, n_negatives=5, batch_size=64, lr=0.1, margin=0.5)


@pytest.fixture(scope="module")
def fitted():
    data = checkerboard(40, 20)
    return data, Recommender(TrainConfig(**FAST), index="exact").fit(data, show_progress=False)


def half_of(item: str) -> int:
    return int(item[1:]) // 10


@pytest.mark.parametrize("index", ["exact", "annoy"])
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_known_answer_checkerboard(index, backend):
    data = checkerboard(40, 20)
    model = Recommender(TrainConfig(**FAST, backend=backend), index=index).fit(
        data, show_progress=False)
    assert model.index_kind_ == index
    for u in range(40):
        ids, scores = model.recommend(f"u{u}", N=10, filter_already_liked_items=False)
        assert all(half_of(i) == u % 2 for i in ids), (u, ids)  # exactly the user's half
        assert np.all(np.diff(scores) <= 1e-6)  # best first
        ids, _ = model.recommend(f"u{u}", N=3)
        assert all(half_of(i) != u % 2 for i in ids)  # their half is liked, hence filtered
    for item in range(20):
        sim, _ = model.similar_items(f"i{item}", N=5)
        assert f"i{item}" not in sim and all(half_of(i) == item // 10 for i in sim), (item, sim)


def test_recommend_list_filters_and_unknown_ids():
    data = checkerboard(40, 20, density=0.7)
    model = Recommender(TrainConfig(**FAST)).fit(data, show_progress=False)
    ids, scores = model.recommend(["u0", "u1"], N=4)
    assert ids.shape == scores.shape == (2, 4)
    one, _ = model.recommend("u0", N=4)
    assert list(ids[0]) == list(one)
    liked = set(data.items.raw(data.matrix[0].indices))
    assert not liked & set(one)
    kept, _ = model.recommend("u0", N=20, filter_already_liked_items=False)
    assert len(kept) == 20 and liked <= set(kept)
    ids, scores = model.recommend(["u0", "u2"], N=20)  # 13 left for u0: a padded row
    assert ids.shape == (2, 20) and (ids[0] != "").sum() == 13
    assert np.isneginf(scores[0][ids[0] == ""]).all() and list(ids[0][:13]) == list(
        model.recommend("u0", N=20)[0])
    banned = list(one[:2])
    ids, _ = model.recommend("u0", N=4, filter_items=banned)
    assert not set(banned) & set(ids)
    with pytest.raises(UnknownIdError, match="unknown user id 'ghost'"):
        model.recommend("ghost")
    with pytest.raises(UnknownIdError, match="unknown item id 'nope'"):
        model.similar_items("nope")


def test_save_load_roundtrip_identical(tmp_path, fitted):
    _, model = fitted
    model.item_names_ = {"i0": "Zero"}
    model.save(tmp_path / "m")
    again = Recommender.load(tmp_path / "m")
    for u in ("u0", "u1", "u7"):
        a, sa = model.recommend(u, N=5)
        b, sb = again.recommend(u, N=5)
        assert list(a) == list(b) and np.array_equal(sa, sb)
    assert again.item_name("i0") == "Zero"
    # Saving over an existing model replaces it whole and leaves no temporary directories.
    model.save(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_annoy_roundtrip_is_memory_mapped_and_calibrated(tmp_path):
    data = checkerboard(40, 20)
    model = Recommender(TrainConfig(**FAST), index="annoy").fit(data, show_progress=False)
    assert model.index_recall_ >= 0.98
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "items.ann").is_file()
    again = Recommender.load(tmp_path / "m")
    assert list(again.recommend("u3", N=5)[0]) == list(model.recommend("u3", N=5)[0])
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["index"]["kind"] == "annoy" and meta["index"]["search_k"] > 0


def test_load_rejects_non_model_dir(tmp_path):
    with pytest.raises(ValueError, match="not a recsys-metric model directory"):
        Recommender.load(tmp_path)


def test_same_seed_same_embeddings_on_cpu():
    data = checkerboard(30, 20)
    for backend in ("torch", "auto"):
        cfg = TrainConfig(**{**FAST, "epochs": 3}, backend=backend, seed=5)
        a = Recommender(cfg).fit(data, show_progress=False)
        b = Recommender(cfg).fit(data, show_progress=False)
        assert np.array_equal(a.user_embeddings_, b.user_embeddings_)
        assert np.array_equal(a.item_embeddings_, b.item_embeddings_)
        c = Recommender(TrainConfig(**{**FAST, "epochs": 3}, backend=backend, seed=6)).fit(
            data, show_progress=False)
        assert not np.array_equal(a.item_embeddings_, c.item_embeddings_)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_model_is_the_mean_of_the_last_epochs_tables(backend):
    data = checkerboard(30, 20)
    # recent_share 0: with the extra visits the tables settle within one epoch here
    base = {**FAST, "backend": backend, "seed": 2, "recent_share": 0.0}

    def tables(epochs, average_last):
        m = Recommender(TrainConfig(**{**base, "epochs": epochs, "average_last": average_last}),
                        index="exact").fit(data, show_progress=False)
        return m.user_embeddings_.astype(np.float64), m.item_embeddings_.astype(np.float64)

    got = tables(3, 3)  # early epochs, while the tables still move
    last = [tables(e, 0) for e in (1, 2, 3)]  # epoch e's tables do not depend on the total
    for k in range(2):
        want = sum(t[k] for t in last) / 3
        np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-7)
        assert not np.allclose(got[k], last[-1][k])  # not just the last epoch
    assert np.array_equal(tables(3, 1)[1], last[-1][1])  # 1: the last epoch's tables
    assert TrainConfig().average_last == 5
    with pytest.raises(ValueError, match="average_last"):
        TrainConfig(average_last=-1).validate()


def test_tail_running_sum_is_the_copies_mean_bit_for_bit_and_resumes(tmp_path):
    """Without validation the tail keeps a float64 sum, not k copies: the same mean to the bit
    as the copies', and a run stopped inside the tail resumes from its checkpoint to the tables
    of an uninterrupted run."""
    import torch

    from recsys_metric import Trainer
    from recsys_metric.model import CML
    from recsys_metric.train import _TailMean

    model = CML(50, 30, 8)
    copies, running = _TailMean(model, 3, sliding=True), _TailMean(model, 3, sliding=False)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        with torch.no_grad():
            for w in (model.users.weight, model.items.weight):
                w.copy_(torch.rand(w.shape, generator=gen) * 1e3)  # wide: rounding would show
        copies.add()
        running.add()
    assert len(running) == 3 and len(running.tables) == 0  # no copies held
    old = _TailMean(model, 3, sliding=False)
    old.load(list(copies.tables))  # a checkpoint written before the running sum
    want = copies._mean()
    for tail in (running, old):
        tail.apply()
        for w, mean in zip(tail._weights(), want, strict=True):
            assert torch.equal(w, mean)

    data = checkerboard(30, 20)
    cfg = TrainConfig(**{**FAST, "epochs": 6, "average_last": 3, "seed": 4})
    whole = Trainer(cfg, show_progress=False).fit(data.matrix)

    class Killed(Exception):
        pass

    def kill_at_5(epoch, logs):  # after epoch 4's checkpoint, one epoch into the tail
        if epoch == 5:
            raise Killed

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Killed):
        Trainer(cfg, callbacks=[kill_at_5], show_progress=False).fit(data.matrix,
                                                                    checkpoint=ckpt)
    ran = []
    resumed = Trainer(cfg, callbacks=[lambda epoch, logs: ran.append(epoch)],
                      show_progress=False).fit(data.matrix, checkpoint=ckpt)
    assert ran == [5, 6] and len(resumed.history) == 6  # resumed after epoch 4
    assert np.array_equal(whole.user_embeddings, resumed.user_embeddings)
    assert np.array_equal(whole.item_embeddings, resumed.item_embeddings)


def test_validation_and_early_stopping_see_the_averaged_model():
    from recsys_metric import Trainer
    from recsys_metric.evaluation import evaluate_ranking
    from recsys_metric.train import TrainResult

    data = checkerboard(30, 20)
    train, valid = leave_last_out(data)
    base = {**FAST, "seed": 3, "average_last": 2}

    def tables(epochs):
        r = Trainer(TrainConfig(**{**base, "epochs": epochs, "average_last": 0}),
                    show_progress=False).fit(train.matrix)
        return r.user_embeddings.astype(np.float64), r.item_embeddings.astype(np.float64)

    per_epoch = [tables(e) for e in (1, 2, 3, 4)]
    mean = [[(per_epoch[max(e - 1, 0)][k] + per_epoch[e][k]) / (2 if e else 1) for k in (0, 1)]
            for e in range(4)]  # the model after epoch e + 1: mean of the last two tables
    res = Trainer(TrainConfig(**{**base, "epochs": 4, "patience": 10}),
                  show_progress=False).fit(train.matrix, valid.matrix)
    def ndcg(t):
        model = TrainResult(*(x.astype(np.float32) for x in t))
        return evaluate_ranking(model, train.matrix, valid.matrix, k=10)["NDCG@10"]

    for e, logs in enumerate(res.history):
        assert logs["val_NDCG@10"] == pytest.approx(ndcg(mean[e]), abs=1e-9)
    assert any(ndcg(mean[e]) != ndcg(per_epoch[e]) for e in range(4))  # the test can tell
    b = res.best_epoch - 1
    np.testing.assert_allclose(res.item_embeddings, mean[b][1], rtol=1e-6, atol=1e-7)


def test_rows_stay_in_the_unit_ball_and_loss_falls(fitted):
    _, model = fitted
    assert np.linalg.norm(model.item_embeddings_, axis=1).max() <= 1.0 + 1e-5
    assert np.linalg.norm(model.user_embeddings_, axis=1).max() <= 1.0 + 1e-5
    losses = [h["loss"] for h in model.history_]
    assert losses[-1] < losses[0]


def test_early_stopping_refits_on_all_of_train():
    data = checkerboard(40, 20)
    model = Recommender(TrainConfig(**{**FAST, "epochs": 8, "patience": 2})).fit(
        data, show_progress=False)
    assert model.validation_history_ and "val_NDCG@10" in model.validation_history_[0]
    assert 1 <= model.best_epoch_ <= 8 and len(model.history_) == model.best_epoch_


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="dim must be an integer"):
        TrainConfig(dim=0).validate()
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="lbfgs").validate()
    with pytest.raises(ValueError, match="unknown config keys: colour"):
        TrainConfig.from_dict({"colour": 1})


def test_cml_beats_popularity_on_the_bundled_split():
    """The planted taste structure of data/books must be learnt (a regression guard on quality)."""
    from recsys_metric import read_ratings
    from recsys_metric.baselines import Popularity
    from recsys_metric.evaluation import evaluate_ranking

    from .conftest import ROOT

    train, test = leave_last_out(read_ratings(ROOT / "data/books/ratings.csv"))
    cml = Recommender(TrainConfig(epochs=10)).fit(train, show_progress=False)
    pop = Popularity().fit(train.matrix)
    m_cml = evaluate_ranking(cml, train.matrix, test.matrix, k=10)
    m_pop = evaluate_ranking(pop, train.matrix, test.matrix, k=10)
    assert m_cml["HR@10"] > 1.5 * m_pop["HR@10"]


def test_train_result_scores_like_the_fitted_recommender():
    from recsys_metric import Trainer

    data = checkerboard(20, 10)
    cfg = TrainConfig(**{**FAST, "epochs": 3})
    res = Trainer(cfg, show_progress=False).fit(data)  # Interactions: same pairs
    model = Recommender(cfg).fit(data, show_progress=False)
    idx = np.arange(5)
    np.testing.assert_allclose(res.score_users(idx), model.score_users(idx), rtol=1e-6)
    assert res.score_users(idx).shape == (5, 10)


def test_fit_takes_a_sparse_matrix_as_implicit_does():
    import scipy.sparse as sp

    from recsys_metric import Interactions, Recommender, TrainConfig

    rng = np.random.default_rng(0)
    m = sp.random(40, 30, density=0.2, random_state=3, format="csr")
    m.data[:] = 1.0
    inter = Interactions.from_matrix(m)
    assert (inter.n_users, inter.n_items, inter.nnz) == (40, 30, m.nnz)
    assert (inter.matrix != (m > 0)).nnz == 0
    disliked = m.copy()
    disliked.data[0] = -1.0  # implicit reads a negative entry as a dislike: not an interaction
    assert Interactions.from_matrix(disliked).nnz == m.nnz - 1
    cfg = TrainConfig(dim=8, epochs=2, recent_pull=0.0, transitions=0)
    rec = Recommender(cfg).fit(m.tocoo(), show_progress=False)
    user = int(rng.integers(40))
    liked = set(m[user].indices.tolist())
    items, scores = rec.recommend(user, N=5)
    assert len(items) == 5 and not liked & {int(i) for i in items}
    with pytest.raises(ValueError, match="sparse"):
        Interactions.from_matrix(np.ones((2, 2)))
