"""Text tower: captions longer than the context are cut to 77 tokens with the end token last,
and the cut text embeds like its first 75 word tokens."""
import pytest
import torch

from affaccel.emoclip.config import EmoClipConfig, TemporalClsConfig
from affaccel.emoclip.model import build_emoclip

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def model():
    return build_emoclip(EmoClipConfig(model_name="affaccel-rn-tiny",
                                       temporal=TemporalClsConfig(width=128, layers=1, heads=2, head_dim=8,
                                                                  ff_dim=16, max_len=16))).eval()


def test_long_caption_is_truncated_to_context(model):
    long = " ".join(["raised inner brows and a dropped jaw"] * 40)     # ~280 tokens
    tok = model.tokenize([long, "a smile"])
    assert tok.shape == (2, 77)
    assert tok[0, 0] == SOT and tok[0, -1] == EOT and (tok[0] > 0).all()
    assert tok[1, 3] == EOT and (tok[1, 4:] == 0).all()


def test_truncated_text_embeds_as_its_first_tokens(model):
    words = "raised inner brows and a dropped jaw " * 40
    full = model.tokenize([words])
    body = full[0, 1:76]
    # an independent build of the same 77 tokens from the tokenizer's raw encoding
    raw = model.tokenizer.encode(words)[:75]
    assert body.tolist() == raw
    manual = torch.tensor([[SOT, *raw, EOT]])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(full), model.encode_text(manual))
