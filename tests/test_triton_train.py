"""Tests of the fused Triton training step (recsys_metric.sampling.triton_train), without a GPU.

- Under Triton's CPU interpreter, in a subprocess (tests/triton_train_checks.py; TRITON_INTERPRET
  must be set before triton is imported): the step against the torch loop's step on the same
  negatives, every loss and distance, and several epochs against the torch loop.
- Compiled ahead of time for sm_90 (Hopper) in another subprocess without TRITON_INTERPRET, every
  constexpr variant: catches code the interpreter accepts and the real compiler rejects, and
  prints ptxas's registers and spills.
- Imported without triton.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _run(args, env, timeout=300):
    proc = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}; failed checks:\n{out[-6000:]}"
    return out


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OPENBLAS_NUM_THREADS"] = "1"
    return {**env, **extra}


def test_train_step_under_interpreter():
    pytest.importorskip("triton")
    out = _run([str(HERE / "triton_train_checks.py")], _env(TRITON_INTERPRET="1"))
    assert "all checks passed" in out, out


AOT_SCRIPT = textwrap.dedent(
    """
    import os, re, subprocess, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from recsys_metric.sampling import triton_train as tt

    # Runtime-like specialisation: torch pointers and strides of 64 are 16-divisible.
    TYPES = dict(indptr_ptr="*i64", indices_ptr="*i32", users_ptr="*i32", pos_ptr="*i64",
                 idx_ptr="*i64", cand_ptr="*i64", neg_ptr="*i64", neg_out_ptr="*i64",
                 user_emb_ptr="*fp32", item_emb_ptr="*fp32", user_acc_ptr="*fp32",
                 item_acc_ptr="*fp32",
                 user_grad_ptr="*fp32", item_grad_ptr="*fp32", user_flag_ptr="*i32",
                 item_flag_ptr="*i32", kept_ptr="*i32", loss_ptr="*fp32", active_ptr="*i64",
                 margin="fp32", negative_weight="fp32", temperature="fp32", lr="fp32",
                 clip_norm="fp32", seed="i64")
    DIV16 = {"stride_ue", "stride_ie", "stride_ua", "stride_ia", "dim"}
    PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")

    def ptxas_usage(ptx):
        if not os.path.exists(PTXAS):
            return "ptxas not found"
        arch = re.search(r"\\.target\\s+(sm_\\w+)", ptx).group(1)
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(ptx)
        try:
            r = subprocess.run([PTXAS, "-v", f"--gpu-name={arch}", f.name, "-o", os.devnull],
                               capture_output=True, text=True)
        finally:
            os.unlink(f.name)
        regs = re.search(r"Used (\\d+) registers", r.stderr)
        spill = re.search(r"(\\d+) bytes spill stores, (\\d+) bytes spill loads", r.stderr)
        return (f"{regs.group(1) if regs else '?'} registers, "
                f"{spill.group(0) if spill else 'spills ?'}")

    def compile_for_sm90(fn, constexprs, num_warps):
        sig = {a: "constexpr" if a in constexprs else TYPES.get(a, "i32") for a in fn.arg_names}
        attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
                 if sig[a].startswith("*") or a in DIV16}
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
        ptx = k.asm["ptx"]
        assert ".target sm_90" in ptx and f".entry {fn.__name__}" in ptx, ptx[:500]
        shown = {k: v for k, v in constexprs.items() if k not in ("STRIPES", "PAD", "N_SEARCH")}
        print("compiled", fn.__name__, shown, ptxas_usage(ptx), flush=True)

    common = dict(STRIPES=tt.STRIPES, PAD=tt.PAD)
    # every loss x distance (x rank weight for the triplet), both candidate modes, the tilings
    # train_step picks for U = 10 (16 columns) and N = 100 (128 columns); FusedEpoch gathers
    # (HAS_IDX) and draws, train_step draws or is given the candidates
    variants = [("triplet", False, True, False, True, 16),
                ("triplet", False, False, True, False, 16),
                ("contrastive", False, False, False, True, 128),
                ("contrastive", True, False, True, False, 128),
                ("softmax", False, False, False, True, 128),
                ("softmax", True, False, False, True, 128)]
    for loss, cosine, rank_weight, given, has_idx, bu in variants:
        bp = max(1, tt.SLOTS_PER_PROGRAM // bu)
        bd = max(1, min(tt.MAX_BLOCK_D, 64, tt.TILE_ELEMS // (bp * bu)))
        compile_for_sm90(tt._step_kernel, dict(
            LOSS=tt.LOSS_IDS[loss], COSINE=cosine, RANK_WEIGHT=rank_weight, GIVEN=given,
            HAS_IDX=has_idx, N_SEARCH=12, BLOCK_P=bp, BLOCK_U=bu, BLOCK_D=bd, **common),
            tt.NUM_WARPS)
    for clip, has_idx in ((True, True), (False, False)):
        compile_for_sm90(tt._apply_kernel, dict(CLIP=clip, HAS_IDX=has_idx,
                                                BLOCK_R=tt.APPLY_ROWS,
                                                BLOCK_D=tt.APPLY_BLOCK_D, **common),
                         tt.APPLY_WARPS)

    # Without the interpreter, CPU tensors are refused with a clear error (not a crash).
    import torch
    z = torch.zeros(3, 4)
    try:
        tt.train_step(torch.tensor([0, 0, 0, 0]), torch.tensor([0]), torch.tensor([0]),
                      torch.tensor([0]), z, z.clone(), z.clone(), z.clone(), loss="triplet",
                      n_negatives=2, lr=0.1)
        raise SystemExit("CPU tensors without TRITON_INTERPRET must raise RuntimeError")
    except RuntimeError:
        pass
    print("aot ok")
    """
)


def test_train_kernels_compile_for_sm90(tmp_path):
    pytest.importorskip("triton")
    out = _run(["-c", AOT_SCRIPT], _env(TRITON_CACHE_DIR=str(tmp_path / "triton-cache")))
    assert "aot ok" in out, out
    print(out)


NO_TRITON_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["triton"] = None  # import triton -> ImportError, as on a CPU-only install
    import torch
    from recsys_metric.sampling import triton_train as tt
    assert not tt.HAS_TRITON
    z = torch.zeros(3, 4)
    args = (torch.tensor([0, 0, 0, 0]), torch.tensor([0]), torch.tensor([0]), torch.tensor([0]),
            z, z.clone(), z.clone(), z.clone())
    try:
        tt.train_step(*args, loss="triplet", n_negatives=2, lr=0.1)
        raise SystemExit("calling without triton must raise ImportError")
    except ImportError:
        pass
    print("no-triton ok")
    """
)


def test_train_module_imports_without_triton():
    assert "no-triton ok" in _run(["-c", NO_TRITON_SCRIPT], _env())
