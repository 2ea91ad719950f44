"""Evaluation protocols beyond one file split in memory: temporal cuts with unseen users and items
handled explicitly, pre-split train/test files, and the negatives of the sampled (NCF) protocol.

Unseen users and items. A temporal cut: models are trained on train and can only rank what
train taught them, so the evaluation universe is train's; test pairs whose user or item has no
train interaction are **dropped** and counted (``test_unseen_users``, ``test_unseen_items``,
``test_pairs_unseen`` in the ``split`` section of the results; :data:`UNSEEN_POLICY`).
Pre-split files: a published split ranks every item its files name, so the catalogue is the
items of the train, test and negatives files (an item without train interactions is scored from
the model's untrained state for it) and only test users unseen in train are dropped
(:func:`read_split`, :data:`PRESPLIT_POLICY`).

The sampled protocol (NCF, He et al. 2017) ranks each test item among a few negatives only. It is
here to reproduce papers: sampled metrics can reorder models (Krichene & Rendle, KDD 2020), so
full-ranking metrics are always reported beside them.
"""

from __future__ import annotations

import math
import re
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .data import IdMap, Interactions, normalize_id
from .reading import open_text, read_ratings
from .split import temporal, temporal_cut

UNSEEN_POLICY = (
    "dropped: test pairs whose user or item has no train interaction are not evaluated (no model "
    "can rank an item, or serve a user, that train never showed it); users without train "
    "interactions are not evaluated; the candidates are the items seen in train")
PRESPLIT_POLICY = (
    "kept: the catalogue is every item of the train, test and negatives files, and an item "
    "without train interactions is scored from the model's untrained state for it; test pairs "
    "whose user has no train interaction are dropped (no model can serve such a user)")
SAMPLED_WARNING = (
    "warning: sampled metrics (sampled_*) rank each test item among a few negatives only; they "
    "can reorder models (Krichene & Rendle, KDD 2020). Use them to reproduce papers; judge "
    "models by the full-ranking metrics.")
FORMATS = ("auto", "ratings", "lightgcn", "lists")  # "lists": explicit only, never sniffed


# --------------------------------------------------------------------------- unseen ids


def _restrict_train(train: Interactions) -> Interactions:
    """``train`` over id maps that hold only the users and items it has interactions for."""
    deg = np.diff(train.matrix.indptr)
    seen_u = np.flatnonzero(deg > 0)
    seen_i = np.flatnonzero(np.bincount(train.matrix.indices, minlength=train.n_items) > 0)
    if len(seen_u) == train.n_users and len(seen_i) == train.n_items:
        return train
    new_u = np.full(train.n_users, -1, dtype=np.int64)
    new_u[seen_u] = np.arange(len(seen_u))
    new_i = np.full(train.n_items, -1, dtype=np.int64)
    new_i[seen_i] = np.arange(len(seen_i))
    rows = np.repeat(np.arange(train.n_users), deg)
    return Interactions._build(
        IdMap(train.users.ids[seen_u]), IdMap(train.items.ids[seen_i]),
        new_u[rows], new_i[train.matrix.indices], train.timestamps,
        train.rows if train.rows is not None else np.arange(train.nnz), train.source,
        train.item_names)


def _attach_test(train: Interactions, users: np.ndarray, items: np.ndarray,
                 timestamps: np.ndarray | None, rows: np.ndarray, source: str
                 ) -> tuple[Interactions, dict]:
    """Test pairs (raw ids) over train's id maps; pairs with an id train lacks are dropped and
    counted."""
    users = np.asarray(users, dtype=object).astype(str)
    items = np.asarray(items, dtype=object).astype(str)
    u = pd.Index(train.users.ids).get_indexer(users)
    i = pd.Index(train.items.ids).get_indexer(items)
    ok = (u >= 0) & (i >= 0)
    test = Interactions._build(train.users, train.items, u[ok], i[ok],
                               None if timestamps is None else timestamps[ok],
                               np.asarray(rows)[ok], source, train.item_names)
    info = {"test_pairs_total": int(len(ok)),
            "test_unseen_users": int(len(np.unique(users[u < 0]))),
            "test_unseen_items": int(len(np.unique(items[i < 0]))),
            "test_pairs_unseen": int((~ok).sum()),
            "unseen": UNSEEN_POLICY}
    return test, info


