"""The window engine (affaccel.segments, C++ in csrc/segments.cpp) against its NumPy references.

Parity tests (C++ output == NumPy reference) take the `ext` fixture: the extension is required
(`pip install .` builds it; missing, it fails the test) and must have run. Behaviour tests
(errors, shapes, dtypes, invariants, hand-computed values) take `engine` and run on both the
C++ engine and the NumPy fallback that installs without the extension use.
"""
from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from affaccel import _ext
from affaccel import segments as S

from extension_spy import CountingExtension
from tolerances import tol

HYP = settings(max_examples=40, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture])
W, STRIDE = 300, 200


@pytest.fixture
def ext(monkeypatch):
    """Parity tests: the C++ engine, required, and checked to have run afterwards, so that no
    parity test compares the NumPy reference with itself."""
    spy = CountingExtension(_ext.load())  # a missing/disabled extension fails here, with the hint
    monkeypatch.setattr(_ext, "load", lambda: spy)
    assert S._use_ext()
    yield spy.calls
    assert sum(spy.calls.values()) > 0, "the C++ extension never ran in this parity test"


@pytest.fixture(params=["ext", "ref"])
def engine(request, monkeypatch):
    """Behaviour tests: once through the C++ engine (required) and once through the NumPy
    fallback."""
    if request.param == "ext":
        _ext.load()
        assert S._use_ext()
    else:
        monkeypatch.setattr(S, "_use_ext", lambda: False)
    return request.param


