"""Train or fine-tune a ViT backbone that is robust to skipping blocks.

Per image and per step, every block is dropped with probability ``--block-drop`` (LayerDrop /
block-level stochastic depth, really skipped: dropped blocks cost nothing in training either), so
the backbone keeps working when an agent later skips blocks. AdamW, linear warm-up then cosine,
label smoothing, random crop + flip, and (on datasets with a known per-image difficulty, like
``shapes``) an easy-to-hard curriculum over the first epochs, which makes a ViT trained from
scratch take off in a few hundred steps instead of idling at chance.

    python train/backbone.py                                   # shapes + demo -> the default backbone
    python train/backbone.py --dataset relations --epochs 40   # the shipped relations backbone
    python train/backbone.py --dataset cifar100 --preset tiny --data-root ~/data --download
    torchrun --nproc-per-node 2 train/backbone.py --epochs 1   # data parallel (gloo on CPU)

Writes ``<out>.safetensors`` (+ ``.json``) where the environments look by default
(``$VITSKIP_HOME/backbones/<preset>-<dataset>.safetensors``), a resumable ``<out>.ckpt.pt``
every epoch, ``<out>.log.csv`` with the evaluation history and ``<out>.md``, a readable record.
``--out`` must end in ``.safetensors``. Files already there are never overwritten without
``--overwrite``: the same command after an interruption resumes the training instead.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import backbone_checks
import common
import torch
import torch.distributed as dist
import torch.nn.functional as F
import tyro
from tqdm import tqdm

from vitskip_env import SkippableViT, load_backbone, make_dataset
from vitskip_env.data.augment import augment_kwargs, random_crop_flip
from vitskip_env.files import atomic_path, atomic_write_text
from vitskip_env.measure import random_skip_top1, score
from vitskip_env.model import user_backbone_path


@dataclass
class Args:
    dataset: str = "shapes"
    """dataset name (shapes, relations, digits, cifar10, cifar100, tinyimagenet)"""
    preset: str = "demo"
    """model preset (micro, demo, tiny, small, base) or any timm ViT/DeiT name"""
    stem: str | None = None
    """patch embedding: 'patch' (timm's linear projection) or 'conv' (conv stem); default: the preset's"""
    init: str | None = None
    """start from this backbone file (fine-tune) instead of random weights; with --stem, only its patch embedding is new"""
    pretrained_file: str | None = None
    """local timm checkpoint to start from (head re-initialised for the dataset)"""
    data_root: str | None = None
    """folder of real datasets (default $VITSKIP_DATA or the user cache)"""
    download: bool = False
    """download a missing real dataset"""
    epochs: int = 20
    """passes over the training split"""
    batch_size: int = 128
    """images per step (per process under torchrun)"""
    lr: float = 1.5e-3
    """peak AdamW learning rate"""
    warmup_epochs: float = 1.0
    """linear warm-up length"""
    min_lr_ratio: float = 0.02
    """cosine floor as a fraction of the peak"""
    weight_decay: float = 0.05
    """AdamW weight decay"""
    label_smoothing: float = 0.1
    """cross-entropy label smoothing"""
    block_drop: float = 0.2
    """per-image probability of skipping each block during training (0 disables)"""
    curriculum_epochs: int = 4
    """easy-to-hard curriculum over the first N epochs, for datasets with a per-image difficulty (0 disables)"""
    curriculum_start: float = 0.35
    """highest difficulty admitted in the first epoch; the limit rises linearly to 1"""
    augment: bool = True
    """random crop (pad 4) + horizontal flip; on relations a pad-2 crop only (a flip would change the label)"""
    train_images: int | None = None
    """use only the first N images of the (shuffled) training split, for quick runs"""
    eval_every: int = 2
    """evaluate every N epochs"""
    eval_images: int | None = None
    """score only the first N test images (default: the whole split)"""
    seed: int = 0
    """random seed"""
    device: str = "auto"
    """cpu, cuda, cuda:1 or auto"""
    threads: int | None = None
    """CPU threads (default: all)"""
    out: str | None = None
    """backbone file to write (default: $VITSKIP_HOME/backbones/<preset>-<dataset>.safetensors)"""
    resume: bool = True
    """continue an interrupted training from <out>.ckpt.pt when it exists"""
    overwrite: bool = False
    """replace a backbone or its side files (.json, .md, .log.csv, .ckpt.pt) already at --out
    (an interrupted training there is still resumed unless --no-resume)"""


def lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    """Linear warm-up to 1, then cosine down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_model(args: Args, num_classes: int, device: torch.device, image_size: int | None = None) -> SkippableViT:
    """The model to train: ``--init``'s (re-stemmed with ``--stem``) or a fresh ``--preset`` at the dataset's image size.

    Raises:
        ValueError: ``--init`` was trained at another image size than the dataset's.
    """
    if args.init:
        model = load_backbone(args.init, num_classes=num_classes, device=device)
        if image_size is not None and model.img_size != image_size:
            raise ValueError(
                f"--init {args.init!r} takes {model.img_size}x{model.img_size} images but {args.dataset!r} has "
                f"{image_size}x{image_size}; start from a backbone of that size, or from --preset"
            )
        if args.stem is not None and args.stem != model.model_kwargs.get("stem", "patch"):
            model = restem(model, args.stem)
        return model.to(device).train()
    overrides: dict[str, object] = {} if args.stem is None else {"stem": args.stem}
    if image_size is not None:
        overrides["img_size"] = image_size  # presets are written for 32x32; Tiny-ImageNet is 64x64
    return SkippableViT(args.preset, num_classes=num_classes, pretrained_file=args.pretrained_file, **overrides).to(device)


def restem(model: SkippableViT, stem: str) -> SkippableViT:
    """``model``'s blocks, position embedding and head under a new, freshly initialised patch embedding.

    Fine-tuning that is far quicker than training the new architecture from scratch: the trained
    blocks give the new stem a useful gradient from the first step.
    """
    if model.model_name is None:
        raise ValueError("--stem with --init needs a backbone built from a timm model name (its file records one)")
    new = SkippableViT(model.model_name, **{**model.model_kwargs, "stem": stem})
    state = {k: v for k, v in model.vit.state_dict().items() if not k.startswith("patch_embed.")}
    missing, unexpected = new.vit.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("patch_embed.") for k in missing):
        raise ValueError(f"cannot move the weights to the {stem!r} stem: missing {missing}, unexpected {unexpected}")
    return new


