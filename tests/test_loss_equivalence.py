"""One definition per loss: the rules against autograd and known answers, and the torch loop's
step against the fused CPU loop's at block size 1, for every loss, distance and Adagrad."""

import math

import numpy as np
import pytest
import torch

from recsys_metric.losses import cosine_distance, loss_terms, rank_weight
from recsys_metric.model import CML
from recsys_metric.train import TrainConfig, make_optimizer, torch_step

cpu_many = pytest.importorskip("recsys_metric.sampling.cpu_many")
from recsys_metric.sampling import cpu_train  # noqa: E402

PARAMS = {"margin": 0.7, "negative_weight": 2.5, "temperature": 0.3}


def _inputs(seed=0, b=6, n=5):
    g = torch.Generator().manual_seed(seed)
    d_pos = (torch.rand(b, generator=g) * 2).double().requires_grad_()
    d_neg = (torch.rand(b, n, generator=g) * 2).double().requires_grad_()
    w = torch.rand(b, n, generator=g).double() * 3
    w[0, 1] = 0.0  # a draw to ignore
    return d_pos, d_neg, w


@pytest.mark.parametrize("loss", ["contrastive", "softmax", "triplet"])
def test_rule_coefficients_are_the_value_gradient(loss):
    d_pos, d_neg, w = _inputs()
    if loss == "triplet":
        d_neg, w = d_neg[:, :1].detach().requires_grad_(), w[:, :1]
    value, c_pos, c_neg = loss_terms(loss, d_pos, d_neg, w, **PARAMS)
    g_pos, g_neg = torch.autograd.grad(value.sum(), (d_pos, d_neg))
    torch.testing.assert_close(c_pos, g_pos)
    torch.testing.assert_close(c_neg, g_neg)


def test_rules_known_answers():
    d_pos, d_neg, w = (t.detach() for t in _inputs(b=3))
    m, lam, tau = PARAMS["margin"], PARAMS["negative_weight"], PARAMS["temperature"]
    for i in range(3):
        dp, dn, wi = float(d_pos[i]), d_neg[i].tolist(), w[i].tolist()
        want_c = dp + lam * sum(a * max(0.0, m - d) for a, d in zip(wi, dn, strict=True)) / sum(wi)
        want_s = -math.log(math.exp(-dp / tau) / (math.exp(-dp / tau) + sum(
            a * math.exp(-d / tau) for a, d in zip(wi, dn, strict=True))))
        got_c = loss_terms("contrastive", d_pos, d_neg, w, **PARAMS)[0][i]
        got_s = loss_terms("softmax", d_pos, d_neg, w, **PARAMS)[0][i]
        assert float(got_c) == pytest.approx(want_c, rel=1e-9)
        assert float(got_s) == pytest.approx(want_s, rel=1e-9)
    got_t = loss_terms("triplet", d_pos, d_neg[:, :1], w[:, :1], **PARAMS)[0]
    want_t = [w[i, 0] * max(0.0, m + d_pos[i] - d_neg[i, 0]) for i in range(3)]
    torch.testing.assert_close(got_t, torch.stack([torch.as_tensor(x) for x in want_t]).double())
    assert rank_weight(torch.tensor([0, 1, 10]), 10, 100).tolist() == pytest.approx(
        [0.0, math.log(11), math.log(101)])


def test_softmax_is_stable_far_from_the_origin():
    d_pos = torch.tensor([500.0]).double()
    d_neg = torch.tensor([[0.0, 1000.0]]).double()
    value, c_pos, c_neg = loss_terms("softmax", d_pos, d_neg, torch.ones(1, 2).double(),
                                     temperature=0.01)
    assert torch.isfinite(value).all() and torch.isfinite(c_neg).all()
    assert float(value) == pytest.approx(50000.0)


