"""The EmoCLIP video-text model on open_clip: both CLIP towers, a temporal CLS Transformer over
the per-frame image embeddings, and a trainable logit scale.

    frames [B, T, 3, S, S] --CLIP image tower--> [B, T, D] --TemporalCls--> clip embedding [B, D]
    text tokens [B, 77]    --CLIP text tower---> [B, D]
    logits = exp(logit_scale) * normalize(video) @ normalize(text)^T

Checkpoint format (one file, ``torch.load(weights_only=True)``)::

    {"format": "affaccel-emoclip/1", "config": EmoClipConfig as a plain dict,
     "preprocess": {...image preprocessing...}, "state": model.state_dict(), ...extra keys}

``load_emoclip`` also reads checkpoints written by the EmoCLIP code (``VClip`` under DDP), through
``affaccel.emoclip.convert``. Imports torch and open_clip; ``import affaccel`` does not import it.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from affaccel.config import ClipConfig, to_dict
from affaccel.emoclip.config import EmoClipConfig, TemporalClsConfig, model_config_from_dict
from affaccel.io_utils import atomic_torch_save

FORMAT = "affaccel-emoclip/1"


class _Block(nn.Module):
    """Pre-LayerNorm block: x + attn(norm(x)), then x + ff(norm(x))."""

    def __init__(self, cfg: TemporalClsConfig):
        super().__init__()
        inner = cfg.heads * cfg.head_dim
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.attn_norm = nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * inner, bias=False)
        self.out = nn.Linear(inner, cfg.width)
        self.ff_norm = nn.LayerNorm(cfg.width)
        self.ff1 = nn.Linear(cfg.width, cfg.ff_dim)
        self.ff2 = nn.Linear(cfg.ff_dim, cfg.width)
        self.gelu = "tanh" if cfg.gelu == "tanh" else "none"
        self.drop = nn.Dropout(cfg.dropout)
        self.p_attn = cfg.dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.p_attn if self.training else 0.0)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, n, -1)))
        h = F.gelu(self.ff1(self.ff_norm(x)), approximate=self.gelu)
        return x + self.drop(self.ff2(self.drop(h)))


class TemporalCls(nn.Module):
    """Per-frame embeddings [B, T, W] (+ mask [B, T], True = real frame) -> CLS output [B, W].

    A learned CLS token is prepended, learned position embeddings added (rows 0..T), then
    ``layers`` pre-LayerNorm Transformer blocks; the CLS token's output is the clip embedding.
    """

    def __init__(self, cfg: TemporalClsConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.width))
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.max_len, cfg.width))
        self.blocks = nn.ModuleList([_Block(cfg) for _ in range(cfg.layers)])
        self.norm = nn.LayerNorm(cfg.width) if cfg.final_norm else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, w = x.shape
        if w != self.cfg.width:
            raise ValueError(f"TemporalCls expects frame embeddings [B, T, {self.cfg.width}], got {tuple(x.shape)}")
        if t + 1 > self.cfg.max_len:
            raise ValueError(f"clip of {t} frames + CLS exceeds max_len {self.cfg.max_len}")
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_embedding[:, : t + 1].to(x.dtype)
        attn_mask = None
        if mask is not None:
            keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), mask.bool()], 1)
            attn_mask = keep[:, None, None, :]         # [B, 1, 1, T+1]: keys to attend to
        for blk in self.blocks:
            x = blk(x, attn_mask)
        return self.norm(x[:, 0])


class EmoClipModel(nn.Module):
    """open_clip CLIP (image and text towers) + TemporalCls + logit scale.

    Attributes: ``config`` (EmoClipConfig), ``preprocess`` (image size / mean / std of the image
    tower), ``embed_dim`` (D), ``tokenizer`` (open_clip's, context ``config.context_length``).
    """

    def __init__(self, clip_model: nn.Module, config: EmoClipConfig, preprocess: dict):
        super().__init__()
        from affaccel.nn.clip import _preprocess_summary

        self.clip = clip_model
        self.config = config
        self.preprocess = _preprocess_summary(preprocess)
        self.embed_dim = int(clip_model.visual.output_dim)
        if config.temporal.width != self.embed_dim:
            raise ValueError(f"temporal.width {config.temporal.width} must equal the CLIP embedding "
                             f"size {self.embed_dim} of {config.model_name}")
        self.temporal = TemporalCls(config.temporal)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self._tokenizer = None

    # -- towers ----------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.config.model_name,
                                                      context_length=self.config.context_length)
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> tokens [N, context_length]; longer texts are cut, the end token kept last."""
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer(list(texts), context_length=self.config.context_length)

    def encode_frames(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, S, S] (normalised) -> per-frame embeddings [N, D] (not normalised)."""
        return self.clip.encode_image(images)

    def encode_video(self, frame_emb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """frame_emb [B, T, D] (+ mask [B, T]) -> clip embeddings [B, D] (not normalised)."""
        return self.temporal(frame_emb, mask)

    def encode_clips(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """frames [B, T, 3, S, S] -> clip embeddings [B, D], through the image tower."""
        b, t = frames.shape[:2]
        emb = self.encode_frames(frames.reshape(b * t, *frames.shape[2:])).reshape(b, t, -1)
        return self.encode_video(emb, mask)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, L] -> text embeddings [N, D] (not normalised)."""
        return self.clip.encode_text(tokens)

    def logits(self, video: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """video [B, D], text [C, D] embeddings -> scaled cosine similarities [B, C]."""
        v = F.normalize(video.float(), dim=-1)
        t = F.normalize(text.float(), dim=-1)
        return self.logit_scale.exp() * v @ t.t()

    def forward(self, frame_emb: torch.Tensor, tokens: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_per_video [B, N], logits_per_text [N, B]) from frame embeddings and tokens."""
        lv = self.logits(self.encode_video(frame_emb, mask), self.encode_text(tokens))
        return lv, lv.t()

    # -- parts -----------------------------------------------------------------------------
    def text_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.clip.named_parameters() if not n.startswith("visual.")
                and n != "logit_scale"]

    def visual_parameters(self) -> list[nn.Parameter]:
        return list(self.clip.visual.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """The parts EmoCLIP always trains: the temporal model and the logit scale."""
        return [*self.temporal.parameters(), self.logit_scale]

    def set_frozen(self, visual: bool, text: bool) -> None:
        for p in self.visual_parameters():
            p.requires_grad_(not visual)
        for p in self.text_parameters():
            p.requires_grad_(not text)
        self.clip.logit_scale.requires_grad_(False)   # CLIP's own scale is unused (ours is trained)

    def image_encoder(self):
        """The image tower as a ``ClipEncoder`` (shares its modules): feature cache, predictor."""
        from affaccel.nn.clip import ClipEncoder

        cfg = ClipConfig(model_name=self.config.model_name, normalize=False)
        return ClipEncoder(self.clip.visual, cfg, self.preprocess)


# -- building ------------------------------------------------------------------------------
def _create_clip(cfg: EmoClipConfig, pretrained: str | None):
    import open_clip

    from affaccel.nn.clip import register_model_configs

    register_model_configs()
    if cfg.model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {cfg.model_name!r}; expected an open_clip name such "
                         "as 'ViT-B-32-quickgelu' or 'affaccel-rn-tiny'")
    try:
        model = open_clip.create_model(cfg.model_name, pretrained=pretrained)
    except RuntimeError as e:
        if pretrained is not None and not Path(pretrained).is_file():
            raise RuntimeError(f"could not load open_clip weights {cfg.model_name}/{pretrained!r}: {e}. "
                               "Tags are downloaded from the model hub; without network access pass "
                               "a local file (clip_checkpoint) instead.") from e
        raise
    return model, open_clip.get_model_preprocess_cfg(model)


def build_emoclip(cfg: EmoClipConfig | None = None, **overrides) -> EmoClipModel:
    """An EmoClipModel (fp32, CPU): CLIP from a hub tag, a local CLIP file or random init; the
    image tower optionally from a stage-1 affaccel-clip checkpoint; the temporal model random."""
    cfg = replace(cfg or EmoClipConfig(), **overrides)
    if cfg.pretrained and cfg.clip_checkpoint:
        raise ValueError("EmoClipConfig: give either pretrained (hub tag) or clip_checkpoint (file), not both")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        clip_model, pp = _create_clip(cfg, cfg.pretrained or cfg.clip_checkpoint)
        model = EmoClipModel(clip_model, cfg, pp)
    if cfg.visual_checkpoint:
        from affaccel.nn.clip import load_encoder_checkpoint

        enc = load_encoder_checkpoint(cfg.visual_checkpoint)
        if enc.config.model_name != cfg.model_name:
            raise ValueError(f"{cfg.visual_checkpoint}: image tower of {enc.config.model_name!r}, "
                             f"the EmoCLIP model is {cfg.model_name!r}")
        model.clip.visual.load_state_dict(enc.visual.state_dict(), strict=True)
        model.preprocess = copy.deepcopy(enc.preprocess)
    return model


# -- checkpoints ---------------------------------------------------------------------------
def checkpoint_dict(model: EmoClipModel, **extra) -> dict:
    cfg = replace(model.config, pretrained=None, clip_checkpoint=None, visual_checkpoint=None)
    obj = {"format": FORMAT, "config": to_dict(cfg), "preprocess": copy.deepcopy(model.preprocess),
           "source": {"pretrained": model.config.pretrained, "clip_checkpoint": model.config.clip_checkpoint,
                      "visual_checkpoint": model.config.visual_checkpoint},
           "state": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}}
    obj.update(extra)
    return obj


def save_emoclip(path: str | Path, model: EmoClipModel, **extra) -> Path:
    """Write an affaccel EmoCLIP checkpoint atomically; ``extra`` adds plain-type entries."""
    path = Path(path)
    atomic_torch_save(checkpoint_dict(model, **extra), path)
    return path


def _read(path: Path) -> Any:
    from affaccel.io_utils import read_torch_file

    return read_torch_file(path, f"EmoCLIP checkpoint not found: {path}",
                           "not a readable torch checkpoint of tensors and plain values (truncated, damaged, "
                           "or saved with other objects)")


def load_emoclip(path: str | Path, model_name: str | None = None, heads: int | None = None,
                 return_extra: bool = False):
    """EmoClipModel (eval, CPU) from an affaccel EmoCLIP checkpoint or an EmoCLIP-code file.

    ``model_name`` / ``heads`` describe an EmoCLIP-code file (its state dict does not record them;
    defaults ViT-B-32-quickgelu and 8); they must not be given for affaccel checkpoints.
    Raises ValueError naming the file and the offending entry for any other layout.
    """
    from affaccel.emoclip import convert

    path = Path(path)
    obj = _read(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if model_name is not None or heads is not None:
            raise ValueError(f"{path} is an affaccel EmoCLIP checkpoint: it records its model; "
                             "drop model_name/heads")
        model = _from_ours(obj, path)
        extra = {k: v for k, v in obj.items() if k not in ("format", "config", "preprocess", "state")}
    elif isinstance(obj, dict) and convert.is_emoclip_layout(obj):
        cfg, state = convert.convert_state_dict(obj, path, model_name=model_name, heads=heads)
        model = _from_state(cfg, None, state, path)
        extra = {"source": {"emoclip_code_checkpoint": str(path)}}
    else:
        keys = sorted(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} is neither an affaccel EmoCLIP checkpoint (format {FORMAT!r}) nor an "
                         f"EmoCLIP-code state dict (keys module.backbone.* / module.temporal.*); "
                         f"format {obj.get('format') if isinstance(obj, dict) else None!r}, first keys {keys}")
    model = model.eval()
    return (model, extra) if return_extra else model


def convert_checkpoint(src: str | Path, dst: str | Path, model_name: str | None = None,
                       heads: int | None = None) -> Path:
    """Read an EmoCLIP-code file and write it as an affaccel EmoCLIP checkpoint (atomic)."""
    model, extra = load_emoclip(src, model_name=model_name, heads=heads, return_extra=True)
    return save_emoclip(dst, model, **extra)


def _from_ours(obj: dict, path: Path) -> EmoClipModel:
    for key in ("config", "preprocess", "state"):
        if key not in obj:
            raise ValueError(f"{path}: affaccel EmoCLIP checkpoint without its {key!r} entry")
    try:
        cfg = model_config_from_dict(obj["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad 'config' entry: {e}") from None
    return _from_state(cfg, obj["preprocess"], obj["state"], path)


def _from_state(cfg: EmoClipConfig, preprocess: dict | None, state: dict, path: Path) -> EmoClipModel:
    cfg = replace(cfg, pretrained=None, clip_checkpoint=None, visual_checkpoint=None)
    model = build_emoclip(cfg)
    if preprocess is not None:
        model.preprocess = copy.deepcopy(preprocess)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: 'state' must be a state dict, got {type(state).__name__}")
    mine = model.state_dict()
    missing = sorted(set(mine) - set(state))
    unexpected = sorted(set(state) - set(mine))
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match {cfg.model_name!r} with temporal "
                         f"{to_dict(cfg.temporal)}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(mine[k].shape):
            raise ValueError(f"{path}: entry {k!r} has shape {tuple(v.shape)}, the model "
                             f"{cfg.model_name!r} expects {tuple(mine[k].shape)}")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model


__all__ = ["EmoClipModel", "TemporalCls", "build_emoclip", "save_emoclip", "load_emoclip",
           "checkpoint_dict", "convert_checkpoint", "FORMAT"]
