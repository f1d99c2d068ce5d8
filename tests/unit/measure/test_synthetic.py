"""Random-weight DynamicViTs for speed measurements (``vitskip_env.measure.synthetic``, ``train/benchmark.py --arch``)."""

from __future__ import annotations

import pytest
import torch

import agents
from vitskip_env import make_dataset
from vitskip_env.deploy import describe_net
from vitskip_env.measure.synthetic import default_policy_net, synthetic_dynamic_vit


def test_default_policy_net_is_what_export_policy_gives_the_default_ppo(micro_kwargs: dict) -> None:
    env = agents.SB3VecEnv(2, **micro_kwargs)
    policy = agents.export_policy(agents.make_agent("ppo", env, seed=0), env)
    enc = policy.encoder
    assert describe_net(default_policy_net(enc.embed_dim, enc.depth)) == describe_net(policy.net)


def test_synthetic_model_executes_the_asked_fraction_with_per_image_decisions() -> None:
    ds = make_dataset("shapes", "test")
    x = ds.normalize(ds.images[:64])
    dyn = synthetic_dynamic_vit("micro", x, execute_fraction=0.5, num_classes=10)
    with torch.inference_mode():
        logits, mask = dyn(x, return_mask=True)
        folded, dyn.folded = dyn.folded, None
        _, exact = dyn(x, return_mask=True)
    assert logits.shape == (64, 10) and torch.equal(mask, exact)
    assert abs(mask.float().mean().item() - 0.5) <= 0.15
    per_block = mask.float().mean(0)
    assert ((per_block > 0) & (per_block < 1)).any()  # some block runs on a real sub-batch
    assert folded is not None  # the folded decision is what gets measured


def test_calibration_under_inference_mode_reaches_the_fraction() -> None:
    """Built inside ``torch.inference_mode()`` (weights without version counters) it still calibrates."""
    ds = make_dataset("shapes", "test")
    x = ds.normalize(ds.images[:64])
    with torch.inference_mode():
        dyn = synthetic_dynamic_vit("micro", x, execute_fraction=0.5, num_classes=10)
        mask = dyn(x, return_mask=True)[1]
    assert abs(mask.float().mean().item() - 0.5) <= 0.15


def test_bad_fraction_is_refused() -> None:
    with pytest.raises(ValueError, match="execute_fraction"):
        synthetic_dynamic_vit("micro", torch.zeros(2, 3, 32, 32), execute_fraction=1.0)
