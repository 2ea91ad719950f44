"""Fused Triton negative sampler: same semantics as :mod:`recsys_metric.sampling.reference`.

One program handles ``BLOCK_P`` (user, positive) pairs and all ``U`` candidates of each pair:

1. draw: Philox ``randint4x(seed, counter)`` with ``counter = (offset << 32) + pair * U + k``, so a
   (seed, offset) pair is reproducible and each training step gets fresh, non-overlapping draws;
2. map rejection-free to the ``j``-th non-positive item, ``j + #{k : p_k - k <= j}``, by a fixed
   ``bit_length(n_items)``-step binary search over the user's sorted CSR row (deg <= n_items);
3. score: stream candidate item rows ``BLOCK_D`` floats at a time, accumulating squared fp32
   distances in registers -- the ``[B, U, dim]`` tensor of the reference never exists;
4. reduce: violator count and the closest candidate (first on ties), ``-1`` when there is none.

``sample_uniform`` runs steps 1-2 only; with the same seed/offset it yields exactly the candidates
``hardest_negatives`` scores. Importable without triton (``HAS_TRITON`` is then False and the
functions raise ImportError).
"""

from __future__ import annotations

import os

import torch

from .reference import check_catalogue

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only installs: the module stays importable, the functions raise.
    triton = tl = None
    HAS_TRITON = False

# Tiling, module-level so a benchmark can sweep them. 64 (pair, candidate) slots x 32-float dim
# chunks: ptxas (sm_90, 4 warps) reports 48-64 registers and no spills, so occupancy stays high for
# this latency-bound gather; 128 x 32 tiles needed 100-250 registers. On an H200 (sweep in
# experiments/results/sampling_gpu.md, U=50, dim=128) 2 warps ran 2.2-2.7x faster than 4.
SLOTS_PER_PROGRAM = 64
TILE_ELEMS = 2048
MAX_BLOCK_D = 32
NUM_WARPS = 2
SAMPLE_BLOCK_U = 128  # sample_uniform tiles the n columns too, so any n fits in registers

