"""``SkipExitViT``: a ViT whose RL policy skips blocks and exits early per image; exited images leave the batch.

The deployed form of an agent trained with ``actions="skip_exit"``. Per block, for the rows still in
flight only: the observation (the env's encoder, with the exit entry of the head each row last
passed) -> the policy's deterministic action -> the env's rules (a forbidden skip or exit becomes
execute, exactly as the env overrides it) -> exiting rows take their exit head's logits and are
**compacted away** (tokens, masks, per-row state); the block runs on the executing rows only; where
an exit head reads the tokens after this block it runs on the rows in flight. So each image gets
the prediction, executed blocks and exit point it gets in the env and alone, and no block or head
ever sees an exited row.

On CPU, up to :data:`HOST_BATCH` images decide in NumPy through the policy's
:class:`~vitskip_env.deploy.folded.FoldedDecision` (a decision within rounding of a tie is taken by
the exact path), as ``DynamicViT`` does: at batch 1 the torch decision would cost as much as a block.

Saved as one safetensors file of the early-exit format (``vitskip-exits``: ``backbone.vit.*``,
``exits.*`` and ``policy.*``; no pickle), loaded without Stable-Baselines3.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..model import SkippableViT
from ..model.exit_file import exit_file_config, load_exit_model, write_exit_file
from ..model.exits import ExitHeads
from ..model.fileformat import VitskipFileError, require, where_of
from ..observations import EXIT_FEATURES, NO_EXIT, executed_fraction, exit_features, exit_features_host
from .dynamic import HOST_BATCH  # the same small-batch cut as DynamicViT
from .folded import FoldedDecision
from .policy import SkipPolicy, deterministic_action

__all__ = ["SkipExitViT"]

EXIT = 2


class SkipExitViT(nn.Module):
    """A :class:`~vitskip_env.SkippableViT` with exit heads and a 3-action :class:`SkipPolicy` (skip / execute / exit).

    Args:
        backbone: The ViT the policy and heads were trained on.
        heads: Its exit heads (the env's ``exits``).
        policy: ``agents.export_policy(model, env)`` of an agent trained with ``actions="skip_exit"``.

    Example:
        >>> model = SkipExitViT(env.unwrapped.backbone, env.unwrapped.core.heads, export_policy(agent, env))  # doctest: +SKIP
        >>> logits, executed, exit_block = model(images, return_exits=True)  # doctest: +SKIP
    """

    def __init__(self, backbone: SkippableViT, heads: ExitHeads, policy: SkipPolicy) -> None:
        super().__init__()
        if not isinstance(policy, SkipPolicy) or not policy.encoder.exit_features:
            raise ValueError(
                "SkipExitViT needs the policy of an agent trained with actions='skip_exit' (3 actions, exit features "
                "in its observation); a skip-only policy goes into DynamicViT"
            )
        if (heads.depth, heads.dim, heads.num_classes) != (backbone.depth, backbone.embed_dim, backbone.num_classes):
            raise ValueError(
                f"exit heads for a {heads.depth}-block, {heads.dim}-wide, {heads.num_classes}-class backbone cannot read "
                f"this {backbone.depth}-block, {backbone.embed_dim}-wide, {backbone.num_classes}-class one"
            )
        enc = policy.encoder
        if (enc.depth, enc.num_tokens, enc.embed_dim) != (backbone.depth, backbone.num_tokens, backbone.embed_dim):
            raise ValueError(
                f"the policy observes a {enc.depth}-block backbone with {enc.num_tokens} tokens of width {enc.embed_dim}; "
                f"this one has {backbone.depth} blocks, {backbone.num_tokens} tokens of width {backbone.embed_dim}"
            )
        self.backbone, self.exits = backbone, heads
        self.policy = policy.to(next(backbone.parameters()).device)
        self.meta: dict[str, Any] = {}
        #: The folded decision for small CPU batches (``None``: not supported; the exact path runs).
        self.folded = FoldedDecision.build(self.policy)

    def _exact(self, block: int, tokens: torch.Tensor, executed: torch.Tensor, exit_obs: torch.Tensor) -> torch.Tensor:
        """``int64 (N,)`` the policy's deterministic actions before the rules, as the env's ``predict`` takes them."""
        packed = self.policy.encoder.pack(tokens, block, executed_fraction(executed), exit_obs)
        return deterministic_action(self.policy.logits(packed), self.policy.decision)

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return self.backbone.depth

    @torch.no_grad()
    def forward(
        self, images: torch.Tensor, return_mask: bool = False, return_exits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Logits ``(B, C)``; with ``return_mask`` also the executed mask ``bool (B, depth)``; with
        ``return_exits`` also the blocks each image passed before leaving (``depth`` for the final classifier).
        """
        tokens = self.backbone.embed(images)
        folded = self.folded
        if folded is not None and folded.is_stale(self.policy):
            folded = self.folded = FoldedDecision.build(self.policy)
        small = tokens.device.type == "cpu" and tokens.shape[0] <= HOST_BATCH
        if small and folded is not None and folded.has_host_path:
            run_host = self._run_one if tokens.shape[0] == 1 else self._run_host
            out, mask, blocks = run_host(folded, tokens)
        else:
            out, mask, blocks = self._run_torch(tokens)
        extra = ([mask] if return_mask else []) + ([blocks] if return_exits else [])
        return (out, *extra) if extra else out

    def _run_torch(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Any device and batch: the exact decision per block, every step a torch kernel."""
        vit, rules = self.backbone, self.policy.rules
        batch, dev = tokens.shape[0], tokens.device
        out = torch.empty(batch, vit.num_classes, device=dev)
        mask_out = torch.zeros(batch, vit.depth, dtype=torch.bool, device=dev)
        blocks_out = torch.full((batch,), vit.depth, dtype=torch.long, device=dev)
        alive = torch.arange(batch, device=dev)
        executed = torch.zeros(batch, vit.depth, dtype=torch.bool, device=dev)
        exit_obs = torch.full((batch, len(EXIT_FEATURES)), NO_EXIT, device=dev)
        head_logits = torch.zeros(batch, vit.num_classes, device=dev)
        previous = torch.full((batch,), -1, dtype=torch.long, device=dev)
        run = torch.zeros(batch, dtype=torch.long, device=dev)
        at_exit = False
        for i in range(vit.depth):
            count = executed.sum(1)
            action = self._exact(i, tokens, executed, exit_obs)
            forced = rules.forced(i, count)
            leave = (action == EXIT) & (count >= rules.min_blocks) if at_exit else torch.zeros_like(forced)
            if bool(leave.any()):
                gone = alive[leave]
                out[gone], mask_out[gone], blocks_out[gone] = head_logits[leave], executed[leave], i
                stay = ~leave
                if not bool(stay.any()):
                    return out, mask_out, blocks_out
                alive, tokens, executed, action, forced = alive[stay], tokens[stay], executed[stay], action[stay], forced[stay]
                previous, run = previous[stay], run[stay]
            execute = (action != 0) | forced
            executed[:, i] = execute
            tokens = vit.run_block(i, tokens, execute.nonzero().squeeze(1), inplace=True)
            at_exit = self._has_exit(i)
            if at_exit:
                head_logits, previous, run, exit_obs = self._read_head(i, tokens, previous, run)
            else:
                exit_obs = torch.full((tokens.shape[0], len(EXIT_FEATURES)), NO_EXIT, device=dev)
        out[alive], mask_out[alive] = vit.head(tokens).float(), executed
        return out, mask_out, blocks_out

    def _run_host(self, folded: FoldedDecision, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A few CPU images: the folded decision and the bookkeeping in NumPy; torch only for blocks and heads.

        The exit entry is computed in NumPy (:func:`exit_features_host`, equal up to rounding); a row
        whose decision is within rounding of a tie is decided by the exact path on the torch values.
        A row's token features are kept while it skips.
        """
        vit, rules, heads = self.backbone, self.policy.rules, self.exits
        batch, depth, n_points = tokens.shape[0], vit.depth, len(self.exits) + 1
        out = torch.empty(batch, vit.num_classes)
        mask_out = np.zeros((batch, depth), dtype=bool)
        blocks_out = np.full(batch, depth, dtype=np.int64)
        alive = np.arange(batch)
        executed = np.zeros((batch, depth), dtype=bool)
        exit_obs = np.full((batch, len(EXIT_FEATURES)), NO_EXIT, dtype=np.float32)
        head_logits = torch.zeros(batch, vit.num_classes)
        previous = np.full(batch, -1, dtype=np.int64)
        run = np.zeros(batch, dtype=np.int64)
        at_exit = False
        features = folded.features_host(tokens)
        for i in range(depth):
            count = executed.sum(1)
            margins = folded.margin_from_host(features, i, count, exit_obs)  # execute, exit over skip
            best = margins.max(1)
            action = np.where(best > 0, 1 + margins.argmax(1), 0)
            unsure = np.flatnonzero((np.abs(best) <= folded.tol) | (np.abs(margins[:, 0] - margins[:, 1]) <= folded.tol))
            if unsure.size:  # within rounding of a tie: the exact path decides, on the torch exit entry
                rows = torch.from_numpy(unsure)
                obs = torch.from_numpy(exit_obs[unsure])
                if at_exit:
                    obs = exit_features(head_logits[rows], torch.from_numpy(run[unsure]), n_points)
                action[unsure] = self._exact(i, tokens[rows], torch.from_numpy(executed[unsure]), obs).numpy()
            leave = (action == EXIT) & (count >= rules.min_blocks) if at_exit else np.zeros(len(alive), dtype=bool)
            if leave.any():
                gone = alive[leave]
                out[torch.from_numpy(gone)] = head_logits[torch.from_numpy(leave)]
                mask_out[gone], blocks_out[gone] = executed[leave], i
                stay = np.flatnonzero(~leave)
                if not stay.size:
                    return out, torch.from_numpy(mask_out), torch.from_numpy(blocks_out)
                alive, executed, action, count = alive[stay], executed[stay], action[stay], count[stay]
                previous, run, features = previous[stay], run[stay], features[stay]
                tokens = tokens[torch.from_numpy(stay)]
            execute = rules.enforce_host(i, count, action != 0)
            executed[:, i] = execute
            rows = np.flatnonzero(execute)
            if rows.size:  # all rows (one image included) run the block as it is: no gather
                tokens = vit.run_block(i, tokens, torch.from_numpy(rows), inplace=True)
                if rows.size == len(alive):
                    features = folded.features_host(tokens)
                else:
                    features[rows] = folded.features_host(tokens[torch.from_numpy(rows)])
            at_exit = self._has_exit(i)
            if at_exit:
                head_logits = heads.logits(heads.index_at(i), tokens, vit).float()
                logits = head_logits.numpy()
                pred = logits.argmax(1)
                run = np.where(pred == previous, run + 1, 1)
                previous = pred
                exit_obs = exit_features_host(logits, run, n_points)
            else:
                exit_obs = np.full((len(alive), len(EXIT_FEATURES)), NO_EXIT, dtype=np.float32)
        out[torch.from_numpy(alive)] = vit.head(tokens).float()
        mask_out[alive] = executed
        return out, torch.from_numpy(mask_out), torch.from_numpy(blocks_out)

    def _run_one(self, folded: FoldedDecision, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One CPU image: :meth:`_run_host` with Python scalars for the bookkeeping (no array op per decision)."""
        vit, rules, heads = self.backbone, self.policy.rules, self.exits
        depth, n_points, tol = vit.depth, len(self.exits) + 1, folded.tol
        executed = torch.zeros(1, depth, dtype=torch.bool)
        none = np.full((1, len(EXIT_FEATURES)), NO_EXIT, dtype=np.float32)
        exit_obs, head_logits = none, None
        count, previous, run, at_exit = 0, -1, 0, False
        features = folded.features_host(tokens)
        for i in range(depth):
            m_exec, m_exit = (float(v) for v in folded.margin_from_host(features, i, count, exit_obs)[0])
            best = max(m_exec, m_exit)
            action = 0 if best <= 0 else (1 if m_exec >= m_exit else EXIT)
            if abs(best) <= tol or abs(m_exec - m_exit) <= tol:  # within rounding of a tie: the exact path decides
                obs = torch.from_numpy(exit_obs)
                if at_exit:
                    obs = exit_features(head_logits, torch.tensor([run]), n_points)
                action = int(self._exact(i, tokens, executed, obs)[0])
            if at_exit and action == EXIT and count >= rules.min_blocks:
                return head_logits, executed, torch.tensor([i])
            if action != 0 or i in rules.always_execute or count + depth - i - 1 < rules.min_blocks:
                tokens = vit.run_block(i, tokens)
                executed[0, i] = True
                count += 1
                features = folded.features_host(tokens)
            at_exit = self._has_exit(i)
            if at_exit:
                head_logits = heads.logits(heads.index_at(i), tokens, vit).float()
                logits = head_logits.numpy()
                pred = int(logits.argmax())
                run = run + 1 if pred == previous else 1
                previous = pred
                exit_obs = exit_features_host(logits, np.array([run]), n_points)
            else:
                exit_obs = none
        return vit.head(tokens).float(), executed, torch.tensor([depth])

    def _has_exit(self, block: int) -> bool:
        """Whether an exit head reads the tokens after ``block`` (not after the last: the final classifier does)."""
        return self.exits.index_at(block) is not None and block < self.depth - 1

    def _read_head(
        self, block: int, tokens: torch.Tensor, previous: torch.Tensor, run: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The exit head after ``block`` on the rows in flight: its logits, the patience state and the exit entry."""
        logits = self.exits.logits(self.exits.index_at(block), tokens, self.backbone).float()
        pred = logits.argmax(1)
        run = torch.where(pred == previous, run + 1, torch.ones_like(run))
        return logits, pred, run, exit_features(logits, run, len(self.exits) + 1)

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """The JSON config stored in the file header and beside it."""
        return {**exit_file_config(self.backbone, self.exits), "policy": self.policy.config(), **self.meta}

    def save(self, path: str | os.PathLike, **meta: Any) -> Path:
        """Write one safetensors file (backbone + heads + policy + JSON config in its header) and a readable ``.json`` copy.

        Raises:
            ValueError: ``path`` does not end in ``.safetensors`` (nothing is written).
        """
        self.meta.update(meta)
        return write_exit_file(path, self.config(), self.backbone, self.exits, policy=self.policy)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> SkipExitViT:
        """Load a file written by :meth:`save` (eval mode; no SB3, no pickle).

        Raises:
            FileNotFoundError: No such file.
            VitskipFileError: (a ``ValueError``) Not an exit file, one without a policy (an ``EarlyExitViT``
                file: load it with ``EarlyExitViT.load``), or weights that do not match the config.
        """
        where = where_of(Path(path).expanduser())
        config, backbone, heads, policy_state = load_exit_model(path)
        if "policy" not in config:
            raise VitskipFileError(
                f"{where}: it holds exit heads and a threshold rule but no policy; load it with EarlyExitViT.load"
            )
        try:
            policy = SkipPolicy.from_config(require(config, "policy", dict, where), policy_state)
        except (KeyError, TypeError, ValueError) as exc:
            raise VitskipFileError(
                f"{where}: its policy does not load ({exc}). Export it again (agents.export_policy)."
            ) from exc
        model = cls(backbone, heads, policy)
        skip = ("format", "format_version", "backbone", "backbone_sha256", "exits", "policy")
        model.meta = {k: v for k, v in config.items() if k not in skip}
        return model.to(device).eval()
