"""Tests for layersync_image.data (idx, Fashion-MNIST, arrays, digits), .folder (ImageFolder)
and .writers (grids, PNG, ADM .npz)."""

import gzip
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from layersync_image.data import (
    FASHION_MNIST_ROOT,
    ArrayDataset,
    IdxDataset,
    InMemoryDataset,
    digits,
    fashion_mnist,
    read_idx,
)
from layersync_image.folder import ImageFolderDataset, center_crop_arr
from layersync_image.writers import make_grid, save_npz, save_png, to_uint8_nhwc

# -----------------------------------------------------------------------------
# idx files


def write_idx(path: Path, arr: np.ndarray, code: int, compress: bool = False) -> Path:
    """Independent idx writer: 00 00 <code> <ndim>, big-endian uint32 sizes, big-endian data."""
    be = arr.astype(arr.dtype.newbyteorder(">"))
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + be.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 6, 7), dtype=np.uint8)
    ints = rng.integers(-(2**31), 2**31 - 1, (4, 3), dtype=np.int32)
    floats = rng.standard_normal(6).astype(np.float32)
    for arr, code in [(images, 0x08), (ints, 0x0C), (floats, 0x0D)]:
        got = read_idx(write_idx(tmp_path / f"a{code}.idx", arr, code, compress))
        assert got.shape == arr.shape
        assert got.dtype == arr.dtype
        np.testing.assert_array_equal(got, arr)


def test_read_idx_errors_name_the_file(tmp_path):
    bad_magic = tmp_path / "magic.idx"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match=r"magic.idx: not an idx file"):
        read_idx(bad_magic)
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    short = write_idx(tmp_path / "short.idx", arr, 0x08)
    short.write_bytes(short.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"short.idx: header says shape \(2, 3, 4\)"):
        read_idx(short)
    gz = write_idx(tmp_path / "cut.idx.gz", arr, 0x08, compress=True)
    gz.write_bytes(gz.read_bytes()[:-6])
    with pytest.raises(ValueError, match=r"cut.idx.gz: corrupt gzip"):
        read_idx(gz)
    with pytest.raises(FileNotFoundError, match=r"nope\.idx"):
        read_idx(tmp_path / "nope.idx")


