"""Recall / IoU bookkeeping of affaccel.faces.evaluate on hand-made detections."""
import numpy as np

from affaccel.faces.evaluate import match_stats


def test_match_stats_counts_recall_iou_and_false_positives():
    nan = [np.nan] * 4
    truth = [np.array([[0, 0, 10, 10], [0, 0, 10, 10], nan, [0, 0, 10, 10]], float)]
    dets = [np.array([[0, 0, 10, 10, 1]]),                     # exact: IoU 1
            np.array([[5, 0, 10, 10, 1], [50, 50, 5, 5, 1]]),  # IoU 1/3 (miss) + far box
            np.array([[0, 0, 4, 4, 1]]),                       # no face there: FP
            np.array([[1, 0, 10, 10, 1]])]                     # IoU 90/110
    st = match_stats(dets, truth)
    assert st["gt_faces"] == 3 and st["frames"] == 4
    np.testing.assert_allclose(st["recall"], 2 / 3)
    np.testing.assert_allclose(st["mean_iou"], (1 + 90 / 110) / 2)
    np.testing.assert_allclose(st["fp_per_frame"], 3 / 4)     # two in frame 1, one in frame 2


def test_one_detection_matches_one_face_only():
    truth = [np.array([[0, 0, 10, 10]], float), np.array([[1, 0, 10, 10]], float)]
    st = match_stats([np.array([[0, 0, 10, 10, 1]])], truth)
    assert st["gt_faces"] == 2 and st["recall"] == 0.5 and st["fp_per_frame"] == 0
