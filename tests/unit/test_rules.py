"""SkipRules: one object for min_blocks / always_execute; its torch and NumPy forms agree and keep both rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitskip_env.rules import SkipContract, SkipRules, block_indices


@st.composite
def rules_and_episodes(draw: st.DrawFn) -> tuple[SkipRules, np.ndarray]:
    """Random rules and a batch of proposed action sequences ``int (N, depth)``."""
    depth = draw(st.integers(1, 12))
    min_blocks = draw(st.integers(0, depth))
    always = draw(st.lists(st.integers(0, depth - 1), max_size=depth))
    n = draw(st.integers(1, 8))
    bits = draw(st.lists(st.integers(0, 1), min_size=n * depth, max_size=n * depth))
    return SkipRules(depth, min_blocks, always), np.array(bits, dtype=np.int64).reshape(n, depth)


def run_torch(rules: SkipRules, proposed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Episodes through the torch form: executed ``bool (N, depth)`` and overridden ``bool (N, depth)``."""
    n, depth = proposed.shape
    executed = torch.zeros(n, depth, dtype=torch.bool)
    overridden = torch.zeros(n, depth, dtype=torch.bool)
    for block in range(depth):
        actions, over = rules.apply(block, executed.sum(1), torch.from_numpy(proposed[:, block]))
        assert actions.dtype == torch.int64
        executed[:, block] = actions.bool()
        overridden[:, block] = over
        # enforce (bool actions, what DynamicViT calls) gives the same decisions as apply
        enforced = rules.enforce(block, executed[:, :block].sum(1), torch.from_numpy(proposed[:, block] == 1))
        assert torch.equal(enforced, actions.bool())
    return executed.numpy(), overridden.numpy()


def run_host(rules: SkipRules, proposed: np.ndarray) -> np.ndarray:
    """Episodes through the NumPy form (as DynamicViT's host loop counts): executed ``bool (N, depth)``."""
    n, depth = proposed.shape
    executed = np.zeros((n, depth), dtype=bool)
    count = np.zeros(n, dtype=np.int64)
    for block in range(depth):
        execute = rules.enforce_host(block, count, proposed[:, block] == 1)
        executed[:, block] = execute
        count += execute
    return executed


@settings(max_examples=200, deadline=None)
@given(rules_and_episodes())
def test_torch_and_numpy_forms_agree(case: tuple[SkipRules, np.ndarray]) -> None:
    rules, proposed = case
    executed, overridden = run_torch(rules, proposed)
    assert np.array_equal(run_host(rules, proposed), executed)
    assert np.array_equal(overridden, executed & (proposed == 0))  # only skips are overridden
    for block in range(rules.depth):  # forced / forced_host on every count an episode can have
        counts = np.arange(block + 1)
        assert np.array_equal(rules.forced(block, torch.from_numpy(counts)).numpy(), rules.forced_host(block, counts))
        assert np.array_equal(rules.skip_allowed(block, torch.from_numpy(counts)).numpy(), ~rules.forced_host(block, counts))
        if not rules.binds(block):
            assert not rules.forced_host(block, counts).any()


@settings(max_examples=200, deadline=None)
@given(rules_and_episodes())
def test_every_episode_meets_min_blocks_and_runs_the_always_blocks(case: tuple[SkipRules, np.ndarray]) -> None:
    rules, proposed = case
    executed, _ = run_torch(rules, proposed)
    assert (executed.sum(1) >= rules.min_blocks).all()
    for block in rules.always_execute:
        assert executed[:, block].all()
    # A skip is overridden only when needed: where the policy executes, nothing changes.
    assert executed[proposed == 1].all()


def test_min_blocks_overrides_exactly_when_the_blocks_left_cannot_reach_it() -> None:
    rules = SkipRules(4, min_blocks=2, always_execute=(0,))
    executed, overridden = run_torch(rules, np.zeros((1, 4), dtype=np.int64))  # always try to skip
    assert executed.tolist() == [[True, False, False, True]]
    assert overridden.tolist() == [[True, False, False, True]]
    assert [rules.binds(b) for b in range(4)] == [True, False, True, True]
    assert SkipRules(4).free and not rules.free


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"min_blocks": 5}, ValueError, r"^min_blocks must be an integer in \[0, 4\], got 5$"),
        ({"min_blocks": -1}, ValueError, r"min_blocks must be an integer in \[0, 4\]"),
        ({"min_blocks": 1.0}, ValueError, r"min_blocks must be an integer in \[0, 4\], got 1.0"),
        ({"always_execute": (4,)}, ValueError, r"^always_execute must hold block indices in \[0, 3\], got \[4\]$"),
        ({"always_execute": [1, -1]}, ValueError, r"always_execute must hold block indices in \[0, 3\], got \[1, -1\]"),
        (
            {"always_execute": 5},
            TypeError,
            r"always_execute must be an iterable of block indices .* got int 5; for one block pass \(5,\)",
        ),
        ({"always_execute": "01"}, TypeError, r"always_execute must be an iterable of block indices .* got str '01'"),
        ({"always_execute": [0.5]}, TypeError, r"it holds float 0.5"),
        ({"always_execute": [True]}, TypeError, r"it holds bool True"),
    ],
)
def test_bad_rules_give_the_clear_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        SkipRules(4, **kwargs)


@pytest.mark.parametrize("depth", [0, -2, 2.0, True, "4"])
def test_depth_must_be_a_positive_integer(depth: object) -> None:
    with pytest.raises(ValueError, match=r"depth must be a positive integer"):
        SkipRules(depth)  # type: ignore[arg-type]


def test_values_are_normalised_and_the_object_is_frozen_and_comparable() -> None:
    rules = SkipRules(np.int64(6), np.int64(2), np.array([3, 0, 3]))
    assert rules == SkipRules(6, 2, range(0, 4, 3))
    assert type(rules.depth) is int and type(rules.min_blocks) is int and rules.always_execute == frozenset({0, 3})
    assert hash(rules) == hash(SkipRules(6, 2, (0, 3)))
    with pytest.raises(AttributeError):
        rules.min_blocks = 3  # type: ignore[misc]
    assert block_indices(torch.tensor([1])) == (1,)


def test_config_round_trip_and_file_entries() -> None:
    rules = SkipRules(6, min_blocks=2, always_execute=(3, 0))
    assert rules.config() == {"min_blocks": 2, "always_execute": [0, 3]}  # the keys DynamicViT files store
    assert SkipRules.from_config(rules.config(), 6) == rules
    assert SkipRules.from_config({"min_blocks": 0, "always_execute": []}, 6) == SkipRules(6)
    with pytest.raises(KeyError, match="always_execute"):
        SkipRules.from_config({"min_blocks": 1}, 6)
    with pytest.raises(ValueError, match=r"always_execute must hold block indices in \[0, 2\], got \[0, 3\]"):
        SkipRules.from_config(rules.config(), 3)  # rules of a deeper backbone


def test_contract_unpacks_as_encoder_and_rules() -> None:
    rules = SkipRules(3)
    contract = SkipContract("encoder", rules)  # type: ignore[arg-type]
    encoder, got = contract
    assert encoder == "encoder" and got is rules and contract.rules is rules
