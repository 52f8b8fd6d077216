"""Which decoder the predictor takes: DALI (NVDEC) on its GPU when DALI imports and NVDEC
handles the codec, PyAV on the CPU otherwise; the choice is in the result and `--verbose`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import affaccel.video.decode as decode
from affaccel.inference.predictor import AffectPredictor, choose_decoder

from predict_support import face_frames, make_bundle, write_video


@pytest.mark.parametrize("kind", ["h264", "vp9"])
def test_dali_on_cuda_when_dali_imports(monkeypatch, media, kind):
    # only the availability check is mocked; codec probing and the rule are the real ones
    monkeypatch.setattr(decode, "dali_available", lambda: True)
    assert choose_decoder(media[kind], "auto", torch.device("cuda")) == ("dali", "cuda")
    assert choose_decoder(media[kind], "auto", "cuda:1") == ("dali", "cuda:1")
    assert choose_decoder(media[kind], "auto", torch.device("cpu")) == ("pyav", "cpu")
    assert choose_decoder(media[kind], "pyav", "cuda") == ("pyav", "cpu")
    monkeypatch.setattr(decode, "dali_available", lambda: False)
    assert choose_decoder(media[kind], "auto", "cuda") == ("pyav", "cpu")


def test_unsupported_codec_falls_back_to_pyav(monkeypatch, tmp_path):
    monkeypatch.setattr(decode, "dali_available", lambda: True)
    path = write_video(tmp_path / "clip.avi", face_frames(4), codec="ffv1")
    assert decode.probe_video(path).codec not in decode.DALI_GPU_CODECS
    assert choose_decoder(path, "auto", "cuda") == ("pyav", "cpu")


def test_frames_given_directly_have_no_decoder():
    assert choose_decoder(np.zeros((2, 8, 8, 3), np.uint8), "auto", "cuda") == ("", "")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny.pt", tasks=("va",))


def test_result_and_verbose_output_name_the_decoder(bundle, tmp_path, capsys):
    from affaccel.predict import main

    video = write_video(tmp_path / "face.mp4", face_frames(12))
    pred = AffectPredictor.from_bundle(bundle, device="cpu")
    res = pred.predict_video(video)
    assert res.decoder == "pyav (cpu)"
    assert pred.predict_video(None, features=torch.zeros(12, pred.feature_dim)).decoder == ""
    assert main([str(video), "--bundle", str(bundle), "--out", str(tmp_path / "out"), "--device", "cpu",
                 "--no-progress", "--verbose"]) == 0
    captured = capsys.readouterr()
    assert "decoded with pyav (cpu)" in captured.out + captured.err


@pytest.mark.gpu
def test_gpu_predictor_decodes_with_dali(dali, bundle, tmp_path):
    video = write_video(tmp_path / "face.mp4", face_frames(12))
    res = AffectPredictor.from_bundle(bundle, device="cuda").predict_video(video)
    assert res.decoder.startswith("dali (cuda") and len(res.frame) == 12
