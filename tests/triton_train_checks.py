"""Checks of the fused Triton training step (recsys_metric.sampling.triton_train) under Triton's
CPU interpreter, against the torch loop's step (train.torch_step on the same negatives).

Run by tests/test_triton_train.py in a subprocess with TRITON_INTERPRET=1 (the variable must be
set before triton is imported). Usage:

    TRITON_INTERPRET=1 python tests/triton_train_checks.py [check names...]

Prints one PASS/FAIL line per check and exits 1 if any failed.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from recsys_metric import losses, sampling  # noqa: E402
from recsys_metric.model import CML  # noqa: E402
from recsys_metric.sampling import triton_train as tt  # noqa: E402
from recsys_metric.train import TrainConfig, _TorchNegatives, make_optimizer, torch_step  # noqa: E402

ATOL = 1e-5


def fixture(seed=0, n_users=12, n_items=30, density=0.3):
    """Random positives; user 0 has none, user 2 has every item, user 3 all but two."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(n_users, n_items, generator=g) < density
    dense[0] = False
    dense[2] = True
    dense[3] = True
    dense[3, [5, 17]] = False
    m = sp.csr_matrix(dense.numpy().astype("float32"))
    m.sort_indices()
    indptr = torch.as_tensor(m.indptr.astype("int64"))
    indices = torch.as_tensor(m.indices.astype("int32"))
    return dense, m, indptr, indices


def batch(dense, B, seed):
    """Pairs with duplicate users, items and whole pairs, users 0 (no positive) and 2 (every
    item: no negative) included."""
    g = torch.Generator().manual_seed(seed)
    n_users, n_items = dense.shape
    users = torch.randint(0, n_users, (B,), generator=g)
    users[:6] = torch.tensor([0, 2, 2, 3, 5, 5])
    pos = torch.randint(0, n_items, (B,), generator=g)
    pos[5] = pos[4]  # a duplicated pair
    pos[7] = pos[8] = pos[9]  # a popular item
    return users, pos


def tables(n_users, n_items, dim, seed):
    g = torch.Generator().manual_seed(seed)
    ue = torch.randn(n_users, dim, generator=g)
    ie = torch.randn(n_items, dim, generator=g)
    # norms in [0.2, 1.3]: with clip_norm 1 some rows start outside the ball, more leave it
    ue *= (0.2 + 1.1 * torch.rand(n_users, 1, generator=g)) / ue.norm(dim=1, keepdim=True)
    ie *= (0.2 + 1.1 * torch.rand(n_items, 1, generator=g)) / ie.norm(dim=1, keepdim=True)
    return ue, ie


class TorchLoop:
    """The torch loop (train.Trainer._torch_epoch) on CPU, the triton sampler interpreted."""

    def __init__(self, cfg, m, indptr, indices, ue, ie):
        self.cfg, self.indptr, self.indices = cfg, indptr, indices
        self.n_items = m.shape[1]
        self.model = CML(ue.shape[0], ie.shape[0], ue.shape[1], cfg.clip_norm,
                         distance=cfg.distance)
        with torch.no_grad():
            self.model.users.weight.copy_(ue)
            self.model.items.weight.copy_(ie)
        self.opt = make_optimizer(self.model, cfg)
        pair_items = torch.as_tensor(m.indices.astype("int64"))
        self.draw = _TorchNegatives(cfg, m, pair_items, cfg.n_negatives, "triton")

    def step(self, u, p, offset, candidates=None):
        cfg, model = self.cfg, self.model
        U = cfg.n_negatives
        if cfg.loss == "triplet":
            neg, viol = sampling.hardest_negatives(
                self.indptr, self.indices, u, p, model.users.weight.detach(),
                model.items.weight.detach(), U, cfg.margin, cfg.seed, offset,
                candidates=candidates, backend="triton")
            ok = neg >= 0
            u, p, neg = u[ok], p[ok], neg[ok].unsqueeze(1)
            w = (losses.rank_weight(viol[ok], U, self.n_items) if cfg.rank_weight
                 else torch.ones(len(u))).unsqueeze(1)
        elif candidates is not None:
            deg = self.indptr.diff()
            w = ((self.n_items - deg[u]).double() / U).unsqueeze(1) * (candidates >= 0)
            neg, w = candidates.clamp(min=0).long(), w.float()
        else:
            neg, w = self.draw(u, 0, 0, offset)
        value, c_pos, c_neg = torch_step(model, self.opt, cfg, u, p, neg, w)
        return value.sum(), ((c_pos != 0) | (c_neg != 0).any(1)).sum()

    def state(self):
        m = self.model
        return (m.users.weight.detach(), m.items.weight.detach(),
                self.opt.state[m.users.weight]["sum"], self.opt.state[m.items.weight]["sum"])


