"""The folded decision (``vitskip_env.deploy.folded``): the exact path's decisions, near ties included, in torch and NumPy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitskip_env import DynamicViT, SkippableViT, SkipPolicy, ViTSkipVectorEnv
from vitskip_env.deploy import FoldedDecision
from vitskip_env.deploy.netspec import Columns
from vitskip_env.observations import encoder_for


def agent_like_policy(vit: SkippableViT, act: type[nn.Module] = nn.Tanh, seed: int = 0, **kw) -> SkipPolicy:
    """The shape ``export_policy`` gives the agents' default PPO: block embedding + MLP, random weights."""
    torch.manual_seed(seed)
    enc = encoder_for(vit)
    d, depth = enc.embed_dim, enc.depth
    net = nn.Sequential(
        Columns([d, depth, 1], {"1": nn.Linear(depth, 8, bias=False)}),
        nn.Linear(d + 9, 32),
        nn.ReLU(),
        nn.Linear(32, 16),
        act(),
        nn.Linear(16, 2),
    )
    return SkipPolicy(net, enc, **kw)


@pytest.fixture
def micro(micro_kwargs: dict) -> tuple[SkippableViT, torch.Tensor]:
    env = ViTSkipVectorEnv(1, **micro_kwargs)
    ds = env.dataset
    return env.backbone, ds.normalize(ds.images[:64])


