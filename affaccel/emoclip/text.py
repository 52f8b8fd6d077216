"""Text side of EmoCLIP: embeddings of texts and of label sets (tokens cut to the context length
by open_clip's tokenizer, which keeps the end token last; see ``EmoClipModel.tokenize``)."""
from __future__ import annotations

from typing import Sequence

from affaccel.emoclip.descriptions import LabelSet


def text_embeddings(model, texts: Sequence[str], batch: int = 256):
    """L2-normalised text embeddings [N, D] (torch, CPU)."""
    import torch
    from torch.nn import functional as F

    dev = model.logit_scale.device
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            tok = model.tokenize(list(texts[i:i + batch])).to(dev)
            out.append(F.normalize(model.encode_text(tok).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros((0, model.embed_dim))


def class_embeddings(model, labels: LabelSet):
    """[C, D] class embeddings of a label set (descriptions averaged, compounds meaned)."""
    return labels.class_embeddings(lambda texts: text_embeddings(model, texts))


__all__ = ["text_embeddings", "class_embeddings"]