def main(args: Args) -> Path:
    """Train, writing the backbone and its side files at ``--out`` every evaluation; return the backbone's path.

    Raises:
        ValueError: an argument out of range, an ``--out`` not ending in ``.safetensors``, or a
            checkpoint that cannot be read or holds another architecture (before any file is written).
        FileExistsError: ``--out`` already holds files of a finished training or made elsewhere
            (without ``--overwrite``); nothing is touched.
    """
    backbone_checks.check_args(args)
    out = Path(args.out).expanduser() if args.out else user_backbone_path(args.preset, args.dataset)
    outputs = backbone_checks.Outputs.at(out)
    ckpt = backbone_checks.plan_run(outputs, args)  # the interrupted training to resume, if any
    rank, local_rank, world = common.distributed_info()
    device = common.resolve_device(args.device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    common.set_threads(args.threads)
    common.seed_everything(args.seed)

    train = make_dataset(args.dataset, "train", args.data_root, args.download, device)
    test = make_dataset(args.dataset, "test", args.data_root, args.download, device)
    model = build_model(args, train.num_classes, device, train.image_size)
    if ckpt is not None:  # before anything is loaded: a clear error instead of a size mismatch
        backbone_checks.check_architecture(ckpt, model.vit.state_dict(), args, outputs.checkpoint)
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )

    ckpt_path = outputs.checkpoint
    n_train = len(train) if args.train_images is None else min(args.train_images, len(train))
    steps_per_epoch = n_train // (args.batch_size * world)
    if steps_per_epoch < 1:
        raise ValueError(f"{n_train} training images make no full batch of {args.batch_size} x {world} processes")
    total = steps_per_epoch * args.epochs
    warmup = max(1, int(args.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, args.min_lr_ratio))
    g = torch.Generator(device=device)
    state = {"epoch": 0, "step": 0, "history": [], "elapsed": 0.0}
    if ckpt is not None:
        model.vit.load_state_dict(ckpt.pop("model"))
        opt.load_state_dict(ckpt.pop("opt"))  # moves the optimizer's state onto the parameters' device
        sched.load_state_dict(ckpt.pop("sched"))
        for key in ("args", "epochs"):  # rewritten from this command's arguments at every save
            ckpt.pop(key, None)
        state = ckpt
        if rank == 0:
            print(
                f"resumed from {ckpt_path} at epoch {state['epoch']} step {state['step']} of {args.epochs} x {steps_per_epoch}"
            )

    def save_checkpoint() -> None:
        with atomic_path(ckpt_path) as tmp:
            run = {"epochs": args.epochs, "args": asdict(args)}  # tells a finished training from an interrupted one
            torch.save(
                {"model": model.vit.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), **state, **run}, tmp
            )

    try:
        while state["epoch"] < args.epochs:
            epoch = state["epoch"]
            t0 = time.perf_counter()
            g.manual_seed(args.seed * 1000 + epoch)  # the same order on every rank, then sharded
            perm = _epoch_order(train, epoch, n_train, args, g)[rank::world]
            if state["step"] and "rng" in state:
                g.set_state(state["rng"].cpu())
            model.train()
            bar = tqdm(
                range(state["step"], steps_per_epoch),
                desc=f"epoch {epoch + 1}/{args.epochs}",
                disable=rank != 0,
                leave=False,
                initial=state["step"],
                total=steps_per_epoch,
            )
            for step in bar:
                idx = perm[step * args.batch_size : (step + 1) * args.batch_size]
                loss = _train_step(ddp, model, opt, train, idx, args, g)
                sched.step()
                state["step"], state["rng"] = step + 1, g.get_state()
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            state["elapsed"] += time.perf_counter() - t0
            state.update(epoch=epoch + 1, step=0)
            state.pop("rng", None)
            if rank == 0 and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
                row = {"epoch": epoch + 1, "minutes": round(state["elapsed"] / 60, 2), "loss": round(loss, 4)}
                row.update(_evaluate(model, test, args))
                state["history"].append(row)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
                _save(model, out, args, train, state["history"], state["elapsed"])
                _write_log(outputs.log, state["history"])
                _write_record(outputs.record, args, state["history"])
            if rank == 0:
                save_checkpoint()
    except KeyboardInterrupt:
        if rank == 0:
            state["elapsed"] += time.perf_counter() - t0
            save_checkpoint()
            print(
                f"\ninterrupted: checkpoint at epoch {state['epoch']} step {state['step']} in {ckpt_path}; "
                "run the same command again to resume (or add --no-resume --overwrite to start over)"
            )
        raise SystemExit(130) from None
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        print(f"backbone written to {out}")
    return out


