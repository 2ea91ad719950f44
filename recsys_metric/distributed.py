"""Data-parallel training on torch.distributed: users partitioned by rank, item rows merged.

Launched by torchrun (``env://``: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, so
the processes may be on several machines), gloo on CPU and NCCL on CUDA::

    torchrun --nproc_per_node=2 --no-python recsys-metric train ratings.csv --distributed --out m

- The rows of the users' table (the users, then the items' context rows) are cut into
  contiguous ranges of about equal numbers of pairs, one per rank: each rank trains the pairs of
  its rows, so a user's row is written by one rank only (:meth:`Group.row_range`).
- Every rank holds the whole item table and moves it with its own pairs. ``syncs`` times per
  epoch (the last at its end) the ranks merge it (:class:`ItemMerge`): each row becomes its value
  at the last merge plus the sum of every rank's change since (the item Adagrad accumulators
  alike), then the rows that moved are clipped to the ball again. Two ways to move the bytes,
  measured side by side (``experiments/bench_distributed.py``): ``allreduce``, one all-reduce
  of the changes; ``owner``, the rows sharded by rank, each shard's changes reduced to its owner,
  which merges and clips them and broadcasts the rows back. Both move ``2 (N - 1) / N`` times
  the item table and its accumulators per merge and rank.
- At each epoch's end the ranks share their users' rows (an all-reduce of each rank's own rows,
  zeros elsewhere): every rank then holds the whole model. Rank 0 validates and writes the
  checkpoints and the model; its decision to stop is broadcast.
- On one rank nothing changes: the merge adds the other ranks' changes, zero, and the tables are
  the single-process fit's, bit for bit.
- A rank that dies fails the others' next collective (gloo: the connection closes; else the
  timeout), which raises :class:`DistributedError` naming it; torchrun then ends the job with a
  non-zero code. The same command with ``--checkpoint-dir`` resumes after the last epoch written.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

SYNC_MODES = ("allreduce", "owner")
ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(ConnectionError):
    """A collective failed: another rank stopped or cannot be reached."""


@dataclass
class Group:
    """This process's place in the job and how it merges the item rows."""

    rank: int = 0
    world: int = 1
    syncs: int = 8  # item merges per epoch
    mode: str = "allreduce"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    sent_bytes: float = 0.0  # what this rank put on the wire (the algorithms' volume)
    sync_seconds: float = 0.0  # time in the merges and the users' exchange

    def __post_init__(self) -> None:
        if self.mode not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, got {self.mode!r}")
        if self.syncs < 1:
            raise ValueError(f"syncs must be >= 1, got {self.syncs}")

    @classmethod
    def from_env(cls, syncs: int = 8, mode: str = "allreduce", device: str = "auto",
                 timeout_s: float = 1800.0) -> Group:
        """Join the job torchrun started (its environment variables), gloo on CPU and NCCL on
        CUDA; the CPU loop's threads are the machine's cores shared among its local ranks."""
        missing = [k for k in ENV if k not in os.environ]
        if missing:
            raise ValueError(f"--distributed needs torchrun's environment ({', '.join(missing)} "
                             "unset): run it as torchrun --nproc_per_node=N --no-python "
                             "recsys-metric train ... --distributed")
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", init_method="env://",
                                    timeout=timedelta(seconds=timeout_s))
        _share_cores(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return cls(dist.get_rank(), dist.get_world_size(), syncs, mode,
                   torch.device("cuda", local) if cuda else torch.device("cpu"))

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    # -- the partition ---------------------------------------------------------------------------

    def row_range(self, pairs_per_row: np.ndarray) -> tuple[int, int]:
        """This rank's rows ``[lo, hi)``: contiguous, about ``1 / world`` of the pairs each."""
        cum = np.cumsum(pairs_per_row)
        cuts = np.searchsorted(cum, cum[-1] * np.arange(self.world + 1) / self.world, "right")
        cuts[0], cuts[-1] = 0, len(pairs_per_row)
        return int(cuts[self.rank]), int(cuts[self.rank + 1])

    # -- the collectives -------------------------------------------------------------------------

    def _run(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, dist.DistBackendError) as e:
            raise DistributedError(
                f"rank {self.rank} of {self.world}: {what} failed, so another rank has stopped "
                f"or cannot be reached ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                ". Run the same command with --checkpoint-dir to resume after the last epoch "
                "written") from e

    def share_rows(self, tables: list, lo: int, hi: int) -> None:
        """Every rank's rows ``[lo, hi)`` of ``tables`` (tensors or numpy views, same number of
        rows) to all ranks, in place: a sum of each rank's own rows and zeros elsewhere."""
        if self.world == 1:
            return
        t0 = time.perf_counter()
        views = [_tensor(t, self.device) for t in tables]
        buf = torch.zeros(len(views[0]), sum(v.shape[1] for v in views), device=self.device)
        col = 0
        for v in views:
            buf[lo:hi, col:col + v.shape[1]] = v[lo:hi]
            col += v.shape[1]
        self._run("sharing the users' rows", dist.all_reduce, buf)
        col = 0
        for t, v in zip(tables, views, strict=True):
            _write(t, v, buf[:, col:col + v.shape[1]])
            col += v.shape[1]
        self.sent_bytes += 2 * (self.world - 1) / self.world * buf.numel() * 4
        self.sync_seconds += time.perf_counter() - t0

    def agree(self, value: float) -> float:
        """Rank 0's ``value`` (a stop decision, an epoch number) on every rank."""
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        self._run("agreeing on rank 0's decision", dist.broadcast, t, 0)
        return float(t.item())

    def total(self, value: float) -> float:
        """The sum of ``value`` over the ranks."""
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        self._run("summing a count", dist.all_reduce, t)
        return float(t.item())


class ItemMerge:
    """The merge of the item rows (and their Adagrad accumulators) the ranks moved since the
    last merge: called ``syncs`` times per epoch by the training loops (module docstring)."""

    def __init__(self, group: Group, items, acc, clip_norm: float) -> None:
        self.group, self.clip_norm = group, clip_norm
        self.tables = [items] + ([] if acc is None else [acc])
        self.reset()

    def reset(self) -> None:
        """Take the tables as they are as every rank's common state (after a restore)."""
        self.base = torch.cat([_tensor(t, self.group.device) for t in self.tables], 1)

    def __call__(self) -> None:
        g = self.group
        if g.world == 1:  # nothing to merge: the single-process fit, bit for bit
            return
        t0 = time.perf_counter()
        views = [_tensor(t, g.device) for t in self.tables]
        total = torch.cat(views, 1) - self.base  # this rank's changes, then everyone's
        if g.mode == "allreduce":
            g._run("merging the item rows", dist.all_reduce, total)
            cuts, owned = [0, len(total)], [0]
        else:  # each shard's sum on its owner, which merges, clips and broadcasts its rows
            cuts = np.linspace(0, len(total), g.world + 1).astype(int).tolist()
            for r in range(g.world):
                g._run("reducing the item rows to their owner", dist.reduce,
                       total[cuts[r]:cuts[r + 1]], r)
            owned = [g.rank]
        merged = self.base  # updated in place: the new common state
        d = views[0].shape[1]
        for r in owned:
            rows = slice(cuts[r], cuts[r + 1])
            merged[rows] += total[rows]  # the same sums in the same order on every rank
            if self.clip_norm > 0:
                moved = torch.nonzero((total[rows, :d] != 0).any(1)).squeeze(1) + cuts[r]
                merged[moved, :d] = merged[moved, :d].renorm(2, 0, self.clip_norm)
        if g.mode == "owner":
            for r in range(g.world):
                g._run("broadcasting the owner's item rows", dist.broadcast,
                       merged[cuts[r]:cuts[r + 1]], r)
        col = 0
        for t, v in zip(self.tables, views, strict=True):
            v.copy_(merged[:, col:col + v.shape[1]])
            _write(t, v, v)
            col += v.shape[1]
        g.sent_bytes += 2 * (g.world - 1) / g.world * total.numel() * 4
        g.sync_seconds += time.perf_counter() - t0


def _tensor(t, device: torch.device) -> torch.Tensor:
    """A torch view of a table (a numpy array shares its memory), on the collectives' device."""
    v = torch.from_numpy(t) if isinstance(t, np.ndarray) else t.detach()
    return v if v.device == device else v.to(device)


def _write(t, view: torch.Tensor, values: torch.Tensor) -> None:
    """Write ``values`` into table ``t`` of which ``view`` is the collectives' copy."""
    if values.data_ptr() != view.data_ptr():
        view.copy_(values)
    if isinstance(t, np.ndarray):
        if view.device.type != "cpu":
            t[...] = view.cpu().numpy()
    elif t.data_ptr() != view.data_ptr():
        t.detach().copy_(view)


def _share_cores(local_ranks: int) -> None:
    """The CPU loop's threads: this machine's cores divided among its ranks. Numba launches its
    pool on first use; a pool larger than the threads used keeps idle threads spinning, which
    took a rank's core from the other (epochs 4x slower with 2 ranks on 2 cores): so fewer are
    launched when they are not yet."""
    try:
        import numba
        from numba.np.ufunc import parallel
    except ImportError:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = max(1, (cores or 1) // max(local_ranks, 1))
    if not getattr(parallel, "_is_initialized", True):
        numba.config.NUMBA_NUM_THREADS = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