def rule_kwargs(cfg):
    return dict(loss=cfg.loss, distance=cfg.distance, n_negatives=cfg.n_negatives,
                margin=cfg.margin, rank_weight=cfg.rank_weight,
                negative_weight=cfg.negative_weight, temperature=cfg.temperature, lr=cfg.lr,
                clip_norm=cfg.clip_norm, seed=cfg.seed)


def close(name, got, want, atol=ATOL):
    got, want = torch.as_tensor(got).double(), torch.as_tensor(want).double()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs().max().item() if got.numel() else 0.0
    assert err <= atol + 1e-5 * want.abs().max().item(), f"{name}: max error {err:.3g}"


def compare(tag, fused, ref, totals=None, ref_totals=None, atol=ATOL):
    for name, a, b in zip(("user_emb", "item_emb", "user_acc", "item_acc"), fused, ref,
                          strict=True):
        close(f"{tag} {name}", a, b, atol)
    if totals is not None:
        close(f"{tag} loss_sum", totals[0], ref_totals[0], atol)
        assert int(totals[1]) == int(ref_totals[1]), (
            f"{tag} n_active {int(totals[1])} != {int(ref_totals[1])}")


CASES = [  # (loss, distance, rank_weight, clip_norm, U)
    ("triplet", "euclidean", True, 1.0, 7),
    ("triplet", "euclidean", False, 0.0, 7),
    ("contrastive", "euclidean", False, 1.0, 5),
    ("contrastive", "cosine", False, 0.0, 5),
    ("softmax", "euclidean", False, 0.0, 6),
    ("softmax", "cosine", False, 1.0, 6),
    ("softmax", "euclidean", False, 1.0, 1),
]


def config(loss, distance, rank_weight, clip_norm, U, lr=0.05):
    margin = {"triplet": 0.5, "contrastive": 0.8 if distance == "cosine" else 1.2}.get(loss, 1.0)
    return TrainConfig(loss=loss, distance=distance, rank_weight=rank_weight,
                       clip_norm=clip_norm, n_negatives=U, margin=margin, lr=lr,
                       negative_weight=1.7, temperature=0.3, seed=3).validate()


def one_step(cfg, dim, B, seed, offset, candidates=None, ws=None):
    dense, m, indptr, indices = fixture(seed)
    n_users, n_items = dense.shape
    ue, ie = tables(n_users, n_items, dim, seed + 1)
    users, pos = batch(dense, B, seed + 2)
    ref = TorchLoop(cfg, m, indptr, indices, ue, ie)
    # start from non-zero accumulators, as in mid-training
    g = torch.Generator().manual_seed(seed + 3)
    ua, ia = (torch.rand(t.shape, generator=g) * 0.01 for t in (ue, ie))
    for acc, t in zip((ua, ia), (ref.model.users.weight, ref.model.items.weight), strict=True):
        ref.opt.state[t]["sum"].copy_(acc)
    want = ref.step(users, pos, offset, candidates)
    fused = [ue.clone(), ie.clone(), ua.clone(), ia.clone()]
    got = tt.train_step(indptr, indices, users, pos, *fused, offset=offset,
                        candidates=candidates, workspace=ws, **rule_kwargs(cfg))
    return fused, ref.state(), got, want, (ue, ie)


