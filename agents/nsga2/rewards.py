"""Reward-weighting search: NSGA-II over the reward weights (and the entropy bonus) of an RL run.

Each individual is a reward weighting; its fitness is a short RL training run under that reward,
exported as a ``DynamicViT`` and scored on the ``val`` split: minimise ``(error, executed_frac)``.
Which weighting gives which trade-off is not obvious (the agent's response to the compute weight
is not linear, and the confidence term and entropy bonus shift it), so this search maps it.

Variables (:data:`VARIABLES`, real-valued, SBX crossover + polynomial mutation):

=====================  ==============  ======================================================
name                   range           why
=====================  ==============  ======================================================
``compute_weight``     0.02 .. 1.0     searched on a log scale: 0.05 -> 0.1 matters as much as
                       (log scale)     0.5 -> 1.0
``confidence_weight``  0 .. 0.5        shaping by the log-probability of the true class
``ent_coef``           0 .. 0.02       the agent's entropy bonus (only for agents that take it)
=====================  ==============  ======================================================

``accuracy_weight`` is not searched: a policy's optimum depends only on the ratios of the weights,
so it stays at its env value (1 unless ``env_kwargs`` says otherwise) and sets the scale.

Evaluations run on Dask distributed (:mod:`agents.nsga2.dask_workers`): a local cluster by default
or a running scheduler; the backbone and data are loaded once per worker and a task is only an
individual's values and seed. Evaluation ``i`` (0, 1, ... in submission order) trains with seed
:func:`~agents.nsga2.reward_worker.individual_seed` ``(seed, i)`` on any worker, so the same
``seed`` gives the same front whatever the number of workers, serial included (bit for bit on
CPU with the same ``threads_per_worker``; CUDA kernels are not all deterministic).

Output in ``out_dir``: ``front.parquet`` / ``.csv`` (the non-dominated individuals, the format of
:mod:`agents.nsga2.front`), ``evaluations.parquet`` / ``.csv`` (every individual), ``models/`` (a
``DynamicViT`` per front member; a member that leaves the front loses its file) and
``rewards_search.json`` (the search's settings).
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymoo.core.problem import Problem

from vitskip_env.files import atomic_write_text

from .front import non_dominated, write_front
from .reward_worker import (
    AGENT_PARAMS,
    REWARD_PARAMS,
    SerialRunner,
    WorkerConfig,
    individual_seed,
    policy_from_payload,
    search_backbone,
)

#: Objectives, both minimised.
OBJECTIVES: tuple[str, str] = ("error", "executed_frac")
#: Offspring closer than this to an evaluated individual (Euclidean, each variable scaled to [0, 1]) are
#: duplicates: SBX on a small population proposes near-copies whose difference is training noise, and
#: re-training them would only let NSGA-II keep the luckier seed.
DUPLICATE_TOLERANCE = 0.01
MODELS_DIR = "models"


@dataclass(frozen=True)
class Variable:
    """A searched real variable: its bounds, and whether NSGA-II sees its logarithm."""

    low: float
    high: float
    log: bool = False

    def bounds(self) -> tuple[float, float]:
        """Bounds in the search space."""
        return (math.log10(self.low), math.log10(self.high)) if self.log else (self.low, self.high)

    def decode(self, x: float) -> float:
        """Search-space value -> parameter value (clipped to the bounds, rounded to 6 significant digits)."""
        value = 10.0 ** float(x) if self.log else float(x)
        return float(f"{min(max(value, self.low), self.high):.6g}")


#: The searched variables (``ent_coef`` only for agents whose constructor takes it).
VARIABLES: dict[str, Variable] = {
    "compute_weight": Variable(0.02, 1.0, log=True),
    "confidence_weight": Variable(0.0, 0.5),
    "ent_coef": Variable(0.0, 0.02),
}


def search_variables(algo: str) -> dict[str, Variable]:
    """The variables searched for agent ``algo``: :data:`VARIABLES`, without ``ent_coef`` if the agent has none."""
    from agents import resolve_algo

    _, cls = resolve_algo(algo)
    takes_ent = "ent_coef" in inspect.signature(cls.__init__).parameters
    return {k: v for k, v in VARIABLES.items() if k != "ent_coef" or takes_ent}


class RewardWeightingProblem(Problem):
    """pymoo problem: rows of ``X`` are reward weightings (search space of ``variables``); ``F = (error, executed_frac)``.

    Args:
        variables: Name -> :class:`Variable`, in column order.
        evaluate: ``fn(list of {name: value}) -> (n, 2) objectives``, one row per weighting.
    """

    def __init__(self, variables: Mapping[str, Variable], evaluate: Callable[[list[dict[str, float]]], np.ndarray]) -> None:
        self.variables = dict(variables)
        self._evaluate_params = evaluate
        lows, highs = zip(*(v.bounds() for v in self.variables.values()), strict=True)
        super().__init__(n_var=len(self.variables), n_obj=len(OBJECTIVES), xl=np.array(lows), xu=np.array(highs))

    def normalized(self, pop: Any) -> np.ndarray:
        """A pymoo population's ``X`` with every variable scaled to [0, 1] (for duplicate elimination)."""
        return (np.atleast_2d(pop.get("X")).astype(float) - self.xl) / (self.xu - self.xl)

    def decode(self, x: np.ndarray) -> dict[str, float]:
        """One row of ``X`` -> ``{name: parameter value}``."""
        return {name: var.decode(v) for (name, var), v in zip(self.variables.items(), np.asarray(x).reshape(-1), strict=True)}

    def _evaluate(self, X: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        out["F"] = self._evaluate_params([self.decode(x) for x in np.atleast_2d(X)])


def search_rewards(
    env_id: str = "ViTSkip-Shapes-v0",
    *,
    out_dir: str | os.PathLike,
    pop_size: int = 8,
    n_gen: int = 3,
    seed: int = 0,
    device: str = "auto",
    budget_steps: int = 60_000,
    algo: str = "ppo",
    val_images: int | None = 2000,
    test_images: int | None = None,
    dask_scheduler: str | None = None,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    env_kwargs: Mapping[str, Any] | None = None,
    callback: Callable[[int, pd.DataFrame], None] | None = None,
    num_envs: int = 256,
    agent_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Search reward weightings with NSGA-II; every individual is a short RL run scored by its ``DynamicViT``.

    Args:
        env_id: Registered ViTSkip id (its dataset and backbone).
        out_dir: Folder for the front, the evaluations, the models and the settings (created).
        pop_size: NSGA-II population (individuals per generation).
        n_gen: Generations, the first being the random initial population (``pop_size * n_gen`` runs).
        seed: Seeds NSGA-II and, through it, every individual's training run.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the workers' training and scoring.
        budget_steps: Environment steps per individual (rounded up to whole rollouts by the agent).
        algo: Agent name (see ``agents.ALGOS``) or ``"module:Class"``; its policy must be exportable.
        val_images: First images of ``val`` every individual is scored on (None: all).
        test_images: First images of ``test`` the front is scored on (None: the env's ``num_images``, else all).
        dask_scheduler: Address of a running Dask scheduler (``"tcp://host:8786"``); ``None``: a local cluster.
        n_workers: Local cluster worker processes; ``0`` evaluates serially in this process (no Dask needed).
        threads_per_worker: torch threads per worker (each worker runs one individual at a time).
        env_kwargs: Extra env keyword arguments (``backbone``, ``num_images``, ``obs_mode``, ``min_blocks``,
            ``accuracy_weight``...); not the searched weights.
        callback: ``fn(generation, front)`` after every generation (1-based); the front is already on disk.
        num_envs: Images in flight in each individual's training env.
        agent_kwargs: Extra agent constructor arguments (``{"learning_rate": 1e-3}``); not the searched ones.

    Returns:
        The final front (non-dominated on ``val``), as written to ``out_dir/front.parquet``: the
        columns of :data:`~agents.nsga2.front.FRONT_COLUMNS` (``search="rewards"``, ``split="val"``),
        every parameter (``compute_weight``, ``accuracy_weight``, ``confidence_weight``, ``ent_coef``),
        ``top1_test`` / ``executed_frac_test`` (whole ``test`` split, or its first ``num_images``),
        ``model`` (path of the member's ``DynamicViT``, relative to ``out_dir``), ``individual``,
        ``generation``, ``seed``, ``train_seconds``; sorted by ``executed_frac``.

    Raises:
        ValueError: Bad sizes, a searched weight given in ``env_kwargs``, a co-trained backbone or
            ``obs_mode="tokens"`` (its policy cannot be saved), or ``out_dir`` holding another search's models.
        ImportError: Dask is needed (``n_workers > 0`` or ``dask_scheduler``) but not installed.
        ConnectionError: ``dask_scheduler`` does not answer or has no workers.
        KeyboardInterrupt: After writing the current front and shutting the cluster down.
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.duplicate import DefaultDuplicateElimination
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.sampling.rnd import FloatRandomSampling

    out = Path(out_dir)
    images = {k: v for k, v in (("val_images", val_images), ("test_images", test_images)) if v is not None}
    _check_sizes(pop_size=pop_size, n_gen=n_gen, budget_steps=budget_steps, num_envs=num_envs,
                 threads_per_worker=threads_per_worker, **images)  # fmt: skip
    if n_workers < 0:
        raise ValueError(f"n_workers must be >= 0 (0 = serial in this process), got {n_workers}")
    variables = search_variables(algo)
    kwargs = _env_kwargs(env_id, env_kwargs, variables)
    clash = sorted(set(agent_kwargs or {}) & set(variables))
    if clash:
        raise ValueError(f"{clash} are searched by the reward search; leave them out of agent_kwargs")
    if dask_scheduler is None:
        from vitskip_env.env.options import resolve_device

        resolve_device(device)  # a GPU asked for on a machine without one fails here, not in every worker
    stale = sorted(out.glob(f"{MODELS_DIR}/rewards-*.safetensors"))
    if stale:
        raise ValueError(
            f"{str(out)!r} already holds models of a reward search ({len(stale)} in {MODELS_DIR}/); "
            "give a new out_dir or delete that folder first"
        )
    config = WorkerConfig(dict(kwargs), algo, int(budget_steps), int(num_envs), val_images, int(threads_per_worker),
                          device, dict(agent_kwargs or {}))  # fmt: skip
    state = _SearchState(out, env_id, variables, config, seed)
    state.backbone()  # fails fast (missing backbone file, wrong dataset) before any cluster starts
    atomic_write_text(out / "rewards_search.json", json.dumps(state.settings(pop_size, n_gen, dask_scheduler, n_workers),
                                                              indent=2, default=str) + "\n")  # fmt: skip
    runner = _make_runner(config, dask_scheduler, n_workers)
    problem = RewardWeightingProblem(variables, lambda params: state.evaluate(runner, params))
    algorithm = NSGA2(
        pop_size=pop_size, sampling=FloatRandomSampling(), crossover=SBX(prob=0.9, eta=15), mutation=PM(eta=20),
        eliminate_duplicates=DefaultDuplicateElimination(epsilon=DUPLICATE_TOLERANCE, func=problem.normalized),
    )  # fmt: skip
    algorithm.setup(problem, termination=("n_gen", n_gen), seed=seed, verbose=False)
    try:
        generation = 0
        while algorithm.has_next():
            algorithm.next()
            generation += 1
            front = state.write()
            if callback is not None:
                callback(generation, front.copy())
        front = state.front()
        test = runner.score([state.payloads[i] for i in front["individual"]], "test", test_images or kwargs.get("num_images"))
        front["top1_test"] = [s["top1"] for s in test]
        front["executed_frac_test"] = [s["executed_frac"] for s in test]
        return state.write(front)
    except KeyboardInterrupt:
        runner.cancel()
        state.write()
        raise
    finally:
        runner.close()


def _check_sizes(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _env_kwargs(env_id: str, env_kwargs: Mapping[str, Any] | None, variables: Mapping[str, Variable]) -> dict[str, Any]:
    import gymnasium as gym

    import vitskip_env  # registers the ids
    from vitskip_env.env import EnvOptions

    try:
        spec = gym.spec(env_id)
    except gym.error.Error as exc:
        raise ValueError(f"unknown env id {env_id!r}; registered ViTSkip ids: {sorted(vitskip_env.ENV_IDS)}") from exc
    user = dict(env_kwargs or {})
    searched = sorted(set(user) & set(variables))
    if searched:
        raise ValueError(f"{searched} are searched by the reward search; leave them out of env_kwargs")
    if "device" in user:
        raise ValueError("give the device as search_rewards(device=...), not in env_kwargs (the workers resolve it)")
    kwargs = {**spec.kwargs, **user}
    opts = EnvOptions.from_kwargs(kwargs, "search_rewards env_kwargs")
    opts.validate()
    if opts.backbone_mode != "frozen":
        raise ValueError(
            "the reward search trains every individual on one frozen backbone (backbone_mode='frozen'); a co-trained "
            "backbone would make each individual its own model. Co-train one weighting with train/ppo.py instead"
        )
    if opts.obs_mode == "tokens":
        raise ValueError("obs_mode='tokens' policies (attention extractor) cannot be saved; use obs_mode 'flat' or 'dict'")
    kwargs.setdefault("accuracy_weight", opts.accuracy_weight)
    kwargs.pop("split", None)  # training always runs on train, scoring on val and test
    return kwargs


def _make_runner(config: WorkerConfig, address: str | None, n_workers: int) -> Any:
    if address is None and n_workers == 0:
        return SerialRunner(config)
    try:
        from .dask_workers import DaskRunner
    except ImportError as exc:
        raise ImportError(
            f"the reward search runs its evaluations on Dask distributed, which is not installed ({exc}). Install it with "
            "`uv sync --extra dask` (or `pip install 'dask[distributed]'`), or pass n_workers=0 to evaluate serially"
        ) from exc
    return DaskRunner(config, address, n_workers)


class _SearchState:
    """The archive of evaluated individuals, and writing the front, the evaluations and the models."""

    def __init__(self, out: Path, env_id: str, variables: Mapping[str, Variable], config: WorkerConfig, seed: int) -> None:
        self.out, self.env_id, self.variables, self.config, self.seed = out, env_id, dict(variables), config, int(seed)
        self.rows: dict[int, dict[str, Any]] = {}
        self.payloads: dict[int, Mapping[str, Any]] = {}
        self.generation = 0
        self._backbone: Any = None

    def settings(self, pop_size: int, n_gen: int, scheduler: str | None, n_workers: int) -> dict[str, Any]:
        cfg = self.config
        plain = (str, int, float, bool, type(None))
        env_kwargs = {k: (v if isinstance(v, plain) else repr(v)) for k, v in cfg.env_kwargs.items()}
        return {
            "search": "rewards", "env": self.env_id, "seed": self.seed, "pop_size": pop_size, "n_gen": n_gen,
            "algo": cfg.algo, "budget_steps": cfg.budget_steps, "num_envs": cfg.num_envs, "val_images": cfg.val_images,
            "device": cfg.device, "threads_per_worker": cfg.threads, "dask_scheduler": scheduler, "n_workers": n_workers,
            "variables": {k: {"low": v.low, "high": v.high, "log": v.log} for k, v in self.variables.items()},
            "objectives": list(OBJECTIVES), "env_kwargs": env_kwargs, "agent_kwargs": dict(cfg.agent_kwargs),
        }  # fmt: skip

    def evaluate(self, runner: Any, params: list[dict[str, float]]) -> np.ndarray:
        """Run one generation's individuals; returns their objectives in order."""
        self.generation += 1
        first = len(self.rows)
        tasks = [{"index": i, "seed": individual_seed(self.seed, i), "params": p} for i, p in enumerate(params, start=first)]
        by_index = {t["index"]: t for t in tasks}

        def keep(result: dict[str, Any]) -> None:
            i = result["index"]
            self.payloads[i] = result.pop("policy")
            self.rows[i] = self._row(by_index[i], result)

        runner.map(tasks, keep)
        return np.array([[self.rows[t["index"]][o] for o in OBJECTIVES] for t in tasks], dtype=float)

    def _row(self, task: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
        params = {"accuracy_weight": float(self.config.env_kwargs["accuracy_weight"]), "ent_coef": float("nan"),
                  **task["params"]}  # fmt: skip
        return {
            "search": "rewards", "top1": result["top1"], "error": 100.0 - result["top1"],
            "executed_blocks": result["executed_blocks"], "executed_frac": result["executed_frac"],
            "compute": result["compute"], "split": "val",
            **{k: params[k] for k in (*REWARD_PARAMS, *AGENT_PARAMS)},
            "individual": int(task["index"]), "generation": self.generation, "seed": int(task["seed"]),
            "val_images": int(result["images"]), "train_seconds": float(result["train_seconds"]),
            "worker": result["worker"], "backbone_loads": int(result["backbone_loads"]),
        }  # fmt: skip

    def evaluations(self) -> pd.DataFrame:
        """Every individual evaluated so far, in evaluation order."""
        return pd.DataFrame([self.rows[i] for i in sorted(self.rows)])

    def front(self) -> pd.DataFrame:
        """The non-dominated individuals so far (on ``val``, one per distinct score) with model paths, by ``executed_frac``."""
        frame = self.evaluations()
        if frame.empty:
            return frame
        front = frame[non_dominated(frame, OBJECTIVES)].sort_values(["executed_frac", "error", "individual"])
        front = front.drop_duplicates(list(OBJECTIVES))  # equal scores: the first individual stands for them
        front = front.drop(columns=["worker", "backbone_loads"]).reset_index(drop=True)
        front["model"] = [f"{MODELS_DIR}/rewards-{i:04d}.safetensors" for i in front["individual"]]
        return front

    def write(self, front: pd.DataFrame | None = None) -> pd.DataFrame:
        """Save the front members' models, the front and the evaluations, then drop the models of former members.

        In this order, an interrupted write leaves a front whose every model file exists.
        """
        front = self.front() if front is None else front
        if front.empty:
            return front
        for row in front.itertuples(index=False):
            if not (self.out / row.model).is_file():
                self._save_model(row)
        write_front(self.evaluations(), self.out, name="evaluations")
        write_front(front, self.out)
        keep = set(front["model"])
        for path in (self.out / MODELS_DIR).glob("rewards-*.safetensors"):
            if f"{MODELS_DIR}/{path.name}" not in keep:
                path.unlink(missing_ok=True)
                path.with_suffix(".json").unlink(missing_ok=True)
        return front

    def backbone(self) -> Any:
        """The search's backbone on the CPU, for writing the front members' models (loaded once)."""
        if self._backbone is None:
            self._backbone = search_backbone(self.config.env_kwargs, "cpu")
        return self._backbone

    def _save_model(self, row: Any) -> None:
        from vitskip_env import DynamicViT

        dyn = DynamicViT(self.backbone(), policy_from_payload(self.payloads[row.individual]))
        values = {k: float(getattr(row, k)) for k in (*REWARD_PARAMS, *AGENT_PARAMS)}
        params = {k: v for k, v in values.items() if not math.isnan(v)}
        dyn.save(self.out / row.model, env=self.env_id, algo=self.config.algo, seed=int(row.seed), search="rewards",
                 params=params, budget_steps=self.config.budget_steps, top1_val=float(row.top1),
                 executed_frac_val=float(row.executed_frac), val_images=int(row.val_images))  # fmt: skip
