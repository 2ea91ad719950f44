"""Recency: each user's latest interactions are visited twice per epoch (``recent_share``)."""

import numpy as np
import pytest

from recsys_metric import Interactions, TrainConfig, Trainer, leave_last_out

FAST = {"dim": 8, "epochs": 4, "batch_size": 64, "n_negatives": 5, "lr": 0.1}


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


def test_the_latest_share_is_visited_twice():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 400)
    data = Interactions.from_pairs(users, rng.integers(0, 50, 400), rng.permutation(400))
    trainer = Trainer(TrainConfig(**{**FAST, "epochs": 1}, recent_share=0.5), show_progress=False)
    trainer.fit(data)
    pu, pi = trainer._pairs(data.matrix)
    r = data.recency()
    m = data.matrix
    once = list(zip(np.repeat(np.arange(m.shape[0]), np.diff(m.indptr)), m.indices, strict=True))
    again = [p for p, x in zip(once, r, strict=True) if x >= 0.5]
    assert 0 < len(again) < len(once)
    assert sorted(zip(pu.tolist(), pi.tolist(), strict=True)) == sorted(
        [(int(u), int(i)) for u, i in once + again])
    assert trainer.n_pairs == len(pu) == len(once) + len(again)
    # per user, the second visits are the newest entries
    for u in range(m.shape[0]):
        ru = r[m.indptr[u]:m.indptr[u + 1]]
        assert (ru >= 0.5).sum() == sum(1 for v, _ in again if v == u)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_recent_share_zero_is_the_bare_matrix_fit(backend):
    rng = np.random.default_rng(1)
    data = Interactions.from_pairs(rng.integers(0, 40, 600), rng.integers(0, 30, 600),
                                   rng.random(600))
    cfg = {**FAST, "backend": backend, "seed": 3}
    bare = Trainer(TrainConfig(**cfg), show_progress=False).fit(data.matrix)
    off = Trainer(TrainConfig(**cfg, recent_share=0.0), show_progress=False).fit(data)
    on = Trainer(TrainConfig(**cfg, recent_share=0.2), show_progress=False).fit(data)
    assert np.array_equal(bare.item_embeddings, off.item_embeddings)
    assert np.array_equal(bare.user_embeddings, off.user_embeddings)
    assert not np.array_equal(bare.item_embeddings, on.item_embeddings)
    with pytest.raises(ValueError, match="recent_share"):
        TrainConfig(recent_share=1.5).validate()


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
                                  recent_share=q), show_progress=False).fit(data)
        s = res.score_users(np.arange(data.n_users))
        s[data.matrix.nonzero()] = -np.inf
        return group_b[np.argsort(-s, axis=1)[:, :10]].mean()

    assert b_share(0.5) > b_share(0.0) + 0.08  # measured: 0.65 vs 0.51
