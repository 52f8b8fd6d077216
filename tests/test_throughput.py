"""bench/throughput.py: the quick CPU run, apples-to-apples parity, and its helper parts."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tolerances import tol

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """One `--quick` CPU run on two tiny synthetic videos (H.264 + VP9 of one source)."""
    import torch

    tp = _load("throughput")
    out = tmp_path_factory.mktemp("throughput") / "report.json"
    threads = torch.get_num_threads()
    try:
        report = tp.run_benchmark(["--quick", "--device", "cpu", "--max-videos", "2",
                                   "--warmup", "0", "--threads", "1", "--no-csv",
                                   "--naive-bf16", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    tp.write_outputs(report, out, None)
    return report, json.loads(out.read_text())


def test_same_predictions_on_same_videos(quick_report):
    from affaccel.data.synthetic import MANIFEST, ensure_synthetic

    report, _ = quick_report
    opt, naive = report["predictions"]["optimized"], report["predictions"]["naive"]
    assert len(opt) == len(naive) == len(report["videos"]) == 2
    # one row per decoded frame in both: the synthetic manifest knows each video's frame count
    root = ensure_synthetic("tiny")
    m = json.loads((root / MANIFEST).read_text())
    n_by_file = {str(root / info[k]): info["n_frames"] for info in m["raw_videos"].values()
                 for k in ("mp4", "webm")}
    for path, po, pn in zip(report["videos"], opt, naive):
        assert set(po) == set(pn) == {"va", "expr", "au"}
        for t in po:
            assert po[t].shape == pn[t].shape
            assert po[t].shape[0] == n_by_file[path]
            # the same frames have a face (NaN rows) and the same values elsewhere
            np.testing.assert_array_equal(np.isnan(po[t]), np.isnan(pn[t]))
            assert np.isfinite(po[t]).any()
            # PIL rounds the naive resize to uint8, DALI resizes in float: measured 4e-4
            np.testing.assert_allclose(po[t], pn[t], rtol=0, atol=2e-3, equal_nan=True)
    assert report["parity"]["ok"]


def test_report_keys_and_figures_come_from_measurements(quick_report):
    report, js = quick_report
    for key in ("optimized_fps", "naive_fps", "speedup", "optimized_serial_fps", "stages",
                "overlap", "peak_memory_mb", "versions", "machine", "commit", "date", "parity",
                "frames", "encoder_gflop_per_frame"):
        assert key in js, key
    assert "predictions" not in js
    frames = js["frames"]
    assert frames == sum(len(p["va"]) for p in report["predictions"]["optimized"])
    for name, key in (("optimized", "optimized_fps"), ("naive", "naive_fps")):
        secs = js["seconds"][name]["all"]
        assert len(secs) == 1 and secs[0] > 0
        assert js[key] == pytest.approx(frames / np.median(secs))
    assert js["speedup"] == pytest.approx(js["optimized_fps"] / js["naive_fps"])
    for pipe in ("optimized", "naive"):
        for stage in ("decode", "faces", "encoder", "temporal", "averaging"):
            s = js["stages"][pipe][stage]
            assert s["seconds"] > 0 and s["fps"] == pytest.approx(frames / s["seconds"])
    assert js["peak_memory_mb"]["optimized"] > 0 and js["peak_memory_mb"]["naive"] > 0
    assert js["versions"]["torch"] and js["roofline"] is None       # CPU: no roofline
    assert 0 <= js["overlap"]["decode_idle_frac"] <= 1
    # load average, limits and pipeline efficiency come from the same run's figures
    assert len(js["loadavg"]["start"]) == 3 and len(js["loadavg"]["end"]) == 3
    lim = js["limits"]
    assert lim["encoder_alone_fps"] == pytest.approx(js["stages"]["optimized"]["encoder"]["fps"])
    assert lim["decode_alone_fps"] == pytest.approx(js["stages"]["optimized"]["decode"]["fps"])
    assert lim["pipeline_efficiency"] == pytest.approx(js["optimized_fps"] / lim["encoder_alone_fps"])
    assert 0 < lim["core_utilisation"] <= 1.5
    per_frame = lim["stage_cpu_ms_per_frame"]
    assert set(per_frame) == {"decode", "faces", "encoder", "temporal", "averaging"}
    assert lim["cpu_bound_fps"] == pytest.approx(lim["cores"] * 1e3 / sum(per_frame.values()))
    assert lim["cpu_bound_fps_all"] == pytest.approx(lim["cores"] * 1e3 / lim["serial_cpu_ms_per_frame"])
    assert lim["speedup_ceiling"] == pytest.approx(lim["cpu_bound_fps_all"] / js["naive_fps"])


def test_int8_and_naive_bf16_rows(quick_report):
    """The opt-in int8 encoder's row (CPU default) and the naive + bf16 autocast row (GPU; forced
    here with --naive-bf16 to run its code path), each with its own tolerance."""
    report, js = quick_report
    i8 = js["int8"]
    assert i8["fps"] == pytest.approx(js["frames"] / np.median(js["seconds"]["int8"]["all"]))
    assert i8["quantized_layers"] > 0
    assert i8["feature_cosine"]["min"] >= 0.999          # tests/nn/test_int8.py's tolerance
    assert 0 < i8["max_abs_vs_optimized"] < 5e-2
    nb = js["naive_bf16"]
    assert nb["fps"] == pytest.approx(js["frames"] / np.median(js["seconds"]["naive_bf16"]["all"]))
    assert nb["max_abs_vs_naive"] < 1e-1                 # bf16 encoder + temporal vs fp32
    p16, p32 = report["predictions"]["naive_bf16"], report["predictions"]["naive"]
    for a, b in zip(p16, p32):
        for t in a:
            np.testing.assert_array_equal(np.isnan(a[t]), np.isnan(b[t]))


def test_naive_temporal_model_matches_affaccel(tmp_path):
    """The eager nn.Conv1d+chomp model loads the TemporalModel's state dict and agrees."""
    import torch

    from affaccel.config import make_config
    from affaccel.nn.temporal import TemporalModel

    naive = _load("_naive_pipeline")
    torch.manual_seed(0)
    for task in ("va", "expr", "au"):
        cfg = make_config(task, "tiny", model={"in_dim": 24, "tcn_channels": [16, 12],
                                               "transformer_heads": 2})
        ref = TemporalModel(cfg.model).eval()
        cfg_dict = json.loads(json.dumps(cfg.model.__dict__))
        mine = naive.NaiveTemporal(cfg_dict).eval()
        mine.load_state_dict(ref.state_dict())
        x = torch.randn(3, 32, 24)
        mask = torch.ones(3, 32, dtype=torch.bool)
        mask[1, 20:] = False
        with torch.no_grad():
            want = ref.to_prediction(ref(x, mask))
            got = mine(x, mask)
        valid = mask[..., None].expand_as(want)
        torch.testing.assert_close(got[valid], want[valid], **tol("float32"))


