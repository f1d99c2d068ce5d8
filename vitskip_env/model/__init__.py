"""The model wing: everything that touches timm. Knows nothing of datasets or environments.

``SkippableViT`` (embed / run one block on a subset of rows / head), loading and the safetensors file
format (no pickle; every header size checked before anything is allocated), presets, stems, per-block
costs, the class-token shortcut, early-exit heads with their file format, token merging (ToMe) and patch
selection (patches removed before the first block).
"""

from __future__ import annotations

from .backbone import SkippableViT, rows_per_block, run_executing_rows
from .class_token import class_token_ready, run_block_class_token
from .costs import block_costs, flops_costs, latency_costs
from .exit_file import backbone_fingerprint, load_exit_heads
from .exits import HEAD_KINDS, ExitHead, ExitHeads, default_layout
from .fileformat import VitskipFileError, check_save_path, on_meta, read_vitskip_file
from .loading import backbone_from_config, load_backbone
from .merging import TokenMergingViT, merge_schedule, run_block_merged
from .patch_select import PatchKeptViT, kept_count, select_patches
from .presets import PRESETS, find_backbone, preset_spec, suggest_preset, user_backbone_path
from .stems import resolve_stem

__all__ = [
    "HEAD_KINDS",
    "PRESETS",
    "ExitHead",
    "ExitHeads",
    "PatchKeptViT",
    "SkippableViT",
    "TokenMergingViT",
    "VitskipFileError",
    "backbone_fingerprint",
    "backbone_from_config",
    "block_costs",
    "check_save_path",
    "class_token_ready",
    "default_layout",
    "find_backbone",
    "flops_costs",
    "kept_count",
    "latency_costs",
    "load_backbone",
    "load_exit_heads",
    "merge_schedule",
    "on_meta",
    "preset_spec",
    "read_vitskip_file",
    "resolve_stem",
    "rows_per_block",
    "run_block_class_token",
    "run_block_merged",
    "run_executing_rows",
    "select_patches",
    "suggest_preset",
    "user_backbone_path",
]
