"""A synthetic interaction log at any size, shaped like MovieLens-25M, with a planted taste
structure (so quality is measurable) and timestamps (so the time order matters).

The same arguments give the same rows, whatever the chunking (each block of users draws from its
own seeded stream). What is planted:

- **Shape**, scaled linearly from MovieLens-25M (25,000,095 ratings, 162,541 users, 59,047 rated
  movies): ``n_users = n * 162541 / 25e6`` and ``n_items = n * 59047 / 25e6``, so the mean user
  has ~154 interactions and the mean item ~423 at every size (1 M: 6,502 users x 2,362 items,
  about ML-1M's shape; 25 M: 162,541 x 59,047; never under 2,000 items). Linear, so the bytes
  and the work per interaction compare across sizes.
- **Power-law activity**: ``min_per_user`` (20, MovieLens' floor) each, the rest a multinomial
  over Pareto(``user_alpha`` 1.3) weights, no user over a quarter of the catalogue (25 M: median
  81, as ML-25M's 71; 1 M: median 109, 234 users at the cap of 590); **power-law popularity**:
  item weight ``rank ** -item_exponent`` (1.0), the ranks a random permutation of the ids.
- **Tastes**: ``n_topics`` (auto: one per 100 items) topics partition the items; each user has
  ``base_topics`` (2) topics mixed by Dirichlet(1) weights and one drift topic, all drawn in
  proportion to the topics' popularity (so an item's draws follow its weight). Each draw, at a
  relative time ``s`` in [0, 1) of the user's history, is from the whole catalogue by popularity
  with probability ``noise`` (0.15), else from the drift topic with probability ``drift * s``
  (0.6 s: a user's later interactions lean toward it, so the next item follows the latest ones),
  else from a base topic; within a topic, by popularity.
- **Sequels**: each item has one sequel, a random other item of its topic; with probability
  ``follow`` (0.3) a draw is the sequel of the user's previous draw instead: item-to-item
  structure that only the time order shows (about 12% of consecutive pairs in the output).
- **No duplicate pairs**: a user's draws are made without replacement (over-drawn, deduplicated,
  and a short user refilled from a flatter popularity, then uniformly), so the CSV holds exactly
  ``n_interactions`` distinct (user, item) rows and ``read_ratings`` keeps them all.
- **Timestamps**: each user is active over a span (log-normal, median 60 days, within
  1996-2019), starting uniformly in the window; a row's time is ``start + s * span`` in whole
  seconds. Rows are written by user, oldest first; ratings 1-5, higher on taste than on noise.

    python experiments/synthetic.py --interactions 1000000 --out /tmp/synth-1m.csv

From Python: ``generate(n)`` returns a DataFrame (``user, item, rating, timestamp``; ids are
integers from 1); ``write_csv(path, n)`` streams the same rows to a CSV block by block
(25 M rows: 28 s, 360 MB peak RSS, a 594 MiB file, on the 2-core machine of
``experiments/results/scale.md``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ML25M = (25_000_000, 162_541, 59_047)  # ratings (25,000,095), users, rated movies
T0, T1 = 820_454_400, 1_574_000_000  # 1996-01-01 .. 2019-11-17 (MovieLens-25M's years)
BLOCK_USERS = 4096  # users per seeded block: the unit of generation and of the output's chunks
COLUMNS = ("user", "item", "rating", "timestamp")


def default_shape(n_interactions: int) -> tuple[int, int]:
    """``(n_users, n_items)`` for a log of ``n_interactions``, scaled linearly from ML-25M (at
    least 2,000 items: a catalogue that holds the heavy users of a small log)."""
    n, users, items = ML25M
    return (max(2, round(n_interactions * users / n)),
            max(2000, round(n_interactions * items / n)))


@dataclass
class World:
    """What every block shares: the catalogue's topics and popularity, the users' tastes,
    activity and time spans."""

    n_items: int
    seed: int
    noise: float
    drift: float
    follow: float
    counts: np.ndarray  # [users] interactions per user
    base: np.ndarray  # [users, base_topics] topic ids
    base_cum: np.ndarray  # [users, base_topics] cumulative mixture weights
    drift_topic: np.ndarray  # [users]
    start: np.ndarray  # [users] first timestamp
    span: np.ndarray  # [users] seconds of activity
    by_topic: np.ndarray  # item ids sorted by topic
    topic_lo: np.ndarray  # [topics] cumulative popularity before each topic (in by_topic order)
    topic_mass: np.ndarray  # [topics] popularity of each topic
    cum_topic: np.ndarray  # cumulative popularity along by_topic
    cum_pop: np.ndarray  # cumulative popularity by item id
    cum_flat: np.ndarray  # cumulative sqrt-popularity by item id (refills)
    sequel: np.ndarray  # [items] the item that may follow each one (same topic)


def make_world(n_interactions: int, n_users: int, n_items: int, seed: int = 0,
               n_topics: int | None = None, base_topics: int = 2, noise: float = 0.15,
               drift: float = 0.6, follow: float = 0.3, item_exponent: float = 1.0,
               user_alpha: float = 1.3, min_per_user: int = 20, span_days: float = 60.0
               ) -> World:
    """The shared structure of a log (see the module docstring for the parameters)."""
    if n_users < 1 or n_items < 2 or n_interactions < n_users:
        raise ValueError(f"need n_items >= 2 and n_interactions >= n_users >= 1, got "
                         f"{n_interactions}, {n_users}, {n_items}")
    cap = max(1, n_items // 4)  # no user holds more than a quarter of the catalogue
    if n_interactions > n_users * cap:
        raise ValueError(f"{n_interactions} interactions do not fit {n_users} users of at "
                         f"most {cap} items each")
    rng = np.random.default_rng([seed, 0])
    k = n_topics or max(4, round(n_items / 100))
    topic = rng.permutation(np.arange(n_items) % k)  # every topic non-empty
    weight = (rng.permutation(n_items) + 1.0) ** -item_exponent
    by_topic = np.argsort(topic, kind="stable")
    cum_topic = np.cumsum(weight[by_topic])
    ptr = np.searchsorted(topic[by_topic], np.arange(k + 1))
    lo = np.r_[0.0, cum_topic][ptr]
    size = np.diff(ptr)[topic[by_topic]]  # each item's topic size, in by_topic order
    step = 1 + (rng.random(n_items) * (size - 1)).astype(np.int64)  # never itself
    sequel = np.empty(n_items, np.int64)
    sequel[by_topic] = by_topic[ptr[topic[by_topic]]
                                + (np.arange(n_items) - ptr[topic[by_topic]] + step) % size]

    floor = min(min_per_user, n_interactions // n_users, cap)
    w = (1.0 - rng.random(n_users)) ** (-1.0 / user_alpha)  # Pareto(alpha) from 1
    p = np.minimum(w / w.sum(), cap / n_interactions)
    counts = floor + rng.multinomial(n_interactions - floor * n_users, p / p.sum())
    while (over := counts - cap).max() > 0:  # move the excess to users below the cap
        counts = np.minimum(counts, cap)
        room = (cap - counts) * 1.0
        counts += rng.multinomial(over[over > 0].sum(), room / room.sum())

    mix = rng.dirichlet(np.ones(base_topics), n_users)
    mass = np.diff(lo)
    fans = rng.choice(k, (n_users, base_topics + 1), p=mass / mass.sum())  # a topic's fans
    # follow its popularity, so an item's draws follow its own weight
    span = np.minimum(np.exp(rng.normal(np.log(span_days * 86400), 1.5, n_users)), T1 - T0)
    start = T0 + rng.random(n_users) * (T1 - T0 - span)
    return World(n_items, seed, noise, drift, follow, counts, fans[:, :-1], np.cumsum(mix, 1),
                 fans[:, -1], start, span, by_topic, lo[:-1], mass, cum_topic, np.cumsum(weight),
                 np.cumsum(weight ** 0.5), sequel)


def _pick(cum: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Indices drawn by inverse CDF: ``r`` uniform in [0, cum[-1])."""
    return np.minimum(np.searchsorted(cum, r, side="right"), len(cum) - 1)


