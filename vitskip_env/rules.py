"""The skip rules: one object the environments and deployment both obey.

:class:`SkipRules` holds the two rules an agent's actions pass through before a block runs:

* ``always_execute``: blocks that are never skipped (the agent's action there is overridden);
* ``min_blocks``: every episode (image) executes at least this many blocks; a skip is overridden
  to execute when the blocks left after it could no longer reach ``min_blocks``.

``SkipCore`` (training), ``SkipPolicy`` and ``DynamicViT`` (deployment, torch and NumPy paths)
and ``agents.export_policy`` all use this one object, so a deployed policy obeys exactly the rules
it was trained with. It has a torch form (:meth:`SkipRules.apply`, :meth:`SkipRules.forced`) for
batches on the device and a NumPy form (:meth:`SkipRules.forced_host`) for the host loop.

:class:`SkipContract` is what an environment hands to deployment: its observation encoder and its
rules (``env.unwrapped.skip_contract()``).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch

__all__ = ["BLOCKS_HELP", "SkipContract", "SkipRules", "block_indices"]

#: The observation encoder's type in a :class:`SkipContract` (``ObservationEncoder`` for the envs).
Encoder = TypeVar("Encoder")

BLOCKS_HELP = "an iterable of block indices (ints), e.g. (0,) or [0, 3]"


def block_indices(value: Any, name: str = "always_execute") -> tuple[int, ...]:
    """``value`` as a tuple of block indices: any iterable of integers (list, tuple, range, int array).

    A string, a single number or an iterable holding anything but integers is refused (``"01"``
    would otherwise mean blocks ``{0, 1}``, and ``5`` would fail with an unrelated message).

    Raises:
        TypeError: ``value`` is not an iterable of integers (bools and floats are not integers here).
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        single = f"; for one block pass ({value!r},)" if isinstance(value, (int, np.integer)) else ""
        raise TypeError(f"{name} must be {BLOCKS_HELP}, got {type(value).__name__} {value!r}{single}")
    out = []
    for item in value:
        try:
            if isinstance(item, (bool, np.bool_)):
                raise TypeError
            out.append(operator.index(item))
        except TypeError:
            raise TypeError(f"{name} must be {BLOCKS_HELP}; it holds {type(item).__name__} {item!r}") from None
    return tuple(out)


