"""Case 4: the streaming path returns one row per decoded frame, with the right frame numbers
and timestamps, whatever the faces: none at all, a face only at the end, a single frame."""
from __future__ import annotations

import numpy as np
import pytest

from predict_support import face_frames, make_bundle


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from affaccel.inference.predictor import AffectPredictor

    return AffectPredictor.from_bundle(make_bundle(tmp_path_factory.mktemp("b") / "b.pt"), device="cpu")


CASES = {
    "no_face": (95, dict(face=False)),
    "face_at_end": (95, dict(hidden=set(range(80)))),
    "one_frame": (1, dict(face=False)),
    "one_frame_face": (1, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_row_per_frame(predictor, case):
    n, kw = CASES[case]
    frames = face_frames(n, **kw)
    streamed = predictor.predict_video(frames, fps=25.0, stream=True, batch_size=16).frame
    whole = predictor.predict_video(frames, fps=25.0, stream=False, batch_size=16).frame
    assert len(streamed) == n and len(whole) == n
    np.testing.assert_array_equal(streamed["frame"].to_numpy(), np.arange(n))
    np.testing.assert_allclose(streamed["timestamp_s"].to_numpy(), np.arange(n) / 25.0)
    np.testing.assert_array_equal(streamed["face_found"].to_numpy(), whole["face_found"].to_numpy())
    np.testing.assert_allclose(streamed["valence"].to_numpy(), whole["valence"].to_numpy(),
                               atol=1e-5, equal_nan=True)
    if case == "face_at_end":
        assert not streamed["face_found"][:80].any() and streamed["face_found"][80:].any()
