"""One-file model bundle: the CLIP encoder and the temporal model of every trained task.

Layout of the file (``torch.save`` of plain containers and tensors, so it loads with
``torch.load(weights_only=True)``)::

    {"format": "affaccel-bundle", "version": 1,
     "encoder": {"config": ClipConfig dict, "preprocess": {...}, "identity": str,
                 "state_dict": {...}} | None,
     "window": WindowConfig dict,
     "tasks": {"va": {"config": TrainConfig dict (holds the TemporalConfig),
                      "state_dict": {...}, "metrics": {...}}, ...},
     "meta": {...}}

Inference (``affaccel.inference.predictor``) builds on :func:`load_bundle`; training writes one bundle
per run and :func:`add_task` merges another task's model into an existing bundle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affaccel import io_utils
from affaccel.config import WindowConfig, from_dict, to_dict

BUNDLE_FORMAT = "affaccel-bundle"
BUNDLE_VERSION = 1


@dataclass
class Bundle:
    encoder: Any                          # ClipEncoder (eval mode) or None
    encoder_config: Any                   # ClipConfig or None
    window: WindowConfig
    models: dict = field(default_factory=dict)    # task -> TemporalModel (eval mode)
    configs: dict = field(default_factory=dict)   # task -> TrainConfig
    metrics: dict = field(default_factory=dict)   # task -> validation metrics at training time
    meta: dict = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return sorted(self.models)


def _cpu_state(module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _encoder_entry(encoder) -> dict:
    from dataclasses import replace

    # the weights are in the bundle: the config must not point at a hub tag or another file
    cfg = replace(encoder.config, pretrained=None, checkpoint=None)
    return {"config": to_dict(cfg), "preprocess": dict(encoder.preprocess), "identity": encoder.identity(),
            "state_dict": _cpu_state(encoder)}


def bundle_dict(*, window: WindowConfig, tasks: dict, encoder=None, meta: dict | None = None) -> dict:
    """The bundle as a plain dict. encoder: ClipEncoder (the one the features came from) or
    None; tasks: {task: (TemporalModel, TrainConfig, metrics dict)}."""
    for t, (model, cfg, _) in tasks.items():
        if getattr(model, "cfg", cfg.model) != cfg.model:
            raise ValueError(f"bundle task {t!r}: the TrainConfig's model config {cfg.model} is not "
                             f"the model's own {model.cfg} (pass the config the run returned)")
    enc = None if encoder is None else _encoder_entry(encoder)
    return {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "encoder": enc, "window": to_dict(window),
        "tasks": {t: {"config": to_dict(cfg), "state_dict": _cpu_state(model), "metrics": dict(metrics or {})}
                  for t, (model, cfg, metrics) in tasks.items()},
        "meta": dict(meta or {}),
    }


def save_bundle(path: str | Path, **kwargs) -> Path:
    """Write a bundle atomically (keyword arguments as :func:`bundle_dict`)."""
    path = Path(path)
    io_utils.atomic_torch_save(bundle_dict(**kwargs), path)
    return path


def read_bundle_dict(path: str | Path) -> dict:
    """The raw bundle dict, checked, loaded with weights_only=True on CPU."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no bundle at {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or not a torch file
        raise ValueError(f"{path}: not a readable affaccel bundle ({e})") from e
    if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path}: not an affaccel bundle (format tag missing)")
    if raw.get("version") != BUNDLE_VERSION:
        raise ValueError(f"{path}: bundle version {raw.get('version')} is not supported "
                         f"(this affaccel reads version {BUNDLE_VERSION})")
    return raw


def load_bundle(path: str | Path, device: str = "cpu", tasks: list[str] | None = None) -> Bundle:
    """Rebuild the encoder and the temporal model(s) of a bundle, in eval mode on ``device``."""
    from affaccel.config import TrainConfig
    from affaccel.nn.temporal import TemporalModel

    raw = read_bundle_dict(path)
    encoder = enc_cfg = None
    if raw["encoder"] is not None:
        from affaccel.config import ClipConfig
        from affaccel.nn.clip import build_encoder

        enc_cfg = from_dict(ClipConfig, raw["encoder"]["config"])
        encoder = build_encoder(enc_cfg)  # architecture (random init), then the bundle's weights
        if encoder.preprocess != raw["encoder"]["preprocess"]:
            raise ValueError(f"{path}: the encoder's preprocessing {raw['encoder']['preprocess']} differs "
                             f"from what open_clip gives for {enc_cfg.model_name} ({encoder.preprocess})")
        encoder.load_state_dict(raw["encoder"]["state_dict"])
        encoder.to(device).eval()
    out = Bundle(encoder, enc_cfg, from_dict(WindowConfig, raw["window"]), meta=raw.get("meta", {}))
    wanted = list(raw["tasks"]) if tasks is None else tasks
    for task in wanted:
        if task not in raw["tasks"]:
            raise ValueError(f"{path}: bundle has no model for task {task!r} (it has {sorted(raw['tasks'])})")
        entry = raw["tasks"][task]
        cfg = from_dict(TrainConfig, entry["config"])
        model = TemporalModel(cfg.model)
        model.load_state_dict(entry["state_dict"])
        out.models[task], out.configs[task], out.metrics[task] = model.to(device).eval(), cfg, entry["metrics"]
    return out


def add_task(path: str | Path, source: str | Path, task: str | None = None) -> Path:
    """Copy the task model(s) of bundle ``source`` into bundle ``path`` (created from ``source``
    when absent). The encoders must be identical, or the features would not match."""
    src = read_bundle_dict(source)
    path = Path(path)
    if not path.is_file():
        io_utils.atomic_torch_save(src, path)
        return path
    dst = read_bundle_dict(path)
    if not _same_encoder(src["encoder"], dst["encoder"]):
        raise ValueError(f"{source} and {path} hold different encoders; their task models do not "
                         "share features and cannot be bundled together")
    if src["window"] != dst["window"]:
        raise ValueError(f"{source} and {path} use different windows ({src['window']} vs {dst['window']})")
    for t, entry in src["tasks"].items():
        if task is None or t == task:
            dst["tasks"][t] = entry
    io_utils.atomic_torch_save(dst, path)
    return path


def _same_encoder(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a["identity"] == b["identity"]  # hash of architecture, weights and preprocessing
