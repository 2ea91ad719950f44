"""Full-ranking offline metrics (HR, NDCG, Recall, Precision, MAP, MRR, AUC, coverage, novelty).

Every test user is ranked against the whole catalogue, minus the items that user has in train
(see DESIGN.md, "Protocols"). Scores come in batches of users; with numba each row is ranked in
one pass, in place (:mod:`recsys_metric.ranking`), else by the torch functions here (its
reference); AUC, when asked for, compares a masked copy. An ML-1M-sized split (6040 users x 3706
items) ranks in under half a second on two CPU cores, plus the model's own scoring time
(``experiments/results/evaluation_speed.md``).

Ranking order is total and deterministic: higher score first, ties broken by the lower item
index. The same order defines the top-K lists and the full rank used by MRR, so ``HR@K == 1``
exactly when the best test item's rank is ``<= K``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import torch

from .device import HAS_NUMBA


class ScoresUsers(Protocol):
    """Anything evaluable: returns float scores [len(user_idx), n_items], higher = better."""

    def score_users(self, user_idx: np.ndarray) -> np.ndarray: ...


def _as_ks(k: int | Iterable[int]) -> list[int]:
    ks = [k] if isinstance(k, (int, np.integer)) else list(k)
    if not ks or any(not isinstance(x, (int, np.integer)) or x < 1 for x in ks):
        raise ValueError(f"evaluate_ranking: k must be positive integers, got {k!r}")
    return sorted({int(x) for x in ks})


def _as_csr(m: Any, name: str) -> sp.csr_matrix:
    if not sp.issparse(m) or m.ndim != 2:
        raise ValueError(
            f"evaluate_ranking: {name} must be a 2-D scipy.sparse matrix (users x items)"
        )
    m = sp.csr_matrix(m)
    m.sort_indices()
    return m


def _batch_rows(m: sp.csr_matrix, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(row-within-batch, item) index pairs of the stored entries of ``m[users]``."""
    sub = m[users]
    rows = np.repeat(np.arange(len(users)), np.diff(sub.indptr))
    return torch.from_numpy(rows), torch.from_numpy(sub.indices.astype(np.int64))


