"""The RL training run shared by ``train/ppo.py``, ``train/a2c.py`` and ``train/reinforce.py``.

Read top to bottom: check every argument -> build env -> build (or resume) agent -> learn (checkpoints
at rollout boundaries; Ctrl-C finishes the update in progress, checkpoints and exits 130, a second
Ctrl-C stops at once keeping the previous checkpoint) ->
export a ``DynamicViT`` -> evaluate it against the static backbone in the same process -> write the
run directory (``args.yaml``, ``model.zip``/``.pt``, ``dynamic_vit.safetensors``, ``progress.csv`` +
TensorBoard, ``eval.parquet``, ``summary.json``, ``summary.md``) -> the skip-pattern report (``report.md``,
``plots/``; ``analysis.report``).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import yaml
from rl_finish import finish, write_run_report

from vitskip_env.files import atomic_write_text


@dataclass
class RLArgs:
    env: str = "ViTSkip-Shapes-v0"
    """registered environment id"""
    algo: str = "ppo"
    """agent: ppo, a2c, maskable_ppo, recurrent_ppo, trpo, qrdqn, reinforce, or module:Class"""
    total_timesteps: int = 600_000
    """environment steps (one step = one block decision for one image)"""
    num_envs: int = 256
    """images in flight in the native vector env"""
    backbone: str | None = None
    """backbone file, preset or timm name (default: the env's, e.g. the shipped demo backbone for shapes)"""
    backbone_mode: str = "frozen"
    """frozen or cotrain"""
    accuracy_weight: float = 1.0
    """reward for a correct prediction"""
    compute_weight: float = 0.1
    """penalty for executing every block (each block costs its FLOPs share of this); 0.1 keeps shapes/demo within
    1 point of the static top-1 at about a third of the depth, 0.5 trades ~4 points for 1.5 of 8 blocks"""
    confidence_weight: float = 0.0
    """weight of the log-probability of the true class at the end"""
    obs_mode: str = "flat"
    """flat, dict or tokens"""
    min_blocks: int = 0
    """every image executes at least this many blocks"""
    actions: str = "skip"
    """skip (skip / execute each block) or skip_exit (also exit early with an exit head; needs --exits)"""
    exits: str | None = None
    """with --actions skip_exit: an exit file from train/exits.py (it carries its backbone) or 'linear' (the backbone's
    own classifier as exits); default: train/exits.py's file for the backbone, if trained"""
    budget_range: tuple[float, float] | None = None
    """LO HI: one budget-conditioned policy for every compute weight in [LO, HI] (drawn per episode, seen by the
    policy); the DynamicViT gets a compute knob (set_budget / set_compute_weight), calibrated on the val split and
    set to --compute-weight; e.g. --budget-range 0.02 1.0"""
    data_root: str | None = None
    """folder of real datasets (default $VITSKIP_DATA or the user cache)"""
    download: bool = False
    """download a missing real dataset"""
    device: str = "auto"
    """cpu, cuda or auto"""
    seed: int = 1
    """random seed"""
    threads: int | None = None
    """CPU threads (default: all)"""
    eval_freq: int = 100_000
    """environment steps between evaluations on the test split"""
    eval_images: int = 2000
    """test images per periodic evaluation"""
    final_eval_images: int | None = None
    """test images for the final evaluation (default: the whole split)"""
    checkpoint_freq: int = 100_000
    """environment steps between checkpoints"""
    speed_batch_sizes: tuple[int, ...] = (1, 256)
    """batch sizes of the final static-vs-dynamic speed comparison"""
    runs_dir: str = "runs"
    """where run directories are created"""
    resume: str | None = None
    """continue the run in this directory from its last checkpoint (its args.yaml is used; --total-timesteps extends
    the budget; a module:Class algorithm must be given again with --algo)"""
    agent_kwargs: str = "{}"
    """JSON object of extra agent constructor arguments, e.g. '{"learning_rate": 1e-3}'"""


def env_kwargs(args: RLArgs) -> dict[str, Any]:
    """The ViTSkip env keyword arguments this run trains with."""
    kw: dict[str, Any] = dict(
        backbone_mode=args.backbone_mode, accuracy_weight=args.accuracy_weight, compute_weight=args.compute_weight,
        confidence_weight=args.confidence_weight, obs_mode=args.obs_mode, min_blocks=args.min_blocks,
        device=args.device, download=args.download,
    )  # fmt: skip
    if args.backbone is not None:
        kw["backbone"] = args.backbone
    if args.actions != "skip":
        kw["actions"] = args.actions
    if args.exits is not None:
        kw["exits"] = args.exits
    if args.data_root is not None:
        kw["data_root"] = args.data_root
    if args.budget_range is not None:
        kw["compute_weight_range"] = tuple(args.budget_range)
    import gymnasium as gym

    return {**gym.spec(args.env).kwargs, **kw}


#: Flags that may differ from a run's args.yaml on ``--resume`` (they do not change what is learnt).
RESUME_CHANGEABLE = ("total_timesteps", "threads", "device", "data_root", "download", "final_eval_images", "speed_batch_sizes")


class RunArgumentError(ValueError):
    """A command-line argument (or a run directory's args.yaml) that cannot be used; the message says why."""


def parse_agent_kwargs(text: str) -> dict[str, Any]:
    """The ``--agent-kwargs`` JSON object as a dict (:class:`RunArgumentError` if it is not one)."""
    try:
        return common.parse_json_object(text, "--agent-kwargs", """'{"learning_rate": 0.001}'""")
    except ValueError as err:
        raise RunArgumentError(str(err)) from None


def validate(args: RLArgs) -> dict[str, Any]:
    """Check every argument before anything is created; returns the parsed ``--agent-kwargs``.

    Raises:
        RunArgumentError: The first unusable argument, named, with what is allowed.
    """
    import gymnasium as gym

    import vitskip_env  # noqa: F401  (registers the ids)
    from agents import resolve_algo

    if args.env not in gym.registry:  # never gym.spec(...) first: it imports the module of a "module:Env" id
        ids = sorted(k for k in gym.registry if k.startswith("ViTSkip"))
        raise RunArgumentError(f"--env {args.env!r} is not a registered environment id; use one of {ids}")
    positive = {"total_timesteps": args.total_timesteps, "num_envs": args.num_envs, "eval_freq": args.eval_freq,
                "eval_images": args.eval_images, "checkpoint_freq": args.checkpoint_freq}  # fmt: skip
    if args.final_eval_images is not None:
        positive["final_eval_images"] = args.final_eval_images
    if args.threads is not None:
        positive["threads"] = args.threads
    for name, value in positive.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RunArgumentError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    sizes = args.speed_batch_sizes
    if not sizes or any(not isinstance(b, int) or b < 1 for b in sizes):
        raise RunArgumentError(f"--speed-batch-sizes must be one or more positive integers (e.g. 1 256), got {list(sizes)}")
    try:
        common.resolve_device(args.device)
    except (ValueError, RuntimeError) as err:
        raise RunArgumentError(f"--device: {err}") from None
    try:
        resolve_algo(args.algo)
    except ValueError as err:
        raise RunArgumentError(f"--algo: {err}") from None
    try:
        from vitskip_env.env import EnvOptions

        EnvOptions(**{k: v for k, v in env_kwargs(args).items() if k != "backbone"}).validate()
    except (TypeError, ValueError) as err:
        raise RunArgumentError(f"invalid environment setting: {err}") from None
    return parse_agent_kwargs(args.agent_kwargs)


def _recorded_args(run_dir: Path) -> RLArgs:
    path = run_dir / "args.yaml"
    if not path.is_file():
        raise RunArgumentError(f"--resume {run_dir}: no args.yaml there; pass a run directory made by train/*.py")
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        raise RunArgumentError(f"{path} is not readable YAML ({type(err).__name__}); it cannot be resumed") from None
    names = {f.name for f in dataclasses.fields(RLArgs)}
    if not isinstance(saved, dict) or set(saved) - names:
        extra = sorted(set(saved) - names, key=str) if isinstance(saved, dict) else type(saved).__name__
        raise RunArgumentError(f"{path} is not the args.yaml of a run (unknown entries {extra!r:.200}); it cannot be resumed")
    for f in dataclasses.fields(RLArgs):
        if f.name in saved and not _of_type(saved[f.name], str(f.type)):
            raise RunArgumentError(f"{path}: entry {f.name!r} must be {f.type}, got {saved[f.name]!r:.100}; "
                                   "it cannot be resumed")  # fmt: skip
    saved["speed_batch_sizes"] = tuple(saved.get("speed_batch_sizes") or ())
    return RLArgs(**saved)


def _of_type(value: Any, annotation: str) -> bool:
    """Whether an args.yaml value fits an :class:`RLArgs` annotation (``"int"``, ``"str | None"``...)."""
    if value is None:
        return annotation.endswith("| None")
    kinds = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "tuple[int, ...]": (list, tuple)}
    kind = kinds.get(annotation.removesuffix(" | None"), (object,))
    return isinstance(value, kind) and (bool in kind or not isinstance(value, bool))


