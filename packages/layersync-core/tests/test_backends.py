"""One backend setting for every command: TF32 (default) or strict fp32, determinism on request,
native-bf16 detection for ``precision=auto``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from layersync.backends import BackendError, configure_backends
from layersync.train.runtime import autocast_dtype


@pytest.fixture
def restore_backends():
    saved = (
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.allow_tf32,
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.mem_efficient_sdp_enabled(),
        torch.backends.cuda.cudnn_sdp_enabled(),
    )
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32 = saved[1]
    torch.use_deterministic_algorithms(saved[2])
    torch.backends.cuda.enable_flash_sdp(saved[3])
    torch.backends.cuda.enable_mem_efficient_sdp(saved[4])
    torch.backends.cuda.enable_cudnn_sdp(saved[5])


def test_default_is_tf32_and_strict_is_ieee(monkeypatch, restore_backends) -> None:
    monkeypatch.delenv("LAYERSYNC_MATMUL", raising=False)
    monkeypatch.delenv("LAYERSYNC_DETERMINISTIC", raising=False)
    torch.set_float32_matmul_precision("highest")
    record = configure_backends()
    assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    assert record["float32_matmul_precision"] == "high"
    assert record["deterministic_algorithms"] is False
    monkeypatch.setenv("LAYERSYNC_MATMUL", "strict")
    record = configure_backends()
    assert torch.get_float32_matmul_precision() == "highest"
    assert record["cudnn_allow_tf32"] is False


def test_deterministic_mode(monkeypatch, restore_backends) -> None:
    monkeypatch.setenv("LAYERSYNC_DETERMINISTIC", "1")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    record = configure_backends()
    assert record["deterministic_algorithms"] is True and record["sdpa_math_only"] is True
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


@pytest.mark.parametrize(
    ("var", "value"), [("LAYERSYNC_MATMUL", "fast"), ("LAYERSYNC_DETERMINISTIC", "maybe")]
)
def test_bad_setting_is_one_line_naming_it(monkeypatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(BackendError, match=rf"^{var}='{value}': expected"):
        configure_backends()


def test_auto_precision_refuses_emulated_bf16(monkeypatch) -> None:
    """V100/T4: bf16 only by emulation -> fp32, not slow emulated bf16."""
    asked: list[dict] = []

    def supported(including_emulation: bool = True) -> bool:
        asked.append({"including_emulation": including_emulation})
        return including_emulation  # an emulating GPU

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert autocast_dtype("auto", torch.device("cuda", 0)) is None
    assert asked == [{"including_emulation": False}]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert autocast_dtype("auto", torch.device("cuda", 0)) is torch.bfloat16
    assert autocast_dtype("auto", torch.device("cpu")) is None


def test_train_records_the_backends(
    toy_plugins: Path, tmp_path: Path, restore_backends, monkeypatch
) -> None:
    from layersync.config import resolve
    from layersync.registry import load
    from layersync.train import train

    plugin = load("toy-image")
    cfg = resolve(
        plugin,
        overrides=[
            f"run.out_dir={tmp_path}",
            "train.steps=1",
            "train.batch_size=8",
            "model.depth=4",
            "log.progress=false",
            "sampler.steps=2",
            "data.size=64",
            "train.matmul=strict",
        ],
    )
    monkeypatch.delenv("LAYERSYNC_MATMUL", raising=False)
    run = train(cfg, plugin)
    env = json.loads((run / "env.json").read_text())
    assert env["backends"]["float32_matmul_precision"] == "highest"
    beside_metrics = json.loads((run / "eval" / "0000001" / "backends.json").read_text())
    assert beside_metrics == env["backends"]
    assert (run / "eval" / "0000001" / "metrics.json").is_file()


def test_config_fields_set_the_backends_and_the_environment_overrides(
    monkeypatch, restore_backends
) -> None:
    from types import SimpleNamespace

    monkeypatch.delenv("LAYERSYNC_MATMUL", raising=False)
    monkeypatch.delenv("LAYERSYNC_DETERMINISTIC", raising=False)
    strict = SimpleNamespace(train=SimpleNamespace(matmul="strict", deterministic=True))
    record = configure_backends(strict)
    assert record["float32_matmul_precision"] == "highest" and record["cudnn_allow_tf32"] is False
    assert record["deterministic_algorithms"] is True
    monkeypatch.setenv("LAYERSYNC_MATMUL", "tf32")
    monkeypatch.setenv("LAYERSYNC_DETERMINISTIC", "0")
    record = configure_backends(strict)
    assert (
        record["float32_matmul_precision"] == "high" and record["deterministic_algorithms"] is False
    )