def rand(shape, dtype="float32", seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    if dtype == "bfloat16":
        return torch.from_numpy(x).to(torch.bfloat16)
    return x.astype(dtype)


def as_np(x):
    if isinstance(x, torch.Tensor):
        return x.view(torch.int16).numpy() if x.dtype == torch.bfloat16 else x.numpy()
    return x


# ------------------------------------------------------------------------------------ plan


def check_plan(starts, n, w, s):
    assert starts.dtype == np.int64 and starts.ndim == 1 and len(starts) >= 1
    assert starts[0] == 0
    assert np.all(np.diff(starts) > 0), "starts strictly increasing, no duplicate window"
    assert np.all(np.diff(starts) <= s), "no gap larger than the stride"
    assert np.all(starts < n), "no empty window"
    assert np.all(starts + w <= max(n, w)), "no window runs past the end of a video >= w"
    covered = np.zeros(n, dtype=int)
    for a in starts:
        covered[a:a + w] += 1
    assert covered.min() >= 1, "every frame covered"
    if n >= w:
        assert starts[-1] + w == n, "the last window ends exactly at the last frame"


@HYP
@given(n=st.integers(1, 3000), w=st.integers(1, 400), data=st.data())
def test_plan_matches_reference_and_rule(n, w, data):
    s = data.draw(st.integers(1, w))
    starts = S.plan_windows(n, w, s)
    np.testing.assert_array_equal(starts, S.plan_windows_ref(n, w, s))
    check_plan(starts, n, w, s)


@pytest.mark.parametrize("n, expected", [
    (1, [0]), (299, [0]), (300, [0]), (301, [0, 1]), (500, [0, 200]), (600, [0, 200, 300]),
    (700, [0, 200, 400]), (701, [0, 200, 400, 401]), (1000, [0, 200, 400, 600, 700]),
])
def test_plan_known_values(n, expected):
    np.testing.assert_array_equal(S.plan_windows(n, W, STRIDE), expected)


def test_plan_stride_equal_window_and_one():
    np.testing.assert_array_equal(S.plan_windows(10, 5, 5), [0, 5])
    np.testing.assert_array_equal(S.plan_windows(11, 5, 5), [0, 5, 6])
    np.testing.assert_array_equal(S.plan_windows(8, 5, 1), [0, 1, 2, 3])


# -------------------------------------------------------------------------------- assembly

BOUNDARY_N = [1, W - 1, W, W + 1, 3 * STRIDE + W, 3 * STRIDE + W + 1, 2 * STRIDE + W - 1]


@pytest.mark.parametrize("n", BOUNDARY_N)
@pytest.mark.parametrize("w, s", [(W, STRIDE), (W, W), (7, 1)])
def test_assemble_boundaries_match_reference(ext, n, w, s):
    x = rand((n, 3), seed=n)
    windows, mask = S.assemble_windows(x, w, s)
    ref_w, ref_m = S.assemble_windows_ref(x, w, s)
    np.testing.assert_array_equal(windows, ref_w)
    np.testing.assert_array_equal(mask, ref_m)


@pytest.mark.parametrize("n", BOUNDARY_N)
@pytest.mark.parametrize("w, s", [(W, STRIDE), (W, W), (7, 1)])
def test_assemble_boundaries(engine, n, w, s):
    x = rand((n, 3), seed=n)
    windows, mask = S.assemble_windows(x, w, s)
    starts = S.plan_windows(n, w, s)
    assert windows.shape == (len(starts), w, 3) and mask.shape == (len(starts), w)
    for i, a in enumerate(starts):  # content check independent of the reference
        valid = min(w, n - a)
        np.testing.assert_array_equal(windows[i, :valid], x[a:a + valid])
        assert mask[i, :valid].all() and not mask[i, valid:].any()
        assert not windows[i, valid:].any(), "padding must be zero"


@pytest.mark.parametrize("d", [1, 2, 4099])
def test_assemble_feature_width(ext, d):
    x = rand((457, d), "float16", seed=d)
    windows, mask = S.assemble_windows(x, W, STRIDE)
    ref_w, ref_m = S.assemble_windows_ref(x, W, STRIDE)
    np.testing.assert_array_equal(windows, ref_w)
    np.testing.assert_array_equal(mask, ref_m)


@HYP
@given(lengths=st.lists(st.integers(1, 700), min_size=1, max_size=5), w=st.integers(1, 320),
       d=st.integers(1, 9), dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
       data=st.data())
def test_assemble_batch_parity(ext, lengths, w, d, dtype, data):
    s = data.draw(st.integers(1, w))
    feats = [rand((n, d), dtype, seed=i) for i, n in enumerate(lengths)]
    windows, mask, index = S.assemble_windows_batch(feats, w, s)
    ref_w, ref_m, ref_i = S.assemble_windows_batch_ref([as_np(f) for f in feats], w, s)
    np.testing.assert_array_equal(as_np(windows), ref_w)
    np.testing.assert_array_equal(np.asarray(mask), ref_m)
    np.testing.assert_array_equal(np.asarray(index), ref_i)
    # the concatenated form with offsets gives the same result
    cat = np.concatenate([as_np(f) for f in feats])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    w2, m2, i2 = S.assemble_windows_batch(cat, w, s, offsets=offsets)
    np.testing.assert_array_equal(w2, ref_w)
    np.testing.assert_array_equal(m2, ref_m)
    np.testing.assert_array_equal(i2, ref_i)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int16", "bfloat16"])
def test_assemble_dtypes_kept(engine, dtype):
    x = rand((777, 5), dtype)
    windows, mask = S.assemble_windows(x, W, STRIDE)
    # the values against torch's unfold (assemble_windows_torch), which neither engine uses
    if dtype == "bfloat16":
        assert windows.dtype == torch.bfloat16 and mask.dtype == torch.bool
        ref, _ = S.assemble_windows_torch(x, W, STRIDE)
        assert torch.equal(windows, ref)
    else:
        assert windows.dtype == np.dtype(dtype) and mask.dtype == bool
        ref, _ = S.assemble_windows_torch(torch.from_numpy(x), W, STRIDE)
        np.testing.assert_array_equal(windows, ref.numpy())


@pytest.mark.parametrize("view", ["rows", "cols", "transposed", "reversed", "both"])
def test_assemble_non_contiguous(ext, view):
    base = rand((900, 12), "float16", seed=3)
    x = {"rows": base[::2], "cols": base[:, ::3], "transposed": np.ascontiguousarray(base.T).T,
         "reversed": base[::-1], "both": base[::-3, 1::2]}[view]
    assert not x.flags.c_contiguous
    windows, mask = S.assemble_windows(x, 50, 20)
    ref = S.assemble_windows_ref(np.ascontiguousarray(x), 50, 20)[0]
    np.testing.assert_array_equal(windows, ref)
    # torch views of the same memory
    t = torch.from_numpy(base.astype(np.float32)).t().contiguous().t()[5:]
    tw, tm = S.assemble_windows(t, 50, 20)
    assert isinstance(tw, torch.Tensor) and tw.is_contiguous()
    np.testing.assert_array_equal(tw.numpy(), S.assemble_windows_ref(t.numpy(), 50, 20)[0])


def test_torch_input_gives_torch_output_numpy_gives_numpy(engine):
    x = rand((650, 4))
    nw, nm = S.assemble_windows(x)
    tw, tm = S.assemble_windows(torch.from_numpy(x))
    assert isinstance(nw, np.ndarray) and isinstance(tw, torch.Tensor) and tm.dtype == torch.bool
    np.testing.assert_array_equal(tw.numpy(), nw)
    _, _, index = S.assemble_windows_batch([torch.from_numpy(x)])
    assert isinstance(index, torch.Tensor) and index.dtype == torch.int64


def test_assemble_torch_matches_reference_and_is_differentiable():
    for n in BOUNDARY_N:
        x = torch.randn(n, 3, dtype=torch.float64, requires_grad=True)
        windows, mask = S.assemble_windows(x)  # requires_grad -> torch path
        ref_w, ref_m = S.assemble_windows_ref(x.detach().numpy())
        np.testing.assert_array_equal(windows.detach().numpy(), ref_w)
        np.testing.assert_array_equal(mask.numpy(), ref_m)
        windows.sum().backward()
        counts = np.zeros(n)
        for a in S.plan_windows(n):
            counts[a:a + W] += 1
        np.testing.assert_array_equal(x.grad[:, 0].numpy(), counts)


def test_gather_from_memmap_in_any_order(ext, tmp_path):
    lengths = [1000, 50, 420]
    paths = []
    for i, n in enumerate(lengths):
        paths.append(tmp_path / f"v{i}.npy")
        np.save(paths[-1], rand((n, 16), "float16", seed=i))
    feats = [np.load(p, mmap_mode="r") for p in paths]
    index = np.array([[2, 400], [0, 0], [1, 49], [0, 999], [2, 0], [0, 700]])
    windows, mask = S.gather_windows(feats, index, W)
    ref_w, ref_m = S.gather_windows_ref([np.asarray(f) for f in feats], index, W)
    np.testing.assert_array_equal(windows, ref_w)
    np.testing.assert_array_equal(mask, ref_m)
    assert windows.dtype == np.float16 and mask[:, 0].all()


def test_gather_content_dtype_and_empty_index(engine, tmp_path):
    feats = [rand((n, 5), "float16", seed=n) for n in (40, 7)]
    np.save(tmp_path / "v.npy", feats[0])
    feats[0] = np.load(tmp_path / "v.npy", mmap_mode="r")
    windows, mask = S.gather_windows(feats, [[1, 3], [0, 39], [0, 0]], 10)
    assert windows.dtype == np.float16 and windows.shape == (3, 10, 5) and mask.dtype == bool
    for row, (v, a) in enumerate([(1, 3), (0, 39), (0, 0)]):
        n = min(10, len(feats[v]) - a)
        np.testing.assert_array_equal(windows[row, :n], feats[v][a:a + n])
        assert not windows[row, n:].any() and mask[row, :n].all() and not mask[row, n:].any()
    empty_w, empty_m = S.gather_windows(feats, np.zeros((0, 2), np.int64), W)
    assert empty_w.shape == (0, W, 5) and empty_m.shape == (0, W)


def test_extension_writes_every_element():
    """Outputs pre-filled with NaN / True: any element the C++ code skips would show."""
    feats = [rand((n, 6), seed=n) for n in (5, 301, 999)]
    index = S._plan_index([5, 301, 999], W, STRIDE)
    out = np.full((len(index), W, 6), np.nan, np.float32)
    mask = np.ones((len(index), W), bool)
    _ext.load().gather_windows(feats, index, W, out, mask, 2)
    ref_w, ref_m = S.gather_windows_ref(feats, index, W)
    np.testing.assert_array_equal(out, ref_w)
    np.testing.assert_array_equal(mask, ref_m)
    preds = rand((len(index), W, 3), seed=7)
    avg = np.full((5 + 301 + 999, 3), np.nan, np.float32)
    row = _ext.load().overlap_average(preds, "float32", index[:, 0].copy(), index[:, 1].copy(),
                                      np.array([5, 301, 999]), S.window_weights(W), avg, 2)
    assert row == -1
    ref = np.concatenate(S.overlap_average_batch_ref(preds, index, [5, 301, 999]))
    np.testing.assert_allclose(avg, ref, **tol("float32"))


# ------------------------------------------------------------------------------- averaging


def test_window_weights_positive_and_peaked():
    for w in (1, 2, 3, 10, 300):
        for name in S.WEIGHTINGS:
            wts = S.window_weights(w, name)
            assert wts.shape == (w,) and wts.dtype == np.float32 and (wts > 0).all()
        tri, hann = S.window_weights(w, "triangular"), S.window_weights(w, "hann")
        assert tri.argmax() == (w - 1) // 2 and np.allclose(tri, tri[::-1])
        assert np.allclose(hann, hann[::-1])
    assert S.window_weights(300, "triangular")[0] < 0.01


@HYP
@given(lengths=st.lists(st.integers(1, 800), min_size=1, max_size=4), w=st.integers(1, 320),
       k=st.integers(1, 5), dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
       weighting=st.sampled_from(S.WEIGHTINGS), shuffle=st.booleans(), data=st.data())
def test_overlap_average_batch_parity(ext, lengths, w, k, dtype, weighting, shuffle, data):
    s = data.draw(st.integers(1, w))
    index = S._plan_index(lengths, w, s)
    if shuffle:  # windows may come in any order (e.g. from a shuffled loader)
        index = index[np.random.default_rng(len(index)).permutation(len(index))]
    preds = rand((len(index), w, k), dtype, seed=w)
    out = S.overlap_average_batch(preds, index, lengths, weighting)
    ref = S.overlap_average_batch_ref(as_np(preds) if dtype != "bfloat16" else preds,
                                      index, lengths, weighting)
    assert len(out) == len(lengths)
    for o, r, n in zip(out, ref, lengths):
        o = np.asarray(o)
        assert o.shape == (n, k) and o.dtype == np.float32
        np.testing.assert_allclose(o, r, **tol("float32"))


def _padded_preds(n, w, s, garbage):
    starts = S.plan_windows(n, w, s)
    preds = rand((len(starts), w, 2), seed=n)
    for i, a in enumerate(starts):  # positions past the video's end (padding)
        preds[i, n - a:] = garbage
    return starts, preds


@pytest.mark.parametrize("n", BOUNDARY_N)
@pytest.mark.parametrize("w, s", [(W, STRIDE), (W, W), (7, 1)])
@pytest.mark.parametrize("weighting", S.WEIGHTINGS)
def test_overlap_average_boundaries_match_reference(ext, n, w, s, weighting):
    starts, preds = _padded_preds(n, w, s, 1e30)
    out = S.overlap_average(preds, starts, n, weighting)
    np.testing.assert_allclose(out, S.overlap_average_ref(preds, starts, n, weighting),
                               **tol("float32"))


@pytest.mark.parametrize("n", BOUNDARY_N)
@pytest.mark.parametrize("w, s", [(W, STRIDE), (W, W), (7, 1)])
@pytest.mark.parametrize("weighting", S.WEIGHTINGS)
def test_overlap_average_padding_ignored(engine, n, w, s, weighting):
    """Padding holds garbage (1e30) or zeros: the average is the same bits either way."""
    starts, garbage = _padded_preds(n, w, s, 1e30)
    _, zeros = _padded_preds(n, w, s, 0.0)
    out = S.overlap_average(garbage, starts, n, weighting)
    np.testing.assert_array_equal(out, S.overlap_average(zeros, starts, n, weighting))
    assert out.shape == (n, 2) and np.isfinite(out).all() and np.abs(out).max() < 10


@pytest.mark.parametrize("weighting", S.WEIGHTINGS)
def test_constant_averages_to_constant(engine, weighting):
    for n in (1, 299, 1000, 1234):
        starts = S.plan_windows(n, W, STRIDE)
        preds = np.full((len(starts), W, 3), -0.75, np.float32)
        out = S.overlap_average(preds, starts, n, weighting)
        np.testing.assert_allclose(out, -0.75, rtol=1e-6)


def test_hand_computed_average(engine):
    # windows of 4 starting at 0 and 2 over 6 frames: frames 2-3 are averaged
    preds = np.array([[[1.0], [2.0], [3.0], [4.0]], [[10.0], [20.0], [30.0], [40.0]]], np.float32)
    out = S.overlap_average(preds, [0, 2], 6)
    np.testing.assert_allclose(out[:, 0], [1, 2, 6.5, 12, 30, 40])
    wts = np.array([1, 3, 3, 1], np.float32)
    out = S.overlap_average(preds, [0, 2], 6, wts)
    np.testing.assert_allclose(out[:, 0], [1, 2, (3 * 3 + 10) / 4, (4 + 3 * 20) / 4, 30, 40])


def test_overlap_average_torch_parity_and_grad():
    n = 1001
    starts = S.plan_windows(n, W, STRIDE)
    preds = torch.randn(len(starts), W, 4, requires_grad=True)
    for weighting in S.WEIGHTINGS:
        out = S.overlap_average(preds, starts, n, weighting)  # requires_grad -> torch path
        ref = S.overlap_average_ref(preds.detach().numpy(), starts, n, weighting)
        np.testing.assert_allclose(out.detach().numpy(), ref, **tol("float32"))
    out.sum().backward()
    assert torch.isfinite(preds.grad).all() and preds.grad.abs().sum() > 0
    torch_out = S.overlap_average(preds.detach(), starts, n)
    assert isinstance(torch_out, torch.Tensor) and torch_out.dtype == torch.float32
    batch = S.overlap_average_batch(preds, np.stack([np.zeros_like(starts), starts], 1), [n])
    np.testing.assert_allclose(batch[0].detach().numpy(), S.overlap_average_ref(
        preds.detach().numpy(), starts, n), **tol("float32"))


def test_round_trip_windows_to_frames(engine):
    """Assembling features and averaging them straight back returns the features."""
    lengths = [1, 300, 301, 1234]
    feats = [rand((n, 8), seed=n) for n in lengths]
    windows, _, index = S.assemble_windows_batch(feats)
    for weighting in S.WEIGHTINGS:
        back = S.overlap_average_batch(windows, index, lengths, weighting)
        for f, b in zip(feats, back):
            np.testing.assert_allclose(b, f, **tol("float32"))


# ----------------------------------------------------------------------- threads and errors


def test_concurrent_calls_agree(engine):
    lengths = [3000, 2500, 4100, 999]
    feats = [rand((n, 64), "float16", seed=n) for n in lengths]
    index = S._plan_index(lengths, W, STRIDE)
    preds = rand((len(index), W, 12), seed=1)
    want_w = S.assemble_windows_batch(feats)[0]
    want_avg = S.overlap_average_batch(preds, index, lengths, "hann")
    barrier = threading.Barrier(4)

    def job(i):
        barrier.wait()
        got_w = S.assemble_windows_batch(feats)[0]
        got_avg = S.overlap_average_batch(preds, index, lengths, "hann")
        return np.array_equal(got_w, want_w) and all(
            np.array_equal(g, w) for g, w in zip(got_avg, want_avg))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(job, range(8)))


