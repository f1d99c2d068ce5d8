"""What ``train/backbone.py`` reads and writes, checked before any work.

Its arguments (numbers out of range are refused before any folder or file is made), its output
files (a backbone, or any of its side files, already at ``--out`` is never overwritten unless
``--overwrite`` is given; an interrupted training there is resumed) and its ``.ckpt.pt``
checkpoint (read without unpickling arbitrary objects, and refused with a clear message when it
holds another architecture than the one the command builds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

WEIGHTS_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class Outputs:
    """Every file a run writes for the backbone ``weights``: its side files share its stem."""

    weights: Path
    """the backbone (``SkippableViT.save``)"""
    config: Path
    """its readable ``.json`` copy of the config (written by ``SkippableViT.save``)"""
    record: Path
    """the Markdown record of how it was made"""
    log: Path
    """the evaluation history as CSV"""
    checkpoint: Path
    """the resumable training state"""

    @classmethod
    def at(cls, weights: Path) -> Outputs:
        """The outputs of a run writing ``weights``.

        Raises:
            ValueError: ``weights`` does not end in ``.safetensors`` (a side file could then be the
                backbone itself, like ``--out w.md``) or is a folder.
        """
        if weights.suffix != WEIGHTS_SUFFIX:
            raise ValueError(
                f"--out {str(weights)!r} must end in {WEIGHTS_SUFFIX} (its side files .json, .md, .log.csv and .ckpt.pt "
                f"take the same name); give e.g. --out {weights.with_name(weights.name + WEIGHTS_SUFFIX)}"
            )
        if weights.is_dir():
            raise ValueError(
                f"--out {str(weights)!r} is a folder; give the backbone file to write, e.g. {weights / 'bb'}.safetensors"
            )
        return cls(
            weights=weights,
            config=weights.with_suffix(".json"),
            record=weights.with_suffix(".md"),
            log=weights.with_suffix(".log.csv"),
            checkpoint=weights.with_suffix(".ckpt.pt"),
        )

    def all(self) -> tuple[Path, ...]:
        """The five paths, weights first."""
        return self.weights, self.config, self.record, self.log, self.checkpoint


def check_args(args: Any) -> None:
    """Refuse numeric arguments that make no sense, naming the flag, what is allowed and the value.

    Raises:
        ValueError: the first argument out of range.
    """
    rules: list[tuple[str, object, bool, str]] = [
        ("epochs", args.epochs, args.epochs >= 1, ">= 1"),
        ("batch-size", args.batch_size, args.batch_size >= 1, ">= 1"),
        ("eval-every", args.eval_every, args.eval_every >= 1, ">= 1 (epochs between evaluations)"),
        ("lr", args.lr, math.isfinite(args.lr) and args.lr > 0, "a number > 0"),
        ("warmup-epochs", args.warmup_epochs, math.isfinite(args.warmup_epochs) and args.warmup_epochs >= 0, ">= 0"),
        ("min-lr-ratio", args.min_lr_ratio, 0 <= args.min_lr_ratio <= 1, "in [0, 1] (a fraction of --lr)"),
        ("weight-decay", args.weight_decay, math.isfinite(args.weight_decay) and args.weight_decay >= 0, ">= 0"),
        ("label-smoothing", args.label_smoothing, 0 <= args.label_smoothing < 1, "in [0, 1)"),
        ("block-drop", args.block_drop, 0 <= args.block_drop < 1, "in [0, 1) (0 disables)"),
        ("curriculum-epochs", args.curriculum_epochs, args.curriculum_epochs >= 0, ">= 0 (0 disables)"),
        ("curriculum-start", args.curriculum_start, 0 <= args.curriculum_start <= 1, "in [0, 1]"),
        ("seed", args.seed, args.seed >= 0, ">= 0"),
    ]
    for flag, value in (("train-images", args.train_images), ("eval-images", args.eval_images), ("threads", args.threads)):
        rules.append((flag, value, value is None or value >= 1, ">= 1 (leave it out for the default)"))
    for flag, value, ok, allowed in rules:
        if not ok:
            raise ValueError(f"--{flag} must be {allowed}, got {value!r}")


def plan_run(outputs: Outputs, args: Any) -> dict[str, Any] | None:
    """The checkpoint to resume (None: start from the beginning), or a refusal before any work.

    An interrupted training at ``outputs`` is resumed (unless ``--no-resume``); any other file
    already there (a finished training, a backbone made elsewhere, its side files) is only
    replaced under ``--overwrite``.

    Raises:
        FileExistsError: a file at ``outputs`` would be overwritten without ``--overwrite``.
        ValueError: the checkpoint cannot be read.
    """
    out, ckpt_path = outputs.weights, outputs.checkpoint
    if args.resume and ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path)
        run_epochs = int(ckpt.get("epochs", args.epochs))
        if ckpt["epoch"] < min(run_epochs, args.epochs):
            check_same_training(ckpt, args, ckpt_path)
            return ckpt
        if args.overwrite:
            return None
        epoch, again = ckpt["epoch"], "or pass --overwrite to train again from the start"
        if epoch >= run_epochs:
            raise FileExistsError(
                f"{ckpt_path} holds a finished training ({epoch} epochs) and {out} would be overwritten; "
                f"give a new --out (with --init {out} to train it further), {again}"
            )
        raise FileExistsError(
            f"{ckpt_path} holds a training at epoch {epoch} of {run_epochs}, past --epochs {args.epochs}; "
            f"pass --epochs {run_epochs} to finish it, give a new --out, {again}"
        )
    existing = ", ".join(p.name for p in outputs.all() if p.exists())
    if existing and not args.overwrite:
        if ckpt_path.exists():  # only under --no-resume
            raise FileExistsError(
                f"--no-resume would start over in {out.parent}/, which already holds {existing}; drop --no-resume to "
                f"continue the training in {ckpt_path.name}, give a new --out, or pass --overwrite to replace them"
            )
        raise FileExistsError(f"{out.parent}/ already holds {existing}; give a new --out, or pass --overwrite to replace them")
    return None


#: Arguments that decide the rest of a training: a resume must give the ones it was started with
#: (another preset or stem is refused after the model is built, with both architectures described).
TRAINING_ARGS = (
    "dataset", "batch_size", "lr", "warmup_epochs", "min_lr_ratio", "weight_decay",
    "label_smoothing", "block_drop", "curriculum_epochs", "curriculum_start", "augment", "train_images", "seed",
)  # fmt: skip


def check_same_training(ckpt: dict[str, Any], args: Any, path: Path) -> None:
    """Refuse to resume ``ckpt`` under arguments that would change its image order or schedule.

    Raises:
        ValueError: a training argument differs from the one the checkpoint was made with (each named,
            with both values); checkpoints that recorded no arguments are not checked.
    """
    made = ckpt.get("args")
    if not isinstance(made, dict):
        return
    now = vars(args) if not isinstance(args, dict) else args
    changed = [f"--{k.replace('_', '-')} {now.get(k)!r} (was {made[k]!r})" for k in TRAINING_ARGS
               if k in made and now.get(k) != made[k]]  # fmt: skip
    if changed:
        raise ValueError(
            f"{path} was made with other training arguments: {', '.join(changed)}; resume it with the ones it was "
            "made with, give another --out, or pass --no-resume --overwrite to start over"
        )


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint, read on the CPU with ``weights_only=True``: nothing arbitrary is unpickled.

    Raises:
        ValueError: the file is damaged, holds objects other than tensors and plain containers, or
            was not written by ``train/backbone.py``.
    """
    fix = "move it away, or pass --no-resume --overwrite to start over"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled objects refused by weights_only
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot read the training checkpoint {path} ({first}); {fix}") from e
    needed = {"model", "opt", "sched", "epoch", "step", "history", "elapsed"}
    if not isinstance(ckpt, dict) or not needed <= set(ckpt):
        raise ValueError(f"{path} is not a train/backbone.py checkpoint (it lacks {sorted(needed - set(ckpt or {}))}); {fix}")
    return ckpt