def resume_args(args: RLArgs) -> tuple[RLArgs, Path]:
    """The arguments of the run ``args.resume`` continues: its args.yaml, with the flags given now checked.

    A flag differing from its default is taken as given. ``--total-timesteps`` sets a new budget
    (not below the steps already done); the flags of :data:`RESUME_CHANGEABLE` replace the recorded
    ones; any other given flag must equal the recorded value. A run of a ``module:Class`` algorithm
    needs ``--algo module:Class`` again: no module named by a file is imported. ``--download`` is
    never taken from args.yaml (only the flag given now lets the run reach the network).

    Raises:
        RunArgumentError: A conflicting flag, an unusable args.yaml, or an algorithm not confirmed.
    """
    from agents import ALGOS

    run_dir = Path(args.resume)
    recorded = _recorded_args(run_dir)
    try:
        changes = common.changed_fields(args, recorded, type(args)(), RESUME_CHANGEABLE, ignore=("resume", "runs_dir"))
    except ValueError as err:
        raise RunArgumentError(str(err)) from None
    if recorded.algo not in ALGOS and args.algo != recorded.algo:
        raise RunArgumentError(f"the run trains algorithm {recorded.algo!r}, a module:Class: it is never imported from a "
                               f"file, so name it yourself to resume: --algo {recorded.algo}")  # fmt: skip
    changes["download"] = args.download  # a file never decides that the run reaches the network: only --download does
    merged = dataclasses.replace(recorded, **changes, resume=str(run_dir))
    return merged, run_dir


