"""The environments' keyword arguments, their validation, and building a ``SkipCore`` from them.

``ViTSkipEnv`` and ``ViTSkipVectorEnv`` accept exactly the fields of :class:`EnvOptions`; a
misspelt keyword is rejected with the closest valid name.

How ``backbone`` is resolved (``backbone_weights`` defaults to ``"trained"``):

=====================================  ==========================================================
``backbone``                           what the env runs
=====================================  ==========================================================
``None`` (default)                     the dataset's default preset (``demo`` for shapes,
                                       relations and digits, ``tiny`` otherwise), as for a
                                       preset name below
preset or timm model name              the trained file ``find_backbone(name, dataset)`` (your
                                       ``train/backbone.py`` output first, then the shipped one);
                                       if there is none: ``FileNotFoundError`` with the command
                                       to train it. With ``backbone_weights="random"``: an
                                       untrained model of that architecture instead
``"random"``                           an untrained model of the dataset's default preset
path to a ``.safetensors`` file        ``load_backbone(path)`` (a file from ``SkippableViT.save``), or
                                       the backbone of an exit file (``train/exits.py``)
``SkippableViT`` or timm ViT instance  used as is (moved to ``device``; shared, not copied)
=====================================  ==========================================================

Untrained models are initialised from a fixed seed (0) without touching the global torch RNG, so
every env built with the same arguments runs the same weights (``SyncVectorEnv`` sub-envs agree
with the native vector env). Built models take the dataset's class count and image size.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..data import ImageDataset, make_dataset
from ..model import PRESETS, SkippableViT, find_backbone, load_backbone, user_backbone_path
from ..model.costs import COST_MODELS, CostModel, block_costs
from ..model.exit_file import default_exit_path, is_exit_file, load_exit_model
from ..model.exits import ExitHeads
from ..observations import OBS_MODES, ObsMode, encoder_for
from ..rules import block_indices
from ..runtime import resolve_device
from .capacity import check_memory
from .core import SkipCore
from .cotrain import CotrainConfig, Cotrainer
from .exit_core import ExitCore, head_cost_shares
from .rewards import DEFAULT_WEIGHTS, WEIGHT_NAMES, RewardFn, RewardModel, check_weight
from .sampling import SAMPLING_MODES, Sampling

#: Preset used when ``backbone`` is ``None`` or ``"random"``.
DEFAULT_PRESET: dict[str, str] = {
    "shapes": "demo",
    "relations": "demo",
    "pointers": "demo",
    "digits": "demo",
    "cifar10": "tiny",
    "cifar100": "tiny",
    "tinyimagenet": "tiny",
}
BACKBONE_MODES: tuple[str, ...] = ("frozen", "cotrain")
#: ``"skip"``: Discrete(2) skip / execute; ``"skip_exit"``: Discrete(3) skip / execute / exit (needs exit heads).
ACTION_SETS: tuple[str, ...] = ("skip", "skip_exit")
BACKBONE_WEIGHTS: tuple[str, ...] = ("trained", "random")


@dataclass
class EnvOptions:
    """Keyword arguments of ``ViTSkipEnv`` / ``ViTSkipVectorEnv`` (documented on ``ViTSkipEnv``)."""

    dataset: str = "shapes"
    split: Literal["train", "val", "test"] = "train"
    backbone: str | os.PathLike | nn.Module | None = None
    backbone_weights: Literal["trained", "random"] = "trained"
    backbone_mode: Literal["frozen", "cotrain"] = "frozen"
    obs_mode: ObsMode = "flat"
    accuracy_weight: float = 1.0
    confidence_weight: float = 0.0
    compute_weight: float = DEFAULT_WEIGHTS["compute"]
    reward_fn: RewardFn | None = None
    cost_model: CostModel = "flops"
    min_blocks: int = 0
    always_execute: tuple[int, ...] = ()
    sampling: Sampling = "shuffle"
    num_images: int | None = None
    cotrain: CotrainConfig | Mapping[str, Any] | None = None
    data_root: str | os.PathLike | None = None
    download: bool = False
    device: str | torch.device = "auto"
    render_mode: str | None = None
    actions: Literal["skip", "skip_exit"] = "skip"
    exits: str | os.PathLike | ExitHeads | None = None
    compute_weight_range: tuple[float, float] | None = None

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], owner: str) -> EnvOptions:
        """Build from keyword arguments, rejecting unknown ones with the closest valid name."""
        check_kwargs(kwargs, owner)
        return cls(**kwargs)

    def validate(self) -> None:
        """Raise ``ValueError`` for an out-of-range choice (the message lists the valid ones)."""
        choices = {
            "backbone_mode": BACKBONE_MODES,
            "backbone_weights": BACKBONE_WEIGHTS,
            "obs_mode": OBS_MODES,
            "cost_model": COST_MODELS,
            "sampling": SAMPLING_MODES,
            "actions": ACTION_SETS,
            "split": ("train", "val", "test"),
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {list(valid)}, got {getattr(self, name)!r}")
        if self.render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {self.render_mode!r}")
        if self.num_images is not None and (not isinstance(self.num_images, int) or self.num_images < 1):
            raise ValueError(f"num_images must be a positive integer or None, got {self.num_images!r}")
        for kwarg in WEIGHT_NAMES:
            check_weight(getattr(self, kwarg), kwarg)
        self.always_execute = block_indices(self.always_execute)
        if self.exits is not None and self.actions != "skip_exit":
            raise ValueError("exits= gives the heads of the exit action; pass actions='skip_exit' with it")
        if self.actions == "skip_exit":
            if self.backbone_mode == "cotrain":
                raise ValueError("actions='skip_exit' runs a frozen backbone and heads; use backbone_mode='frozen'")
            if self.reward_fn is not None:
                raise ValueError(
                    "reward_fn is not supported with actions='skip_exit' (episodes end at different blocks); "
                    "use accuracy_weight, confidence_weight and compute_weight"
                )
        if self.compute_weight_range is not None:
            self.compute_weight_range = check_budget_range(self.compute_weight_range)
            if self.actions == "skip_exit" or self.reward_fn is not None:
                raise ValueError("compute_weight_range (budget-conditioned episodes) works with actions='skip' and the "
                                 "built-in reward only; drop actions='skip_exit' / reward_fn, or the range")  # fmt: skip
        if self.cotrain is not None and self.backbone_mode != "cotrain":
            raise ValueError("cotrain settings were given but backbone_mode is 'frozen'; pass backbone_mode='cotrain'")


def check_budget_range(value: Any) -> tuple[float, float]:
    """``compute_weight_range`` as ``(lo, hi)`` with ``0 < lo < hi`` finite (``ValueError`` saying what is allowed)."""
    try:
        lo, hi = (check_weight(v, "compute_weight_range") for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"compute_weight_range must be two compute weights (lo, hi), e.g. (0.02, 1.0); {err}") from None
    if not 0 < lo < hi:
        raise ValueError(f"compute_weight_range must satisfy 0 < lo < hi (log-uniform draws), got ({lo}, {hi})")
    return (lo, hi)


def option_names() -> list[str]:
    """The public keyword argument names."""
    return [f.name for f in fields(EnvOptions)]


def option_defaults() -> dict[str, Any]:
    """``{name: default}`` of the public keyword arguments."""
    return {f.name: f.default for f in fields(EnvOptions)}


def check_kwargs(kwargs: Mapping[str, Any], owner: str, extra_names: tuple[str, ...] = ()) -> None:
    """Reject unknown keyword arguments: ``TypeError`` naming the closest valid one.

    The message starts like Python's own (``X.__init__() got an unexpected keyword argument 'k'``).
    """
    names = option_names() + list(extra_names)
    for key in kwargs:
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            extra = f" Did you mean {hint[0]!r}?" if hint else ""
            # Python's own wording: clients that probe optional arguments (TorchRL's GymEnv passes
            # ``frameskip``) look for "unexpected keyword argument" to drop the argument and retry.
            raise TypeError(f"{owner}.__init__() got an unexpected keyword argument {key!r}.{extra} Valid: {sorted(names)}")


def load_split(opts: EnvOptions, device: torch.device) -> ImageDataset:
    """The dataset split on ``device``, limited to its first ``num_images`` images when asked.

    The first ``num_images`` are copied, not viewed: a view would keep the whole split alive (in
    memory, in every pickled env and in every spawned worker) to use a few images of it.
    """
    ds = make_dataset(opts.dataset, opts.split, opts.data_root, opts.download, device)
    if opts.num_images is None or opts.num_images >= len(ds):
        return ds
    n = opts.num_images
    diff = None if ds.difficulty is None else ds.difficulty[:n].clone()
    images, labels = ds.images[:n].clone(), ds.labels[:n].clone()
    return ImageDataset(ds.name, ds.split, images, labels, list(ds.classes), ds.mean, ds.std, diff)


def _untrained(name: str, ds: ImageDataset) -> SkippableViT:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return SkippableViT(name, num_classes=ds.num_classes, img_size=ds.image_size)


def _presets_hint(name: str) -> str:
    return "" if name in PRESETS else f" Presets: {sorted(PRESETS)}."


def _looks_like_path(value: str) -> bool:
    return value.endswith(".safetensors") or "/" in value or os.sep in value or Path(value).expanduser().is_file()


def resolve_backbone(
    backbone: str | os.PathLike | nn.Module | None, weights: str, ds: ImageDataset, device: torch.device
) -> SkippableViT:
    """The backbone an env runs, following the table in this module's docstring."""
    if isinstance(backbone, nn.Module):
        vit = backbone if isinstance(backbone, SkippableViT) else SkippableViT(backbone)
    elif isinstance(backbone, os.PathLike) or (isinstance(backbone, str) and _looks_like_path(backbone)):
        exit_file = is_exit_file(backbone)
        vit = load_exit_model(backbone)[1] if exit_file else load_backbone(backbone, num_classes=ds.num_classes)
    elif backbone is None or isinstance(backbone, str):
        random = backbone == "random" or weights == "random"
        name = DEFAULT_PRESET.get(ds.name, "demo") if backbone in (None, "random") else backbone
        if random:
            vit = _untrained(name, ds)
        else:
            path = find_backbone(name, ds.name)
            if path is None:
                raise FileNotFoundError(
                    f"No trained {name!r} backbone for dataset {ds.name!r}: looked for {user_backbone_path(name, ds.name)} "
                    f"and the shipped vitskip_env/assets/{name}-{ds.name}.safetensors. Train it with "
                    f"`python train/backbone.py --dataset {ds.name} --preset {name}`, pass a file with "
                    "backbone='path/to/file.safetensors', or use backbone_weights='random' (or backbone='random') "
                    "for an untrained backbone (tests, smoke runs)." + _presets_hint(name)
                )
            vit = load_backbone(path, num_classes=ds.num_classes)
    else:
        kind = type(backbone).__name__
        raise TypeError(f"backbone must be a path, a preset or timm name, 'random' or an nn.Module; got {kind}")
    if vit.num_classes != ds.num_classes:
        raise ValueError(
            f"the backbone has {vit.num_classes} output classes but dataset {ds.name!r} has {ds.num_classes}; "
            f"train one for it with `python train/backbone.py --dataset {ds.name}`"
        )
    if vit.img_size != ds.image_size:
        raise ValueError(
            f"the backbone takes {vit.img_size}x{vit.img_size} images but dataset {ds.name!r} has "
            f"{ds.image_size}x{ds.image_size}; use a backbone built for that size (img_size={ds.image_size})"
        )
    return vit.to(device).eval()