def test_thread_count_does_not_change_results(ext, monkeypatch):
    lengths = [2000, 777]
    feats = [rand((n, 32), seed=n) for n in lengths]
    index = S._plan_index(lengths, W, STRIDE)
    preds = rand((len(index), W, 3), "float16")
    results = []
    for threads in ("1", "2", "0"):
        monkeypatch.setenv("AFFACCEL_NUM_THREADS", threads)
        results.append((S.assemble_windows_batch(feats)[0],
                        S.overlap_average_batch(preds, index, lengths, "triangular")))
    for w, avg in results[1:]:
        np.testing.assert_array_equal(w, results[0][0])
        for a, b in zip(avg, results[0][1]):
            np.testing.assert_array_equal(a, b)


X = np.zeros((500, 4), np.float32)
P = np.zeros((3, W, 2), np.float32)
BAD_CALLS = [
    ("window", lambda: S.plan_windows(100, 0, 1)),
    ("stride", lambda: S.plan_windows(100, 10, 0)),
    ("stride", lambda: S.plan_windows(100, 10, 11)),
    ("n_frames", lambda: S.plan_windows(0)),
    ("n_frames", lambda: S.plan_windows(-3)),
    ("window", lambda: S.plan_windows(10, 2.5, 1)),
    ("features", lambda: S.assemble_windows(np.zeros(10))),
    ("features", lambda: S.assemble_windows(np.zeros((0, 3)))),
    ("features", lambda: S.assemble_windows(np.zeros((2, 3, 4)))),
    ("features", lambda: S.assemble_windows(np.array([[None]], dtype=object))),
    ("stride", lambda: S.assemble_windows(X, 10, 20)),
    ("features", lambda: S.assemble_windows_batch([])),
    ("features", lambda: S.assemble_windows_batch(X)),
    ("D=", lambda: S.assemble_windows_batch([X, np.zeros((5, 3), np.float32)])),
    ("dtype", lambda: S.assemble_windows_batch([X, X.astype(np.float16)])),
    ("offsets", lambda: S.assemble_windows_batch(X, offsets=[0, 300, 200, 500])),
    ("offsets", lambda: S.assemble_windows_batch(X, offsets=[0, 300, 300, 500])),
    ("offsets", lambda: S.assemble_windows_batch(X, offsets=[0, 300, 499])),
    ("offsets", lambda: S.assemble_windows_batch(X, offsets=[0.0, 500.0])),
    ("index", lambda: S.gather_windows([X], [[1, 0]], W)),
    ("index", lambda: S.gather_windows([X], [[0, 500]], W)),
    ("index", lambda: S.gather_windows([X], [[0, -1]], W)),
    ("index", lambda: S.gather_windows([X], [[0, 1, 2]], W)),
    ("index", lambda: S.gather_windows([X], [[0.5, 1]], W)),
    ("window", lambda: S.gather_windows([X], [[0, 1]], 0)),
    ("window_preds", lambda: S.overlap_average(np.zeros((3, W)), [0, 1, 2], 500)),
    ("windows", lambda: S.overlap_average(P, [0, 200], 500)),
    ("n_frames", lambda: S.overlap_average(P, [0, 100, 200], 0)),
    ("starts", lambda: S.overlap_average(P, [0, 100, 500], 500)),
    ("starts", lambda: S.overlap_average(P, [0, -1, 100], 500)),
    ("not covered", lambda: S.overlap_average(P, [0, 100, 200], 600)),
    ("weighting", lambda: S.overlap_average(P, [0, 100, 200], 500, "cosine")),
    ("weighting", lambda: S.overlap_average(P, [0, 100, 200], 500, np.zeros(W))),
    ("weighting", lambda: S.overlap_average(P, [0, 100, 200], 500, np.ones(W - 1))),
    ("index", lambda: S.overlap_average_batch(P, [[0, 0], [1, 0], [2, 0]], [500, 500])),
    ("n_frames", lambda: S.overlap_average_batch(P, [[0, 0], [0, 1], [0, 2]], [])),
    ("n_frames[1]", lambda: S.overlap_average_batch(P, [[0, 0], [0, 1], [0, 2]], [500, 0])),
    ("not covered", lambda: S.overlap_average_batch(P, [[0, 0], [0, 100], [1, 0]], [500, 301])),
]


