"""JSON descriptions of small plain-torch networks, so a saved policy is rebuilt without pickle or SB3.

A policy network that is a (possibly nested) ``nn.Sequential`` of the layers below is described
as a flat list of layer dicts; :func:`build_net` rebuilds it and :func:`flat_sequential` puts an
existing network into the same flat form, so their ``state_dict`` keys agree (``"0.weight"``...).

Supported layers: ``nn.Linear``, ``nn.LayerNorm``, ``nn.Flatten``, the activations in
:data:`ACTIVATIONS`, ``nn.Identity`` / ``nn.Dropout`` (dropped: the identity at inference), and
three small modules defined here for the policies the agents train: :class:`Columns` (a network
on some column groups of a flat vector: the flat ViTSkip extractors' block embedding),
:class:`ConcatKeys` (SB3's ``CombinedExtractor`` over vector entries, optionally with a network
on some entries) and :class:`QuantileMean` (QR-DQN's greedy values).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

#: Activation class name -> the constructor arguments read from (and given back to) the module.
ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "Tanh": (),
    "ReLU": (),
    "ReLU6": (),
    "GELU": ("approximate",),
    "SiLU": (),
    "Mish": (),
    "ELU": ("alpha",),
    "CELU": ("alpha",),
    "SELU": (),
    "LeakyReLU": ("negative_slope",),
    "Sigmoid": (),
    "Softplus": ("beta", "threshold"),
    "Hardswish": (),
    "Hardtanh": ("min_val", "max_val"),
}


def _subnets(nets: Mapping[str, nn.Module] | None) -> nn.ModuleDict:
    # Sub-networks in the flat form, so their state_dict keys match what build_net rebuilds.
    return nn.ModuleDict({str(k): flat_sequential(v) for k, v in (nets or {}).items()})


class Columns(nn.Module):
    """Split ``(N, F)`` into consecutive column groups, map some through a sub-network, concatenate.

    ``Columns([D, L, 1], {"1": nn.Linear(L, E, bias=False)})`` turns ``[token | block one-hot |
    fraction]`` into ``[token | block embedding | fraction]`` (the ViTSkip flat extractors).

    Args:
        sizes: Width of each group, in order (they sum to ``F``).
        nets: Group index (as a string) -> network applied to that group; other groups pass unchanged.
    """

    def __init__(self, sizes: Sequence[int], nets: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.sizes = [int(s) for s in sizes]
        self.nets = _subnets(nets)
        bounds = [0, *itertools.accumulate(self.sizes)]
        self._groups = [(bounds[i], bounds[i + 1], str(i)) for i in range(len(self.sizes))]
        if any(not k.isdigit() or int(k) >= len(self.sizes) for k in self.nets):
            raise ValueError(f"Columns nets must be keyed by group index in [0, {len(self.sizes)}), got {list(self.nets)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, sum(sizes))`` -> ``(N, F')``."""
        nets = self.nets
        return torch.cat([x[:, a:b] if key not in nets else nets[key](x[:, a:b]) for a, b, key in self._groups], dim=1)

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}"


