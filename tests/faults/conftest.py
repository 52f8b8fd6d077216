"""tests/faults: one test file per numbered case of issue 14 (real-world inputs). Helpers of
the parent test folder (predict_support, clip_fixtures) are importable from here."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
