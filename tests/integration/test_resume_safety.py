"""--resume runs no code from the run directory: crafted pickles, zips and module names create no marker file."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from agents.checkpoint import FORMAT, CheckpointError
from vitskip_env import SkippableViT

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "train"))

import rl  # noqa: E402

TINY = dict(total_timesteps=4096, num_envs=64, eval_freq=2048, eval_images=128, final_eval_images=256,
            checkpoint_freq=2048, speed_batch_sizes=[1], threads=1, device="cpu")  # fmt: skip


class Touch:
    """Unpickling it creates ``path`` (stands for any code a pickle can run: ``os.system`` works the same way)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.path),))


def payload(marker: Path) -> bytes:
    return pickle.dumps(Touch(marker))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory as train/ppo.py makes it (args.yaml of a tiny run on a micro backbone), no checkpoint yet."""
    backbone = tmp_path / "micro.safetensors"
    SkippableViT("micro", num_classes=10).save(backbone, dataset="shapes")
    args = {**rl._plain(rl.RLArgs().__dict__), **TINY, "backbone": str(backbone), "runs_dir": str(tmp_path)}
    args.pop("resume")
    path = tmp_path / "run"
    (path / "checkpoint").mkdir(parents=True)
    (path / "args.yaml").write_text(yaml.safe_dump(args))
    return path


def _old_checkpoint(ckpt: Path, marker: Path) -> None:
    """What older versions wrote: SB3's model.zip (cloudpickled entries) and pickled VecNormalize / replay buffer."""
    data = {"policy_class": {":type:": "<class 'abc.ABCMeta'>", ":serialized:": base64.b64encode(payload(marker)).decode()}}
    with zipfile.ZipFile(ckpt / "model.zip", "w") as z:
        z.writestr("data", json.dumps(data))
    (ckpt / "model_vecnormalize.pkl").write_bytes(payload(marker))
    (ckpt / "replay_buffer.pkl").write_bytes(payload(marker))
    meta = {"algo": "ppo", "num_timesteps": 2048, "files": ["model.zip", "model_vecnormalize.pkl", "replay_buffer.pkl"]}
    (ckpt / "checkpoint.json").write_text(json.dumps(meta))


def _new_checkpoint(ckpt: Path, state: bytes, arrays: bytes, algo: str = "ppo") -> None:
    """A checkpoint.json of the current format pointing at the given files (with their true SHA-256)."""
    files = {"state": "state-0.pt", "arrays": "arrays-0.npz"}
    (ckpt / files["state"]).write_bytes(state)
    (ckpt / files["arrays"]).write_bytes(arrays)
    sha = {k: hashlib.sha256((ckpt / v).read_bytes()).hexdigest() for k, v in files.items()}
    meta = {"format": FORMAT, "algo": algo, "num_timesteps": 2048, "agent_kwargs": {}, "files": files, "sha256": sha,
            "state": {"agent": {}, "rng": {}, "env": {}}, "extra": {}}  # fmt: skip
    (ckpt / "checkpoint.json").write_text(json.dumps(meta))


def _torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_the_crafted_files_do_run_code_when_unpickled(tmp_path: Path) -> None:
    """Control: the payloads below are live (so the tests that follow would see the marker if anything unpickled them)."""
    from stable_baselines3.common.save_util import json_to_data

    control = tmp_path / "control"
    _old_checkpoint(tmp_path, control)
    with zipfile.ZipFile(tmp_path / "model.zip") as z:
        json_to_data(z.read("data").decode())  # what PPO.load does with model.zip
    assert control.exists()


def test_resume_refuses_an_old_pickled_checkpoint(run_dir: Path, marker: Path, capsys: pytest.CaptureFixture) -> None:
    _old_checkpoint(run_dir / "checkpoint", marker)
    with pytest.raises(CheckpointError, match=r"older version whose model.zip / \*.pkl files run code"):
        rl.run(rl.RLArgs(resume=str(run_dir)))
    with pytest.raises(SystemExit) as stop:
        rl.main(rl.RLArgs(resume=str(run_dir)))
    assert stop.value.code == 2 and capsys.readouterr().err.startswith("error: ")
    assert not marker.exists()
    assert not (run_dir / "progress.csv").exists()  # refused before anything was built


def test_resume_refuses_pickles_in_the_new_format(run_dir: Path, marker: Path) -> None:
    ckpt = run_dir / "checkpoint"
    _new_checkpoint(ckpt, _torch_bytes({"agent/x": Touch(marker)}), _npz_bytes(a=np.zeros(2)))
    with pytest.raises(CheckpointError, match="could run code"):
        rl.run(rl.RLArgs(resume=str(run_dir)))
    assert not marker.exists()
    evil = np.empty(1, dtype=object)
    evil[0] = Touch(marker)
    _new_checkpoint(ckpt, _torch_bytes({"agent/x": torch.zeros(2)}), _npz_bytes(obs=evil))
    with pytest.raises(CheckpointError, match="could run code"):
        rl.run(rl.RLArgs(resume=str(run_dir)))
    assert not marker.exists()


