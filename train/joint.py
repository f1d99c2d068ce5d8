"""Policy-aware co-training of the ViT and its skip policy, against equally fine-tuned static baselines.

    python train/joint.py                                   # ViTSkip-Shapes-v0, shipped demo backbone, offline
    python train/joint.py --env ViTSkip-Relations-v0 --seed 2
    python train/joint.py --resume runs/<run>               # continue after Ctrl-C, from the last finished phase

Read top to bottom. Phases, each written to the run directory when it ends (``joint_state.json``
names the finished ones; Ctrl-C loses at most the phase in progress):

1. ``rl-0``: PPO on the frozen backbone (``--first-rl-steps``, the default ``train/ppo.py`` budget):
   the frozen-backbone policy, kept as ``frozen_dynamic_vit.safetensors``.
2. ``bb-r`` / ``rl-r`` for ``r = 1..--rounds``: ``--backbone-steps / --rounds`` fine-tuning steps of
   the backbone along the paths the current policy takes (``agents.cotraining.policy_masks``:
   cross-entropy through the executed blocks + distillation from the frozen full-depth backbone),
   then ``--rl-steps`` more PPO on the updated backbone, so the policy follows the blocks it shaped.
3. ``baseline-<name>``: the same ``--backbone-steps``, recipe, teacher and seed for (a) the full
   static backbone, (b) the best static subset of each size in ``--subset-sizes`` (default: the sizes
   around the co-trained policy's depth; best = top-1 of the raw subset on the val split), (c) random
   skipping at the co-trained policy's per-image depth.
4. ``report``: every contender scored on the test split and timed side by side
   (``train/joint_report.py``), plus what ``train/ppo.py`` writes (``dynamic_vit.safetensors`` with the
   co-trained backbone, ``eval.parquet``, ``summary.json``/``.md``, ``report.md``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import torch
import tyro
import yaml

from vitskip_env.files import atomic_path, atomic_write_text


@dataclass
class JointArgs:
    env: str = "ViTSkip-Shapes-v0"
    """registered environment id (skip actions)"""
    backbone: str | None = None
    """backbone file, preset or timm name (default: the env's, e.g. the shipped demo backbone for shapes)"""
    compute_weight: float = 0.1
    """penalty for executing every block (the reward of train/ppo.py)"""
    seed: int = 1
    """random seed (PPO, batches, augmentation, random paths)"""
    first_rl_steps: int = 600_000
    """PPO steps on the frozen backbone (the frozen-backbone contender; train/ppo.py's default budget)"""
    rounds: int = 4
    """backbone / PPO alternations after the first PPO phase"""
    rl_steps: int = 150_000
    """PPO steps after each backbone phase"""
    backbone_steps: int = 1000
    """backbone optimisation steps in all (split over the rounds); every baseline gets the same"""
    batch_size: int = 128
    """images per backbone step"""
    lr: float = 3e-4
    """peak AdamW learning rate of the backbone steps (cosine decay over --backbone-steps)"""
    distill: float = 0.5
    """weight of distillation from the frozen full-depth backbone (0: cross-entropy only)"""
    subset_sizes: tuple[int, ...] = ()
    """static subset sizes to fine-tune (default: floor and ceil of the co-trained depth, and one more)"""
    baselines: bool = True
    """train the equal-budget baselines (--no-baselines: co-training only)"""
    budget_model: str | None = None
    """a budget-conditioned dynamic_vit.safetensors (train/ppo.py --budget-range) to add to the comparison"""
    budget_points: int = 5
    """compute weights of --budget-model in the comparison (log-spaced over its range)"""
    num_envs: int = 256
    """images in flight in the native vector env"""
    val_images: int = 5000
    """val images that pick the best subset of each size"""
    final_eval_images: int | None = None
    """test images for the final evaluation (default: the whole split)"""
    speed_batch_sizes: tuple[int, ...] = (1, 256)
    """batch sizes of the timed comparison"""
    speed_rounds: int = 5
    """interleaved timing rounds per batch size"""
    device: str = "auto"
    """cpu, cuda or auto"""
    threads: int | None = None
    """CPU threads (default: all)"""
    data_root: str | None = None
    """folder of real datasets"""
    download: bool = False
    """download a missing real dataset"""
    runs_dir: str = "runs"
    """where run directories are created"""
    resume: str | None = None
    """continue the run in this directory from its last finished phase (its args.yaml is used)"""


#: Flags that may differ from a run's args.yaml on ``--resume`` (they do not change what is learnt).
RESUME_CHANGEABLE = ("threads", "device", "data_root", "download", "final_eval_images", "speed_batch_sizes", "speed_rounds",
                     "budget_model", "budget_points")  # fmt: skip


def rl_args(args: JointArgs) -> Any:
    """The ``train/ppo.py`` arguments of this run's RL phases (for the env kwargs and the run's end)."""
    from rl import RLArgs

    return RLArgs(
        env=args.env, algo="ppo", backbone=args.backbone, compute_weight=args.compute_weight, seed=args.seed,
        num_envs=args.num_envs, device=args.device, threads=args.threads, data_root=args.data_root,
        download=args.download, final_eval_images=args.final_eval_images, speed_batch_sizes=args.speed_batch_sizes,
        total_timesteps=args.first_rl_steps + args.rounds * args.rl_steps,
    )  # fmt: skip


def validate(args: JointArgs) -> None:
    """Check every argument before anything is made (``RunArgumentError`` names the first bad one)."""
    from rl import RunArgumentError
    from rl import validate as validate_rl

    validate_rl(rl_args(args))
    counts = {"first_rl_steps": args.first_rl_steps, "rounds": args.rounds, "rl_steps": args.rl_steps,
              "backbone_steps": args.backbone_steps, "batch_size": args.batch_size, "val_images": args.val_images,
              "speed_rounds": args.speed_rounds, "budget_points": args.budget_points}  # fmt: skip
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RunArgumentError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    if args.backbone_steps < args.rounds:
        raise RunArgumentError(f"--backbone-steps ({args.backbone_steps}) must be at least --rounds ({args.rounds})")
    if not 0.0 <= args.distill <= 1.0 or args.lr <= 0:
        raise RunArgumentError(f"--distill must be in [0, 1] and --lr positive, got {args.distill} and {args.lr}")
    if args.budget_model is not None and not Path(args.budget_model).is_file():
        raise RunArgumentError(f"--budget-model {args.budget_model}: no such file (a dynamic_vit.safetensors of "
                               "train/ppo.py --budget-range)")  # fmt: skip
    if any(not isinstance(k, int) or k < 1 for k in args.subset_sizes):
        raise RunArgumentError(f"--subset-sizes must be positive block counts, got {list(args.subset_sizes)}")


# ------------------------------------------------------------------------------------------------ run state
class RunState:
    """The finished phases of a run (``joint_state.json``), written atomically after each phase."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "joint_state.json"
        self.data: dict[str, Any] = {"done": [], "seconds": {}}
        if self.path.is_file():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))

    def done(self, phase: str) -> bool:
        return phase in self.data["done"]

    def finish(self, phase: str, seconds: float, **extra: Any) -> None:
        self.data["done"].append(phase)
        self.data["seconds"][phase] = round(seconds, 2)
        self.data.update(extra)
        atomic_write_text(self.path, json.dumps(self.data, indent=2) + "\n")


def save_trainer(path: Path, trainer: Any) -> None:
    """The backbone trainer's optimiser / schedule / generator state (tensors and numbers: read back weights-only)."""
    with atomic_path(path) as tmp:
        torch.save(trainer.state_dict(), tmp)


def load_trainer(path: Path, trainer: Any) -> None:
    trainer.load_state_dict(torch.load(path, map_location=trainer.device, weights_only=True))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Copy the weights of a backbone file into ``model`` (in place: the env's backbone object stays the same)."""
    from vitskip_env.model import load_backbone

    model.load_state_dict(load_backbone(path, device=next(model.parameters()).device).state_dict())


# ------------------------------------------------------------------------------------------------ the run
def run(args: JointArgs) -> Path:
    """Every phase not yet finished, then the report; returns the run directory."""
    from joint_baselines import train_baselines
    from joint_report import write_report
    from rl import env_kwargs
    from rl_finish import finish, write_run_report

    from agents import SB3VecEnv, export_policy, make_agent
    from agents.callbacks import save_model
    from agents.checkpoint import restore_checkpoint, save_checkpoint
    from agents.cotraining import PathRecipe, PathTrainer, frozen_copy, policy_masks
    from vitskip_env import DynamicViT, make_dataset

    if args.resume:
        args, run_dir = resume_args(args)
    else:
        validate(args)
        run_dir = common.make_run_dir(Path(args.runs_dir), common.run_name(args.env, "joint", args.seed))
        record = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(args).items() if k != "resume"}
        atomic_write_text(run_dir / "args.yaml", yaml.safe_dump(record, sort_keys=False))
    common.set_threads(args.threads)
    common.seed_everything(args.seed)
    state = RunState(run_dir)
    rla = rl_args(args)
    kwargs = env_kwargs(rla)
    env = SB3VecEnv(num_envs=args.num_envs, **kwargs)
    state.data.setdefault("dataset", env.dataset.name)
    student = env.backbone  # co-trained in place: the env's episodes always run the current weights
    teacher = frozen_copy(student)  # the backbone as it came: the distillation teacher and the static contender
    student.requires_grad_(True)
    model = make_agent("ppo", env, seed=args.seed, device=args.device)
    recipe = PathRecipe(args.backbone_steps, args.batch_size, args.lr, distill=args.distill)
    train = make_dataset(env.dataset.name, "train", args.data_root, False, env.dataset.device)
    trainer = PathTrainer(student, train, recipe, teacher=teacher if args.distill > 0 else None, seed=args.seed)
    ckpt, student_file, trainer_file = run_dir / "checkpoint", run_dir / "student.safetensors", run_dir / "trainer.pt"
    if state.data["done"]:  # resume: the last finished phase's agent and backbone
        restore_checkpoint(model, ckpt, algo="ppo")
        if student_file.is_file():
            load_weights(student, student_file)
            load_trainer(trainer_file, trainer)
        print(f"resumed {run_dir} after phases {', '.join(state.data['done'])}")
    resume_cmd = f"python {Path(sys.argv[0]).as_posix()} --resume {run_dir}"
    per_round = [args.backbone_steps // args.rounds + (r < args.backbone_steps % args.rounds) for r in range(args.rounds)]
    phase = ""
    try:
        phase = "rl-0"
        if not state.done(phase):
            t = time.perf_counter()
            model.learn(args.first_rl_steps, reset_num_timesteps=False, progress_bar=True)
            save_checkpoint(model, ckpt)
            DynamicViT(teacher, export_policy(model, env)).save(run_dir / "frozen_dynamic_vit.safetensors", env=args.env,
                                                                algo="ppo", seed=args.seed)  # fmt: skip
            state.finish(phase, time.perf_counter() - t)
        for r in range(1, args.rounds + 1):
            phase = f"bb-{r}"
            if not state.done(phase):
                t = time.perf_counter()
                dyn = DynamicViT(student, export_policy(model, env))
                trainer.run(per_round[r - 1], policy_masks(dyn))
                student.save(student_file)
                save_trainer(trainer_file, trainer)
                state.finish(phase, time.perf_counter() - t, backbone_loss=trainer.last_loss)
                print(f"{phase}: {trainer.steps_done} / {recipe.steps} backbone steps, loss {trainer.last_loss:.3f}")
            phase = f"rl-{r}"
            if not state.done(phase):
                t = time.perf_counter()
                model.learn(args.rl_steps, reset_num_timesteps=False, progress_bar=True)
                save_checkpoint(model, ckpt)
                state.finish(phase, time.perf_counter() - t)
        phase = "export"
        if not state.done(phase):
            t = time.perf_counter()
            save_model(model, run_dir)
            finish(model, env, rla, kwargs, run_dir, sum(state.data["seconds"].values()))
            write_run_report(run_dir)
            state.finish(phase, time.perf_counter() - t)
        if args.baselines:
            train_baselines(args, run_dir, state, teacher, train, recipe)
        phase = "report"
        write_report(args, run_dir, teacher, student, state)
    except KeyboardInterrupt:
        kept = state.data["done"][-1] if state.data["done"] else "none"
        print(f"\nstopped in phase {phase}; the run keeps every finished phase (last: {kept}).\nResume with: {resume_cmd}",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(130) from None
    print((run_dir / "comparison.md").read_text(encoding="utf-8") if (run_dir / "comparison.md").is_file() else "")
    print(f"run directory: {run_dir}")
    return run_dir


def resume_args(args: JointArgs) -> tuple[JointArgs, Path]:
    """The recorded arguments of ``args.resume``, with the flags of :data:`RESUME_CHANGEABLE` taken as given now."""
    from rl import RunArgumentError

    run_dir = Path(args.resume or "")
    path = run_dir / "args.yaml"
    if not path.is_file():
        raise RunArgumentError(f"--resume {run_dir}: no args.yaml there; pass a run directory made by train/joint.py")
    saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    names = {f.name for f in dataclasses.fields(JointArgs)}
    if not isinstance(saved, dict) or set(saved) - names:
        raise RunArgumentError(f"{path} is not the args.yaml of a train/joint.py run; it cannot be resumed")
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
    recorded = JointArgs(**saved)
    try:
        changes = common.changed_fields(args, recorded, JointArgs(), RESUME_CHANGEABLE, ignore=("resume", "runs_dir"))
    except ValueError as err:
        raise RunArgumentError(str(err)) from None
    merged = dataclasses.replace(recorded, **changes, resume=str(run_dir))
    validate(merged)
    return merged, run_dir


def main(args: JointArgs) -> Path:
    """:func:`run` for the command line: an unusable argument is one ``error:`` line and exit status 2."""
    from rl import main as rl_main

    return rl_main(args, run)


if __name__ == "__main__":
    main(tyro.cli(JointArgs))
