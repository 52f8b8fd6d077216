"""One device call that proves the GPU path: stages with their own time budgets, results in $OUT.

    python bench/gpu_check.py --prepare            # on the CPU machine: wheels to carry, the command
    python bench/gpu_check.py --dry-run            # on the CPU machine: every stage that needs no CUDA
    bash bench/gpu_check.sh                        # on the GPU machine (what --prepare prints)

Stages, in order, each in a subprocess killed at its budget (seconds, on an H100/H200; the sum is
the whole run's bound, 8 minutes):

    env          10  GPU, driver, Python / torch / Triton / DALI / open_clip / PyAV versions
    install      60  carried wheels (--no-index --no-deps), then the project with
                     --no-build-isolation --no-deps over a carried setuptools (>= 77)
    smoke        90  every autotune config of every conv kernel forced once against the reference
                     in bf16, fp16, fp32 with TF32 on and off; first-call (compile) and warm times;
                     8 processes in parallel (one per kernel x precision class x dtype)
    pytest      180  pytest -m gpu (AFFACCEL_AUTOTUNE=pinned; files in parallel with xdist)
    bench        60  bench/bench_kernels.py --quick
    throughput   60  bench/throughput.py --quick --device cuda, when open_clip and PyAV import

Files in $OUT (the device tool returns at most 8): summary.json (rewritten after every stage, so a
run cut short still tells how far it got), log.txt (every stage's output), smoke.jsonl,
junit.xml, results.tgz (new bench/results rows and JSON reports).

--dry-run runs prepare (if the carry folder is empty), install into a fresh virtual environment
from the carried wheels only with no index (torch stands in from the current interpreter's
site-packages: the lent image has its own torch, which is never carried), the offline sm_90
compile of every config, and reports the CUDA stages as skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CARRY = ROOT / ".gpu_carry"
BUDGETS = {"env": 10, "install": 60, "smoke": 90, "pytest": 180, "bench": 60, "throughput": 60}
TOTAL_LIMIT = 8 * 60
CARRY_LIMIT = 64 * 1024 * 1024

# What the lent image lacks (KINDS.md lists its packages: pandas, pytest, hypothesis, regex,
# timm, huggingface-hub, safetensors, pyarrow, scikit-learn, opencv, pybind11, cmake, ninja are
# there). Versions: the ones this project is developed against.
WHEELS = [
    "open_clip_torch==3.3.0",  # py3-none-any; its deps torch, torchvision, regex, tqdm, timm, hub: on the image
    "ftfy==6.3.1",             # open_clip's tokenizer
    "wcwidth==0.9.4",          # ftfy
    "av==18.1.0",              # PyAV: decoding on CPU, the baseline pipeline
    "setuptools==84.2.1",      # >= 77: the image's may reject `license = "..."`
    "pybind11==2.13.6",        # the build of affaccel._C (on the image too; 0.3 MB makes the build not depend on it)
]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


def out_dir() -> Path:
    p = Path(os.environ.get("OUT") or (Path(tempfile.gettempdir()) / "affaccel_gpu_check"))
    p.mkdir(parents=True, exist_ok=True)
    return p


class Run:
    def __init__(self, out: Path, python: str, env: dict):
        self.out, self.python, self.env = out, python, env
        self.summary = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "budgets_s": BUDGETS,
                        "stages": {}}
        self.t0 = time.perf_counter()
        (out / "log.txt").write_text("")

    def log(self, text: str) -> None:
        with open(self.out / "log.txt", "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        print(text, flush=True)

    def record(self, stage: str, status: str, **info) -> None:
        self.summary["stages"][stage] = dict(status=status, **info)
        self.summary["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        tmp = self.out / "summary.json.tmp"
        tmp.write_text(json.dumps(self.summary, indent=1))
        tmp.replace(self.out / "summary.json")
        self.log(f"== {stage}: {status} {json.dumps(info)}")

    def sh(self, stage: str, cmd: list[str], budget: float, cwd=None, env=None) -> tuple[int, float]:
        """Run cmd with a timeout; its output goes to the log. Returns (rc, seconds); rc 124 on
        timeout."""
        self.log(f"== {stage}: $ {' '.join(map(str, cmd))}")
        t = time.perf_counter()
        with open(self.out / "log.txt", "a") as f:
            try:
                p = subprocess.run([str(c) for c in cmd], cwd=cwd or ROOT, env=env or self.env,
                                   stdout=f, stderr=subprocess.STDOUT, timeout=budget)
                rc = p.returncode
            except subprocess.TimeoutExpired:
                rc = 124
        return rc, round(time.perf_counter() - t, 1)


# ---- stages ----------------------------------------------------------------------------------

def stage_env(run: Run) -> None:
    probe = r"""
