import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from recsys_metric import Interactions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def checkerboard(n_users: int = 40, n_items: int = 20, seed: int = 0,
                 density: float = 1.0) -> Interactions:
    """Two tastes: even users like items 0..n/2-1, odd users the rest (a random ``density`` share
    of their half). The right answers are obvious: a user's nearest items are their own half, an
    item's nearest items are the rest of its half."""
    rng = np.random.default_rng(seed)
    half = n_items // 2
    users, items, ts = [], [], []
    for u in range(n_users):
        block = np.arange(half) + (0 if u % 2 == 0 else half)
        chosen = rng.choice(block, int(density * half), replace=False)
        users += [f"u{u}"] * len(chosen)
        items += [f"i{i}" for i in chosen]
        ts += list(range(len(chosen)))
    return Interactions.from_pairs(users, items, ts)


@pytest.fixture
def board() -> Interactions:
    return checkerboard()
