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


def _need(entry: Any, path: Path, where: str, keys: tuple[str, ...]) -> None:
    """A named error when ``entry`` (the bundle's ``where``) lacks one of ``keys``."""
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: bundle entry {where!r} is {type(entry).__name__}, expected a dict; "
                         "the file is damaged or not written by affaccel: write it again with "
                         "affaccel.bundle.save_bundle (python -m affaccel.train does)")
    missing = [k for k in keys if k not in entry]
    if missing:
        name = ", ".join(f"{where}.{k}" if where else k for k in missing)
        raise ValueError(f"{path}: bundle has no {name} entry; the file is incomplete or from "
                         "another program: write it again with affaccel.bundle.save_bundle "
                         "(python -m affaccel.train does)")


def read_bundle_dict(path: str | Path) -> dict:
    """The raw bundle dict, checked, loaded with weights_only=True on CPU."""

    from affaccel.io_utils import read_torch_file

    path = Path(path)
    raw = read_torch_file(path, f"no bundle at {path}",
                          "not a readable affaccel bundle (truncated, damaged, or not written by affaccel.train)")
    if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path}: not an affaccel bundle (format tag missing)")
    if raw.get("version") != BUNDLE_VERSION:
        raise ValueError(f"{path}: bundle version {raw.get('version')} is not supported "
                         f"(this affaccel reads version {BUNDLE_VERSION})")
    _need(raw, path, "", ("encoder", "window", "tasks"))
    if raw["encoder"] is not None:
        _need(raw["encoder"], path, "encoder", ("config", "preprocess", "state_dict"))
    _need(raw["tasks"], path, "tasks", ())
    for t, entry in raw["tasks"].items():
        _need(entry, path, f"tasks.{t}", ("config", "state_dict"))
    return raw


def load_bundle(path: str | Path, device: str = "cpu", tasks: list[str] | None = None) -> Bundle:
    """Rebuild the encoder and the temporal model(s) of a bundle, in eval mode on ``device``."""
    from affaccel.config import TrainConfig
    from affaccel.nn.temporal import TemporalModel

    raw = read_bundle_dict(path)
    path = Path(path)
    encoder = enc_cfg = None
    if raw["encoder"] is not None:
        encoder, enc_cfg = _bundle_encoder(raw["encoder"], path)
        encoder.to(device).eval()
    out = Bundle(encoder, enc_cfg, _config(WindowConfig, raw["window"], path, "window"),
                 meta=raw.get("meta", {}))
    wanted = list(raw["tasks"]) if tasks is None else tasks
    for task in wanted:
        if task not in raw["tasks"]:
            raise ValueError(f"{path}: bundle has no model for task {task!r} (it has {sorted(raw['tasks'])})")
        entry = raw["tasks"][task]
        cfg = _config(TrainConfig, entry["config"], path, f"tasks.{task}.config")
        model = TemporalModel(cfg.model)
        _weights(model, entry["state_dict"], path, f"tasks.{task}.state_dict")
        out.models[task], out.configs[task] = model.to(device).eval(), cfg
        out.metrics[task] = entry.get("metrics", {})
    return out


def _config(cls, entry, path: Path, where: str):
    try:
        return from_dict(cls, entry)
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: bundle entry {where} is not a valid {cls.__name__} ({e}); write the "
                         "bundle again with this affaccel version") from None


def _weights(module, state, path: Path, where: str) -> None:
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise ValueError(f"{path}: bundle entry {where} does not fit the model its config describes "
                         f"({first}); the file is damaged or was edited: write it again") from None


def _bundle_encoder(entry: dict, path: Path):
    """(ClipEncoder, ClipConfig) of a bundle's encoder entry. The weights come from the bundle
    only: a hub tag or a file named in its config is not followed (it could be anything)."""
    from dataclasses import replace

    from affaccel.config import ClipConfig
    from affaccel.nn.clip import build_encoder, weights_loaded_after

    enc_cfg = replace(_config(ClipConfig, entry["config"], path, "encoder.config"), pretrained=None,
                      checkpoint=None)
    with weights_loaded_after():   # architecture (random init), then the bundle's weights
        encoder = build_encoder(enc_cfg)
    if encoder.preprocess != entry["preprocess"]:
        raise ValueError(f"{path}: the encoder's preprocessing {entry['preprocess']} differs "
                         f"from what open_clip gives for {enc_cfg.model_name} ({encoder.preprocess})")
    _weights(encoder, entry["state_dict"], path, "encoder.state_dict")
    return encoder, enc_cfg


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
