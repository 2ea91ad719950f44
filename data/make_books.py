"""Generate the bundled synthetic ``books`` dataset (``data/books/items.csv`` and ``ratings.csv``).

Everything here is made up: titles are composed from per-genre word lists and the interactions are
sampled from a planted taste model. Nothing is copied from any real dataset. The output is
deterministic (fixed seed, sorted rows, fixed formatting), so re-running the script reproduces the
files byte for byte.

Generative model
----------------
- 500 items in 10 genres of unequal size. Each genre has a centre in a ``DIM``-dimensional latent
  space and 3 sub-clusters around it; every item sits near one sub-cluster centre.
- Item popularity multiplier: Zipf-like, ``rank ** -POP_EXPONENT`` over a random ranking.
- 1,000 users. Each has 1-3 favourite genres (chosen with genre-dependent prior weights) with
  Dirichlet weights, and for each favourite genre an anchor point near one of its sub-clusters.
- Activity: lognormal number of reads per user, at least 5.
- Reads are drawn in order without replacement. At each step: with probability ``EXPLORE`` the item
  comes from global popularity; otherwise a genre is drawn from the user's genre weights and an item
  of that genre with probability ``popularity ** POP_WEIGHT * exp(-d^2 / (2 * KERNEL_SIGMA^2))``
  (``d`` = latent distance to the user's anchor for that genre); with probability ``FOLLOW_UP`` it
  is a book close in latent space to the previous read (a "follow-up", any genre). Over the
  sequence the genre weights drift toward one "drift genre" of the user, and that genre's anchor
  drifts slowly, so the later reads are predictable from the earlier ones, but not trivially.
- Ratings 1-5 (integers) grow with the user-item affinity, plus a user bias and noise.
- Timestamps: integer Unix seconds within 2023-01-01 .. 2024-12-31, strictly increasing per user.

Usage::

    python data/make_books.py            # (re)write data/books/*.csv
    python data/make_books.py --check    # also print a leave-last-out HR@10 sanity check
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SEED = 7
N_ITEMS = 500
N_USERS = 1000
DIM = 6
N_SUB = 3  # sub-clusters per genre
GENRE_SPREAD = 4.0  # std of genre centres
SUB_SPREAD = 1.5  # std of sub-cluster centres around their genre centre
ITEM_SPREAD = 0.6  # std of items around their sub-cluster centre
ANCHOR_SPREAD = 0.6  # std of a user's anchor around the chosen sub-cluster centre
KERNEL_SIGMA = 2.0
POP_EXPONENT = 0.8
POP_WEIGHT = 1.0  # how strongly popularity tilts the within-genre choice
EXPLORE = 0.3  # share of reads drawn from global popularity, ignoring taste
DRIFT = 0.7  # share of genre weight moved onto the drift genre by the end of the sequence
ANCHOR_DRIFT = 0.08  # per-read random-walk step of the drift genre's anchor
FOLLOW_UP = 0.3  # share of reads drawn close (in latent space) to the previous read
FOLLOW_SIGMA = 1.0
ACTIVITY_MEDIAN = 30
ACTIVITY_SIGMA = 0.7
MIN_READS = 5
MAX_READS = 200
T_START = 1672531200  # 2023-01-01T00:00:00Z
T_END = 1735689599  # 2024-12-31T23:59:59Z

# name, prior weight of being a favourite genre, title templates, word lists. The words are picked
# so that titles come out as unusual combinations (invented places and names), not existing books;
# DENYLIST guards against a few well-known titles the templates could still spell.
GENRES: list[tuple[str, float, list[str], dict[str, list[str]]]] = [
    (
        "mystery",
        1.4,
        ["The {adj} {noun}", "Death at {place}", "The {noun} of {place}", "The {place} {noun}"],
        {
            "adj": ["Silent", "Crooked", "Seventh", "Drowned", "Borrowed", "Velvet", "Unsigned",
                    "Hollow", "Rusted", "Ninth", "Misfiled", "Left-Handed", "Tideworn"],
            "noun": ["Harbor", "Ledger", "Keyhole", "Alibi", "Footprint", "Stairwell",
                     "Telegram", "Locket", "Cipher", "Dumbwaiter", "Codicil", "Cufflink"],
            "place": ["Marrow Lane", "Fenwick Hall", "Greyhaven Pier", "Quarry House",
                      "Brindle Court", "Ashcombe", "Pellham Sound", "Wexley Locks"],
        },
    ),
    (
        "science fiction",
        1.2,
        ["{adj} {noun}", "The {noun} Protocol", "Beyond the {adj} {noun}", "The {place} Signal"],
        {
            "adj": ["Quantum", "Orbital", "Cobalt", "Neural", "Fractured", "Helix", "Derelict",
                    "Tidal", "Lattice", "Perihelion", "Sublight", "Graphene"],
            "noun": ["Gardens", "Engines", "Relay", "Colony", "Array", "Meridian", "Archive",
                     "Beacon", "Tides", "Circuit", "Orchard", "Cartography"],
            "place": ["Kepler Drift", "Vantara", "Tessar", "Halcyon Nine", "Ceres Deep",
                      "Oort Lantern", "Miravel", "Sable Reach"],
        },
    ),
    (
        "fantasy",
        1.3,
        ["The {adj} {noun}", "The {noun} of {place}", "The {noun}'s {noun2}",
         "Song of the {adj} {noun}"],
        {
            "adj": ["Ember", "Thorned", "Moonlit", "Ashen", "Gilded", "Wandering", "Bramble",
                    "Willow", "Lichen", "Brass-Bound", "Hearthless", "Owl-Eyed"],
            "noun": ["Warden", "Forge", "Oracle", "Dragonet", "Mapmaker", "Thornwood",
                     "Falconer", "Chalice", "Lamplighter", "Runesmith", "Ferryman", "Hedgewitch"],
            "noun2": ["Oath", "Bargain", "Lament", "Riddle", "Debt", "Vigil", "Apprentice"],
            "place": ["Elderfen", "the Glass Hills", "Vareth", "Mossgate", "the Salt Marches",
                      "Caer Lunn", "Dunmere", "Orrowind"],
        },
    ),
    (
        "romance",
        1.1,
        ["{adj} {noun} in {place}", "The {place} {noun}", "Love at {place}",
         "The {adj} {noun} Affair"],
        {
            "adj": ["Summer", "Borrowed", "Midnight", "Paper", "Lavender", "Autumn",
                    "Rosewater", "Cinnamon", "Tangerine", "Seaglass", "Windblown", "Marmalade"],
            "noun": ["Promises", "Letters", "Vows", "Bakery", "Waltz", "Orchard", "Postcards",
                     "Serenade", "Cottage", "Bookshop", "Regatta", "Recipes"],
            "place": ["Cedarwick Bay", "Honeycomb Row", "Larkspur Quay", "Marisol Point",
                      "Bellhaven", "Tulip Lane", "Port Amberly", "Willowmere"],
        },
    ),
    (
        "history",
        0.8,
        ["The {adj} {noun}", "{noun} of the {era}", "Rise and Fall of the {adj} {noun}",
         "A History of {subject}"],
        {
            "adj": ["Merchant", "Salt", "Copper", "Tin", "Frontier", "Coastal", "Riverine",
                    "Lowland", "Amber", "Ferryboat", "Toll-Road", "Granary"],
            "noun": ["Republic", "Crossing", "Guilds", "Dynasty", "Canals", "Treaty", "Harvest",
                     "Census", "Armada", "Leagues", "Charters", "Customs House"],
            "era": ["River Kingdoms", "Salt Wars", "Steam Years", "Quiet Century",
                    "Lantern Age", "Copper Compact"],
            "subject": ["Bridges", "Lighthouses", "Coinage", "Clocks", "Windmills",
                        "Postal Roads", "Ink", "Spoons", "Umbrellas", "Weights and Measures"],
        },
    ),
    (
        "cooking",
        0.9,
        ["{adj} {food}", "The {adj} Kitchen", "{number} Ways with {food}",
         "{food} for {occasion}"],
        {
            "adj": ["Smoky", "Weeknight", "Rustic", "Fearless", "Bright", "Humble", "Seasonal",
                    "Crispy", "Open-Fire", "Tin-Plate", "Thrifty", "Sunday-Slow"],
            "food": ["Lentils", "Dumplings", "Flatbreads", "Citrus", "Mushrooms", "Pickles",
                     "Noodles", "Squash", "Chillies", "Broths", "Greens", "Rye"],
            "number": ["Fifty", "Seventy", "Ninety-Nine", "Sixty", "Forty"],
            "occasion": ["Rainy Evenings", "Small Flats", "Long Tables", "Camp Stoves",
                         "Busy Mornings"],
        },
    ),
    (
        "travel",
        0.7,
        ["{adj} Roads", "Walking the {place}", "Notes from {place}", "The {adj} Traveller",
         "A {season} in {place}", "{adj} Miles to {place}"],
        {
            "adj": ["Dusty", "Slow", "Borrowed", "Winding", "Lantern", "Backcountry",
                    "Sleeper-Train", "Highland", "Wayward", "Gravel", "Ferry-Hopping", "Bicycle"],
            "place": ["Amber Coast", "Tallow Valley", "Kestrel Fjords", "Saffron Islands",
                      "Granite Steppe", "Lantern Delta", "Pinecrest Ridge", "Oxbow Lakes",
                      "Cinder Plateau", "Mistral Bay", "Juniper Pass", "Hollowmere"],
            "season": ["Winter", "Fortnight", "Summer", "Monsoon", "Spring", "Rainy Month"],
        },
    ),
    (
        "poetry",
        0.5,
        ["{adj} {noun}", "Poems for {occasion}", "The {noun} Sequence", "{noun} and {noun2}"],
        {
            "adj": ["Unfinished", "Salt", "Tender", "Paper", "Borrowed", "Wintering", "Pale",
                    "Ochre", "Kitchen", "Tidewater", "Quarter-Hour", "Moth"],
            "noun": ["Hours", "Psalms", "Weather", "Orchards", "Lanterns", "Sparrows", "Rivers",
                     "Elegies", "Thresholds", "Lullabies", "Embers", "Inventories"],
            "noun2": ["Salt", "Smoke", "Linen", "Clay", "Frost", "Moss", "Stone"],
            "occasion": ["Rainy Tuesdays", "Long Drives", "Small Kitchens", "Night Trains",
                         "First Snow", "Empty Rooms"],
        },
    ),
    (
        "horror",
        0.8,
        ["The {adj} {noun}", "{noun} in the {place}", "What the {noun} Heard",
         "Do Not Open the {noun}"],
        {
            "adj": ["Drowning", "Grinning", "Sunless", "Whispering", "Crawling", "Faceless",
                    "Bleached", "Marrow", "Lidless", "Teething", "Hymnless", "Ninefold"],
            "noun": ["Doll", "Cellar", "Choir", "Well", "Attic", "Scarecrow", "Wardrobe",
                     "Radio", "Nursery", "Chapel", "Dollhouse", "Pram"],
            "place": ["Walls", "Marsh", "Pines", "Fog", "Hedgerow", "Crawlspace", "Silo"],
        },
    ),
    (
        "biography",
        0.6,
        ["{first} {last}: A Life", "The {adj} Life of {first} {last}", "Becoming {first} {last}",
         "{first} {last} and the {noun}"],
        {
            "first": ["Ada", "Tomas", "Imre", "Lucia", "Odile", "Pieter", "Rosalind", "Yusuf",
                      "Marguerite", "Anselm", "Hedda", "Caspar"],
            "last": ["Vantreuil", "Okonkwo-Hale", "Brannigar", "Selvik", "Marchetti-Ray",
                     "Quillfeather", "Dorrance", "Ashgrove", "Petrakova", "Lindqvar"],
            "adj": ["Restless", "Unlikely", "Quiet", "Improbable", "Double", "Stubborn"],
            "noun": ["Lighthouse", "Telescope", "Orchestra", "Printing Press", "Expedition",
                     "Cartographers"],
        },
    ),
]
# Well-known titles the templates above could spell; never emitted (checked case-insensitively).
DENYLIST = {
    "the silent witness",
    "the drowned world",
    "the hollow crown",
    "the derelict",
    "the ember blade",
}
GENRE_NAMES = [g[0] for g in GENRES]
N_GENRES = len(GENRES)


def _fill(template: str, words: dict[str, list[str]], rng: np.random.Generator) -> str:
    out = template
    for key in sorted(words, key=len, reverse=True):  # "noun2" before "noun"
        token = "{" + key + "}"
        while token in out:
            out = out.replace(token, words[key][rng.integers(len(words[key]))], 1)
    return out


def make_titles(genre_of: np.ndarray, rng: np.random.Generator) -> list[str]:
    seen: set[str] = set()
    titles = []
    for g in genre_of:
        _, _, templates, words = GENRES[g]
        for _ in range(10_000):
            t = _fill(templates[rng.integers(len(templates))], words, rng)
            # Reject repeated words ("Salt and Salt") and duplicates across the catalogue.
            ws = t.lower().split()
            if t not in seen and t.lower() not in DENYLIST and len(set(ws)) == len(ws):
                break
        else:  # pragma: no cover - word lists are far larger than the catalogue
            raise RuntimeError(f"ran out of titles for genre {GENRE_NAMES[g]}")
        assert "," not in t and '"' not in t
        seen.add(t)
        titles.append(t)
    return titles


def generate(seed: int = SEED):
    rng = np.random.default_rng(seed)

    # ---- items -------------------------------------------------------------------------------
    # Unequal genre sizes, at least 25 each.
    shares = rng.dirichlet(np.full(N_GENRES, 6.0))
    sizes = 25 + rng.multinomial(N_ITEMS - 25 * N_GENRES, shares)
    genre_of = np.repeat(np.arange(N_GENRES), sizes)
    genre_centre = rng.normal(0.0, GENRE_SPREAD, (N_GENRES, DIM))
    sub_centre = genre_centre[:, None, :] + rng.normal(0.0, SUB_SPREAD, (N_GENRES, N_SUB, DIM))
    sub_of = rng.integers(N_SUB, size=N_ITEMS)
    item_pos = sub_centre[genre_of, sub_of] + rng.normal(0.0, ITEM_SPREAD, (N_ITEMS, DIM))
    pop = rng.permutation(N_ITEMS) + 1.0
    pop = pop**-POP_EXPONENT
    pop /= pop.sum()
    # Shuffle so that item ids reveal nothing about the genre.
    perm = rng.permutation(N_ITEMS)
    genre_of, item_pos, pop = genre_of[perm], item_pos[perm], pop[perm]
    # Own stream, so that editing the word lists leaves the interactions unchanged.
    titles = make_titles(genre_of, np.random.default_rng([seed, 1]))
    items_in = [np.flatnonzero(genre_of == g) for g in range(N_GENRES)]
    pop_w = pop**POP_WEIGHT

    # ---- users -------------------------------------------------------------------------------
    genre_prior = np.array([g[1] for g in GENRES])
    genre_prior /= genre_prior.sum()
    n_reads = np.round(
        ACTIVITY_MEDIAN * np.exp(rng.normal(0.0, ACTIVITY_SIGMA, N_USERS))
    ).astype(int)
    n_reads = np.clip(n_reads, MIN_READS, MAX_READS)

    rows = []  # (user, item, rating, timestamp)
    span_total = T_END - T_START
    for u in range(N_USERS):
        k = rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25])
        favs = rng.choice(N_GENRES, size=k, replace=False, p=genre_prior)
        w0 = rng.dirichlet(np.full(k, 1.5))
        drift_idx = rng.integers(k)
        anchors = (
            sub_centre[favs, rng.integers(N_SUB, size=k)]
            + rng.normal(0.0, ANCHOR_SPREAD, (k, DIM))
        )
        bias = rng.normal(0.0, 0.5)
        n = n_reads[u]

        read = np.zeros(N_ITEMS, dtype=bool)
        seq_items, seq_aff = [], []
        for t in range(n):
            f = t / max(n - 1, 1)
            w = (1.0 - DRIFT * f) * w0
            w[drift_idx] += DRIFT * f
            if t > 0:
                anchors[drift_idx] += rng.normal(0.0, ANCHOR_DRIFT, DIM)
            roll = rng.random()
            if roll < EXPLORE:
                p = np.where(read, 0.0, pop)
            elif t > 0 and roll < EXPLORE + FOLLOW_UP:
                # Follow-up read: something close to the previous book, any genre.
                d2 = ((item_pos - item_pos[seq_items[-1]]) ** 2).sum(1)
                p = pop_w * np.exp(-d2 / (2 * FOLLOW_SIGMA**2))
                p[read] = 0.0
            else:
                j = rng.choice(k, p=w)
                cand = items_in[favs[j]]
                d2 = ((item_pos[cand] - anchors[j]) ** 2).sum(1)
                p = np.zeros(N_ITEMS)
                p[cand] = pop_w[cand] * np.exp(-d2 / (2 * KERNEL_SIGMA**2))
                p[read] = 0.0
            if p.sum() <= 0:  # nothing left (or all underflowed): fall back to popularity
                p = np.where(read, 0.0, pop)
            i = rng.choice(N_ITEMS, p=p / p.sum())
            read[i] = True
            # Affinity (drives the rating): closeness to the user's anchor for the book's genre plus
            # that genre's current weight; books outside the favourite genres get a low floor.
            gi = np.flatnonzero(favs == genre_of[i])
            if len(gi):
                j = gi[0]
                d2 = ((item_pos[i] - anchors[j]) ** 2).sum()
                aff = 0.6 + 0.4 * w[j] - d2 / (2 * (2 * KERNEL_SIGMA) ** 2)
            else:
                aff = -1.0
            seq_items.append(i)
            seq_aff.append(aff)

        aff = np.array(seq_aff)
        score = 3.7 + bias + 1.1 * aff + rng.normal(0.0, 0.7, n)
        ratings = np.clip(np.rint(score), 1, 5).astype(int)

        # Strictly increasing timestamps over an activity window inside the two years.
        span = int(span_total * rng.uniform(0.15, 1.0))
        start = T_START + int(rng.integers(0, span_total - span + 1))
        gaps = rng.exponential(1.0, n)
        ts = start + np.floor(np.cumsum(gaps) / gaps.sum() * (span - n)).astype(np.int64)
        ts = ts + np.arange(n)  # strictly increasing, still <= start + span
        for i, r, s in zip(seq_items, ratings, ts, strict=True):
            rows.append((u, int(i), int(r), int(s)))

    return genre_of, titles, rows


def write(out_dir: Path, genre_of, titles, rows) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["item_id,title,genre"]
    for i in range(N_ITEMS):
        lines.append(f"b{i + 1:04d},{titles[i]},{GENRE_NAMES[genre_of[i]]}")
    (out_dir / "items.csv").write_bytes(("\n".join(lines) + "\n").encode("utf-8"))

    rows = sorted(rows, key=lambda r: (r[0], r[3], r[1]))
    lines = ["user_id,item_id,rating,timestamp"]
    for u, i, r, s in rows:
        lines.append(f"u{u + 1:04d},b{i + 1:04d},{r},{s}")
    (out_dir / "ratings.csv").write_bytes(("\n".join(lines) + "\n").encode("utf-8"))


def check(rows, n_items: int = N_ITEMS, k: int = 10) -> dict[str, float]:
    """Leave-last-out HR@k (last read by timestamp held out; seen items excluded from ranking)."""
    arr = np.array(rows, dtype=np.int64)
    arr = arr[np.lexsort((arr[:, 1], arr[:, 3], arr[:, 0]))]
    users = arr[:, 0]
    last = np.r_[users[1:] != users[:-1], True]
    test = arr[last]
    train = arr[~last]
    n_users = int(users.max()) + 1
    X = np.zeros((n_users, n_items))
    X[train[:, 0], train[:, 1]] = 1.0
    target = np.zeros(n_users, dtype=np.int64)
    target[test[:, 0]] = test[:, 1]

    def hr(scores: np.ndarray) -> float:
        scores = np.where(X > 0, -np.inf, scores)
        t = scores[np.arange(n_users), target]
        # Ties count half, so equal scores neither help nor hurt the held-out item on average.
        rank = (scores > t[:, None]).sum(1) + ((scores == t[:, None]).sum(1) - 1) / 2
        return float((rank < k).mean())

    out = {}
    out["popularity"] = hr(np.broadcast_to(X.sum(0), X.shape).copy())
    # Item-kNN: cosine similarity of binary co-occurrence columns.
    C = X.T @ X
    np.fill_diagonal(C, 0.0)
    norm = np.sqrt(np.maximum(X.sum(0), 1.0))
    S = C / norm[:, None] / norm[None, :]
    out["item_knn"] = hr(X @ S)
    # Item-kNN weighted toward the most recent reads (exploits the temporal drift).
    Xr = np.zeros_like(X)
    u_tr = train[:, 0]
    starts = np.r_[0, np.flatnonzero(u_tr[1:] != u_tr[:-1]) + 1]
    lens = np.diff(np.r_[starts, len(train)])
    pos = np.arange(len(train)) - np.repeat(starts, lens)
    recency = np.repeat(lens, lens) - 1 - pos  # 0 for the last training read
    Xr[train[:, 0], train[:, 1]] = 0.8**recency
    out["item_knn_recent"] = hr(Xr @ S)
    # Implicit ALS-ish matrix factorisation (ridge on binary matrix, a few sweeps).
    rng = np.random.default_rng(0)
    f, lam = 32, 5.0
    V = rng.normal(0, 0.1, (n_items, f))
    for _ in range(10):
        U = np.linalg.solve(V.T @ V + lam * np.eye(f), V.T @ X.T).T
        V = np.linalg.solve(U.T @ U + lam * np.eye(f), U.T @ X).T
    out["mf"] = hr(U @ V.T)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "books")
    ap.add_argument("--check", action="store_true", help="print leave-last-out HR@10 baselines")
    args = ap.parse_args()
    genre_of, titles, rows = generate()
    write(args.out, genre_of, titles, rows)
    print(f"wrote {N_ITEMS} items and {len(rows)} ratings from {N_USERS} users to {args.out}")
    if args.check:
        for name, v in check(rows).items():
            print(f"HR@10 {name:16s} {v:.3f}")


if __name__ == "__main__":
    main()
