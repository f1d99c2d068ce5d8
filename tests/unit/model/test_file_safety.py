"""Nothing a vitskip file says can run code, reach the network or exhaust memory (issue 13).

Each test tampers with the JSON header of a real file (the tensors stay as saved) and checks that
loading fails fast, with bounded memory, with one :class:`VitskipFileError` naming the file.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from vitskip_env import DynamicViT, SkippableViT, SkipPolicy, load_backbone
from vitskip_env.model import VitskipFileError
from vitskip_env.observations import encoder_for

resource = pytest.importorskip("resource")  # peak RSS (Unix)

#: A header bomb must fail within this many seconds (the issue's bound) ...
FAST_S = 1.0
#: ... and grow the peak resident memory by less than this (a bomb asks for gigabytes).
BOUNDED_MIB = 256


def tamper(src: Path, dst: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """Copy ``src`` with its header config changed by ``edit`` (the tensors unchanged)."""
    with safe_open(str(src), framework="pt") as fh:
        config = json.loads(fh.metadata()["vitskip"])
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    edit(config)
    save_file(state, str(dst), metadata={"vitskip": json.dumps(config)})
    return dst


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def fails_fast(load: Callable[[], Any], path: Path, match: str) -> VitskipFileError:
    """``load()`` raises a VitskipFileError naming ``path`` and matching ``match``, quickly and with little memory."""
    before, start = peak_rss_mib(), time.perf_counter()
    with pytest.raises(VitskipFileError, match=match) as info:
        load()
    elapsed, grown = time.perf_counter() - start, peak_rss_mib() - before
    assert str(path) in str(info.value)
    assert elapsed < FAST_S, f"took {elapsed:.2f} s"
    assert grown < BOUNDED_MIB, f"peak memory grew by {grown:.0f} MiB"
    return info.value


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A micro backbone file and a DynamicViT file (MLP policy with normalisation), loaded once to warm up."""
    root = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    vit = SkippableViT("micro", num_classes=10).eval()
    enc = encoder_for(vit)
    net = nn.Sequential(nn.Linear(enc.obs_dim, 16), nn.Tanh(), nn.Linear(16, 2))
    policy = SkipPolicy(net, enc, obs_mean=torch.zeros(enc.obs_dim), obs_var=torch.ones(enc.obs_dim))
    out = {
        "backbone": vit.save(root / "bb.safetensors", dataset="shapes"),
        "dynamic": DynamicViT(vit, policy).save(root / "dyn.safetensors"),
    }
    load_backbone(out["backbone"])  # imports and timm's registry are warm before anything is timed
    DynamicViT.load(out["dynamic"])
    return out