def check_rules_match_losses():
    """The rules restated in Triton against recsys_metric.losses (the one definition)."""
    g = torch.Generator().manual_seed(0)
    P, N = 8, 4
    d_pos = torch.rand(P, generator=g) * 2
    d_neg = torch.rand(P, N, generator=g) * 2
    w = torch.rand(P, N, generator=g) * 3
    w[0, 1] = 0.0
    w[1] = 0.0  # a pair without any negative
    d_pos[2] = 400.0  # far from the origin: softmax must stay finite
    viol = torch.randint(0, N + 1, (P,), generator=g).int()
    params = dict(margin=0.7, negative_weight=2.5, temperature=0.3)
    for loss in ("triplet", "contrastive", "softmax"):
        out = [torch.empty(P), torch.empty(P), torch.empty(P, N), torch.empty(P)]
        _rules_probe[(1,)](d_pos, d_neg, w, viol, *out, 0.7, 2.5, 0.3, N, 1000,
                           LOSS=tt.LOSS_IDS[loss], P=P, N=N)
        if loss == "triplet":
            want = losses.loss_terms(loss, d_pos, d_neg[:, :1], w[:, :1], **params)
            got = (out[0], out[1], out[2][:, :1])
        else:
            want = losses.loss_terms(loss, d_pos, d_neg, w, **params)
            got = out[:3]
        for name, a, b in zip(("value", "c_pos", "c_neg"), got, want, strict=True):
            assert torch.isfinite(a).all(), f"{loss} {name} not finite"
            close(f"{loss} {name}", a, b, 1e-5)
    close("rank_weight", out[3], losses.rank_weight(viol, N, 1000), 1e-6)


@triton.jit
def _rules_probe(dpos_ptr, dneg_ptr, w_ptr, viol_ptr, v_ptr, cp_ptr, cn_ptr, rw_ptr, margin, nw,
                 temperature, U, n_items, LOSS: tl.constexpr, P: tl.constexpr, N: tl.constexpr):
    r = tl.arange(0, P)
    c = tl.arange(0, N)
    d_pos = tl.load(dpos_ptr + r)
    d_neg = tl.load(dneg_ptr + r[:, None] * N + c[None, :])
    w = tl.load(w_ptr + r[:, None] * N + c[None, :])
    if LOSS == 0:
        first = c[None, :] == 0
        v, cp, cn1 = tt._triplet(d_pos, tl.sum(tl.where(first, d_neg, 0.0), axis=1),
                                 tl.sum(tl.where(first, w, 0.0), axis=1), margin)
        cn = tl.where(first, cn1[:, None], 0.0)
    elif LOSS == 1:
        v, cp, cn = tt._contrastive(d_pos, d_neg, w, margin, nw)
    else:
        v, cp, cn = tt._softmax(d_pos, d_neg, w, temperature)
    tl.store(v_ptr + r, v)
    tl.store(cp_ptr + r, cp)
    tl.store(cn_ptr + r[:, None] * N + c[None, :], cn)
    tl.store(rw_ptr + r, tt._rank_weight(tl.load(viol_ptr + r), U, n_items))


def check_one_step_every_loss():
    ws = tt.Workspace()
    for k, (loss, distance, rw, clip, U) in enumerate(CASES):
        cfg = config(loss, distance, rw, clip, U)
        fused, ref, got, want, _ = one_step(cfg, 20, 40, seed=k, offset=5 + k, ws=ws)
        tag = f"{loss}/{distance} rw={rw} clip={clip} U={U}"
        compare(tag, fused, ref, got, want)
        # the workspace is clean for the next step
        for name in ("user_grad", "item_grad", "user_flag", "item_flag"):
            assert not getattr(ws, name).any(), f"{tag}: workspace {name} not zeroed"


def check_step_changes_and_clips():
    """Sanity of the comparison: the step moves rows, leaves untouched ones alone, and the
    clip binds (rows outside the ball after the update end on it)."""
    cfg = config("softmax", "euclidean", False, 1.0, 4, lr=0.5)
    fused, ref, got, want, (ue, ie) = one_step(cfg, 12, 30, seed=7, offset=1)
    compare("softmax lr 0.5", fused, ref, got, want)
    dense = fixture(7)[0]
    users, pos = batch(dense, 30, 9)
    touched = torch.zeros(len(ue), dtype=torch.bool)
    touched[users] = True
    assert torch.equal(fused[0][~touched], ue[~touched]), "untouched user rows changed"
    assert (fused[0][touched] != ue[touched]).any(1).float().mean() > 0.5, "rows did not move"
    norms = fused[0][touched].norm(dim=1)
    assert norms.max() <= 1.0 + 1e-6, "clip"
    assert (norms > 0.999).any(), "the clip should bind for some rows at lr 0.5"


