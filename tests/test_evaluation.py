"""evaluation.evaluate_ranking against hand-computed answers and a plain-Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_metric import evaluation
from recsys_metric.evaluation import evaluate_ranking, popularity_rank


@pytest.fixture(autouse=True, params=["numba", "torch"])
def ranking_path(request, monkeypatch):
    """Every test runs twice: ranking by recsys_metric.ranking's one-pass kernel, and by the
    torch reference it replaces (what runs without numba)."""
    if request.param == "torch":
        monkeypatch.setattr(evaluation, "HAS_NUMBA", False)
    return request.param


class FixedScores:
    """Fake model returning rows of a fixed score matrix."""

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=np.float32)
        self.calls = []

    def score_users(self, user_idx):
        self.calls.append(np.array(user_idx))
        return self.scores[user_idx]


def csr(pairs, shape):
    rows = [p[0] for p in pairs]
    cols = [p[1] for p in pairs]
    return sp.csr_matrix((np.ones(len(pairs), np.float32), (rows, cols)), shape=shape)


def reference_popularity_rank(train):
    """Rank 1 = most train interactions; tied items share the average of their ranks."""
    counts = [len(train[:, i].indices) for i in range(train.shape[1])]
    ranks = []
    for c in counts:
        above = sum(1 for x in counts if x > c)
        tied = sum(1 for x in counts if x == c)
        ranks.append(above + (tied + 1) / 2)
    return ranks


def reference(scores, train, test, ks):
    """Slow reference: one Python loop per user, ranking by (-score, item index)."""
    n_users, n_items = train.shape
    per = {"MRR": [], "AUC": []}
    for k in ks:
        for name in ("HR", "NDCG", "Recall", "Precision", "MAP", "Novelty"):
            per[f"{name}@{k}"] = []
    covered = {k: set() for k in ks}
    pop = reference_popularity_rank(train)
    for u in range(n_users):
        t_items = set(test[u].indices.tolist())
        if not t_items:
            continue
        seen = set(train[u].indices.tolist())
        cand = [i for i in range(n_items) if i not in seen and scores[u, i] != -math.inf]
        ranking = sorted(cand, key=lambda i: (-float(scores[u, i]), i))
        hit_ranks = [r + 1 for r, i in enumerate(ranking) if i in t_items]
        per["MRR"].append(1.0 / hit_ranks[0] if hit_ranks else 0.0)
        # AUC over (test item, item in neither train nor test) pairs; ties half; a test item
        # also in train loses every pair.
        negs = [j for j in range(n_items) if j not in seen and j not in t_items]
        pairs = [(t, j) for t in t_items for j in negs]
        won = sum(0.0 if t in seen else 1.0 if scores[u, t] > scores[u, j]
                  else 0.5 if scores[u, t] == scores[u, j] else 0.0 for t, j in pairs)
        per["AUC"].append(won / len(pairs) if pairs else math.nan)
        for k in ks:
            top = ranking[:k]
            covered[k].update(top)
            per[f"Novelty@{k}"].append(float(np.mean([pop[i] for i in top])) if top
                                       else math.nan)
            hits = [r for r in hit_ranks if r <= k]
            dcg = sum(1.0 / math.log2(r + 1) for r in hits)
            idcg = sum(1.0 / math.log2(r + 1) for r in range(1, min(k, len(t_items)) + 1))
            ap = sum((j + 1) / r for j, r in enumerate(hits)) / min(k, len(t_items))
            per[f"HR@{k}"].append(1.0 if hits else 0.0)
            per[f"NDCG@{k}"].append(dcg / idcg)
            per[f"Recall@{k}"].append(len(hits) / len(t_items))
            per[f"Precision@{k}"].append(len(hits) / k)
            per[f"MAP@{k}"].append(ap)
    res = {key: float(np.nanmean(v)) for key, v in per.items()}
    for k in ks:
        res[f"Coverage@{k}"] = len(covered[k]) / n_items
    res["users"] = len(per["MRR"])
    return res, per


def assert_matches(got, want):
    assert set(want) <= set(got)
    for key, val in want.items():
        assert got[key] == pytest.approx(val, abs=1e-9), key


# ---------------------------------------------------------------- known answers


def test_first_rank_is_perfect():
    model = FixedScores([[0.9, 0.5, 0.1, 0.0]])
    res = evaluate_ranking(model, csr([], (1, 4)), csr([(0, 0)], (1, 4)), k=(1, 2))
    for key in ("HR@1", "NDCG@1", "Recall@1", "Precision@1", "MAP@1", "HR@2", "NDCG@2", "MRR"):
        assert res[key] == pytest.approx(1.0), key
    assert res["Precision@2"] == pytest.approx(0.5)
    assert res["users"] == 1
    assert res["Coverage@1"] == pytest.approx(0.25)
    assert res["Coverage@2"] == pytest.approx(0.5)


def test_third_rank_misses_top2_but_counts_for_mrr():
    model = FixedScores([[0.9, 0.8, 0.7, 0.1]])
    res = evaluate_ranking(model, csr([], (1, 4)), csr([(0, 2)], (1, 4)), k=(2, 3))
    assert res["HR@2"] == 0.0 and res["NDCG@2"] == 0.0 and res["MAP@2"] == 0.0
    assert res["MRR"] == pytest.approx(1 / 3)
    assert res["HR@3"] == 1.0
    assert res["NDCG@3"] == pytest.approx(1 / math.log2(4))
    assert res["MAP@3"] == pytest.approx(1 / 3)
    assert res["Precision@3"] == pytest.approx(1 / 3)


def test_two_test_items():
    # Ranking: 0, 1, 2, 3, 4; test items at ranks 1 and 3.
    model = FixedScores([[5.0, 4.0, 3.0, 2.0, 1.0]])
    res = evaluate_ranking(model, csr([], (1, 5)), csr([(0, 0), (0, 2)], (1, 5)), k=(1, 3, 5))
    assert res["HR@1"] == 1.0
    assert res["Recall@1"] == pytest.approx(0.5)
    assert res["NDCG@1"] == pytest.approx(1.0)  # ideal DCG of min(1, 2) = 1 hit
    idcg2 = 1 + 1 / math.log2(3)
    assert res["NDCG@3"] == pytest.approx((1 + 1 / math.log2(4)) / idcg2)
    assert res["Recall@3"] == pytest.approx(1.0)
    assert res["Precision@3"] == pytest.approx(2 / 3)
    assert res["MAP@3"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert res["MAP@1"] == pytest.approx(1.0)
    assert res["MRR"] == pytest.approx(1.0)


def test_train_items_are_excluded_from_ranking_and_coverage():
    # Items 0 and 1 score highest but are in train: the test item 2 becomes rank 1.
    model = FixedScores([[9.0, 8.0, 1.0, 0.5, 0.0]])
    train = csr([(0, 0), (0, 1)], (1, 5))
    res = evaluate_ranking(model, train, csr([(0, 2)], (1, 5)), k=(1, 5))
    assert res["HR@1"] == 1.0 and res["MRR"] == 1.0
    # Only 3 candidates exist: top-5 covers items 2, 3, 4; precision still divides by K.
    assert res["Coverage@5"] == pytest.approx(3 / 5)
    assert res["Precision@5"] == pytest.approx(1 / 5)


def test_test_item_also_in_train_is_a_miss():
    model = FixedScores([[9.0, 1.0, 0.0]])
    res = evaluate_ranking(model, csr([(0, 0)], (1, 3)), csr([(0, 0)], (1, 3)), k=(3,))
    assert res["users"] == 1
    assert res["HR@3"] == 0.0 and res["MRR"] == 0.0 and res["NDCG@3"] == 0.0


def test_ties_broken_by_lower_item_index():
    model = FixedScores([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    test = csr([(0, 0), (1, 3)], (2, 4))
    res = evaluate_ranking(model, csr([], (2, 4)), test, k=(1,), per_user=True)
    np.testing.assert_allclose(res["per_user"]["MRR"], [1.0, 0.25])
    np.testing.assert_allclose(res["per_user"]["HR@1"], [1.0, 0.0])
    assert res["Coverage@1"] == pytest.approx(0.25)


def test_users_without_test_items_are_skipped_and_per_user_export():
    scores = np.array([[3, 2, 1], [1, 2, 3], [3, 2, 1]], dtype=np.float32)
    model = FixedScores(scores)
    test = csr([(0, 1), (2, 0)], (3, 3))
    res = evaluate_ranking(model, csr([], (3, 3)), test, k=1, per_user=True)
    assert res["users"] == 2
    pu = res["per_user"]
    np.testing.assert_array_equal(pu["user"], [0, 2])
    np.testing.assert_array_equal(pu["n_test"], [1, 1])
    np.testing.assert_allclose(pu["HR@1"], [0.0, 1.0])
    np.testing.assert_allclose(pu["MRR"], [0.5, 1.0])
    assert res["HR@1"] == pytest.approx(0.5)
    assert all(len(v) == 2 for v in pu.values())
    assert all(1 not in call for call in model.calls)  # user 1 never scored


def test_auc_known_answers():
    # Ranking 0 > 1 > 2 > 3. User 0 tests item 0 (beats all 3 negatives), user 1 tests item 2
    # (beats only item 3 of its negatives 0, 1, 3), user 2 has constant scores (all ties: 0.5).
    scores = [[0.9, 0.5, 0.1, 0.0], [0.9, 0.5, 0.1, 0.0], [1.0, 1.0, 1.0, 1.0]]
    test = csr([(0, 0), (1, 2), (2, 1)], (3, 4))
    res = evaluate_ranking(FixedScores(scores), csr([], (3, 4)), test, k=1, per_user=True)
    np.testing.assert_allclose(res["per_user"]["AUC"], [1.0, 1 / 3, 0.5])
    assert res["AUC"] == pytest.approx((1 + 1 / 3 + 0.5) / 3)


def test_auc_excludes_train_and_other_test_items_from_negatives():
    # Item 0 is in train (not a negative although it scores highest); test items 1 and 3;
    # negatives 2 and 4. Item 1 beats both, item 3 beats item 4 only: 3 of 4 pairs.
    model = FixedScores([[9.0, 5.0, 4.0, 3.0, 1.0]])
    res = evaluate_ranking(model, csr([(0, 0)], (1, 5)), csr([(0, 1), (0, 3)], (1, 5)), k=2)
    assert res["AUC"] == pytest.approx(0.75)
    # A test item also in train loses its pairs: 1 of 2 test items left, AUC halves.
    res = evaluate_ranking(model, csr([(0, 0), (0, 3)], (1, 5)),
                           csr([(0, 1), (0, 3)], (1, 5)), k=2)
    assert res["AUC"] == pytest.approx((2 + 0) / (2 * 2))


def test_auc_undefined_without_negatives():
    model = FixedScores([[1.0, 0.0], [1.0, 0.0]])
    res = evaluate_ranking(model, csr([(0, 1)], (2, 2)), csr([(0, 0), (1, 0)], (2, 2)), k=1,
                           per_user=True)
    # User 0: item 1 in train, item 0 in test: no negative. User 1: AUC 1.
    np.testing.assert_allclose(res["per_user"]["AUC"], [np.nan, 1.0])
    assert res["AUC"] == 1.0  # averaged over the users where it is defined


def test_novelty_is_the_mean_popularity_rank_of_the_top_k():
    # Train counts per item: [3, 2, 2, 0, 1] -> popularity ranks [1, 2.5, 2.5, 5, 4].
    train = csr([(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (0, 2), (2, 2), (1, 4)], (4, 5))
    np.testing.assert_allclose(popularity_rank(train), [1, 2.5, 2.5, 5, 4])
    scores = np.tile(np.array([5.0, 4.0, 3.0, 2.0, 1.0], np.float32), (4, 1))
    test = csr([(3, 3)], (4, 5))  # only user 3 (no train items) is evaluated
    res = evaluate_ranking(FixedScores(scores), train, test, k=(1, 2, 5))
    assert res["Novelty@1"] == pytest.approx(1.0)  # item 0
    assert res["Novelty@2"] == pytest.approx((1 + 2.5) / 2)  # items 0, 1
    assert res["Novelty@5"] == pytest.approx((1 + 2.5 + 2.5 + 5 + 4) / 5)


def test_no_test_users():
    res = evaluate_ranking(FixedScores([[0.0, 1.0]]), csr([], (1, 2)), csr([], (1, 2)), k=(1,))
    assert res["users"] == 0 and res["HR@1"] == 0.0 and res["MRR"] == 0.0
    assert res["Coverage@1"] == 0.0


def test_k_larger_than_catalogue():
    model = FixedScores([[0.0, 1.0, 2.0]])
    res = evaluate_ranking(model, csr([], (1, 3)), csr([(0, 0), (0, 1)], (1, 3)), k=(10,))
    assert res["HR@10"] == 1.0 and res["Recall@10"] == 1.0
    assert res["NDCG@10"] == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    )
    assert res["Precision@10"] == pytest.approx(0.2)
    assert res["MRR"] == pytest.approx(0.5)
    assert res["Coverage@10"] == 1.0


def test_input_errors():
    model = FixedScores([[0.0, 1.0]])
    tr, te = csr([], (1, 2)), csr([(0, 0)], (1, 2))
    with pytest.raises(ValueError, match="shape"):
        evaluate_ranking(model, tr, csr([(0, 0)], (1, 3)))
    with pytest.raises(ValueError, match="k must"):
        evaluate_ranking(model, tr, te, k=(0,))
    with pytest.raises(ValueError, match="scipy.sparse"):
        evaluate_ranking(model, np.zeros((1, 2)), te)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ranking(FixedScores([[np.nan, 1.0]]), tr, te)
    with pytest.raises(ValueError, match="shape"):
        evaluate_ranking(FixedScores([[0.0, 1.0, 2.0]]), tr, te)


# ---------------------------------------------------------------- random vs reference


def random_case(seed, n_users=60, n_items=25, integer_scores=False):
    rng = np.random.default_rng(seed)
    if integer_scores:  # many ties, exercises the tie-break
        scores = rng.integers(0, 4, size=(n_users, n_items)).astype(np.float32)
    else:
        scores = rng.standard_normal((n_users, n_items)).astype(np.float32)
    state = rng.random((n_users, n_items))
    train = sp.csr_matrix((state < 0.3).astype(np.float32))  # disjoint pairs by construction
    test = sp.csr_matrix(((state >= 0.3) & (state < 0.4)).astype(np.float32))
    return scores, train, test


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("integer_scores", [False, True])
def test_matches_reference_on_random_data(seed, integer_scores):
    scores, train, test = random_case(seed, integer_scores=integer_scores)
    ks = (1, 3, 5, 10, 30)
    want, per = reference(scores, train, test, ks)
    # A small batch size checks that batching does not change the answer.
    got = evaluate_ranking(FixedScores(scores), train, test, k=ks, batch_size=7, per_user=True)
    assert_matches(got, want)
    for key, vals in per.items():
        np.testing.assert_allclose(got["per_user"][key], vals, atol=1e-12, err_msg=key)


def test_model_minus_inf_scores_are_excluded_like_train_items():
    scores, train, test = random_case(3, n_users=40, n_items=12)
    scores[np.random.default_rng(3).random(scores.shape) < 0.5] = -np.inf
    ks = (1, 5, 12)
    want, _ = reference(scores, train, test, ks)
    assert_matches(evaluate_ranking(FixedScores(scores), train, test, k=ks, batch_size=9), want)


@pytest.mark.parametrize("integer_scores", [False, True])
def test_many_test_items_per_user_match_reference(integer_scores):
    # ~20 test items per user: AUC takes its sort-and-search path (more than 8 per row).
    rng = np.random.default_rng(11)
    n_users, n_items = 30, 60
    scores = (rng.integers(0, 4, size=(n_users, n_items)).astype(np.float32) if integer_scores
              else rng.standard_normal((n_users, n_items)).astype(np.float32))
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    state = rng.random((n_users, n_items))
    train = (state < 0.3).astype(np.float32)
    test = ((state >= 0.3) & (state < 0.65)).astype(np.float32)
    train[0, :2] = test[0, :3] = 1.0  # leaked pairs: their test items lose every pair
    train, test = sp.csr_matrix(train), sp.csr_matrix(test)
    ks = (1, 5, 20)
    want, per = reference(scores, train, test, ks)
    got = evaluate_ranking(FixedScores(scores), train, test, k=ks, batch_size=8, per_user=True)
    assert_matches(got, want)
    np.testing.assert_allclose(got["per_user"]["AUC"], per["AUC"], atol=1e-12)


def test_batch_size_does_not_change_results():
    scores, train, test = random_case(5, n_users=200, n_items=40)
    a = evaluate_ranking(FixedScores(scores), train, test, k=(5, 10), batch_size=1)
    b = evaluate_ranking(FixedScores(scores), train, test, k=(5, 10), batch_size=10_000)
    assert a == b


def test_ml1m_sized_evaluation_is_fast():
    import time

    rng = np.random.default_rng(0)
    n_users, n_items = 6040, 3706
    scores = rng.random((n_users, n_items), dtype=np.float32)
    n_train = 150 * n_users  # about ML-1M's density (duplicates simply sum)
    train = sp.csr_matrix(
        (np.ones(n_train), (rng.integers(0, n_users, n_train), rng.integers(0, n_items, n_train))),
        shape=(n_users, n_items),
    )
    test_items = rng.integers(0, n_items, size=n_users)
    test = sp.csr_matrix(
        (np.ones(n_users), (np.arange(n_users), test_items)), shape=(n_users, n_items)
    )
    test = test - test.multiply(train > 0)  # keep pairs disjoint
    test.eliminate_zeros()
    t0 = time.perf_counter()
    res = evaluate_ranking(FixedScores(scores), train, test, k=(10, 20))
    elapsed = time.perf_counter() - t0
    assert res["users"] == test.getnnz(axis=1).astype(bool).sum()
    # Random scores: HR@10 is about 10 / 3560 candidates.
    assert 0.0 < res["HR@10"] < 0.02
    assert elapsed < 20.0  # seconds; generous for a shared 2-core machine


def test_auc_can_be_left_out_and_nothing_else_changes():
    rng = np.random.default_rng(0)
    train = sp.random(30, 50, density=0.2, random_state=1, format="csr")
    test = sp.random(30, 50, density=0.05, random_state=2, format="csr")

    class M:
        def score_users(self, u):
            return rng.standard_normal((len(u), 50)).astype(np.float32)

    rng = np.random.default_rng(0)
    full = evaluate_ranking(M(), train, test, k=[5, 10])
    rng = np.random.default_rng(0)
    lean = evaluate_ranking(M(), train, test, k=[5, 10], auc=False)
    assert np.isnan(lean["AUC"]) and not np.isnan(full["AUC"])
    assert {k: v for k, v in full.items() if k != "AUC"} == {k: v for k, v in lean.items()
                                                             if k != "AUC"}
