"""Small models for tiny inputs (the digits demo) and a one-layer TextCNN for AG's News."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import MODELS
from .common import pooled_head, run_stages


class ConvNetSmall(nn.Module):
    """Two conv-BN-ReLU stages and a linear head; sized for 8x8-32x32 inputs."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                    nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True))
        self.fc = nn.Linear(2 * width, num_classes)
        self.feature_dim = 2 * width

    def forward(self, x: torch.Tensor) -> dict:
        feats: dict = {}
        return pooled_head(run_stages(x, (self.stage1, self.stage2), feats), self.fc, feats)


@MODELS.register("convnet_small")
def convnet_small(num_classes: int, in_channels: int = 1, image_size: int = 8, width: int = 32):
    return ConvNetSmall(num_classes, in_channels, width)


class TextCNN(nn.Module):
    """Kim (2014) one-layer TextCNN: embeddings, parallel convolutions (3/4/5), max-over-time."""

    def __init__(self, num_classes: int, vocab_size: int, embed_dim: int = 128, channels: int = 100,
                 kernel_sizes=(3, 4, 5), dropout: float = 0.5, embeddings: torch.Tensor | None = None):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        if embeddings is not None:
            self.embed.weight.data.copy_(embeddings)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, channels, k, padding=k // 2) for k in kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * len(kernel_sizes), num_classes)
        self.feature_dim = channels * len(kernel_sizes)

    def forward(self, tokens: torch.Tensor) -> dict:
        e = self.embed(tokens).transpose(1, 2)  # (B, E, L)
        maps = [F.relu(conv(e)) for conv in self.convs]
        pooled = torch.cat([m.amax(dim=2) for m in maps], dim=1)
        return {"logits": self.fc(self.dropout(pooled)), "features": {"pooled": pooled}}


def load_vectors(path: str, vocab: dict[str, int], vocab_size: int, dim: int) -> torch.Tensor:
    """Read a local GloVe-style text vectors file (`word v1 v2 ...`) into an embedding matrix."""
    from ..errors import DataError

    weights = torch.randn(vocab_size, dim) * 0.1
    weights[0] = 0
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip().split(" ")
                if parts[0] in vocab and len(parts) == dim + 1:
                    weights[vocab[parts[0]]] = torch.tensor([float(v) for v in parts[1:]])
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read word vectors {path}: {exc}") from None
    return weights


@MODELS.register("textcnn")
def textcnn(num_classes: int, in_channels: int = 0, image_size: int = 0, vocab_size: int = 20000,
            embed_dim: int = 128, channels: int = 100, dropout: float = 0.5, vectors: str = "",
            vocab: dict | None = None):
    """`vectors`: a local GloVe-style text file; its dimension must equal `embed_dim`."""
    emb = load_vectors(vectors, vocab or {}, vocab_size, embed_dim) if vectors else None
    return TextCNN(num_classes, vocab_size, embed_dim, channels, dropout=dropout, embeddings=emb)
