"""Time order: each user's latest interactions (``recent_share`` of their history) are visited
``recent_visits`` times per epoch, items' context rows learn what follows them
(``transitions``), and after training each user's point is pulled toward their latest items
(``recent_pull``, ``pull_decay``)."""

import numpy as np
import pytest

from recsys_metric import Interactions, TrainConfig, Trainer, leave_last_out

FAST = {"dim": 8, "epochs": 4, "batch_size": 64, "n_negatives": 5, "lr": 0.1, "transitions": 0}


def test_recency_is_the_place_in_the_users_history():
    # u1: times 30, 10, 20 -> ranks 2, 0, 1; u2: a tie at time 5 broken by the file row
    data = Interactions.from_pairs(["u1", "u1", "u1", "u2", "u2"], ["a", "b", "c", "b", "a"],
                                   [30, 10, 20, 5, 5])
    r = data.recency()  # aligned with matrix.data: CSR order (user, then item index a, b, c)
    assert np.allclose(r, [2.5 / 3, 0.5 / 3, 1.5 / 3, 1.5 / 2, 0.5 / 2])
    # no timestamps: the file order is the time order
    plain = Interactions.from_pairs(["u1", "u1", "u1"], ["c", "a", "b"])
    assert np.allclose(plain.recency(), [0.5 / 3, 1.5 / 3, 2.5 / 3])
    # the newest entry of each user (recency above 1 - 1/degree) is the one leave_last_out holds out
    _, test = leave_last_out(data)
    deg = np.diff(data.matrix.indptr)
    newest = r > 1 - 1 / np.repeat(deg, deg)
    assert np.array_equal(data.matrix.indices[newest], test.matrix.indices)


@pytest.mark.parametrize("visits", [2, 3])
def test_the_latest_share_is_visited_that_many_times(visits):
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 400)
    data = Interactions.from_pairs(users, rng.integers(0, 50, 400), rng.permutation(400))
    cfg = TrainConfig(**{**FAST, "epochs": 1}, recent_share=0.5, recent_visits=visits)
    trainer = Trainer(cfg, show_progress=False)
    trainer.fit(data)
    pu, pi = trainer._pairs(data.matrix)
    r = data.recency()
    m = data.matrix
    once = list(zip(np.repeat(np.arange(m.shape[0]), np.diff(m.indptr)), m.indices, strict=True))
    latest = [p for p, x in zip(once, r, strict=True) if x >= 0.5]
    assert 0 < len(latest) < len(once)
    want = once + latest * (visits - 1)
    assert sorted(zip(pu.tolist(), pi.tolist(), strict=True)) == sorted(
        (int(u), int(i)) for u, i in want)
    assert trainer.n_pairs == len(pu) == len(want)
    # per user, the extra visits are the newest entries: about half of each history
    for u in range(m.shape[0]):
        ru = r[m.indptr[u]:m.indptr[u + 1]]
        assert (ru >= 0.5).sum() == sum(1 for v, _ in latest if v == u)
        assert abs((ru >= 0.5).sum() - len(ru) / 2) <= 0.5


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_recent_share_zero_is_the_bare_matrix_fit(backend):
    rng = np.random.default_rng(1)
    data = Interactions.from_pairs(rng.integers(0, 40, 600), rng.integers(0, 30, 600),
                                   rng.random(600))
    cfg = {**FAST, "backend": backend, "seed": 3, "recent_pull": 0.0}  # (the pull: below)
    bare = Trainer(TrainConfig(**cfg), show_progress=False).fit(data.matrix)
    for off in ({"recent_share": 0.0}, {"recent_visits": 1}):
        res = Trainer(TrainConfig(**cfg, **off), show_progress=False).fit(data)
        assert np.array_equal(bare.item_embeddings, res.item_embeddings)
        assert np.array_equal(bare.user_embeddings, res.user_embeddings)
    on = Trainer(TrainConfig(**cfg, recent_share=0.2), show_progress=False).fit(data)
    assert not np.array_equal(bare.item_embeddings, on.item_embeddings)
    with pytest.raises(ValueError, match="recent_share"):
        TrainConfig(recent_share=1.5).validate()
    with pytest.raises(ValueError, match="recent_visits"):
        TrainConfig(recent_visits=0).validate()
    assert (TrainConfig().recent_share, TrainConfig().recent_visits) == (0.1, 3)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_recency_moves_users_toward_their_latest_taste(backend):
    # every user liked 8 "old" items of group A, then 8 "new" items of group B (disjoint halves
    # of the catalogue): without recency the two groups are symmetric; with it, B comes closer
    rng = np.random.default_rng(2)
    users, items, ts = [], [], []
    for u in range(120):
        for t, i in enumerate(np.r_[rng.choice(40, 8, replace=False),
                                    40 + rng.choice(40, 8, replace=False)]):
            users.append(u), items.append(i), ts.append(t)
    data = Interactions.from_pairs(users, items, ts)
    group_b = np.array([int(i) >= 40 for i in data.items.ids])

    def b_share(q):
        res = Trainer(TrainConfig(**{**FAST, "epochs": 10}, backend=backend, seed=0,
                                  recent_share=q, recent_visits=2), show_progress=False).fit(data)
        s = res.score_users(np.arange(data.n_users))
        s[data.matrix.nonzero()] = -np.inf
        return group_b[np.argsort(-s, axis=1)[:, :10]].mean()

    assert b_share(0.5) > b_share(0.0) + 0.08  # measured: 0.65 vs 0.51