if HAS_TRITON:

    @triton.jit
    def _draw(indptr_ptr, indices_ptr, user, counter, seed, n_items, N_SEARCH: tl.constexpr):
        """Uniform non-positive item per counter (``user`` [BP, 1] int64, ``counter`` [BP, BU])."""
        start = tl.load(indptr_ptr + user).to(tl.int64)
        deg = tl.load(indptr_ptr + user + 1).to(tl.int64) - start
        n_free = n_items - deg
        r0, r1, _, _ = tl.randint4x(seed, counter)
        # 62 random bits, built from non-negative halves so no signed/unsigned mix reaches the IR;
        # the modulo bias is then ~n_items / 2**62, i.e. nil.
        x = ((r0 >> 1).to(tl.int64) << 31) | (r1 >> 1).to(tl.int64)
        j = x % tl.maximum(n_free, 1)
        # lo -> #{k < deg : p_k - k <= j}: the keys are non-decreasing, so a binary search finds it;
        # lanes that have converged mask their loads off (no memory traffic).
        lo = tl.zeros_like(j)
        hi = deg + lo
        for _ in tl.static_range(N_SEARCH):
            active = lo < hi
            mid = (lo + hi) >> 1
            key = tl.load(indices_ptr + start + mid, mask=active, other=0).to(tl.int64) - mid
            lo = tl.where(active & (key <= j), mid + 1, lo)
            hi = tl.where(active & (key > j), mid, hi)
        return tl.where(n_free > 0, j + lo, -1)

    # seed/offset are never specialised (both kernels), so every step reuses one compiled kernel.
    @triton.jit(do_not_specialize=["seed", "offset"])
    def _sample_kernel(
        indptr_ptr, indices_ptr, users_ptr, out_ptr, B, n_items, U, seed, offset,
        N_SEARCH: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_U: tl.constexpr,
    ):
        rows = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        cols = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)
        row_ok = rows < B
        user = tl.load(users_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        slot = rows[:, None] * U + cols[None, :]
        counter = (offset.to(tl.int64) << 32) + slot
        items = _draw(indptr_ptr, indices_ptr, user[:, None], counter, seed, n_items, N_SEARCH)
        tl.store(out_ptr + slot, items, mask=row_ok[:, None] & (cols < U)[None, :])

    @triton.jit(do_not_specialize=["seed", "offset"])
    def _hardest_kernel(
        indptr_ptr, indices_ptr, users_ptr, pos_ptr, user_emb_ptr, item_emb_ptr, cand_ptr,
        neg_ptr, viol_ptr, B, n_items, U, dim, stride_ue, stride_ie, margin, seed, offset,
        GIVEN: tl.constexpr, N_SEARCH: tl.constexpr, BLOCK_P: tl.constexpr,
        BLOCK_U: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # int64 ids throughout: rows * U and item * stride overflow int32 at production sizes.
        rows = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        cols = tl.arange(0, BLOCK_U)
        row_ok = rows < B
        slot_ok = row_ok[:, None] & (cols < U)[None, :]
        user = tl.load(users_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        pos = tl.load(pos_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        slot = rows[:, None] * U + cols[None, :]
        if GIVEN:
            cand = tl.load(cand_ptr + slot, mask=slot_ok, other=-1).to(tl.int64)
        else:
            counter = (offset.to(tl.int64) << 32) + slot
            cand = _draw(indptr_ptr, indices_ptr, user[:, None], counter, seed, n_items, N_SEARCH)
        valid = slot_ok & (cand >= 0)

        d_neg = tl.zeros([BLOCK_P, BLOCK_U], dtype=tl.float32)
        d_pos = tl.zeros([BLOCK_P], dtype=tl.float32)
        u_base = user_emb_ptr + user[:, None] * stride_ue
        p_base = item_emb_ptr + pos[:, None] * stride_ie
        c_base = item_emb_ptr + tl.where(valid, cand, 0)[:, :, None] * stride_ie
        for d0 in range(0, dim, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            d_ok = offs < dim
            m2 = row_ok[:, None] & d_ok[None, :]
            u = tl.load(u_base + offs[None, :], mask=m2, other=0.0).to(tl.float32)
            p = tl.load(p_base + offs[None, :], mask=m2, other=0.0).to(tl.float32)
            c = tl.load(c_base + offs[None, None, :], mask=valid[:, :, None] & d_ok[None, None, :],
                        other=0.0).to(tl.float32)
            diff = u[:, None, :] - c
            d_neg += tl.sum(diff * diff, axis=2)
            dp = u - p
            d_pos += tl.sum(dp * dp, axis=1)

        # Invalid slots (padding, -1 candidates) score +inf: never the hardest, never violators.
        d_neg = tl.where(valid, d_neg, float("inf"))
        viol = tl.sum(((margin + d_pos[:, None] - d_neg) > 0).to(tl.int32), axis=1)
        # Explicit first-index argmin, so tie-breaking matches torch.argmin on every target.
        best_d = tl.min(d_neg, axis=1)
        best_col = tl.min(tl.where(d_neg == best_d[:, None], cols[None, :], BLOCK_U), axis=1)
        best = tl.sum(tl.where(cols[None, :] == best_col[:, None], cand, 0), axis=1)
        any_valid = tl.max(valid.to(tl.int32), axis=1) > 0
        tl.store(neg_ptr + rows, tl.where(any_valid, best, -1), mask=row_ok)
        tl.store(viol_ptr + rows, viol, mask=row_ok)


def _check_runtime(*tensors: torch.Tensor) -> None:
    if not HAS_TRITON:
        raise ImportError("triton is not installed; use recsys_metric.sampling.reference")
    interpret = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
    if not interpret and not all(t.is_cuda for t in tensors):
        raise RuntimeError("the Triton sampler needs CUDA tensors (or TRITON_INTERPRET=1)")


def _offset(offset: int, n_slots: int) -> int:
    # Counter = (offset << 32) + slot: unique per (offset, slot) while slots fit in 32 bits.
    if n_slots >= 2**32:
        raise ValueError(f"{n_slots} draws in one call exceed the 2**32 Philox counter range")
    return int(offset) % 2**31


def _n_search(n_items: int) -> int:
    return max(1, int(n_items).bit_length())  # ceil(log2(deg + 1)) for any deg <= n_items


@torch.no_grad()
def sample_uniform(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    users: torch.Tensor,
    n_items: int,
    n: int,
    seed: int = 0,
    offset: int = 0,
) -> torch.Tensor:
    """Draw ``n`` uniform non-positive items per user (with replacement); ``-1`` if none exist."""
    check_catalogue(n_items)
    B = len(users)
    out = torch.empty((B, n), dtype=torch.long, device=indices.device)
    if B == 0 or n == 0:
        return out
    _check_runtime(indptr, indices, users)
    block_u = min(SAMPLE_BLOCK_U, triton.next_power_of_2(n))
    block_p = max(1, SLOTS_PER_PROGRAM // block_u)
    grid = (triton.cdiv(B, block_p), triton.cdiv(n, block_u))
    _sample_kernel[grid](
        indptr.contiguous(), indices.contiguous(), users.contiguous(), out, B, n_items, n,
        int(seed) % 2**63, _offset(offset, B * n),
        N_SEARCH=_n_search(n_items), BLOCK_P=block_p, BLOCK_U=block_u, num_warps=NUM_WARPS,
    )
    return out


@torch.no_grad()
def hardest_negatives(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    users: torch.Tensor,
    pos_items: torch.Tensor,
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    n_candidates: int,
    margin: float,
    seed: int = 0,
    offset: int = 0,
    candidates: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (user, positive) pair: the closest of ``n_candidates`` uniform non-positive draws (or of
    ``candidates`` [B, U], -1 = invalid) and how many violate the margin; fused in one kernel."""
    n_items = item_emb.shape[0]
    check_catalogue(n_items)
    B = len(users)
    given = candidates is not None
    U = candidates.shape[1] if given else int(n_candidates)
    if U < 1:
        raise ValueError(f"need at least one candidate per pair, got {U}")
    device = item_emb.device
    neg = torch.empty(B, dtype=torch.long, device=device)
    viol = torch.empty(B, dtype=torch.int32, device=device)
    if B == 0:
        return neg, viol
    _check_runtime(indptr, indices, users, pos_items, user_emb, item_emb)
    user_emb = user_emb if user_emb.stride(-1) == 1 else user_emb.contiguous()
    item_emb = item_emb if item_emb.stride(-1) == 1 else item_emb.contiguous()
    cand = candidates.long().contiguous() if given else neg  # dummy pointer when drawing
    dim = item_emb.shape[1]
    block_u = triton.next_power_of_2(U)
    block_p = max(1, SLOTS_PER_PROGRAM // block_u)
    block_d = min(MAX_BLOCK_D, triton.next_power_of_2(dim), TILE_ELEMS // (block_p * block_u))
    block_d = max(1, block_d)
    _hardest_kernel[(triton.cdiv(B, block_p),)](
        indptr.contiguous(), indices.contiguous(), users.contiguous(), pos_items.contiguous(),
        user_emb, item_emb, cand, neg, viol, B, n_items, U, dim,
        user_emb.stride(0), item_emb.stride(0), float(margin),
        int(seed) % 2**63, _offset(offset, B * U),
        GIVEN=given, N_SEARCH=_n_search(n_items), BLOCK_P=block_p, BLOCK_U=block_u,
        BLOCK_D=block_d, num_warps=NUM_WARPS,
    )
    return neg, viol
