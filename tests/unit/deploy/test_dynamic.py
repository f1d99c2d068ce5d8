"""DynamicViT: real skipping, the env's decisions and constraints, batching, persistence without SB3."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vitskip_env import DynamicViT, SkippableViT, SkipPolicy, ViTSkipVectorEnv, load_backbone
from vitskip_env.deploy import deterministic_action
from vitskip_env.observations import ObservationEncoder, encoder_for
from vitskip_env.rules import SkipRules

REPO = Path(__file__).resolve().parents[3]


def block_policy(enc: ObservationEncoder, skip: tuple[int, ...] = (), execute_elsewhere: bool = True, **kw) -> SkipPolicy:
    """A linear policy that skips exactly the blocks in ``skip`` (it reads the block one-hot)."""
    lin = nn.Linear(enc.obs_dim, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([0.0, 0.5 if execute_elsewhere else -0.5]))
        for k in skip:
            lin.weight[0, enc.embed_dim + k] = 1.0  # skip logit 1 > 0.5 at block k
    return SkipPolicy(lin, enc, **kw)


def random_policy(enc: ObservationEncoder, seed: int = 0, **kw) -> SkipPolicy:
    """A random MLP (for persistence tests: its decisions need not vary)."""
    torch.manual_seed(seed)
    return SkipPolicy(nn.Sequential(nn.Linear(enc.obs_dim, 16), nn.Tanh(), nn.Linear(16, 2)), enc, **kw)


def varied_policy(vit: SkippableViT, images: torch.Tensor, seed: int = 0, **kw) -> SkipPolicy:
    """Execute block 0, then decide by a random projection of the class token, thresholded at its median.

    Until a block runs every image has the same class token, hence the forced block 0; the
    threshold is calibrated on ``images`` after block 0, so decisions differ between images.
    """
    enc = encoder_for(vit)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(enc.embed_dim, generator=g)
    with torch.inference_mode():
        feat = enc.pack(vit.run_block(0, vit.embed(images)), 1, torch.zeros(images.shape[0]))[:, : enc.embed_dim]
    lin = nn.Linear(enc.obs_dim, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[1, : enc.embed_dim] = w
        lin.weight[1, enc.embed_dim] = 100.0  # block 0 one-hot
        lin.bias[1] = -(feat @ w).median()
    return SkipPolicy(lin, enc, **kw)


@pytest.fixture
def micro(micro_kwargs: dict) -> tuple[SkippableViT, torch.Tensor]:
    """The untrained micro backbone (4 blocks) and 12 normalised test images."""
    env = ViTSkipVectorEnv(1, **micro_kwargs)
    ds = env.dataset
    return env.backbone, ds.normalize(ds.images[:12])


def count_calls(vit: SkippableViT) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {i: [] for i in range(vit.depth)}
    for i, blk in enumerate(vit.blocks):
        blk.register_forward_pre_hook(lambda mod, inp, i=i: seen[i].append(inp[0].shape[0]))
    return seen


def test_execute_everything_equals_the_backbone(micro: tuple) -> None:
    vit, x = micro
    dyn = DynamicViT(vit, block_policy(encoder_for(vit)))
    with torch.inference_mode():
        logits, mask = dyn(x, return_mask=True)
        assert torch.equal(logits, vit(x))
    assert mask.all() and mask.shape == (12, vit.depth)


def test_a_skipped_block_is_never_called() -> None:
    torch.manual_seed(0)
    vit = SkippableViT("micro", num_classes=10).eval()
    dyn = DynamicViT(vit, block_policy(encoder_for(vit), skip=(2,)))
    seen = count_calls(vit)
    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        logits, mask = dyn(x, return_mask=True)
        assert seen == {0: [5], 1: [5], 2: [], 3: [5]}
        expected = vit(x, execute_mask=mask)
    assert mask[:, 2].sum() == 0 and mask[:, [0, 1, 3]].all()
    assert torch.equal(logits, expected)


@pytest.mark.parametrize(
    "env_kwargs",
    [{}, {"min_blocks": 3, "always_execute": (1,)}, {"obs_mode": "dict"}],
    ids=["flat", "constraints", "dict"],
)
def test_dynamic_vit_reproduces_the_env_episode(micro_kwargs: dict, env_kwargs: dict) -> None:
    """Deployment sees exactly what training saw: same observations -> same masks and predictions."""
    n = 16
    venv = ViTSkipVectorEnv(n, **{**micro_kwargs, "sampling": "sequential", **env_kwargs})
    ds = venv.dataset
    images = ds.normalize(ds.images[:n])
    net = varied_policy(venv.backbone, images, seed=1).net
    if env_kwargs.get("obs_mode") == "dict":
        from vitskip_env.deploy.netspec import ConcatKeys

        net = nn.Sequential(ConcatKeys(["token", "block", "executed_frac"]), net)
    policy = SkipPolicy.from_contract(venv.unwrapped.skip_contract(), net)
    obs, _ = venv.reset(seed=0)
    for _ in range(venv.backbone.depth):
        actions, _ = policy.predict(obs)
        obs, _, terminated, _, infos = venv.step(actions)
    assert terminated.all()
    dyn = DynamicViT(venv.backbone, policy)
    with torch.inference_mode():
        logits, mask = dyn(images, return_mask=True)
        env_logits = venv.backbone.head(venv.core.tokens)
    assert np.array_equal(mask.numpy(), infos["executed_mask"])
    assert np.array_equal(logits.argmax(1).numpy(), infos["prediction"])
    assert torch.equal(logits, env_logits)
    assert 0 < mask.sum() < mask.numel() and len({tuple(r) for r in mask.tolist()}) > 1  # decisions vary


def test_batched_equals_per_image(micro: tuple) -> None:
    vit, x = micro
    dyn = DynamicViT(vit, varied_policy(vit, x, seed=2))
    with torch.inference_mode():
        logits, mask = dyn(x, return_mask=True)
        assert len({tuple(r) for r in mask.tolist()}) > 1
        singles = [dyn(x[j : j + 1], return_mask=True) for j in range(x.shape[0])]
    assert torch.equal(mask, torch.cat([m for _, m in singles]))
    assert torch.allclose(logits, torch.cat([lg for lg, _ in singles]), atol=1e-5)


def test_min_blocks_and_always_execute_are_honoured(micro: tuple) -> None:
    vit, x = micro
    policy = block_policy(encoder_for(vit), execute_elsewhere=False, min_blocks=3, always_execute=(0,))
    calls = []
    original = policy.forward
    policy.forward = lambda packed: calls.append(packed.shape[0]) or original(packed)
    with torch.inference_mode():
        _, mask = DynamicViT(vit, policy)(x, return_mask=True)
    # Always skipping: block 0 is forced, block 1 may be skipped, then 2 and 3 are needed to reach 3 blocks.
    assert mask.tolist() == [[True, False, True, True]] * x.shape[0]
    assert calls == [12] * (vit.depth - 1)  # the policy is not consulted on an always-executed block


def test_deterministic_action_mirrors_categorical_mode() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4000, 1, generator=g)
    logits = torch.cat([base, base + torch.randn(4000, 1, generator=g) * 1e-7], 1)  # many near-ties
    logits[:5] = torch.tensor([0.0, 0.0])  # exact ties -> action 0 (skip), as torch.argmax picks the first
    expected = torch.distributions.Categorical(logits=logits).probs.argmax(1)
    assert torch.equal(deterministic_action(logits), expected)
    assert deterministic_action(logits)[:5].tolist() == [0] * 5
    masks = torch.tensor([[False, True]]).expand(4000, 2)
    assert deterministic_action(logits, action_masks=masks).eq(1).all()


def test_save_load_roundtrip_with_normalisation(micro: tuple, tmp_path: Path) -> None:
    vit, x = micro
    enc = encoder_for(vit)
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(enc.obs_dim, generator=g) > 0.3
    net = random_policy(enc, seed=4).net
    policy = SkipPolicy(
        net,
        enc,
        min_blocks=2,
        obs_mean=torch.randn(enc.obs_dim, generator=g, dtype=torch.float64) * 0.1,
        obs_var=torch.rand(enc.obs_dim, generator=g, dtype=torch.float64) + 0.5,
        obs_norm_mask=mask,
        clip_obs=5.0,
    )
    dyn = DynamicViT(vit, policy)
    path = dyn.save(tmp_path / "dyn.safetensors", dataset="shapes")
    loaded = DynamicViT.load(path)
    with torch.inference_mode():
        a, ma = dyn(x, return_mask=True)
        b, mb = loaded(x, return_mask=True)
    assert torch.equal(a, b) and torch.equal(ma, mb)
    config = json.loads((tmp_path / "dyn.json").read_text())
    assert config["format"] == "vitskip-dynamic" and config["policy"]["min_blocks"] == 2 and config["dataset"] == "shapes"
    assert loaded.meta == {"dataset": "shapes"} and loaded.policy.obs_mean.dtype == torch.float64
    assert not list(tmp_path.glob(".*.tmp"))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        keys = list(fh.keys())
    assert all(k.startswith(("backbone.vit.", "policy.")) for k in keys) and "policy.obs_mean" in keys


def test_rules_are_stored_under_the_same_keys_and_files_resave_bit_identically(micro: tuple, tmp_path: Path) -> None:
    """The rules' file entries did not change (``policy.min_blocks``, ``policy.always_execute`` sorted)."""
    vit, _ = micro
    policy = random_policy(encoder_for(vit), seed=6, min_blocks=2, always_execute=(3, 0))
    path = DynamicViT(vit, policy).save(tmp_path / "dyn.safetensors")
    config = json.loads((tmp_path / "dyn.json").read_text())["policy"]
    assert (config["min_blocks"], config["always_execute"]) == (2, [0, 3])
    assert set(config) == {"encoder", "decision", "min_blocks", "always_execute", "net", "obs_norm"}
    loaded = DynamicViT.load(path)
    assert loaded.policy.rules == policy.rules == SkipRules(vit.depth, 2, (0, 3))
    again = loaded.save(tmp_path / "again.safetensors")
    assert again.read_bytes() == path.read_bytes()