EXITS_HELP = (
    "actions='skip_exit' needs exit heads: pass exits='path/to/<backbone>-exits.safetensors' (written by "
    "`python train/exits.py --backbone <file or preset>`; it holds the backbone the heads were trained with) or "
    "exits='linear' (the backbone's own norm and classifier after blocks {positions}: no training)"
)


def _backbone_file(backbone: Any, weights: str, dataset: str) -> Path | None:
    """The backbone file an env would load (``None``: an untrained model or a module in memory)."""
    if isinstance(backbone, os.PathLike) or (isinstance(backbone, str) and _looks_like_path(backbone)):
        return Path(backbone).expanduser()
    if weights == "random" or backbone == "random" or not (backbone is None or isinstance(backbone, str)):
        return None
    return find_backbone(DEFAULT_PRESET.get(dataset, "demo") if backbone is None else backbone, dataset)


def resolve_exits(opts: EnvOptions, ds: ImageDataset, device: torch.device) -> tuple[SkippableViT, ExitHeads]:
    """The backbone and exit heads of ``actions="skip_exit"``.

    ``exits``: an exit file (its backbone replaces ``backbone``, which must then be left unset),
    ``"linear"`` (the backbone's own classifier at :func:`~vitskip_env.model.exits.default_layout`'s
    positions), an :class:`~vitskip_env.model.ExitHeads` of the backbone, or ``None``: the heads of
    ``backbone`` when it is an exit file, else the exit file ``train/exits.py`` writes for the
    backbone by default, if there is one.

    Raises:
        FileNotFoundError: No heads given and none trained for this backbone (the message says how to get them).
        ValueError: A backbone given beside an exit file, or heads for another backbone shape.
    """
    exits = opts.exits
    own = _backbone_file(opts.backbone, opts.backbone_weights, ds.name)
    if exits is None and own is not None and is_exit_file(own):
        _, vit, heads, _ = load_exit_model(own)  # an exit file as the backbone: its own heads
        return resolve_backbone(vit, "trained", ds, device), heads.to(device).eval()
    if exits is None:
        src = _backbone_file(opts.backbone, opts.backbone_weights, ds.name)
        default = default_exit_path(src) if src is not None else None
        if default is None or not default.is_file():
            vit = resolve_backbone(opts.backbone, opts.backbone_weights, ds, device)
            looked = f" (looked for {default})" if default is not None else ""
            raise FileNotFoundError(EXITS_HELP.format(positions=list(ExitHeads(vit).positions)) + looked)
        exits = default  # it carries the backbone fine-tuned from this one, which its heads read
    if isinstance(exits, str) and exits == "linear":
        vit = resolve_backbone(opts.backbone, opts.backbone_weights, ds, device)
        return vit, ExitHeads(vit, ExitHeads(vit).positions).to(device).eval()
    if isinstance(exits, ExitHeads):
        vit = resolve_backbone(opts.backbone, opts.backbone_weights, ds, device)
        if (exits.depth, exits.dim, exits.num_classes) != (vit.depth, vit.embed_dim, vit.num_classes):
            raise ValueError(
                f"the exit heads read a {exits.depth}-block, {exits.dim}-wide, {exits.num_classes}-class backbone, "
                f"this one is {vit.depth}-block, {vit.embed_dim}-wide, {vit.num_classes}-class"
            )
        return vit, exits.to(device).eval()
    if not isinstance(exits, (str, os.PathLike)):
        raise TypeError(f"exits must be a path, 'linear', ExitHeads or None; got {type(exits).__name__}")
    if opts.exits is not None and opts.backbone is not None:
        raise ValueError(
            "an exit file holds the backbone its heads were trained with, so backbone= must be left unset beside "
            f"exits={str(exits)!r}"
        )
    _, vit, heads, _ = load_exit_model(exits)
    resolve_backbone(vit, opts.backbone_weights, ds, device)  # checks classes and image size
    return vit.to(device).eval(), heads.to(device).eval()


