"""layersync.assets: package files without importing, restricted numpy unpickling, torch states."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from layersync.assets import AssetError, load_numpy_pickle, load_torch_state, package_file


def test_package_file_finds_file_without_importing(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_weights_pkg"
    (pkg / "sub").mkdir(parents=True)
    # importing the package would raise: package_file must not import it
    (pkg / "__init__.py").write_text("raise RuntimeError('imported!')\n")
    (pkg / "sub" / "w.bin").write_bytes(b"\x00\x01")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert package_file("fake_weights_pkg", "sub/w.bin") == pkg / "sub" / "w.bin"
    assert package_file("fake_weights_pkg.sub", "w.bin") == pkg / "sub" / "w.bin"
    assert "fake_weights_pkg" not in sys.modules
    with pytest.raises(AssetError, match=r"has no file nope\.bin"):
        package_file("fake_weights_pkg", "nope.bin", dist="fake-weights")


def test_package_file_install_hint():
    with pytest.raises(AssetError) as err:
        package_file("no_such_pkg_xyz", "w.pt", dist="no-such-dist")
    assert str(err.value) == "no_such_pkg_xyz is not installed: pip install --no-deps no-such-dist"
    with pytest.raises(AssetError, match=r"pip install --no-deps fid-helper-xyz$"):
        package_file("fid_helper_xyz", "default_1.pt")  # default dist: _ -> -


def _pickle(path: Path, obj, protocol: int) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickle_round_trip(tmp_path, protocol):
    rng = np.random.default_rng(0)
    obj = {
        "params": {"conv": {"kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32)}},
        "batch_stats": [np.arange(5, dtype=np.int64), (np.float16(1.5), np.int32(7))],
        "meta": {"name": "i3d", "dims": {1, 2}, "frozen": frozenset({3}), "c": 1 + 2j},
        "dtype": np.dtype("float32"),
        "bool": np.array([True, False]),
    }
    got = load_numpy_pickle(_pickle(tmp_path / "w.pkl", obj, protocol))
    kernel = got["params"]["conv"]["kernel"]
    np.testing.assert_array_equal(kernel, obj["params"]["conv"]["kernel"])
    assert kernel.dtype == np.float32 and kernel.shape == (3, 3, 2, 4)
    np.testing.assert_array_equal(got["batch_stats"][0], np.arange(5))
    assert got["batch_stats"][1] == (np.float16(1.5), np.int32(7))
    assert type(got["batch_stats"][1][1]) is np.int32
    assert got["meta"] == obj["meta"] and got["dtype"] == np.float32
    np.testing.assert_array_equal(got["bool"], obj["bool"])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_numpy_pickle_refuses_os_system(tmp_path):
    path = _pickle(tmp_path / "evil.pkl", {"w": np.zeros(2), "x": _Evil()}, 4)
    with pytest.raises(AssetError) as err:
        load_numpy_pickle(path)
    msg = str(err.value)
    assert str(path) in msg and ("os.system" in msg or "posix.system" in msg)


def test_numpy_pickle_refuses_other_classes(tmp_path):
    path = _pickle(tmp_path / "t.pkl", {"t": torch.zeros(2)}, 4)
    with pytest.raises(AssetError, match=r"refusing to unpickle global torch\."):
        load_numpy_pickle(path)
    bad = tmp_path / "trunc.pkl"
    bad.write_bytes(pickle.dumps(np.zeros(100))[:40])
    with pytest.raises(AssetError, match=r"trunc\.pkl: not a readable pickle"):
        load_numpy_pickle(bad)
    with pytest.raises(AssetError, match=r"missing\.pkl: file not found"):
        load_numpy_pickle(tmp_path / "missing.pkl")


def test_load_torch_state(tmp_path):
    state = {"w": torch.randn(3, 4), "b": torch.arange(3)}
    torch.save(state, tmp_path / "s.pt")
    got = load_torch_state(tmp_path / "s.pt")
    assert torch.equal(got["w"], state["w"]) and torch.equal(got["b"], state["b"])

    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "s.safetensors"))
    got = load_torch_state(tmp_path / "s.safetensors")
    assert torch.equal(got["w"], state["w"])

    torch.save({"x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(AssetError, match=r"evil\.pt: cannot load weights"):
        load_torch_state(tmp_path / "evil.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(AssetError, match=r"list\.pt: holds a list, not a state dict"):
        load_torch_state(tmp_path / "list.pt")
    with pytest.raises(AssetError, match=r"nope\.pt: file not found"):
        load_torch_state(tmp_path / "nope.pt")


def test_diffusers_folder_names_the_key_and_what_is_wrong(tmp_path):
    """layersync.assets.diffusers_folder: one AssetError naming the config key and the path for
    each way a VAE folder can be wrong; a pipeline folder's vae/ sub-folder is found."""
    import json

    from layersync.assets import diffusers_folder

    def check(path):
        return diffusers_folder(path, "AutoencoderKL", key="vae.path", install="pip install x")

    with pytest.raises(AssetError, match=r"^vae.path is not set"):
        check(None)
    with pytest.raises(AssetError, match=f"^vae.path: no such folder: {tmp_path / 'gone'}$"):
        check(tmp_path / "gone")
    with pytest.raises(AssetError, match=r"not a diffusers AutoencoderKL folder \(no config"):
        check(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderOobleck"}))
    with pytest.raises(AssetError, match=r"holds a 'AutoencoderOobleck', not a AutoencoderKL"):
        check(tmp_path)
    pipe = tmp_path / "pipe"
    (pipe / "vae").mkdir(parents=True)
    (pipe / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(AssetError, match=r"no weights \(diffusion_pytorch_model.safetensors"):
        check(pipe)
    (pipe / "vae" / "diffusion_pytorch_model.safetensors").touch()
    folder, config = check(pipe)
    assert folder == pipe / "vae" and config == {"_class_name": "AutoencoderKL"}
