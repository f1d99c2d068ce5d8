"""``DynamicViT``: a ViT combined with a skip policy, for deployment with real per-image skipping.

Per block, for the whole batch: the observation of every row (the same
:class:`~vitskip_env.observations.ObservationEncoder` the environments use, on the current tokens)
-> the policy's deterministic decision -> the environment's skip rules (the same
:class:`~vitskip_env.rules.SkipRules` object: ``always_execute``, ``min_blocks``) -> the block runs
on the gathered executing rows only and the result is scattered back
(:func:`~vitskip_env.model.run_executing_rows`, the function ``SkipCore`` steps with; a block no
row executes is not called). So a deployed policy sees exactly the observations and obeys exactly
the rules it was trained with, and for the same images ``DynamicViT`` reproduces the environment's
executed masks and predictions.

Host synchronisation: everything per block stays on the device except the ``nonzero`` that sizes
the gather; that one is inherent to real skipping with eager kernels (the sub-batch shape is
data-dependent) and on a GPU costs one round trip per decided block. Blocks in
``always_execute`` skip the policy and the sync altogether. On CPU every op is synchronous anyway,
so there the decision runs folded (:mod:`vitskip_env.deploy.folded`: ~8 kernels instead of ~20, exact
decisions kept; a row's token features are recomputed only after a block changed it, and up to
:data:`HOST_BATCH` images decide in NumPy) and a batch of one image runs or skips each block
without a gather.

A saved ``DynamicViT`` is one safetensors file (``backbone.vit.*`` = the timm weights,
``policy.*`` = the policy network and observation statistics; its JSON config in the header and in
a readable ``.json`` beside it), loaded without Stable-Baselines3 or pickle, and without trusting its
header: every size it states is checked against the stored tensors first (:mod:`vitskip_env.model.fileformat`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..files import atomic_path, atomic_write_text
from ..model import SkippableViT, backbone_from_config, run_executing_rows
from ..model.fileformat import VitskipFileError, check_save_path, file_errors, read_vitskip_file, require, where_of
from ..observations import budget_feature, encoder_for, executed_fraction
from .budget import calibrate, weight_for_fraction
from .folded import FoldedDecision
from .policy import DECISIONS, Decision, SkipPolicy, deterministic_action

__all__ = ["DECISIONS", "FORMAT", "Decision", "DynamicViT", "SkipPolicy", "deterministic_action"]

FORMAT = "vitskip-dynamic"
FORMAT_VERSION = 1
#: Up to this many CPU images the folded decision runs in NumPy (below torch's per-kernel dispatch cost).
HOST_BATCH = 16


class DynamicViT(nn.Module):
    """A :class:`~vitskip_env.SkippableViT` whose blocks a :class:`SkipPolicy` skips per image, for real.

    Args:
        backbone: The ViT (the same weights the policy was trained on).
        policy: The skip policy; its encoder must match the backbone (moved to the backbone's device).

    Example:
        >>> dyn = DynamicViT(vit, policy)                       # doctest: +SKIP
        >>> logits, executed = dyn(images, return_mask=True)    # doctest: +SKIP
        >>> dyn.save("runs/x/dynamic_vit.safetensors")          # doctest: +SKIP
        >>> dyn = DynamicViT.load("runs/x/dynamic_vit.safetensors")  # doctest: +SKIP

    To run the backbone in bf16, cast the backbone only (``dyn.backbone.to(torch.bfloat16)``): the
    observations are float32 whatever the token dtype, and the policy keeps deciding in float32.
    """

    def __init__(self, backbone: SkippableViT, policy: SkipPolicy) -> None:
        super().__init__()
        if not isinstance(backbone, SkippableViT):
            raise TypeError(f"backbone must be a SkippableViT, got {type(backbone).__name__}")
        if not isinstance(policy, SkipPolicy):
            raise TypeError(
                f"policy must be a SkipPolicy, got {type(policy).__name__}; convert a trained agent with "
                "agents.export_policy(model, env)"
            )
        if policy.encoder.exit_features:
            raise ValueError(
                "this policy was trained with actions='skip_exit' (skip / execute / exit): deploy it with "
                "SkipExitViT(backbone, heads, policy), which runs its exit heads"
            )
        _check_encoder(backbone, policy.encoder.config())
        self.backbone = backbone
        self.policy = policy.to(next(backbone.parameters()).device)
        self.meta: dict[str, Any] = {}
        self._compiled_decide: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        self._weight: float | None = None
        self._budget: torch.Tensor | None
        self.register_buffer("_budget", None, persistent=False)  # the policy's `budget` entry (moves with .to)
        if policy.encoder.budget_range is not None:  # the geometric middle of the range until set
            lo, hi = policy.encoder.budget_range
            self.set_compute_weight(math.sqrt(lo * hi), refold=False)
        #: The folded decision (``None``: the policy's form is not supported; the exact path runs).
        self.folded = FoldedDecision.build(self.policy, self._budget_value())

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return self.backbone.depth

    # ------------------------------------------------------------------ the compute knob (budget-conditioned policies)
    @property
    def budget_range(self) -> tuple[float, float] | None:
        """``(lo, hi)`` compute weights the policy was trained on; ``None`` for a policy without a compute knob."""
        return self.policy.encoder.budget_range

    @property
    def compute_weight(self) -> float | None:
        """The compute weight the policy currently decides with (budget-conditioned policies), else ``None``."""
        return self._weight

    def set_compute_weight(self, weight: float, *, refold: bool = True) -> DynamicViT:
        """Decide as if each block cost ``weight`` (inside :attr:`budget_range`); returns self.

        Raises:
            ValueError: A policy without a compute knob, or ``weight`` outside the trained range.
        """
        if self.budget_range is None:
            raise ValueError("this policy has no compute knob: train one with compute_weight_range=(lo, hi) "
                             "(train/ppo.py --budget-range LO HI)")  # fmt: skip
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"compute weight must be a number in {list(self.budget_range)}, got {weight!r}")
        feature = budget_feature(float(weight), self.budget_range)  # raises outside the range
        self._weight = float(weight)
        self._budget = torch.tensor([feature], dtype=torch.float32, device=next(self.backbone.parameters()).device)
        if refold:
            self.refold()
        return self

    def set_budget(self, fraction: float) -> DynamicViT:
        """Run about ``fraction`` of the blocks (mean over images), through the stored calibration; returns self.

        Raises:
            ValueError: No compute knob, no calibration (``calibrate_budget`` first), or ``fraction``
                outside the calibrated span (the message gives it).
        """
        calibration = self.meta.get("budget_calibration")
        if self.budget_range is None:
            raise ValueError("this policy has no compute knob: train one with compute_weight_range=(lo, hi) "
                             "(train/ppo.py --budget-range LO HI)")  # fmt: skip
        if calibration is None:
            raise ValueError("set_budget needs a calibration: call dyn.calibrate_budget(val_images) once "
                             "(train/ppo.py --budget-range does and saves it), or use set_compute_weight")  # fmt: skip
        return self.set_compute_weight(weight_for_fraction(calibration, fraction))

    def calibrate_budget(self, images: torch.Tensor, *, points: int = 13, batch_size: int = 512) -> dict[str, list[float]]:
        """Measure the executed fraction per compute weight on normalised ``images`` and keep it (saved with the model)."""
        self.meta["budget_calibration"] = calibrate(self, images, points=points, batch_size=batch_size)
        return self.meta["budget_calibration"]

    def _budget_value(self) -> float | None:
        return None if self._budget is None else float(self._budget[0])

    def decide(self, block: int, tokens: torch.Tensor, executed: torch.Tensor) -> torch.Tensor:
        """``bool (N,)``: which rows execute ``block``, after the skip rules (``always_execute``, ``min_blocks``).

        On CPU with a policy :class:`~vitskip_env.deploy.folded.FoldedDecision` supports, the decision runs
        folded (~8 kernels instead of ~20) and rows whose margin is within rounding of a tie are
        re-decided by the exact path, so the result is the exact path's either way. On other
        devices (and after :meth:`compiled`) the exact path runs alone: no host synchronisation.

        Args:
            block: Block index.
            tokens: ``(N, T, D)`` token state before the block.
            executed: ``bool (N, depth)`` blocks executed so far.
        """
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self.decide(block, tokens, executed)
        if self._compiled_decide is not None:
            return self._compiled_decide(block, tokens, executed)
        folded = self.folded
        if folded is None or tokens.device.type != "cpu":
            return self._decide(block, tokens, executed)
        if tokens.shape[0] <= HOST_BATCH and folded.has_host_path:  # NumPy on the host: no torch kernel per op
            margin = folded.margin_host(tokens, block, executed.numpy().sum(1))
            execute = torch.from_numpy(self._settle_host(folded, block, margin, tokens, executed))
        else:
            margin = folded(tokens, block, executed.sum(1, dtype=torch.float32))
            execute = self._settle(folded, block, margin, tokens, executed)
        return self._apply_rules(block, execute, executed)

    def _settle(
        self, folded: FoldedDecision, block: int, margin: torch.Tensor, tokens: torch.Tensor, executed: torch.Tensor
    ) -> torch.Tensor:
        """``margin > 0``, with the rows within rounding of a tie re-decided by the exact path."""
        execute = margin > 0
        unsure = margin.abs() <= folded.tol
        if unsure.any():
            rows = unsure.nonzero().squeeze(1)
            execute[rows] = self._exact(block, tokens[rows], executed[rows])
        return execute

    def _settle_host(
        self, folded: FoldedDecision, block: int, margin: np.ndarray, tokens: torch.Tensor, executed: torch.Tensor
    ) -> np.ndarray:
        """:meth:`_settle` for NumPy margins (one image: Python floats, cheaper than two array operations)."""
        execute = margin > 0
        if margin.shape[0] == 1:
            if -folded.tol <= float(margin[0]) <= folded.tol:
                execute[0] = bool(self._exact(block, tokens, executed))
            return execute
        unsure = np.flatnonzero(np.abs(margin) <= folded.tol)
        if unsure.size:
            rows = torch.from_numpy(unsure)
            execute[unsure] = self._exact(block, tokens[rows], executed[rows]).numpy()
        return execute

    def _exact(self, block: int, tokens: torch.Tensor, executed: torch.Tensor) -> torch.Tensor:
        packed = self.policy.encoder.pack(tokens, block, executed_fraction(executed), budget=self._budget)
        return self.policy.forward(packed)  # (not __call__: its bookkeeping costs ~10 us a block at batch 1)

    def _apply_rules(self, block: int, execute: torch.Tensor, executed: torch.Tensor) -> torch.Tensor:
        rules = self.policy.rules
        if not rules.binds(block):  # most blocks: no rule can override a skip here, nothing to compute
            return execute
        return rules.enforce(block, executed.sum(1), execute)

    def _decide(self, block: int, tokens: torch.Tensor, executed: torch.Tensor) -> torch.Tensor:
        return self._apply_rules(block, self._exact(block, tokens, executed), executed)

    def refold(self) -> DynamicViT:
        """Re-fold the decision from the policy's current weights; returns self.

        :meth:`forward` does it by itself when the weights changed in place; call it before using
        :meth:`decide` directly after changing them.
        """
        self.folded = FoldedDecision.build(self.policy, self._budget_value())
        return self

    def forward(self, images: torch.Tensor, return_mask: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits for normalised images ``(B, 3, H, W)``, each image running only the blocks its policy chose.

        Args:
            images: Normalised float images (``dataset.normalize(uint8_images)``) of the backbone's dtype.
            return_mask: Also return the ``bool (B, depth)`` executed mask.

        Raises:
            TypeError: Integer images (not normalised) or another float dtype than the backbone's.
            ValueError: Not a ``(B, C, H, W)`` batch (one ``(C, H, W)`` image needs ``images[None]``).
        """
        vit = self.backbone
        _check_images(images)
        folded = self.folded
        if folded is not None and folded.is_stale(self.policy):
            folded = self.refold().folded  # the policy's weights were changed in place since the fold
        try:
            tokens = vit.embed(images)
        except RuntimeError as exc:  # diagnosed only on failure: the happy path pays nothing for it
            _explain_dtype(images, vit, exc)
            raise
        executed = torch.zeros(tokens.shape[0], vit.depth, dtype=torch.bool, device=tokens.device)
        if folded is None or tokens.device.type != "cpu" or self._compiled_decide is not None:
            tokens = self._run_exact(tokens, executed)
        elif tokens.shape[0] <= HOST_BATCH and folded.has_host_path:
            tokens = self._run_host(folded, tokens, executed)
        else:
            tokens = self._run_folded(folded, tokens, executed)
        logits = vit.head(tokens)
        return (logits, executed) if return_mask else logits

    def _run_exact(self, tokens: torch.Tensor, executed: torch.Tensor) -> torch.Tensor:
        """The blocks with :meth:`decide` per block: no host synchronisation but the gather's ``nonzero``."""
        vit, always, inplace = self.backbone, self.policy.rules.always_execute, not torch.is_grad_enabled()
        for i in range(vit.depth):
            if i in always:  # the rules override any decision here: no policy, no sync
                executed[:, i] = True
                tokens = vit.run_block(i, tokens)
                continue
            execute = self.decide(i, tokens, executed)
            executed[:, i] = execute
            tokens = run_executing_rows(vit, i, tokens, execute, inplace=inplace)
        return tokens

    def _run_folded(self, folded: FoldedDecision, tokens: torch.Tensor, executed: torch.Tensor) -> torch.Tensor:
        """CPU, torch kernels: the folded decision, its token features recomputed only for rows a block changed."""
        vit, rules, inplace = self.backbone, self.policy.rules, not torch.is_grad_enabled()
        count = torch.zeros(tokens.shape[0])
        features: torch.Tensor | None = None  # None: recompute for every row
        changed: torch.Tensor | None = None  # rows the last block ran on
        for i in range(vit.depth):
            if i in rules.always_execute:
                executed[:, i] = True
                tokens = vit.run_block(i, tokens)
                count += 1
                features = None
                continue
            with torch.no_grad():
                if features is None:
                    features = folded.features(folded.pool(tokens))
                elif changed is not None and changed.numel():
                    features.index_copy_(0, changed, folded.features(folded.pool(tokens).index_select(0, changed)))
                margin = folded.margin_from(features, i, count)
                execute = self._apply_rules(i, self._settle(folded, i, margin, tokens, executed), executed)
            executed[:, i] = execute
            changed = execute.nonzero().squeeze(1)
            tokens = vit.run_block(i, tokens, changed, inplace=inplace)
            count += execute
            if changed.numel() == tokens.shape[0]:
                features = None
        return tokens

    def _run_host(self, folded: FoldedDecision, tokens: torch.Tensor, executed: torch.Tensor) -> torch.Tensor:
        """CPU, a few images: the folded decision in NumPy, the mask written through a NumPy view.

        A row's token features are kept while it skips; a batch of one image runs or skips each
        block without a gather (the same arithmetic).
        """
        vit, rules, inplace = self.backbone, self.policy.rules, not torch.is_grad_enabled()
        n, depth = executed.shape
        host = executed.numpy()
        count = np.zeros(n, dtype=np.int64)
        features: np.ndarray | None = None
        changed = np.arange(n)
        for i in range(depth):
            if i in rules.always_execute:
                host[:, i] = True
                tokens = vit.run_block(i, tokens)
                count += 1
                features = None
                continue
            with torch.no_grad():
                if features is None or changed.size == n:
                    features = folded.features_host(tokens)
                elif changed.size:
                    features[changed] = folded.features_host(tokens[torch.from_numpy(changed)])
                execute = self._settle_host(folded, i, folded.margin_from_host(features, i, count), tokens, executed)
                execute = rules.enforce_host(i, count, execute)
            host[:, i] = execute
            changed = np.flatnonzero(execute)
            if changed.size:  # all rows (one image included) run the block as it is: no gather
                tokens = vit.run_block(i, tokens, torch.from_numpy(changed), inplace=inplace)
            count += execute
        return tokens

    def compiled(self, **compile_kwargs: Any) -> DynamicViT:
        """Compile every block and the decision (observation + policy + rule) with ``torch.compile``; returns self.

        In place; weights and ``state_dict`` keys are unchanged. ``dynamic=True`` (the default here)
        because each block sees a new sub-batch size almost every call and would otherwise
        recompile per size. Compiled kernels may round differently from eager mode, so a decision
        whose two scores tie to within float rounding can differ from the env's; the eager path
        is the exact one. Inductor on CPU needs a C++ compiler; see ``tests/benchmarks/bench_dynamic.py``
        for what it gains.

        Args:
            **compile_kwargs: Passed to ``torch.compile`` (``mode=``, ``backend=``...).
        """
        opts = {"dynamic": True, **compile_kwargs}
        for blk in self.backbone.blocks:
            blk.compile(**opts)
        self._compiled_decide = torch.compile(self._decide, **opts)
        return self

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """The JSON config stored in the file header and beside it."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "backbone": self.backbone.config(),
            "policy": self.policy.config(),
            **self.meta,
            **({"compute_weight": self._weight} if self._weight is not None else {}),
        }

    def save(self, path: str | os.PathLike, **meta: Any) -> Path:
        """Write one safetensors file (weights + JSON config in its header) and a readable ``.json`` copy.

        Args:
            path: Destination; must end in ``.safetensors`` (the config goes to ``<stem>.json``); written atomically.
            **meta: Extra JSON-serialisable entries (``dataset``, ``top1``, ``training``...).

        Raises:
            ValueError: ``path`` does not end in ``.safetensors`` (nothing is written).
            NotImplementedError: The policy network cannot be described (see :mod:`vitskip_env.deploy.netspec`).
        """
        from safetensors.torch import save_file

        path = check_save_path(path)
        self.meta.update(meta)
        text = json.dumps(self.config(), indent=2, sort_keys=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"vitskip": text})
        atomic_write_text(path.with_suffix(".json"), text + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> DynamicViT:
        """Load a file written by :meth:`save` (eval mode; no SB3, no pickle).

        Raises:
            FileNotFoundError: No such file.
            VitskipFileError: (a ``ValueError``) Truncated, foreign, another vitskip format, a newer
                format version, a malformed or tampered header, or weights that do not match it; the
                message names the file. Every size in the header is checked against the stored
                tensors before anything is allocated.
        """
        where = where_of(Path(path).expanduser())
        config, state = read_vitskip_file(
            path,
            FORMAT,
            version=FORMAT_VERSION,
            missing="Every training run writes dynamic_vit.safetensors into its run directory; or build one with "
            "DynamicViT(backbone, agents.export_policy(model, env)).save(path).",
            resave="Re-save it with DynamicViT.save.",
        )
        groups: dict[str, dict[str, torch.Tensor]] = {"backbone.vit.": {}, "policy.": {}}
        for key, value in state.items():
            prefix = next((p for p in groups if key.startswith(p)), None)
            if prefix is None:
                raise VitskipFileError(
                    f"{where}: unexpected tensor {key!r} (only 'backbone.vit.*' and 'policy.*' belong here)"
                )
            groups[prefix][key[len(prefix) :]] = value
        backbone = backbone_from_config(require(config, "backbone", dict, where), groups["backbone.vit."], where)
        with file_errors(where, "policy config"):
            policy_config = require(config, "policy", dict, where)
            _check_encoder(backbone, require(policy_config, "encoder", dict, where, "policy config"))
            policy = SkipPolicy.from_config(policy_config, groups["policy."])
            dyn = cls(backbone, policy)
        dyn.meta = {k: v for k, v in config.items() if k not in ("format", "format_version", "backbone", "policy")}
        weight = dyn.meta.pop("compute_weight", None)
        if weight is not None and dyn.budget_range is not None:
            with file_errors(where, "compute_weight"):
                dyn.set_compute_weight(weight)
        return dyn.to(device).eval()


def _check_encoder(backbone: SkippableViT, got: dict[str, Any]) -> None:
    """The policy's encoder config must be the one the backbone's env gives (checked before a policy is built)."""
    expected = encoder_for(backbone, got.get("mode", "flat"), budget_range=got.get("budget_range")).config()
    if expected != got:
        diff = {k: (got.get(k), expected[k]) for k in expected if got.get(k) != expected[k]}
        raise ValueError(
            f"the policy was trained on another backbone's observations: (policy, backbone) differ in {diff}. "
            "Pair the policy with the backbone of the env it was trained in."
        )


def _check_images(images: torch.Tensor) -> None:
    """Refuse what the blocks would fail on deep inside timm, saying how to fix it (a few cheap attribute reads)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"DynamicViT takes a float tensor of images (B, 3, H, W), got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(
            f"DynamicViT got {images.dtype} images: it takes normalised float images. Normalise them first "
            "(dataset.normalize(images) for the dataset's uint8 images, or (images / 255 - mean) / std)."
        )
    if images.ndim != 4:
        hint = "; add a batch dimension: images[None]" if images.ndim == 3 else ""
        raise ValueError(f"DynamicViT takes a batch of images (B, C, H, W), got shape {tuple(images.shape)}{hint}")


def _explain_dtype(images: torch.Tensor, vit: SkippableViT, exc: RuntimeError) -> None:
    """Re-raise an embedding failure caused by images of another float dtype than the backbone's as a clear TypeError."""
    weight = next(vit.vit.patch_embed.parameters(), None)
    if weight is not None and images.dtype != weight.dtype:
        raise TypeError(
            f"DynamicViT got {images.dtype} images but its backbone is {weight.dtype}: cast the images "
            f"(images.to({weight.dtype})), or the backbone (dyn.backbone.to({images.dtype})); the policy stays float32."
        ) from exc