def restrict_to_train(train: Interactions, test: Interactions
                      ) -> tuple[Interactions, Interactions, dict]:
    """Re-map ``train`` and ``test`` onto the users and items that train has interactions for.

    Returns ``(train, test, info)``: test pairs whose user or item is unseen in train are dropped
    and ``info`` counts them (``test_pairs_total``, ``test_unseen_users``, ``test_unseen_items``,
    ``test_pairs_unseen``, ``unseen``: the policy in words).
    """
    new_train = _restrict_train(train)
    coo = test.matrix.tocoo()
    rows = test.rows if test.rows is not None else np.arange(test.nnz)
    new_test, info = _attach_test(new_train, test.users.raw(coo.row), test.items.raw(coo.col),
                                  test.timestamps, rows, test.source)
    return new_train, new_test, info


def _need_pairs(train: Interactions, test: Interactions, where: str) -> None:
    if train.nnz == 0:
        raise ValueError(f"{where}: no train interactions")
    if test.nnz == 0:
        raise ValueError(f"{where}: no test pair left to evaluate (every test user or item is "
                         "unseen in train, or the test set is empty)")


def parse_cut(text: str | float) -> float:
    """``--cut``: a fraction in (0, 1) (quantile of the timestamps), a timestamp (a number >= 1,
    in the unit of the file's timestamps) or a date (``2000-12-01``, as UTC epoch seconds, the
    unit :func:`read_ratings` gives date columns)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        try:
            stamp = pd.Timestamp(str(text))
        except (TypeError, ValueError):
            raise ValueError(f"--cut expects a fraction in (0, 1), a timestamp or a date, "
                             f"got {text!r}") from None
        if stamp.tzinfo is None:
            stamp = stamp.tz_localize("UTC")
        return float((stamp - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1))
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"--cut expects a fraction in (0, 1) or a timestamp, got {text!r}")
    return value


def temporal_split(data: Interactions, cut: float = 0.8
                   ) -> tuple[Interactions, Interactions, dict]:
    """:func:`recsys_metric.split.temporal` then :func:`restrict_to_train`.

    ``info`` adds to the unseen counts ``cut`` (as given), ``cut_time`` (the timestamp it
    resolved to; interactions strictly after it are test) and ``data_users`` / ``data_items``
    (before restriction).
    """
    at = temporal_cut(data, cut)
    train, test = temporal(data, cut)
    if train.nnz == 0 or test.nnz == 0:
        raise ValueError(f"{data.source}: the temporal cut at {at:g} leaves "
                         f"{'no train' if train.nnz == 0 else 'no test'} interactions")
    train, test, info = restrict_to_train(train, test)
    _need_pairs(train, test, data.source)
    return train, test, {"cut": float(cut), "cut_time": at, "data_users": data.n_users,
                         "data_items": data.n_items, **info}


def share_after(train: Interactions, test: Interactions) -> float | None:
    """The share of test pairs (of users with a train history) that come at or after their
    user's latest train interaction: about 1 when the test holds each user's next items
    (leave-last-out, a cut in time), well below for a random holdout. None without timestamps
    (or without a test pair of a train user). ``test`` is over ``train``'s users."""
    if train.timestamps is None or test.timestamps is None:
        return None
    last = np.full(train.n_users, -np.inf)
    np.maximum.at(last, np.repeat(np.arange(train.n_users), np.diff(train.matrix.indptr)),
                  train.timestamps)
    users = np.repeat(np.arange(test.n_users), np.diff(test.matrix.indptr))
    has = np.isfinite(last[users])
    if not has.any():
        return None
    return float(np.mean(test.timestamps[has] >= last[users[has]]))


