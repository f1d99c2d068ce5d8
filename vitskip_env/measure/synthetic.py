"""Random-weight ``DynamicViT`` s of any timm geometry, for speed measurements only.

Speed does not depend on what the weights have learned, only on the architecture, the policy
network's size and how many rows each block runs on (timm's own benchmark times random-weight
models for the same reason). :func:`synthetic_dynamic_vit` pairs a random-weight timm ViT with a
random-weight policy of exactly the shape ``agents.export_policy`` gives the agents' default PPO
(:func:`default_policy_net`; a test keeps the two in step) and shifts the policy's last bias until
the images execute a chosen fraction of the blocks. The decisions are the network's own, per image
and per block, so their cost and the sub-batch sizes they produce are those of a deployed policy
of that size; nothing about accuracy can be read from such a model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..deploy import DynamicViT, SkipPolicy
from ..deploy.netspec import Columns
from ..model import SkippableViT
from ..observations import encoder_for

#: ``agents/defaults.yaml``'s PPO: extractor ``hidden [128]``, ``features_dim 128``, ``block_embed_dim 16``
#: (ReLU), then the policy's ``net_arch [64]`` (SB3's Tanh) and the 2-way action layer.
DEFAULT_POLICY_SHAPE: dict[str, Any] = {"block_embed": 16, "extractor": (128, 128), "policy": (64,)}


def default_policy_net(embed_dim: int, depth: int) -> nn.Sequential:
    """The agents' default PPO policy network as ``export_policy`` lays it out, freshly initialised.

    ``[token (D) | block one-hot (depth) | executed fraction]`` -> block embedding -> ReLU MLP
    (the features extractor) -> Tanh MLP (SB3's policy ``net_arch``) -> 2 action logits.
    """
    shape = DEFAULT_POLICY_SHAPE
    layers: list[nn.Module] = [Columns([embed_dim, depth, 1], {"1": nn.Linear(depth, shape["block_embed"], bias=False)})]
    width = embed_dim + shape["block_embed"] + 1
    for out in shape["extractor"]:
        layers += [nn.Linear(width, out), nn.ReLU()]
        width = out
    for out in shape["policy"]:
        layers += [nn.Linear(width, out), nn.Tanh()]
        width = out
    layers.append(nn.Linear(width, 2))
    return nn.Sequential(*layers)


@torch.no_grad()  # not inference_mode: the weights must stay ordinary tensors (the fold tracks their versions)
def synthetic_dynamic_vit(
    model: str,
    images: torch.Tensor,
    *,
    execute_fraction: float,
    seed: int = 0,
    tolerance: float = 0.01,
    **overrides: Any,
) -> DynamicViT:
    """A random-weight ``DynamicViT`` of ``model``'s geometry executing ``execute_fraction`` of its blocks.

    Args:
        model: A preset or timm ViT name (``"vit_tiny_patch16_224"``, ``"tiny"``...).
        images: Normalised calibration images ``(N, 3, H, W)`` at the model's input size.
        execute_fraction: Target mean fraction of blocks executed per image, in ``(0, 1)``.
        seed: Seed of the weights.
        tolerance: Stop the bisection once the calibration images are this close to the target.
        **overrides: ``timm.create_model`` keyword arguments (``img_size=224``, ``num_classes=1000``).

    Raises:
        ValueError: ``execute_fraction`` outside ``(0, 1)``.
    """
    if not 0.0 < execute_fraction < 1.0:
        raise ValueError(f"execute_fraction must be in (0, 1), got {execute_fraction}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = SkippableViT(model, **overrides).eval()
        enc = encoder_for(backbone)
        net = default_policy_net(enc.embed_dim, enc.depth)
        # A trained policy decides very differently per block; at its default init the block embedding
        # hardly moves the margin, and the blocks before any image executed (same tokens for all) would sit
        # on one tie. Unit-variance embeddings make the blocks distinct, as training does.
        nn.init.normal_(net[0].nets["1"][0].weight)
        policy = SkipPolicy(net, enc)
    dyn = DynamicViT(backbone, policy).to(images.device).eval()
    last = dyn.policy.net[-1]
    start = float(last.bias[1])
    tried: dict[float, tuple[float, int]] = {}  # shift -> (executed fraction, decisions re-checked at a tie)
    exact, ties = dyn._exact, [0]

    def counting_exact(*args: Any) -> torch.Tensor:
        ties[0] += 1
        return exact(*args)

    def fraction(shift: float) -> float:  # shift of logit 1: more blocks execute as it grows
        if shift not in tried:
            last.bias[1] = start + shift
            dyn.refold()  # explicitly: under inference mode the weights have no version counter to show the change
            ties[0] = 0
            tried[shift] = (float(dyn(images, return_mask=True)[1].float().mean()), ties[0])
        return tried[shift][0]

    dyn._exact = counting_exact  # type: ignore[method-assign]
    lo, hi = -64.0, 64.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if abs(fraction(mid) - execute_fraction) <= tolerance:
            break
        lo, hi = (mid, hi) if fraction(mid) < execute_fraction else (lo, mid)
    # The search ends next to a step of the fraction, i.e. where some margin is ~0: a tie that the decision
    # re-checks exactly on every image (blocks before any image executed see the same tokens for all).
    # No trained policy sits on one, so step a little away from it, keeping the fraction.
    best = min(tried, key=lambda k: abs(tried[k][0] - execute_fraction))
    step = 20 * dyn.folded.tol if dyn.folded is not None else 1e-3
    for k in range(1, 9):
        fraction(best + k * step)
        fraction(best - k * step)
    near = abs(tried[best][0] - execute_fraction) + tolerance
    chosen = min((k for k in tried if abs(tried[k][0] - execute_fraction) <= near),
                 key=lambda k: (tried[k][1], abs(tried[k][0] - execute_fraction)))  # fmt: skip
    del dyn._exact
    last.bias[1] = start + chosen
    dyn.refold()
    dyn.meta["synthetic"] = {"model": model, "execute_fraction": execute_fraction, "seed": seed, **overrides}
    return dyn
