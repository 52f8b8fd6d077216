"""Compile the kernels for a GPU without one: every launch configuration, Triton's own rules.

Triton lowers a kernel to PTX and runs ptxas for any target, so a CPU machine can check what
only the compiler sees (shared memory per block, tensor-core instructions, pipelining) and count
the variants a set of launches would compile. A "launch" here is what the host code passes to a
kernel (CPU tensors stand in for CUDA ones: the specialisation only reads dtypes, data pointer
alignment and integer values). :func:`specialise` runs Triton's own binder on it, so the
variant key is exactly the one a real launch computes; :func:`compile_launch` compiles that
variant through the same path a launch takes (so on a GPU machine with the same Triton the
result also lands in Triton's cache: a parallel pre-compile before a test run).

Used by tests/ops (specialisation count, every autotune config compiled for sm_90) and by
bench/gpu_check.py. Imports Triton's compiler: never imported by the package at run time.
"""
from __future__ import annotations

import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

SM90 = (90, 32)  # compute capability, warp size: H100 / H200


def target(arch: tuple[int, int] = SM90) -> GPUTarget:
    return GPUTarget("cuda", arch[0], arch[1])


def jit_fn(kernel):
    """The JITFunction under an Autotuner (or the function itself)."""
    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel


def _binder(fn, backend):
    return create_function_from_signature(fn.signature, fn.params, backend)


def _options(kwargs: dict) -> dict:
    kwargs = dict(kwargs)
    knobs = getattr(triton, "knobs", None)
    kwargs.setdefault("debug", bool(knobs and knobs.runtime.debug))
    mode = getattr(getattr(knobs, "compilation", None), "instrumentation_mode", None)
    if mode is not None:
        kwargs.setdefault("instrumentation_mode", mode)
    return kwargs


def specialise(kernel, args, kwargs, arch=SM90):
    """Triton's specialisation of one launch: (bound args, specialisation, options), where the
    key ``(name, str(specialisation), str(options))`` identifies the compiled variant."""
    fn = jit_fn(kernel)
    backend = make_backend(target(arch))
    return _binder(fn, backend)(*args, **_options(kwargs))


def variant_key(kernel, args, kwargs, arch=SM90) -> tuple:
    _, spec, options = specialise(kernel, args, kwargs, arch)
    return (jit_fn(kernel).__name__, str(spec), str(options))