def test_als_peer_can_weight_the_same_latest_pairs():
    from recsys_metric.baselines import ALS, make_baseline

    rng = np.random.default_rng(4)
    data = Interactions.from_pairs(rng.integers(0, 40, 500), rng.integers(0, 30, 500),
                                   rng.random(500))
    before = data.matrix.data.copy()
    m = ALS(recent_share=0.5, recent_weight=3.0)._values(data)
    latest = data.recency() >= 0.5
    assert np.array_equal(m.indices, data.matrix.indices)
    assert np.array_equal(m.data, np.where(latest, 3.0, 1.0).astype(np.float32))
    assert np.array_equal(data.matrix.data, before)  # the caller's matrix is not touched
    fit = {"factors": 8, "iterations": 3, "seed": 0, "num_threads": 1}
    plain = make_baseline("als", **fit).fit(data.matrix).item_factors_
    assert np.array_equal(make_baseline("als", **fit).fit(data).item_factors_, plain)
    weighted = make_baseline("als", **fit, recent_share=0.5, recent_weight=3.0).fit(data)
    assert not np.allclose(weighted.item_factors_, plain)
    with pytest.raises(ValueError, match="recent_weight"):
        ALS(recent_share=0.2, recent_weight=0.0)


def test_als_recency_is_a_named_peer(tmp_path):
    from recsys_metric.baselines import PRESETS
    from recsys_metric.cli import main
    from recsys_metric.compare import fit_model, parse_models

    rng = np.random.default_rng(5)
    data = Interactions.from_pairs(rng.integers(0, 40, 500), rng.integers(0, 30, 500),
                                   rng.random(500))
    assert parse_models("cml,als-recency") == ["cml", "als-recency"]
    model = fit_model("als-recency", data, TrainConfig(), seed=0, params={"factors": 8})
    base, preset = PRESETS["als-recency"]
    assert base == "als" and {k: model.get_params()[k] for k in preset} == preset
    assert preset == {"recent_pull": 0.98, "pull_decay": 0.5, "transitions": 1}
    assert model.get_params()["factors"] == 8
    csv = tmp_path / "r.csv"
    rows = ["user,item,timestamp"] + [f"u{u},i{i},{t}" for t, (u, i) in enumerate(
        zip(rng.integers(0, 30, 600), rng.integers(0, 40, 600), strict=True))]
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "res.json"
    assert main(["evaluate", str(csv), "--models", "popularity,als,als-recency", "--quiet",
                 "--json", str(out)]) == 0
    import json

    models = json.loads(out.read_text())["models"]
    assert set(models) == {"popularity", "als", "als-recency"}
    assert models["als"]["HR@10"] >= 0 and models["als-recency"]["NDCG@10"] >= 0


