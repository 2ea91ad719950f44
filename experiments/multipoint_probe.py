"""Probe for a next step: several points per user (score = -min over the user's points).

    .venv/bin/python experiments/multipoint_probe.py [--seeds 0 1 2] [--arms 1:0 3:0 5:0 3:100]

A standalone torch CML (not the package's loops), so that the idea is measured before the
kernels, index and model format are changed for it. Arm ``C:H``: users with at least H train
interactions get C points (H = 0: every user), the others one; d(u, i) = min over the user's
points (DPCML, NeurIPS 2022, without its diversity term). Otherwise as the defaults where cheap:
dim 32, margin 1.5, WARP weight, Adagrad lr 0.1, batches of 4096, unit-ball clipping, 25 epochs,
the latest 10% of each history visited three times; but U = 20 uniform candidates (torch
memory) and no epoch averaging, so the C = 1 arm is the reference, not the package's numbers.
Validation splits as in tune_defaults.py (the test part is never read). Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tune_defaults import validation_interactions  # noqa: E402

from recsys_metric.evaluation import evaluate_ranking  # noqa: E402
from recsys_metric.losses import TripletLoss  # noqa: E402
from recsys_metric.sampling import reference  # noqa: E402


def fit(inter, points: int, heavy: int, seed: int, dim=32, U=20, epochs=25, B=4096,
        margin=1.5, lr=0.1):
    m = inter.matrix
    n_users, n_items = m.shape
    C = points
    unused = torch.zeros(n_users, C)  # +inf on the points a light user does not have
    if heavy:
        unused[torch.as_tensor(np.diff(m.indptr)) < heavy, 1:] = float("inf")
    g = torch.Generator().manual_seed(seed)
    users = torch.nn.Embedding(n_users * C, dim, sparse=True)
    items = torch.nn.Embedding(n_items, dim, sparse=True)
    with torch.no_grad():
        users.weight.normal_(0, 0.1 / dim**0.5, generator=g)
        items.weight.normal_(0, 0.1 / dim**0.5, generator=g)
    opt = torch.optim.Adagrad(list(users.parameters()) + list(items.parameters()), lr=lr)
    again = np.repeat(np.flatnonzero(inter.recency() >= 0.9), 2)
    pu = np.repeat(np.arange(n_users), np.diff(m.indptr))
    pi = m.indices.astype(np.int64)
    pu, pi = torch.as_tensor(np.r_[pu, pu[again]]), torch.as_tensor(np.r_[pi, pi[again]])
    indptr = torch.as_tensor(m.indptr.astype(np.int64))
    indices = torch.as_tensor(m.indices.astype(np.int32))
    loss_fn = TripletLoss(margin, n_items)

    def dist(uv, iv, u):  # [b, C, dim] vs [b, (U,) dim] -> min over the user's points
        if iv.dim() == 2:
            return (((uv - iv.unsqueeze(1)) ** 2).sum(-1) + unused[u]).min(1).values
        return (((uv.unsqueeze(2) - iv.unsqueeze(1)) ** 2).sum(-1)
                + unused[u].unsqueeze(2)).min(1).values

    for ep in range(epochs):
        perm = torch.randperm(len(pu), generator=g)
        for s in range(0, len(pu), B):
            idx = perm[s:s + B]
            u, p = pu[idx], pi[idx]
            cand = reference.sample_uniform(indptr, indices, u, n_items, U, seed, ep * 100000 + s)
            ok = (cand >= 0).all(1)
            u, p, cand = u[ok], p[ok], cand[ok]
            rows = (u.unsqueeze(1) * C + torch.arange(C)).reshape(-1)
            uv = users(rows).view(len(u), C, dim)
            d_pos = dist(uv, items(p), u)
            with torch.no_grad():
                d_all = dist(uv, items.weight[cand], u)
                viol = (margin + d_pos.unsqueeze(1) - d_all > 0).sum(1)
                hard = cand.gather(1, d_all.argmin(1, keepdim=True)).squeeze(1)
            loss = loss_fn(d_pos, dist(uv, items(hard), u), viol, U)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for emb, r in ((users, rows), (items, torch.cat([p, hard]))):
                    w = emb.weight[r]
                    emb.weight[r] = w / w.norm(dim=1, keepdim=True).clamp(min=1.0)
    uw, iw = users.weight.detach().view(n_users, C, dim), items.weight.detach()

    class Scores:
        def score_users(self, idx):
            idx = torch.as_tensor(idx)
            d = (torch.cdist(uw[idx].reshape(-1, dim), iw) ** 2).view(len(idx), C, -1)
            return (-(d + unused[idx].unsqueeze(2)).min(1).values).numpy()

    return Scores()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=["1:0", "3:0", "5:0", "3:100"])
    a = ap.parse_args()
    torch.set_num_threads(2)
    splits = validation_interactions(["books", "ml-100k", "ml-latest-small"])
    arms = [tuple(int(x) for x in arm.split(":")) for arm in a.arms]
    print("| points | for users with >= | " + " | ".join(splits) + " |")
    print("|---:|---:|" + "---:|" * len(splits))
    rows = []
    for C, heavy in arms:
        row: dict = {"points": C, "heavy": heavy}
        for name, (fit_part, valid) in splits.items():
            ms = [evaluate_ranking(fit(fit_part, C, heavy, s), fit_part.matrix, valid.matrix,
                                   k=10) for s in a.seeds]
            row[name] = {k: float(np.mean([x[k] for x in ms])) for k in ("NDCG@10", "HR@10")}
        rows.append(row)
        print(f"| {C} | {heavy or 'all'} | " + " | ".join(
            f"{row[n]['NDCG@10']:.4f} / {row[n]['HR@10']:.4f}" for n in splits) + " |",
            flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