@pytest.fixture
def evil_module(tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module whose import creates the marker."""
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "evil_mod.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Thing: ...\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "evil_mod", raising=False)
    return "evil_mod"


def test_resume_never_imports_a_module_named_by_a_file(run_dir: Path, marker: Path, evil_module: str) -> None:
    ckpt = run_dir / "checkpoint"
    _new_checkpoint(ckpt, _torch_bytes({}), _npz_bytes(), algo=f"{evil_module}:Thing")
    with pytest.raises(CheckpointError, match="not 'ppo'"):
        rl.run(rl.RLArgs(resume=str(run_dir)))
    args = yaml.safe_load((run_dir / "args.yaml").read_text())
    (run_dir / "args.yaml").write_text(yaml.safe_dump({**args, "algo": f"{evil_module}:Thing"}))
    with pytest.raises(rl.RunArgumentError, match="never imported from a file, so name it yourself"):
        rl.run(rl.RLArgs(resume=str(run_dir)))
    (run_dir / "args.yaml").write_text(yaml.safe_dump({**args, "env": f"{evil_module}:Env-v0"}))
    with pytest.raises(rl.RunArgumentError, match="not a registered environment id"):
        rl.run(rl.RLArgs(resume=str(run_dir)))
    assert not marker.exists()


def _compressed_npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def test_resume_refuses_compressed_checkpoint_members(run_dir: Path) -> None:
    """A deflated member expands far beyond its file (80 MB from ~80 KB here): refused before anything is read."""
    ckpt = run_dir / "checkpoint"
    bomb = _compressed_npz(a=np.zeros(10**7))
    assert len(bomb) < 10**6
    _new_checkpoint(ckpt, _torch_bytes({"agent/x": torch.zeros(2)}), bomb)
    with pytest.raises(CheckpointError, match="compressed or oversized members") as info:
        rl.run(rl.RLArgs(resume=str(run_dir)))
    assert str(ckpt / "arrays-0.npz") in str(info.value)


def test_resume_refuses_a_tensor_larger_than_its_storage(run_dir: Path) -> None:
    """A zero-stride view saves a (10**4, 10**4) tensor in 4 bytes; any copy of it would take 400 MB."""
    ckpt = run_dir / "checkpoint"
    _new_checkpoint(ckpt, _torch_bytes({"agent/x": [torch.zeros(1).expand(10**4, 10**4)]}), _npz_bytes())
    with pytest.raises(CheckpointError, match=r"shape \(10000, 10000\) on a storage of 4 bytes"):
        rl.run(rl.RLArgs(resume=str(run_dir)))


def test_resume_reports_a_deeply_nested_checkpoint_json(run_dir: Path) -> None:
    (run_dir / "checkpoint" / "checkpoint.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="is not valid JSON") as info:
        rl.run(rl.RLArgs(resume=str(run_dir)))
    assert str(run_dir / "checkpoint" / "checkpoint.json") in str(info.value)


def test_resume_never_downloads_because_a_file_says_so(run_dir: Path) -> None:
    args = yaml.safe_load((run_dir / "args.yaml").read_text())
    (run_dir / "args.yaml").write_text(yaml.safe_dump({**args, "download": True}))
    merged, _ = rl.resume_args(rl.RLArgs(resume=str(run_dir)))
    assert merged.download is False
    merged, _ = rl.resume_args(rl.RLArgs(resume=str(run_dir), download=True))  # the flag given now does
    assert merged.download is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("env: [unclosed", "is not readable YAML"),
        ("env: [a, b]", r"entry 'env' must be str, got \['a', 'b'\]"),
        ("num_envs: true", "entry 'num_envs' must be int"),
        ("agent_kwargs: {a: 1}", "entry 'agent_kwargs' must be str"),
        ("[1, 2]", "is not the args.yaml of a run"),
    ],
)
def test_a_malformed_args_yaml_is_one_error_naming_it(run_dir: Path, text: str, message: str) -> None:
    (run_dir / "args.yaml").write_text(text)
    with pytest.raises(rl.RunArgumentError, match=message) as info:
        rl.run(rl.RLArgs(resume=str(run_dir)))
    assert str(run_dir / "args.yaml") in str(info.value)


def test_progress_csv_is_never_appended_through_a_link(run_dir: Path, tmp_path: Path) -> None:
    from agents.run_logger import run_logger

    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    (run_dir / "progress.csv").symlink_to(victim)
    with pytest.raises(ValueError, match=r"progress\.csv is appended to") as info:
        run_logger(run_dir, formats=("csv",))
    assert str(run_dir / "progress.csv") in str(info.value) and victim.read_text() == "keep\n"


def test_a_malformed_checkpoint_json_is_one_error_naming_it(run_dir: Path) -> None:
    ckpt = run_dir / "checkpoint"
    _new_checkpoint(ckpt, _torch_bytes({"agent/x": torch.zeros(2)}), _npz_bytes())  # its "state" lacks every entry
    with pytest.raises(CheckpointError, match=r"cannot be restored \(missing entry 'hyperparameters'\)") as info:
        rl.run(rl.RLArgs(resume=str(run_dir)))
    assert str(ckpt) in str(info.value)
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    (ckpt / "checkpoint.json").write_text(json.dumps({**meta, "files": ["state-0.pt"]}))
    with pytest.raises(CheckpointError, match="does not list its state and arrays files") as info:
        rl.run(rl.RLArgs(resume=str(run_dir)))
    assert str(ckpt / "checkpoint.json") in str(info.value)


@pytest.mark.parametrize("edit", [{"num_timesteps": "many"}, {"algo": ["ppo"]}, {"state": []}, {"state": {"agent": {}}}])
def test_a_checkpoint_json_without_its_entries_is_refused_before_anything_is_built(run_dir: Path, edit: dict) -> None:
    ckpt = run_dir / "checkpoint"
    _new_checkpoint(ckpt, _torch_bytes({}), _npz_bytes())
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    (ckpt / "checkpoint.json").write_text(json.dumps({**meta, **edit}))
    with pytest.raises(CheckpointError, match="lacks a step count") as info:
        rl.run(rl.RLArgs(resume=str(run_dir)))
    assert str(ckpt / "checkpoint.json") in str(info.value)
    assert not (run_dir / "progress.csv").exists()
