"""Clip sampling (every k-th frame, wrap-around, reflect padding) and labelled segments."""
import numpy as np

from affaccel.emoclip.clips import labelled_segments, sample_indices


def test_long_clip_is_consecutive_kept_frames_with_wrap_around():
    np.testing.assert_array_equal(sample_indices(20, 4, 2), [0, 2, 4, 6])
    np.testing.assert_array_equal(sample_indices(20, 4, 2, start=8), [16, 18, 0, 2])   # wraps
    np.testing.assert_array_equal(sample_indices(20, 3, 2, phase=1), [1, 3, 5])


def test_short_clip_is_reflect_padded():
    np.testing.assert_array_equal(sample_indices(6, 8, 2), [0, 2, 4, 2, 0, 2, 4, 2])
    np.testing.assert_array_equal(sample_indices(1, 4, 3), [0, 0, 0, 0])
    np.testing.assert_array_equal(sample_indices(3, 5, 1), [0, 1, 2, 1, 0])


def test_segments_are_valid_runs_of_min_length():
    expr = np.array([1] * 5 + [2] * 3 + [2] * 4 + [0] * 6)
    mask = np.ones(18, bool)
    mask[5:8] = False
    assert labelled_segments(expr, mask, min_len=4) == [(0, 5, 1), (8, 12, 2), (12, 18, 0)]
    assert labelled_segments(expr, mask, min_len=6) == [(12, 18, 0)]
