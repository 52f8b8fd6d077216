"""EmoCLIP-code checkpoints: a random-init file written in their layout (DDP ``module.`` prefix,
``backbone.*`` in OpenAI CLIP names, ``temporal.*`` with their widths) loads into EmoClipModel and
computes what their model computes; files of another layout fail naming the file and entry."""
import math

import open_clip
import pytest
import torch
from torch import nn

from affaccel.emoclip.model import convert_checkpoint, load_emoclip
from affaccel.nn.clip import register_model_configs

DIM, HEADS, DIM_HEAD, MLP, DEPTH = 128, 2, 48, 64, 2


class TheirTemporal(nn.Module):
    """Their TemporalTransformer's structure and names (Residual(PreNorm(Attention / FeedForward)))."""

    def __init__(self):
        super().__init__()
        inner = HEADS * DIM_HEAD
        self.cls_token = nn.Parameter(torch.randn(1, 1, DIM))
        self.pos_embedding = nn.Parameter(torch.randn(1, 1024, DIM))
        layers = []
        for _ in range(DEPTH):
            attn = nn.Module()
            attn.fn = nn.Module()
            attn.fn.norm = nn.LayerNorm(DIM)
            attn.fn.fn = nn.Module()
            attn.fn.fn.to_qkv = nn.Linear(DIM, 3 * inner, bias=False)
            attn.fn.fn.to_out = nn.Sequential(nn.Linear(inner, DIM), nn.Dropout(0.0))
            ff = nn.Module()
            ff.fn = nn.Module()
            ff.fn.norm = nn.LayerNorm(DIM)
            ff.fn.fn = nn.Module()
            ff.fn.fn.net = nn.Sequential(nn.Linear(DIM, MLP), nn.Identity(), nn.Dropout(0.0), nn.Linear(MLP, DIM),
                                         nn.Dropout(0.0))
            layers.append(nn.ModuleList([attn, ff]))
        self.temporal_transformer = nn.Module()
        self.temporal_transformer.layers = nn.ModuleList(layers)

    def forward(self, x):
        b, n, _ = x.shape
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], 1) + self.pos_embedding[:, :n + 1]
        gelu = lambda y: 0.5 * y * (1 + torch.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y ** 3)))  # noqa: E731
        for attn, ff in self.temporal_transformer.layers:
            h = attn.fn.norm(x)
            q, k, v = (t.reshape(b, n + 1, HEADS, DIM_HEAD).permute(0, 2, 1, 3)
                       for t in attn.fn.fn.to_qkv(h).chunk(3, -1))
            a = torch.einsum("bhij,bhjd->bhid", (torch.einsum("bhid,bhjd->bhij", q, k) * DIM_HEAD ** -0.5)
                             .softmax(-1), v)
            x = attn.fn.fn.to_out(a.permute(0, 2, 1, 3).reshape(b, n + 1, -1)) + x
            net = ff.fn.fn.net
            x = net[3](gelu(net[0](ff.fn.norm(x)))) + x
        return x


@pytest.fixture(scope="module")
def their_file(tmp_path_factory):
    register_model_configs()
    torch.manual_seed(3)
    backbone = open_clip.create_model("affaccel-vit-tiny")
    temporal = TheirTemporal()
    state = {f"module.backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"module.temporal.{k}": v for k, v in temporal.state_dict().items()})
    state["module.logit_scale"] = torch.tensor(4.2)
    path = tmp_path_factory.mktemp("their") / "fold_1.pth"
    torch.save(state, path)
    return path, backbone.eval(), temporal.eval()


def test_their_checkpoint_computes_what_their_model_does(their_file):
    path, backbone, temporal = their_file
    model = load_emoclip(path, model_name="affaccel-vit-tiny", heads=HEADS)
    t = model.config.temporal
    assert (t.width, t.layers, t.heads, t.head_dim, t.ff_dim, t.max_len) == (DIM, DEPTH, HEADS, DIM_HEAD, MLP, 1024)
    assert float(model.logit_scale.detach()) == pytest.approx(4.2)
    x = torch.randn(3, 7, DIM)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_video(x), temporal(x)[:, 0], rtol=1e-4, atol=1e-5)
        tok = model.tokenize(["a dropped jaw", "pressed lips"])
        torch.testing.assert_close(model.encode_text(tok), backbone.encode_text(tok))
        img = torch.randn(2, 3, 112, 112)
        torch.testing.assert_close(model.encode_frames(img), backbone.encode_image(img))


def test_converted_file_round_trips(their_file, tmp_path):
    path, _, temporal = their_file
    out = convert_checkpoint(path, tmp_path / "ours.pt", model_name="affaccel-vit-tiny", heads=HEADS)
    model = load_emoclip(out)
    x = torch.randn(2, 5, DIM)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_video(x), temporal(x)[:, 0], rtol=1e-4, atol=1e-5)


def test_other_layouts_fail_naming_file_and_entry(their_file, tmp_path):
    path, _, _ = their_file
    state = torch.load(path, weights_only=True)
    bad = dict(state, **{"module.temporal.extra_head.weight": torch.zeros(2)})
    p = tmp_path / "extra.pth"
    torch.save(bad, p)
    with pytest.raises(ValueError, match=r"extra.pth: entry 'temporal.extra_head.weight'"):
        load_emoclip(p, model_name="affaccel-vit-tiny", heads=HEADS)
    p2 = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, p2)
    with pytest.raises(ValueError, match=r"other.pth is neither an affaccel EmoCLIP checkpoint"):
        load_emoclip(p2)
    with pytest.raises(ValueError, match=r"fold_1.pth: .*affaccel-rn-tiny"):   # wrong backbone for the weights
        load_emoclip(path, model_name="affaccel-rn-tiny", heads=HEADS)
    with pytest.raises(ValueError, match="not a multiple of heads=5"):
        load_emoclip(path, model_name="affaccel-vit-tiny", heads=5)
