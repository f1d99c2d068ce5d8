"""vitskip environments: learn, per image, which Vision Transformer blocks to skip."""

from .backbone import SkippableViT, load_backbone, rows_per_block
from .data import ImageDataset, available_datasets, make_dataset
from .presets import PRESETS

__all__ = ["PRESETS", "ImageDataset", "SkippableViT", "available_datasets", "load_backbone", "make_dataset", "rows_per_block"]
__version__ = "0.1.0"
