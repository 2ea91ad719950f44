"""Fused Triton training step: the torch loop's step (sampler, loss rule, sparse Adagrad, clip)
in two kernels, with no autograd, no sparse tensors and no host sync.

Why: on a GPU the torch loop is bound by autograd and torch's sparse Adagrad (dozens of small
launches, sparse coalescing, ``[B, N, dim]`` temporaries), not by the fused sampler. Here a step
is two launches, and each row's bytes cross memory a few times.

1. ``_step_kernel``, one program per ``BLOCK_P`` pairs: draws the negatives (``triton_kernel._draw``
   with the sampler's counters, so the draws are exactly ``hardest_negatives``'s /
   ``sample_uniform``'s for a (seed, offset)), scores them (distances accumulated in registers by
   ``BLOCK_D`` dim chunks, as ``_hardest_kernel``), applies the loss rule (restated in Triton:
   ``_triplet``, ``_contrastive``, ``_softmax``, tested against :mod:`recsys_metric.losses`), then
   streams the rows again and adds ``c * d(distance)/d(row)`` into a zeroed fp32 gradient
   workspace of the tables' shapes with ``tl.atomic_add``. Pairs of a batch share users and
   items (popular items above all), so rows collide across programs and inside one: the atomics
   sum them, as torch coalesces a sparse gradient. The touched rows (users, positives and the
   negatives the torch loop touches: the hardest for triplet, every draw, ``-1`` clamped to 0,
   otherwise) get flag 1, and the negatives are written out so the second kernel can find them.
   The loss, active-pair and kept-pair counts go to accumulators striped over ``STRIPES`` cache
   lines (one address hit by every program would serialise the atomics).
2. ``_apply_kernel``, one program per ``BLOCK_R`` of the batch's row ids (users, positives,
   negatives): each lane ``tl.atomic_xchg``-es its row's flag to 0 and owns the row if it read 1,
   so a row listed many times is applied once; the owner divides the summed gradient by the
   number of kept pairs (the ``/ B`` of :func:`~recsys_metric.losses.surrogate`: only known when
   kernel 1 is done), applies element-wise Adagrad (``acc += g^2``, ``w -= lr * g / (sqrt(acc) +
   1e-10)``, torch's sparse Adagrad) and the clip ``CML.clip_`` does (``renorm``: ``w *= c /
   (|w| + 1e-7)`` where ``|w| > c``), and zeroes the row's gradient and flag for the next step.
   The clip needs the updated row's norm first: a first pass computes it without writing, the
   second recomputes the same values and writes (no read-after-write across threads).

An epoch (:class:`FusedEpoch`) passes each batch as a slice of the permutation: the kernels
gather the pairs themselves, so a step is exactly two launches (host launch overhead bounds
small batches). Kernel boundaries order the two (same stream). The kept-pair count kernel 2
divides by lives in two parity slots: kernel 1 of a step adds into ``kept[parity]``, kernel 2
reads it and zeroes ``kept[1 - parity]``, which the next step's kernel 1 uses. All index
arithmetic is int64.

Semantics are the torch loop's step (``train.Trainer._torch_epoch`` + ``train.torch_step``) on the
same negatives, up to float summation order: ``tests/triton_train_checks.py``.
Importable without triton (``HAS_TRITON`` False; the functions raise ImportError).
"""

from __future__ import annotations

import torch

from .reference import check_catalogue
from .triton_kernel import HAS_TRITON, _check_runtime, _n_search, _offset

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .triton_kernel import _draw

LOSS_IDS = {"triplet": 0, "contrastive": 1, "softmax": 2}

# Tiling of kernel 1 (module-level so a benchmark can sweep them): ``SLOTS_PER_PROGRAM`` (pair,
# negative) slots per program, dim chunks of at most MAX_BLOCK_D floats and TILE_ELEMS elements.
SLOTS_PER_PROGRAM = 64
TILE_ELEMS = 2048
MAX_BLOCK_D = 32
NUM_WARPS = 4
# Kernel 2: row ids per program, dim chunk.
APPLY_ROWS = 32
APPLY_BLOCK_D = 64
APPLY_WARPS = 4
# Accumulators of loss / active / kept pairs: STRIPES slots, PAD elements (128 bytes) apart.
STRIPES = 32
PAD = 32