def task_of(train: Interactions, test: Interactions) -> dict:
    """What a split asks for: ``{"task", "reason", "share_after", "test_items_per_user"}``.

    ``"next"`` when the test holds each user's next item: at most about one item per test user
    (fewer than 2 on average), most of them (half or more, :func:`share_after`) at or after the
    user's train history; ``"any"`` otherwise (a random holdout, several future items, no
    timestamps). CML's time order was chosen for the first; on the others it loses or ties on
    validation splits shaped like them (``experiments/results/task_defaults.md``)."""
    per_user = np.diff(test.matrix.indptr)
    items = float(per_user[per_user > 0].mean()) if test.nnz else 0.0
    after = share_after(train, test)
    out = {"share_after": after, "test_items_per_user": round(items, 3)}
    if after is None:
        return {"task": "any", "reason": "no timestamps to tell the next item", **out}
    if after >= 0.5 and items < 2:
        return {"task": "next", "reason": f"the test holds each user's next item ({after:.0%} "
                                          "after their train history)", **out}
    why = (f"{items:.1f} test items per user" if after >= 0.5
           else f"only {after:.0%} of the test after each user's train history")
    return {"task": "any", "reason": f"the test is not each user's next item ({why})", **out}


# --------------------------------------------------------------------------- pre-split files


def sniff_lightgcn(path: str | Path, lines: int = 1000) -> bool:
    """Whether ``path`` looks like the one-line-per-user format of the LightGCN / NGCF benchmarks
    (``user item item ...``, whitespace separated integer ids): no other separator, integers only,
    and lines of different lengths or longer than four fields (a fixed count of at most four
    reads as columns, e.g. ``user item rating timestamp``; force it with ``format="lightgcn"``)."""
    head = _integer_lines(path, lines)
    counts = {len(f) for f in head or []}
    return bool(counts) and (len(counts) > 1 or max(counts) > 4)


def _integer_lines(path: str | Path, lines: int = 1000) -> list[list[str]] | None:
    """The first ``lines`` non-empty lines split on whitespace, if every field is an integer."""
    with open_text(path) as f:
        head = [line.split() for line in islice(f, lines) if line.strip()]
    return head if head and all(tok.isdigit() for f in head for tok in f) else None