def _select(u: np.ndarray, item: np.ndarray, prio: np.ndarray, want: np.ndarray,
            n_items: int) -> np.ndarray:
    """Indices of the draws ``(u, item)`` kept: of each (user, item) pair the draw of lowest
    ``prio`` (a permutation of the draws' indices), then each user's ``want[u]`` of lowest
    ``prio``. Two sorts of packed int64 keys (lexsort took four times as long)."""
    bits = max(1, len(u).bit_length())
    if (len(want) * n_items).bit_length() + bits > 62:
        raise ValueError("too many users x items in one block for the packed sort keys")
    inv = np.empty_like(prio)
    inv[prio] = np.arange(len(u))
    key = np.sort(((u.astype(np.int64) * n_items + item) << bits) | prio)
    pair = key >> bits
    first = key[np.r_[True, pair[1:] != pair[:-1]]] & ((1 << bits) - 1)  # prio of the kept
    by_user = np.sort((u[inv[first]].astype(np.int64) << bits) | first)
    uf = by_user >> bits
    rank = np.arange(len(uf)) - np.searchsorted(uf, np.arange(len(want)))[uf]
    return inv[by_user[rank < want[uf]] & ((1 << bits) - 1)]


def _block(world: World, b: int) -> dict[str, np.ndarray]:
    """The rows of users ``b * BLOCK_USERS ..`` (at most BLOCK_USERS), by user then time."""
    rng = np.random.default_rng([world.seed, 1, b])
    users = np.arange(b * BLOCK_USERS, min((b + 1) * BLOCK_USERS, len(world.counts)))
    want = world.counts[users]
    m = (want * 1.25).astype(np.int64) + 4  # over-draw: duplicates are dropped
    u = np.repeat(np.arange(len(users)), m)
    n = len(u)
    s = np.sort(u + rng.random(n)) - u  # each user's draws in time order (u is sorted)
    r = rng.random(n)
    taste = r >= world.noise
    drifted = r < world.noise + (1 - world.noise) * world.drift * s
    which = (rng.random(n)[:, None] > world.base_cum[users][u]).sum(1)
    topic = np.where(drifted, world.drift_topic[users][u],
                     world.base[users][u, np.minimum(which, world.base.shape[1] - 1)])
    within = world.topic_lo[topic] + rng.random(n) * world.topic_mass[topic]
    item = np.where(taste, world.by_topic[_pick(world.cum_topic, within)],
                    _pick(world.cum_pop, rng.random(n) * world.cum_pop[-1]))
    # the sequel of the user's previous draw, instead, with probability follow
    sequel = np.flatnonzero((rng.random(n) < world.follow) & np.r_[False, u[1:] == u[:-1]])
    item[sequel] = world.sequel[item[sequel - 1]]
    taste[sequel] = True
    # which draws are kept (duplicates dropped, then a user's first want[u]) in a random
    # order, so the kept ones span the whole history
    keep = _select(u, item, rng.permutation(n), want, world.n_items)
    rows = u[keep], item[keep], s[keep], taste[keep]
    for attempt in range(1, 100):  # refill the users left short by duplicates
        have = np.bincount(rows[0], minlength=len(users))
        short = np.flatnonzero(have < want)
        if not len(short):
            break
        nu = np.repeat(short, (want - have)[short] * 2 + 4)
        cum = world.cum_flat if attempt < 4 else None  # then uniform: always converges
        new = (nu, (_pick(cum, rng.random(len(nu)) * cum[-1]) if cum is not None
                    else rng.integers(0, world.n_items, len(nu))),
               rng.random(len(nu)), np.zeros(len(nu), bool))
        mine = np.isin(rows[0], short)
        pool = tuple(np.r_[a[mine], x] for a, x in zip(rows, new, strict=True))
        held = int(mine.sum())  # all kept (distinct, fewer than wanted), then the new at random
        keep = _select(pool[0], pool[1], np.r_[np.arange(held), held + rng.permutation(len(nu))],
                       want, world.n_items)
        rows = tuple(np.r_[a[~mine], x[keep]] for a, x in zip(rows, pool, strict=True))
    u, item, s, taste = rows
    order = np.argsort(u + s)  # by user, then time
    u, item, s, taste = u[order], item[order], s[order], taste[order]
    g = users[u]
    rating = np.clip(np.rint(rng.normal(np.where(taste, 4.0, 3.0), 0.9)), 1, 5)
    return {"user": (g + 1).astype(np.int64), "item": (item + 1).astype(np.int64),
            "rating": rating.astype(np.int8),
            "timestamp": (world.start[g] + s * world.span[g]).astype(np.int64)}