class ConcatKeys(nn.Module):
    """Flatten each named observation entry from dim 1 (optionally through a sub-network) and concatenate.

    With no ``nets`` this is SB3's ``CombinedExtractor`` over vector entries (its sub-extractors
    are ``nn.Flatten``), with the keys in the order of the Dict space (sorted).

    Args:
        keys: Entry names, in concatenation order.
        nets: Entry name -> network applied to that entry instead of flattening it.
    """

    def __init__(self, keys: Sequence[str], nets: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.keys = [str(k) for k in keys]
        self.nets = _subnets(nets)
        if set(self.nets) - set(self.keys):
            raise ValueError(f"ConcatKeys nets {sorted(self.nets)} must be among the keys {self.keys}")

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{key: (N, ...)}`` -> ``(N, F)``."""
        return torch.cat([self.nets[k](obs[k]) if k in self.nets else obs[k].flatten(1) for k in self.keys], dim=1)

    def extra_repr(self) -> str:
        return f"keys={self.keys}"


class QuantileMean(nn.Module):
    """``(N, n_quantiles * n_actions)`` -> ``(N, n_actions)``: mean over quantiles (QR-DQN's greedy values).

    Args:
        n_quantiles: Quantiles per action.
        n_actions: Actions.
    """

    def __init__(self, n_quantiles: int, n_actions: int) -> None:
        super().__init__()
        self.n_quantiles, self.n_actions = int(n_quantiles), int(n_actions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """As ``QuantileNetwork.forward(...).mean(dim=1)``."""
        return x.view(-1, self.n_quantiles, self.n_actions).mean(dim=1)

    def extra_repr(self) -> str:
        return f"n_quantiles={self.n_quantiles}, n_actions={self.n_actions}"


def supported_layers() -> list[str]:
    """Names of the layer types :func:`describe_net` accepts (for error messages)."""
    return [
        "Sequential",
        "Linear",
        "LayerNorm",
        "Flatten",
        "Columns",
        "ConcatKeys",
        "QuantileMean",
        "Identity",
        "Dropout",
        *ACTIVATIONS,
    ]


def _leaves(module: nn.Module) -> list[nn.Module]:
    if type(module) is nn.Sequential:
        return [leaf for child in module for leaf in _leaves(child)]
    if type(module) in (nn.Identity, nn.Dropout):
        return []
    return [module]


def _describe_layer(m: nn.Module) -> dict[str, Any]:
    kind = type(m)
    if kind is nn.Linear:
        return {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
    if kind is nn.LayerNorm:
        return {
            "type": "LayerNorm",
            "normalized_shape": list(m.normalized_shape),
            "eps": m.eps,
            "elementwise_affine": m.elementwise_affine,
            "bias": m.bias is not None,
        }
    if kind is nn.Flatten:
        return {"type": "Flatten", "start_dim": m.start_dim, "end_dim": m.end_dim}
    if kind is Columns:
        return {"type": "Columns", "sizes": list(m.sizes), "nets": {k: describe_net(v) for k, v in m.nets.items()}}
    if kind is ConcatKeys:
        return {"type": "ConcatKeys", "keys": list(m.keys), "nets": {k: describe_net(v) for k, v in m.nets.items()}}
    if kind is QuantileMean:
        return {"type": "QuantileMean", "n_quantiles": m.n_quantiles, "n_actions": m.n_actions}
    name = kind.__name__
    if name in ACTIVATIONS and kind is getattr(nn, name, None):
        return {"type": name, **{arg: getattr(m, arg) for arg in ACTIVATIONS[name]}}
    raise NotImplementedError(
        f"cannot describe a {kind.__module__}.{kind.__qualname__} layer for saving: a saved SkipPolicy network must be a "
        f"(nested) nn.Sequential of {supported_layers()}. Use an MLP policy (SB3 MlpPolicy / MultiInputPolicy with vector "
        "observations), or keep this policy in memory (DynamicViT works, only save() needs the description)."
    )


def describe_net(net: nn.Module) -> list[dict[str, Any]]:
    """The JSON layer list of ``net``.

    Raises:
        NotImplementedError: A layer type outside :func:`supported_layers`; the message names it.
    """
    return [_describe_layer(m) for m in _leaves(net)]


def describable(net: nn.Module) -> bool:
    """Whether :func:`describe_net` accepts ``net``."""
    try:
        describe_net(net)
    except NotImplementedError:
        return False
    return True


def flat_sequential(net: nn.Module) -> nn.Sequential:
    """``net`` as one flat ``nn.Sequential`` of its layers (the same module objects, identity layers dropped)."""
    return nn.Sequential(*_leaves(net))


#: The most layers (nested ones included) a described network may have, and the longest list in a layer.
MAX_LAYERS = 1024
#: The deepest nesting of sub-networks (``Columns`` / ``ConcatKeys``) a described network may have.
MAX_NESTING = 8


def check_spec(spec: Any) -> None:
    """Check the shape of a layer list before anything is built: lists of layer dicts, bounded in size.

    Raises:
        ValueError: Not a list of ``{"type": ...}`` dicts, more than :data:`MAX_LAYERS` layers or list
            entries, or sub-networks nested deeper than :data:`MAX_NESTING`.
    """
    count = 0

    def walk(layers: Any, level: int) -> None:
        nonlocal count
        if level > MAX_NESTING:
            raise ValueError(f"sub-networks are nested more than {MAX_NESTING} deep")
        if not isinstance(layers, list):
            raise ValueError(f"a network must be a list of layer dicts, got {type(layers).__name__}")
        for entry in layers:
            count += 1
            if count > MAX_LAYERS:
                raise ValueError(f"a network may have at most {MAX_LAYERS} layers")
            if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
                raise ValueError(f"each layer must be a dict with a 'type' string, got {entry!r:.200}")
            if any(isinstance(v, list) and len(v) > MAX_LAYERS for v in entry.values()):
                raise ValueError(f"a {entry['type']} layer has a list longer than {MAX_LAYERS} entries")
            nets = entry.get("nets", {})
            if not isinstance(nets, dict):
                raise ValueError(f"'nets' of a {entry['type']} layer must be a dict, got {type(nets).__name__}")
            for sub in nets.values():
                walk(sub, level + 1)

    walk(spec, 0)


def build_net(spec: Sequence[Mapping[str, Any]]) -> nn.Sequential:
    """Rebuild a network from :func:`describe_net`'s list (fresh, untrained weights).

    The list is checked first (:func:`check_spec`); build it under ``torch.device("meta")`` to see
    its parameter shapes without allocating them.

    Raises:
        ValueError: A malformed list, an unknown layer type or bad arguments (a corrupt or newer file).
    """
    check_spec(spec)
    return _build(spec)


def _build(spec: Sequence[Mapping[str, Any]]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for entry in spec:
        args = {k: v for k, v in entry.items() if k != "type"}
        kind = entry.get("type")
        try:
            if kind == "Linear":
                layers.append(nn.Linear(**args))
            elif kind == "LayerNorm":
                layers.append(nn.LayerNorm(**args))
            elif kind == "Flatten":
                layers.append(nn.Flatten(**args))
            elif kind in ("Columns", "ConcatKeys"):
                nets = {k: _build(v) for k, v in args.pop("nets", {}).items()}
                layers.append((Columns if kind == "Columns" else ConcatKeys)(**args, nets=nets))
            elif kind == "QuantileMean":
                layers.append(QuantileMean(**args))
            elif kind in ACTIVATIONS:
                layers.append(getattr(nn, kind)(**args))
            else:
                raise ValueError(f"unknown layer type {kind!r}; known: {supported_layers()}")
        except (TypeError, RuntimeError) as exc:
            raise ValueError(f"bad arguments for layer {entry!r:.300}: {exc}") from exc
    return nn.Sequential(*layers)
