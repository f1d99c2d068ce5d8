"""``ViTSkipEnv``: one image travels through a ViT and the agent decides, block by block, what to skip."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from ..model.costs import CostModel
from ..model.exits import ExitHeads
from ..observations import ObservationEncoder, ObsMode
from ..rules import SkipContract, block_indices
from .core import SkipCore
from .cotrain import CotrainConfig
from .exit_core import ExitCore
from .infos import CoreAccess, check_action, check_reset_options, check_rewards, check_seed, single_step_info
from .options import EnvOptions, build_core, check_kwargs
from .render import render_frame
from .rewards import RewardFn
from .sampling import ImageSampler, Sampling, draw_compute_weights


class ViTSkipEnv(CoreAccess, gym.Env):
    """Learn, per image, which Vision Transformer blocks to skip.

    ## Description

    An episode is one image travelling through a ViT (a timm ``VisionTransformer`` held by
    :class:`~vitskip_env.SkippableViT`). Before each of the ``L`` blocks the agent sees the token
    state and decides to skip the block or execute it; after the last block the classifier head
    predicts. A skipped block does no arithmetic for that image (it is really skipped, never
    masked), so a good policy makes the ViT faster in wall-clock time. The engine is
    :class:`~vitskip_env.env.core.SkipCore`, shared with the native vector env
    :class:`~vitskip_env.ViTSkipVectorEnv` (use ``gym.make_vec`` for many images in flight).

    ## Action Space

    ``Discrete(2)``: ``0`` = skip the next block, ``1`` = execute it. Anything else (``2``, ``-1``,
    ``0.5``, NaN, arrays that are not 0-d) raises ``ValueError``. With ``min_blocks`` or
    ``always_execute``, :meth:`action_masks` tells which actions are allowed (for MaskablePPO); a
    disallowed skip is executed anyway and reported as ``info["action_overridden"]``.

    ``actions="skip_exit"``: ``Discrete(3)``, adding ``2`` = exit. Right after a block with an exit
    head (``exits``: LGViT heads from ``train/exits.py``, or ``"linear"``: the backbone's own norm and
    classifier) the episode may end at once with that head's prediction (``terminated=True``,
    ``info["exit_block"]`` = blocks passed); elsewhere, or before ``min_blocks`` blocks ran, exit is
    masked (:meth:`action_masks` ``[:, 2]``) and executes instead (``action_overridden``). Episodes
    then have different lengths; each exit head passed costs its FLOPs share in ``compute``.

    ## Observation Space

    ``obs_mode="flat"`` (default): ``Box(float32, (D + L + 1,))``

    | index          | observation                                              | min        | max       |
    |----------------|----------------------------------------------------------|------------|-----------|
    | 0 .. D-1       | class token after the blocks so far, standardised*        | -sqrt(D)   | sqrt(D)   |
    | D .. D+L-1     | one-hot index of the block about to be decided**          | 0          | 1         |
    | D+L            | blocks executed so far / L                               | 0          | 1         |

    \\* parameter-free layer norm over ``D`` (zero mean, unit variance), which bounds every entry
    by ``sqrt(D - 1)``; models without a class token use the mean of the patch tokens.
    \\** all zeros in the final observation (no block left).
    With ``actions="skip_exit"`` every mode adds ``exit`` ``(5,)`` in ``[-1, 1]`` (after
    ``executed_frac`` in the flat vector): exit allowed, the head's max probability, its entropy /
    log(C), its top-2 margin and the patience count (equal predictions in a row / exit points), each
    mapped from ``[0, 1]``; all ``-1`` where no head was just passed.
    ``obs_mode="dict"``: the same pieces as ``Dict(token=(D,), block=(L,), executed_frac=(1,))``;
    ``obs_mode="tokens"``: ``Dict(tokens=(T, D), block=(L,), executed_frac=(1,))``, the whole
    standardised token state for attention-based feature extractors. The encoder is the torch
    function :class:`~vitskip_env.observations.ObservationEncoder`, which ``DynamicViT`` reuses.

    ## Rewards

    A sum of named, weighted components (``info["reward_components"]`` holds the weighted
    values every step; they sum to the reward):

    - ``compute`` (each step): minus the cost share of the block if executed. Cost shares sum to 1
      over the blocks: FLOPs-proportional (``cost_model="flops"``) or measured latency
      (``"latency"``). Weight ``compute_weight`` (default 0.1, the value the training scripts use:
      executing every block costs 0.1 in total against 1 for a correct answer, so a block is worth
      running when it raises the chance of a correct answer by more than a tenth of its cost share;
      on shapes/demo it keeps PPO within 1 point of the static top-1 at about a third of the depth).
    - ``correct`` (last step): 1 if the prediction is right, else 0. Weight ``accuracy_weight`` (1.0).
    - ``confidence`` (last step): log-probability of the true class, floored at -10. Weight
      ``confidence_weight`` (0.0).

    ``reward_fn(ctx) -> {name: (N,) tensor}`` replaces the components (see ``rewards.py``).

    ## Starting State

    ``reset`` takes the next image of the split: without replacement, in a fresh random order
    every epoch drawn from ``np_random`` (``sampling="shuffle"``), or in order
    (``sampling="sequential"``, evaluation). ``reset(seed=s)`` restarts the stream;
    ``reset(options={"image_index": k})`` picks image ``k`` without consuming the stream.
    The reset info holds ``image_index``.

    ## Episode End

    Every episode is exactly ``L`` steps and then terminates (``terminated=True``); it is never
    truncated. With ``actions="skip_exit"`` it may end earlier, by exiting. The last step's info adds
    ``label``, ``prediction``, ``correct``, ``is_success``
    (= ``correct``, for SB3's success rate), ``confidence`` (softmax probability of the predicted
    class), ``executed_mask`` (bool ``(L,)``),
    ``executed_blocks``, ``compute_ratio`` (cost share spent, in [0, 1]; with exits, the heads
    passed too), ``image_index``, for datasets that know it (shapes), ``difficulty``, and with
    ``actions="skip_exit"`` ``exit_block`` (blocks passed before leaving; ``L`` at the final classifier).

    ## Registration

    ``import vitskip_env`` registers every id of ``vitskip_env.ENV_IDS`` (and imports neither torch
    nor timm); the entry points are the strings ``"vitskip_env.env.single_env:ViTSkipEnv"`` and, for
    ``gym.make_vec``, ``"vitskip_env.env.vector_env:ViTSkipVectorEnv"``. A fresh process that has not
    imported the package (RLlib workers, spawned workers) can use ``"vitskip_env:ViTSkip-Shapes-v0"``.

    ## Arguments

    ```python
    import gymnasium as gym, vitskip_env
    env = gym.make("ViTSkip-Shapes-v0")                           # shipped demo backbone, offline
    env = gym.make("ViTSkip-CIFAR100-v0", data_root="~/data", download=True, backbone="runs/bb.safetensors")
    env = gym.make("ViTSkip-Shapes-v0", backbone="micro", backbone_weights="random", num_images=256)  # tests
    ```

    - ``dataset`` / ``split`` / ``data_root`` / ``download``: the data (``make_dataset``); ``split``
      is ``"train"`` (default), ``"val"`` (held out for model selection) or ``"test"``. Nothing is
      downloaded unless ``download=True``.
    - ``num_images``: use only the first ``num_images`` images of the split (fast tests, quick runs).
    - ``backbone``: a ``.safetensors`` path from ``SkippableViT.save``, a preset or timm name (its
      trained file from ``train/backbone.py`` is required), ``"random"`` (untrained default preset)
      or an ``nn.Module`` (``SkippableViT`` or timm ViT, used as is). ``None`` = the dataset's
      default preset (``demo`` for shapes and digits, ``tiny`` otherwise). The full rule is in
      ``vitskip_env/env/options.py``.
    - ``backbone_weights``: ``"trained"`` (default) or ``"random"`` (untrained, fixed seed 0).
    - ``backbone_mode``: ``"frozen"`` (inference mode, weights never change) or ``"cotrain"``
      (a supervised step on the backbone every ``cotrain["every"]`` finished episodes through the
      executed blocks only; settings in ``cotrain``, a ``CotrainConfig`` or dict).
    - ``obs_mode``: ``"flat"``, ``"dict"`` or ``"tokens"``.
    - ``accuracy_weight``, ``confidence_weight``, ``compute_weight``, ``reward_fn``, ``cost_model``: rewards.
    - ``min_blocks``: execute at least this many blocks per image; ``always_execute``: blocks never skipped.
    - ``sampling``: ``"shuffle"`` or ``"sequential"``.
    - ``device``: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``...
    - ``render_mode``: ``None`` or ``"rgb_array"`` (the image beside a strip: green = executed,
      grey = skipped, yellow = next).
    - ``actions``: ``"skip"`` (default) or ``"skip_exit"`` (see Action Space; frozen backbone and
      built-in reward components only); ``exits``: the heads of ``"skip_exit"``: an exit file (it
      holds its backbone: leave ``backbone`` unset, or pass the exit file as ``backbone``),
      ``"linear"``, an ``ExitHeads`` of the backbone, or ``None`` (the backbone's exit file from
      ``train/exits.py``, when there is one).
    - ``compute_weight_range``: ``(lo, hi)`` makes the env budget-conditioned: each episode draws its
      compute weight log-uniformly in the range (from ``np_random``; ``reset(options={"compute_weight":
      w})`` pins it), the reward uses it in place of ``compute_weight``, the observation gains the
      ``budget`` entry (its log-scale position, in ``[-1, 1]``) and ``info["compute_weight"]`` of the
      last step reports it. One policy then serves every compute budget (``DynamicViT.set_budget``).

    Unknown or misspelt keyword arguments raise ``TypeError`` naming the closest valid one, in
    Python's own wording (``got an unexpected keyword argument 'frameskip'``), so that clients
    which probe optional arguments (TorchRL's ``GymEnv`` passes ``frameskip``) drop them and retry.

    ## Registered Configurations

    ``ViTSkip-Shapes-v0`` (offline default), ``ViTSkip-Relations-v0`` (offline, a relational task
    where depth matters), ``ViTSkip-CIFAR10-v0``, ``ViTSkip-CIFAR100-v0``,
    ``ViTSkip-TinyImageNet-v0`` and, with scikit-learn installed, ``ViTSkip-Digits-v0``; they
    differ only in ``dataset``. ``gym.make_vec(id, num_envs=N)`` returns the native
    ``ViTSkipVectorEnv``. In a process that has not imported ``vitskip_env`` (RLlib remote
    workers, spawned workers) use ``"vitskip_env:ViTSkip-Shapes-v0"``: Gymnasium imports the
    package, which registers the ids, before making the env.

    ## Version History

    - v0: Initial version.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        dataset: str = "shapes",
        split: Literal["train", "val", "test"] = "train",
        backbone: str | os.PathLike | nn.Module | None = None,
        backbone_weights: Literal["trained", "random"] = "trained",
        backbone_mode: Literal["frozen", "cotrain"] = "frozen",
        obs_mode: ObsMode = "flat",
        accuracy_weight: float = 1.0,
        confidence_weight: float = 0.0,
        compute_weight: float = 0.1,
        reward_fn: RewardFn | None = None,
        cost_model: CostModel = "flops",
        min_blocks: int = 0,
        always_execute: Sequence[int] = (),
        sampling: Sampling = "shuffle",
        num_images: int | None = None,
        cotrain: CotrainConfig | Mapping[str, Any] | None = None,
        data_root: str | os.PathLike | None = None,
        download: bool = False,
        device: str | torch.device = "auto",
        render_mode: str | None = None,
        actions: Literal["skip", "skip_exit"] = "skip",
        exits: str | os.PathLike | ExitHeads | None = None,
        compute_weight_range: tuple[float, float] | None = None,
        **unknown: Any,
    ) -> None:
        check_kwargs(unknown, type(self).__name__)
        self.options = EnvOptions(
            dataset=dataset,
            split=split,
            backbone=backbone,
            backbone_weights=backbone_weights,
            backbone_mode=backbone_mode,
            obs_mode=obs_mode,
            accuracy_weight=accuracy_weight,
            confidence_weight=confidence_weight,
            compute_weight=compute_weight,
            reward_fn=reward_fn,
            cost_model=cost_model,
            min_blocks=min_blocks,
            always_execute=block_indices(always_execute),
            sampling=sampling,
            num_images=num_images,
            cotrain=cotrain,
            data_root=data_root,
            download=download,
            device=device,
            render_mode=render_mode,
            actions=actions,
            exits=exits,
            compute_weight_range=compute_weight_range,
        )
        self.core: SkipCore = build_core(self.options, 1)
        self.render_mode = render_mode
        self.observation_space = self.core.encoder.space()
        #: Episodes that end by exiting (``actions="skip_exit"``): ``Discrete(3)``.
        self.per_row = isinstance(self.core, ExitCore)
        self.action_space = spaces.Discrete(3 if self.per_row else 2)
        self._ended = False
        self.sampler = ImageSampler(len(self.core.dataset), 1, sampling)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Start an episode on the next image (see Starting State)."""
        seed = check_seed(seed)
        options = check_reset_options(options, ("image_index", "compute_weight"))
        super().reset(seed=seed)
        if seed is not None or not self.sampler.rngs or self.sampler.rngs[0] is not self.np_random:
            self.sampler.seed([self.np_random])
        if "image_index" in options:
            k = options.pop("image_index")
            if not isinstance(k, (int, np.integer)) or not 0 <= k < len(self.dataset):
                raise ValueError(f"options['image_index'] must be an integer in [0, {len(self.dataset)}), got {k!r}")
            index = np.array([k], dtype=np.int64)
        else:
            index = self.sampler.next()
        weight = options.pop("compute_weight", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; supported: ['image_index', 'compute_weight']")
        packed = self.core.start(index, draw_compute_weights(self.core.budget_range, [self.np_random], weight)).cpu().numpy()
        self._ended = False
        return self._row(packed), {"image_index": int(index[0])}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Skip (0) or execute (1) the next block, or exit (2, ``actions="skip_exit"``)."""
        value = check_action(action, int(self.action_space.n))
        if self._ended:
            raise RuntimeError("the episode is over: call reset() before stepping")
        result = self.core.step(torch.tensor([value], device=self.core.device))
        host = SkipCore.to_host(result)
        check_rewards(host, self.options.reward_fn is not None)
        terminated = bool(host["ended"][0]) if self.per_row else bool(result.terminal)
        self._ended = terminated
        info = single_step_info(host) if terminated or not self.per_row else single_step_info(_step_only(host))
        return self._row(host["obs"]), float(host["reward"][0]), terminated, False, info

    def action_masks(self) -> np.ndarray:
        """``bool (A,)``: ``[skip allowed, execute allowed(, exit allowed)]`` for the next block (MaskablePPO's hook)."""
        return self.core.action_masks()[0].cpu().numpy()

    def skip_contract(self) -> SkipContract[ObservationEncoder]:
        """The observation encoder and the skip rules of this env: what a deployed policy must share.

        ``encoder, rules = env.unwrapped.skip_contract()``; ``agents.export_policy`` reads them here.
        """
        return self.core.skip_contract()

    def render(self) -> np.ndarray | None:
        """The image beside a strip of the blocks (``render_mode="rgb_array"``)."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render mode; create the env with render_mode='rgb_array'")
            return None
        if self.core.tokens is None:
            raise RuntimeError("nothing to render before reset()")
        core = self.core
        image = core.dataset.images[core.image_index[0]].cpu().numpy()
        block = int(core.blocks[0]) if isinstance(core, ExitCore) else core.block
        return render_frame(image, core.executed[0].cpu().numpy(), block)

    def _row(self, packed: np.ndarray) -> Any:
        obs = self.core.encoder.unpack_numpy(packed)
        if isinstance(obs, dict):
            return {k: v[0] for k, v in obs.items()}
        return obs[0]


def _step_only(host: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A host step without its episode-end fields (an ``ExitCore`` step that did not end the episode)."""
    return {k: v for k, v in host.items() if not k.startswith("final/")}