def test_latest_weights_known_answers():
    # u1: a at 30 (newest), c at 20, b at 10; u2: a tie at 5, the later file row (a) is newer
    data = Interactions.from_pairs(["u1", "u1", "u1", "u2", "u2"], ["a", "b", "c", "b", "a"],
                                   [30, 10, 20, 5, 5])
    w = data.latest_weights(0.5).toarray()  # columns a, b, c
    np.testing.assert_allclose(w, [[1 / 1.75, 0.25 / 1.75, 0.5 / 1.75], [1 / 1.5, 0.5 / 1.5, 0]])
    np.testing.assert_allclose(data.latest_weights(0.0).toarray(), [[1, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(data.latest_weights(1.0).toarray(),
                               [[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0]])
    # a user without entries keeps an empty row
    sub = data.subset(np.array([True, True, True, False, False]))
    assert sub.latest_weights(0.5)[1].nnz == 0
    np.testing.assert_allclose(sub.latest_weights(0.5).sum(1).A.ravel(), [1, 0])


def test_pull_to_latest_against_a_loop():
    from recsys_metric.model import pull_to_latest

    rng = np.random.default_rng(6)
    data = Interactions.from_pairs(rng.integers(0, 20, 200), rng.integers(0, 30, 200),
                                   rng.random(200))
    data = data.subset(data.matrix.indices != -1)  # (same data; next line empties user 0)
    data = data.subset(np.repeat(np.arange(data.n_users), np.diff(data.matrix.indptr)) != 0)
    users = rng.normal(size=(data.n_users, 4)).astype(np.float32)
    items = rng.normal(size=(data.n_items, 4)).astype(np.float32)
    users /= np.maximum(1, np.linalg.norm(users, axis=1, keepdims=True))
    items /= np.maximum(1, np.linalg.norm(items, axis=1, keepdims=True))
    out = pull_to_latest(users, items, data.latest_weights(0.5), 0.3)
    order, ip = data.time_order(), data.matrix.indptr
    for u in range(data.n_users):
        newest_first = data.matrix.indices[order[ip[u]:ip[u + 1]]][::-1]
        if not len(newest_first):
            assert np.array_equal(out[u], users[u])  # no history: unchanged
            continue
        w = 0.5 ** np.arange(len(newest_first))
        c = (w[:, None] * items[newest_first]).sum(0) / w.sum()
        np.testing.assert_allclose(out[u], 0.7 * users[u] + 0.3 * c, rtol=1e-5, atol=1e-6)
    assert out.dtype == np.float32 and np.linalg.norm(out, axis=1).max() <= 1 + 1e-6


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_trainer_pulls_users_after_training(backend):
    from recsys_metric.evaluation import evaluate_ranking
    from recsys_metric.model import pull_to_latest

    rng = np.random.default_rng(7)
    data = Interactions.from_pairs(rng.integers(0, 40, 600), rng.integers(0, 30, 600),
                                   rng.random(600))
    train, valid = leave_last_out(data)
    cfg = {**FAST, "backend": backend, "seed": 1}
    off = Trainer(TrainConfig(**cfg, recent_pull=0.0), show_progress=False).fit(train)
    trainer = Trainer(TrainConfig(**cfg, recent_pull=0.4, pull_decay=0.3), show_progress=False)
    on = trainer.fit(train, valid)
    # the pull is applied after training: the items are the same tables, the users the formula
    assert np.array_equal(on.item_embeddings, off.item_embeddings)
    want = pull_to_latest(off.user_embeddings, off.item_embeddings, train.latest_weights(0.3), 0.4)
    np.testing.assert_allclose(on.user_embeddings, want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(on.user_embeddings, off.user_embeddings)
    # validation scores the model as returned, pull included
    m = evaluate_ranking(on, train.matrix, valid.matrix, k=10)
    assert on.history[-1]["val_NDCG@10"] == pytest.approx(m["NDCG@10"], abs=1e-6)
    # no timestamps (or a bare matrix): no time order to pull toward
    frame = train.to_frame()
    plain = Interactions.from_pairs(frame["user"], frame["item"], user_map=train.users,
                                    item_map=train.items)
    bare = Trainer(TrainConfig(**cfg, recent_share=0.0), show_progress=False)
    assert np.array_equal(bare.fit(plain).user_embeddings, bare.fit(train.matrix).user_embeddings)
    with pytest.raises(ValueError, match="recent_pull"):
        TrainConfig(recent_pull=1.5).validate()
    with pytest.raises(ValueError, match="pull_decay"):
        TrainConfig(pull_decay=-0.1).validate()
    assert (TrainConfig().recent_pull, TrainConfig().pull_decay) == (0.5, 0.5)


def test_pull_brings_the_latest_taste_closer():
    # four groups of 10 items; each user liked 6 items of an old group, then 6 of a new one:
    # pulled toward the latest items, the new group's unseen items rank first
    rng = np.random.default_rng(2)
    users, items, ts, new_group = [], [], [], []
    for u in range(160):
        old, new = rng.choice(4, 2, replace=False)
        new_group.append(new)
        for t, i in enumerate(np.r_[10 * old + rng.choice(10, 6, replace=False),
                                    10 * new + rng.choice(10, 6, replace=False)]):
            users.append(u), items.append(i), ts.append(t)
    data = Interactions.from_pairs(users, items, ts)
    group = np.array([int(i) // 10 for i in data.items.ids])
    new_group = np.array(new_group)[[int(u) for u in data.users.ids]]

    def new_share(pull):
        res = Trainer(TrainConfig(**{**FAST, "epochs": 10}, seed=0, recent_share=0.0,
                                  recent_pull=pull), show_progress=False).fit(data)
        s = res.score_users(np.arange(data.n_users))
        s[data.matrix.nonzero()] = -np.inf
        return (group[np.argsort(-s, axis=1)[:, :4]] == new_group[:, None]).mean()

    assert new_share(0.5) > new_share(0.0) + 0.3  # measured: 0.96 vs 0.47


def test_als_peer_can_pull_its_users_the_same_way():
    from recsys_metric.baselines import ALS, make_baseline
    from recsys_metric.model import pull_to_latest

    rng = np.random.default_rng(8)
    data = Interactions.from_pairs(rng.integers(0, 40, 500), rng.integers(0, 30, 500),
                                   rng.random(500))
    fit = {"factors": 8, "iterations": 3, "seed": 0, "num_threads": 1}
    plain = make_baseline("als", **fit).fit(data)
    pulled = make_baseline("als", **fit, recent_pull=0.9, pull_decay=0.5).fit(data)
    assert np.array_equal(pulled.item_factors_, plain.item_factors_)
    np.testing.assert_allclose(pulled.user_factors_, pull_to_latest(
        plain.user_factors_, plain.item_factors_, data.latest_weights(0.5), 0.9), rtol=1e-6)
    bare = make_baseline("als", **fit, recent_pull=0.9).fit(data.matrix)  # no time order
    assert np.array_equal(bare.user_factors_, plain.user_factors_)
    with pytest.raises(ValueError, match="recent_pull"):
        ALS(recent_pull=2.0)


def test_transitions_known_answers():
    # u1: b (10) -> c (20) -> a (30); u2: b then a (a tie at 5, file order)
    data = Interactions.from_pairs(["u1", "u1", "u1", "u2", "u2"], ["a", "b", "c", "b", "a"],
                                   [30, 10, 20, 5, 5])
    assert list(data.items.ids) == ["a", "b", "c"]
    t1 = data.transitions(1)
    np.testing.assert_array_equal(t1.matrix.toarray(), [[0, 0, 0], [1, 0, 1], [1, 0, 0]])
    assert list(t1.users.ids) == list(t1.items.ids) == ["a", "b", "c"]
    # at the later item's time: b -> a (u2, 5), b -> c (u1, 20), c -> a (u1, 30)
    np.testing.assert_array_equal(t1.timestamps, [5, 20, 30])
    # window 2 adds b -> a for u1 at 30, the latest time of that pair
    t2 = data.transitions(2)
    np.testing.assert_array_equal(t2.matrix.toarray(), t1.matrix.toarray())
    np.testing.assert_array_equal(t2.timestamps, [30, 20, 30])
    assert data.transitions(0).nnz == 0


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_transitions_train_context_rows_on_the_stacked_matrix(backend):
    import scipy.sparse as sp

    from recsys_metric.baselines import make_baseline

    rng = np.random.default_rng(9)
    data = Interactions.from_pairs(rng.integers(0, 40, 600), rng.integers(0, 30, 600),
                                   rng.random(600))
    cfg = {**FAST, "backend": backend, "seed": 2, "recent_share": 0.0, "recent_pull": 0.0}
    stacked = sp.vstack([data.matrix, data.transitions(2).matrix], format="csr")
    trainer = Trainer(TrainConfig(**{**cfg, "transitions": 2}), show_progress=False)
    on = trainer.fit(data)
    assert trainer.n_pairs == stacked.nnz > data.nnz
    ref = Trainer(TrainConfig(**cfg), show_progress=False).fit(stacked)
    # one training on [users; contexts]; the model keeps the users' rows
    assert np.array_equal(on.item_embeddings, ref.item_embeddings)
    assert np.array_equal(on.user_embeddings, ref.user_embeddings[:data.n_users])
    # the recency visits cover each context row's latest entries too
    vis = Trainer(TrainConfig(**{**cfg, "transitions": 2, "recent_share": 0.5}),
                  show_progress=False)
    vis.fit(data)
    latest = (data.recency() >= 0.5).sum() + (data.transitions(2).recency() >= 0.5).sum()
    assert vis.n_pairs == stacked.nnz + 2 * latest  # recent_visits 3: two extra visits
    # no timestamps: no time order, no context rows
    frame = data.to_frame()
    plain = Interactions.from_pairs(frame["user"], frame["item"], user_map=data.users,
                                    item_map=data.items)
    trainer.fit(plain)
    assert trainer.n_pairs == data.nnz
    with pytest.raises(ValueError, match="transitions"):
        TrainConfig(transitions=-1).validate()
    assert TrainConfig().transitions == 1
    # the ALS peer, the same way
    fit = {"factors": 8, "iterations": 3, "seed": 0, "num_threads": 1}
    als = make_baseline("als", **fit, transitions=2).fit(data)
    als_ref = make_baseline("als", **fit).fit(stacked)
    np.testing.assert_allclose(als.item_factors_, als_ref.item_factors_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(als.user_factors_, als_ref.user_factors_[:data.n_users],
                               rtol=1e-5, atol=1e-6)
    assert als.score_users(np.arange(data.n_users)).shape == (data.n_users, data.n_items)


def test_recommender_warns_when_the_time_order_is_missing():
    import warnings

    from recsys_metric import TIME_BLIND, Recommender, TimeOrderWarning

    rng = np.random.default_rng(3)
    u, i = rng.integers(0, 30, 400), rng.integers(0, 25, 400)
    timed = Interactions.from_pairs(u, i, rng.random(400), source="log.csv")
    untimed = Interactions.from_pairs(u, i, source="log.csv")
    fast = {**FAST, "epochs": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error", TimeOrderWarning)
        Recommender(TrainConfig(**fast), index="exact").fit(timed, show_progress=False)
        Recommender(TrainConfig(**{**fast, **TIME_BLIND}), index="exact").fit(untimed,
                                                                          show_progress=False)
    with pytest.warns(TimeOrderWarning, match="log.csv has no timestamps"):
        Recommender(TrainConfig(**fast), index="exact").fit(untimed, show_progress=False)
