"""``SkipPolicy``: the deployable skip decision (observation encoder + small network + the env's rules).

``agents.export.export_policy`` turns a trained agent into one; :class:`~vitskip_env.DynamicViT`
runs it before every block. The deterministic rule of each agent family is reproduced bit for bit
(:func:`deterministic_action`), a ``VecNormalize`` observation normalisation is folded in (in
float64, as VecNormalize computes it), and the env's skip rules (one
:class:`~vitskip_env.rules.SkipRules`: ``min_blocks`` / ``always_execute``) travel with it.
Nothing here imports Stable-Baselines3 or the env wing: the encoder and the rules come from the
env's ``skip_contract()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..model.fileformat import on_meta, shape_mismatches
from ..observations import ObservationEncoder
from ..rules import RulesView, SkipContract, SkipRules
from .netspec import build_net, describable, describe_net, flat_sequential

Decision = Literal["categorical", "maskable", "argmax"]
#: How the deterministic action is read from the network output, mirroring each family exactly:
#: ``"categorical"`` SB3's ``Categorical.mode()`` (PPO, A2C, TRPO), ``"maskable"`` sb3-contrib's
#: ``MaskableCategorical`` (MaskablePPO), ``"argmax"`` raw argmax (DQN / QR-DQN values, ARS, agents.reinforce).
DECISIONS: tuple[str, ...] = ("categorical", "maskable", "argmax")


def deterministic_action(
    logits: torch.Tensor, decision: Decision = "categorical", action_masks: torch.Tensor | None = None
) -> torch.Tensor:
    """``int64 (N,)`` deterministic actions from ``(N, A)`` network outputs, bit for bit as SB3 picks them.

    SB3 takes ``argmax(Categorical(logits).probs)``: the logits are normalised by their
    log-sum-exp, soft-maxed, and ``torch.argmax`` returns the *first* maximum, so an exact tie
    (probabilities equal after rounding) picks action 0 = skip. MaskableCategorical normalises a
    second time (in ``apply_masking``, masked logits set to ``-1e8``); the rounding of each step
    is reproduced, so near-ties resolve as in ``model.predict(obs, deterministic=True)``.

    Args:
        logits: ``(N, A)`` logits (or Q-values / scores for ``"argmax"``).
        decision: One of :data:`DECISIONS`.
        action_masks: Optional ``bool (N, A)``, True = allowed.
    """
    if decision == "argmax":
        if action_masks is not None:
            logits = logits.masked_fill(~action_masks, float("-inf"))
        return logits.argmax(1)
    if decision not in ("categorical", "maskable"):
        raise ValueError(f"decision must be one of {list(DECISIONS)}, got {decision!r}")
    x = logits - logits.logsumexp(-1, keepdim=True)  # torch.distributions.Categorical(logits=...)
    if decision == "maskable" or action_masks is not None:
        if action_masks is not None:
            x = torch.where(action_masks, x, torch.tensor(-1e8, dtype=x.dtype, device=x.device))
        x = x - x.logsumexp(-1, keepdim=True)  # MaskableCategorical.apply_masking re-initialises
    return F.softmax(x, -1).argmax(1)


class SkipPolicy(RulesView, nn.Module):
    """Observation encoder + small network -> execute / skip, deterministic, with the env's skip rules.

    ``agents.export.export_policy(model, env)`` builds one from a trained agent; it can also be
    built directly from any network mapping observations to 2 action scores (0 = skip, 1 = execute),
    e.g. ``SkipPolicy.from_contract(env.unwrapped.skip_contract(), net)``.

    Args:
        net: Network from the (normalised) observation to ``(N, 2)`` logits: a ``(N, obs_dim)``
            float32 tensor in ``"flat"`` mode, else the dict of ``(N, *shape)`` tensors the env's
            Dict space holds. Saving needs a network :mod:`vitskip_env.deploy.netspec` can describe (MLPs).
        encoder: The training env's observation encoder (``env.unwrapped.skip_contract().encoder``) or its ``config()``.
        decision: How the action is read from the logits (see :data:`DECISIONS`).
        min_blocks: The env's ``min_blocks``: at least this many blocks per image.
        always_execute: The env's ``always_execute`` blocks (the policy is not consulted there).
        rules: The env's rules as one :class:`~vitskip_env.rules.SkipRules` (instead of ``min_blocks``
            and ``always_execute``); its depth must be the encoder's.
        obs_mean: VecNormalize running mean, packed in the encoder's order (``(obs_dim,)``); ``None`` = raw observations.
        obs_var: VecNormalize running variance, same layout.
        obs_norm_mask: ``bool (obs_dim,)``: which entries VecNormalize normalised (``None`` = all).
        clip_obs: VecNormalize ``clip_obs``.
        epsilon: VecNormalize ``epsilon``.

    The network stays in eval mode (no dropout noise) whatever ``train()`` says.
    """

    def __init__(
        self,
        net: nn.Module,
        encoder: ObservationEncoder | Mapping[str, Any],
        *,
        decision: Decision = "categorical",
        min_blocks: int = 0,
        always_execute: Iterable[int] = (),
        rules: SkipRules | None = None,
        obs_mean: torch.Tensor | np.ndarray | None = None,
        obs_var: torch.Tensor | np.ndarray | None = None,
        obs_norm_mask: torch.Tensor | np.ndarray | None = None,
        clip_obs: float = 10.0,
        epsilon: float = 1e-8,
    ) -> None:
        super().__init__()
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {list(DECISIONS)}, got {decision!r}")
        enc = encoder if isinstance(encoder, ObservationEncoder) else ObservationEncoder(**encoder)
        self.encoder = enc
        self.decision: Decision = decision
        if rules is None:
            rules = SkipRules(enc.depth, min_blocks, always_execute)
        elif min_blocks != 0 or tuple(always_execute):
            raise ValueError("give the skip rules as rules= or as min_blocks / always_execute, not both")
        elif rules.depth != enc.depth:
            raise ValueError(f"the rules are for {rules.depth} blocks but the encoder's observations for {enc.depth}")
        #: The skip rules the decisions pass through (``DynamicViT`` applies them).
        self.rules = rules
        self.net = flat_sequential(net) if describable(net) else net
        self.normalized = obs_mean is not None
        if (obs_var is None) != (obs_mean is None):
            raise ValueError("obs_mean and obs_var come together (both from the VecNormalize statistics) or not at all")
        if self.normalized:
            stats = {"obs_mean": obs_mean, "obs_var": obs_var}
            if obs_norm_mask is not None:
                stats["obs_norm_mask"] = obs_norm_mask
            for name, value in stats.items():
                t = torch.as_tensor(value)
                if tuple(t.shape) != (enc.obs_dim,):
                    raise ValueError(f"{name} must have shape ({enc.obs_dim},) (the packed observation), got {tuple(t.shape)}")
                self.register_buffer(name, t.bool() if name == "obs_norm_mask" else t.double())
        self.has_norm_mask = obs_norm_mask is not None
        self.clip_obs = float(clip_obs)
        self.epsilon = float(epsilon)
        self.net.eval()

    @classmethod
    def from_contract(
        cls,
        contract: SkipContract[ObservationEncoder] | tuple[ObservationEncoder, SkipRules] | Any,
        net: nn.Module,
        **kwargs: Any,
    ) -> SkipPolicy:
        """A policy with the observation encoder and skip rules of an env.

        Args:
            contract: ``env.unwrapped.skip_contract()`` (or an ``(encoder, rules)`` pair), or anything
                with a ``skip_contract()`` method (a ViTSkip env, its ``SkipCore``).
            net: The network (see the class docstring).
            **kwargs: The other constructor arguments (``decision``, the VecNormalize statistics...).
        """
        accessor = getattr(contract, "skip_contract", None)
        encoder, rules = accessor() if callable(accessor) else contract
        return cls(net, encoder, rules=rules, **kwargs)

    def train(self, mode: bool = True) -> SkipPolicy:
        """Set the mode of the module but keep the network in eval mode (decisions stay deterministic)."""
        super().train(mode)
        self.net.eval()
        return self

    # ------------------------------------------------------------------ decisions
    def normalize(self, packed: torch.Tensor) -> torch.Tensor:
        """VecNormalize's observation normalisation, in float64 as it computes it, back to float32."""
        if not self.normalized:
            return packed
        x = packed.double()
        y = ((x - self.obs_mean) / torch.sqrt(self.obs_var + self.epsilon)).clamp(-self.clip_obs, self.clip_obs)
        if self.has_norm_mask:
            y = torch.where(self.obs_norm_mask, y, x)
        return y.float()

    def logits(self, packed: torch.Tensor) -> torch.Tensor:
        """``(N, n_actions)`` network outputs for packed observations ``(N, obs_dim)`` (as ``encoder.pack`` returns them)."""
        x: Any = self.normalize(packed)
        if self.encoder.mode != "flat":
            # Contiguous entries, as SB3 builds them from the env's numpy dict (same kernels, same rounding).
            x = {k: v.contiguous() for k, v in self.encoder.split(x).items()}
        # The layers' forward methods, called directly: the same arithmetic without nn.Module.__call__'s
        # bookkeeping (a fifth of the decision's cost at batch 1 on CPU; hooks on the layers are not run).
        net = self.net
        for layer in net if type(net) is nn.Sequential else (net,):
            x = layer.forward(x)
        return x

    @property
    def n_actions(self) -> int:
        """2 (skip, execute), or 3 (skip, execute, exit) for a policy trained with ``actions="skip_exit"``."""
        return 3 if self.encoder.exit_features else 2

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        """``bool (N,)``: execute (True) or skip, before the constraints (see :meth:`DynamicViT.decide`)."""
        return deterministic_action(self.logits(packed), self.decision).bool()

    def predict(
        self,
        observation: np.ndarray | Mapping[str, np.ndarray],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, None]:
        """SB3-style ``predict`` on env observations (one or a batch): ``(actions int64, None)``.

        Raises:
            ValueError: ``deterministic=False`` (a ``SkipPolicy`` only holds the deterministic policy).
        """
        if not deterministic:
            raise ValueError("SkipPolicy is the deterministic policy; sample with the training agent instead")
        packed, single = self.pack_numpy(observation)
        masks = None
        if action_masks is not None:
            masks = torch.as_tensor(np.asarray(action_masks), dtype=torch.bool, device=packed.device).reshape(
                -1, self.n_actions
            )
        with torch.no_grad():
            actions = deterministic_action(self.logits(packed), self.decision, masks).cpu().numpy()
        return (actions[0] if single else actions), None

    def pack_numpy(self, observation: np.ndarray | Mapping[str, np.ndarray]) -> tuple[torch.Tensor, bool]:
        """Env observation(s) -> packed ``float32 (N, obs_dim)`` on the policy's device, and whether it was one."""
        device = next(iter([*self.net.parameters(), *self.buffers()]), torch.empty(0)).device
        if isinstance(observation, Mapping):
            parts = self.encoder.parts
            first = np.asarray(observation[next(iter(parts))])
            single = first.ndim == len(next(iter(parts.values())))
            n = 1 if single else first.shape[0]
            cols = [np.asarray(observation[k], dtype=np.float32).reshape(n, -1) for k in parts]
            arr = np.concatenate(cols, axis=1)
        else:
            arr = np.asarray(observation, dtype=np.float32)
            single = arr.ndim == 1
            arr = arr.reshape(-1, self.encoder.obs_dim)
        return torch.from_numpy(np.ascontiguousarray(arr)).to(device), single

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """JSON config (encoder, decision rule, constraints, network layers, normalisation settings).

        Raises:
            NotImplementedError: The network is not a plain MLP-like ``nn.Sequential`` (see ``netspec``).
        """
        return {
            "encoder": self.encoder.config(),
            "decision": self.decision,
            **self.rules.config(),  # "min_blocks", "always_execute"
            "net": describe_net(self.net),
            "obs_norm": {"clip_obs": self.clip_obs, "epsilon": self.epsilon, "masked": self.has_norm_mask}
            if self.normalized
            else None,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> SkipPolicy:
        """Rebuild from :meth:`config` and this module's ``state_dict`` (strict).

        The network is first built on the ``meta`` device and its parameter shapes compared with
        ``state``, so a config naming huge layers fails before anything is allocated.

        Raises:
            ValueError: A malformed network description, or a state that does not match it.
        """
        spec = config["net"]
        _refuse_placement(spec)
        with on_meta():
            probe = build_net(spec)
        expected = {f"net.{k}": v for k, v in probe.state_dict().items()}
        problems = shape_mismatches(expected, {k: v for k, v in state.items() if k.startswith("net.")})
        if problems:
            raise ValueError(f"policy weights do not match the network in its config: {problems}")
        norm = config.get("obs_norm")
        stats: dict[str, Any] = {}
        if norm is not None:
            stats = {"obs_mean": state.get("obs_mean"), "obs_var": state.get("obs_var"), "clip_obs": norm["clip_obs"]}
            stats["epsilon"] = norm["epsilon"]
            if norm.get("masked"):
                stats["obs_norm_mask"] = state.get("obs_norm_mask")
            if stats["obs_mean"] is None or stats["obs_var"] is None:
                raise ValueError("the config says the observations are normalised but obs_mean / obs_var are missing")
        encoder = ObservationEncoder(**config["encoder"])
        rules = SkipRules.from_config(config, encoder.depth)
        policy = cls(build_net(spec), encoder, decision=config["decision"], rules=rules, **stats)
        try:
            policy.load_state_dict(dict(state), strict=True)
        except RuntimeError as exc:
            raise ValueError(f"policy weights do not match the network in its config: {exc}") from exc
        return policy


#: Layer arguments a saved network may not hold: they would place the probe's parameters off the ``meta`` device.
_PLACEMENT = ("device", "dtype")


def _refuse_placement(spec: Any, level: int = 0) -> None:
    """Refuse a layer list naming a ``device`` or ``dtype``: the probe would allocate before its sizes are checked."""
    if not isinstance(spec, list) or level > 16:
        return  # build_net reports a malformed list
    for entry in spec:
        if not isinstance(entry, dict):
            continue
        named = [k for k in _PLACEMENT if k in entry]
        if named:
            raise ValueError(
                f"a {entry.get('type')!r} layer of the policy network names {named}: a saved network never does "
                "(its parameters are float32 and follow the module's device)"
            )
        nets = entry.get("nets")
        for sub in nets.values() if isinstance(nets, dict) else ():
            _refuse_placement(sub, level + 1)
