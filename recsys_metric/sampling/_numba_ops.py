"""Low-level numba building blocks shared by :mod:`.cpu` (sampler) and :mod:`.cpu_train` (training).

- the numba guard: without numba this module still imports (``HAS_NUMBA`` is False, ``njit`` and
  ``intrinsic`` are no-op decorators, ``prange`` is ``range``) and ``_require_numba`` raises;
- the jit options ``_FM`` / ``_PAR``;
- the counter-based RNG: ``_mix_py`` / ``_stream_key`` (Python side) and ``_hash`` (kernel side),
  ``_mulhi`` (hash to range by multiply-high);
- LLVM intrinsics: prefetch, atomics on int64 arrays, ``sched_yield``, bit counts on uint64;
- ``overload``, for helpers decided when a kernel is typed (``cpu._filtered``).

numba's on-disk cache only tracks the file a kernel is defined in: after editing this module (or
the helpers in :mod:`.cpu`), clear ``recsys_metric/sampling/__pycache__`` while developing.
"""

from __future__ import annotations

import os

import numpy as np

# Before numba starts its OpenMP pool: idle workers sleep instead of spinning. With a parallel
# region per training block (an earlier design), at load 3-4 on 2 shared cores 2 threads ran at
# 0.4 M triplets/s with the default spin policy vs 2.0 with passive, and passive was no slower at
# load ~1.3. train_epoch now opens one region per epoch; the sampler kernels still benefit when
# called in a loop. setdefault: an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

try:
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.core import cgutils
    from numba.extending import intrinsic, overload

    HAS_NUMBA = True
except ImportError:  # pragma: no cover - exercised in a subprocess test
    HAS_NUMBA = False
    numba = types = None
    prange = range

    def njit(*args, **kwargs):  # lets the kernels below be defined (never called) without numba
        return args[0] if args and callable(args[0]) else (lambda f: f)

    intrinsic = njit

    def overload(func):  # the typing-time implementations below are then never used
        return lambda impl: impl


# fastmath minus "nnan"/"ninf": the kernels rely on inf/NaN behaving (an empty row, a diverged
# embedding); "reassoc" + "contract" are what buy the vectorised fp32 reductions and FMAs.
_FM = {"reassoc", "contract", "arcp", "nsz", "afn"}
# error_model="numpy": no ZeroDivisionError branch inside loops, which would block vectorisation.
_PAR = dict(parallel=True, fastmath=_FM, error_model="numpy", cache=True)

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _mix_py(z: int) -> int:
    z &= _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _stream_key(seed: int, offset: int) -> np.uint64:
    """64-bit key of the stream ``(seed, offset)``; the kernels add ``(counter + 1) * golden``."""
    return np.uint64(_mix_py(_mix_py(int(seed)) + (int(offset) & _MASK) * _M2))


def _require_numba() -> None:
    if not HAS_NUMBA:
        raise ImportError(
            "recsys_metric.sampling.cpu needs numba; use recsys_metric.sampling.reference instead"
        )


# ----------------------------------------------------------------------------------- kernels


@njit(inline="always")
def _hash(key, ctr):
    z = key + (ctr + np.uint64(1)) * np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def _prefetch_hint(locality: int):
    """An intrinsic ``f(arr, row, col)``: ``llvm.prefetch`` (read, data) of the cache line
    holding ``arr[row, col]`` (no bounds check), with temporal ``locality`` 0-3."""

    @intrinsic
    def prefetch(typingctx, arr, row, col):
        def codegen(context, builder, sig, args):
            aryty = sig.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            idx = [context.cast(builder, v, t, types.intp)
                   for v, t in zip(args[1:], sig.args[1:], strict=True)]
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx)
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                "llvm.prefetch.p0")
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(locality), i32(1)])
            return context.get_dummy_value()

        return types.void(arr, row, col), codegen

    return prefetch


_prefetch = _prefetch_hint(3)  # into every cache level (prefetcht0)
# non-temporal (prefetchnta): for data read once per use (a pair's record, a user's bit row),
# which would otherwise push the reused item rows out of L2
_prefetch_nta = _prefetch_hint(0)


def _vec_row(context, builder, sig, args, i, j, vt):
    """``<width x float>*`` to row ``args[j]`` of table ``args[i]``."""
    arr = context.make_array(sig.args[i])(context, builder, args[i])
    r = context.cast(builder, args[j], sig.args[j], types.intp)
    ptr = cgutils.get_item_pointer(context, builder, sig.args[i], arr, [r, ir.IntType(64)(0)])
    return builder.bitcast(ptr, vt.as_pointer())


