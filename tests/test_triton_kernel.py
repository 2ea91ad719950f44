"""Tests of the fused Triton sampler (run without a GPU) and of the torch reference it must match.

- The reference is checked in-process (plain torch).
- The kernels run under Triton's CPU interpreter in one subprocess (tests/triton_interp_checks.py):
  TRITON_INTERPRET must be set before triton is imported, so it cannot be set in this process.
- The kernels are compiled ahead of time for sm_90 (Hopper) in another subprocess, without
  TRITON_INTERPRET: that catches code the interpreter accepts but the real compiler rejects.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from scipy.stats import chisquare

from recsys_metric.sampling import reference as ref

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _csr(dense: torch.Tensor):
    indptr = torch.zeros(dense.shape[0] + 1, dtype=torch.int64)
    indptr[1:] = dense.sum(1).cumsum(0)
    return indptr, dense.nonzero()[:, 1].contiguous()


def _dense(seed=0, n_users=12, n_items=20):
    dense = torch.rand(n_users, n_items, generator=torch.Generator().manual_seed(seed)) < 0.4
    dense[0] = False
    dense[1] = True
    dense[1, n_items - 1] = False
    dense[2] = True
    return dense


# ----------------------------------------------------------------------------- reference


def test_reference_maps_every_draw_to_the_jth_non_positive():
    dense = _dense(1)
    indptr, indices = _csr(dense)
    for u in range(dense.shape[0]):
        free = (~dense[u]).nonzero()[:, 0]
        n_free = len(free)
        if n_free == 0:
            continue
        draws = ((torch.arange(n_free) + 0.5) / n_free)[None, :]
        got = ref.map_to_negatives(indptr, indices, torch.tensor([u]), dense.shape[1], draws)
        assert torch.equal(got[0], free), f"user {u}"


def test_reference_sample_uniform_no_positives_and_minus_one():
    dense = _dense(2)
    indptr, indices = _csr(dense)
    users = torch.arange(dense.shape[0]).repeat(5)
    s = ref.sample_uniform(indptr, indices, users, dense.shape[1], 30, seed=1, offset=2)
    full = dense[users].all(1)
    assert (s[full] == -1).all()
    assert not dense[users[~full, None].expand(-1, 30), s[~full]].any()
    assert torch.equal(s, ref.sample_uniform(indptr, indices, users, dense.shape[1], 30, 1, 2))
    assert not torch.equal(s, ref.sample_uniform(indptr, indices, users, dense.shape[1], 30, 1, 3))


def test_reference_sample_uniform_is_uniform():
    dense = torch.zeros(1, 40, dtype=torch.bool)
    dense[0, ::4] = True
    indptr, indices = _csr(dense)
    s = ref.sample_uniform(indptr, indices, torch.zeros(100, dtype=torch.long), 40, 200, seed=3)
    counts = torch.bincount(s.flatten(), minlength=40)[~dense[0]]
    assert counts.sum() == 20_000 and chisquare(counts.numpy()).pvalue > 1e-3


def test_reference_score_candidates_brute_force(monkeypatch):
    monkeypatch.setattr(ref, "CHUNK_FLOATS", 40)  # several chunks
    g = torch.Generator().manual_seed(4)
    ue = torch.randint(-2, 3, (6, 4), generator=g).float()
    ie = torch.randint(-2, 3, (15, 4), generator=g).float()
    users, pos = torch.randint(0, 6, (25,), generator=g), torch.randint(0, 15, (25,), generator=g)
    cand = torch.randint(0, 15, (25, 5), generator=g)
    cand[torch.rand(25, 5, generator=g) < 0.3] = -1
    cand[3] = -1
    neg, viol = ref.score_candidates(ue, ie, users, pos, cand, 1.0)
    for b in range(25):
        u = ue[users[b]]
        d_pos = float((u - ie[pos[b]]).pow(2).sum())
        ds = [(float((u - ie[c]).pow(2).sum()), k)
              for k, c in enumerate(cand[b].tolist()) if c >= 0]
        assert viol[b] == sum(1.0 + d_pos - d > 0 for d, _ in ds)
        assert neg[b] == (cand[b, min(ds)[1]] if ds else -1)  # min: first index on ties


def test_reference_rejects_tiny_catalogue():
    indptr, indices = _csr(torch.zeros(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError):
        ref.sample_uniform(indptr, indices, torch.tensor([0]), 1, 3)


# ----------------------------------------------------------------------------- triton


def _run(args, env, timeout=300):
    proc = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}; failed checks:\n{out[-6000:]}"
    return out


def test_triton_kernel_under_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OPENBLAS_NUM_THREADS": "1"}
    out = _run([str(HERE / "triton_interp_checks.py")], env)
    assert "all checks passed" in out, out


AOT_SCRIPT = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from recsys_metric.sampling import triton_kernel as tk

    # Runtime-like specialisation: torch pointers and strides of 64 are 16-divisible.
    TYPES = dict(indptr_ptr="*i64", indices_ptr="*i32", users_ptr="*i64", pos_ptr="*i64",
                 user_emb_ptr="*fp32", item_emb_ptr="*fp32", cand_ptr="*i64", out_ptr="*i64",
                 neg_ptr="*i64", viol_ptr="*i32", margin="fp32", seed="i64", offset="i32")
    DIV16 = {"stride_ue", "stride_ie", "dim"}
    def compile_for_sm90(fn, constexprs):
        sig = {a: "constexpr" if a in constexprs else TYPES.get(a, "i32") for a in fn.arg_names}
        attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
                 if sig[a].startswith("*") or a in DIV16}
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        ptx = k.asm["ptx"]
        assert ".target sm_90" in ptx and f".entry {fn.__name__}" in ptx, ptx[:500]
        print("compiled", fn.__name__, constexprs, len(ptx), "chars of PTX")

    for given in (False, True):
        for bp, bu in ((4, 16), (1, 64)):
            compile_for_sm90(tk._hardest_kernel, dict(GIVEN=given, N_SEARCH=12, BLOCK_P=bp,
                                                      BLOCK_U=bu, BLOCK_D=32))
    compile_for_sm90(tk._sample_kernel, dict(N_SEARCH=20, BLOCK_P=1, BLOCK_U=128))

    # Without the interpreter, CPU tensors are refused with a clear error (not a crash).
    import torch
    try:
        tk.sample_uniform(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([0]), 5, 3)
        raise SystemExit("CPU tensors without TRITON_INTERPRET must raise RuntimeError")
    except RuntimeError:
        pass
    print("aot ok")
    """
)


def test_triton_kernel_compiles_for_sm90(tmp_path):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = _run(["-c", AOT_SCRIPT], env)
    assert "aot ok" in out, out


NO_TRITON_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["triton"] = None  # import triton -> ImportError, as on a CPU-only install
    import torch
    from recsys_metric.sampling import triton_kernel as tk
    assert not tk.HAS_TRITON
    indptr, indices = torch.tensor([0, 0]), torch.tensor([], dtype=torch.long)
    users = torch.tensor([0])
    try:
        tk.sample_uniform(indptr, indices, users, 1, 3)
        raise SystemExit("n_items == 1 must raise ValueError")
    except ValueError:
        pass
    try:
        tk.sample_uniform(indptr, indices, users, 5, 3)
        raise SystemExit("calling without triton must raise ImportError")
    except ImportError:
        pass
    print("no-triton ok")
    """
)


def test_triton_module_imports_without_triton():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    assert "no-triton ok" in _run(["-c", NO_TRITON_SCRIPT], env)