def blocks(n_interactions: int, n_users: int | None = None, n_items: int | None = None,
           seed: int = 0, **params) -> Iterator[dict[str, np.ndarray]]:
    """The log's rows, one dict of column arrays per block of :data:`BLOCK_USERS` users."""
    du, di = default_shape(n_interactions)
    world = make_world(n_interactions, n_users or du, n_items or di, seed, **params)
    for b in range(-(-len(world.counts) // BLOCK_USERS)):
        yield _block(world, b)


def generate(n_interactions: int, n_users: int | None = None, n_items: int | None = None,
             seed: int = 0, **params) -> pd.DataFrame:
    """The log as a DataFrame ``user, item, rating, timestamp`` (exactly ``n_interactions``
    distinct (user, item) rows, by user then time). ``params``: see :func:`make_world`."""
    parts = list(blocks(n_interactions, n_users, n_items, seed, **params))
    return pd.DataFrame({c: np.concatenate([p[c] for p in parts]) for c in COLUMNS})


def write_csv(path: str | Path, n_interactions: int, n_users: int | None = None,
              n_items: int | None = None, seed: int = 0, **params) -> Path:
    """Stream the rows of :func:`generate` to a CSV with a header, one block at a time."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = Path(path)
    with open(path, "wb") as f:
        f.write((",".join(COLUMNS) + "\n").encode())
        for part in blocks(n_interactions, n_users, n_items, seed, **params):
            pacsv.write_csv(pa.table(part), f, pacsv.WriteOptions(include_header=False))
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--interactions", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--users", type=int, help="default: scaled from MovieLens-25M")
    ap.add_argument("--items", type=int, help="default: scaled from MovieLens-25M")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t = time.perf_counter()
    write_csv(args.out, args.interactions, args.users, args.items, args.seed)
    print(f"{args.out}: {args.interactions:,} rows, {args.out.stat().st_size / 2**20:.0f} MiB "
          f"in {time.perf_counter() - t:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