def check_architecture(ckpt: dict[str, Any], model_state: dict[str, torch.Tensor], args: Any, path: Path) -> None:
    """Refuse to resume ``ckpt`` into a model of another architecture (a clear error, not a size mismatch).

    Args:
        ckpt: the checkpoint (``read_checkpoint``).
        model_state: the state dict of the model this command builds.
        args: the command's arguments.
        path: the checkpoint file, for the message.

    Raises:
        ValueError: the parameter names or shapes differ; the message describes both architectures.
    """
    saved = ckpt["model"]
    if {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in model_state.items()}:
        return
    made = ckpt.get("args", {})
    raise ValueError(
        f"{path} holds another architecture ({describe(saved, made)}) than this command builds "
        f"({describe(model_state, vars(args))}); resume it with the flags it was made with, give another --out, "
        "or pass --no-resume --overwrite to replace it"
    )


def describe(state: dict[str, torch.Tensor], args: dict[str, Any]) -> str:
    """``--preset micro --dataset shapes: 4 blocks of width 32, 17 tokens, 10 classes`` from a ViT state dict."""
    flags = " ".join(f"--{k} {args[k]}" for k in ("preset", "dataset", "stem", "init") if args.get(k) is not None)
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    width = state["cls_token"].shape[-1] if "cls_token" in state else "?"
    tokens = state["pos_embed"].shape[1] if "pos_embed" in state else "?"
    classes = state["head.weight"].shape[0] if "head.weight" in state else "?"
    stem = "patch" if "patch_embed.proj.weight" in state else "conv"
    stem_size = sum(v.numel() for k, v in state.items() if k.startswith("patch_embed."))
    shape = f"{depth} blocks of width {width}, {tokens} tokens, {stem} stem of {stem_size} weights, {classes} classes"
    return f"{flags}: {shape}" if flags else shape