def _vec_sum_sq(builder, fma, xs, vt):
    """sum(x ** 2) over the vectors ``xs`` in the loop vectoriser's order: chunk ``k`` into
    accumulator ``k % 4`` (explicit ``llvm.fma``, so the fastmath pass cannot reassociate),
    then ``(a0 + a1) + (a2 + a3)`` and halving."""
    acc = [ir.Constant(vt, [0.0] * vt.count)] * 4
    for k, x in enumerate(xs):
        acc[k % 4] = builder.call(fma, [x, x, acc[k % 4]])
    v = builder.fadd(builder.fadd(acc[0], acc[1]), builder.fadd(acc[2], acc[3]))
    n = vt.count
    while n > 1:  # halving: lanes i and i + n/2
        h = n // 2
        i32v = ir.VectorType(ir.IntType(32), h)
        v = builder.fadd(builder.shuffle_vector(v, v, ir.Constant(i32v, list(range(h)))),
                         builder.shuffle_vector(v, v, ir.Constant(i32v, list(range(h, n)))))
        n = h
    return builder.extract_element(v, ir.IntType(32)(0))


def _is_table(t) -> bool:
    return (isinstance(t, types.Array) and t.ndim == 2 and t.layout == "C"
            and t.dtype == types.float32)


_WIDTH = 8  # floats per vector: 256-bit (512-bit code ran slower here, cpu_training.md)


def _sqdist_rows(dim: int):
    """An intrinsic ``f(a, ia, b, ib) -> float32``: ``sum((a[ia] - b[ib]) ** 2)`` for C-contiguous
    float32 tables of ``dim`` columns (a multiple of 32), as straight-line vector code.

    The summation order is the one LLVM's vectorised loop takes (:func:`_vec_sum_sq`), so the
    results are those of the plain loop, bit for bit. What changes: no loop, no remainder
    paths, and a row that several calls read (the user's, over a pair's candidates) can stay in
    registers. Epochs +6% on one and two threads (``cpu_training.md``).
    """
    assert dim % 32 == 0

    @intrinsic
    def sqdist(typingctx, a, ia, b, ib):
        if not (_is_table(a) and _is_table(b)):
            return None

        def codegen(context, builder, sig, args):
            vt = ir.VectorType(ir.FloatType(), _WIDTH)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{_WIDTH}f32")
            ra, rb = (_vec_row(context, builder, sig, args, i, i + 1, vt) for i in (0, 2))
            i64 = ir.IntType(64)
            ds = [builder.fsub(builder.load(builder.gep(ra, [i64(k)]), align=4),
                               builder.load(builder.gep(rb, [i64(k)]), align=4))
                  for k in range(dim // _WIDTH)]
            return _vec_sum_sq(builder, fma, ds, vt)

        return types.float32(a, ia, b, ib), codegen

    return sqdist


def _triplet_rows(dim: int):
    """An intrinsic ``f(user_emb, user_acc, u, item_emb, item_acc, p, item_emb, item_acc, n,
    w2, lr, eps2, clip)``: the update of one triplet, element-wise Adagrad on the rows ``u``,
    ``p``, ``n`` by the gradients of ``w2 / 2 * (d(u,p) - d(u,n))`` from the pre-update rows,
    then each row clipped to norm ``clip`` (if ``clip > 0``), as straight-line vector code for
    ``dim`` columns (a multiple of 32); the arithmetic of ``cpu_train._step``'s loops (the
    accumulators come out bit for bit; a clipped row can differ by the last bit of its scale).

    The rows stay in registers from the gradients to the clipping: one load and one store per
    row, no gradient scratch, and the clipping a multiply by 1 when the row is inside the ball.
    Epochs +15% on two threads, +4% on one (``cpu_training.md``).
    """
    assert dim % 32 == 0

    @intrinsic
    def triplet(typingctx, ue, ua, u, ie, ia, p, ie2, ia2, n, w2, lr, eps2, clip):
        if not all(_is_table(t) for t in (ue, ua, ie, ia, ie2, ia2)):
            return None

        def codegen(context, builder, sig, args):
            f32 = ir.FloatType()
            vt = ir.VectorType(f32, _WIDTH)
            i64 = ir.IntType(64)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{_WIDTH}f32")
            vsqrt = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt]), f"llvm.sqrt.v{_WIDTH}f32")
            ssqrt = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(f32, [f32]), "llvm.sqrt.f32")
            ru, rua, rp, rpa, rn, rna = (_vec_row(context, builder, sig, args, i, j, vt)
                                         for i, j in ((0, 2), (1, 2), (3, 5), (4, 5), (6, 8),
                                                      (7, 8)))

            def splat(x):
                return builder.shuffle_vector(
                    builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.IntType(32)(0)),
                    ir.Constant(vt, ir.Undefined),
                    ir.Constant(ir.VectorType(ir.IntType(32), _WIDTH), [0] * _WIDTH))

            w2, lr, eps2, clip = args[9:13]
            vw2, vnw2, vlr, veps2 = splat(w2), splat(builder.fneg(w2)), splat(lr), splat(eps2)
            one = ir.Constant(vt, [1.0] * _WIDTH)
            K = dim // _WIDTH

            def load(r, k):
                return builder.load(builder.gep(r, [i64(k)]), align=4)

            U = [load(ru, k) for k in range(K)]
            P = [load(rp, k) for k in range(K)]
            N = [load(rn, k) for k in range(K)]
            grads = ([builder.fmul(vw2, builder.fsub(N[k], P[k])) for k in range(K)],
                     [builder.fmul(vnw2, builder.fsub(U[k], P[k])) for k in range(K)],
                     [builder.fmul(vw2, builder.fsub(U[k], N[k])) for k in range(K)])
            for (re, ra), X, G in zip(((ru, rua), (rp, rpa), (rn, rna)), (U, P, N), grads,
                                      strict=True):
                new = []
                for k in range(K):
                    a = builder.fadd(load(ra, k), builder.fmul(G[k], G[k]))
                    builder.store(a, builder.gep(ra, [i64(k)]), align=4)
                    r = builder.fdiv(one, builder.call(vsqrt, [builder.fadd(a, veps2)]))
                    new.append(builder.fsub(X[k], builder.fmul(builder.fmul(vlr, G[k]), r)))
                norm = builder.call(ssqrt, [_vec_sum_sq(builder, fma, new, vt)])
                clipped = builder.and_(builder.fcmp_ordered(">", clip, f32(0.0)),
                                       builder.fcmp_ordered(">", norm, clip))
                scale = splat(builder.select(clipped, builder.fdiv(clip, norm), f32(1.0)))
                for k in range(K):  # x * 1 == x: the unclipped rows as they are
                    builder.store(builder.fmul(new[k], scale), builder.gep(re, [i64(k)]),
                                  align=4)
            return context.get_dummy_value()

        return types.void(ue, ua, u, ie, ia, p, ie2, ia2, n, w2, lr, eps2, clip), codegen

    return triplet


