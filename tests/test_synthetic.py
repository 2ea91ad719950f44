"""The synthetic log generator of ``experiments/synthetic.py`` (the scale benchmark's data):
deterministic, the asked sizes, power-law popularity, timestamps in order, and a planted taste
structure that CML learns and popularity does not."""

import sys

import numpy as np
import pytest

from recsys_metric import Recommender, TrainConfig, leave_last_out, read_ratings
from recsys_metric.baselines import Popularity
from recsys_metric.evaluation import evaluate_ranking

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))  # experiments/ is not a package
from synthetic import BLOCK_USERS, default_shape, generate, write_csv  # noqa: E402


@pytest.fixture(scope="module")
def log():
    return generate(50_000, n_users=1000, n_items=1000, seed=0)


def test_deterministic_and_seeded(log):
    again = generate(50_000, n_users=1000, n_items=1000, seed=0)
    assert log.equals(again)
    other = generate(50_000, n_users=1000, n_items=1000, seed=1)
    assert not log[["user", "item"]].equals(other[["user", "item"]])


def test_sizes_and_shape(log):
    assert list(log.columns) == ["user", "item", "rating", "timestamp"]
    assert len(log) == 50_000 and not log.duplicated(["user", "item"]).any()
    assert log.user.nunique() == 1000 and log.item.max() <= 1000
    assert log.rating.between(1, 5).all()
    assert default_shape(25_000_000) == (162_541, 59_047)  # MovieLens-25M's
    assert default_shape(1_000_000) == (6_502, 2_362)
    small = generate(3_000)
    assert len(small) == 3_000 and small.user.nunique() == default_shape(3_000)[0]


def test_power_law_skew(log):
    items = log.item.value_counts().to_numpy()
    assert items[:10].sum() / len(log) > 0.05  # the top 1% of items: 5x their even share
    users = log.user.value_counts().to_numpy()
    assert users.max() > 4 * np.median(users)  # a long tail of heavy users


def test_timestamps_increase_per_user(log):
    assert (log.groupby("user").timestamp.diff().dropna() >= 0).all()
    assert log.timestamp.min() > 8e8 and log.timestamp.max() < 1.6e9


def test_csv_is_the_frame_in_blocks(tmp_path):
    n_users = BLOCK_USERS + 100  # two blocks
    path = write_csv(tmp_path / "s.csv", 3 * n_users, n_users=n_users, n_items=200, seed=3)
    data = read_ratings(path)
    frame = generate(3 * n_users, n_users=n_users, n_items=200, seed=3)
    assert data.nnz == len(frame) and data.n_users == n_users
    assert np.array_equal(np.sort(data.timestamps), np.sort(frame.timestamp.to_numpy()))


def test_planted_tastes_are_learnable(log, tmp_path):
    data = read_ratings(write_csv(tmp_path / "s.csv", 50_000, 1000, 1000, seed=0))
    train, test = leave_last_out(data)
    cml = Recommender(TrainConfig(dim=32, epochs=10), index="exact").fit(
        train, show_progress=False)
    ours = evaluate_ranking(cml, train.matrix, test.matrix, k=10, auc=False)
    pop = evaluate_ranking(Popularity().fit(train.matrix), train.matrix, test.matrix, k=10,
                           auc=False)
    # measured (seeds 0, 1, 2): CML 0.16-0.17 / 0.26-0.28, popularity 0.10-0.11 / 0.17-0.18
    # (NDCG@10 / HR@10): 1.45-1.7x
    assert ours["NDCG@10"] > 1.3 * pop["NDCG@10"] and ours["HR@10"] > 1.3 * pop["HR@10"]