if HAS_TRITON:

    @triton.jit
    def _triplet(d_pos, d_neg, weight, margin):
        """losses.rules().triplet: ``weight * [margin + d_pos - d_neg]_+``."""
        h = margin + d_pos - d_neg
        a = weight * (h > 0).to(tl.float32)
        return a * h, a, -a

    @triton.jit
    def _rank_weight(violators, n_candidates, n_items):
        """losses.rules().rank_weight: ``log(1 + floor(n_items * M / U))``, integers in."""
        return tl.log(1.0 + ((n_items * violators.to(tl.int64)) // n_candidates).to(tl.float32))

    @triton.jit
    def _contrastive(d_pos, d_neg, w, margin, negative_weight):
        """losses.rules().contrastive on ``d_pos [P]``, ``d_neg, w [P, N]`` (w = 0: ignored)."""
        v = margin - d_neg
        on = (v > 0).to(tl.float32)
        scale = negative_weight / tl.maximum(tl.sum(w, axis=1), 1e-30)
        value = d_pos + scale * tl.sum(w * v * on, axis=1)
        return value, 1.0 + 0.0 * d_pos, -scale[:, None] * w * on

    @triton.jit
    def _softmax(d_pos, d_neg, w, temperature):
        """losses.rules().softmax (log-Q corrected sampled softmax), same shapes."""
        z_pos = -d_pos / temperature
        z = tl.where(w > 0, -d_neg / temperature + tl.log(tl.maximum(w, 1e-30)), float("-inf"))
        m = tl.maximum(z_pos, tl.max(z, axis=1))
        e_pos = tl.exp(z_pos - m)
        e = tl.exp(z - m[:, None])
        s = e_pos + tl.sum(e, axis=1)
        return (tl.log(s) + m - z_pos, (1.0 - e_pos / s) / temperature,
                -(e / s[:, None]) / temperature)

    # seed, offset and parity change every step: never specialised, one compiled kernel.
    @triton.jit(do_not_specialize=["seed", "offset", "parity"])
    def _step_kernel(
        indptr_ptr, indices_ptr, users_ptr, pos_ptr, idx_ptr, cand_ptr, user_emb_ptr,
        item_emb_ptr,
        user_grad_ptr, item_grad_ptr, user_flag_ptr, item_flag_ptr, neg_out_ptr, kept_ptr,
        loss_ptr, active_ptr, B, n_items, U, dim, stride_ue, stride_ie, margin, negative_weight,
        temperature, seed, offset, parity,
        LOSS: tl.constexpr, COSINE: tl.constexpr, RANK_WEIGHT: tl.constexpr,
        GIVEN: tl.constexpr, HAS_IDX: tl.constexpr, N_SEARCH: tl.constexpr,
        STRIPES: tl.constexpr, PAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_U: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        cols = tl.arange(0, BLOCK_U)
        row_ok = rows < B
        slot_ok = row_ok[:, None] & (cols < U)[None, :]
        if HAS_IDX:  # pair i of the batch is pair idx[i] of the arrays (a slice of a permutation)
            pair = tl.load(idx_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        else:
            pair = rows
        user = tl.load(users_ptr + pair, mask=row_ok, other=0).to(tl.int64)
        pos = tl.load(pos_ptr + pair, mask=row_ok, other=0).to(tl.int64)
        slot = rows[:, None] * U + cols[None, :]
        if GIVEN:
            cand = tl.load(cand_ptr + slot, mask=slot_ok, other=-1).to(tl.int64)
        else:
            counter = (offset.to(tl.int64) << 32) + slot
            cand = _draw(indptr_ptr, indices_ptr, user[:, None], counter, seed, n_items, N_SEARCH)
        valid = slot_ok & (cand >= 0)
        cand0 = tl.where(valid, cand, 0)  # the torch loop's neg.clamp(min=0)

        # Pass 1: distances, in registers by dim chunks.
        u_base = user_emb_ptr + user[:, None] * stride_ue
        p_base = item_emb_ptr + pos[:, None] * stride_ie
        c_base = item_emb_ptr + cand0[:, :, None] * stride_ie
        d_pos = tl.zeros([BLOCK_P], dtype=tl.float32)
        d_neg = tl.zeros([BLOCK_P, BLOCK_U], dtype=tl.float32)
        uu = tl.zeros([BLOCK_P], dtype=tl.float32)
        pp = tl.zeros([BLOCK_P], dtype=tl.float32)
        nn = tl.zeros([BLOCK_P, BLOCK_U], dtype=tl.float32)
        for d0 in range(0, dim, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            d_ok = offs < dim
            m2 = row_ok[:, None] & d_ok[None, :]
            u = tl.load(u_base + offs[None, :], mask=m2, other=0.0).to(tl.float32)
            p = tl.load(p_base + offs[None, :], mask=m2, other=0.0).to(tl.float32)
            c = tl.load(c_base + offs[None, None, :], mask=valid[:, :, None] & d_ok[None, None, :],
                        other=0.0).to(tl.float32)
            if COSINE:  # d_pos / d_neg hold the dot products until the end
                uu += tl.sum(u * u, axis=1)
                pp += tl.sum(p * p, axis=1)
                d_pos += tl.sum(u * p, axis=1)
                nn += tl.sum(c * c, axis=2)
                d_neg += tl.sum(u[:, None, :] * c, axis=2)
            else:
                diff = u[:, None, :] - c
                d_neg += tl.sum(diff * diff, axis=2)
                dp = u - p
                d_pos += tl.sum(dp * dp, axis=1)
        # losses.cosine_distance: 1 - x.y / (sqrt(|x|^2 + eps) sqrt(|y|^2 + eps))
        n_u = tl.sqrt(uu + 1e-12)
        n_p = tl.sqrt(pp + 1e-12)
        n_n = tl.sqrt(nn + 1e-12)
        dot_p = d_pos
        dot_n = d_neg
        if COSINE:
            d_pos = 1.0 - dot_p / (n_u * n_p)
            d_neg = 1.0 - dot_n / (n_u[:, None] * n_n)

        # The rule: value and coefficients, zero for pairs and slots that train nothing.
        if LOSS == 0:
            # Invalid slots score +inf: never the hardest, never violators (_hardest_kernel).
            d_neg = tl.where(valid, d_neg, float("inf"))
            viol = tl.sum(((margin + d_pos[:, None] - d_neg) > 0).to(tl.int32), axis=1)
            best_d = tl.min(d_neg, axis=1)
            best_col = tl.min(tl.where(d_neg == best_d[:, None], cols[None, :], BLOCK_U), axis=1)
            best = tl.sum(tl.where(cols[None, :] == best_col[:, None], cand, 0), axis=1)
            kept = row_ok & (tl.max(valid.to(tl.int32), axis=1) > 0)
            if RANK_WEIGHT:
                weight = _rank_weight(viol, U, n_items)
            else:
                weight = tl.full([BLOCK_P], 1.0, tl.float32)
            value, c_pos, c_best = _triplet(d_pos, tl.where(kept, best_d, 0.0), weight, margin)
            value = tl.where(kept, value, 0.0)
            c_pos = tl.where(kept, c_pos, 0.0)
            c_best = tl.where(kept, c_best, 0.0)
            active = kept & ((c_pos != 0) | (c_best != 0))
            best = tl.where(kept, best, 0)
            tl.store(neg_out_ptr + rows, tl.where(kept, best, -1), mask=row_ok)
            tl.store(item_flag_ptr + best, 1, mask=kept)
        else:
            # train._TorchNegatives: w = (n_items - deg(user)) / N per draw, 0 for a -1 draw.
            deg = (tl.load(indptr_ptr + user + 1, mask=row_ok, other=0).to(tl.int64)
                   - tl.load(indptr_ptr + user, mask=row_ok, other=0).to(tl.int64))
            w_pair = ((n_items - deg).to(tl.float64) / U).to(tl.float32)
            w = tl.where(valid, w_pair[:, None], 0.0)
            if LOSS == 1:
                value, c_pos, c_neg = _contrastive(d_pos, d_neg, w, margin, negative_weight)
            else:
                value, c_pos, c_neg = _softmax(d_pos, d_neg, w, temperature)
            kept = row_ok
            value = tl.where(kept, value, 0.0)
            c_pos = tl.where(kept, c_pos, 0.0)
            c_neg = tl.where(valid, c_neg, 0.0)
            active = kept & ((c_pos != 0) | (tl.max((c_neg != 0).to(tl.int32), axis=1) > 0))
            tl.store(neg_out_ptr + slot, cand0, mask=slot_ok)
            tl.store(item_flag_ptr + cand0, 1, mask=slot_ok)
        tl.store(user_flag_ptr + user, 1, mask=kept)
        tl.store(item_flag_ptr + pos, 1, mask=kept)
        stripe = (pid % STRIPES) * PAD
        tl.atomic_add(kept_ptr + parity * (STRIPES * PAD) + stripe,
                      tl.sum(kept.to(tl.int32), axis=0), sem="relaxed")
        tl.atomic_add(loss_ptr + stripe, tl.sum(value, axis=0), sem="relaxed")
        tl.atomic_add(active_ptr + stripe, tl.sum(active.to(tl.int64), axis=0), sem="relaxed")

        # Pass 2: each row's gradient, sum of coefficient x d(distance)/d(row), added
        # atomically (rows repeat within and across programs). Rows without one are skipped.
        g_row = active
        ug_base = user_grad_ptr + user[:, None] * dim
        pg_base = item_grad_ptr + pos[:, None] * dim
        if LOSS == 0:
            n_base = item_emb_ptr + best[:, None] * stride_ie
            ng_base = item_grad_ptr + best[:, None] * dim
        else:
            g_slot = c_neg != 0
            ng_base = item_grad_ptr + cand0[:, :, None] * dim
        for d0 in range(0, dim, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            d_ok = offs < dim
            m2 = g_row[:, None] & d_ok[None, :]
            u = tl.load(u_base + offs[None, :], mask=m2, other=0.0).to(tl.float32)
            p = tl.load(p_base + offs[None, :], mask=m2, other=0.0).to(tl.float32)
            if LOSS == 0:  # euclidean only
                n = tl.load(n_base + offs[None, :], mask=m2, other=0.0).to(tl.float32)
                g_p = -2.0 * c_pos[:, None] * (u - p)
                g_n = -2.0 * c_best[:, None] * (u - n)
                g_u = -(g_p + g_n)
                tl.atomic_add(ng_base + offs[None, :], g_n, mask=m2, sem="relaxed")
            else:
                m3 = g_slot[:, :, None] & d_ok[None, None, :]
                c = tl.load(c_base + offs[None, None, :], mask=m3, other=0.0).to(tl.float32)
                if COSINE:
                    # d(1 - x.y / (nx ny))/dx = -(y - (x.y / nx^2) x) / (nx ny)
                    a_p = -c_pos / (n_u * n_p)
                    g_u = a_p[:, None] * (p - (dot_p / (n_u * n_u))[:, None] * u)
                    g_p = a_p[:, None] * (u - (dot_p / (n_p * n_p))[:, None] * p)
                    a_n = -c_neg / (n_u[:, None] * n_n)
                    g_u += tl.sum(a_n[:, :, None] * (
                        c - (dot_n / (n_u * n_u)[:, None])[:, :, None] * u[:, None, :]), axis=1)
                    g_n = a_n[:, :, None] * (
                        u[:, None, :] - (dot_n / (n_n * n_n))[:, :, None] * c)
                else:
                    g_p = -2.0 * c_pos[:, None] * (u - p)
                    t = 2.0 * c_neg[:, :, None] * (u[:, None, :] - c)
                    g_u = tl.sum(t, axis=1) - g_p
                    g_n = -t
                tl.atomic_add(ng_base + offs[None, None, :], g_n, mask=m3, sem="relaxed")
            tl.atomic_add(ug_base + offs[None, :], g_u, mask=m2, sem="relaxed")
            tl.atomic_add(pg_base + offs[None, :], g_p, mask=m2, sem="relaxed")

    @triton.jit
    def _apply_rows(rows_ptr, idx_ptr, n, block, emb_ptr, acc_ptr, grad_ptr, flag_ptr, stride_e,
                    stride_a, dim, n_kept, lr, clip_norm, CLIP: tl.constexpr,
                    HAS_IDX: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
        idx = block.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        ok = idx < n
        if HAS_IDX:
            idx = tl.load(idx_ptr + idx, mask=ok, other=0).to(tl.int64)
        row = tl.load(rows_ptr + idx, mask=ok, other=-1).to(tl.int64)
        ok = ok & (row >= 0)
        row = tl.where(ok, row, 0)
        # Claim: the one lane that swaps the flag 1 -> 0 owns the row (duplicates apply once).
        own = ok & (tl.atomic_xchg(flag_ptr + row, 0, mask=ok, sem="relaxed") != 0)
        e_base = emb_ptr + row[:, None] * stride_e
        a_base = acc_ptr + row[:, None] * stride_a
        g_base = grad_ptr + row[:, None] * dim
        scale = tl.full([BLOCK_R], 1.0, tl.float32)
        if CLIP:  # the updated row's norm, nothing written yet
            sq = tl.zeros([BLOCK_R], dtype=tl.float32)
            for d0 in range(0, dim, BLOCK_D):
                offs = d0 + tl.arange(0, BLOCK_D)
                m = own[:, None] & (offs < dim)[None, :]
                g = tl.load(g_base + offs[None, :], mask=m, other=0.0) / n_kept
                a = tl.load(a_base + offs[None, :], mask=m, other=0.0) + g * g
                w = tl.load(e_base + offs[None, :], mask=m, other=0.0) - lr * (
                    g / (tl.sqrt(a) + 1e-10))
                sq += tl.sum(w * w, axis=1)
            norm = tl.sqrt(sq)
            scale = tl.where(norm > clip_norm, clip_norm / (norm + 1e-7), 1.0)
        for d0 in range(0, dim, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            m = own[:, None] & (offs < dim)[None, :]
            g = tl.load(g_base + offs[None, :], mask=m, other=0.0) / n_kept
            a = tl.load(a_base + offs[None, :], mask=m, other=0.0) + g * g
            w = tl.load(e_base + offs[None, :], mask=m, other=0.0) - lr * (
                g / (tl.sqrt(a) + 1e-10))
            if CLIP:
                w = w * scale[:, None]
            tl.store(e_base + offs[None, :], w, mask=m)
            tl.store(a_base + offs[None, :], a, mask=m)
            tl.store(g_base + offs[None, :], tl.zeros_like(g), mask=m)

    @triton.jit(do_not_specialize=["parity"])
    def _apply_kernel(
        users_ptr, pos_ptr, idx_ptr, neg_ptr, B, n_neg, user_emb_ptr, item_emb_ptr, user_acc_ptr,
        item_acc_ptr, user_grad_ptr, item_grad_ptr, user_flag_ptr, item_flag_ptr, kept_ptr,
        parity, stride_ue, stride_ie, stride_ua, stride_ia, dim, lr, clip_norm,
        CLIP: tl.constexpr, HAS_IDX: tl.constexpr, STRIPES: tl.constexpr, PAD: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid = tl.program_id(0)
        kept = tl.load(kept_ptr + parity * (STRIPES * PAD) + tl.arange(0, STRIPES) * PAD)
        n_kept = tl.maximum(tl.sum(kept, axis=0), 1).to(tl.float32)
        if pid == 0:  # the next step's slots (this step's are still being read)
            tl.store(kept_ptr + (1 - parity) * (STRIPES * PAD) + tl.arange(0, STRIPES) * PAD,
                     tl.zeros([STRIPES], dtype=tl.int32))
        n_blocks = tl.cdiv(B, BLOCK_R)
        if pid < n_blocks:
            _apply_rows(users_ptr, idx_ptr, B, pid, user_emb_ptr, user_acc_ptr, user_grad_ptr,
                        user_flag_ptr, stride_ue, stride_ua, dim, n_kept, lr, clip_norm,
                        CLIP, HAS_IDX, BLOCK_R, BLOCK_D)
        elif pid < 2 * n_blocks:
            _apply_rows(pos_ptr, idx_ptr, B, pid - n_blocks, item_emb_ptr, item_acc_ptr,
                        item_grad_ptr, item_flag_ptr, stride_ie, stride_ia, dim, n_kept, lr,
                        clip_norm, CLIP, HAS_IDX, BLOCK_R, BLOCK_D)
        else:
            _apply_rows(neg_ptr, idx_ptr, n_neg, pid - 2 * n_blocks, item_emb_ptr,
                        item_acc_ptr, item_grad_ptr, item_flag_ptr, stride_ie, stride_ia, dim,
                        n_kept, lr, clip_norm, CLIP, False, BLOCK_R, BLOCK_D)


class Workspace:
    """Buffers reused between steps: fp32 gradients of the tables' shapes and row flags (both
    zero between steps: kernel 2 clears what kernel 1 wrote), the batch's negatives, striped
    loss / active accumulators and the kept-pair counts. Allocated on first use."""

    def __init__(self) -> None:
        self.key = None
        self.neg = None
        self.parity = 0

    def prepare(self, user_emb: torch.Tensor, item_emb: torch.Tensor, n_neg: int) -> None:
        key = (tuple(user_emb.shape), tuple(item_emb.shape), user_emb.device)
        if key != self.key:
            dev = user_emb.device
            f32 = dict(dtype=torch.float32, device=dev)
            self.user_grad = torch.zeros(user_emb.shape, **f32)
            self.item_grad = torch.zeros(item_emb.shape, **f32)
            self.user_flag = torch.zeros(user_emb.shape[0], dtype=torch.int32, device=dev)
            self.item_flag = torch.zeros(item_emb.shape[0], dtype=torch.int32, device=dev)
            self.kept = torch.zeros(2 * STRIPES * PAD, dtype=torch.int32, device=dev)
            self.loss = torch.zeros(STRIPES * PAD, **f32)
            self.active = torch.zeros(STRIPES * PAD, dtype=torch.int64, device=dev)
            self.key, self.neg, self.parity = key, None, 0
        if self.neg is None or self.neg.numel() < n_neg:
            self.neg = torch.empty(max(n_neg, 1), dtype=torch.int64, device=user_emb.device)

    def reset_totals(self) -> None:
        if self.key is not None:
            self.loss.zero_()
            self.active.zero_()

    def totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss_sum, n_active)`` since the last :meth:`reset_totals`, on device."""
        return self.loss.sum(), self.active.sum()


def _check(loss: str, distance: str, user_emb, item_emb, user_acc, item_acc) -> None:
    if loss not in LOSS_IDS:
        raise ValueError(f"loss must be one of {', '.join(LOSS_IDS)}, got {loss!r}")
    if distance not in ("euclidean", "cosine"):
        raise ValueError(f"distance must be euclidean or cosine, got {distance!r}")
    if loss == "triplet" and distance != "euclidean":
        raise ValueError("the triplet loss uses the euclidean distance")
    for name, t, ref in (("user_emb", user_emb, None), ("item_emb", item_emb, None),
                         ("user_acc", user_acc, user_emb), ("item_acc", item_acc, item_emb)):
        if t.dtype != torch.float32 or t.dim() != 2 or t.stride(-1) != 1:
            raise ValueError(f"{name} must be a 2-d float32 tensor with unit last stride")
        if ref is not None and t.shape != ref.shape:
            raise ValueError(f"{name} must have its table's shape {tuple(ref.shape)} "
                             "(element-wise Adagrad)")
    if user_emb.shape[1] != item_emb.shape[1]:
        raise ValueError("user and item tables of different dimensions")


def _launch(indptr, indices, users, pos, user_emb, item_emb, user_acc, item_acc, ws, *, loss,
            distance, n_negatives, margin, rank_weight, negative_weight, temperature, lr,
            clip_norm, seed, offset, candidates=None, idx=None) -> None:
    """Both kernels of one step on pairs ``(users[i], pos[i])``, or ``(users[idx[i]],
    pos[idx[i]])`` (gathered in the kernels); the loss and active counts are added to ``ws``'s
    totals."""
    n_items, dim = item_emb.shape
    B = len(users) if idx is None else len(idx)
    given = candidates is not None
    U = candidates.shape[1] if given else int(n_negatives)
    if U < 1:
        raise ValueError(f"need at least one negative per pair, got {U}")
    if given and candidates.shape[0] != B:
        raise ValueError("candidates must have one row per pair")
    if B == 0:
        return
    triplet = loss == "triplet"
    n_neg = B if triplet else B * U
    ws.prepare(user_emb, item_emb, n_neg)
    cand = candidates.long().contiguous() if given else ws.neg  # dummy pointer when drawing
    block_u = triton.next_power_of_2(U)
    block_p = max(1, SLOTS_PER_PROGRAM // block_u)
    block_d = max(1, min(MAX_BLOCK_D, triton.next_power_of_2(dim),
                         TILE_ELEMS // (block_p * block_u)))
    users, pos = users.contiguous(), pos.contiguous()
    has_idx = idx is not None
    idx = idx.contiguous() if has_idx else users  # dummy pointer without
    _step_kernel[(triton.cdiv(B, block_p),)](
        indptr.contiguous(), indices.contiguous(), users, pos, idx, cand, user_emb, item_emb,
        ws.user_grad, ws.item_grad, ws.user_flag, ws.item_flag, ws.neg, ws.kept, ws.loss,
        ws.active, B, n_items, U, dim, user_emb.stride(0), item_emb.stride(0), float(margin),
        float(negative_weight), float(temperature), int(seed) % 2**63, _offset(offset, B * U),
        ws.parity,
        LOSS=LOSS_IDS[loss], COSINE=distance == "cosine",
        RANK_WEIGHT=bool(rank_weight) and triplet, GIVEN=given, HAS_IDX=has_idx,
        N_SEARCH=_n_search(n_items), STRIPES=STRIPES, PAD=PAD, BLOCK_P=block_p, BLOCK_U=block_u,
        BLOCK_D=block_d, num_warps=NUM_WARPS,
    )
    n_blocks = triton.cdiv(B, APPLY_ROWS)
    _apply_kernel[(2 * n_blocks + triton.cdiv(n_neg, APPLY_ROWS),)](
        users, pos, idx, ws.neg, B, n_neg, user_emb, item_emb, user_acc, item_acc, ws.user_grad,
        ws.item_grad, ws.user_flag, ws.item_flag, ws.kept, ws.parity, user_emb.stride(0),
        item_emb.stride(0), user_acc.stride(0), item_acc.stride(0), dim, float(lr),
        float(clip_norm), CLIP=clip_norm > 0, HAS_IDX=has_idx, STRIPES=STRIPES, PAD=PAD,
        BLOCK_R=APPLY_ROWS, BLOCK_D=min(APPLY_BLOCK_D, triton.next_power_of_2(dim)),
        num_warps=APPLY_WARPS,
    )
    ws.parity ^= 1


@torch.no_grad()
def train_step(indptr, indices, users, pos, user_emb, item_emb, user_acc, item_acc, *,
               loss: str, distance: str = "euclidean", n_negatives: int, margin: float = 1.0,
               rank_weight: bool = True, negative_weight: float = 1.0, temperature: float = 0.1,
               lr: float, clip_norm: float = 1.0, seed: int = 0, offset: int = 0,
               candidates: torch.Tensor | None = None, workspace: Workspace | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step of the torch loop on pairs ``(users, pos)`` ``[B]``, fused: updates
    ``user_emb``, ``item_emb`` and their element-wise Adagrad accumulators ``user_acc``,
    ``item_acc`` (float32, the tables' shapes) in place and returns this step's on-device
    ``(loss_sum, n_active)``.

    ``n_negatives``: the triplet loss's U candidates (the hardest is used), the contrastive and
    softmax losses' N negatives per pair, drawn uniformly from the user's non-positives with
    ``(seed, offset)`` as ``triton_kernel.hardest_negatives`` / ``sample_uniform`` draw them; or
    ``candidates`` ``[B, U]`` (``-1`` = none). ``workspace``: reuse one between steps."""
    check_catalogue(item_emb.shape[0])
    _check(loss, distance, user_emb, item_emb, user_acc, item_acc)
    _check_runtime(indptr, indices, users, pos, user_emb, item_emb, user_acc, item_acc)
    ws = workspace if workspace is not None else Workspace()
    ws.prepare(user_emb, item_emb, 0)
    ws.reset_totals()
    _launch(indptr, indices, users, pos, user_emb, item_emb, user_acc, item_acc, ws, loss=loss,
            distance=distance, n_negatives=n_negatives, margin=margin, rank_weight=rank_weight,
            negative_weight=negative_weight, temperature=temperature, lr=lr,
            clip_norm=clip_norm, seed=seed, offset=offset, candidates=candidates)
    return ws.totals()


class FusedEpoch:
    """The torch loop's epoch (``Trainer._torch_epoch``'s ``run``) with the fused step: batches
    of ``batch_size`` pairs in the order of a permutation, step ``s`` of epoch ``e`` drawing with
    ``offset = e * n_steps + s``. ``rule``: ``loss``, ``distance``, ``n_negatives``, ``margin``,
    ``rank_weight``, ``negative_weight``, ``temperature``, ``lr``, ``clip_norm``, ``seed`` as in
    :func:`train_step`. Holds the workspace; tables and accumulators are updated in place."""

    def __init__(self, indptr, indices, pair_users, pair_items, user_emb, item_emb, user_acc,
                 item_acc, *, batch_size: int, **rule) -> None:
        _check(rule["loss"], rule.get("distance", "euclidean"), user_emb, item_emb, user_acc,
               item_acc)
        check_catalogue(item_emb.shape[0])
        self.indptr, self.indices = indptr.contiguous(), indices.contiguous()
        self.pair_users, self.pair_items = pair_users.contiguous(), pair_items.contiguous()
        self.tables = (user_emb, item_emb, user_acc, item_acc)
        self.batch_size = int(batch_size)
        self.rule = {"distance": "euclidean", "margin": 1.0, "rank_weight": True,
                     "negative_weight": 1.0, "temperature": 0.1, "clip_norm": 1.0, "seed": 0,
                     **rule}
        self.n_pairs = len(pair_users)
        self.n_steps = -(-self.n_pairs // self.batch_size)
        self.workspace = Workspace()

    @torch.no_grad()
    def __call__(self, epoch: int, perm: torch.Tensor, sync=None, syncs: int = 1
                 ) -> tuple[float, int]:
        """One epoch over ``perm`` (a permutation of the pairs, on the tables' device); returns
        ``(mean loss per pair, active pairs)`` (one host sync, at the end). ``sync``: called
        ``syncs`` times, after about equal runs of steps (the last at the epoch's end), as the
        torch loop calls its item merge."""
        _check_runtime(self.indptr, self.indices, self.pair_users, perm, *self.tables)
        ws, bs, n_steps = self.workspace, self.batch_size, self.n_steps
        ws.prepare(self.tables[0], self.tables[1], 0)
        ws.reset_totals()
        merges = [n_steps * k // syncs for k in range(1, syncs + 1)] if sync else []
        for step in range(n_steps):
            _launch(self.indptr, self.indices, self.pair_users, self.pair_items, *self.tables,
                    ws, offset=epoch * n_steps + step, idx=perm[step * bs:(step + 1) * bs],
                    **self.rule)
            while merges and merges[0] <= step + 1:
                merges.pop(0)
                sync()
        for _ in merges:  # no pairs
            sync()
        loss_sum, active = ws.totals()
        return float(loss_sum) / max(self.n_pairs, 1), int(active)


def run_epoch(indptr, indices, pair_users, pair_items, perm, user_emb, item_emb, user_acc,
              item_acc, *, batch_size: int, epoch: int, **rule) -> tuple[float, int]:
    """One-off :class:`FusedEpoch` call (a fresh workspace: for a loop, keep a FusedEpoch)."""
    return FusedEpoch(indptr, indices, pair_users, pair_items, user_emb, item_emb, user_acc,
                      item_acc, batch_size=batch_size, **rule)(epoch, perm)


__all__ = ["HAS_TRITON", "FusedEpoch", "Workspace", "run_epoch", "train_step"]