import json, platform, sys
info = {"python": sys.version.split()[0], "platform": platform.platform()}
for mod in ("torch", "triton", "nvidia.dali", "open_clip", "av", "pandas", "pytest", "setuptools"):
    try:
        m = __import__(mod, fromlist=["_"])
        info[mod] = getattr(m, "__version__", "?")
    except Exception as e:
        info[mod] = f"missing ({type(e).__name__})"
import torch
info["cuda"] = torch.cuda.is_available()
if info["cuda"]:
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, sm=f"{p.major}{p.minor}", sms=p.multi_processor_count,
                mem_gib=round(p.total_memory / 2**30, 1), cuda_runtime=torch.version.cuda)
print("ENV " + json.dumps(info))
"""
    t = time.perf_counter()
    try:
        p = subprocess.run([run.python, "-c", probe], capture_output=True, text=True, env=run.env,
                           timeout=BUDGETS["env"], cwd="/tmp")
        info = next((json.loads(x[4:]) for x in p.stdout.splitlines() if x.startswith("ENV ")), {})
        run.log(p.stdout + p.stderr)
    except subprocess.TimeoutExpired:
        info = {}
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=5)
            info["nvidia_smi"] = q.stdout.strip()
        except subprocess.TimeoutExpired:
            pass
    run.summary["env"] = info
    run.record("env", "ok" if info else "failed", seconds=round(time.perf_counter() - t, 1))


def stage_install(run: Run, carry: Path) -> bool:
    wheels = sorted(carry.glob("*.whl"))
    t = time.perf_counter()
    base = [run.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-cache-dir"]
    # setuptools first, from the carried wheel: the build below imports it
    setup_whl = [w for w in wheels if w.name.startswith("setuptools-")]
    rest = [w for w in wheels if w not in setup_whl]
    budget = BUDGETS["install"]
    rc = 0
    for group in (setup_whl, rest):
        if group and rc == 0:
            rc, _ = run.sh("install", base + ["--upgrade", *group], budget)
    if rc == 0:
        left = max(5, budget - (time.perf_counter() - t))
        env = dict(run.env, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
        rc, _ = run.sh("install", base + ["--no-build-isolation", str(ROOT)], left, env=env)
    ok = rc == 0
    if ok:  # the installed package must carry its kernels (a source tree alone does not)
        p = subprocess.run([run.python, "-c", "import affaccel.kernels.tcn_conv, affaccel._C; print('ok')"],
                           capture_output=True, text=True, cwd="/tmp", env=run.env)
        ok = p.stdout.strip() == "ok"
        run.log(p.stdout + p.stderr)
    run.record("install", "ok" if ok else ("timeout" if rc == 124 else "failed"),
               seconds=round(time.perf_counter() - t, 1), wheels=[w.name for w in wheels])
    return ok


# every (kernel, precision class, dtype) of the smoke stage: one process each
SMOKE_JOBS = [("conv", "16bit", "bfloat16"), ("grad_weight", "16bit", "bfloat16"),
              ("conv", "16bit", "float16"), ("grad_weight", "16bit", "float16"),
              ("conv", "tf32", "float32"), ("grad_weight", "tf32", "float32"),
              ("conv", "ieee", "float32"), ("grad_weight", "ieee", "float32")]


def stage_smoke(run: Run) -> None:
    t = time.perf_counter()
    procs = []
    for kernel, cls, dtype in SMOKE_JOBS:
        f = open(run.out / f".smoke_{kernel}_{cls}_{dtype}.jsonl", "w")
        procs.append((f, subprocess.Popen(
            [run.python, str(Path(__file__).resolve()), "--smoke-job", kernel, cls, dtype],
            stdout=f, stderr=subprocess.STDOUT, env=run.env, cwd="/tmp")))
    status = "ok"
    for f, p in procs:
        try:
            p.wait(timeout=max(1, BUDGETS["smoke"] - (time.perf_counter() - t)))
        except subprocess.TimeoutExpired:
            p.kill()
            status = "timeout"
        if p.returncode not in (0, None) and status == "ok":
            status = "failed"
        f.close()
    rows, bad = [], 0
    with open(run.out / "smoke.jsonl", "w") as out:
        for part in sorted(run.out.glob(".smoke_*.jsonl")):
            for line in part.read_text().splitlines():
                out.write(line + "\n")
                if line.startswith("{"):
                    r = json.loads(line)
                    rows.append(r)
                    bad += not r.get("ok", False)
                else:
                    run.log(line)
            part.unlink()
    if bad and status == "ok":
        status = "failed"
    run.record("smoke", status, seconds=round(time.perf_counter() - t, 1), configs=len(rows), wrong=bad,
               max_first_call_s=max((r.get("first_call_s", 0) for r in rows), default=None))


def smoke_job(kernel: str, cls: str, dtype_name: str) -> int:
    """Force every config of `kernel` in precision class `cls` once, against the reference; one
    JSON line per config: first call (compile + run) and warm times, max error, ok."""
    import torch
    import triton

    from affaccel.kernels import tcn_conv as K
    from affaccel.ops import causal_conv as cc

    os.environ["AFFACCEL_AUTOTUNE"] = "pinned"  # this process only; we install each config below
    tf32 = cls == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    dtype = getattr(torch, dtype_name)
    tol = {"16bit": 2e-2, "tf32": 5e-3, "ieee": 1e-4}[cls]
    g = torch.Generator().manual_seed(0)
    B, T, C, k, d = 4, 300, 256, 3, 2  # aligned, like the real model; M = 1200 (not a tile multiple)
    x = torch.randn(B, T, C, generator=g)
    w = torch.randn(C, C, k, generator=g) / (C * k) ** 0.5
    b = torch.randn(C, generator=g)
    gz = torch.randn(B * T, C, generator=g)
    xc, wc, bc, gzc = (t.to("cuda", dtype) for t in (x, w, b, gz))
    if kernel == "conv":
        ref_y = cc.causal_conv1d_ref(xc.double().cpu(), wc.double().cpu(), bc.double().cpu(), d, "gelu")
        xr = xc.double().cpu().requires_grad_(True)
        ref_gx = torch.autograd.grad(cc.causal_conv1d_ref(xr, wc.double().cpu(), None, d),
                                     xr, gzc.double().cpu().view(B, T, C))[0]
        configs = K.conv_configs(cls)
    else:
        xr = xc.double().cpu()
        wr = wc.double().cpu().requires_grad_(True)
        ref_gw = torch.autograd.grad(cc.causal_conv1d_ref(xr, wr, None, d), wr,
                                     gzc.double().cpu().view(B, T, C))[0]
        configs = K.grad_w_configs(cls)
    for cfg in configs:
        name = "conv" if kernel == "conv" else "grad_weight"
        key = K.CONV_KEY if kernel == "conv" else K.GRAD_W_KEY
        fn = K.conv_kernel if kernel == "conv" else K.grad_weight_kernel
        K._AUTOTUNED[(name, cls, True)] = triton.autotune(configs=[cfg], key=key)(fn)
        row = dict(kernel=kernel, cls=cls, dtype=dtype_name, config=str(cfg))
        try:
            times = []
            for _ in range(2):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                if kernel == "conv":
                    y, _ = cc.conv_forward(xc, wc, bc, d, "gelu", None, save_z=False)
                    gx = cc.grad_input(gzc, wc, d, B, T)
                    out = (y, gx)
                else:
                    out = (cc.grad_weight(xc, gzc, k, d),)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            refs = (ref_y, ref_gx) if kernel == "conv" else (ref_gw,)
            errs = []
            for o, r in zip(out, refs):
                scale = max(1.0, r.abs().max().item())
                errs.append(((o.double().cpu() - r).abs().max() / scale).item())
            row.update(first_call_s=round(times[0], 2), warm_s=round(times[1], 5),
                       max_rel_err=max(errs), tol=tol, ok=max(errs) <= tol)
        except Exception as e:  # a config that fails to compile or launch is a finding, not a crash
            row.update(ok=False, error=f"{type(e).__name__}: {e}"[:500])
        print(json.dumps(row), flush=True)
    return 0


def stage_pytest(run: Run) -> None:
    env = dict(run.env, AFFACCEL_AUTOTUNE="pinned", PYTHONUNBUFFERED="1")
    args = ["-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={run.out / 'junit.xml'}",
            str(ROOT / "tests")]
    has_xdist = subprocess.run([run.python, "-c", "import xdist"], capture_output=True, env=env).returncode == 0
    if has_xdist:  # compiles of different test files run in parallel
        args[0:0] = ["-n", "4", "--dist", "loadfile"]
    # started outside the repository root: the source tree must not shadow the installed package
    rc, secs = run.sh("pytest", [run.python, "-c", "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))",
                                 *args], BUDGETS["pytest"], cwd="/tmp", env=env)
    run.record("pytest", {0: "ok", 124: "timeout", 5: "nothing collected"}.get(rc, "failed"), seconds=secs, rc=rc)


def _results_snapshot() -> dict:
    d = ROOT / "bench" / "results"
    return {p: p.stat().st_size for p in d.glob("*") if p.is_file()} if d.exists() else {}


def stage_bench(run: Run) -> None:
    rc, secs = run.sh("bench", [run.python, str(ROOT / "bench" / "bench_kernels.py"), "--quick"],
                      BUDGETS["bench"])
    run.record("bench", {0: "ok", 124: "timeout"}.get(rc, "failed"), seconds=secs, rc=rc)


def stage_throughput(run: Run) -> None:
    probe = subprocess.run([run.python, "-c", "import open_clip, av"], capture_output=True, text=True,
                           env=run.env, cwd="/tmp")
    if probe.returncode != 0:
        run.record("throughput", "skipped", reason="open_clip or PyAV does not import: "
                   + probe.stderr.strip().splitlines()[-1][:200])
        return
    rc, secs = run.sh("throughput", [run.python, str(ROOT / "bench" / "throughput.py"), "--quick", "--device",
                                     "cuda", "--json", str(run.out / ".throughput.json")], BUDGETS["throughput"])
    run.record("throughput", {0: "ok", 124: "timeout"}.get(rc, "failed"), seconds=secs, rc=rc)


def pack_results(run: Run, before: dict) -> None:
    """New or grown bench/results files and hidden reports into one archive (8 files come back)."""
    after = _results_snapshot()
    changed = [p for p, size in after.items() if before.get(p) != size]
    hidden = [p for p in run.out.glob(".*.json")]
    with tarfile.open(run.out / "results.tgz", "w:gz") as tar:
        for p in changed:
            tar.add(p, arcname=f"bench_results/{p.name}")
        for p in hidden:
            tar.add(p, arcname=p.name.lstrip("."))
    for p in hidden:
        p.unlink()


def stage_offline_compile(run: Run) -> None:
    env = {k: v for k, v in run.env.items() if k not in ("TRITON_INTERPRET", "AFFACCEL_TRITON_INTERPRET")}
    rc, secs = run.sh("offline_compile", [run.python, "-m", "affaccel.kernels.offline", "--jobs",
                                          str(os.cpu_count() or 2), "--json", str(run.out / ".offline.json")],
                      600, cwd="/tmp", env=env)
    info = {}
    if (run.out / ".offline.json").exists():
        res = json.loads((run.out / ".offline.json").read_text())
        info = dict(variants=len(res), max_shared_kb=round(max(r["shared"] for r in res) / 1024, 1),
                    max_compile_s=max(r["seconds"] for r in res))
    run.record("offline_compile", "ok" if rc == 0 else "failed", seconds=secs, **info)


# ---- prepare ---------------------------------------------------------------------------------

def tree_bytes() -> int:
    """Bytes of what a device call sends: tracked files plus untracked files git does not ignore."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True).stdout.split("\0")
    return sum((ROOT / f).stat().st_size for f in files if f and (ROOT / f).is_file())


