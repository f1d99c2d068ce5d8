"""Optional convolutional stem for timm ViTs ("Early Convolutions Help Transformers See Better",
Xiao et al., 2021): a few strided 3x3 convolutions replace the single linear patch projection.

It subclasses timm's ``PatchEmbed`` and swaps only its ``proj``, so timm's own forward (image
size checks, flattening, norm) and everything downstream stay untouched. It makes small ViTs
trained from scratch converge several times faster, which is what lets the ``demo`` backbone
train in minutes on a CPU. Selected in a preset or override with ``stem="conv"``.
"""

from __future__ import annotations

import math
from typing import Any

from timm.layers import PatchEmbed
from torch import nn


class ConvStemPatchEmbed(PatchEmbed):
    """``PatchEmbed`` whose projection is ``log2(patch)`` stride-2 conv-norm-GELU stages plus a 1x1 conv.

    Stage ``s`` of ``S`` has ``embed_dim / 2**(S - 1 - s + narrow)`` channels (at least 16), ``narrow``
    being the class attribute :attr:`narrow`.
    """

    #: Halve every stage's width this many times (0: the paper's widths).
    narrow = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        patch = self.patch_size[0]
        if patch != self.patch_size[1] or patch < 2 or 2 ** round(math.log2(patch)) != patch:
            raise ValueError(f"the conv stem needs a square power-of-two patch size, got {self.patch_size}")
        embed_dim = self.proj.out_channels
        in_chans = self.proj.in_channels
        stages = round(math.log2(patch))
        layers: list[nn.Module] = []
        c_in = in_chans
        for s in range(stages):
            c_out = max(16, embed_dim // 2 ** (stages - 1 - s + self.narrow))
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.GroupNorm(1, c_out), nn.GELU()]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, embed_dim, 1))
        self.proj = nn.Sequential(*layers)


class LiteConvStemPatchEmbed(ConvStemPatchEmbed):
    """The conv stem at half width: about a quarter of its FLOPs (for the ``demo`` preset, ~0.3 of a block)."""

    narrow = 1


STEMS: dict[str, type[PatchEmbed]] = {"conv": ConvStemPatchEmbed, "conv_lite": LiteConvStemPatchEmbed}


def resolve_stem(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn a JSON-able ``stem="conv"`` entry into timm's ``embed_layer`` argument."""
    kwargs = dict(kwargs)
    stem = kwargs.pop("stem", None)
    if stem is not None and stem != "patch":
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose 'patch' (timm's linear projection) or one of {sorted(STEMS)}")
        kwargs["embed_layer"] = STEMS[stem]
    return kwargs