def _top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (values, items) per row, ordered by score desc then item index asc.

    ``torch.topk`` picks arbitrarily among items tied at the cut-off; rows where such a tie
    straddles the cut fall back to a stable full sort (rare with float scores, common with
    integer ones such as popularity counts).
    """
    vals, idx = torch.topk(scores, k, dim=1)
    straddle = (scores >= vals[:, -1:]).sum(1) > k
    if straddle.any():
        rows = straddle.nonzero().squeeze(1)
        v, i = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        vals[rows], idx[rows] = v[:, :k], i[:, :k]
    # Two stable passes give the order (score desc, item asc) inside the k chosen items.
    idx, perm = torch.sort(idx, dim=1)
    vals, perm = torch.sort(vals.gather(1, perm), dim=1, descending=True, stable=True)
    return vals, idx.gather(1, perm)


def _best_test_rank(scores: torch.Tensor, is_test: torch.Tensor) -> torch.Tensor:
    """Full 1-based rank of each row's best test item (0 where none is rankable).

    rank = 1 + #items scored higher + #items tied with it at a lower index: the same total
    order as :func:`_top_k`, counted in O(n_items) per row instead of a full sort.
    """
    best = scores.masked_fill(~is_test, -torch.inf).amax(1, keepdim=True)
    tied = scores == best
    first = (is_test & tied).to(torch.int8).argmax(1, keepdim=True)  # lowest-index best test item
    before = torch.arange(scores.shape[1]).unsqueeze(0) < first
    rank = 1 + (scores > best).sum(1) + (tied & before).sum(1)
    return torch.where(torch.isfinite(best.squeeze(1)), rank, 0)


def popularity_rank(train: sp.csr_matrix) -> np.ndarray:
    """Popularity rank of every item from train interaction counts: 1 = most popular.

    Items with equal counts share the average of the ranks they span (items never seen in train
    share the last ranks), so the rank does not depend on item order.
    """
    from scipy.stats import rankdata

    counts = np.bincount(sp.csr_matrix(train).indices, minlength=train.shape[1])
    return rankdata(-counts, method="average").astype(np.float64)


def _nanmean(a: np.ndarray, n_users: int) -> float:
    """Mean over the users where the metric is defined; 0.0 without users, NaN if none is."""
    if not n_users:
        return 0.0
    ok = ~np.isnan(a)
    return float(a[ok].mean()) if ok.any() else float("nan")


def _auc(scores: torch.Tensor, is_test: torch.Tensor, train_pairs: tuple[torch.Tensor, ...],
         test_pairs: tuple[torch.Tensor, ...], n_test: torch.Tensor) -> torch.Tensor:
    """Per-row AUC: share of (test item, negative) pairs with the test item scored higher.

    Ties count half. Negatives are the items in neither train nor test of the row. With few test
    items per row (leave-last-out: one) each is compared with the whole row, O(m * n_items); with
    many, one sort of the negatives per row and a binary search per test item.
    """
    b, n_items = scores.shape
    tr_r, tr_c = train_pairs
    te_r, te_c = test_pairs
    valid_pairs = is_test[te_r, te_c]  # test items also in train lose every pair
    overlap = torch.bincount(te_r[~valid_pairs], minlength=b)
    n_neg = (n_items - torch.bincount(tr_r, minlength=b) - torch.bincount(te_r, minlength=b)
             + overlap)
    neg = scores.clone()  # NaN marks a non-negative: it compares False with everything
    neg[tr_r, tr_c] = torch.nan
    neg[te_r, te_c] = torch.nan
    # Test items of each row packed into a [b, m] query (m = most test items of a row).
    counts = torch.bincount(te_r, minlength=b)
    m = max(int(counts.max()) if len(te_r) else 0, 1)
    col = torch.arange(len(te_r)) - (torch.cumsum(counts, 0) - counts)[te_r]
    query = torch.zeros((b, m), dtype=scores.dtype)
    valid = torch.zeros((b, m), dtype=torch.bool)
    query[te_r, col] = scores[te_r, te_c]
    valid[te_r, col] = valid_pairs
    if m <= 8:
        # Per negative, (1 + sign(q - s)) / 2 is 1, 1/2 or 0; NaN terms (non-negatives, and
        # inf - inf, a tie) drop out of the nansum, so won = (n_neg + sum of signs) / 2.
        # Sums of +-1 in float32 are exact below 2**24 items.
        signs = torch.stack([torch.nansum(torch.sign(q - neg), 1) for q in query.T.unsqueeze(2)],
                            1)
        won = 0.5 * (n_neg.unsqueeze(1).double() + signs.double())
    else:
        neg = torch.nan_to_num(neg, nan=torch.inf, posinf=torch.inf, neginf=-torch.inf)
        sorted_neg = torch.sort(neg, dim=1).values
        cap = n_neg.unsqueeze(1)  # the +inf that replaced NaN sorts after the negatives
        below = torch.searchsorted(sorted_neg, query).clamp(max=cap)
        ties = torch.searchsorted(sorted_neg, query, right=True).clamp(max=cap) - below
        won = below.double() + 0.5 * ties.double()
    correct = torch.where(valid, won, 0.0).sum(1)
    pairs = n_test * n_neg.double()
    return torch.where(pairs > 0, correct / pairs.clamp(min=1), torch.nan)


def evaluate_ranking(
    model: ScoresUsers,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    k: int | Iterable[int] = (10,),
    batch_size: int = 1024,
    per_user: bool = False,
    show_progress: bool = False,
    auc: bool = True,
) -> dict[str, Any]:
    """Full-ranking top-K metrics of ``model`` on ``test``, excluding each user's train items.

    Parameters
    ----------
    model : object with ``score_users(user_idx) -> ndarray``
        Returns scores of shape ``[len(user_idx), n_items]``, higher = better; cast to float32.
        NaN scores raise ``ValueError``; ``-inf`` scores are treated like excluded items.
    train, test : scipy.sparse matrix, shape (n_users, n_items)
        Stored entries are interactions (their values are ignored). Users with at least one test
        entry are evaluated. Train items get score ``-inf``: they are never ranked nor counted in
        coverage. A test item that is also in the user's train is therefore a guaranteed miss
        (it still counts in ``|test items|``); leak-free splits never produce such pairs.
    k : int or iterable of int
        Cut-offs; every metric ``METRIC@K`` is reported for each.
    batch_size : int
        Users scored per batch. Peak memory is roughly ``batch_size * n_items`` times the
        model's bytes per score, plus 9 with AUC or without numba (a masked copy).
    auc : bool
        Compute ``AUC`` (a comparison of every test item with every negative: on a catalogue of
        25,000 items it took half the evaluation's time); False leaves it out (NaN), as the
        per-epoch validation of training and tuning does.
    per_user : bool
        Also return ``"per_user"``: a dict of numpy arrays (``user``, ``n_test`` and every
        per-user metric) aligned by position, for export.
    show_progress : bool
        Show a tqdm bar over batches.

    Returns
    -------
    dict
        ``HR@K``, ``NDCG@K``, ``Recall@K``, ``Precision@K``, ``MAP@K``, ``Coverage@K``,
        ``Novelty@K`` for each K, ``MRR``, ``AUC`` and ``users`` (number of users evaluated).
        Metrics are user averages (floats); ``AUC`` and ``Novelty@K`` average over the users where
        they are defined (NaN in ``per_user`` otherwise).

    Notes
    -----
    Rank order: higher score first, ties broken by the lower item index. This is deterministic
    and neither optimistic nor pessimistic (constant scores rank items by index), and one order
    serves both the top-K lists and MRR's full rank, so the metrics never contradict each other.
    ``NDCG@K`` = DCG / ideal DCG of ``min(K, |test|)`` hits, gain ``1 / log2(rank + 1)``.
    ``Precision@K`` = hits / K (even when fewer than K candidates exist).
    ``MAP@K`` = sum over hits at rank r <= K of precision@r, divided by ``min(K, |test|)``.
    ``MRR`` = 1 / full rank (not truncated) of the best-ranked test item; 0 if all its test
    items are in train.
    ``Coverage@K`` = share of the catalogue found in at least one user's top-K list.
    ``AUC`` = share of (test item, negative) pairs where the test item scores higher, ties counting
    half (unlike the rank order above, which breaks ties by index); negatives are the items in
    neither the user's train nor test. A test item also in train loses all its pairs. Undefined
    (NaN) for a user without negatives.
    ``Novelty@K`` = mean popularity rank (see :func:`popularity_rank`: train interaction counts,
    1 = most popular, ties share their average rank) of the items in the user's top-K list; higher
    means less popular items. Undefined (NaN) for a user without candidates.
    """
    ks = _as_ks(k)
    train, test = _as_csr(train, "train"), _as_csr(test, "test")
    if train.shape != test.shape:
        raise ValueError(
            f"evaluate_ranking: train {train.shape} and test {test.shape} differ in shape"
        )
    if batch_size < 1:
        raise ValueError(f"evaluate_ranking: batch_size must be >= 1, got {batch_size}")
    n_items = train.shape[1]
    n_test_all = np.diff(test.indptr)
    users = np.flatnonzero(n_test_all > 0)
    kmax = min(max(ks), n_items)
    # Ideal DCG for 0..kmax hits: idcg[m] = sum_{r=1..m} 1/log2(r+1).
    disc = 1.0 / torch.log2(torch.arange(2, kmax + 2, dtype=torch.float64))
    idcg = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(disc, 0)])
    pos = torch.arange(1, kmax + 1, dtype=torch.float64)

    pop_rank = torch.from_numpy(popularity_rank(train))

    out: dict[str, list[torch.Tensor]] = {"MRR": [], "AUC": []}
    for kk in ks:
        for name in ("HR", "NDCG", "Recall", "Precision", "MAP", "Novelty"):
            out[f"{name}@{kk}"] = []
    covered = {kk: torch.zeros(n_items, dtype=torch.bool) for kk in ks}

    if HAS_NUMBA:
        from .ranking import rank_batch
    starts = range(0, len(users), batch_size)
    if show_progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="evaluate", unit="batch", disable=None)  # terminal only
    for s in starts:
        u = users[s : s + batch_size]
        b = len(u)
        raw = np.asarray(model.score_users(u))
        if raw.shape != (b, n_items):
            raise ValueError(
                f"evaluate_ranking: score_users returned shape {raw.shape}, expected {(b, n_items)}"
            )
        n_test = torch.from_numpy(n_test_all[u]).to(torch.float64)
        if HAS_NUMBA:  # one pass per row, in place (recsys_metric.ranking)
            vals, order, hit_sorted, rank = map(torch.from_numpy, rank_batch(
                raw, train[u], test[u], kmax))
        if auc or not HAS_NUMBA:  # a masked copy of the scores: AUC's input, the reference's
            scores = torch.from_numpy(np.array(raw, dtype=np.float32))  # own copy: we write -inf
            if torch.isnan(scores).any():
                raise ValueError("evaluate_ranking: score_users returned NaN scores")
            tr_r, tr_c = _batch_rows(train, u)
            scores[tr_r, tr_c] = -torch.inf
            te_r, te_c = _batch_rows(test, u)
            is_test = torch.zeros((b, n_items), dtype=torch.bool)
            is_test[te_r, te_c] = True
            is_test[tr_r, tr_c] = False  # test items also in train are excluded: misses
            if not HAS_NUMBA:
                rank = _best_test_rank(scores, is_test)
                vals, order = _top_k(scores, kmax)
                # -inf entries only show up when a user has fewer than kmax candidates.
                hit_sorted = is_test.gather(1, order) & torch.isfinite(vals)  # [b, kmax]
        out["AUC"].append(_auc(scores, is_test, (tr_r, tr_c), (te_r, te_c), n_test) if auc
                          else torch.full((b,), torch.nan, dtype=torch.float64))
        rank = rank.to(torch.float64)
        out["MRR"].append(torch.where(rank > 0, 1.0 / rank.clamp(min=1), 0.0))
        hits = hit_sorted.to(torch.float64)
        cum = torch.cumsum(hits, 1)
        dcg = torch.cumsum(hits * disc, 1)
        ap = torch.cumsum(hits * cum / pos, 1)
        for kk in ks:
            c = min(kk, kmax) - 1  # column of cut-off K (K may exceed the catalogue)
            h = cum[:, c]
            denom = torch.clamp(n_test, max=kk)
            out[f"HR@{kk}"].append((h > 0).to(torch.float64))
            out[f"NDCG@{kk}"].append(dcg[:, c] / idcg[denom.long()])  # min(K, |test|) <= kmax
            out[f"Recall@{kk}"].append(h / n_test)
            out[f"Precision@{kk}"].append(h / kk)
            out[f"MAP@{kk}"].append(ap[:, c] / denom)
            fin = torch.isfinite(vals[:, : c + 1])
            covered[kk][order[:, : c + 1][fin]] = True
            n_rec = fin.sum(1)
            nov = (pop_rank[order[:, : c + 1]] * fin).sum(1)
            out[f"Novelty@{kk}"].append(torch.where(n_rec > 0, nov / n_rec.clamp(min=1),
                                                    torch.nan))

    res: dict[str, Any] = {}
    cols = {name: (torch.cat(v).numpy() if v else np.zeros(0)) for name, v in out.items()}
    for kk in ks:
        for name in ("HR", "NDCG", "Recall", "Precision", "MAP"):
            key = f"{name}@{kk}"
            res[key] = float(cols[key].mean()) if len(users) else 0.0
        res[f"Coverage@{kk}"] = float(covered[kk].double().mean()) if n_items else 0.0
        res[f"Novelty@{kk}"] = _nanmean(cols[f"Novelty@{kk}"], len(users))
    res["MRR"] = float(cols["MRR"].mean()) if len(users) else 0.0
    res["AUC"] = _nanmean(cols["AUC"], len(users))
    res["users"] = int(len(users))
    if per_user:
        res["per_user"] = {"user": users.astype(np.int64), "n_test": n_test_all[users], **cols}
    return res


def _idcg(kmax: int) -> np.ndarray:
    """Ideal DCG of 0..kmax hits."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, kmax + 2)))])


def _scores(model: ScoresUsers, u: np.ndarray, n_items: int, who: str) -> np.ndarray:
    raw = np.asarray(model.score_users(u))
    if raw.shape != (len(u), n_items):
        raise ValueError(f"{who}: score_users returned shape {raw.shape}, expected "
                         f"{(len(u), n_items)}")
    scores = np.array(raw, dtype=np.float32)  # the precision evaluate_ranking ranks in
    if np.isnan(scores).any():
        raise ValueError(f"{who}: score_users returned NaN scores")
    return scores


def sampled_metrics(
    model: ScoresUsers,
    test: sp.csr_matrix,
    negatives: dict[int, np.ndarray],
    k: int | Iterable[int] = (10,),
    train: sp.csr_matrix | None = None,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Sampled (NCF-style) metrics: each user's test items ranked among that user's negatives.

    For reproducing papers only: sampled metrics can reorder models (Krichene & Rendle, KDD 2020);
    report :func:`evaluate_ranking` beside them.

    Parameters
    ----------
    model : object with ``score_users(user_idx) -> ndarray [len(user_idx), n_items]``.
    test : users x items sparse matrix of test interactions.
    negatives : ``{user index: item indices}``, e.g. from
        :func:`recsys_metric.protocols.read_negatives` or ``sample_negatives``. Users with test
        items and an entry here are evaluated. A negative that is one of the user's test items, or
        (when ``train`` is given) train items, is dropped: it is not a negative.
    k : cut-offs.
    train : optional; test items also in train are guaranteed misses (as in full ranking).

    Returns
    -------
    dict
        ``sampled_HR@K``, ``sampled_NDCG@K``, ``sampled_Recall@K`` for each K and
        ``sampled_MRR`` (user averages), plus ``users`` (evaluated), ``negatives_per_user``
        (mean, after dropping) and ``dropped_negatives``.

    Notes
    -----
    The candidates of a user are their test items and their negatives; ranked by score,
    ties broken by the lower item index (the order of :func:`evaluate_ranking`). With one test
    item, HR@K is whether it ranks in the top K among ``1 + len(negatives)`` items (NCF's HR@K)
    and NDCG@K is ``1 / log2(rank + 1)`` when it does. With several, the definitions of
    :func:`evaluate_ranking` apply to the candidate list (NDCG over the ideal DCG of
    ``min(K, |test items|)`` hits; Recall = hits / |test items|; MRR = 1 / best rank).
    """
    ks = _as_ks(k)
    test = _as_csr(test, "test")
    train = _as_csr(train, "train") if train is not None else None
    if train is not None and train.shape != test.shape:
        raise ValueError(f"sampled_metrics: train {train.shape} and test {test.shape} differ")
    n_items = test.shape[1]
    has_test = np.diff(test.indptr) > 0
    users = np.array(sorted(int(u) for u in negatives if 0 <= int(u) < len(has_test)
                            and has_test[int(u)]), dtype=np.int64)
    idcg = _idcg(max(ks))
    cols: dict[str, list[float]] = {f"{m}@{kk}": [] for kk in ks for m in ("HR", "NDCG",
                                                                          "Recall")}
    cols["MRR"] = []
    n_neg, dropped = [], 0
    for s in range(0, len(users), batch_size):
        u = users[s:s + batch_size]
        scores = _scores(model, u, n_items, "sampled_metrics")
        for r, user in enumerate(u):
            pos = test.indices[test.indptr[user]:test.indptr[user + 1]].astype(np.int64)
            liked = (train.indices[train.indptr[user]:train.indptr[user + 1]]
                     if train is not None else np.zeros(0, dtype=np.int64))
            neg = np.unique(np.asarray(negatives[user], dtype=np.int64))
            if len(neg) and (neg.min() < 0 or neg.max() >= n_items):
                raise ValueError(f"sampled_metrics: negatives of user {user} out of range")
            keep = ~np.isin(neg, pos) & ~np.isin(neg, liked)
            dropped += int((~keep).sum())
            neg = neg[keep]
            n_neg.append(len(neg))
            rankable = pos[~np.isin(pos, liked)]
            cand = np.concatenate([rankable, neg])
            sc, st = scores[r, cand], scores[r, rankable]
            ahead = (sc[None, :] > st[:, None]) | ((sc[None, :] == st[:, None])
                                                   & (cand[None, :] < rankable[:, None]))
            ranks = 1 + ahead.sum(1)  # distinct: the order is total
            for kk in ks:
                hit = ranks <= kk
                cols[f"HR@{kk}"].append(float(hit.any()))
                dcg = float((1.0 / np.log2(ranks[hit] + 1.0)).sum())
                cols[f"NDCG@{kk}"].append(dcg / idcg[min(kk, len(pos))])
                cols[f"Recall@{kk}"].append(hit.sum() / len(pos))
            cols["MRR"].append(1.0 / ranks.min() if len(ranks) else 0.0)
    res: dict[str, Any] = {f"sampled_{key}": float(np.mean(v)) if v else 0.0
                           for key, v in cols.items()}
    res["users"] = int(len(users))
    res["negatives_per_user"] = float(np.mean(n_neg)) if n_neg else 0.0
    res["dropped_negatives"] = dropped
    return res


def evaluate_index(
    model: Any,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    k: int | Iterable[int] = (10,),
    prefix: str = "annoy_",
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Top-K metrics of a fitted :class:`~recsys_metric.recommender.Recommender` served through
    its index (``model.index_``, e.g. Annoy), beside the exact ranking it approximates.

    Every test user's top-K list comes from ``model.recommend`` (liked items filtered, as the
    model serves them); the exact list from ``score_users`` with ``train`` items excluded (the
    order of :func:`evaluate_ranking`). ``model`` must have been fitted on ``train``.

    Returns
    -------
    dict
        ``{prefix}HR@K``, ``{prefix}NDCG@K``, ``{prefix}Recall@K`` (definitions of
        :func:`evaluate_ranking` on the served lists) and ``{prefix}recall_vs_exact@K`` (share of
        the exact top K that the served top K contains, averaged over users) for each K, and
        ``users``.
    """
    ks = _as_ks(k)
    train, test = _as_csr(train, "train"), _as_csr(test, "test")
    n_items = train.shape[1]
    kmax = min(max(ks), n_items)
    idcg = _idcg(kmax)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    cols: dict[str, list[float]] = {f"{m}@{kk}": [] for kk in ks
                                    for m in ("HR", "NDCG", "Recall", "recall_vs_exact")}
    for s in range(0, len(users), batch_size):
        u = users[s:s + batch_size]
        scores = torch.from_numpy(_scores(model, u, n_items, "evaluate_index"))
        tr_r, tr_c = _batch_rows(train, u)
        scores[tr_r, tr_c] = -torch.inf
        vals, order = _top_k(scores, kmax)
        exact = torch.where(torch.isfinite(vals), order, -1).numpy()
        served, _ = model.recommend(model.users_.raw(u), N=kmax,
                                    filter_already_liked_items=True)
        for r, user in enumerate(u):
            got = np.array([model.items_.index(x) for x in served[r] if x != ""],
                           dtype=np.int64)
            pos = test.indices[test.indptr[user]:test.indptr[user + 1]]
            hit = np.isin(got, pos)
            cum = np.cumsum(hit)
            dcg = np.cumsum(hit / np.log2(np.arange(2, len(got) + 2)))
            for kk in ks:
                c = min(kk, len(got))
                h = cum[c - 1] if c else 0
                cols[f"HR@{kk}"].append(float(h > 0))
                cols[f"NDCG@{kk}"].append((dcg[c - 1] if c else 0.0)
                                          / idcg[min(kk, kmax, len(pos))])
                cols[f"Recall@{kk}"].append(h / len(pos))
                want = exact[r, :min(kk, kmax)]
                want = want[want >= 0]
                cols[f"recall_vs_exact@{kk}"].append(
                    len(np.intersect1d(got[:kk], want)) / len(want) if len(want) else 1.0)
    res: dict[str, Any] = {f"{prefix}{key}": float(np.mean(v)) if v else 0.0
                           for key, v in cols.items()}
    res["users"] = int(len(users))
    return res
