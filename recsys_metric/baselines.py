"""Peer models behind one interface: ``fit(train) -> self`` and ``score_users(user_idx)``.

``Popularity`` scores items by their number of train interactions. ``ALS`` and ``BPR`` wrap the
CPU models of `implicit <https://github.com/benfred/implicit>`_ 0.7 with its own default
hyper-parameters; implicit is imported lazily inside ``fit`` so this module imports without it.
``EASE`` is Steck's closed-form item-item model (numpy / LAPACK only).
``fit`` takes a users x items matrix or :class:`~recsys_metric.data.Interactions`; from the
latter ALS can use the time order CML uses, all off by default: a confidence on each user's
latest interactions (``recent_share``, ``recent_weight``), items' context rows
(``transitions``) and users pulled toward their latest items after the fit (``recent_pull``,
``pull_decay``). Every model can be evaluated by
:func:`recsys_metric.evaluation.evaluate_ranking`.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from . import time_order
from .data import Interactions


def _check_train(train: Any, who: str) -> sp.csr_matrix:
    if isinstance(train, Interactions):
        train = train.matrix
    if not sp.issparse(train) or train.ndim != 2:
        raise ValueError(f"{who}.fit: train must be a 2-D scipy.sparse matrix (users x items)")
    train = sp.csr_matrix(train, dtype=np.float32)
    train.sort_indices()
    return train


class Baseline:
    """Shared plumbing: hyper-parameter introspection, input checks, ``recommend``."""

    n_users_: int
    n_items_: int
    fit_seconds_: float

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters as given to ``__init__`` (sklearn style), e.g. for JSON reports."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _users(self, user_idx: Any) -> np.ndarray:
        if not hasattr(self, "fit_seconds_"):
            raise ValueError(f"{type(self).__name__}: call fit() before scoring")
        idx = np.asarray(user_idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_users_):
            raise ValueError(
                f"{type(self).__name__}: user index out of range [0, {self.n_users_})"
            )
        return idx

    def score_users(self, user_idx: np.ndarray) -> np.ndarray:
        """Scores of every item for each user, float32 ``[len(user_idx), n_items]``."""
        raise NotImplementedError

    def recommend(
        self,
        userid: int | np.ndarray,
        user_items: sp.csr_matrix | None = None,
        N: int = 10,
        filter_already_liked_items: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``N`` items, best first, following implicit's ``recommend`` naming.

        Parameters
        ----------
        userid : int or array of int
        user_items : csr_matrix, optional
            Rows of the user-item matrix for ``userid`` (one row per requested user), needed
            when ``filter_already_liked_items`` is true.
        N : int
        filter_already_liked_items : bool

        Returns
        -------
        (ids, scores) : int64 and float32 arrays, shape ``[N]`` for one user, ``[b, N]`` for many.
        """
        single = np.ndim(userid) == 0
        idx = self._users(userid)
        scores = self.score_users(idx).copy()
        if filter_already_liked_items:
            if user_items is None:
                raise ValueError("recommend: user_items is required to filter liked items")
            liked = sp.csr_matrix(user_items)
            if liked.shape != (len(idx), self.n_items_):
                raise ValueError(
                    f"recommend: user_items has shape {liked.shape}, "
                    f"expected {(len(idx), self.n_items_)} (one row per user)"
                )
            rows = np.repeat(np.arange(len(idx)), np.diff(liked.indptr))
            scores[rows, liked.indices] = -np.inf
        n = min(int(N), self.n_items_)
        # Stable sort: ties go to the lower item index, as in evaluate_ranking.
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :n]
        top = np.take_along_axis(scores, ids, 1)
        return (ids[0], top[0]) if single else (ids, top)


class Popularity(Baseline):
    """Non-personalised baseline: an item's score is its number of train interactions."""

    def __init__(self) -> None:
        pass

    def fit(self, train: sp.csr_matrix | Interactions) -> Popularity:
        """Count the users of each item (stored entries; values are ignored)."""
        t0 = time.perf_counter()
        train = _check_train(train, "Popularity")
        self.n_users_, self.n_items_ = train.shape
        self.item_counts_ = np.bincount(train.indices, minlength=self.n_items_).astype(np.float32)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def score_users(self, user_idx: np.ndarray) -> np.ndarray:
        idx = self._users(user_idx)
        return np.broadcast_to(self.item_counts_, (len(idx), self.n_items_)).copy()


