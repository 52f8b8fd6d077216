"""The package as a user meets it: a light import, `python -m affaccel.info`, the extension."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from affaccel import _ext

HEAVY = ("torch", "triton", "nvidia.dali", "open_clip")


def run_python(code: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_vars}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)


def test_import_is_light():
    """What the import does is counted, not timed (a time bound is flaky on a loaded machine
    and catches nothing when generous): the standard library and NumPy, nothing else."""
    code = (
        "import sys, json\n"
        "before = set(sys.modules)\n"
        "import affaccel, affaccel.segments, affaccel.env, affaccel._ext\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "third = sorted(m for m in new if m not in sys.stdlib_module_names and m != 'affaccel')\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(json.dumps({'third_party': third, 'heavy': heavy}))\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], f"import affaccel pulled in {result['heavy']}"
    assert set(result["third_party"]) <= {"numpy"}, (
        f"import affaccel imports third-party modules besides NumPy: {result['third_party']}")


def test_public_names_resolve_lazily():
    proc = run_python("import affaccel, sys; affaccel.plan_windows(10, 5, 5); "
                      "print('torch' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_info_exits_zero_and_reports_the_extension():
    proc = subprocess.run([sys.executable, "-m", "affaccel.info"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "affaccel._C" in proc.stdout
    assert "torch" in proc.stdout
    if _ext.available():
        assert "loaded" in proc.stdout and "compiler" in proc.stdout


def test_extension_loads_here():
    """The development install builds affaccel._C; a failure to load is a broken build."""
    if os.environ.get("AFFACCEL_DISABLE_EXT", "0") == "1":
        pytest.skip("AFFACCEL_DISABLE_EXT=1")
    assert _ext.available(), _ext.load_error()
    build = dict(_ext.load().build_info)
    assert build["hardware_threads"] >= 1 and build["compiler"]


def test_disabled_extension_gives_rebuild_message_and_reference_fallback():
    code = (
        "import numpy as np\n"
        "from affaccel import _ext, segments\n"
        "assert not _ext.available()\n"
        "try:\n"
        "    _ext.load()\n"
        "except _ext.ExtensionUnavailable as e:\n"
        "    print('MSG', e)\n"
        "w, m = segments.assemble_windows(np.arange(10.0).reshape(5, 2), 4, 2)\n"
        "print('SHAPE', w.shape, int(m.sum()))\n"
    )
    proc = run_python(code, AFFACCEL_DISABLE_EXT="1")
    assert proc.returncode == 0, proc.stderr
    assert "AFFACCEL_DISABLE_EXT=1" in proc.stdout and "pip install" in proc.stdout
    assert "SHAPE (2, 4, 2) 8" in proc.stdout
    info = subprocess.run([sys.executable, "-m", "affaccel.info"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "AFFACCEL_DISABLE_EXT": "1"})
    assert info.returncode == 0 and "NumPy reference" in info.stdout


def test_missing_extension_gives_rebuild_message():
    # sys.modules[name] = None makes the import fail as it would for a missing .so file
    code = (
        "import sys\n"
        "sys.modules['affaccel._C'] = None\n"
        "from affaccel import _ext\n"
        "try:\n"
        "    _ext.load()\n"
        "except ImportError as e:\n"
        "    print('MSG', e)\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert "MSG" in proc.stdout and "Rebuild" in proc.stdout and "pip install" in proc.stdout


def test_source_checkout_in_cwd_still_finds_built_parts():
    """`python -m affaccel.train` run in the repository root imports the source tree, which
    shadows the installed package; the extension and affaccel.kernels must still resolve."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import affaccel, affaccel.kernels, affaccel._ext as e, json; "
            "print(json.dumps([affaccel.__file__, e.available()]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=root, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "AFFACCEL_DISABLE_EXT"})
    assert proc.returncode == 0, proc.stderr
    _file, ext_ok = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ext_ok == _ext.available()