def test_policy_rules_come_as_one_object_or_as_the_two_arguments(micro: tuple, micro_kwargs: dict) -> None:
    vit, _ = micro
    enc = encoder_for(vit)
    rules = SkipRules(vit.depth, 2, (1,))
    policy = random_policy(enc, rules=rules)
    assert policy.rules is rules and (policy.min_blocks, policy.always_execute) == (2, frozenset({1}))
    assert random_policy(enc, min_blocks=2, always_execute=[1]).rules == rules
    with pytest.raises(ValueError, match="not both"):
        random_policy(enc, rules=rules, min_blocks=1)
    with pytest.raises(ValueError, match="the rules are for 3 blocks"):
        random_policy(enc, rules=SkipRules(3))
    venv = ViTSkipVectorEnv(1, **{**micro_kwargs, "min_blocks": 2, "always_execute": (1,)})
    net = random_policy(enc).net
    for source in (venv, venv.skip_contract(), tuple(venv.skip_contract())):  # an env, its contract, a pair
        assert SkipPolicy.from_contract(source, net).rules == rules


def test_decide_applies_both_rules(micro: tuple) -> None:
    """``decide`` returns the decisions after the rules, on an always-executed block too."""
    vit, x = micro
    dyn = DynamicViT(vit, block_policy(encoder_for(vit), execute_elsewhere=False, always_execute=(1,)))
    executed = torch.zeros(x.shape[0], vit.depth, dtype=torch.bool)
    with torch.inference_mode():
        tokens = vit.embed(x)
        assert not dyn.decide(0, tokens, executed).any()  # the policy skips everywhere
        assert dyn.decide(1, tokens, executed).all()  # always_execute overrides it


