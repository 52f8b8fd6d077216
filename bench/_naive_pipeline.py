"""The naive baseline of bench/throughput.py: what a competent user writes without affaccel.

It reads the same bundle file (a plain ``torch.load`` of its dicts), builds the open_clip model
and an eager TCN (``nn.Conv1d`` + chomp) + ``nn.TransformerEncoder`` + MLP with the bundle's
weights, and runs every video with plain, obvious code:

    PyAV decode frame by frame (library defaults) -> PIL image per frame
    -> per-frame square PIL crop of the face box + torchvision transforms
       (Resize bilinear on the PIL image, ToTensor, Normalize)
    -> open_clip ``encode_image`` in fp32, eager, ``torch.no_grad``, batches of 64
    -> Python loop cutting windows (w, s; the tail window ends on the last frame)
    -> eager temporal model on batches of 32 windows
    -> Python loop averaging the overlapping window predictions per frame.

Nothing in here imports affaccel (only the bench-local stage clock of ``_machine``): face
boxes come in as data (the same array the optimized pipeline gets), or from a caller-given
``track(frame)`` function in detection mode, so the face stage does the same work in both
pipelines.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import StageClock  # noqa: E402

TINY_CONFIG_DIR = Path(__file__).resolve().parents[1] / "affaccel" / "nn" / "model_configs"
# column count per task, and how raw outputs become predictions
TASK_DIMS = {"va": 2, "expr": 8, "au": 12}


# --------------------------------------------------------------------------------------------
# Models


class Chomp(nn.Module):
    """Drop the last ``n`` time steps that symmetric padding added (keeps the conv causal)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return x[:, :, :-self.n] if self.n else x


class Block(nn.Module):
    """Classic TCN block (Bai et al. 2018): x [B, C_in, T] -> [B, C_out, T]."""

    def __init__(self, c_in: int, c_out: int, k: int, dilation: int, dropout: float):
        super().__init__()
        pad = (k - 1) * dilation
        self.conv1 = nn.Conv1d(c_in, c_out, k, dilation=dilation, padding=pad)
        self.conv2 = nn.Conv1d(c_out, c_out, k, dilation=dilation, padding=pad)
        self.chomp = Chomp(pad)
        self.dropout = nn.Dropout(dropout)
        self.downsample = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x):
        h = self.dropout(torch.relu(self.chomp(self.conv1(x))))
        h = self.dropout(torch.relu(self.chomp(self.conv2(h))))
        res = x if self.downsample is None else self.downsample(x)
        return torch.relu(h + res)


class NaiveTCN(nn.Module):
    """x [B, T, D] -> [B, T, C]; parameter names match affaccel's TCN state dict."""

    def __init__(self, d: int, channels: list, k: int, dropout: float):
        super().__init__()
        widths = [d, *channels]
        self.blocks = nn.ModuleList(Block(widths[i], widths[i + 1], k, 2 ** i, dropout)
                                    for i in range(len(channels)))

    def forward(self, x):
        x = x.transpose(1, 2)
        for b in self.blocks:
            x = b(x)
        return x.transpose(1, 2)