@pytest.mark.parametrize("needle, call", BAD_CALLS,
                         ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD_CALLS)])
def test_bad_input_raises_value_error_naming_it(engine, needle, call):
    with pytest.raises(ValueError, match=re.escape(needle)):
        call()


def test_extension_rejects_bad_calls_without_crashing():
    """The C++ entry points check everything themselves (callers may skip segments.py)."""
    C = _ext.load()
    f = [rand((10, 4))]
    out, mask = np.zeros((1, 5, 4), np.float32), np.zeros((1, 5), bool)
    good_idx = np.array([[0, 0]], np.int64)
    bad = [
        lambda: C.gather_windows(f, np.array([[0, 10]], np.int64), 5, out, mask),
        lambda: C.gather_windows(f, np.array([[3, 0]], np.int64), 5, out, mask),
        lambda: C.gather_windows(f, np.array([[0, 0]], np.int32), 5, out, mask),
        lambda: C.gather_windows(f, good_idx, 6, out, mask),
        lambda: C.gather_windows(f, good_idx, 5, out[:, :, :2], mask),
        lambda: C.gather_windows(f, good_idx, 5, out.astype(np.float16), mask),
        lambda: C.gather_windows(f, good_idx, 5, out, mask.astype(np.uint8)),
        lambda: C.gather_windows([np.zeros((10, 3), np.float32)], good_idx, 5, out, mask),
        lambda: C.gather_windows(["not an array"], good_idx, 5, out, mask),
        lambda: C.gather_windows([], good_idx, 5, out, mask),
        lambda: C.gather_windows(f, good_idx, 0, out, mask),
        lambda: C.gather_windows(f, good_idx, 5, np.zeros((1, 5, 4), np.float32)[:, ::-1], mask),
    ]
    preds, wts = np.zeros((2, 5, 3), np.float32), np.ones(5, np.float32)
    vid, st0, nf = np.zeros(2, np.int64), np.array([0, 3], np.int64), np.array([8], np.int64)
    avg = np.zeros((8, 3), np.float32)
    bad += [
        lambda: C.overlap_average(preds, "float16", vid, st0, nf, wts, avg),
        lambda: C.overlap_average(preds, "float32", vid + 1, st0, nf, wts, avg),
        lambda: C.overlap_average(preds, "float32", vid, st0 + 5, nf, wts, avg),
        lambda: C.overlap_average(preds, "float32", vid, st0, nf + 1, wts, avg),
        lambda: C.overlap_average(preds, "float32", vid, st0, nf, -wts, avg),
        lambda: C.overlap_average(preds, "float32", vid, st0, nf, wts[:4], avg),
        lambda: C.overlap_average(preds, "float32", vid, st0, nf * 0, wts, avg),
        lambda: C.overlap_average(preds, "float32", vid[:1], st0, nf, wts, avg),
        lambda: C.overlap_average(preds[0], "float32", vid, st0, nf, wts, avg),
    ]
    for i, call in enumerate(bad):
        with pytest.raises(ValueError):
            call()
    assert C.overlap_average(preds, "float32", vid, st0, nf, wts, avg) == -1


