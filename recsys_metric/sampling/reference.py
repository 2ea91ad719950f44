"""Negative sampling in plain torch (any device): the reference every fused backend must match.

Positives come as a CSR user x item pattern (``indptr``, ``indices`` with sorted column indices per
row). Negatives are drawn *rejection-free*: for user ``u`` with ``deg`` positives
``p_0 < p_1 < ...`` draw ``j`` uniformly in ``[0, n_items - deg)`` and return the ``j``-th
non-positive item, ``j + #{k : p_k - k <= j}``. The keys ``p_k - k`` are non-decreasing within a
row, so one ``searchsorted`` over the global keys ``row * n_items + (p_k - k)`` maps every draw at
once. This is exactly uniform over non-positives, never returns a positive, and needs no redraw
loop even for a user who has every item but one.

Semantics shared by every backend (reference, Triton, CPU):

- ``sample_uniform(indptr, indices, users, n_items, n, seed, offset)`` -> int64 ``[B, n]`` item ids.
  A user with every item has no negative: their row is ``-1``.
- ``hardest_negatives(...)`` -> ``(neg [B] int64, violators [B] int32)``: among ``U`` candidates
  (drawn as above, or given), ``violators`` counts those with ``margin + d(u,p) - d(u,c) > 0`` and
  ``neg`` is the candidate with the smallest squared distance to the user (first on ties), or ``-1``
  when the user has no negative. Distances are squared Euclidean, computed in fp32.
"""

from __future__ import annotations

import torch

# Upper bound on the floats held by one chunk of the [chunk, U, dim] candidate tensor (~64 MiB), so
# peak memory stays fixed whatever the batch size.
CHUNK_FLOATS = 16 * 1024 * 1024


def check_catalogue(n_items: int) -> None:
    if n_items < 2:
        raise ValueError(
            f"negative sampling needs at least 2 items in the catalogue, got n_items={n_items}"
        )


def _draw_keys(indptr: torch.Tensor, indices: torch.Tensor, n_items: int) -> torch.Tensor:
    """Global sorted keys ``row * n_items + (p_k - k)`` for the rejection-free mapping."""
    rows = torch.repeat_interleave(
        torch.arange(len(indptr) - 1, device=indices.device), indptr[1:] - indptr[:-1]
    )
    rank_in_row = torch.arange(len(indices), device=indices.device) - indptr[rows]
    return rows * n_items + (indices.long() - rank_in_row)


def map_to_negatives(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    users: torch.Tensor,
    n_items: int,
    draws: torch.Tensor,
    keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Map ``draws`` (``[B, n]`` uniform floats in [0, 1)) to uniform non-positive item ids."""
    indptr = indptr.long()
    users = users.long()
    if keys is None:
        keys = _draw_keys(indptr, indices, n_items)
    start = indptr[users]
    n_free = (n_items - (indptr[users + 1] - start)).unsqueeze(1)  # [B, 1]
    j = torch.clamp((draws * n_free).long(), max=torch.clamp(n_free - 1, min=0))
    query = users.unsqueeze(1) * n_items + j
    below = torch.searchsorted(keys, query, right=True) - start.unsqueeze(1)
    items = j + below
    return torch.where(n_free > 0, items, torch.full_like(items, -1))


def _generator(seed: int, offset: int, device: torch.device) -> torch.Generator:
    # Torch's CPU and CUDA generators have no per-call offset, so fold it into the seed: one stream
    # per (seed, offset), reproducible, different steps different.
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + int(offset)) % (2**63 - 1))
    return g


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
    """Draw ``n`` uniform non-positive items for each user in ``users`` (with replacement)."""
    check_catalogue(n_items)
    g = _generator(seed, offset, indices.device)
    draws = torch.rand((len(users), n), generator=g, device=indices.device)
    return map_to_negatives(indptr, indices, users, n_items, draws)


@torch.no_grad()
def score_candidates(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    users: torch.Tensor,
    pos_items: torch.Tensor,
    candidates: torch.Tensor,
    margin: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hardest candidate and violator count per row, chunked so memory stays bounded."""
    B, U = candidates.shape
    dim = user_emb.shape[1]
    chunk = max(1, CHUNK_FLOATS // max(1, U * dim))
    neg = torch.empty(B, dtype=torch.long, device=candidates.device)
    viol = torch.empty(B, dtype=torch.int32, device=candidates.device)
    for s in range(0, B, chunk):
        e = min(B, s + chunk)
        u = user_emb[users[s:e]].float()  # [b, dim]
        d_pos = (u - item_emb[pos_items[s:e]].float()).pow(2).sum(1)  # [b]
        c = candidates[s:e]
        valid = c >= 0
        cv = item_emb[c.clamp(min=0)].float()  # [b, U, dim]
        d_neg = (u.unsqueeze(1) - cv).pow(2).sum(2)  # [b, U]
        d_neg = torch.where(valid, d_neg, torch.full_like(d_neg, float("inf")))
        viol[s:e] = ((margin + d_pos.unsqueeze(1) - d_neg) > 0).sum(1).int()
        best = d_neg.argmin(1)  # first index on ties
        neg[s:e] = torch.where(valid.any(1), c.gather(1, best[:, None]).squeeze(1), -1)
    return neg, viol


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
    """For each (user, positive) pair: draw ``n_candidates`` negatives (or take ``candidates``),
    return the closest to the user and how many violate the margin."""
    n_items = item_emb.shape[0]
    check_catalogue(n_items)
    if candidates is None:
        candidates = sample_uniform(indptr, indices, users, n_items, n_candidates, seed, offset)
    return score_candidates(user_emb, item_emb, users.long(), pos_items.long(), candidates, margin)
