"""CLIP image encoder (open_clip), the expression fine-tuning head and their checkpoints.

Stage 1 of the paper (sec. 3.1): an open_clip image tower, by default ViT-B/16, with new fully
connected layers on its image embedding for the 8 expressions; every parameter is trained.

Weights come from an open_clip pretrained tag (needs the model hub), a local file (an affaccel
checkpoint or an open_clip CLIP state dict) or random init. Input size and normalisation are read
from the open_clip model's preprocess config, never from constants here.

Checkpoint format (one file, loads with no other file, ``torch.load(weights_only=True)``)::

    {"format": "affaccel-clip/1", "config": ClipConfig as a plain dict,
     "preprocess": {"size", "mean", "std", "interpolation", "resize_mode"},
     "identity": str, "encoder_state": {...}, "head_state": {...} (optional), ...extra keys}

This module imports torch and open_clip; ``import affaccel`` does not import it.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from affaccel.config import (
    CPU_MODEL,
    REGISTERED_MODELS,
    TINY_MODEL,
    ClipConfig,
    from_dict,
    to_dict,
)
from affaccel.device import autocast, resolve_precision
from affaccel.io_utils import atomic_torch_save

CHECKPOINT_FORMAT = "affaccel-clip/1"
_MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
# Bumped whenever the meaning of a feature changes without the weights changing (for example the
# encoder's forward), so feature caches written by older code are not reused.
_FEATURE_VERSION = 1


def register_model_configs() -> None:
    """Make affaccel's open_clip configs (``affaccel-vit-tiny``, ``affaccel-rn-tiny``) known to
    open_clip (idempotent)."""
    import open_clip

    if not set(REGISTERED_MODELS) <= set(open_clip.list_models()):
        open_clip.add_model_config(_MODEL_CONFIG_DIR)


def _preprocess_summary(pp: dict) -> dict:
    """The preprocessing fields that change a feature, as plain JSON types."""
    size = pp["size"]
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"only square model inputs are supported, got size {size}")
        size = size[0]
    return {
        "size": int(size),
        "mean": [float(m) for m in pp["mean"]],
        "std": [float(s) for s in pp["std"]],
        "interpolation": str(pp.get("interpolation", "bicubic")),
        "resize_mode": str(pp.get("resize_mode", "shortest")),
    }


def _hash_state(state: dict[str, torch.Tensor], h) -> None:
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # Raw bytes of any dtype (bf16 has no NumPy dtype), so equal hashes mean equal weights.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


class ClipEncoder(nn.Module):
    """open_clip image tower: images [B, 3, S, S] (normalised) -> embeddings [B, D].

    Attributes: ``image_size`` (S), ``mean``/``std`` (per-channel, 0..1 scale), ``feature_dim`` (D),
    ``config`` (ClipConfig), ``preprocess`` (dict from the open_clip model).
    """

    def __init__(self, visual: nn.Module, config: ClipConfig, preprocess: dict):
        super().__init__()
        self.visual = visual
        self.config = config
        self.preprocess = _preprocess_summary(preprocess)
        self.image_size = self.preprocess["size"]
        self.mean = tuple(self.preprocess["mean"])
        self.std = tuple(self.preprocess["std"])
        self.feature_dim = int(visual.output_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: [B, 3, S, S] normalised with ``mean``/``std`` -> [B, D]."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.image_size,) * 2:
            raise ValueError(
                f"ClipEncoder expects images [B, 3, {self.image_size}, {self.image_size}], "
                f"got {tuple(images.shape)}")
        x = self.visual(self._cpu_layout(images))
        if self.config.normalize:
            x = nn.functional.normalize(x, dim=-1)
        return x

    # Convolutional towers (the ResNets) run channels-last on CPU without autograd: oneDNN's
    # convolutions skip their activation layout reorders, and the values are the same (bitwise on the
    # tests' models; fp32 tolerance in tests/nn/test_clip_cpu.py). Measured on 2 EPYC cores,
    # affaccel-rn-tiny at 64 px, batch 64: 1.2-1.4x (bench/bench_cpu_inference.py). ViTs
    # (one patch convolution) are left as they are. False: always the contiguous layout.
    cpu_channels_last = True

    def _cpu_layout(self, images: torch.Tensor) -> torch.Tensor:
        if not self.cpu_channels_last or images.device.type != "cpu" or torch.is_grad_enabled():
            return images
        if "_n_conv" not in self.__dict__:
            self._n_conv = sum(isinstance(m, nn.Conv2d) for m in self.visual.modules())
        if self._n_conv < 2:
            return images
        # the input only: the first convolution's output, and so every later activation, is
        # channels-last too; the weights are left alone (converting them here, under
        # inference_mode, would turn them into inference tensors that training cannot use)
        return images.contiguous(memory_format=torch.channels_last)

    def preprocessing_identity(self) -> str:
        """Hash of the input preprocessing (size, mean, std, interpolation, resize mode)."""
        blob = json.dumps(self.preprocess, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def identity(self) -> str:
        """Stable hash of (model name, weights, preprocessing, feature semantics).

        Two encoders with equal identity give equal features for equal frames, so the feature cache
        keys on it. Hashes every weight byte (about 1 s for ViT-B/16 on a CPU core).
        """
        h = hashlib.sha256()
        meta = {"model": self.config.model_name, "normalize": self.config.normalize,
                "preprocess": self.preprocess, "feature_version": _FEATURE_VERSION}
        h.update(json.dumps(meta, sort_keys=True).encode())
        _hash_state(self.state_dict(), h)
        return h.hexdigest()[:24]


class ExpressionHead(nn.Module):
    """New fully connected layer(s) on the image embedding: [B, D] -> logits [B, num_classes]."""

    def __init__(self, in_dim: int, num_classes: int = 8, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        if hidden > 0:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, num_classes))
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FinetuneModel(nn.Module):
    """Encoder + expression head: images [B, 3, S, S] -> logits [B, 8]; all parameters train.

    ``aux_outputs`` > 0 adds one linear layer for auxiliary targets (multi-task fine-tuning,
    ours: valence/arousal and action units); ``forward`` then returns [B, 8 + aux_outputs], the
    expression logits first. The aux layer is saved as ``aux_head_state``.
    """

    def __init__(self, encoder: ClipEncoder, head: ExpressionHead | None = None,
                 aux_outputs: int = 0):
        super().__init__()
        cfg = encoder.config
        self.encoder = encoder
        self.head = head if head is not None else ExpressionHead(
            encoder.feature_dim, cfg.num_classes, cfg.head_hidden, cfg.head_dropout)
        self.aux = nn.Linear(encoder.feature_dim, aux_outputs) if aux_outputs > 0 else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(images)
        # The heads run in fp32 weights; under autocast their matmuls still take bf16.
        if self.aux is None:
            return self.head(feats)
        return torch.cat([self.head(feats), self.aux(feats)], dim=1)


class _RandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def weights_loaded_after():
    """Silence open_clip's "No pretrained weights loaded ... initialized randomly" while an
    architecture is built whose weights (a bundle's, a checkpoint's) are loaded right after:
    that message is true of the intermediate model only and misleads. Other messages pass."""
    notice = _RandomInitNotice()
    loggers = [logging.getLogger(), logging.getLogger("open_clip")]
    for lg in loggers:
        lg.addFilter(notice)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(notice)


def _open_clip_visual(cfg: ClipConfig, pretrained: str | None):
    """Build the open_clip model for ``cfg`` and keep only its image tower and preprocess cfg."""
    import open_clip

    register_model_configs()
    if cfg.model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {cfg.model_name!r}; expected one of "
                         f"{TINY_MODEL!r}, {CPU_MODEL!r} or an open_clip name such as 'ViT-B-16'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        try:
            model = open_clip.create_model(cfg.model_name, pretrained=pretrained)
        except RuntimeError as e:
            if pretrained is not None and not Path(pretrained).is_file():
                raise RuntimeError(
                    f"could not load open_clip weights {cfg.model_name}/{pretrained!r}: {e}. "
                    "Pretrained tags are downloaded from the model hub; without network access, "
                    "pass a local file as checkpoint instead.") from e
            raise
    preprocess = open_clip.get_model_preprocess_cfg(model)
    visual = model.visual
    del model  # drop the text tower: only the image encoder is used
    return visual, preprocess


def build_encoder(cfg: ClipConfig | None = None, **overrides) -> ClipEncoder:
    """ClipEncoder from a config: pretrained tag, local checkpoint file, or random init (fp32, CPU)."""
    cfg = replace(cfg or ClipConfig(), **overrides)
    resolve_precision(cfg.precision, "cpu")  # validate early
    if cfg.pretrained and cfg.checkpoint:
        raise ValueError("ClipConfig: give either pretrained (hub tag) or checkpoint (file), not both")
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        obj = _load_file(path)
        if isinstance(obj, dict) and "encoder_state" in obj:
            enc = _encoder_from_checkpoint(obj, path)
            # Keep the caller's runtime choices; architecture and weights come from the file.
            enc.config = replace(enc.config, precision=cfg.precision)
            return enc
        # Otherwise an open_clip CLIP state dict: open_clip loads it strictly into the architecture.
        visual, pp = _open_clip_visual(cfg, str(path))
        return ClipEncoder(visual, cfg, pp)
    visual, pp = _open_clip_visual(cfg, cfg.pretrained)
    return ClipEncoder(visual, cfg, pp)


def _load_file(path: Path) -> Any:
    from affaccel.io_utils import read_torch_file

    return read_torch_file(path, f"checkpoint file not found: {path}",
                           "not a readable torch checkpoint of tensors and plain values (truncated, damaged, "
                           "or saved with other objects)")


def _encoder_from_checkpoint(obj: dict, path: Path) -> ClipEncoder:
    missing = [k for k in ("config", "preprocess", "encoder_state") if k not in obj]
    if missing or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an affaccel CLIP checkpoint: expected format "
                         f"{CHECKPOINT_FORMAT!r} with keys config/preprocess/encoder_state; "
                         f"got format {obj.get('format')!r}, missing {missing}")
    try:
        cfg = from_dict(ClipConfig, obj["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad 'config' entry: {e}") from None
    # Architecture only: the weights come from this file, never from the hub or another file.
    cfg = replace(cfg, pretrained=None, checkpoint=None)
    visual = _visual_skeleton(cfg)
    if visual is None:
        with weights_loaded_after():
            visual, _ = _open_clip_visual(cfg, None)
    enc = ClipEncoder(visual, cfg, obj["preprocess"])
    _load_state(enc, obj["encoder_state"], path, "encoder_state", assign=True)
    leftover = [n for n, t in [*enc.named_parameters(), *enc.named_buffers()] if t.is_meta]
    if leftover:  # the file must fill every tensor of the skeleton
        raise ValueError(f"{path}: 'encoder_state' leaves tensors unset: {leftover[:5]}")
    return enc


def _visual_skeleton(cfg: ClipConfig) -> nn.Module | None:
    """The image tower's architecture with no storage (meta device), or None where unsupported.

    Loading a checkpoint into it with ``assign=True`` skips open_clip's random init and the text
    tower, which dominate load time on a CPU (ViT-B/16: seconds). Uses open_clip's internal
    ``_build_vision_tower``; timm towers (which may hold non-parameter tensors) and open_clip
    versions without it fall back to the full ``create_model``.
    """
    import open_clip

    try:
        from open_clip.model import _build_vision_tower
    except ImportError:
        return None
    register_model_configs()
    mc = open_clip.get_model_config(cfg.model_name)
    if mc is None or "timm_model_name" in mc.get("vision_cfg", {}) or mc.get("custom_text"):
        return None
    with torch.device("meta"):
        return _build_vision_tower(mc["embed_dim"], mc["vision_cfg"], mc.get("quick_gelu", False),
                                   None)


def _load_state(module: nn.Module, state: Any, path: Path, key: str, assign: bool = False) -> None:
    if not isinstance(state, dict):
        raise ValueError(f"{path}: {key!r} must be a state dict, got {type(state).__name__}")
    try:
        module.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as e:
        raise ValueError(f"{path}: {key!r} does not match the architecture in its config: {e}") from None


def load_encoder_checkpoint(path: str | Path) -> ClipEncoder:
    """ClipEncoder from an affaccel checkpoint file (fp32, CPU, eval mode).

    Raises FileNotFoundError (missing file) or ValueError (unreadable or wrong content), naming
    the path.
    """
    path = Path(path)
    return _encoder_from_checkpoint(_load_file(path), path).eval()


def load_finetune_checkpoint(path: str | Path) -> tuple[FinetuneModel, dict]:
    """(FinetuneModel, full checkpoint dict) from a checkpoint that has a ``head_state``."""
    path = Path(path)
    obj = _load_file(path)
    enc = _encoder_from_checkpoint(obj, path)
    if "head_state" not in obj:
        raise ValueError(f"{path} has no 'head_state': it holds an encoder only, not a fine-tuned model")
    aux = obj.get("aux_head_state")
    if aux is not None and (not isinstance(aux, dict) or "weight" not in aux):
        raise ValueError(f"{path}: 'aux_head_state' must be the state dict of a Linear layer")
    model = FinetuneModel(enc, aux_outputs=0 if aux is None else int(aux["weight"].shape[0]))
    _load_state(model.head, obj["head_state"], path, "head_state")
    if aux is not None:
        _load_state(model.aux, aux, path, "aux_head_state")
    return model.eval(), obj


def checkpoint_dict(encoder: ClipEncoder, head: nn.Module | None = None, **extra) -> dict:
    """The checkpoint payload (CPU tensors, plain-type config) for ``save_checkpoint``."""
    def cpu_state(m):
        return {k: v.detach().to("cpu").clone() for k, v in m.state_dict().items()}

    # The weights are in the file, so the saved config must not point at a hub tag or other file.
    cfg = replace(encoder.config, pretrained=None, checkpoint=None)
    obj = {
        "format": CHECKPOINT_FORMAT,
        "config": to_dict(cfg),
        "source": {"pretrained": encoder.config.pretrained, "checkpoint": encoder.config.checkpoint},
        "preprocess": copy.deepcopy(encoder.preprocess),
        "identity": encoder.identity(),
        "encoder_state": cpu_state(encoder),
    }
    if head is not None:
        obj["head_state"] = cpu_state(head)
    if isinstance(extra.get("aux_head_state"), nn.Module):
        extra["aux_head_state"] = cpu_state(extra["aux_head_state"])
    obj.update(extra)
    return obj


def save_checkpoint(path: str | Path, encoder: ClipEncoder, head: nn.Module | None = None,
                    **extra) -> Path:
    """Write an affaccel CLIP checkpoint atomically; ``extra`` adds plain-type entries."""
    path = Path(path)
    atomic_torch_save(checkpoint_dict(encoder, head, **extra), path)
    return path


__all__ = [
    "ClipConfig", "ClipEncoder", "ExpressionHead", "FinetuneModel", "TINY_MODEL", "CPU_MODEL",
    "build_encoder", "load_encoder_checkpoint", "load_finetune_checkpoint", "save_checkpoint",
    "checkpoint_dict", "register_model_configs", "autocast", "resolve_precision",
]
