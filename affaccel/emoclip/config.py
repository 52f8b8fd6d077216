"""EmoCLIP configs: the video-text model and its training. Imports no torch.

Method: Foteinopoulou & Patras, "EmoCLIP: A Vision-Language Method for Zero-Shot Video Facial
Expression Recognition" (FG 2024, arXiv 2310.16640); values marked "EmoCLIP code" are those of
its public code (NickyFot/EmoCLIP: ``architecture/``, ``config.py``, ``train.py``), values marked
"ours" are not given there. ``EMOCLIP_PRESETS`` holds the paper's training values and a CPU preset.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from affaccel.config import from_dict, to_dict

# --- the EmoCLIP code's values (one place) --------------------------------------------------
EMOCLIP_BACKBONE = "ViT-B-32-quickgelu"  # OpenAI CLIP ViT-B/32 (quick GELU, as OpenAI trained it)
EMOCLIP_CONTEXT = 77          # text context length, longer captions truncated
EMOCLIP_WIDTH = 512           # temporal model width = CLIP ViT-B/32 embedding size
EMOCLIP_LAYERS = 2            # VClip(num_layers=2) in train.py
EMOCLIP_HEADS = 8             # nhead
EMOCLIP_HEAD_DIM = 2048       # their Attention gets dim_head=dim_forward=2048 (inner width 8 x 2048)
EMOCLIP_FF = 512              # their FeedForward gets mlp_dim=d_model=512
EMOCLIP_MAX_LEN = 1024        # learned position embedding rows
EMOCLIP_CLIP_LEN = 32         # sampled frames per clip (--clip_len)
EMOCLIP_STEP = 2              # keep every k-th frame (--downsample 2; 2-4 in their scripts)
EMOCLIP_LR = 1e-3             # SGD lr (--lr)
EMOCLIP_MOMENTUM = 0.9
EMOCLIP_WD = 5e-4             # weight decay (--wd)
EMOCLIP_TOWER_LR_SCALE = 1e-3  # fine-tuned CLIP towers train at lr * 0.001
EMOCLIP_EPOCHS = 50           # --num_epochs (30-50 in their scripts)
EMOCLIP_BATCH = 64            # per GPU in the paper's runs


@dataclass
class TemporalClsConfig:
    """The temporal Transformer over per-frame image embeddings (pre-LayerNorm blocks, CLS out)."""
    width: int = EMOCLIP_WIDTH        # token width; must equal the CLIP embedding size
    layers: int = EMOCLIP_LAYERS      # Transformer blocks (EmoCLIP code: 2)
    heads: int = EMOCLIP_HEADS        # attention heads (EmoCLIP code: 8)
    head_dim: int = EMOCLIP_HEAD_DIM  # width of one head (EmoCLIP code: 2048, so inner width 16384)
    ff_dim: int = EMOCLIP_FF          # feed-forward hidden width (EmoCLIP code: 512)
    max_len: int = EMOCLIP_MAX_LEN    # longest clip (+1 for CLS) the position embedding covers
    dropout: float = 0.0              # EmoCLIP code: 0
    gelu: str = "tanh"                # "tanh" (EmoCLIP code's GELU approximation) | "exact"
    final_norm: bool = False          # ours: LayerNorm on the CLS output (EmoCLIP code: none)

    def validate(self) -> "TemporalClsConfig":
        for name in ("width", "layers", "heads", "head_dim", "ff_dim", "max_len"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TemporalClsConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.gelu not in ("tanh", "exact"):
            raise ValueError(f"TemporalClsConfig.gelu must be 'tanh' or 'exact', got {self.gelu!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TemporalClsConfig.dropout must be in [0, 1), got {self.dropout}")
        return self


@dataclass
class EmoClipConfig:
    """The video-text model: an open_clip CLIP (both towers) + the temporal CLS Transformer."""
    model_name: str = EMOCLIP_BACKBONE   # open_clip architecture (affaccel-rn-tiny / -vit-tiny on CPU)
    pretrained: str | None = None        # open_clip tag, e.g. "openai" (needs the model hub)
    clip_checkpoint: str | None = None   # local open_clip / OpenAI CLIP state dict for both towers
    visual_checkpoint: str | None = None  # affaccel-clip checkpoint (stage 1) for the image tower only
    temporal: TemporalClsConfig = field(default_factory=TemporalClsConfig)  # see TemporalClsConfig
    context_length: int = EMOCLIP_CONTEXT  # text tokens; longer text is truncated (EOT kept last)
    logit_scale_init: float = 2.6592     # log(1/0.07), CLIP's init; trainable
    init_seed: int = 0                   # random init of everything not loaded from a file


@dataclass
class EmoClipTrainConfig:
    """Training of EmoCLIP: symmetric InfoNCE between clip and text embeddings."""
    model: EmoClipConfig = field(default_factory=EmoClipConfig)  # the model to build or start from
    supervision: str = "sample"         # "sample": each clip with its caption; "class": its class description
    labels: str = "affaccel"            # class descriptions (built-in set name or YAML/JSON file)
    freeze_visual: bool = True          # EmoCLIP default: both towers frozen
    freeze_text: bool = True            # frozen text tower: caption embeddings computed once
    tower_lr_scale: float = EMOCLIP_TOWER_LR_SCALE  # lr factor of unfrozen towers (EmoCLIP code)
    optimizer: str = "sgd"              # "sgd" (momentum 0.9, EmoCLIP code) | "adamw" (ours, CPU)
    lr: float = EMOCLIP_LR              # learning rate of the temporal model and logit scale
    momentum: float = EMOCLIP_MOMENTUM  # SGD momentum
    weight_decay: float = EMOCLIP_WD    # weight decay
    schedule: str = "constant"          # "constant" | "cosine" (ours)
    epochs: int = EMOCLIP_EPOCHS        # passes over the training clips
    batch_size: int = EMOCLIP_BATCH     # clips per step (the contrastive batch)
    clip_len: int = EMOCLIP_CLIP_LEN    # sampled frames per clip
    frame_step: int = EMOCLIP_STEP      # keep every k-th frame
    min_segment: int = 16               # ours: shortest labelled run of frames that makes a clip
    clips_per_segment: int = 1          # ours: random clips drawn per segment and epoch
    caption_seed: int = 0               # which paraphrase template each clip gets
    exclude_classes: tuple = ()         # class names left out of training (leave-one-out)
    seed: int = 0                       # init / shuffling seed
    device: str = "auto"                # auto / cpu / cuda
    precision: str = "auto"             # compute precision (bf16 autocast on CUDA)
    preset: str = "paper"               # which preset produced this config
    preset_changes: dict = field(default_factory=dict)  # fields the preset changed from the paper's

    def validate(self) -> "EmoClipTrainConfig":
        if self.supervision not in ("sample", "class"):
            raise ValueError(f"supervision must be 'sample' or 'class', got {self.supervision!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        for name in ("epochs", "batch_size", "clip_len", "frame_step", "min_segment", "clips_per_segment"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2: a contrastive batch needs negatives")
        self.model.temporal.validate()
        if self.clip_len + 1 > self.model.temporal.max_len:
            raise ValueError(f"clip_len {self.clip_len} + CLS exceeds temporal.max_len "
                             f"{self.model.temporal.max_len}")
        return self


# Paper values (EmoCLIP code) and ours for 2 CPU cores. The CPU preset has no pretrained CLIP:
# the image tower is the stage-1 encoder (frozen, cached features), the text tower of the small
# registered config learns from the captions (so it is trained at the full lr), AdamW because
# SGD at lr 1e-3 does not move a random-init text tower in a few hundred steps.
EMOCLIP_PRESETS: dict[str, dict] = {
    "paper": {},
    "cpu": {"model": {"model_name": "affaccel-rn-tiny",
                      "temporal": {"width": 128, "layers": 2, "heads": 4, "head_dim": 32,
                                   "ff_dim": 256, "max_len": 64, "final_norm": False}},
            "freeze_text": False, "tower_lr_scale": 1.0, "optimizer": "adamw", "lr": 1e-3,
            "weight_decay": 0.05, "schedule": "cosine", "epochs": 20, "batch_size": 32,
            "clip_len": 16, "frame_step": 2, "clips_per_segment": 2},
    "tiny": {"model": {"model_name": "affaccel-rn-tiny",
                       "temporal": {"width": 128, "layers": 1, "heads": 2, "head_dim": 16,
                                    "ff_dim": 32, "max_len": 16}},
             "freeze_text": False, "tower_lr_scale": 1.0, "optimizer": "adamw", "lr": 2e-3,
             "weight_decay": 0.0, "epochs": 2, "batch_size": 8, "clip_len": 8, "frame_step": 2,
             "min_segment": 8},
}


def _merge(base: dict, update: dict, changes: dict) -> None:
    for key, value in update.items():
        if key not in base:
            raise ValueError(f"unknown EmoCLIP training option {key!r}")
        if isinstance(value, dict) and isinstance(base[key], dict):
            _merge(base[key], value, changes.setdefault(key, {}))
        else:
            base[key] = value
            changes[key] = value


def emoclip_config(preset: str = "paper", **overrides) -> EmoClipTrainConfig:
    """An EmoClipTrainConfig from a preset, then overrides (None values ignored; nested dicts for
    ``model={...}``); the changes from the paper's values are recorded in ``preset_changes``."""
    if preset not in EMOCLIP_PRESETS:
        raise ValueError(f"unknown EmoCLIP preset {preset!r}; expected one of {sorted(EMOCLIP_PRESETS)}")
    flat = to_dict(EmoClipTrainConfig())
    changes: dict = {}
    _merge(flat, EMOCLIP_PRESETS[preset], changes)
    _merge(flat, {k: v for k, v in overrides.items() if v is not None}, changes)
    flat.update(preset=preset, preset_changes=changes)
    flat["exclude_classes"] = tuple(flat["exclude_classes"])
    return config_from_dict(flat).validate()


def config_from_dict(data: dict) -> EmoClipTrainConfig:
    cfg = from_dict(EmoClipTrainConfig, data)
    cfg.exclude_classes = tuple(cfg.exclude_classes)
    return cfg


def model_config_from_dict(data: dict) -> EmoClipConfig:
    return from_dict(EmoClipConfig, data)


__all__ = ["TemporalClsConfig", "EmoClipConfig", "EmoClipTrainConfig", "EMOCLIP_PRESETS",
           "emoclip_config", "config_from_dict", "model_config_from_dict", "to_dict"] + [
    n for n in dir() if n.startswith("EMOCLIP_")]