def prepare(carry: Path) -> int:
    carry.mkdir(parents=True, exist_ok=True)
    have = {w.name for w in carry.glob("*.whl")}
    for spec in WHEELS:
        stem = spec.split("==")[0].replace("-", "_").lower()
        if any(h.lower().startswith(stem + "-") for h in have):
            continue
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "-d", str(carry), spec]
        for plat in PLATFORMS:
            cmd += ["--platform", plat]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    wheels = sorted(carry.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    tree = tree_bytes()
    for w in wheels:
        print(f"  {w.name:<60} {w.stat().st_size / 2**20:6.1f} MiB")
    print(f"carry: {len(wheels)} wheels, {size / 2**20:.1f} MiB; working tree {tree / 2**20:.1f} MiB; "
          f"together {(size + tree) / 2**20:.1f} of {CARRY_LIMIT / 2**20:.0f} MiB")
    try:
        rel = carry.resolve().relative_to(ROOT)
    except ValueError:
        rel = None
    if rel is None:
        print(f"note: {carry} is outside the repository; a device call carries only paths inside it: "
              f"copy it to {DEFAULT_CARRY.relative_to(ROOT)}/ (git-ignored) before the call")
        rel = DEFAULT_CARRY.relative_to(ROOT)
    else:
        exclude = ROOT / ".git" / "info" / "exclude"
        line = f"/{rel}/"
        if exclude.parent.exists() and line not in exclude.read_text().splitlines():
            with open(exclude, "a") as f:
                f.write(line + "\n")
    print("device call:")
    print(json.dumps({"command": f"bash bench/gpu_check.sh --carry-dir {rel}", "carry": [str(rel)],
                      "timeout_s": 540}))
    return 0 if size + tree <= CARRY_LIMIT else 1


# ---- main ------------------------------------------------------------------------------------

def dry_run_python(carry: Path, run_dir: Path) -> str:
    """A fresh virtual environment whose only extra packages come from the carried wheels; torch
    (never carried: the lent image has it) and the build tools stand in from this interpreter's
    site-packages, appended through a .pth file (as the image's own site-packages would be)."""
    import site
    import venv

    venv_dir = run_dir
    if venv_dir.exists():
        shutil.rmtree(venv_dir)
    venv.EnvBuilder(with_pip=True).create(venv_dir)
    py = venv_dir / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "zz_image_stand_in.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return str(py)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", action="store_true", help="download the wheels to carry; print the command")
    ap.add_argument("--dry-run", action="store_true", help="run the stages that need no CUDA")
    ap.add_argument("--carry-dir", default=str(DEFAULT_CARRY), help="wheels to install (default .gpu_carry)")
    ap.add_argument("--skip", default="", help="comma-separated stages to skip")
    ap.add_argument("--smoke-job", nargs=3, metavar=("KERNEL", "CLASS", "DTYPE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.smoke_job:
        return smoke_job(*a.smoke_job)
    carry = Path(a.carry_dir)
    if not carry.is_absolute():
        carry = ROOT / carry
    if a.prepare:
        return prepare(carry)
    out = out_dir()
    skip = set(filter(None, a.skip.split(",")))
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "AFFACCEL_TRITON_INTERPRET")}
    before = _results_snapshot()
    if a.dry_run:
        if not list(carry.glob("*.whl")):
            prepare(carry)
        python = dry_run_python(carry, Path(tempfile.gettempdir()) / "affaccel_gpu_check_venv")
        run = Run(out, python, env)
        run.summary["mode"] = "dry-run (CPU): torch from the development environment stands in for the image's"
    else:
        run = Run(out, sys.executable, env)
        run.summary["mode"] = "device"
    stage_env(run)
    installed = "install" in skip or stage_install(run, carry)
    if "install" in skip:
        run.record("install", "skipped", reason="--skip")
    cuda = bool(run.summary.get("env", {}).get("cuda"))
    if a.dry_run and installed:
        stage_offline_compile(run)
    for name, fn in (("smoke", stage_smoke), ("pytest", stage_pytest), ("bench", stage_bench),
                     ("throughput", stage_throughput)):
        if name in skip:
            run.record(name, "skipped", reason="--skip")
        elif not installed:
            run.record(name, "skipped", reason="install failed")
        elif not cuda:
            run.record(name, "skipped", reason="needs CUDA (none here)")
        else:
            fn(run)
    pack_results(run, before)
    statuses = {s["status"] for s in run.summary["stages"].values()}
    run.log(f"== done in {time.perf_counter() - run.t0:.0f} s: "
            + ", ".join(f"{k} {v['status']}" for k, v in run.summary["stages"].items()))
    return 0 if statuses <= {"ok", "skipped"} else 1


if __name__ == "__main__":
    raise SystemExit(main())
