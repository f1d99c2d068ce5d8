"""``EnvOptions`` is the one declaration of the env keyword arguments: the env signatures, the
registered ids and the training scripts' flags are checked against it, so they cannot drift."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium as gym
import pytest

import vitskip_env
from vitskip_env import ViTSkipEnv, ViTSkipVectorEnv
from vitskip_env.env.options import EnvOptions, option_defaults, option_names

TRAIN = Path(__file__).resolve().parents[3] / "train"

#: Parameters each env class has beside the ``EnvOptions`` fields (listed here on purpose: a new one
#: must be added to this list or to ``EnvOptions``).
ENV_SPECIFIC: dict[type, tuple[str, ...]] = {
    ViTSkipEnv: (),
    ViTSkipVectorEnv: ("num_envs", "autoreset_mode", "max_episode_steps"),
}

#: Script flags that share a name with an env option but mean something else, so their defaults differ.
SCRIPT_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("nsga2", "min_blocks"): "the fewest kept blocks of a static subset (a subset of no block is no model)",
    ("benchmark", "dataset"): "None: the dataset of the env the benchmarked model was trained in",
}

#: The env options that ``train/rl.py`` exposes as flags (all of them must keep the env's defaults).
RL_SHARED = (
    "backbone",
    "backbone_mode",
    "accuracy_weight",
    "compute_weight",
    "confidence_weight",
    "obs_mode",
    "min_blocks",
    "data_root",
    "download",
    "device",
)


def _env_parameters(cls: type) -> tuple[list[inspect.Parameter], inspect.Parameter | None]:
    """The named parameters of ``cls.__init__`` (without ``self``) and its ``**kwargs`` (None when it has none)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    var_kw = next((p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    assert not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    return [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD], var_kw


@pytest.mark.parametrize("cls", list(ENV_SPECIFIC), ids=lambda c: c.__name__)
def test_env_signatures_follow_env_options(cls: type) -> None:
    named, var_kw = _env_parameters(cls)
    specific = [p.name for p in named if p.name in ENV_SPECIFIC[cls]]
    assert specific == list(ENV_SPECIFIC[cls]), f"{cls.__name__} lacks its own parameters {ENV_SPECIFIC[cls]}"
    options = [p for p in named if p.name not in ENV_SPECIFIC[cls]]
    if options:  # written out: every field, in the declaration's order, with its default
        assert [p.name for p in options] == option_names()
        assert {p.name: p.default for p in options} == option_defaults()
    else:  # forwarded: **kwargs goes to EnvOptions, whose defaults then apply
        assert var_kw is not None, f"{cls.__name__} takes none of the EnvOptions fields"
    # Unknown keywords are refused by check_kwargs (which needs **kwargs to see them).
    assert var_kw is not None


def test_env_options_defaults_are_the_documented_ones() -> None:
    defaults = option_defaults()
    assert defaults["compute_weight"] == 0.1  # the tuned value behind the README's results
    assert defaults["accuracy_weight"] == 1.0 and defaults["confidence_weight"] == 0.0
    assert list(defaults) == [f.name for f in dataclasses.fields(EnvOptions)]
    assert all(f.default is not dataclasses.MISSING for f in dataclasses.fields(EnvOptions))


def test_registered_ids_pass_only_env_options() -> None:
    for env_id in vitskip_env.ENV_IDS:
        spec = gym.spec(env_id)
        assert set(spec.kwargs) <= set(option_names()), env_id


@pytest.fixture(scope="module")
def scripts() -> dict[str, ModuleType]:
    """The training scripts imported as their ``python train/x.py`` run sees them (``train/`` on sys.path)."""
    sys.path.insert(0, str(TRAIN))
    try:
        return {name: importlib.import_module(name) for name in ("rl", "nsga2", "backbone", "benchmark")}
    finally:
        sys.path.remove(str(TRAIN))


def _script_args(scripts: dict[str, ModuleType]) -> dict[str, type]:
    return {
        "rl": scripts["rl"].RLArgs,
        "nsga2": scripts["nsga2"].Args,
        "backbone": scripts["backbone"].Args,
        "benchmark": scripts["benchmark"].Args,
    }


def test_rl_flags_default_to_the_env_defaults(scripts: dict[str, ModuleType]) -> None:
    rl = scripts["rl"]
    flags = {f.name: f.default for f in dataclasses.fields(rl.RLArgs)}
    defaults = option_defaults()
    assert set(RL_SHARED) <= set(flags), "train/rl.py no longer exposes an env option listed in RL_SHARED"
    assert {name: flags[name] for name in RL_SHARED} == {name: defaults[name] for name in RL_SHARED}
    # What a default run builds: the env of the default id at the env's own defaults.
    kwargs: dict[str, Any] = rl.env_kwargs(rl.RLArgs())
    assert set(kwargs) <= set(defaults)
    assert kwargs == {name: defaults[name] for name in kwargs}


def test_script_flags_sharing_an_env_option_name_share_its_default(scripts: dict[str, ModuleType]) -> None:
    defaults = option_defaults()
    drift = {}
    for script, args in _script_args(scripts).items():
        for f in dataclasses.fields(args):
            if f.name in defaults and (script, f.name) not in SCRIPT_EXCEPTIONS and f.default != defaults[f.name]:
                drift[f"{script}.{f.name}"] = (f.default, defaults[f.name])
    assert not drift, f"script flag default != EnvOptions default: {drift}"
    for script, name in SCRIPT_EXCEPTIONS:  # an exception that no longer applies is removed from the list
        fields = {f.name: f.default for f in dataclasses.fields(_script_args(scripts)[script])}
        assert name in fields and fields[name] != defaults[name], (script, name)