class _ImplicitMF(Baseline):
    """Common fit / score for implicit's CPU matrix-factorisation models."""

    def _implicit_model(self) -> tuple[type, dict[str, Any]]:  # (lazily imported class, kwargs)
        raise NotImplementedError

    def _values(self, train: sp.csr_matrix | Interactions) -> sp.csr_matrix:
        return _check_train(train, type(self).__name__)

    def fit(self, train: sp.csr_matrix | Interactions) -> _ImplicitMF:
        """Fit on the user x item CSR ``train`` or ``Interactions`` (values are confidences for
        ALS)."""
        from threadpoolctl import threadpool_limits

        train = self._values(train)
        t0 = time.perf_counter()
        # Import first: importing implicit loads scipy's own OpenBLAS, which a limit entered
        # earlier would miss. implicit warns (already in the model's __init__) unless BLAS is
        # single-threaded; its own C++ loops do the parallel work.
        cls, kwargs = self._implicit_model()
        with threadpool_limits(1, "blas"):
            model = cls(**kwargs)
            model.fit(train, show_progress=self.show_progress)
        self.fit_seconds_ = time.perf_counter() - t0
        self.model_ = model
        self.user_factors_ = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.asarray(model.item_factors, dtype=np.float32)
        self.n_users_, self.n_items_ = train.shape
        return self

    def score_users(self, user_idx: np.ndarray) -> np.ndarray:
        idx = self._users(user_idx)
        return self.user_factors_[idx] @ self.item_factors_.T


