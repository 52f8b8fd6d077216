"""Every configuration dataclass and every preset. Imports no torch.

Paper: Zhou, Ling, Cai, "Emotion Recognition with CLIP and Sequential Learning", 8th ABAW
(arXiv 2503.09929). The paper's values live here, once, with the section they come from; values
the paper does not give are ours and marked "ours". A run saves its resolved config (``to_dict``)
and every checkpoint carries it, so ``from_dict`` rebuilds it with no other file.

    ClipConfig       the CLIP image encoder (stage 1 and 2)
    FinetuneConfig   stage 1: fine-tuning CLIP on frames            presets: finetune_preset()
    TemporalConfig   the temporal model (TCN -> Transformer -> MLP)
    TrainConfig      stage 3: training the temporal model           presets: make_config()
    WindowConfig     windows w / stride s
    JobSpec          the main job (data, presets, overrides)

The synthetic data set's sizes (``affaccel.data.synthetic.PRESETS``) describe data, not a model,
and stay with the generator.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affaccel.tasks import get_task

# --- Paper values (one place) -------------------------------------------------------------
PAPER_WINDOW = 300            # sec. 3.2: window length w in frames
PAPER_STRIDE = 200            # sec. 3.2: stride s in frames
PAPER_FINETUNE_LR = 1e-4      # sec. 3.1: AdamW learning rate for fine-tuning CLIP
PAPER_FINETUNE_BATCH = 256    # sec. 3.1: fine-tuning batch size
PAPER_TEMPORAL_LR = 3e-5      # sec. 4.2: AdamW learning rate of the temporal model
PAPER_TEMPORAL_WD = 1e-5      # sec. 4.2: weight decay
PAPER_DROPOUT = 0.3           # sec. 4.2: dropout
PAPER_BATCH = 32              # sec. 4.2: batch size of the temporal model
PAPER_WARMUP_EPOCHS = 1       # sec. 4.2: cosine schedule with one warm-up epoch
PAPER_BACKBONE = "ViT-B-16"   # sec. 3.1: CLIP ViT-B/16 image encoder
# Not given by the paper; ours, from the ABAW peers it follows (the sucv lineage of w = 300 /
# s = 200, TCNs of kernel 5 and 4 levels, 121 frames, up to 421): 4 blocks of two causal convs,
# dilations 1, 2, 4, 8, kernel 5 -> receptive field 1 + 2 * (5 - 1) * (1 + 2 + 4 + 8) = 121 frames.
# The earlier 2 levels of kernel 3 saw 13 frames, so "w/o TCN" removed almost nothing.
PEER_TCN_KERNEL = 5
PEER_TCN_CHANNELS = (256, 256, 256, 256)

# --- Encoder names (open_clip configs shipped in affaccel/nn/model_configs) ---------------
TINY_MODEL = "affaccel-vit-tiny"   # small registered ViT config (112 px) for tests
# The CPU preset's encoder: open_clip's CLIP ResNet ("ModifiedResNet", the RN50 family) cut to
# one block per stage, 16 base channels, 64 px. On the synthetic set it learns what the tiny ViT
# from random init does not (docs/clip_stage.md has the comparison); about 1.4 M parameters.
CPU_MODEL = "affaccel-rn-tiny"
REGISTERED_MODELS = (TINY_MODEL, CPU_MODEL)


@dataclass
class WindowConfig:
    window: int = PAPER_WINDOW   # frames per window (paper)
    stride: int = PAPER_STRIDE   # frames between window starts (paper); must be <= window


@dataclass
class ClipConfig:
    model_name: str = PAPER_BACKBONE  # open_clip architecture name (paper: ViT-B-16), or TINY_MODEL
    pretrained: str | None = None     # open_clip pretrained tag, e.g. "openai" (needs the model hub)
    checkpoint: str | None = None     # local file: affaccel checkpoint or open_clip CLIP state dict
    precision: str = "auto"           # compute precision: "auto" (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    normalize: bool = False           # L2-normalise the image embedding (ours: off, the head learns scale)
    head_hidden: int = 0              # fine-tuning head: 0 = one Linear, >0 = Linear-GELU-Linear (ours)
    head_dropout: float = 0.0         # dropout before the last head layer (ours)
    num_classes: int = 8              # expression classes (Aff-Wild2 EXPR)
    init_seed: int = 0                # seed of random init (used only without pretrained/checkpoint)


@dataclass
class FinetuneConfig:
    clip: ClipConfig = field(default_factory=ClipConfig)  # encoder + head (paper: ViT-B-16)
    lr: float = PAPER_FINETUNE_LR          # paper sec. 3.1: AdamW learning rate
    batch_size: int = PAPER_FINETUNE_BATCH  # paper sec. 3.1: effective batch (all ranks, accumulated)
    micro_batch_size: int = 0              # frames per forward per rank; 0 = batch_size / ranks
    weight_decay: float = 0.05             # ours (not given by the paper)
    epochs: int = 5                        # ours
    max_steps: int = 0                     # stop after this many optimizer steps (0 = no limit)
    frame_stride: int = 1                  # ours: train on every k-th usable frame of each video
    val_frame_stride: int = 1              # ours: validate on every k-th valid frame (1 = all)
    class_weights: bool = False            # inverse-frequency class weights in the cross-entropy
    label_smoothing: float = 0.0           # ours
    grad_clip: float = 1.0                 # ours: max gradient norm (0 = off)
    schedule: str = "constant"             # ours: "constant" lr, or "cosine" decay to 0 over the run
    augment: bool = True                   # DALI training augmentation (the loader's train mode)
    aux_tasks: tuple = ()                  # ours: also train heads for "va" (1 - CCC) and "au" (BCE)
    seed: int = 0                          # shuffling / augmentation seed
    num_threads: int = 2                   # DALI CPU threads per process
    backend: str = "auto"                  # frame loader backend (see affaccel.video.frames)


@dataclass
class TemporalConfig:
    task: str = "va"                 # va / expr / au: sets the output size and VA's tanh bound
    in_dim: int = 512                # feature size D (ViT-B/16 image embedding: 512); set from the cache
    use_tcn: bool = True             # False: ablation "without TCN" (a linear projection instead)
    tcn_channels: list = field(default_factory=lambda: list(PEER_TCN_CHANNELS))  # ours (ABAW peers): one block each
    tcn_kernel: int = PEER_TCN_KERNEL  # ours (ABAW peers): causal conv kernel; dilation 2**level
    use_transformer: bool = True     # False: ablation "without Transformer"
    transformer_layers: int = 2      # ours
    transformer_heads: int = 4       # ours; must divide the model width (tcn_channels[-1])
    transformer_ff: int = 512        # ours: feed-forward width of each Transformer layer
    positional: str = "sinusoidal"   # "sinusoidal" | "learned" positional encoding
    max_len: int = PAPER_WINDOW      # longest window for the learned encoding
    head_hidden: int = 128           # ours: hidden width of the MLP head
    dropout: float = PAPER_DROPOUT   # paper sec. 4.2

    @property
    def width(self) -> int:
        """Model width after the TCN (or the projection that replaces it)."""
        return int(self.tcn_channels[-1])

    @property
    def receptive_field(self) -> int:
        """Frames one TCN output sees (two causal convs per block, dilation 2**level); 1 without TCN."""
        if not self.use_tcn:
            return 1
        return 1 + 2 * (int(self.tcn_kernel) - 1) * sum(2 ** i for i in range(len(self.tcn_channels)))

    def validate(self) -> "TemporalConfig":
        get_task(self.task)
        if not self.tcn_channels or any(int(c) <= 0 for c in self.tcn_channels):
            raise ValueError(f"tcn_channels must be a non-empty list of positive ints, got {self.tcn_channels}")
        if self.width % self.transformer_heads:
            raise ValueError(f"transformer_heads={self.transformer_heads} must divide the model "
                             f"width tcn_channels[-1]={self.width}")
        if self.positional not in ("sinusoidal", "learned"):
            raise ValueError(f"positional must be 'sinusoidal' or 'learned', got {self.positional!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        return self


@dataclass
class TrainConfig:
    task: str = "va"                       # va / expr / au
    window: WindowConfig = field(default_factory=WindowConfig)  # paper: w = 300, s = 200
    model: TemporalConfig | None = None    # None = defaults for the task
    epochs: int = 30                       # ours (the paper does not give it)
    batch_size: int = PAPER_BATCH          # paper sec. 4.2
    lr: float = PAPER_TEMPORAL_LR          # paper sec. 4.2 (AdamW)
    weight_decay: float = PAPER_TEMPORAL_WD  # paper sec. 4.2
    warmup_epochs: int = PAPER_WARMUP_EPOCHS  # paper: cosine schedule after one warm-up epoch
    grad_clip: float = 1.0                 # ours: max gradient norm (0 = off)
    train_stride: int = 0                  # ours: stride of training windows (0 = window.stride)
    class_weights: bool = False            # EXPR / AU: weights from training label frequencies
    averaging: str = "uniform"             # overlap averaging weights: uniform / triangular / hann
    seed: int = 0
    device: str = "auto"                   # auto / cpu / cuda
    preset: str = "paper"                  # which preset produced this config (see TRAIN_PRESETS)
    preset_changes: dict = field(default_factory=dict)  # fields a preset changed from the paper's

    def __post_init__(self):
        if self.model is None:
            self.model = TemporalConfig(task=self.task)
        elif isinstance(self.model, dict):
            self.model = from_dict(TemporalConfig, self.model)
        if self.model.task != self.task:
            raise ValueError(f"model config is for task {self.model.task!r}, training task is {self.task!r}")
        get_task(self.task)
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")


@dataclass
class JobSpec:
    """The main job (``python -m affaccel.train``): which data, which presets, what to override."""
    task: str = "va"                      # va / expr / au
    data_root: Path | None = None         # Aff-Wild2-format root (any layout); None = built-in synthetic set
    annotations: Path | None = None       # separate annotation root (with frames; instead of data_root)
    frames: Path | None = None            # separate frame root (cropped_aligned folders)
    run_dir: Path | None = None           # None = AFFACCEL_HOME/runs/<task>-<time>
    resume: bool = False                  # continue the temporal stage from run_dir/last.pt
    preset: str | None = None             # paper / cpu / tiny; None = paper with a GPU or a data root
    synthetic: str = "default"            # synthetic set size when data_root is None
    finetune: bool = True                 # False: features of the non-fine-tuned encoder (ablation)
    pretrained: str | None = "auto"       # CLIP weights tag; auto = "openai" for the paper preset
    overrides: dict = field(default_factory=dict)  # TrainConfig overrides (None values ignored)
    progress: bool = True
    quiet_table: bool = False             # do not print the final table
    frames_backend: str = "auto"          # frame image decoder of stages 1 and 2: auto / dali / pil


# --- (de)serialisation ----------------------------------------------------------------------
def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def _dataclass_of(hint: Any) -> type | None:
    """The config dataclass a field annotation names (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def from_dict(cls, data: dict):
    """Rebuild a (nested) config dataclass from ``to_dict`` output; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    kwargs = {}
    for key, value in data.items():
        sub = _dataclass_of(hints[key])
        kwargs[key] = from_dict(sub, value) if sub is not None and isinstance(value, dict) else value
    return cls(**kwargs)


# --- stage 3 presets ------------------------------------------------------------------------
# Paper values, and ours for machines without a GPU. Each change from the paper is recorded in
# TrainConfig.preset_changes of the saved config.
TRAIN_PRESETS: dict[str, dict] = {
    "paper": {},
    # 2 CPU cores, minutes: a narrower model, more (denser) windows per epoch and a larger
    # learning rate, because lr 3e-5 needs far more steps than a CPU budget allows; class
    # weights for EXPR/AU, because with few, weak features rare classes never reach threshold.
    "cpu": {"epochs": 20, "lr": 1e-3, "train_stride": 100, "class_weights": True,
            "model": {"tcn_channels": [128, 128], "tcn_kernel": 3, "transformer_layers": 1,
                      "transformer_heads": 4, "transformer_ff": 256, "head_hidden": 64}},
    # tests and CI: seconds
    "tiny": {"epochs": 3, "lr": 2e-3, "batch_size": 8, "window": {"window": 32, "stride": 16},
             "model": {"tcn_channels": [16, 16], "tcn_kernel": 3, "transformer_layers": 1,
                       "transformer_heads": 2, "transformer_ff": 32, "head_hidden": 16, "max_len": 32}},
}
PRESET_NAMES = tuple(TRAIN_PRESETS)   # the presets every stage knows: paper / cpu / tiny


def make_config(task: str, preset: str = "paper", **overrides) -> TrainConfig:
    """A TrainConfig for ``task`` from a preset, then explicit overrides (None values ignored);
    model overrides go in ``model={...}``. Changes from the paper's values are recorded."""
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(TRAIN_PRESETS)}")
    flat = to_dict(TrainConfig(task=task))
    changes: dict = {}
    for source in (TRAIN_PRESETS[preset], {k: v for k, v in overrides.items() if v is not None}):
        for key, value in source.items():
            if key not in flat:
                raise ValueError(f"unknown training option {key!r}")
            if isinstance(value, dict) and isinstance(flat[key], dict):
                flat[key] = {**flat[key], **value}
                changes.setdefault(key, {}).update(value)
            else:
                flat[key] = value
                changes[key] = value
    flat.update(preset=preset, preset_changes=changes, task=task)
    flat["model"] = {**flat["model"], "task": task}
    return from_dict(TrainConfig, flat)