def test_load_errors_are_clear(micro: tuple, tmp_path: Path) -> None:
    vit, _ = micro
    dyn = DynamicViT(vit, block_policy(encoder_for(vit)))
    path = dyn.save(tmp_path / "dyn.safetensors")
    backbone_file = vit.save(tmp_path / "bb.safetensors")
    with pytest.raises(ValueError, match=r"holds a 'vitskip-backbone'.*load_backbone"):
        DynamicViT.load(backbone_file)
    with pytest.raises(ValueError, match=r"holds a 'vitskip-dynamic'.*DynamicViT\.load"):
        load_backbone(path)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated"):
        DynamicViT.load(truncated)
    with pytest.raises(FileNotFoundError, match=r"dynamic_vit\.safetensors"):
        DynamicViT.load(tmp_path / "missing.safetensors")


class _Custom(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * 2


def test_custom_network_runs_but_cannot_be_saved(micro: tuple, tmp_path: Path) -> None:
    vit, x = micro
    enc = encoder_for(vit)
    dyn = DynamicViT(vit, SkipPolicy(_Custom(enc.obs_dim), enc))
    with torch.inference_mode():
        assert dyn(x).shape == (12, 10)
    with pytest.raises(NotImplementedError, match=r"_Custom.*nn.Sequential of"):
        dyn.save(tmp_path / "x.safetensors")


def test_policy_of_another_backbone_is_rejected(micro: tuple) -> None:
    vit, _ = micro
    other = ObservationEncoder("flat", depth=4, num_tokens=17, embed_dim=64)
    with pytest.raises(ValueError, match="embed_dim"):
        DynamicViT(vit, block_policy(other))
    with pytest.raises(ValueError, match="min_blocks"):
        block_policy(encoder_for(vit), min_blocks=9)


def test_loads_and_runs_without_stable_baselines3(micro: tuple, tmp_path: Path) -> None:
    vit, x = micro
    dyn = DynamicViT(vit, varied_policy(vit, x, seed=5, always_execute=(0,)))
    path = dyn.save(tmp_path / "dyn.safetensors")
    torch.save(x, tmp_path / "x.pt")
    with torch.inference_mode():
        expected = dyn(x, return_mask=True)[1]
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["stable_baselines3"] = None  # any import of SB3 / sb3-contrib now raises ImportError
        sys.modules["sb3_contrib"] = None
        import torch
        torch.set_num_threads(1)
        from vitskip_env import DynamicViT
        dyn = DynamicViT.load({str(path)!r})
        x = torch.load({str(tmp_path / "x.pt")!r})
        with torch.inference_mode():
            _, mask = dyn(x, return_mask=True)
        print(mask.int().tolist())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected.int().tolist()


def test_compiled_path_gives_the_same_result(micro: tuple) -> None:
    vit, x = micro
    enc = encoder_for(vit)
    policy = random_policy(enc, seed=6)
    reference = DynamicViT(SkippableViT("micro", num_classes=10), random_policy(enc, seed=6))
    reference.backbone.load_state_dict(vit.state_dict())
    dyn = DynamicViT(vit, policy)
    with torch.inference_mode():
        want = reference.eval()(x, return_mask=True)
    torch._dynamo.reset()
    dyn.compiled(backend="eager")  # the wiring (dynamic shapes, keys unchanged); inductor needs a compiler and minutes
    try:
        with torch.inference_mode():
            got = dyn(x, return_mask=True)
            got_small = dyn(x[:3], return_mask=True)
        assert torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0], atol=1e-5)
        assert torch.equal(got_small[1], want[1][:3])
        assert set(dyn.state_dict()) == set(reference.state_dict())
    finally:
        torch._dynamo.reset()


def test_save_refuses_paths_that_are_not_safetensors(micro: tuple, tmp_path: Path) -> None:
    vit, _ = micro
    dyn = DynamicViT(vit, block_policy(encoder_for(vit)))
    for name in ("model.json", "w.md"):
        with pytest.raises(ValueError, match=r"must end in '\.safetensors'"):
            dyn.save(tmp_path / name, dataset="shapes")
    assert list(tmp_path.iterdir()) == [] and dyn.meta == {}


def test_wrong_inputs_say_how_to_fix_them(micro: tuple) -> None:
    vit, x = micro
    dyn = DynamicViT(vit, block_policy(encoder_for(vit))).eval()
    with pytest.raises(TypeError, match=r"torch.uint8 images.*normalize\(images\)"):
        dyn((x * 50).clamp(0, 255).to(torch.uint8))
    with pytest.raises(TypeError, match=r"torch.float16 images but its backbone is torch.float32.*images.to\(torch.float32\)"):
        dyn(x.half())
    with pytest.raises(ValueError, match=r"\(3, 32, 32\); add a batch dimension: images\[None\]"):
        dyn(x[0])
    with torch.inference_mode():
        assert torch.equal(dyn(x[0][None]), dyn(x[:1]))