def compile_launch(kernel, args, kwargs, arch=SM90) -> dict:
    """Compile the variant one launch would compile; returns facts about the binary."""
    fn = jit_fn(kernel)
    tgt = target(arch)
    backend = make_backend(tgt)
    kwargs = _options(kwargs)
    bound, spec, options = _binder(fn, backend)(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
    src = triton.compiler.ASTSource(fn, signature, constexprs, attrs)
    t0 = time.perf_counter()
    c = triton.compile(src, target=tgt, options=options.__dict__)
    seconds = time.perf_counter() - t0
    ptx = c.asm.get("ptx", "")
    ttgir = c.asm.get("ttgir", "")
    return dict(kernel=fn.__name__, shared=int(c.metadata.shared), seconds=round(seconds, 2),
                num_warps=options.num_warps, num_stages=options.num_stages,
                wgmma="wgmma.mma_async" in ptx, cp_async="async_copy_global_to_local" in ttgir,
                cubin_bytes=len(c.asm.get("cubin", b"")))


# ---- the launches to compile: every config of every kernel ---------------------------------

def conv_launches(classes=None):
    """(label, kernel, args, kwargs) for every (precision class, dtype, config) of the TCN conv
    kernels on an aligned layout (B=2, T=64, C_in=C_out=128; the real model's layouts are
    aligned too), plus the activation backward per dtype."""
    import torch

    from affaccel.kernels import tcn_conv as K

    assert not K.INTERPRETED, "offline compiles need Triton in compiled mode (TRITON_INTERPRET unset)"
    classes = classes or K.PRECISION_CLASSES
    B, T, C, k = 2, 64, 128, 3
    M = B * T
    out = []
    for cls in classes:
        dtypes = [torch.bfloat16, torch.float16] if cls == "16bit" else [torch.float32]
        precision = "tf32" if cls == "tf32" else "ieee"
        for dt in dtypes:
            x = torch.zeros(B, T, C, dtype=dt)
            w = torch.zeros(k, C, C, dtype=dt)
            b = torch.zeros(C, dtype=dt)
            z = torch.zeros(M, C, dtype=dt)
            name = str(dt).replace("torch.", "")
            for cfg in K.conv_configs(cls):
                args = (x, w, b, x, z, x, M, T, C, C, 2, k, -1, 2, True, True, True, K.m_bucket(M),
                        *x.stride(), *x.stride(), *x.stride())
                kw = dict(SLOPE=K.LEAKY_SLOPE, DOT_F32=False, PRECISION=precision, **cfg.kwargs,
                          num_warps=cfg.num_warps, num_stages=cfg.num_stages)
                out.append((f"conv {cls} {name} {_cfg_label(cfg)}", K.conv_kernel, args, kw))
            part = torch.zeros(1, k, C, C, dtype=torch.float32)
            for cfg in K.grad_w_configs(cls):
                args = (x, z, part, M, T, C, C, 2, M, k, K.m_bucket(M), *x.stride())
                kw = dict(DOT_F32=False, PRECISION=precision, **cfg.kwargs,
                          num_warps=cfg.num_warps, num_stages=cfg.num_stages)
                out.append((f"grad_weight {cls} {name} {_cfg_label(cfg)}", K.grad_weight_kernel, args, kw))
            if cls != "tf32":  # one act_bwd per dtype (it has no dot)
                db = torch.zeros(M // 32, C, dtype=torch.float32)
                args = (x, z, z, x, z, z, db, M, T, C, *x.stride(), *x.stride(), 2, True, True, True)
                kw = dict(SLOPE=K.LEAKY_SLOPE, **K.ACT_BWD_BLOCKS, num_warps=4)
                out.append((f"act_bwd {name}", K.act_bwd_kernel, args, kw))
    return out


def ccc_launches():
    """(label, kernel, args, kwargs) for the CCC kernels: every compiled block bucket x dtype."""
    import torch

    from affaccel.kernels import ccc as K
    from affaccel.ops import concordance as C

    out = []
    G, L = 4, 300
    for K_ in (2,):  # the compiled tile does not depend on K (or L)
        block_l, block_k = C._blocks(L, K_, compiled=True)
        n_chunks = -(-L // block_l)
        lay = C.workspace_layout(G, n_chunks, K_)
        ws = torch.zeros(lay["size"], dtype=torch.float32)
        m = torch.ones(G, L, dtype=torch.uint8)
        warps = C._num_warps(block_l * block_k)
        for dt in (torch.bfloat16, torch.float16, torch.float32):
            x = torch.zeros(G, L, K_, dtype=dt)
            name = str(dt).replace("torch.", "")
            args = (x, x, m, ws, G, L, K_, n_chunks, *x.stride(), *x.stride(), L, 1)
            kw = dict(HAS_MASK=True, BLOCK_L=block_l, BLOCK_K=block_k, num_warps=warps)
            out.append((f"ccc_partials {name} K<={block_k}", K.ccc_partials_kernel, args, kw))
            gout = torch.ones(K_, dtype=torch.float32)
            args = (x, x, m, ws, lay["off_stats"], lay["off_invw"], gout, x, x, G, L, K_, 1.0,
                    *x.stride(), *x.stride(), L, 1, 1)
            kw = dict(HAS_MASK=True, NEED_GX=True, NEED_GY=True, BLOCK_L=block_l, BLOCK_K=block_k,
                      num_warps=warps)
            out.append((f"ccc_backward {name} K<={block_k}", K.ccc_backward_kernel, args, kw))
        res = torch.zeros(K_, dtype=torch.float32)
        args = (ws, res, res[:1], lay["off_stats"], lay["off_invw"], G, K_, n_chunks)
        kw = dict(BLOCK_G=max(1, 1024 // block_k), BLOCK_K=block_k)
        out.append((f"ccc_finalize K<={block_k}", K.ccc_finalize_kernel, args, kw))
    return out


def _cfg_label(cfg) -> str:
    blocks = "x".join(str(v) for v in cfg.kwargs.values())
    return f"{blocks} w{cfg.num_warps} s{cfg.num_stages}"


def _compile_one(item):
    label, kernel, args, kwargs = item
    info = compile_launch(kernel, args, kwargs)
    info["label"] = label
    return info


def compile_all(jobs: int = 1, which=("conv", "ccc"), arch=SM90) -> list[dict]:
    """Compile every launch of :func:`conv_launches` / :func:`ccc_launches` for `arch`; `jobs`
    processes in parallel (each builds its own launches: kernels do not pickle)."""
    labels = []
    if "conv" in which:
        labels += [x[0] for x in conv_launches()]
    if "ccc" in which:
        labels += [x[0] for x in ccc_launches()]
    if jobs <= 1:
        items = (conv_launches() if "conv" in which else []) + (ccc_launches() if "ccc" in which else [])
        return [_compile_one(it) for it in items]
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_compile_label, labels, [which] * len(labels)))


def _compile_label(label, which):
    items = (conv_launches() if "conv" in which else []) + (ccc_launches() if "ccc" in which else [])
    for it in items:
        if it[0] == label:
            return _compile_one(it)
    raise KeyError(label)


def main(argv=None) -> int:
    import argparse
    import json
    import os

    p = argparse.ArgumentParser(description="compile every kernel config for sm_90, offline")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    res = compile_all(jobs=a.jobs)
    bad = [r for r in res if r["shared"] > SMEM_LIMIT_BYTES]
    for r in res:
        print(f"{r['label']:<46} shared {r['shared'] / 1024:6.1f} KB  wgmma {int(r['wgmma'])}  "
              f"{r['seconds']:6.1f} s")
    print(f"{len(res)} variants compiled for sm_90 in {time.perf_counter() - t0:.0f} s; "
          f"{len(bad)} over {SMEM_LIMIT_BYTES // 1024} KB of shared memory")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 1 if bad else 0


SMEM_LIMIT_BYTES = 227 * 1024

if __name__ == "__main__":
    raise SystemExit(main())
