"""recsys_metric: collaborative metric learning recommendations, with honest offline evaluation.

>>> from recsys_metric import read_ratings, leave_last_out, Recommender
>>> data = read_ratings("data/books/ratings.csv")
>>> train, test = leave_last_out(data)
>>> model = Recommender().fit(train)
>>> ids, scores = model.recommend("u0001", N=10)
"""

__version__ = "0.1.0"

from .data import IdMap, Interactions, UnknownIdError  # noqa: E402
from .reading import read_item_names, read_ratings  # noqa: E402
from .recommender import Recommender  # noqa: E402
from .split import leave_last_out, random_holdout, temporal  # noqa: E402
from .train import TIME_BLIND, TimeOrderWarning, TrainConfig, Trainer  # noqa: E402

__all__ = [
    "TIME_BLIND", "IdMap", "Interactions", "Recommender", "TimeOrderWarning", "TrainConfig",
    "Trainer",
    "UnknownIdError", "__version__", "leave_last_out", "random_holdout", "read_item_names",
    "read_ratings", "temporal",
]