def states(vit: SkippableViT, x: torch.Tensor, block: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states before ``block`` after random earlier decisions, and the executed mask."""
    g = torch.Generator().manual_seed(seed)
    executed = torch.zeros(x.shape[0], vit.depth, dtype=torch.bool)
    executed[:, :block] = torch.rand(x.shape[0], block, generator=g) < 0.5
    with torch.inference_mode():
        tokens = vit.embed(x)
        for i in range(block):
            tokens = vit.run_block(i, tokens, executed[:, i])
    return tokens, executed


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU, nn.GELU])
def test_folded_margins_match_the_exact_logits(micro: tuple, act: type[nn.Module]) -> None:
    vit, x = micro
    dyn = DynamicViT(vit, agent_like_policy(vit, act))
    folded = dyn.folded
    assert folded is not None and folded.has_host_path == (act is not nn.GELU)
    for block in range(vit.depth):
        tokens, executed = states(vit, x, block, seed=block)
        with torch.inference_mode():
            packed = dyn.policy.encoder.pack(tokens, block, executed.sum(1, dtype=torch.float32) / vit.depth)
            logits = dyn.policy.logits(packed)
            exact_margin = logits[:, 1] - logits[:, 0]
            margin = folded(tokens, block, executed.sum(1, dtype=torch.float32))
            assert (margin - exact_margin).abs().max() < folded.tol / 100
            if folded.has_host_path:
                host = torch.from_numpy(folded.margin_host(tokens, block, executed.numpy().sum(1)))
                assert (host - exact_margin).abs().max() < folded.tol / 100


def near_tie(dyn: DynamicViT, tokens: torch.Tensor, block: int, count: torch.Tensor) -> None:
    """Put row 0 a quarter tolerance on the skip side of the tie, and make the folded margins err by half a
    tolerance towards executing (as rounding may): only the exact re-check keeps the decision right."""
    margin = float(dyn.folded(tokens, block, count)[0])
    dyn.policy.net[-1].bias[1] -= margin + dyn.folded.tol / 4
    dyn.refold()
    folded, tol = dyn.folded, dyn.folded.tol
    torch_margin, host_margin = folded.margin_from, folded.margin_from_host
    folded.margin_from = lambda *a: torch_margin(*a) + tol / 2
    folded.margin_from_host = lambda *a: host_margin(*a) + tol / 2


@pytest.mark.parametrize("batch", [1, 5, 64])  # NumPy path (<= 16 images) and torch path
def test_decisions_equal_the_exact_path_even_at_ties(micro: tuple, batch: int) -> None:
    vit, x = micro
    dyn = DynamicViT(vit, agent_like_policy(vit, seed=3))
    tokens, executed = states(vit, x[:batch], 2, seed=1)
    with torch.inference_mode():
        near_tie(dyn, tokens, 2, executed.sum(1, dtype=torch.float32))
        assert 0 < float(dyn.folded(tokens, 2, executed.sum(1, dtype=torch.float32))[0]) <= dyn.folded.tol  # folded: execute
        fast = dyn.decide(2, tokens, executed)
        exact = dyn._decide(2, tokens, executed)
    assert not exact[0] and torch.equal(fast, exact)


@pytest.mark.parametrize("rules", [{}, {"min_blocks": 3, "always_execute": (1,)}])
def test_forward_with_and_without_folding_agree(micro: tuple, rules: dict) -> None:
    """Torch (64 images) and NumPy (16, 5, 1) folded paths, with token features kept across skips."""
    vit, x = micro
    dyn = DynamicViT(vit, agent_like_policy(vit, seed=5, **rules)).eval()
    with torch.inference_mode():
        logits, mask = dyn(x, return_mask=True)
        host16 = dyn(x[:16], return_mask=True)
        host5 = torch.cat([dyn(x[j : j + 5], return_mask=True)[1] for j in range(0, 20, 5)])
        singles = torch.cat([dyn(x[j : j + 1], return_mask=True)[1] for j in range(16)])
        folded, dyn.folded = dyn.folded, None
        ref_logits, ref_mask = dyn(x, return_mask=True)
        dyn.folded = folded
    assert 0 < mask[:, 2:].sum() < mask[:, 2:].numel()  # the policy really varies (else the test shows nothing)
    assert torch.equal(mask, ref_mask) and torch.equal(logits, ref_logits)
    assert torch.equal(host16[1], ref_mask[:16]) and torch.allclose(host16[0], ref_logits[:16], atol=1e-5)
    assert torch.equal(host5, ref_mask[:20]) and torch.equal(singles, ref_mask[:16])
    if rules:
        assert mask[:, 1].all() and (mask.sum(1) >= 3).all()


def test_unsupported_policies_keep_the_exact_path(micro: tuple) -> None:
    vit, _ = micro
    enc = encoder_for(vit)
    assert FoldedDecision.build(SkipPolicy(nn.Linear(enc.obs_dim, 2), enc)) is None  # no hidden layer to fold into
    normalised = SkipPolicy(
        nn.Sequential(nn.Linear(enc.obs_dim, 8), nn.Tanh(), nn.Linear(8, 2)),
        enc,
        obs_mean=torch.zeros(enc.obs_dim),
        obs_var=torch.ones(enc.obs_dim),
    )
    assert FoldedDecision.build(normalised) is None
    dict_enc = encoder_for(vit, "dict")
    assert FoldedDecision.build(SkipPolicy(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)), dict_enc)) is None
    plain = FoldedDecision.build(SkipPolicy(nn.Sequential(nn.Linear(enc.obs_dim, 8), nn.Tanh(), nn.Linear(8, 2)), enc))
    assert plain is not None and plain.has_host_path


def test_changing_the_policy_in_place_refolds_before_the_next_forward(micro: tuple) -> None:
    vit, x = micro
    dyn = DynamicViT(vit, agent_like_policy(vit, seed=5)).eval()
    with torch.inference_mode():
        before = dyn(x, return_mask=True)[1]
        dyn.policy.net[-1].bias[1] += 100.0  # execute everything from now on
        after = dyn(x, return_mask=True)[1]
    assert not before.all() and after.all()


@pytest.mark.parametrize("batch", [1, 5, 64])  # NumPy path (one image, a few) and torch path, with cached features
def test_forward_at_a_tie_takes_the_exact_decision(micro: tuple, batch: int) -> None:
    vit, x = micro
    dyn = DynamicViT(vit, agent_like_policy(vit, seed=3)).eval()
    with torch.inference_mode():
        near_tie(dyn, vit.embed(x[:1]), 0, torch.zeros(1))  # block 0 sees the same tokens in every image: all rows
        _, mask = dyn(x[:batch], return_mask=True)
        dyn.folded = None
        _, ref_mask = dyn(x[:batch], return_mask=True)
    assert not ref_mask[:, 0].any() and torch.equal(mask, ref_mask)


def test_a_policy_built_under_inference_mode_folds_and_a_changed_one_refolds(micro: tuple) -> None:
    vit, x = micro
    with torch.inference_mode():  # e.g. DynamicViT.load inside inference mode: tensors without version counters
        dyn = DynamicViT(vit, agent_like_policy(vit)).eval()
        logits, mask = dyn(x, return_mask=True)
    exact = DynamicViT(vit, agent_like_policy(vit)).eval()
    with torch.inference_mode():
        ref_logits, ref_mask = exact(x, return_mask=True)
    assert torch.equal(mask, ref_mask) and torch.allclose(logits, ref_logits, atol=1e-5)
    with torch.no_grad():  # a replaced weight must not reuse the old fold
        last = exact.policy.net[-1]
        last.bias = nn.Parameter(last.bias + torch.tensor([0.0, 1e3]))
        _, all_run = exact(x, return_mask=True)
    assert all_run.all()