def _epoch_order(train, epoch: int, n_train: int, args: Args, g: torch.Generator) -> torch.Tensor:
    """This epoch's image order; under the curriculum, only images up to a rising difficulty (repeated to length)."""
    perm = torch.randperm(len(train), device=train.device, generator=g)[:n_train]
    if args.curriculum_epochs <= 0 or train.difficulty is None or epoch >= args.curriculum_epochs:
        return perm
    limit = args.curriculum_start + (1.0 - args.curriculum_start) * epoch / args.curriculum_epochs
    keep = perm[train.difficulty[perm] <= limit]
    if keep.numel() == 0:
        return perm
    return keep.repeat(-(-perm.numel() // keep.numel()))[: perm.numel()]


def _train_step(ddp, model: SkippableViT, opt, train, idx: torch.Tensor, args: Args, g: torch.Generator) -> float:
    """One AdamW step on the images ``idx``; each image skips each block with probability ``block_drop``."""
    images = train.images[idx]
    if args.augment:
        images = random_crop_flip(images, generator=g, **augment_kwargs(train.name))
    x = train.normalize(images)
    mask = None
    if args.block_drop > 0:
        mask = torch.rand(idx.numel(), model.depth, device=x.device, generator=g) >= args.block_drop
    loss = F.cross_entropy(ddp(x, execute_mask=mask), train.labels[idx], label_smoothing=args.label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def _write_record(path: Path, args: Args, history: list[dict]) -> None:
    """A human-readable record of how the backbone was made and what it reaches (regenerated every evaluation)."""
    flags = " ".join(_flag(k, v) for k, v in asdict(args).items() if v != getattr(Args, k, None) and k not in _RUN_ONLY)
    keys = list(history[0])
    rows = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    rows += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in history]
    text = (
        f"# Backbone `{path.stem}`\n\nMade by:\n\n```bash\npython train/backbone.py {flags}\n```\n\n"
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device `{args.device}`. `minutes` counts "
        "training time only (evaluation excluded). `top1_skip25` / `top1_skip50`: every test image skips 25% / 50% of "
        "its blocks, chosen at random (fixed seed).\n\n" + "\n".join(rows) + "\n"
    )
    atomic_write_text(path, text)


_RUN_ONLY = ("resume", "overwrite")  # how the command treated files already at --out, not how the backbone was made


def _flag(name: str, value: object) -> str:
    """``--batch-size 64``; booleans the way tyro takes them (``--no-augment``)."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def _write_log(path: Path, history: list[dict]) -> None:
    keys = list(history[0])
    lines = [",".join(keys)] + [",".join(str(row[k]) for k in keys) for row in history]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _evaluate(model: SkippableViT, test, args: Args) -> dict[str, float]:
    """Top-1 on the test split with every block, and with 25% / 50% of the blocks skipped at random."""
    kw = {"limit": args.eval_images}
    return {
        "top1": round(score(model, test, n_images=args.eval_images).top1, 2),
        "top1_skip25": round(random_skip_top1(model, test, 0.25, seed=args.seed, **kw), 2),
        "top1_skip50": round(random_skip_top1(model, test, 0.50, seed=args.seed, **kw), 2),
    }


def _save(model: SkippableViT, out: Path, args: Args, train, history: list[dict], elapsed: float) -> None:
    model.save(
        out,
        dataset=args.dataset,
        mean=list(train.mean),
        std=list(train.std),
        image_size=train.image_size,
        classes=list(train.classes),
        preset=args.preset,
        training={
            "script": "train/backbone.py",
            "args": asdict(args),
            "history": history,
            "minutes": round(elapsed / 60, 2),
            "torch": torch.__version__,
        },
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
