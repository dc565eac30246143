"""Small models for tiny inputs (the digits demo) and a one-layer TextCNN for AG's News."""
from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
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
        if vocab_size < 1:  # row 0 is the padding token
            raise ConfigError(f"a TextCNN needs vocab_size >= 1, got {vocab_size}")
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
    """A (vocab_size, dim) embedding matrix: the rows of the vocabulary's words from a local
    GloVe-style text file (`word v1 ... vD` per line; a word2vec `COUNT D` first line is skipped),
    N(0, 0.1^2) for words the file lacks, zeros for padding (id 0).

    Fields are separated by single spaces. A file of another dimension than `dim`, or one that holds
    none of the vocabulary's words (another language, a binary file), is an error: either would
    silently leave the embeddings random."""
    from ..errors import DataError

    weights = torch.randn(vocab_size, dim) * 0.1
    weights[0] = 0
    found = 0
    try:
        with open(path, encoding="utf-8-sig") as f:  # (a byte-order mark would hide the first word)
            first = f.readline()
            fields = first.rstrip().split(" ")  # (fastText / word2vec end lines with a space)
            header = len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit()  # word2vec's `COUNT D`
            file_dim = int(fields[1]) if header else len(fields) - 1
            if file_dim != dim:
                raise DataError(f"word vectors {path} have {file_dim} dimensions, model.kwargs.embed_dim is {dim}: "
                                f"set embed_dim={file_dim} or use a {dim}-dimensional file")
            for line in itertools.chain([] if header else [first], f):
                word, _, rest = line.partition(" ")
                idx = vocab.get(word)
                if idx is None or idx >= vocab_size:
                    continue
                values = rest.rstrip().split(" ")
                if len(values) != dim:  # a phrase with spaces (GloVe 840B), not this word's row
                    continue
                weights[idx] = torch.tensor([float(v) for v in values])
                found += 1
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read word vectors {path}: {exc}") from None
    if vocab and not found:
        raise DataError(f"word vectors {path} hold none of the vocabulary's {len(vocab)} words: not word vectors "
                        f"of this text's language (GloVe's lower-case English files fit AG's News)")
    return weights


@MODELS.register("textcnn")
def textcnn(num_classes: int, in_channels: int = 0, image_size: int = 0, vocab_size: int = 20000,
            embed_dim: int = 128, channels: int = 100, dropout: float = 0.5, vectors: str = "",
            vocab: dict | None = None):
    """`vectors`: a local GloVe-style text file (read with the data's `vocab`, which the experiment
    passes); its dimension must equal `embed_dim`."""
    emb = load_vectors(vectors, vocab or {}, vocab_size, embed_dim) if vectors else None
    return TextCNN(num_classes, vocab_size, embed_dim, channels, dropout=dropout, embeddings=emb)