def _set(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        for key in keys[:-1]:
            config = config[key]
        config[keys[-1]] = value

    return edit


BACKBONE_BOMBS = {
    "depth": (("model_kwargs", "depth"), 10**6, "describes 1000000 blocks but 4 are stored"),
    "embed_dim": (("model_kwargs", "embed_dim"), 2**20, "do not match the architecture"),
    "mlp_ratio": (("model_kwargs", "mlp_ratio"), 60.0, "do not match the architecture"),
    "num_classes": (("model_kwargs", "num_classes"), 2**20, "do not match the architecture"),
    "img_size": (("model_kwargs", "img_size"), 4096, "do not match the architecture"),
    "img_size_huge": (("model_kwargs", "img_size"), 100_000, "'img_size' must be an integer in"),
    "reg_tokens": (("model_kwargs", "reg_tokens"), 2**20, "do not match the architecture"),
    "kept_blocks": (("kept_blocks",), list(range(10**5)), "describes 100000 blocks but 4 are stored"),
}


@pytest.mark.parametrize("name", list(BACKBONE_BOMBS))
def test_backbone_header_bomb_fails_fast(name: str, files: dict[str, Path], tmp_path: Path) -> None:
    keys, value, match = BACKBONE_BOMBS[name]
    if name == "kept_blocks":  # a pruned model of a 10**6-block source keeping 10**5 blocks
        edit = lambda c: (_set("model_kwargs", "depth", value=10**6)(c), _set(*keys, value=value)(c))  # noqa: E731
    else:
        edit = _set(*keys, value=value)
    bomb = tamper(files["backbone"], tmp_path / f"{name}.safetensors", edit)
    fails_fast(lambda: load_backbone(bomb), bomb, match)


@pytest.mark.parametrize("name", ["depth", "embed_dim", "img_size"])
def test_dynamic_backbone_header_bomb_fails_fast(name: str, files: dict[str, Path], tmp_path: Path) -> None:
    keys, value, match = BACKBONE_BOMBS[name]
    bomb = tamper(files["dynamic"], tmp_path / f"{name}.safetensors", _set("backbone", *keys, value=value))
    fails_fast(lambda: DynamicViT.load(bomb), bomb, match)


def test_dynamic_huge_policy_layer_fails_fast(files: dict[str, Path], tmp_path: Path) -> None:
    def huge(config: dict[str, Any]) -> None:  # a 60000 x 60000 layer: 14 GB of float32 if it were built
        config["policy"]["net"][0] = {"type": "Linear", "in_features": 60000, "out_features": 60000, "bias": True}
        config["policy"]["net"][2]["in_features"] = 60000

    bomb = tamper(files["dynamic"], tmp_path / "layer.safetensors", huge)
    fails_fast(lambda: DynamicViT.load(bomb), bomb, r"policy weights do not match.*\(60000, 60000\)")


@pytest.mark.parametrize("where", ["top", "nested"])
def test_dynamic_policy_layer_cannot_place_itself_off_meta(where: str, files: dict[str, Path], tmp_path: Path) -> None:
    """A layer naming ``device`` would be built for real before its sizes are checked (576 MB here)."""

    def placed(config: dict[str, Any]) -> None:
        layer = {"type": "Linear", "in_features": 12000, "out_features": 12000, "bias": True, "device": "cpu"}
        net = config["policy"]["net"]
        if where == "top":
            net[0] = layer
        else:
            net[0] = {"type": "Columns", "sizes": [net[0]["in_features"]], "nets": {"0": [layer]}}

    bomb = tamper(files["dynamic"], tmp_path / f"placed-{where}.safetensors", placed)
    fails_fast(lambda: DynamicViT.load(bomb), bomb, r"names \['device'\]")


def test_dynamic_policy_with_too_many_layers_fails_fast(files: dict[str, Path], tmp_path: Path) -> None:
    many = _set("policy", "net", value=[{"type": "Tanh"}] * 10**5)
    bomb = tamper(files["dynamic"], tmp_path / "layers.safetensors", many)
    fails_fast(lambda: DynamicViT.load(bomb), bomb, "at most 1024 layers")


def test_oversized_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    bomb = tmp_path / "header.safetensors"
    bomb.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    fails_fast(lambda: load_backbone(bomb), bomb, "declares a 1,099,511,627,776-byte header")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way timm could fetch or open weights raises; the list records what was attempted."""
    import timm.models._builder as builder
    import timm.models._factory as factory

    tried: list[str] = []

    def refuse(what: str) -> Callable[..., Any]:
        def fn(*args: Any, **kwargs: Any) -> Any:
            tried.append(what)
            raise AssertionError(f"a file made vitskip call {what}")

        return fn

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(builder, "load_pretrained", refuse("timm load_pretrained"))
    monkeypatch.setattr(factory, "load_checkpoint", refuse("timm load_checkpoint"))
    return tried


@pytest.mark.parametrize("key", ["pretrained", "checkpoint_path", "pretrained_file", "pretrained_cfg_overlay"])
def test_model_kwargs_cannot_reach_network_or_files(key: str, files: dict[str, Path], offline: list[str], tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere.safetensors"
    save_file({"w": torch.zeros(1)}, str(elsewhere))  # a real file the header points at
    value = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(elsewhere)}}.get(key, str(elsewhere))
    bomb = tamper(files["backbone"], tmp_path / "net.safetensors", _set("model_kwargs", key, value=value))
    error = fails_fast(lambda: load_backbone(bomb), bomb, f"model_kwargs key '{key}' is not allowed")
    assert "only architecture arguments" in str(error)
    nested = tamper(files["dynamic"], tmp_path / "dnet.safetensors", _set("backbone", "model_kwargs", key, value=value))
    fails_fast(lambda: DynamicViT.load(nested), nested, f"model_kwargs key '{key}' is not allowed")
    assert offline == []


def test_valid_files_load_offline(files: dict[str, Path], offline: list[str]) -> None:
    assert load_backbone(files["backbone"]).depth == 4
    assert DynamicViT.load(files["dynamic"]).depth == 4
    assert offline == []


def _raw(text: str) -> Callable[[Path, Path], Path]:
    def write(src: Path, dst: Path) -> Path:
        with safe_open(str(src), framework="pt") as fh:
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        save_file(state, str(dst), metadata={"vitskip": text})
        return dst

    return write


def _drop(*keys: str) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        for key in keys[:-1]:
            config = config[key]
        del config[keys[-1]]

    return edit


MALFORMED_BACKBONE = {
    "not_json": (_raw("{not json"), "not valid JSON"),
    "not_object": (_raw("[1, 2]"), "must be a JSON object, got list"),
    "no_model_name": (_drop("model_name"), "no 'model_name' entry"),
    "model_name_type": (_set("model_name", value=3), "'model_name' must be str, got 3"),
    "unknown_model": (_set("model_name", value="hf-hub:someone/vit"), "Unknown model 'hf-hub:someone/vit'"),
    "num_heads_zero": (_set("model_kwargs", "num_heads", value=0), "'num_heads' must be an integer in"),
    "heads_not_dividing": (_set("model_kwargs", "num_heads", value=3), "backbone config is malformed"),
    "kwargs_type": (_set("model_kwargs", value=[1]), "'model_kwargs' must be dict"),
    "depth_bool": (_set("model_kwargs", "depth", value=True), "'depth' must be an integer"),
    "stated_classes": (_set("num_classes", value=7), "says num_classes = 7 but its weights have 10"),
    "classes_type": (_set("num_classes", value="10"), "'num_classes' must be int"),
    "kept_unsorted": (_set("kept_blocks", value=[2, 1, 0, 3]), "'kept_blocks' must be increasing"),
    "version_newer": (_set("format_version", value=2), "format version 2, newer than this vitskip reads.*upgrade"),
    "version_type": (_set("format_version", value="1"), "'format_version' must be int"),
    "version_zero": (_set("format_version", value=0), "valid versions are 1..1"),
    "no_version": (_drop("format_version"), "no 'format_version' entry"),
}


@pytest.mark.parametrize("name", list(MALFORMED_BACKBONE))
def test_malformed_backbone_header_is_one_clear_error(name: str, files: dict[str, Path], tmp_path: Path) -> None:
    edit, match = MALFORMED_BACKBONE[name]
    dst = tmp_path / f"{name}.safetensors"
    bad = edit(files["backbone"], dst) if edit.__name__ == "write" else tamper(files["backbone"], dst, edit)
    fails_fast(lambda: load_backbone(bad), bad, match)


MALFORMED_DYNAMIC = {
    "not_json": (_raw("{"), "not valid JSON"),
    "version_newer": (_set("format_version", value=9), "format version 9, newer"),
    "no_backbone": (_drop("backbone"), "no 'backbone' entry"),
    "backbone_version": (_set("backbone", "format_version", value=2), "vitskip-backbone format version 2, newer"),
    "backbone_format": (_set("backbone", "format", value="other"), "holds a 'other', not a 'vitskip-backbone'"),
    "no_policy_net": (_drop("policy", "net"), "policy config is malformed.*missing key 'net'"),
    "encoder_type": (_set("policy", "encoder", value=5), "policy config entry 'encoder' must be dict, got 5"),
    "encoder_other_backbone": (_set("policy", "encoder", "embed_dim", value=64), "another backbone's observations"),
    "layer_type": (_set("policy", "net", value=[{"type": "Evil", "x": 1}]), "unknown layer type 'Evil'"),
    "layer_args": (_set("policy", "net", value=[{"type": "Linear", "in_features": -5}]), "bad arguments for layer"),
    "net_not_list": (_set("policy", "net", value={"a": 1}), "must be a list of layer dicts"),
}


@pytest.mark.parametrize("name", list(MALFORMED_DYNAMIC))
def test_malformed_dynamic_header_is_one_clear_error(name: str, files: dict[str, Path], tmp_path: Path) -> None:
    edit, match = MALFORMED_DYNAMIC[name]
    dst = tmp_path / f"{name}.safetensors"
    bad = edit(files["dynamic"], dst) if edit.__name__ == "write" else tamper(files["dynamic"], dst, edit)
    fails_fast(lambda: DynamicViT.load(bad), bad, match)