# --- stage 1 presets ------------------------------------------------------------------------
def finetune_preset(preset: str = "paper", pretrained: str | None = "auto") -> FinetuneConfig:
    """FinetuneConfig of a preset.

    paper: the paper's settings (ViT-B-16, AdamW lr 1e-4, batch 256), meant for a GPU, from
    open_clip's "openai" weights unless ``pretrained`` says otherwise ("auto" = "openai").
    cpu: a small CPU run (about 4-5 minutes on 2 cores on the built-in synthetic set), all ours:
    the small CLIP ResNet (``affaccel-rn-tiny``, 64 px) from random init, every 2nd frame, 10
    epochs with a cosine decay and no gradient clipping, with auxiliary valence/arousal and
    action-unit heads. lr is higher than the paper's because the model starts from random
    weights, not from CLIP's. docs/clip_stage.md shows why: the tiny ViT does not beat chance
    here, and EXPR-only supervision leaves valence weak.
    tiny: the cpu preset cut to seconds (tests).
    ``pretrained`` None or "auto" keeps the cpu/tiny presets' random init.
    """
    if preset not in PRESET_NAMES:
        raise ValueError(f"unknown preset {preset!r}; expected one of {list(PRESET_NAMES)}")
    if preset == "paper":
        tag = "openai" if pretrained == "auto" else pretrained
        return FinetuneConfig(clip=ClipConfig(pretrained=tag))
    cfg = FinetuneConfig(clip=ClipConfig(model_name=CPU_MODEL), lr=2e-3, batch_size=128,
                         epochs=10, frame_stride=2, val_frame_stride=2, weight_decay=0.05,
                         grad_clip=0.0, aux_tasks=("va", "au"), schedule="cosine")
    if pretrained not in ("auto", None):
        cfg = dataclasses.replace(cfg, clip=dataclasses.replace(cfg.clip, pretrained=pretrained))
    if preset == "tiny":
        cfg = dataclasses.replace(cfg, epochs=1, batch_size=32, frame_stride=6, val_frame_stride=6)
    return cfg


__all__ = [n for n in dir() if n.startswith("PAPER_")] + [
    "TINY_MODEL", "CPU_MODEL", "REGISTERED_MODELS", "WindowConfig", "ClipConfig",
    "FinetuneConfig", "TemporalConfig", "TrainConfig", "JobSpec", "to_dict", "from_dict",
    "TRAIN_PRESETS", "PRESET_NAMES", "make_config", "finetune_preset",
]
