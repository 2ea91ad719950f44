"""Nearest items to a query vector: Annoy (approximate, memory-mapped) or exact, one interface.

Both return squared Euclidean distances, the space the model is trained in, so scores agree.
Annoy's default ``search_k`` gives poor recall on 64-d embeddings; :meth:`AnnoyIndex.calibrate`
raises it until recall@10 against the exact index reaches a target, measured on the model's own
user vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

# Catalogue size above which index="auto" picks Annoy; measured by experiments/bench_index.py
# (results/index.md): below it, exact batched scoring is as fast per query and always exact.
AUTO_ANNOY_ITEMS = 200_000
# Floats in one block of exact scores (64 MiB): large enough that a block amortises torch's
# per-call cost, small enough that a catalogue of millions scores a few queries at a time.
SCORE_BLOCK_FLOATS = 16 * 1024 * 1024


class ExactIndex:
    """Brute-force top-k by batched matrix products (torch, CPU or GPU)."""

    kind = "exact"

    def __init__(self, item_vectors: np.ndarray, batch_size: int | None = None) -> None:
        self.vectors = torch.as_tensor(np.ascontiguousarray(item_vectors, dtype=np.float32))
        self.sq_norms = self.vectors.pow(2).sum(1).unsqueeze(0)  # [1, n]
        self.batch_size = batch_size

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @torch.no_grad()
    def query(self, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """Ids ``[b, k]`` and squared distances ``[b, k]``, nearest first; ``exclude`` (a
        ``[b, n_items]`` sparse pattern) removes items per query, and a row with fewer than
        ``k`` items left is padded with id -1 at distance inf.

        Blocked so each block's distance matrix stays near 64 MiB: one matrix product, the
        exclusions set to inf through the CSR's coordinates, one top-k, for the whole block. The
        product is ``|y|² - 2 q·y`` in one ``addmm``: ``|q|²`` orders nothing within a row, so it
        is added to the ``k`` winners only (a third of the time of the whole distance)."""
        q = torch.as_tensor(np.atleast_2d(queries).astype(np.float32))
        k = min(k, len(self))
        if exclude is not None:
            exclude = sp.csr_matrix(exclude)
        block = self.batch_size or max(1, SCORE_BLOCK_FLOATS // max(len(self), 1))
        ids, dists = [], []
        for s in range(0, len(q), block):
            part_q = q[s:s + block]
            d = torch.addmm(self.sq_norms, part_q, self.vectors.T, alpha=-2.0)
            if exclude is not None:
                part = exclude if len(d) == len(q) else exclude[s:s + len(d)]
                rows = np.repeat(np.arange(len(d)), np.diff(part.indptr))
                d[torch.as_tensor(rows), torch.as_tensor(part.indices.astype(np.int64))] = np.inf
            top = torch.topk(d, k, dim=1, largest=False)  # sorted, nearest first
            ids.append(top.indices.masked_fill_(torch.isinf(top.values), -1))
            # rounding can dip below zero
            dists.append((top.values + part_q.pow(2).sum(1, keepdim=True)).clamp_(min=0.0))
        if not ids:
            return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
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

    def query(self, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`ExactIndex.query` (approximate): one search per query, asking for ``k``
        plus the query's excluded items, and again for twice as many while fewer survive."""
        queries = np.atleast_2d(queries)
        k = min(k, len(self))
        if exclude is not None:
            exclude = sp.csr_matrix(exclude)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        dists = np.full((len(queries), k), np.inf, dtype=np.float32)
        for r, q in enumerate(queries):
            ex = (exclude.indices[exclude.indptr[r]:exclude.indptr[r + 1]] if exclude is not None
                  else np.empty(0, np.int64))
            want = min(k, len(self) - len(ex))
            fetch = min(want + len(ex), len(self))
            while True:  # Annoy may return fewer survivors than asked: fetch more until enough
                i, d = self._search(q, fetch)
                keep = ~np.isin(i, ex)
                if keep.sum() >= want or fetch >= len(self):
                    break
                fetch = min(2 * fetch, len(self))
            i, d = i[keep][:k], d[keep][:k]
            ids[r, :len(i)] = i
            dists[r, :len(d)] = d
        return ids, dists

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # Annoy stops after inspecting search_k items, counting the same item once per tree: a
        # list longer than the calibrated one (a query with exclusions asks for k + their
        # number, then filters) needs a proportionally larger search_k, or it comes back short.
        search_k = (self.search_k if self.search_k < 0
                    else max(self.search_k, -(-self.search_k * k // self.calibrated_k)))
        i, d = self._index.get_nns_by_vector(q.tolist(), k, search_k=search_k,
                                             include_distances=True)
        return np.asarray(i, np.int64), np.square(np.asarray(d, np.float32))  # we rank squared

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