def _write_args(run_dir: Path, args: RLArgs) -> None:
    record = _plain(dataclasses.asdict(args))
    record.pop("resume")
    atomic_write_text(run_dir / "args.yaml", yaml.safe_dump(record, sort_keys=False))


def run(args: RLArgs) -> Path:
    """Train, export, evaluate and report; returns the run directory.

    Every argument is checked before the run directory is made (:func:`validate`); ``--resume``
    continues a run from its last checkpoint (:func:`resume_args`, :mod:`agents.checkpoint`).
    """
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecMonitor

    from agents import SB3VecEnv, make_agent, resolve_algo
    from agents.callbacks import SkipCheckpointCallback, SkipEvalCallback, save_model
    from agents.checkpoint import check_algo, read_checkpoint_meta, restore_checkpoint
    from agents.run_logger import run_logger

    meta = None
    if args.resume:
        args, run_dir = resume_args(args)
        agent_kwargs = validate(args)
        ckpt_dir = run_dir / "checkpoint"
        if (ckpt_dir / "checkpoint.json").is_file():
            meta = read_checkpoint_meta(ckpt_dir)  # refuses an old (pickled) checkpoint before anything is built
            check_algo(meta, args.algo)
            done = int(meta["num_timesteps"])
            budget_given = args.total_timesteps != _recorded_args(run_dir).total_timesteps
            # the recorded budget may be below the steps done (an update always completes its rollout): then the
            # training is over and the resume only redoes the end (export, evaluation, reports)
            if budget_given and args.total_timesteps < done:
                raise RunArgumentError(f"--total-timesteps {args.total_timesteps:,} is below the {done:,} steps the run "
                                       f"has done; give at least {done:,}")  # fmt: skip
        _write_args(run_dir, args)  # a new budget or machine settings are what the next resume starts from
    else:
        agent_kwargs = validate(args)
        run_dir = common.make_run_dir(Path(args.runs_dir), common.run_name(args.env, args.algo, args.seed))
        _write_args(run_dir, args)
        ckpt_dir = run_dir / "checkpoint"
    common.set_threads(args.threads)
    common.seed_everything(args.seed)
    kwargs = env_kwargs(args)

    _, algo_cls = resolve_algo(args.algo)
    env = SB3VecEnv(num_envs=args.num_envs, **kwargs)
    if isinstance(algo_cls, type) and issubclass(algo_cls, BaseAlgorithm):
        env = VecMonitor(env)  # SB3 algorithms; others (reinforce, module:Class) take the vector env itself
    model = make_agent(args.algo, env, seed=args.seed, device=args.device, **agent_kwargs)
    prior_seconds = 0.0
    if meta is not None:
        restore_checkpoint(model, ckpt_dir, algo=args.algo)
        prior_seconds = float(meta.get("extra", {}).get("train_seconds", 0.0))
        print(f"resumed {run_dir} at {model.num_timesteps:,} / {args.total_timesteps:,} steps")
    logger = run_logger(run_dir)
    if hasattr(model, "set_logger"):
        model.set_logger(logger)
    elif hasattr(model, "logger"):
        model.logger = logger
    t0 = time.perf_counter()

    def elapsed() -> dict[str, float]:
        return {"train_seconds": prior_seconds + time.perf_counter() - t0}

    checkpoints = SkipCheckpointCallback(args.checkpoint_freq, ckpt_dir, agent_kwargs=agent_kwargs, extra_fn=elapsed)
    callbacks = [
        SkipEvalCallback(kwargs, eval_freq=args.eval_freq, n_images=args.eval_images, best_model_save_path=run_dir, verbose=1),
        checkpoints,
    ]
    remaining = args.total_timesteps - int(model.num_timesteps)
    resume_cmd = f"python {Path(sys.argv[0]).as_posix()} --resume {run_dir}"
    try:
        with common.deferred_interrupt(checkpoints.request_stop):
            if remaining > 0:
                model.learn(remaining, callback=callbacks, progress_bar=True, reset_num_timesteps=False)
    except KeyboardInterrupt:
        kept = checkpoints.last_saved if checkpoints.last_saved is not None else (meta or {}).get("num_timesteps")
        where = f"the checkpoint at {kept:,} steps in {ckpt_dir} is kept" if kept is not None else "no checkpoint yet"
        print(f"\nstopped at {model.num_timesteps:,} steps; {where}.\nResume with: {resume_cmd}", file=sys.stderr)
        raise SystemExit(130) from None
    if checkpoints.stopped:
        saved = checkpoints.last_saved
        where = f"checkpoint at {saved:,} steps saved in {ckpt_dir}" if saved is not None else "no checkpoint"
        print(f"\ninterrupted: {where}.\nResume with: {resume_cmd}", file=sys.stderr)
        raise SystemExit(130)
    train_seconds = elapsed()["train_seconds"] if remaining > 0 else prior_seconds
    logger.close()
    save_model(model, run_dir)
    finish(model, env, args, kwargs, run_dir, train_seconds)
    print((run_dir / "summary.md").read_text(encoding="utf-8"))
    write_run_report(run_dir)
    print(f"run directory: {run_dir}")
    return run_dir


def main(args: Any, run_fn: Any = None) -> Path:
    """``run_fn(args)`` (default :func:`run`) for the command line: an unusable argument or checkpoint is one
    ``error:`` line and exit status 2."""
    from agents.checkpoint import CheckpointError

    try:
        return (run_fn or run)(args)
    except (RunArgumentError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _plain(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
