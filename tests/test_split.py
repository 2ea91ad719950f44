import numpy as np
import pytest

from recsys_metric import Interactions, leave_last_out, random_holdout, read_ratings, temporal

from .conftest import SHARED, checkerboard


def pairs(inter):
    coo = inter.matrix.tocoo()
    return set(zip(coo.row.tolist(), coo.col.tolist(), strict=True))


def assert_partition(data, train, test):
    assert not pairs(train) & pairs(test), "a test pair leaked into train"
    assert pairs(train) | pairs(test) == pairs(data)
    assert train.users is data.users and test.items is data.items


def test_leave_last_out_takes_latest_and_breaks_ties_by_file_row():
    # user a: x@5, y@9, z@9 (z later in the file) -> z; user b has one interaction: train only.
    d = Interactions.from_pairs(["a", "a", "a", "b"], ["x", "y", "z", "x"], [5, 9, 9, 1])
    train, test = leave_last_out(d)
    assert_partition(d, train, test)
    a, z = d.users.index("a"), d.items.index("z")
    assert pairs(test) == {(a, z)}


def test_leave_last_out_one_per_user_without_timestamps():
    d = Interactions.from_pairs(["a", "a", "b", "b"], ["x", "y", "y", "x"])
    train, test = leave_last_out(d)
    assert pairs(test) == {(0, 1), (1, 0)}  # the later row of each user


@pytest.mark.parametrize("split", [leave_last_out,
                                   lambda d: random_holdout(d, 0.3, seed=1),
                                   lambda d: temporal(d, 0.7)])
def test_splits_never_leak(split):
    d = checkerboard(60, 30, seed=3, density=0.7)
    train, test = split(d)
    assert_partition(d, train, test)
    assert test.nnz > 0


def test_random_holdout_is_seeded_and_keeps_a_train_item():
    d = checkerboard(30, 20, density=0.7)
    a = pairs(random_holdout(d, 0.5, seed=0)[1])
    assert a == pairs(random_holdout(d, 0.5, seed=0)[1]) != pairs(random_holdout(d, 0.5, 1)[1])
    train, _ = random_holdout(d, 0.9, seed=0)
    assert (np.diff(train.matrix.indptr) >= 1).all()


@pytest.mark.skipif(not (SHARED / "ml-100k").is_dir(), reason="MovieLens not available")
def test_leave_last_out_ml100k_against_pandas():
    d = read_ratings(SHARED / "ml-100k/u.data")
    train, test = leave_last_out(d)
    assert test.nnz == 943 and train.nnz == 100000 - 943
    df = d.to_frame().assign(row=d.rows).sort_values(["user", "timestamp", "row"])
    last = df.groupby("user").tail(1)
    want = {(d.users.index(u), d.items.index(i)) for u, i in zip(last.user, last.item,
                                                                strict=True)}
    assert pairs(test) == want


def test_validation_split_takes_the_shape_of_the_protocol():
    from recsys_metric.split import split, validation_split

    from .conftest import checkerboard

    data = checkerboard(40, 20)
    for protocol in ("leave-last-out", "random", "temporal"):
        assert all((a.matrix != b.matrix).nnz == 0 for a, b in
                   zip(validation_split(data, protocol), split(data, protocol), strict=True)
                   ) or protocol == "temporal"
    fit, valid = validation_split(data)  # default: each user's latest item
    assert (np.diff(valid.matrix.indptr) == 1).all()
    fit, valid = validation_split(data, "random", seed=1)
    assert (np.diff(valid.matrix.indptr) == 2).all()  # 20% of 10 items per user
    # a cut in time: validation pairs of users (or items) with nothing left to fit are dropped
    for last, kept in ((("c", "x"), 0), (("b", "z"), 0), (("b", "y"), 1)):  # new user, new
        users, items = ["a", "a", "b", "b", last[0]], ["x", "y", "x", "w", last[1]]  # item, ok
        fit, valid = validation_split(Interactions.from_pairs(users, items, [1, 2, 3, 4, 10]),
                                      "temporal")
        assert fit.nnz == 4 and valid.nnz == kept, last
    with pytest.raises(ValueError, match="protocol must be one of"):
        validation_split(data, "sideways")