@pytest.mark.gpu
def test_cuda_tensors_take_the_torch_path():
    x = torch.randn(1234, 16, device="cuda", dtype=torch.bfloat16)
    windows, mask = S.assemble_windows(x)
    assert windows.is_cuda
    ref_w, ref_m = S.assemble_windows(x.cpu())
    assert torch.equal(windows.cpu(), ref_w) and torch.equal(mask.cpu(), ref_m)
    starts = S.plan_windows(1234)
    preds = torch.randn(len(starts), W, 2, device="cuda")
    out = S.overlap_average(preds, starts, 1234, "hann")
    np.testing.assert_allclose(out.cpu().numpy(),
                               S.overlap_average_ref(preds.cpu().numpy(), starts, 1234, "hann"),
                               **tol("float32"))


def test_large_output_streaming_path(ext):
    """Caller-given outputs >= 32 MB take the non-temporal-store copy (new ones do not); D odd
    so window rows are unaligned."""
    x = rand((1600, 7001), "float16", seed=11)
    windows, mask = S.assemble_windows(x)
    assert windows.nbytes >= 32 << 20
    index = S.plan_windows_batch([1600])
    out = np.full_like(windows, np.nan)
    got_mask = np.zeros_like(mask)
    assert _ext.load().gather_windows([x], index, W, out, got_mask) is None
    np.testing.assert_array_equal(out, windows)
    np.testing.assert_array_equal(got_mask, mask)
    starts = S.plan_windows(1600)
    for i, a in enumerate(starts):
        valid = min(W, 1600 - a)
        np.testing.assert_array_equal(windows[i, :valid], x[a:a + valid])
    assert mask.all()


@HYP
@given(lengths=st.lists(st.integers(1, 2000), min_size=1, max_size=20), w=st.integers(1, 400),
       data=st.data())
def test_vectorized_batch_plan_matches_per_video_reference(lengths, w, data):
    s = data.draw(st.integers(1, w))
    want = [(v, a) for v, n in enumerate(lengths) for a in S.plan_windows_ref(n, w, s)]
    np.testing.assert_array_equal(S._plan_index(lengths, w, s), np.asarray(want, np.int64))
