"""Per-epoch checkpoints of a fit, written atomically, so a killed run resumes where it was.

A checkpoint holds everything the next epoch depends on: the tables (context rows included),
the optimiser's accumulators and random generator, the tables kept for the tail mean, the early
stopping state and the history. Epoch randomness is a function of (seed, epoch), so a fit
resumed from epoch ``e`` ends with the tables an uninterrupted one would: bit for bit in the
fused CPU loop, which is deterministic.

The file is written to a temporary name and renamed over the previous one (``os.replace``), so
a kill at any instant leaves the last whole checkpoint. It is read with
``torch.load(weights_only=True)``: tensors and plain containers only, no pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch


def fingerprint(config: dict, rows: sp.csr_matrix, extra: object = None) -> str:
    """What a checkpoint must match to be resumed: the config, the rows trained on (the
    pairs' pattern) and ``extra`` (e.g. whether the fit was warm-started)."""
    h = hashlib.sha256(json.dumps([config, list(rows.shape), repr(extra)],
                                  sort_keys=True).encode())
    for a in (rows.indptr, rows.indices):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return h.hexdigest()


def state_of(objs: dict) -> dict:
    """Saveable state of a loop's mutable pieces: arrays and tensors (copied), optimisers
    (``state_dict``), torch generators (``get_state``)."""
    out = {}
    for name, obj in objs.items():
        if isinstance(obj, torch.optim.Optimizer):
            out[name] = obj.state_dict()
        elif isinstance(obj, torch.Generator):
            out[name] = obj.get_state()
        else:
            out[name] = torch.as_tensor(obj).detach().cpu().clone()
    return out


def restore(objs: dict, saved: dict) -> None:
    """Put :func:`state_of`'s answer back into the same pieces, in place."""
    for name, obj in objs.items():
        if isinstance(obj, torch.optim.Optimizer):
            obj.load_state_dict(saved[name])
        elif isinstance(obj, torch.Generator):
            obj.set_state(saved[name])
        elif isinstance(obj, np.ndarray):
            obj[...] = saved[name].numpy()
        else:
            with torch.no_grad():
                obj.copy_(saved[name])


class Checkpoint:
    """The checkpoint file ``path`` of one fit, identified by ``key`` (:func:`fingerprint`)."""

    def __init__(self, path: str | Path, key: str) -> None:
        self.path, self.key = Path(path), key

    def load(self) -> dict | None:
        """The saved state, or None when there is no checkpoint yet; ``ValueError`` when the
        file belongs to another run (a different config or data) or cannot be read."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged file: say which, never resume from garbage
            raise ValueError(f"{self.path}: cannot read the checkpoint ({type(e).__name__}: "
                             f"{e})") from None
        if not isinstance(state, dict) or state.get("key") != self.key:
            raise ValueError(f"{self.path}: this checkpoint was written by a fit with another "
                             "config or other data; give another checkpoint directory")
        return state

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save({**state, "key": self.key}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