def check_multi_dim_chunks_and_tilings():
    """Several dim chunks with a ragged tail, small and large programs, given candidates."""
    saved = tt.SLOTS_PER_PROGRAM, tt.MAX_BLOCK_D, tt.APPLY_BLOCK_D, tt.APPLY_ROWS
    try:
        for slots, bd, abd, rows in ((16, 8, 8, 8),):
            tt.SLOTS_PER_PROGRAM, tt.MAX_BLOCK_D, tt.APPLY_BLOCK_D, tt.APPLY_ROWS = (
                slots, bd, abd, rows)
            for k, (loss, distance, rw, clip, U) in enumerate(CASES[:1] + CASES[3:6]):
                cfg = config(loss, distance, rw, clip, U)
                fused, ref, got, want, _ = one_step(cfg, 21, 24, seed=20 + k, offset=k)
                compare(f"{loss}/{distance} slots={slots} bd={bd}", fused, ref, got, want)
        # explicit candidates with -1s, a row of -1 only (the pair is dropped / weight 0)
        tt.SLOTS_PER_PROGRAM, tt.MAX_BLOCK_D = 64, 32
        g = torch.Generator().manual_seed(5)
        for loss in ("triplet", "contrastive"):
            cand = torch.randint(0, 30, (40, 5), generator=g)
            cand[torch.rand(40, 5, generator=g) < 0.3] = -1
            cand[10] = -1
            cfg = config(loss, "euclidean", True, 1.0, 5)
            fused, ref, got, want, _ = one_step(cfg, 16, 40, seed=30, offset=0, candidates=cand)
            compare(f"{loss} given candidates", fused, ref, got, want)
    finally:
        tt.SLOTS_PER_PROGRAM, tt.MAX_BLOCK_D, tt.APPLY_BLOCK_D, tt.APPLY_ROWS = saved


def check_epochs_match_torch_loop():
    """Several steps of FusedEpoch vs the torch loop's epochs (same permutations, offsets)."""
    for loss, distance, rw, clip, U in (CASES[0], CASES[5]):  # triplet, softmax cosine
        cfg = config(loss, distance, rw, clip, U, lr=0.1)
        dense, m, indptr, indices = fixture(40)
        ue, ie = tables(*dense.shape, 16, 41)
        pair_users = torch.repeat_interleave(torch.arange(dense.shape[0]), indptr.diff())
        pair_items = indices.long()
        ref = TorchLoop(cfg, m, indptr, indices, ue, ie)
        fused = [ue.clone(), ie.clone(), torch.zeros_like(ue), torch.zeros_like(ie)]
        bs = 23
        epoch_fn = tt.FusedEpoch(indptr, indices, pair_users.int(), pair_items, *fused,
                                 batch_size=bs, **rule_kwargs(cfg))
        n_pairs = len(pair_users)
        n_steps = -(-n_pairs // bs)
        for epoch in range(2):
            perm = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(epoch))
            total, active = 0.0, 0
            for step in range(n_steps):
                idx = perm[step * bs:(step + 1) * bs]
                v, a = ref.step(pair_users[idx], pair_items[idx], epoch * n_steps + step)
                total, active = total + float(v), active + int(a)
            got = epoch_fn(epoch, perm)
            tag = f"{loss}/{distance} epoch {epoch}"
            compare(tag, fused, ref.state(), atol=1e-4)
            assert abs(got[0] - total / n_pairs) <= 1e-4 * max(1.0, abs(got[0])), (
                f"{tag} loss {got[0]} != {total / n_pairs}")
            assert got[1] == active, f"{tag} active {got[1]} != {active}"