@njit(inline="always")
def _prefetch_row(a, r):
    for d in range(0, a.shape[1], 64 // a.itemsize):
        _prefetch(a, r, d)


@njit(inline="always")
def _prefetch_row_nta(a, r):
    for d in range(0, a.shape[1], 64 // a.itemsize):
        _prefetch_nta(a, r, d)


def _elem_ptr(context, builder, sig, args):
    aryty = sig.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    idx = context.cast(builder, args[1], sig.args[1], types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [idx])


@intrinsic
def _atomic_add(typingctx, arr, i, v):
    """``arr[i] += v`` atomically (int64 ``arr``); returns the old value."""

    def codegen(context, builder, sig, args):
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", _elem_ptr(context, builder, sig, args), val, "seq_cst")

    return types.int64(arr, i, v), codegen


@intrinsic
def _atomic_load(typingctx, arr, i):
    def codegen(context, builder, sig, args):
        return builder.load_atomic(_elem_ptr(context, builder, sig, args), "acquire", 8)

    return types.int64(arr, i), codegen


@intrinsic
def _atomic_store(typingctx, arr, i, v):
    def codegen(context, builder, sig, args):
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(val, _elem_ptr(context, builder, sig, args), "release", 8)
        return context.get_dummy_value()

    return types.void(arr, i, v), codegen


@intrinsic
def _atomic_cas(typingctx, arr, i, old, new):
    """``arr[i] = new`` if it equals ``old``, atomically; True if this call did it."""

    def codegen(context, builder, sig, args):
        o, n = (context.cast(builder, a, t, types.int64)
                for a, t in zip(args[2:], sig.args[2:], strict=True))
        res = builder.cmpxchg(_elem_ptr(context, builder, sig, args), o, n, "seq_cst", "seq_cst")
        return builder.extract_value(res, 1)

    return types.boolean(arr, i, old, new), codegen


@intrinsic
def _yield(typingctx):
    """``sched_yield()``: a waiting thread hands its core to whoever can use it."""

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        builder.call(cgutils.get_or_insert_function(builder.module, fnty, "sched_yield"), [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _popcount(typingctx, x):
    """Set bits of a uint64 (``llvm.ctpop``: one ``popcnt``)."""

    def codegen(context, builder, sig, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@intrinsic
def _ctz(typingctx, x):
    """Trailing zero bits of a nonzero uint64 (``llvm.cttz``: one ``tzcnt``)."""

    def codegen(context, builder, sig, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))

    return types.uint64(types.uint64), codegen


@njit(inline="always")
def _mulhi(x, n):
    """``floor(x * n / 2**64)`` for ``n < 2**32``, without 128-bit integers."""
    nn = np.uint64(n)
    t = (x >> np.uint64(32)) * nn + (((x & np.uint64(0xFFFFFFFF)) * nn) >> np.uint64(32))
    return np.int64(t >> np.uint64(32))
