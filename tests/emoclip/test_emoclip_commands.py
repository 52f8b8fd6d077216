"""The three commands end to end on the tiny synthetic set: train -> zero-shot -> embed."""
import json

import numpy as np
import pytest

from affaccel.data.synthetic import ensure_synthetic
from affaccel.emoclip import embed, train, zeroshot
from affaccel.emoclip.model import load_emoclip


@pytest.mark.slow
def test_train_zeroshot_embed(tmp_path, capsys):
    root = str(ensure_synthetic("tiny", progress=False))
    run = tmp_path / "run"
    assert train.main(["--out", str(run), "--preset", "tiny", "--data-root", root, "--cache", str(tmp_path / "f"),
                       "--exclude", "Fear", "--no-progress"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["held_out"]["Fear"]["chance"] == pytest.approx(1 / 8)
    assert 0 <= metrics["retrieval"]["r1"] <= 1 and metrics["retrieval"]["chance_r1"] > 0
    model = load_emoclip(run / "last.pt")
    assert model.config.model_name == "affaccel-rn-tiny"
    assert zeroshot.main(["--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "zs"), "--data-root", root,
                          "--split", "all", "--cache", str(tmp_path / "f"), "--no-progress"]) == 0
    rep = json.loads((tmp_path / "zs" / "zeroshot.json").read_text())
    cm = np.array(rep["confusion"])
    assert cm.shape == (8, 8) and cm.sum() == rep["n_clips"]
    assert rep["war"] == pytest.approx(np.trace(cm) / cm.sum())
    assert (tmp_path / "zs" / "confusion.png").stat().st_size > 1000
    out = tmp_path / "emb.npz"
    assert embed.main(["--checkpoint", str(run / "last.pt"), "--out", str(out), "--data-root", root,
                       "--cache", str(tmp_path / "f"), "--no-progress"]) == 0
    z = np.load(out)
    assert z["embedding"].shape == (rep["n_clips"], 128)
    np.testing.assert_allclose(np.linalg.norm(z["embedding"], axis=1), 1, rtol=1e-5)
    bad = tmp_path / "bad.yaml"
    bad.write_text("calm: ''\n")
    assert zeroshot.main(["--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "zs2"), "--data-root", root,
                          "--labels", str(bad), "--cache", str(tmp_path / "f"), "--no-progress"]) == 2
    assert "bad.yaml: entry 'calm': description 1 is empty" in capsys.readouterr().err
    # the same checkpoint on a raw video: python -m affaccel.predict --emoclip adds the zs_ columns
    from pathlib import Path

    import pandas as pd

    from affaccel import predict

    video = Path(root, "videos", "synth005.mp4")     # one face; its box file is synth005.boxes.csv
    out = tmp_path / "pred"
    assert predict.main([str(video), "--emoclip", str(run / "last.pt"), "--labels", "affaccel", "--out", str(out),
                         "--boxes", str(video.with_suffix(".boxes.csv")), "--no-progress"]) == 0
    table = pd.read_csv(out / f"{video.stem}.csv")
    zs = [c for c in table.columns if c.startswith("zs_")]
    assert len(zs) == 8 and "valence" not in table.columns
    probs = table.loc[table["face_found"], zs].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-4)


def test_predict_emoclip_arguments(tmp_path, capsys):
    from affaccel import predict

    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"x")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    cases = [([], "--bundle"), (["--labels", "affaccel", "--bundle", str(ckpt)], "--labels"),
             (["--emoclip", str(tmp_path / "nope.pt")], "--emoclip")]
    for extra, flag in cases:
        assert predict.main([str(video), "--out", str(tmp_path / "o"), *extra]) == 2
        assert flag in capsys.readouterr().err