def read_lightgcn(path: str | Path) -> Interactions:
    """Read a ``user item item ...`` file (LightGCN / NGCF ``train.txt`` / ``test.txt``).

    A line with a user alone holds no interaction. Rows keep file order (no timestamps).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    users: list[str] = []
    items: list[str] = []
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            toks = line.split()
            for tok in toks:
                if not tok.isdigit():
                    raise ValueError(f"{path}: line {n}: expected 'user item item ...' with "
                                     f"integer ids, got {tok!r}")
            if len(toks) > 1:
                users += [toks[0]] * (len(toks) - 1)
                items += toks[1:]
    if not users:
        raise ValueError(f"{path}: no interactions (expected lines 'user item item ...')")
    return Interactions.from_pairs(users, items, source=str(path))


def read_lists(path: str | Path, min_items: int = 1) -> Interactions:
    """Read a ``N item_1 ... item_N`` file, one line per user (citeulike-t's ``users.dat``, the
    CML paper's data): the user id is the 0-based line number, the items are taken as written.

    An empty line is a user without items: it holds no interaction but keeps its line number, so
    the users after it keep their ids (as ``0`` alone does). Users with fewer than ``min_items``
    items are left out (their ids are not reused). Rows keep file order (no timestamps); an item
    repeated on a line counts toward ``N`` and collapses to one pair.

    Never detected by ``format="auto"``: a file of integer lines reads as the LightGCN format
    (``user item item ...``) too, so ask for this one with ``format="lists"``.

    Raises
    ------
    ValueError
        Naming the file and line: a count that is not a non-negative integer, or that differs
        from the number of items on its line; or a file without any user left.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if isinstance(min_items, bool) or not isinstance(min_items, int | np.integer) \
            or min_items < 1:
        raise ValueError(f"min_items must be an integer >= 1, got {min_items!r}")
    users: list[str] = []
    items: list[str] = []
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            toks = line.split()
            if not toks:
                continue
            if not toks[0].isdigit():
                raise ValueError(f"{path}: line {n}: expected 'N item_1 ... item_N' with N a "
                                 f"count of items, got {toks[0]!r}")
            if int(toks[0]) != len(toks) - 1:
                raise ValueError(f"{path}: line {n}: the count says {int(toks[0])} items but "
                                 f"{len(toks) - 1} follow (expected 'N item_1 ... item_N')")
            if len(toks) - 1 >= min_items:
                users += [str(n - 1)] * (len(toks) - 1)
                items += toks[1:]
    if not users:
        raise ValueError(f"{path}: no interactions (expected lines 'N item_1 ... item_N'"
                         + (f", users with at least {min_items} items)" if min_items > 1 else ")"))
    return Interactions.from_pairs(users, items, source=str(path))


def _read_any(path: str | Path, fmt: str, read_kw: dict) -> tuple[Interactions, str]:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file")
    if fmt == "lists":
        return read_lists(path, read_kw.get("min_items", 1)), "lists"
    if fmt == "lightgcn" or (fmt == "auto" and sniff_lightgcn(path)):
        return read_lightgcn(path), "lightgcn"
    return read_ratings(path, **read_kw), "ratings"


def read_interactions(path: str | Path, format: str = "auto", **read_kw) -> Interactions:
    """One interactions file: :func:`read_lightgcn` for that format (``format="lightgcn"``, or
    ``"auto"`` and :func:`sniff_lightgcn` says so), :func:`read_lists` for ``format="lists"``
    (never detected; ``min_items`` from ``read_kw``), else :func:`read_ratings` with
    ``read_kw``. The two line formats ignore :func:`read_ratings`' options."""
    return _read_any(path, format, read_kw)[0]


def _with_items(train: Interactions, extra: list[str]) -> Interactions:
    """``train`` over a catalogue grown by ``extra`` item ids (no interaction; appended, so every
    train item keeps its index)."""
    if not extra:
        return train
    items = IdMap(np.concatenate([train.items.ids, np.asarray(extra, dtype=object)]))
    m = train.matrix
    matrix = sp.csr_matrix((m.data, m.indices, m.indptr), shape=(train.n_users, len(items)))
    matrix.has_sorted_indices = True
    return Interactions(train.users, items, matrix, train.timestamps, train.rows, train.source,
                        train.item_names)


def read_split(train_path: str | Path, test_path: str | Path, format: str = "auto",
               negatives: str | Path | None = None, **read_kw
               ) -> tuple[Interactions, Interactions, dict]:
    """Read a given train/test split; both over one id map: train's users, and a catalogue of
    every item of the train, test and ``negatives`` files.

    A published split ranks the items its test and negatives files name, trained on or not (the
    NCF files hold items no train row has); they join the catalogue with no train interaction,
    and each model scores them from where training leaves an item it never saw as a positive
    (CML: sampled as a negative only, so pushed away from users; ALS: zero factors; BPR and
    its random start; EASE and popularity: zero). Test users without train interactions cannot
    be served and are dropped.

    Parameters
    ----------
    train_path, test_path : any file :func:`read_ratings` reads, or the LightGCN format
        (:func:`read_lightgcn`).
    format : ``"auto"`` (detect the LightGCN format with :func:`sniff_lightgcn`; a test file of
        integers only is read like a LightGCN train file), ``"ratings"``, ``"lightgcn"`` or
        ``"lists"`` (:func:`read_lists`, never detected); applies to both files.
    negatives : the sampled protocol's negatives file (:func:`read_negatives`), whose items join
        the catalogue too.
    read_kw : passed to :func:`read_ratings` (``user_col``, ``min_rating``, ...).

    Returns
    -------
    train, test, info
        ``test`` holds the test pairs whose user is in train; ``info`` counts the others
        (``test_unseen_users``, ``test_pairs_unseen``), the test pairs also in train
        (``test_pairs_in_train``: kept, and by the full-ranking protocol guaranteed misses,
        since train items are never candidates), the catalogue (``catalogue_items``,
        ``items_without_train``: from the test file, ``test_unseen_items``, and from the
        negatives, ``negative_items_without_train``; ``test_pairs_item_without_train``), and
        names the files and formats.
    """
    train, f_train = _read_any(train_path, format, read_kw)
    if format == "auto" and f_train == "lightgcn" and _integer_lines(test_path):
        format = "lightgcn"  # a test file of 'user item' lines is the same format
    raw, f_test = _read_any(test_path, format, read_kw)
    n_train_items = train.n_items
    from_test = [x for x in raw.items.ids if x not in train.items]
    from_negatives = ([x for x in negative_items(negatives)
                       if x not in train.items and x not in raw.items]
                      if negatives is not None else [])
    train = _with_items(train, from_test + from_negatives)
    coo = raw.matrix.tocoo()
    rows = raw.rows if raw.rows is not None else np.arange(raw.nnz)
    test, info = _attach_test(train, raw.users.raw(coo.row), raw.items.raw(coo.col),
                              raw.timestamps, rows, str(test_path))
    _need_pairs(train, test, str(test_path))
    t = test.matrix.tocoo()
    in_train = int(np.asarray(train.matrix[t.row, t.col]).ravel().astype(bool).sum())
    info.update(test_unseen_items=len(from_test), unseen=PRESPLIT_POLICY,
                catalogue_items=train.n_items,
                items_without_train=train.n_items - n_train_items,
                negative_items_without_train=len(from_negatives),
                test_pairs_item_without_train=int((t.col >= n_train_items).sum()))
    return train, test, {"train_file": str(train_path), "test_file": str(test_path),
                         "format": f_train if f_train == f_test else f"{f_train}+{f_test}",
                         "test_pairs_in_train": in_train, **info}


# --------------------------------------------------------------------------- sampled protocol

_NCF_LINE = re.compile(r"^\s*\(([^()]*)\)(.*)$")


def _lookup(ids: IdMap, raw: str, kind: str, path: Path, line: int) -> int:
    try:
        return ids.index(raw, kind)
    except ValueError:
        raise ValueError(f"{path}: line {line}: unknown {kind} id {raw!r} (not in train)"
                         ) from None


def _group(users: list[int] | np.ndarray, items: list[int] | np.ndarray
           ) -> dict[int, np.ndarray]:
    u = np.asarray(users, dtype=np.int64)
    i = np.asarray(items, dtype=np.int64)
    order = np.argsort(u, kind="stable")
    keys, starts = np.unique(u[order], return_index=True)
    return {int(k): np.unique(part)
            for k, part in zip(keys, np.split(i[order], starts[1:]), strict=True)}


def read_negatives(path: str | Path, users: IdMap, items: IdMap) -> dict[int, np.ndarray]:
    """Negatives per user for the sampled protocol, with raw ids mapped through ``users`` and
    ``items`` (train's id maps).

    Two formats, told apart by the first line:

    - NCF ``.test.negative``: ``(user,item)<TAB>neg1<TAB>neg2...`` (tabs or spaces); the pair's
      item is the test item the line was drawn for (checked to be a known id, otherwise unused);
    - a table (CSV, TSV, with or without header) of ``user,item`` rows, one per negative.

    A user on several lines gets the union of their negatives. Returns ``{user index: sorted
    unique item indices}``.

    Raises
    ------
    ValueError
        Naming the file and line: a malformed line, or an id that train does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if _is_ncf(path):
        return _read_ncf(path, users, items)
    return _read_table_negatives(path, users, items)


def _ncf_lines(path: Path):
    """``(line, user, test item, [negative items])`` of each line of an NCF ``.test.negative``
    file, raw ids as written; ValueError naming the line of a malformed one."""
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            m = _NCF_LINE.match(line)
            pair = m[1].split(",") if m else []
            if len(pair) != 2 or not all(p.strip() for p in pair):
                raise ValueError(f"{path}: line {n}: expected '(user,item)' then tab-separated "
                                 f"negative item ids, got {line.strip()[:60]!r}")
            negs = m[2].split()
            if not negs:
                raise ValueError(f"{path}: line {n}: no negative items after ({m[1]})")
            yield n, pair[0].strip(), pair[1].strip(), negs


def _negatives_table(path: Path) -> tuple[pd.DataFrame, int, str, str]:
    from .reading import ITEM_NAMES, USER_NAMES, find_column, read_table

    df, first_line = read_table(path, None)
    if len(df) == 0:
        raise ValueError(f"{path}: no negatives")
    ucol = find_column(path, df, None, USER_NAMES, "user", True)
    icol = find_column(path, df, None, ITEM_NAMES, "item", True)
    return df, first_line, ucol, icol


def _is_ncf(path: Path) -> bool:
    with open_text(path) as f:
        first = f.readline()
    if not first.strip():
        raise ValueError(f"{path}: line 1: empty (expected '(user,item)' and negative items, or "
                         "a 'user,item' table)")
    return first.lstrip().startswith("(")


def negative_items(path: str | Path) -> list[str]:
    """Every item id a negatives file names (NCF: each line's test item and its negatives), in
    order of first appearance: with :func:`read_split`'s ``negatives``, they join the
    catalogue."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if _is_ncf(path):
        raw = [x for _, _, item, negs in _ncf_lines(path) for x in (item, *negs)]
    else:
        df, _, _, icol = _negatives_table(path)
        raw = df[icol].tolist()
    return list(dict.fromkeys(normalize_id(x) for x in raw))


def _read_ncf(path: Path, users: IdMap, items: IdMap) -> dict[int, np.ndarray]:
    us: list[int] = []
    its: list[int] = []
    for n, user, item, negs in _ncf_lines(path):
        u = _lookup(users, user, "user", path, n)
        _lookup(items, item, "item", path, n)
        us += [u] * len(negs)
        its += [_lookup(items, x, "item", path, n) for x in negs]
    if not us:
        raise ValueError(f"{path}: no negatives")
    return _group(us, its)


def _read_table_negatives(path: Path, users: IdMap, items: IdMap) -> dict[int, np.ndarray]:
    df, first_line, ucol, icol = _negatives_table(path)
    out = []
    for col, ids, kind in ((ucol, users, "user"), (icol, items, "item")):
        raw = df[col].map(normalize_id).to_numpy()
        idx = pd.Index(ids.ids).get_indexer(raw)
        if (idx < 0).any():
            r = int(np.flatnonzero(idx < 0)[0])
            raise ValueError(f"{path}: line {r + first_line}: unknown {kind} id {raw[r]!r} "
                             "(not in train)")
        out.append(idx)
    return _group(*out)


def sample_negatives(train: sp.csr_matrix, test: sp.csr_matrix, n: int, seed: int = 0
                     ) -> dict[int, np.ndarray]:
    """``n`` items drawn uniformly without replacement, per test user, among the items the user
    has in neither train nor test (all of them when fewer are left). Seeded: one generator walks
    the test users in index order, so every model is ranked against the same negatives."""
    if n < 1:
        raise ValueError(f"the number of sampled negatives must be >= 1, got {n}")
    train, test = sp.csr_matrix(train), sp.csr_matrix(test)
    both = (train + test).tocsr()
    both.sum_duplicates()
    both.sort_indices()
    n_items = both.shape[1]
    rng = np.random.default_rng(seed)
    out: dict[int, np.ndarray] = {}
    for u in np.flatnonzero(np.diff(test.indptr) > 0):
        taken = both.indices[both.indptr[u]:both.indptr[u + 1]].astype(np.int64)
        free = n_items - len(taken)
        if free <= 0:
            out[int(u)] = np.zeros(0, dtype=np.int64)
            continue
        j = rng.choice(free, min(n, free), replace=False)
        # The j-th free item (0-based) is j plus the number of taken items at or before it;
        # taken[k] - k counts the free items before taken[k] (nondecreasing).
        j = j + np.searchsorted(taken - np.arange(len(taken)), j, side="right")
        out[int(u)] = np.sort(j)
    return out