@pytest.mark.parametrize("loss", ["contrastive", "softmax"])
def test_numba_rules_equal_the_torch_rules(loss):
    d_pos, d_neg, w = (t.detach().float() for t in _inputs(seed=3))
    fn = cpu_train._contrastive if loss == "contrastive" else cpu_train._softmax
    args = ((PARAMS["margin"], PARAMS["negative_weight"]) if loss == "contrastive"
            else (PARAMS["temperature"],))
    want = loss_terms(loss, d_pos, d_neg, w, **PARAMS)
    for i in range(len(d_pos)):
        v, cp, cn = fn(np.float32(d_pos[i]), d_neg[i].numpy(), w[i].numpy(),
                       *map(np.float32, args))
        assert v == pytest.approx(float(want[0][i]), rel=1e-5)
        assert cp == pytest.approx(float(want[1][i]), rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(cn, want[2][i].numpy(), rtol=1e-5, atol=1e-6)


def test_cosine_distance_gradient_matches_autograd():
    g = torch.Generator().manual_seed(1)
    ue, ie = torch.randn(3, 7, generator=g), torch.randn(4, 7, generator=g)
    gu, gi = np.zeros(7, np.float32), np.zeros(7, np.float32)
    cpu_many._add_grad(gu, gi, 1.5, ue.numpy(), 1, ie.numpy(), 2, True)
    u, i = ue[1].clone().requires_grad_(), ie[2].clone().requires_grad_()
    (1.5 * cosine_distance(u, i)).backward()
    np.testing.assert_allclose(gu, u.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gi, i.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert cpu_many._dist(ue.numpy(), 1, ie.numpy(), 2, True) == pytest.approx(
        float(cosine_distance(ue[1], ie[2])), rel=1e-5)


CASES = [("triplet", "euclidean", "adagrad", 64), ("triplet", "euclidean", "adagrad_row", 16),
         ("triplet", "euclidean", "adagrad", 128), ("triplet", "euclidean", "adagrad", 20)]
CASES += [(loss, dist, opt, dim) for loss in ("contrastive", "softmax")
          for dist in ("euclidean", "cosine") for opt in ("adagrad", "adagrad_row")
          for dim in (16, 128)]


@pytest.mark.parametrize(("loss", "distance", "optimizer", "dim"), CASES)
def test_torch_step_equals_fused_step_at_block_size_one(loss, distance, optimizer, dim):
    """The same pairs, negatives and weights, one pair per step: the torch loop's step and the
    fused CPU loop's make the same tables (float32 rounding apart)."""
    n_users, n_items, n = 5, 40, 1 if loss == "triplet" else 6
    rng = np.random.default_rng(dim)
    cfg = TrainConfig(dim=dim, loss=loss, distance=distance, optimizer=optimizer, lr=0.05,
                      margin=1.0 if loss == "triplet" else 0.8, negative_weight=3.0,
                      temperature=0.2, clip_norm=1.0)
    model = CML(n_users, n_items, dim, cfg.clip_norm, torch.Generator().manual_seed(0), 0.8,
                distance)
    user_emb = model.users.weight.detach().numpy().copy()
    item_emb = model.items.weight.detach().numpy().copy()
    start = item_emb.copy()
    opt = make_optimizer(model, cfg)
    pairs = np.stack([rng.integers(0, n_users, 30), rng.integers(0, n_items // 2, 30)], 1)
    # distinct negatives per pair (a row drawn twice is stepped twice by the fused loop)
    negs = np.stack([rng.choice(np.arange(n_items // 2, n_items), n, replace=False)
                     for _ in range(30)])
    w = rng.uniform(0.5, 3.0, (30, n)).astype(np.float32)
    w[rng.random((30, n)) < 0.2] = 0.0 if loss != "triplet" else 1.0
    total = 0.0
    for k in range(30):
        value, _, _ = torch_step(model, opt, cfg, torch.tensor(pairs[k:k + 1, 0]),
                                 torch.tensor(pairs[k:k + 1, 1]), torch.tensor(negs[k:k + 1]),
                                 torch.tensor(w[k:k + 1]))
        total += float(value.sum())
    rowwise = optimizer == "adagrad_row"
    user_acc = cpu_train.adagrad_accumulator(user_emb, rowwise)
    item_acc = cpu_train.adagrad_accumulator(item_emb, rowwise)
    fused = cpu_many.apply_pairs(pairs, negs, w, user_emb, item_emb, user_acc, item_acc,
                                 loss=loss, distance=distance, margin=cfg.margin,
                                 negative_weight=cfg.negative_weight,
                                 temperature=cfg.temperature, lr=cfg.lr, clip_norm=cfg.clip_norm)
    assert fused == pytest.approx(total, rel=1e-4)
    assert np.abs(item_emb - start).max() > 1e-2  # it trained
    np.testing.assert_allclose(user_emb, model.users.weight.detach().numpy(), atol=2e-5)
    np.testing.assert_allclose(item_emb, model.items.weight.detach().numpy(), atol=2e-5)


def test_rank_weight_rule_is_the_fused_loops_table():
    table = cpu_train._rank_weights(1000, 10, True)
    np.testing.assert_allclose(table, rank_weight(torch.arange(11), 10, 1000).numpy(), rtol=1e-6)


@pytest.fixture(scope="module")
def books():
    from pathlib import Path

    from recsys_metric.reading import read_ratings
    from recsys_metric.split import split

    return split(read_ratings(Path(__file__).parents[1] / "data/books/ratings.csv"),
                 "leave-last-out", 0)


VARIANTS = [{"loss": "triplet"}, {"loss": "softmax"},
            {"loss": "softmax", "distance": "cosine", "sampler": "popularity"},
            {"loss": "softmax", "shared_negatives": True, "n_negatives": 64},
            {"loss": "contrastive", "distance": "cosine", "margin": 0.5, "negative_weight": 4.0},
            {"loss": "contrastive", "margin": 1.0, "shared_negatives": True}]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_every_loss_learns_in_both_loops_at_dim_128(books, variant):
    """An epoch test for every loss, the fused loop at dim 128 (the torch loop at 32 with 16
    negatives, to keep the test short): both beat popularity's ranking by far, and the fused
    loop is deterministic."""
    from recsys_metric.baselines import make_baseline
    from recsys_metric.evaluation import evaluate_ranking
    from recsys_metric.train import Trainer

    fit, test = books
    pop = evaluate_ranking(make_baseline("popularity").fit(fit), fit.matrix, test.matrix,
                           k=10)["NDCG@10"]
    scores = {}
    for backend in ("cpu", "torch"):
        small = {"dim": 32, "n_negatives": 16} if backend == "torch" else {"dim": 128}
        cfg = TrainConfig(epochs=4, backend=backend, average_last=0, **{**variant, **small})
        res = Trainer(cfg, show_progress=False).fit(fit)
        assert res.loop == ("fused-cpu" if backend == "cpu" else "torch+torch")
        if variant.get("distance") == "cosine":  # served as unit rows
            np.testing.assert_allclose(np.linalg.norm(res.item_embeddings, axis=1), 1, atol=1e-5)
        scores[backend] = evaluate_ranking(res, fit.matrix, test.matrix, k=10)["NDCG@10"]
        if backend == "cpu":
            again = Trainer(cfg, show_progress=False).fit(fit)
            np.testing.assert_array_equal(res.item_embeddings, again.item_embeddings)
    assert min(scores.values()) > 1.5 * pop, (scores, pop)
