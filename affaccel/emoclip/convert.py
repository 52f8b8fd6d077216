"""Checkpoints saved by the EmoCLIP code (NickyFot/EmoCLIP, ``VClip``) -> affaccel's layout.

Their file is ``torch.save(model.state_dict())`` of ``VClip`` wrapped in DDP::

    module.backbone.*                 OpenAI CLIP (``clip.load("ViT-B/32")``), OpenAI names
    module.temporal.cls_token         [1, 1, 512]
    module.temporal.pos_embedding     [1, 1024, 512]
    module.temporal.temporal_transformer.layers.<i>.0.fn.norm.*            pre-attention LayerNorm
    module.temporal.temporal_transformer.layers.<i>.0.fn.fn.to_qkv.weight  [3 * heads * dim_head, 512]
    module.temporal.temporal_transformer.layers.<i>.0.fn.fn.to_out.0.*     [512, heads * dim_head]
    module.temporal.temporal_transformer.layers.<i>.1.fn.norm.*            pre-FF LayerNorm
    module.temporal.temporal_transformer.layers.<i>.1.fn.fn.net.0.*        [mlp_dim, 512]
    module.temporal.temporal_transformer.layers.<i>.1.fn.fn.net.3.*        [512, mlp_dim]
    module.logit_scale                scalar (VClip's own, trained; backbone.logit_scale unused)

(their run: heads 8, dim_head 2048, mlp_dim 512, 2 layers; tanh-approximated GELU, no final
norm). open_clip's CLIP keeps OpenAI's parameter names, so ``backbone.X`` becomes ``clip.X``;
the number of heads is not in the weights (``heads``, default 8) and neither is the CLIP
architecture (``model_name``, default ViT-B-32-quickgelu, as OpenAI's ViT-B/32 uses quick GELU).
"""
from __future__ import annotations

import re
from pathlib import Path

from affaccel.emoclip.config import EMOCLIP_BACKBONE, EMOCLIP_HEADS, EmoClipConfig, TemporalClsConfig

_PREFIXES = ("module.", "")
# keys of OpenAI's JIT archives that are not parameters
_OPENAI_NON_PARAMS = {"input_resolution", "context_length", "vocab_size"}
_LAYER = re.compile(r"^temporal\.temporal_transformer\.layers\.(\d+)\.([01])\.fn\.(.+)$")
_SUB = {("0", "norm.weight"): "attn_norm.weight", ("0", "norm.bias"): "attn_norm.bias",
        ("0", "fn.to_qkv.weight"): "qkv.weight",
        ("0", "fn.to_out.0.weight"): "out.weight", ("0", "fn.to_out.0.bias"): "out.bias",
        ("1", "norm.weight"): "ff_norm.weight", ("1", "norm.bias"): "ff_norm.bias",
        ("1", "fn.net.0.weight"): "ff1.weight", ("1", "fn.net.0.bias"): "ff1.bias",
        ("1", "fn.net.3.weight"): "ff2.weight", ("1", "fn.net.3.bias"): "ff2.bias"}


def _strip(state: dict) -> dict:
    """Drop DDP's ``module.`` prefix (when every key has it)."""
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def is_emoclip_layout(obj: dict) -> bool:
    """True for a state dict in the EmoCLIP code's layout (with or without ``module.``)."""
    keys = set(_strip(obj)) if all(isinstance(k, str) for k in obj) else set()
    return "temporal.cls_token" in keys and any(k.startswith("backbone.") for k in keys)


def convert_state_dict(obj: dict, path: str | Path = "<state dict>", model_name: str | None = None,
                       heads: int | None = None) -> tuple[EmoClipConfig, dict]:
    """(EmoClipConfig, state dict in EmoClipModel's names) from an EmoCLIP-code state dict.

    Raises ValueError naming ``path`` and the entry when a key is not one of their layout's, a
    layer is incomplete, or the widths do not fit ``heads``.
    """
    heads = EMOCLIP_HEADS if heads is None else int(heads)
    state = _strip(obj)
    out: dict = {}
    layers: dict[int, dict] = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            name = key[len("backbone."):]
            if name not in _OPENAI_NON_PARAMS:
                out["clip." + name] = value
        elif key in ("temporal.cls_token", "temporal.pos_embedding"):
            out[key] = value
        elif key == "logit_scale":
            out["logit_scale"] = value.reshape(())
        elif m := _LAYER.match(key):
            i, part, rest = int(m.group(1)), m.group(2), m.group(3)
            new = _SUB.get((part, rest))
            if new is None:
                raise ValueError(f"{path}: entry {key!r} is not part of the EmoCLIP temporal layout "
                                 f"(expected norm / fn.to_qkv / fn.to_out.0 / fn.net.0 / fn.net.3)")
            layers.setdefault(i, {})[new] = value
        else:
            raise ValueError(f"{path}: entry {key!r} is not part of the EmoCLIP checkpoint layout "
                             "(module.backbone.*, module.temporal.*, module.logit_scale)")
    for need in ("temporal.cls_token", "temporal.pos_embedding", "logit_scale"):
        if need not in out:
            raise ValueError(f"{path}: EmoCLIP checkpoint without its {need!r} entry")
    if sorted(layers) != list(range(len(layers))) or not layers:
        raise ValueError(f"{path}: temporal layers {sorted(layers)} are not numbered 0..n-1")
    for i, parts in layers.items():
        missing = sorted(set(_SUB.values()) - set(parts))
        if missing:
            raise ValueError(f"{path}: temporal layer {i} lacks {missing}")
        out.update({f"temporal.blocks.{i}.{k}": v for k, v in parts.items()})
    width = int(out["temporal.cls_token"].shape[-1])
    inner = int(layers[0]["qkv.weight"].shape[0]) // 3
    if inner % heads:
        raise ValueError(f"{path}: attention width {inner} is not a multiple of heads={heads}")
    tcfg = TemporalClsConfig(width=width, layers=len(layers), heads=heads, head_dim=inner // heads,
                             ff_dim=int(layers[0]["ff1.weight"].shape[0]),
                             max_len=int(out["temporal.pos_embedding"].shape[1]), dropout=0.0,
                             gelu="tanh", final_norm=False)
    cfg = EmoClipConfig(model_name=model_name or EMOCLIP_BACKBONE, temporal=tcfg)
    return cfg, out


__all__ = ["is_emoclip_layout", "convert_state_dict"]
