"""User box CSVs and box geometry."""
import numpy as np
import pytest

from affaccel.faces.boxes import box_iou, check_boxes, pairwise_iou, read_boxes_csv


def _write(tmp_path, text, name="boxes.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_read_boxes_fills_missing_frames_with_nan(tmp_path):
    p = _write(tmp_path, "frame,x,y,w,h,score\n0,1,2,3,4,0.9\n2,5,6,7,8,1\n3,,,,\n")
    b = read_boxes_csv(p, n_frames=5)
    assert b.shape == (5, 4)
    np.testing.assert_array_equal(b[0], [1, 2, 3, 4])
    np.testing.assert_array_equal(b[2], [5, 6, 7, 8])
    assert np.isnan(b[[1, 3, 4]]).all()
    assert read_boxes_csv(p).shape == (4, 4)          # T = last frame + 1 without n_frames


@pytest.mark.parametrize("text, msg", [
    ("frame,x,y,w\n0,1,2,3\n", r"boxes.csv:1: .*lacks column\(s\) \['h'\]"),
    ("frame,x,y,w,h\n0,1,2,3,4\nzero,1,2,3,4\n", r"boxes.csv:3: frame 'zero' is not an integer"),
    ("frame,x,y,w,h\n-1,1,2,3,4\n", r"boxes.csv:2: frame -1 is negative"),
    ("frame,x,y,w,h\n0,1,2,3,4\n0,1,2,3,4\n", r"boxes.csv:3: frame 0 appears twice"),
    ("frame,x,y,w,h\n0,1,2,0,4\n", r"boxes.csv:2: box width and height must be > 0"),
    ("frame,x,y,w,h\n0,1,b,3,4\n", r"boxes.csv:2: y='b' is not a number"),
    ("frame,x,y,w,h\n9,1,2,3,4\n", r"boxes.csv:2: frame 9 is past the video's last frame 4"),
    ("", r"boxes.csv: empty box file"),
])
def test_read_boxes_errors_name_file_and_line(tmp_path, text, msg):
    with pytest.raises(ValueError, match=msg):
        read_boxes_csv(_write(tmp_path, text), n_frames=5)


def test_missing_box_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_boxes_csv(tmp_path / "nope.csv")


def test_check_boxes_shapes():
    with pytest.raises(ValueError, match=r"expected shape \[T, 4\]"):
        check_boxes(np.zeros((3, 5)), 3)
    with pytest.raises(ValueError, match="2 rows for 3 frames"):
        check_boxes(np.ones((2, 4)), 3)
    b = check_boxes([[0, 0, 1, np.nan], [0, 0, 2, 2]], 2)
    assert np.isnan(b[0]).all() and (b[1] == [0, 0, 2, 2]).all()


def test_iou_against_hand_computed_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [np.nan] * 4])
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5], [0, 0, 1, 1]])
    iou = box_iou(a, b)
    np.testing.assert_allclose(iou[:3], [1.0, 50 / 150, 0.0])
    assert np.isnan(iou[3])
    m = pairwise_iou(a[:3], b[:2])
    assert m.shape == (3, 2)
    np.testing.assert_allclose(m[:, 1], [50 / 150] * 3)