def sinusoid(length: int, dim: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


class NaiveTemporal(nn.Module):
    """features [B, w, D], mask [B, w] -> predictions [B, w, K] (VA values, probabilities)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.task = cfg["task"]
        width = int(cfg["tcn_channels"][-1])
        if cfg["use_tcn"]:
            self.front = NaiveTCN(cfg["in_dim"], [int(c) for c in cfg["tcn_channels"]],
                                  cfg["tcn_kernel"], cfg["dropout"])
        else:
            self.front = nn.Sequential(nn.Linear(cfg["in_dim"], width), nn.ReLU(),
                                       nn.Dropout(cfg["dropout"]))
        self.encoder = None
        if cfg["use_transformer"]:
            if cfg["positional"] == "learned":
                self.pos = nn.Parameter(torch.zeros(cfg["max_len"], width))
            else:
                self.register_buffer("pos", sinusoid(cfg["max_len"], width), persistent=False)
            layer = nn.TransformerEncoderLayer(width, cfg["transformer_heads"],
                                               cfg["transformer_ff"], dropout=cfg["dropout"],
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, cfg["transformer_layers"],
                                                 norm=nn.LayerNorm(width),
                                                 enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(width, cfg["head_hidden"]), nn.GELU(),
                                  nn.Dropout(cfg["dropout"]),
                                  nn.Linear(cfg["head_hidden"], TASK_DIMS[self.task]))

    def forward(self, x, mask):
        h = self.front(x)
        if self.encoder is not None:
            h = h + self.pos[: h.shape[1]]
            h = self.encoder(h, src_key_padding_mask=~mask)
        y = self.head(h)
        if self.task == "va":
            return torch.tanh(y)
        if self.task == "expr":
            return torch.softmax(y, dim=-1)
        return torch.sigmoid(y)


class NaiveModels:
    """open_clip image model + one temporal model per task, from an affaccel bundle file."""

    def __init__(self, bundle_path, device):
        import open_clip

        raw = torch.load(bundle_path, map_location="cpu", weights_only=True)
        enc = raw["encoder"]
        name = enc["config"]["model_name"]
        if name not in open_clip.list_models():       # affaccel's small config is a JSON file
            open_clip.add_model_config(TINY_CONFIG_DIR)
        clip = open_clip.create_model(name)
        visual = {k[len("visual."):]: v for k, v in enc["state_dict"].items()}
        clip.visual.load_state_dict(visual)
        self.clip = clip.to(device).eval()
        self.normalize = bool(enc["config"].get("normalize", False))
        pp = enc["preprocess"]
        self.size, self.mean, self.std = int(pp["size"]), pp["mean"], pp["std"]
        self.window = int(raw["window"]["window"])
        self.stride = int(raw["window"]["stride"])
        self.models = {}
        for task in ("va", "expr", "au"):
            if task in raw["tasks"]:
                m = NaiveTemporal(raw["tasks"][task]["config"]["model"])
                m.load_state_dict(raw["tasks"][task]["state_dict"])
                self.models[task] = m.to(device).eval()
        self.device = torch.device(device)


# --------------------------------------------------------------------------------------------
# The pipeline


def square_crop(img, box, expand: float = 1.0):
    """PIL crop of the square around a face box (x, y, w, h); outside the frame is black."""
    x, y, w, h = box
    side = max(1, round(max(w, h) * expand))
    x0 = round(x + w / 2 - side / 2)
    y0 = round(y + h / 2 - side / 2)
    return img.crop((x0, y0, x0 + side, y0 + side))


def run_video(models: NaiveModels, path, boxes=None, track=None, expand: float = 1.0,
              clip_batch: int = 64, window_batch: int = 32, autocast_dtype=None):
    """Per-frame predictions of one video: ({task: [T, K] float64, NaN rows without a face},
    {stage: seconds}). boxes: [T', 4] array (x, y, w, h; NaN rows = no face; frames past T'
    have none) or track(frame_rgb [H, W, 3]) -> box or None. autocast_dtype: run the encoder
    and the temporal models under ``torch.autocast`` of that dtype (the "naive + bf16" row:
    what a user gets from precision alone)."""
    import av
    from torchvision import transforms as T

    dev = models.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    # the usual torchvision order: resize the PIL image (bilinear, antialiased when shrinking),
    # then to a 0..1 tensor, then normalise
    tf = T.Compose([T.Resize((models.size, models.size), T.InterpolationMode.BILINEAR),
                    T.ToTensor(), T.Normalize(models.mean, models.std)])
    clock = StageClock(("decode", "faces", "encoder", "temporal", "averaging"))

    feats, found, pending = [], [], []

    def amp():
        return torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    def encode_pending():
        with clock("encoder"):
            with torch.no_grad(), amp():
                f = models.clip.encode_image(torch.stack(pending).to(dev))
                if models.normalize:
                    f = torch.nn.functional.normalize(f, dim=-1)
                feats.extend(f.float().cpu())
            sync()
        pending.clear()

    with av.open(str(path)) as container:
        frames = container.decode(video=0)
        i = 0
        while True:
            with clock("decode"):
                frame = next(frames, None)
                img = frame.to_image() if frame is not None else None
            if frame is None:
                break
            with clock("faces"):
                if track is not None:
                    box = track(np.asarray(img))
                else:
                    box = boxes[i] if boxes is not None and i < len(boxes) else None
                ok = box is not None and not np.isnan(box).any() and box[2] > 0 and box[3] > 0
                if ok:
                    pending.append(tf(square_crop(img, box, expand)))
                found.append(ok)
            if len(pending) == clip_batch:
                encode_pending()
            i += 1
    if pending:
        encode_pending()

    n = len(found)
    if not any(found):
        return {t: np.full((n, TASK_DIMS[t]), np.nan) for t in models.models}, clock.s
    with clock("averaging"):
        starts, wins, masks = _windows(feats, found, models.window, models.stride)

    out = {}
    for task, model in models.models.items():
        with clock("temporal"):
            preds = []
            with torch.no_grad(), amp():
                for b in range(0, len(wins), window_batch):
                    xb = torch.stack(wins[b:b + window_batch]).to(dev)
                    mb = torch.stack(masks[b:b + window_batch]).to(dev)
                    preds.extend(model(xb, mb).float().cpu().numpy())
            sync()
        with clock("averaging"):
            out[task] = _average(starts, preds, n, models.window, TASK_DIMS[task], found)
    return out, clock.s


def _windows(feats, found, w: int, s: int):
    """Frames without a face get the previous face frame's feature (leading ones the first's);
    then the windows: (starts, windows [w, D] zero-padded, masks [w] bool)."""
    rows, k, last = [], 0, feats[0]
    for ok in found:
        if ok:
            last = feats[k]
            k += 1
        rows.append(last)
    x = torch.stack(rows)                                      # [T, D]
    n = len(found)

    # windows: 0, s, 2s, ... while they fit; one more ending on the last frame if needed;
    # a video shorter than w is one window padded with zeros
    starts = list(range(0, n - w + 1, s)) if n >= w else [0]
    if n >= w and starts[-1] + w < n:
        starts.append(n - w)
    wins, masks = [], []
    for a in starts:
        win = torch.zeros(w, x.shape[1])
        ln = min(w, n - a)
        win[:ln] = x[a:a + ln]
        m = torch.zeros(w, dtype=torch.bool)
        m[:ln] = True
        wins.append(win)
        masks.append(m)
    return starts, wins, masks


def _average(starts, preds, n: int, w: int, k: int, found) -> np.ndarray:
    """Python loop averaging window predictions [w, K] per frame -> [n, K], NaN without a face."""
    total = np.zeros((n, k))
    count = np.zeros(n)
    for a, p in zip(starts, preds):
        ln = min(w, n - a)
        total[a:a + ln] += p[:ln]
        count[a:a + ln] += 1
    avg = total / count[:, None]
    avg[~np.asarray(found)] = np.nan
    return avg


def describe() -> str:
    return json.dumps({"decode": "PyAV frame by frame, to_image (library defaults)",
                       "faces": "PIL square crop + torchvision Resize(PIL)/ToTensor/Normalize per frame",
                       "encoder": "open_clip encode_image fp32 eager, batch 64",
                       "temporal": "eager nn.Conv1d+chomp TCN, nn.TransformerEncoder, MLP",
                       "averaging": "Python loops over windows and frames"})