class ALS(_ImplicitMF):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) via ``implicit.cpu.als``.

    Defaults are implicit 0.7.3's own. ``seed`` is passed as ``random_state``; ``num_threads=0``
    uses every core. Train values are confidences (scaled by ``alpha``): pass a binary matrix
    for plain implicit feedback. Fitted on ``Interactions``, the time order is prepared as for
    CML (:func:`recsys_metric.time_order.build`): with ``recent_share`` > 0, the entries in the
    latest ``recent_share`` of each row (each user's history, and each context row's) get the
    value ``recent_weight`` instead of 1 (``experiments/results/defaults.md``, section 6).
    With ``recent_pull`` > 0 and timestamps, each user's factors move toward the
    ``pull_decay``-weighted mean of their latest items' factors after the fit, as CML's users do
    (``TrainConfig.recent_pull``; ALS's best on validation is a larger pull, section 9). With
    ``transitions`` > 0 and timestamps, each item also gets a context row fitted to the items
    that followed it, as in CML (``TrainConfig.transitions``).
    """

    def __init__(
        self,
        factors: int = 100,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 15,
        seed: int | None = None,
        num_threads: int = 0,
        show_progress: bool = False,
        recent_share: float = 0.0,
        recent_weight: float = 1.0,
        recent_pull: float = 0.0,
        pull_decay: float = 0.5,
        transitions: int = 0,
    ) -> None:
        if not 0 <= recent_share <= 1 or not recent_weight > 0:
            raise ValueError(f"ALS: recent_share must be in [0, 1] and recent_weight > 0, got "
                             f"{recent_share!r} and {recent_weight!r}")
        if not (0 <= recent_pull <= 1 and 0 <= pull_decay <= 1):
            raise ValueError(f"ALS: recent_pull and pull_decay must be in [0, 1], got "
                             f"{recent_pull!r} and {pull_decay!r}")
        if not isinstance(transitions, int | np.integer) or transitions < 0:
            raise ValueError(f"ALS: transitions must be an integer >= 0, got {transitions!r}")
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.seed = seed
        self.num_threads = num_threads
        self.show_progress = show_progress
        self.recent_share = recent_share
        self.recent_weight = recent_weight
        self.recent_pull = recent_pull
        self.pull_decay = pull_decay
        self.transitions = transitions

    def fit(self, train: sp.csr_matrix | Interactions) -> ALS:
        super().fit(train)  # with context rows after the users' when _values adds them
        if not isinstance(train, Interactions):
            return self
        order, self._order = self._order, None
        self.user_factors_ = order.pull(self.user_factors_[:train.n_users], self.item_factors_,
                                        self.recent_pull)
        self.n_users_ = train.n_users
        return self

    def _values(self, train: sp.csr_matrix | Interactions) -> sp.csr_matrix:
        if not isinstance(train, Interactions):
            return _check_train(train, "ALS")
        # CML's rows and latest entries (time_order): the latest get the weight recent_weight
        self._order = time_order.build(train, self.recent_share, self.transitions,
                                       self.pull_decay)  # and fit pulls the users with it
        m = self._order.rows.astype(np.float32, copy=True)
        m.data[self._order.latest] = np.float32(self.recent_weight)
        return m

    def _implicit_model(self) -> tuple[type, dict[str, Any]]:
        from implicit.cpu.als import AlternatingLeastSquares

        return AlternatingLeastSquares, dict(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
            random_state=self.seed,
            num_threads=self.num_threads,
        )


class BPR(_ImplicitMF):
    """Bayesian Personalized Ranking (Rendle et al. 2009) via ``implicit.cpu.bpr``.

    Defaults are implicit 0.7.3's own. implicit appends an item-bias column: the fitted
    ``item_factors_`` have ``factors + 1`` columns and the users' last column is 1. Training is
    Hogwild SGD, so results are reproducible from ``seed`` only with ``num_threads=1``.
    """

    def __init__(
        self,
        factors: int = 100,
        learning_rate: float = 0.01,
        regularization: float = 0.01,
        iterations: int = 100,
        verify_negative_samples: bool = True,
        seed: int | None = None,
        num_threads: int = 0,
        show_progress: bool = False,
    ) -> None:
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.verify_negative_samples = verify_negative_samples
        self.seed = seed
        self.num_threads = num_threads
        self.show_progress = show_progress

    def _implicit_model(self) -> tuple[type, dict[str, Any]]:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking, dict(
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            verify_negative_samples=self.verify_negative_samples,
            random_state=self.seed,
            num_threads=self.num_threads,
        )


class EASE(Baseline):
    """Embarrassingly Shallow Autoencoder (Steck, WWW 2019): a closed-form item-item model.

    With ``X`` the binary users x items train matrix (values are ignored), ``G = XᵀX + l2·I``
    and ``P = G⁻¹``, the item-item weights are ``B[i, j] = −P[i, j] / P[j, j]`` with a zero
    diagonal, and a user's scores are ``X[u] @ B``. Deterministic: no seed, no iterations; ``l2``
    is the one hyper-parameter (Steck uses a few hundred on MovieLens-sized data).

    The inverse is a Cholesky one (LAPACK ``potrf`` + ``potri``, in place, float64 for
    stability; the fastest of ``numpy.linalg.inv``, ``scipy.linalg.inv`` and ``cho_solve``
    measured on 3,700 items); ``B_`` is kept as float32. Memory is O(items²): the fit peaks
    at about ``12 · n_items²`` bytes (the float64 ``G``/``P`` and the float32 ``B_``), so a
    catalogue above ``max_items`` (default 30,000 items, about 10.8 GB) is refused with a
    ``ValueError`` rather than left to swap.
    """

    BYTES_PER_ITEM_PAIR = 12  # float64 G (inverted in place) + float32 B
    _GRAM_BLOCK = 1 << 24  # G's entries filled per sparse product (bounds its temporaries)
    _COLUMN_BLOCK = 1024  # columns of B computed at a time from P
    _SCORE_BLOCK = 1024  # users scored per matrix product

    def __init__(self, l2: float = 500.0, max_items: int = 30_000) -> None:
        if (isinstance(l2, bool) or not isinstance(l2, int | float | np.number)
                or not (np.isfinite(l2) and l2 > 0)):
            raise ValueError(f"EASE: l2 must be a finite number > 0, got {l2!r}")
        if not isinstance(max_items, int | np.integer) or max_items < 1:
            raise ValueError(f"EASE: max_items must be an integer >= 1, got {max_items!r}")
        self.l2 = l2
        self.max_items = max_items

    @classmethod
    def memory_bytes(cls, n_items: int) -> int:
        """Estimated peak memory of a fit on ``n_items`` items, in bytes."""
        return cls.BYTES_PER_ITEM_PAIR * int(n_items) ** 2

    def fit(self, train: sp.csr_matrix | Interactions) -> EASE:
        """Fit on the user x item CSR ``train`` or ``Interactions`` (binarised)."""
        from scipy.linalg import lapack

        t0 = time.perf_counter()
        x = _check_train(train, "EASE")
        x.eliminate_zeros()
        x.data[:] = 1.0
        n_users, n = x.shape
        if n > self.max_items:
            raise ValueError(
                f"EASE: {n:,} items need about {self.memory_bytes(n) / 1e9:.1f} GB "
                f"(an items x items matrix); above max_items={self.max_items:,}. Raise "
                "max_items if the memory is there, or use a factor model (als)")
        # G = XᵀX + l2·I, dense float64 in Fortran order (LAPACK's, so potrf works in place),
        # filled a block of columns at a time from sparse products.
        g = np.zeros((n, n), order="F")
        xt, xc = x.T.tocsr(), x.tocsc()
        step = max(1, self._GRAM_BLOCK // max(n, 1))
        for j0 in range(0, n, step):
            j1 = min(j0 + step, n)
            g[:, j0:j1] = (xt @ xc[:, j0:j1]).toarray()
        g[np.diag_indices(n)] += float(self.l2)
        c, info = lapack.dpotrf(g, lower=0, clean=0, overwrite_a=1)
        if info == 0:
            c, info = lapack.dpotri(c, lower=0, overwrite_c=1)
        if info != 0:
            raise ValueError(f"EASE: XᵀX + l2·I is not numerically positive definite "
                             f"(LAPACK info {info}); try a larger l2")
        # P = G⁻¹ is in c's upper triangle (g's memory); B[:, j] = −P[:, j] / P[j, j], a block
        # of columns at a time, reading P's lower triangle from the upper one by symmetry.
        d = np.diag(c).copy()
        b = np.empty((n, n), dtype=np.float32)
        for j0 in range(0, n, self._COLUMN_BLOCK):
            j1 = min(j0 + self._COLUMN_BLOCK, n)
            square = np.triu(c[j0:j1, j0:j1])
            square += np.triu(square, 1).T
            cols = np.concatenate([c[:j0, j0:j1], square, c[j0:j1, j1:].T])
            b[:, j0:j1] = cols / -d[j0:j1]
        np.fill_diagonal(b, 0.0)
        del g, c
        self.B_ = b
        self.train_ = x
        self.n_users_ = train.n_users if isinstance(train, Interactions) else n_users
        self.n_items_ = n
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def score_users(self, user_idx: np.ndarray) -> np.ndarray:
        idx = self._users(user_idx)
        out = np.empty((len(idx), self.n_items_), dtype=np.float32)
        for s in range(0, len(idx), self._SCORE_BLOCK):
            rows = idx[s:s + self._SCORE_BLOCK]
            out[s:s + len(rows)] = self.train_[rows] @ self.B_
        return out


BASELINES: dict[str, type[Baseline]] = {"popularity": Popularity, "als": ALS, "bpr": BPR,
                                        "ease": EASE}
# Named settings of a baseline. "als-recency": implicit ALS given the time order CML uses: its
# items' context rows (transitions 1) and its users pulled toward their latest items as CML's
# are, with ALS's own best pull on validation (0.98, decay 0.5; a confidence on the latest pairs
# on top added nothing: defaults.md sections 9 and 10), so that a comparison shows how much of
# CML's lead is the time order.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "als-recency": ("als", {"recent_pull": 0.98, "pull_decay": 0.5, "transitions": 1}),
}


def _resolve(name: str) -> tuple[type[Baseline], dict[str, Any]]:
    base, preset = PRESETS.get(str(name).lower(), (str(name).lower(), {}))
    cls = BASELINES.get(base)
    if cls is None:
        raise ValueError(f"unknown baseline {name!r}; valid names: "
                         f"{', '.join(sorted([*BASELINES, *PRESETS]))}")
    return cls, preset


def takes_seed(name: str) -> bool:
    """Whether baseline ``name`` (or preset) is seeded: its ``__init__`` takes ``seed``.
    Popularity and EASE are deterministic and take none."""
    return "seed" in inspect.signature(_resolve(name)[0].__init__).parameters


def make_baseline(name: str, **params: Any) -> Baseline:
    """Build a baseline by name (``"popularity"``, ``"als"``, ``"bpr"``, ``"ease"``, or a preset
    of :data:`PRESETS` such as ``"als-recency"``; case-insensitive). ``params`` override a
    preset's.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the valid ones.
    """
    cls, preset = _resolve(name)
    return cls(**{**preset, **params})
