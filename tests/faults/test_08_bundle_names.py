"""Case 8: a bundle's encoder weights come from the bundle; a hub tag or a file named inside
the bundle (encoder.config.pretrained / checkpoint) is not followed."""
from __future__ import annotations

import pytest
import torch

from predict_support import make_bundle


@pytest.mark.parametrize("field, value", [
    ("pretrained", "NAMED_FILE"),          # a local file the bundle points at
    ("pretrained", "laion2b_s34b_b79k"),   # a model-hub tag
    ("checkpoint", "NAMED_FILE"),
])
def test_names_inside_a_bundle_are_not_followed(tmp_path, field, value):
    from affaccel.bundle import load_bundle

    named = tmp_path / "elsewhere.pt"
    named.write_bytes(b"not weights: reading this file would fail")
    raw = torch.load(make_bundle(tmp_path / "b.pt", tasks=("va",)), weights_only=True)
    raw["encoder"]["config"][field] = str(named) if value == "NAMED_FILE" else value
    path = tmp_path / "pointing.pt"
    torch.save(raw, path)
    b = load_bundle(path)
    for k, v in raw["encoder"]["state_dict"].items():
        torch.testing.assert_close(b.encoder.state_dict()[k], v, rtol=0, atol=0)
    assert b.encoder.config.pretrained is None and b.encoder.config.checkpoint is None