def check_trainer_runs_the_fused_step():
    """Trainer, backend "triton": the fused loop (its tables close to the autograd loop's, same
    pairs, order and draws); what it cannot fuse (row-wise Adagrad) stays on the torch loop."""
    from recsys_metric.train import Trainer

    class Autograd(Trainer):
        def _fused_triton_epoch(self, model, train, backend):
            return self._torch_epoch(model, train, backend)

    dense, *_ = fixture(7, n_users=30, n_items=25)
    m = sp.csr_matrix(dense.numpy().astype(np.float32))
    cfg = dict(backend="triton", device="cpu", dim=8, epochs=2, batch_size=64, n_negatives=5,
               average_last=0, seed=3)
    fused = Trainer(TrainConfig(**cfg), show_progress=False).fit(m)
    ref = Autograd(TrainConfig(**cfg), show_progress=False).fit(m)
    assert fused.loop == "fused-triton", fused.loop
    for a, b in ((fused.user_embeddings, ref.user_embeddings),
                 (fused.item_embeddings, ref.item_embeddings)):
        assert np.allclose(a, b, atol=1e-4), np.abs(a - b).max()
    row = Trainer(TrainConfig(**cfg, optimizer="adagrad_row"), show_progress=False).fit(m)
    assert row.loop == "torch+triton", row.loop


def check_epoch_sync_calls_and_run_epoch():
    """FusedEpoch calls ``sync`` ``syncs`` times an epoch (the item merge of the data-parallel
    Trainer); run_epoch is one FusedEpoch call."""
    cfg = config("triplet", "euclidean", True, 1.0, 4)
    dense, m, indptr, indices = fixture(50)
    ue, ie = tables(*dense.shape, 8, 51)
    pair_users = torch.repeat_interleave(torch.arange(dense.shape[0]), indptr.diff())
    perm = torch.randperm(len(pair_users), generator=torch.Generator().manual_seed(0))
    a = [ue.clone(), ie.clone(), torch.zeros_like(ue), torch.zeros_like(ie)]
    b = [t.clone() for t in a]
    calls = []
    fused = tt.FusedEpoch(indptr, indices, pair_users, indices.long(), *a, batch_size=40,
                          **rule_kwargs(cfg))
    got = fused(3, perm, sync=lambda: calls.append(1), syncs=2)
    assert len(calls) == 2 and fused.n_steps >= 2, (len(calls), fused.n_steps)
    want = tt.run_epoch(indptr, indices, pair_users, indices.long(), perm, *b, batch_size=40,
                        epoch=3, **rule_kwargs(cfg))
    assert got == want, (got, want)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y), "run_epoch != FusedEpoch"


def check_argument_errors():
    dense, m, indptr, indices = fixture(0)
    ue, ie = tables(*dense.shape, 8, 0)
    users, pos = batch(dense, 10, 0)
    kw = dict(n_negatives=3, lr=0.1)
    bad = [
        dict(loss="triplet", distance="cosine"),
        dict(loss="hinge"),
    ]
    for extra in bad:
        try:
            tt.train_step(indptr, indices, users, pos, ue, ie, ue * 0, ie * 0, **kw, **extra)
        except ValueError:
            continue
        raise AssertionError(f"{extra} must raise ValueError")
    try:  # row-wise accumulators are not supported
        tt.train_step(indptr, indices, users, pos, ue, ie, ue[:, :1] * 0, ie[:, :1] * 0,
                      loss="triplet", **kw)
        raise AssertionError("[n, 1] accumulators must raise ValueError")
    except ValueError:
        pass
    empty = torch.empty(0, dtype=torch.long)
    loss_sum, active = tt.train_step(indptr, indices, empty, empty, ue, ie, ue * 0, ie * 0,
                                     loss="softmax", **kw)
    assert float(loss_sum) == 0 and int(active) == 0


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}


def main(names: list[str]) -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("FAIL setup: run with TRITON_INTERPRET=1 (set before triton is imported)")
        return 1
    failed = []
    for name in names or list(CHECKS):
        t0 = time.perf_counter()
        try:
            CHECKS[name]()
            print(f"PASS {name} ({time.perf_counter() - t0:.1f}s)", flush=True)
        except Exception as e:  # report every check, then fail
            failed.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
    print(f"{len(failed)} failed: {' '.join(failed)}" if failed else "all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
