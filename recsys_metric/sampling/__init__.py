"""Negative sampling: one call, three backends with identical semantics.

- ``triton``: the fused kernel of :mod:`.triton_kernel`, for tensors on a CUDA device;
- ``cpu``: numba kernels of :mod:`.cpu` (parallel, counter-based RNG);
- ``torch``: the reference of :mod:`.reference`, on any device.

``backend="auto"`` picks triton for CUDA tensors when triton is installed, numba for CPU tensors
when numba is installed, else the reference. Semantics: see :mod:`.reference`.
"""

from __future__ import annotations

import torch

from ..device import HAS_NUMBA, HAS_TRITON
from . import reference

BACKENDS = ("auto", "torch", "triton", "cpu")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend that ``backend`` (maybe ``auto``) stands for on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    if device.type == "cuda" and HAS_TRITON:
        return "triton"
    return "cpu" if device.type == "cpu" and HAS_NUMBA else "torch"


def _module(backend: str, device: torch.device):
    name = resolve_backend(backend, device)
    if name == "triton":
        from . import triton_kernel
        return triton_kernel
    if name == "cpu":
        from . import cpu
        return cpu
    return reference


def sample_uniform(indptr, indices, users, n_items, n, seed=0, offset=0, backend="auto"):
    """``n`` uniform non-positive items per user, ``[B, n]`` int64 (-1 if the user has all)."""
    mod = _module(backend, indices.device)
    return mod.sample_uniform(indptr, indices, users, n_items, n, seed, offset)


def hardest_negatives(indptr, indices, users, pos_items, user_emb, item_emb, n_candidates,
                      margin, seed=0, offset=0, candidates=None, backend="auto"):
    """Hardest of ``n_candidates`` uniform negatives per pair and its violator count."""
    mod = _module(backend, item_emb.device)
    return mod.hardest_negatives(indptr, indices, users, pos_items, user_emb, item_emb,
                                 n_candidates, margin, seed, offset, candidates)


__all__ = ["BACKENDS", "hardest_negatives", "reference", "resolve_backend", "sample_uniform"]