@dataclass(frozen=True, init=False)
class SkipRules:
    """``min_blocks`` and ``always_execute`` for a ``depth``-block backbone, validated once.

    Args:
        depth: Number of blocks ``L``.
        min_blocks: Every episode executes at least this many blocks (in ``[0, depth]``).
        always_execute: Blocks never skipped: any iterable of block indices in ``[0, depth)``
            (stored as a ``frozenset``).

    Raises:
        ValueError: ``depth`` is not a positive integer, ``min_blocks`` is outside ``[0, depth]``
            or a block index is outside ``[0, depth)``.
        TypeError: ``always_execute`` is not an iterable of integers (see :func:`block_indices`).

    Example:
        >>> rules = SkipRules(4, min_blocks=2, always_execute=(0,))
        >>> rules.apply(3, torch.tensor([1, 2]), torch.tensor([0, 0]))
        (tensor([1, 0]), tensor([ True, False]))
    """

    depth: int
    min_blocks: int
    always_execute: frozenset[int]

    def __init__(self, depth: int, min_blocks: int = 0, always_execute: Iterable[int] = ()) -> None:
        if isinstance(depth, (bool, np.bool_)) or not isinstance(depth, (int, np.integer)) or depth < 1:
            raise ValueError(f"depth must be a positive integer (the number of blocks), got {depth!r}")
        if not isinstance(min_blocks, (int, np.integer)) or not 0 <= min_blocks <= depth:
            raise ValueError(f"min_blocks must be an integer in [0, {depth}], got {min_blocks!r}")
        given = block_indices(always_execute)
        if any(not 0 <= i < depth for i in given):
            raise ValueError(f"always_execute must hold block indices in [0, {depth - 1}], got {list(given)}")
        object.__setattr__(self, "depth", int(depth))
        object.__setattr__(self, "min_blocks", int(min_blocks))
        object.__setattr__(self, "always_execute", frozenset(given))

    # ------------------------------------------------------------------ files
    def config(self) -> dict[str, Any]:
        """The rules as the JSON entries files store (``depth`` is the encoder's and is not repeated)."""
        return {"min_blocks": self.min_blocks, "always_execute": sorted(self.always_execute)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], depth: int) -> SkipRules:
        """Rebuild from :meth:`config` for a ``depth``-block backbone.

        Raises:
            KeyError: An entry is missing (a file must state both; files never relied on defaults).
            ValueError, TypeError: As the constructor.
        """
        return cls(depth, min_blocks=config["min_blocks"], always_execute=config["always_execute"])

    # ------------------------------------------------------------------ both forms
    @property
    def free(self) -> bool:
        """Whether the rules never override an action (no ``min_blocks``, no ``always_execute``)."""
        return self.min_blocks == 0 and not self.always_execute

    def binds(self, block: int) -> bool:
        """Whether the rules can override a skip at ``block`` for some episode.

        ``min_blocks`` can only bind once fewer than ``min_blocks`` blocks are left after ``block``;
        before that every skip is allowed whatever was executed, so callers may skip the check.
        """
        return block in self.always_execute or self.depth - block - 1 < self.min_blocks

    # ------------------------------------------------------------------ torch form
    def forced(self, block: int, count: torch.Tensor) -> torch.Tensor:
        """``bool (N,)``: which episodes must execute ``block``, given ``count`` (``(N,)``) blocks executed so far."""
        if block in self.always_execute:
            return torch.ones(count.shape[0], dtype=torch.bool, device=count.device)
        if self.min_blocks == 0:
            return torch.zeros(count.shape[0], dtype=torch.bool, device=count.device)
        return count + (self.depth - block - 1) < self.min_blocks

    def forced_rows(self, blocks: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """:meth:`forced` with one block per row (``int64 (N,)``, episodes of different lengths): ``bool (N,)``."""
        forced = count + (self.depth - blocks - 1) < self.min_blocks
        if self.always_execute:
            always = torch.zeros(self.depth + 1, dtype=torch.bool, device=blocks.device)
            always[sorted(self.always_execute)] = True
            forced |= always[blocks]
        return forced

    def skip_allowed(self, block: int, count: torch.Tensor) -> torch.Tensor:
        """``bool (N,)``: may each episode skip ``block``? (``~forced``; execute is always allowed)."""
        return ~self.forced(block, count)

    def apply(self, block: int, count: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The actions after the rules, and which were overridden.

        Args:
            block: The block being decided.
            count: ``(N,)`` blocks executed so far (any numeric dtype).
            actions: ``(N,)`` proposed actions, ``0`` = skip, ``1`` = execute (integer or bool).

        Returns:
            ``(actions, overridden)``: the actions with every forbidden skip turned into execute (same
            dtype as given) and ``bool (N,)`` the rows that were turned.
        """
        overridden = (actions == 0) & self.forced(block, count)
        return actions | overridden.to(actions.dtype), overridden

    def enforce(self, block: int, count: torch.Tensor, execute: torch.Tensor) -> torch.Tensor:
        """``bool (N,)`` ``execute`` after the rules (``execute`` itself, untouched, where the rules cannot bind)."""
        if not self.binds(block):
            return execute
        return execute | self.forced(block, count)

    # ------------------------------------------------------------------ NumPy form
    def forced_host(self, block: int, count: np.ndarray | int) -> np.ndarray:
        """:meth:`forced` in NumPy: ``bool (N,)`` from integer ``count`` (``(N,)`` or a Python int)."""
        count = np.asarray(count)
        if block in self.always_execute:
            return np.ones(count.shape, dtype=bool)
        if self.min_blocks == 0:
            return np.zeros(count.shape, dtype=bool)
        return count + (self.depth - block - 1) < self.min_blocks

    def enforce_host(self, block: int, count: np.ndarray, execute: np.ndarray) -> np.ndarray:
        """:meth:`enforce` in NumPy: ``execute`` (``bool (N,)``) after the rules, changed in place and returned."""
        if self.binds(block):
            execute |= self.forced_host(block, count)
        return execute


class RulesView:
    """The rules' two settings as read-only attributes of whatever holds ``self.rules`` (the env's
    ``SkipCore``, the deployed ``SkipPolicy``)."""

    rules: SkipRules

    @property
    def min_blocks(self) -> int:
        """The rules' ``min_blocks``."""
        return self.rules.min_blocks

    @property
    def always_execute(self) -> frozenset[int]:
        """The rules' ``always_execute`` blocks."""
        return self.rules.always_execute


@dataclass(frozen=True)
class SkipContract(Generic[Encoder]):
    """What an environment shares with deployment: its observation encoder and its skip rules.

    Envs return it from ``skip_contract()`` (as ``SkipContract[ObservationEncoder]``); it unpacks as
    ``encoder, rules = env.unwrapped.skip_contract()``. The encoder's type is a parameter because
    the rules know nothing of observations (:mod:`vitskip_env.observations` is a sibling, not a dependency).
    """

    encoder: Encoder
    rules: SkipRules

    def __iter__(self) -> Iterator[Any]:
        """``encoder, rules``, so the contract unpacks like a pair."""
        return iter((self.encoder, self.rules))