def build_core(opts: EnvOptions, num_envs: int) -> SkipCore:
    """Resolve dataset, backbone, encoder, costs, rewards and cotrainer into a ``SkipCore`` (``ExitCore`` with exits)."""
    opts.validate()
    device = resolve_device(opts.device)
    ds = load_split(opts, device)
    weights = {"correct": opts.accuracy_weight, "confidence": opts.confidence_weight, "compute": opts.compute_weight}
    if opts.actions == "skip_exit":
        vit, heads = resolve_exits(opts, ds, device)
        encoder = encoder_for(vit, opts.obs_mode, exit_features=True)
        check_memory(vit, encoder.obs_dim, num_envs, device)
        return ExitCore(
            vit,
            ds,
            num_envs,
            encoder,
            RewardModel(weights),
            block_costs(vit, opts.cost_model),
            heads,
            head_cost_shares(heads, vit),
            min_blocks=opts.min_blocks,
            always_execute=tuple(opts.always_execute),
        )
    vit = resolve_backbone(opts.backbone, opts.backbone_weights, ds, device)
    encoder = encoder_for(vit, opts.obs_mode, budget_range=opts.compute_weight_range)
    check_memory(vit, encoder.obs_dim, num_envs, device)
    cotrainer = None
    if opts.backbone_mode == "cotrain":
        cotrainer = Cotrainer(vit, ds, CotrainConfig.from_value(opts.cotrain))
    return SkipCore(
        vit,
        ds,
        num_envs,
        encoder,
        RewardModel(weights, opts.reward_fn),
        block_costs(vit, opts.cost_model),
        min_blocks=opts.min_blocks,
        always_execute=tuple(opts.always_execute),
        cotrainer=cotrainer,
        budget_range=opts.compute_weight_range,
    )
