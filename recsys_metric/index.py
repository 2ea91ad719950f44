"""Nearest items to a query vector: Annoy (approximate, memory-mapped) or exact, one interface.

Both return squared Euclidean distances, the space the model is trained in, so scores agree.
Annoy's default ``search_k`` gives poor recall on 64-d embeddings; :meth:`AnnoyIndex.calibrate`
raises it until recall@10 against the exact index reaches a target, measured on the model's own
user vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .model import pairwise_squared_distance

# Catalogue size above which index="auto" picks Annoy; measured by experiments/bench_index.py
# (results/index.md): below it, exact batched scoring is as fast per query and always exact.
AUTO_ANNOY_ITEMS = 200_000


class ExactIndex:
    """Brute-force top-k by batched matrix products (torch, CPU or GPU)."""

    kind = "exact"

    def __init__(self, item_vectors: np.ndarray, batch_size: int = 1024) -> None:
        self.vectors = torch.as_tensor(np.ascontiguousarray(item_vectors, dtype=np.float32))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @torch.no_grad()
    def query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids ``[b, k]`` and squared distances ``[b, k]``, nearest first."""
        q = torch.as_tensor(np.atleast_2d(queries).astype(np.float32))
        k = min(k, len(self))
        ids, dists = [], []
        for s in range(0, len(q), self.batch_size):
            d = pairwise_squared_distance(q[s:s + self.batch_size], self.vectors)
            top = torch.topk(d, k, dim=1, largest=False)  # sorted, nearest first
            ids.append(top.indices)
            dists.append(top.values)
        return torch.cat(ids).numpy(), torch.cat(dists).numpy()

    def save(self, path: Path) -> None:  # the vectors live in the model's own files
        pass


class AnnoyIndex:
    """Annoy forest over item vectors (``metric="euclidean"``); loads by memory-mapping."""

    kind = "annoy"

    def __init__(self, item_vectors: np.ndarray | None, n_trees: int = 50,
                 search_k: int = -1, seed: int = 0, dim: int | None = None) -> None:
        from annoy import AnnoyIndex as _Annoy  # lazy: GPU machines may lack annoy

        self.n_trees, self.search_k = n_trees, search_k
        self.calibrated_k = 10  # the list length search_k was calibrated for
        if item_vectors is None:  # filled by load()
            self._index, self.dim, self._n = _Annoy(dim, "euclidean"), dim, 0
            return
        self.dim = item_vectors.shape[1]
        self._n = len(item_vectors)
        self._index = _Annoy(self.dim, "euclidean")
        self._index.set_seed(seed)
        for i, v in enumerate(np.asarray(item_vectors, dtype=np.float32)):
            self._index.add_item(i, v)
        self._index.build(n_trees, n_jobs=1)  # n_jobs=1: deterministic for a given seed

    def __len__(self) -> int:
        return self._n

    def query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.atleast_2d(queries)
        k = min(k, len(self))
        # Annoy stops after inspecting search_k items, counting the same item once per tree: a
        # list longer than the calibrated one (recommend() asks for N + the liked items, then
        # filters) needs a proportionally larger search_k, or it comes back short.
        search_k = (self.search_k if self.search_k < 0
                    else max(self.search_k, -(-self.search_k * k // self.calibrated_k)))
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        dists = np.full((len(queries), k), np.inf, dtype=np.float32)
        for r, q in enumerate(queries):
            i, d = self._index.get_nns_by_vector(q.tolist(), k, search_k=search_k,
                                                 include_distances=True)
            ids[r, :len(i)] = i
            dists[r, :len(d)] = np.square(d)  # annoy returns Euclidean, we rank squared
        return ids, dists

    def calibrate(self, queries: np.ndarray, exact: ExactIndex, k: int = 10,
                  target: float = 0.98, max_search_k: int | None = None) -> float:
        """Double ``search_k`` from ``n_trees * k`` until recall@k against ``exact`` on
        ``queries`` reaches ``target``; returns the recall measured at the chosen value."""
        truth, _ = exact.query(queries, k)
        self.calibrated_k = k
        max_search_k = max_search_k or self.n_trees * len(self)
        self.search_k = self.n_trees * k
        while True:
            got, _ = self.query(queries, k)
            recall = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(got, truth,
                                                                             strict=True)])
            if recall >= target or self.search_k >= max_search_k:
                return float(recall)
            self.search_k *= 2

    def save(self, path: Path) -> None:
        self._index.save(str(path))

    @classmethod
    def load(cls, path: Path, dim: int, n_items: int, n_trees: int, search_k: int
             ) -> AnnoyIndex:
        idx = cls(None, n_trees=n_trees, search_k=search_k, dim=dim)
        idx._index.load(str(path))  # memory-mapped: processes share the pages
        idx._n = n_items
        return idx


INDEXES = ("auto", "exact", "annoy")


def resolve_index(kind: str, n_items: int) -> str:
    if kind not in INDEXES:
        raise ValueError(f"index must be one of {', '.join(INDEXES)}, got {kind!r}")
    if kind == "auto":
        return "annoy" if n_items > AUTO_ANNOY_ITEMS else "exact"
    return kind
