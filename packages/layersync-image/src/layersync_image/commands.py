"""Image-only commands: ``layersync image encode`` and ``layersync image fid``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# the core CLI's error handler and markup-free consoles: one `error:` line, exit 2, --debug
from layersync.cli.common import choice, console, device_option, non_negative, plugin_app, positive
from layersync.cli.common import fail as _fail

app = plugin_app("Image modality commands.")


@app.command()
def encode(
    source: Annotated[Path, typer.Argument(help="image folder (class sub-folders) or .npz/.npy")],
    vae: Annotated[Path, typer.Option(help="local diffusers AutoencoderKL folder")],
    out: Annotated[Path, typer.Option(help="output latent cache directory")],
    image_size: Annotated[int, typer.Option(help="ADM centre-crop size")] = 256,
    flip: Annotated[bool, typer.Option(help="also cache the h-flipped images' latents")] = False,
    batch_size: int = 64,
    device: str = "auto",
    on_error: Annotated[str, typer.Option(help="raise or skip unreadable images")] = "raise",
    overwrite: bool = False,
    num_workers: Annotated[
        int, typer.Option(help="DataLoader processes decoding and cropping images")
    ] = 4,
) -> None:
    """Cache VAE latent moments once, so training never re-encodes (data.source=latents)."""

    from layersync.backends import configure_backends

    positive(batch_size, "--batch-size")
    non_negative(num_workers, "--num-workers")
    choice(on_error, "--on-error", ("raise", "skip"))
    device = device_option(device)
    configure_backends()  # the same matmul precision as every other command
    from layersync_image.data import ArrayDataset
    from layersync_image.folder import ImageFolderDataset
    from layersync_image.latents import encode_dataset

    try:
        if source.is_dir():
            # skip: find unreadable files up front so the cache holds each image once
            dataset = ImageFolderDataset(
                source, image_size, hflip=False, on_error=on_error, verify=on_error == "skip"
            )
        else:
            dataset = ArrayDataset(source, image_size=image_size)
        with console.status(f"encoding {len(dataset)} images") as status:
            path = encode_dataset(
                dataset,
                vae,
                out,
                batch_size=batch_size,
                device=device,
                flip=flip,
                overwrite=overwrite,
                num_workers=num_workers,
                progress=lambda done, total: status.update(f"encoded {done}/{total}"),
            )
    except (FileNotFoundError, FileExistsError, ValueError, OSError, ImportError) as e:
        _fail(str(e))
    skipped = getattr(dataset, "skipped", 0)
    console.print(
        f"latent cache: {path}" + (f" ({skipped} unreadable files skipped)" if skipped else "")
    )


@app.command()
def fid(
    a: Annotated[Path, typer.Argument(help="images: folder of PNG/JPEG, ADM .npz, or stats .npz")],
    b: Annotated[Path, typer.Argument(help="the other set, same forms")],
    weights: Annotated[Path | None, typer.Option(help="pytorch-fid Inception .pth")] = None,
    batch_size: int = 50,
    device: str = "auto",
    save_stats: Annotated[Path | None, typer.Option(help="write A's mu/sigma .npz")] = None,
) -> None:
    """FID between two image sets, exactly as pytorch-fid computes it."""
    import numpy as np

    from layersync.backends import configure_backends
    from layersync.metrics import GaussianStats
    from layersync_image.fid import image_stats, load_inception

    configure_backends()
    positive(batch_size, "--batch-size")
    device = device_option(device)
    try:
        model = load_inception(weights, device=device)
        stats = []
        for source in (a, b):
            if source.suffix == ".npz":
                with np.load(source) as f:
                    if "mu" in f.files:
                        stats.append(GaussianStats.load(source))
                        continue
                    images, nhwc = f["arr_0"], True
            else:
                images, nhwc = _read_folder(source), True
            stats.append(image_stats(images, model, batch_size, device, channels_last=nhwc))
    except (FileNotFoundError, ValueError, OSError) as e:
        _fail(str(e))
    if save_stats is not None:
        stats[0].save(save_stats)
    console.print(
        f"FID {stats[0].frechet_distance(stats[1]):.4f}  ({stats[0].n} vs {stats[1].n} images)"
    )


def _read_folder(folder: Path):
    """Every PNG/JPEG under ``folder`` (sorted) as uint8 NHWC RGB, all of one size."""
    import numpy as np
    from PIL import Image

    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder or .npz file")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"{folder}: no PNG/JPEG images")
    images = []
    for path in files:
        try:
            images.append(np.asarray(Image.open(path).convert("RGB")))
        except OSError as e:
            raise OSError(f"{path}: unreadable image ({e})") from None
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"{folder}: images differ in size {sorted(shapes)[:3]}")
    return np.stack(images)