def test_stage_timers_restore_the_predictor(tmp_path):
    import torch

    from affaccel.inference.predictor import AffectPredictor

    from predict_support import make_bundle

    tp = _load("throughput")
    pred = AffectPredictor.from_bundle(make_bundle(tmp_path / "b.pt"), device="cpu")
    with tp.StageTimers(pred, torch.device("cpu")) as tm:
        assert "encode" in vars(pred)
        pred.encode(torch.zeros(2, 3, pred.encoder.image_size, pred.encoder.image_size))
    assert "encode" not in vars(pred) and "_crop" not in vars(pred)
    import affaccel.video.decode as decode

    assert decode.iter_video.__name__ == "iter_video"      # the decoder is put back too
    assert tm.s["encoder"] > 0 and set(tm.s) == {*tp.STAGES, "cpu"}
    assert set(tm.s["cpu"]) == set(tp.STAGES) and tm.s["cpu"]["encoder"] > 0


@pytest.mark.gpu
def test_quick_gpu_run_reports_roofline(tmp_path):
    """GPU path: NVDEC decode with given boxes, bf16 encoder, roofline against a bf16 matmul."""
    tp = _load("throughput")
    report = tp.run_benchmark(["--quick", "--device", "cuda", "--max-videos", "2",
                               "--no-csv", "--json", str(tmp_path / "r.json")])
    assert report["parity"]["ok"], report["parity"]
    assert report["decode_device"].startswith("cuda")
    rf = report["roofline"]
    assert rf["bf16_matmul_peak_tflops"] > 0 and 0 < rf["fraction"] < 1.5
    assert report["speedup"] == pytest.approx(report["optimized_fps"] / report["naive_fps"])