def test_idx_dataset_pad_resize_and_labels(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    ip = write_idx(tmp_path / "img.idx", images, 0x08)
    lp = write_idx(tmp_path / "lab.idx", labels, 0x08)

    ds = IdxDataset(ip, lp, image_size=32)  # pad 2 on each side
    assert (len(ds), ds.channels, ds.image_size, ds.num_classes) == (6, 1, 32, 10)
    x, y = ds[2]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.shape == () and int(y) == 4
    expect = torch.from_numpy(images[2].astype(np.float32)) / 127.5 - 1
    torch.testing.assert_close(x[0, 2:30, 2:30], expect)
    assert torch.all(x[0, :2] == -1) and torch.all(x[0, :, 30:] == -1)

    odd = IdxDataset(ip, image_size=31)  # 3 extra pixels: 1 before, 2 after
    torch.testing.assert_close(odd[0][0][0, 1:29, 1:29], ds[0][0][0, 2:30, 2:30])
    assert odd.num_classes == 1 and int(odd[5][1]) == 0

    small = IdxDataset(ip, lp, image_size=14, resize="bilinear")
    assert small[0][0].shape == (1, 14, 14)
    # antialiased bilinear resampling, as Pillow's BILINEAR filter on float images
    ref = Image.fromarray(expect.numpy(), mode="F").resize((14, 14), Image.BILINEAR)
    torch.testing.assert_close(small[2][0][0], torch.from_numpy(np.array(ref)), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cannot pad 28x28 images to 20"):
        IdxDataset(ip, image_size=20)
    with pytest.raises(ValueError, match=r"lab.idx: expected 3 labels"):
        IdxDataset(write_idx(tmp_path / "three.idx", images[:3], 0x08), lp)


# -----------------------------------------------------------------------------
# Fashion-MNIST (Debian dataset-fashion-mnist)

has_fashion = (Path(FASHION_MNIST_ROOT) / "t10k-images-idx3-ubyte.gz").is_file()


@pytest.mark.skipif(not has_fashion, reason="apt package dataset-fashion-mnist not installed")
def test_fashion_mnist_real_files():
    test = fashion_mnist("test")
    assert (len(test), test.channels, test.image_size, test.num_classes) == (10000, 1, 32, 10)
    assert np.bincount(test.labels).tolist() == [1000] * 10
    x, y = test[0]
    assert x.shape == (1, 32, 32) and int(y) == 9  # first test item is an ankle boot
    assert float(x.min()) == -1.0 and float(x.max()) <= 1.0
    native = fashion_mnist("test", image_size=28)
    torch.testing.assert_close(native[0][0], x[:, 2:30, 2:30])
    train = fashion_mnist("train", image_size=28)
    assert len(train) == 60000 and np.bincount(train.labels).tolist() == [6000] * 10


def test_fashion_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        fashion_mnist("train", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in msg
    assert "dataset-fashion-mnist" in msg and "\n" not in msg


# -----------------------------------------------------------------------------
# ADM centre crop and ImageFolder


def reference_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Re-implementation of the ADM/DiT crop with explicit sizes and PIL's crop box."""
    w, h = image.size
    while min(w, h) >= 2 * size:
        w, h = w // 2, h // 2
        image = image.resize((w, h), Image.BOX)
    s = size / min(w, h)
    w, h = round(w * s), round(h * s)
    image = image.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


@pytest.mark.parametrize("shape", [(333, 517), (517, 333), (45, 37), (64, 100)])
def test_center_crop_arr_matches_reference(shape):
    h, w = shape
    arr = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    got = np.asarray(center_crop_arr(Image.fromarray(arr), 64))
    assert got.shape == (64, 64, 3)
    np.testing.assert_array_equal(got, np.asarray(reference_center_crop(Image.fromarray(arr), 64)))
    if shape == (64, 100):  # no resampling at all: a plain centre crop of columns 18..81
        np.testing.assert_array_equal(got, arr[:, 18:82])


def make_folder(root: Path, size: int = 8) -> dict[str, int]:
    """Two classes (sorted names differ from creation order), colours encode the item."""
    colours = {}
    files = [("b_cat", "x1.png"), ("b_cat", "sub/x2.png"), ("a_dog", "y1.png"), ("a_dog", "y2.jpg")]
    for i, (cls, name) in enumerate(files):
        p = root / cls / name
        p.parent.mkdir(parents=True, exist_ok=True)
        value = 40 * (i + 1)
        arr = np.full((size, size, 3), value, np.uint8)
        arr[:, : size // 2, 0] = 0  # left half differs so flips are visible
        Image.fromarray(arr).save(p, quality=100)
        colours[str(p)] = value
    (root / "a_dog" / "notes.txt").write_text("not an image")
    return colours


def test_image_folder_labels_and_values(tmp_path):
    make_folder(tmp_path)
    ds = ImageFolderDataset(tmp_path, 8, hflip=False)
    assert ds.classes == ["a_dog", "b_cat"] and ds.class_to_idx == {"a_dog": 0, "b_cat": 1}
    assert [(p.relative_to(tmp_path).as_posix(), y) for p, y in ds.samples] == [
        ("a_dog/y1.png", 0),
        ("a_dog/y2.jpg", 0),
        ("b_cat/sub/x2.png", 1),
        ("b_cat/x1.png", 1),
    ]
    assert (len(ds), ds.channels, ds.image_size, ds.num_classes) == (4, 3, 8, 2)
    x, y = ds[0]  # y1.png: value 120, red channel 0 on the left half
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and int(y) == 0
    assert torch.all(x[0, :, :4] == -1)
    torch.testing.assert_close(x[1], torch.full((8, 8), 120 / 127.5 - 1))
    assert int(ds[3][1]) == 1
    torch.testing.assert_close(ds[3][0][1], torch.full((8, 8), 40 / 127.5 - 1))
    # centre crop applied: 8x8 images are BOX-halved to 4x4
    big = ImageFolderDataset(tmp_path, 4, hflip=False)
    assert big[0][0].shape == (3, 4, 4)


def test_image_folder_corrupt_files(tmp_path):
    make_folder(tmp_path)
    bad = tmp_path / "a_dog" / "y1b.jpg"  # sorts between y1.png and y2.jpg
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    png = tmp_path / "b_cat" / "x0.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[:40])  # truncated

    ds = ImageFolderDataset(tmp_path, 8, hflip=False)
    assert len(ds) == 6
    with pytest.raises(OSError, match=r"cannot read image .*y1b\.jpg"):
        ds[1]
    with pytest.raises(OSError, match=r"cannot read image .*x0\.png"):
        ds[4]  # order: y1.png y1b.jpg y2.jpg sub/x2.png x0.png x1.png

    lazy = ImageFolderDataset(tmp_path, 8, hflip=False, on_error="skip")
    torch.testing.assert_close(lazy[1][0], ds[2][0])  # the next readable item
    assert lazy.skipped == 1 and lazy.bad_files == {bad}
    torch.testing.assert_close(lazy[4][0], ds[5][0])
    assert lazy.skipped == 2 and int(lazy[4][1]) == 1

    eager = ImageFolderDataset(tmp_path, 8, hflip=False, on_error="skip", verify=True)
    assert len(eager) == 4 and eager.skipped == 2 and eager.bad_files == {bad, png}
    with pytest.raises(OSError, match=r"y1b\.jpg"):
        ImageFolderDataset(tmp_path, 8, verify=True)


def test_image_folder_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ImageFolderDataset(tmp_path / "absent", 8)
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path, 8)
    (tmp_path / "cls").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolderDataset(tmp_path, 8)


def test_flips_are_deterministic_per_item_and_epoch(tmp_path):
    make_folder(tmp_path)
    plain = ImageFolderDataset(tmp_path, 8, hflip=False)
    ds = ImageFolderDataset(tmp_path, 8, seed=7)
    for i in range(len(ds)):
        flipped = ds.coin(ds.generator(i))
        expect = plain[i][0].flip(-1) if flipped else plain[i][0]
        torch.testing.assert_close(ds[i][0], expect)
        torch.testing.assert_close(ds[i][0], ds[i][0])

    rng_images = np.random.default_rng(0).integers(0, 256, (64, 4, 4, 3), dtype=np.uint8)
    arr = InMemoryDataset(rng_images, hflip=True, seed=3)
    base = InMemoryDataset(rng_images)

    def decisions():
        return [not torch.equal(arr[i][0], base[i][0]) for i in range(64)]

    epoch0 = decisions()
    assert epoch0 == decisions()  # same seed, same epoch: same flips
    assert 16 < sum(epoch0) < 48  # p = 0.5
    arr.set_epoch(1)
    assert decisions() != epoch0
    arr.set_epoch(0)
    assert decisions() == epoch0
    other = [not torch.equal(InMemoryDataset(rng_images, hflip=True, seed=4)[i][0], base[i][0])
             for i in range(64)]  # fmt: skip
    assert other != epoch0

    unseeded = InMemoryDataset(rng_images, hflip=True)  # global RNG
    torch.manual_seed(0)
    a = [unseeded[i][0] for i in range(8)]
    torch.manual_seed(0)
    b = [unseeded[i][0] for i in range(8)]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


# -----------------------------------------------------------------------------
# Arrays and digits


def test_array_dataset_layouts(tmp_path):
    rng = np.random.default_rng(2)
    nhwc = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    labels = np.array([0, 2, 1, 2, 0])
    np.savez(tmp_path / "a.npz", images=nhwc, labels=labels)
    np.savez(tmp_path / "adm.npz", nhwc, labels)  # arr_0, arr_1 (ADM sampler output)
    for name in ("a.npz", "adm.npz"):
        ds = ArrayDataset(tmp_path / name)
        assert (len(ds), ds.channels, ds.image_size, ds.num_classes) == (5, 3, 6, 3)
        x, y = ds[1]
        expect = torch.from_numpy(nhwc[1].astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
        torch.testing.assert_close(x, expect)
        assert int(y) == 2 and y.dtype == torch.int64

    nchw = rng.uniform(-1, 1, (4, 2, 5, 5)).astype(np.float64)
    np.save(tmp_path / "f.npy", nchw)
    ds = ArrayDataset(tmp_path / "f.npy")
    assert (ds.channels, ds.image_size, ds.num_classes) == (2, 5, 1)
    x, y = ds[3]
    assert x.dtype == torch.float32 and int(y) == 0
    torch.testing.assert_close(x, torch.from_numpy(nchw[3]).float())

    gray = rng.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "g.npy", gray)
    assert ArrayDataset(tmp_path / "g.npy")[0][0].shape == (1, 4, 4)


def test_array_dataset_errors(tmp_path):
    np.save(tmp_path / "chw.npy", np.zeros((2, 3, 8, 8), np.uint8))  # uint8 but NCHW
    with pytest.raises(ValueError, match=r"chw\.npy: expected images .* got shape \(2, 3, 8, 8\)"):
        ArrayDataset(tmp_path / "chw.npy")
    np.save(tmp_path / "int.npy", np.zeros((2, 8, 8, 3), np.int32))
    with pytest.raises(ValueError, match=r"int\.npy: .*dtype int32"):
        ArrayDataset(tmp_path / "int.npy")
    np.save(tmp_path / "rect.npy", np.zeros((2, 8, 6, 3), np.uint8))
    with pytest.raises(ValueError, match=r"rect\.npy: .*square"):
        ArrayDataset(tmp_path / "rect.npy")
    np.save(tmp_path / "range.npy", np.full((2, 3, 4, 4), 255.0, np.float32))
    with pytest.raises(ValueError, match=r"range\.npy: float images must lie in \[-1, 1\]"):
        ArrayDataset(tmp_path / "range.npy")
    np.savez(tmp_path / "keys.npz", pixels=np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"keys\.npz: no 'images' or 'arr_0'.*pixels"):
        ArrayDataset(tmp_path / "keys.npz")
    np.savez(tmp_path / "lab.npz", images=np.zeros((3, 4, 4, 3), np.uint8), labels=[0, 1])
    with pytest.raises(ValueError, match=r"lab\.npz: labels must be integers of shape \(3,\)"):
        ArrayDataset(tmp_path / "lab.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(ValueError, match=r"cannot read array file .*junk\.npz"):
        ArrayDataset(tmp_path / "junk.npz")
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(ValueError, match=r"text\.npy: neither a \.npy nor a \.npz file"):
        ArrayDataset(tmp_path / "text.npy")
    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        ArrayDataset(tmp_path / "missing.npz")


def test_digits():
    from sklearn.datasets import load_digits

    ref = load_digits()
    full = digits("all")
    assert (len(full), full.channels, full.image_size, full.num_classes) == (1797, 1, 8, 10)
    x, y = full[0]
    torch.testing.assert_close(x[0], torch.from_numpy(ref.images[0] / 8.0 - 1.0).float())
    assert int(y) == ref.target[0]
    stack = torch.stack([full[i][0] for i in range(len(full))])
    assert float(stack.min()) == -1.0 and float(stack.max()) == 1.0
    assert sorted(set(full.labels.tolist())) == list(range(10))

    train, test = digits("train"), digits("test")
    assert (len(train), len(test)) == (1617, 180)

    def items(ds):
        return Counter((ds.images[i].tobytes(), int(ds.labels[i])) for i in range(len(ds)))

    assert items(train) + items(test) == items(full)
    assert np.array_equal(digits("test").images, test.images)  # deterministic split
    assert not np.array_equal(digits("test", split_seed=1).images, test.images)

    big = digits("test", image_size=16)
    assert big.image_size == 16 and big[0][0].shape == (1, 16, 16)
    assert float(big[0][0].min()) >= -1 and float(big[0][0].max()) <= 1


# -----------------------------------------------------------------------------
# Writers


def test_to_uint8_nhwc_rounding():
    x = torch.tensor([-1.5, -1.0, -0.999, 0.0, 1 / 255, 0.5, 1.0, 2.0]).reshape(1, 1, 2, 4)
    got = to_uint8_nhwc(x)
    assert got.dtype == np.uint8 and got.shape == (1, 2, 4, 1)
    ref = np.clip(np.floor((x.double().numpy() + 1) * 127.5 + 0.5), 0, 255)
    np.testing.assert_array_equal(got[0, ..., 0], ref[0, 0])
    assert got.ravel().tolist() == [0, 0, 0, 128, 128, 191, 255, 255]
    assert to_uint8_nhwc(x, rgb=True).shape == (1, 2, 4, 3)


def test_make_grid_layout():
    n, h, w = 5, 2, 3
    values = torch.linspace(-1, 1, n)
    images = values.view(n, 1, 1, 1).expand(n, 3, h, w).clone()
    grid = make_grid(images, nrow=2, padding=1, upscale=2, pad_value=7)
    hh, ww = 2 * h, 2 * w
    assert grid.shape == (3 * (hh + 1) + 1, 2 * (ww + 1) + 1, 3) and grid.dtype == np.uint8
    u8 = to_uint8_nhwc(images)[:, 0, 0, 0]
    for i in range(n):
        r, c = divmod(i, 2)
        tile = grid[
            1 + r * (hh + 1) : 1 + r * (hh + 1) + hh, 1 + c * (ww + 1) : 1 + c * (ww + 1) + ww
        ]
        assert np.all(tile == u8[i])
    assert np.all(grid[0] == 7) and np.all(grid[:, 0] == 7) and np.all(grid[hh + 1] == 7)
    assert np.all(grid[-hh - 1 :, ww + 2 :] == 7)  # the empty sixth cell
    gray = make_grid(images[:, :1], nrow=8)
    assert gray.shape == (h + 2, n * (w + 1) + 1, 3)
    np.testing.assert_array_equal(gray[1, 1 : 1 + w], np.repeat(u8[0], 3 * w).reshape(w, 3))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        make_grid(torch.zeros(2, 4, 2, 2))


def test_save_npz_and_png(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    out = save_npz(images, tmp_path / "sub" / "samples.npz", labels=[1, 0, 3, 2])
    with np.load(out) as z:
        assert sorted(z.files) == ["arr_0", "arr_1"]
        np.testing.assert_array_equal(z["arr_0"], images)
        assert z["arr_1"].tolist() == [1, 0, 3, 2]
    assert sorted(p.name for p in out.parent.iterdir()) == ["samples.npz"]  # no temp file left
    with np.load(save_npz(images, tmp_path / "plain.npz")) as z:
        assert z.files == ["arr_0"]
    with pytest.raises(ValueError, match="uint8"):
        save_npz(images.astype(np.float32), tmp_path / "bad.npz")

    grid = make_grid(torch.from_numpy(images).permute(0, 3, 1, 2) / 127.5 - 1, nrow=2)
    png = save_png(grid, tmp_path / "grid.png")
    np.testing.assert_array_equal(np.asarray(Image.open(png)), grid)
    gray = images[0, ..., :1]
    np.testing.assert_array_equal(
        np.asarray(Image.open(save_png(gray, tmp_path / "g.png"))), gray[..., 0]
    )


@pytest.mark.parametrize("source", ["digits", "array"])
def test_config_hflip_reaches_every_source(tmp_path, source):
    """data.hflip=true flips training items of every source (digits and arrays included);
    the eval split never flips."""
    from layersync.config import resolve
    from layersync_image.data import build_dataset
    from layersync_image.plugin import plugin

    extra = []
    if source == "array":
        images = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
        np.savez(tmp_path / "a.npz", images=images, labels=np.arange(40) % 4)
        extra = ["data.source=array", f"data.path={tmp_path / 'a.npz'}"]
    flips = resolve(plugin, overrides=[*extra, "data.hflip=true"])
    plain = build_dataset(resolve(plugin, overrides=extra), "train")
    ds = build_dataset(flips, "train")
    ds.seed = 3
    changed = [not torch.equal(ds[i][0], plain[i][0]) for i in range(40)]
    for i in range(40):
        want = plain[i][0].flip(-1) if changed[i] else plain[i][0]
        torch.testing.assert_close(ds[i][0], want)
    assert 8 < sum(changed) < 32  # p = 0.5 (symmetric items could only lower the count)
    evals = build_dataset(flips, "eval")
    assert not evals.hflip
