"""Named model presets and where the environments look for a trained backbone.

A preset is a timm model name plus keyword overrides for ``timm.create_model``; nothing here
builds a model. Any timm ViT/DeiT name (``"deit_small_patch16_224"``, ``"vit_base_patch16_reg4_gap_256"``)
is accepted wherever a preset name is.

========  =========================================  =======  ======  =====  ======  ========
preset    timm architecture                          image    patch   depth  width   tokens
========  =========================================  =======  ======  =====  ======  ========
micro     vit_tiny_patch16_224 (tests)               32       8       4      32      17
demo      vit_tiny_patch16_224 + conv stem           32       8       8      128     17
mini      vit_tiny_patch16_224 (patch dropping)      32       4       6      64      65
tiny      vit_tiny_patch16_224                       32       4       12     192     65
small     vit_small_patch16_224                      32       4       12     384     65
base      vit_base_patch16_224                       32       4       12     768     65
========  =========================================  =======  ======  =====  ======  ========
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "micro": {
        "model_name": "vit_tiny_patch16_224",
        "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2, "mlp_ratio": 2.0},
    },
    "demo": {
        "model_name": "vit_tiny_patch16_224",
        "kwargs": {
            "img_size": 32,
            "patch_size": 8,
            "embed_dim": 128,
            "depth": 8,
            "num_heads": 4,
            "mlp_ratio": 3.0,
            "stem": "conv",
        },
    },
    # AgentViT's geometry (64 patches of 4x4, depth 6) at half its width: the patch-dropping default,
    # where the blocks' work grows with the token count (at 17 tokens the fixed costs hide it on a CPU).
    "mini": {
        "model_name": "vit_tiny_patch16_224",
        "kwargs": {
            "img_size": 32,
            "patch_size": 4,
            "embed_dim": 64,
            "depth": 6,
            "num_heads": 2,
            "mlp_ratio": 2.0,
            "stem": "conv_lite",
        },
    },
    "tiny": {"model_name": "vit_tiny_patch16_224", "kwargs": {"img_size": 32, "patch_size": 4}},
    "small": {"model_name": "vit_small_patch16_224", "kwargs": {"img_size": 32, "patch_size": 4}},
    "base": {"model_name": "vit_base_patch16_224", "kwargs": {"img_size": 32, "patch_size": 4}},
}

#: Folder inside the package holding the shipped backbones.
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"  # the shipped backbones: vitskip_env/assets/


def preset_spec(name: str) -> tuple[str, dict[str, Any]] | None:
    """``(timm_model_name, kwargs)`` for a preset, or ``None`` if ``name`` is not a preset."""
    spec = PRESETS.get(name)
    if spec is None:
        return None
    return spec["model_name"], dict(spec["kwargs"])


def suggest_preset(name: str) -> str:
    """A "Did you mean ...?" hint for a misspelt preset (empty when nothing is close)."""
    hint = difflib.get_close_matches(name, list(PRESETS), n=1)
    return f" Did you mean {hint[0]!r}?" if hint else ""


def backbone_filename(preset: str, dataset: str) -> str:
    """File name of the trained backbone for ``preset`` on ``dataset`` (``demo-shapes.safetensors``)."""
    return f"{preset}-{dataset}.safetensors"


def user_backbone_path(preset: str, dataset: str) -> Path:
    """Where ``train/backbone.py`` writes by default: ``cache_dir()/backbones/<preset>-<dataset>.safetensors``."""
    from ..files import cache_dir

    return cache_dir() / "backbones" / backbone_filename(preset, dataset)


def find_backbone(preset: str, dataset: str) -> Path | None:
    """The trained backbone for ``preset`` on ``dataset``: the user's own first, else the shipped one.

    Returns ``None`` when neither exists.
    """
    for path in (user_backbone_path(preset, dataset), ASSETS_DIR / backbone_filename(preset, dataset)):
        if path.is_file():
            return path
    return None
