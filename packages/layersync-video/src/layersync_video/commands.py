"""Video-only commands: ``layersync video encode`` (frame-wise VAE latents)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# the core CLI's error handler and markup-free consoles: one `error:` line, exit 2, --debug
from layersync.cli.common import choice, console, device_option, non_negative, plugin_app, positive
from layersync.cli.common import fail as _fail

app = plugin_app("Video modality commands.")


SOURCE_HELP = "auto (detected), clevrer, folder (video files), frames (frame folders), array"
DTYPES = ("float16", "bfloat16", "float32")


@app.command()
def encode(
    source: Annotated[Path, typer.Argument(help="CLEVRER root, video folder, frame folders, .npz")],
    vae: Annotated[Path, typer.Option(help="local diffusers AutoencoderKL folder")],
    out: Annotated[Path, typer.Option(help="output latent cache directory")],
    size: Annotated[int, typer.Option(help="square frame size (centre crop + resize)")] = 128,
    frames: Annotated[
        int | None, typer.Option(help="frames per video at the stride (default: the shortest's)")
    ] = None,
    stride: Annotated[int, typer.Option(help="source frames between two encoded frames")] = 1,
    source_kind: Annotated[str, typer.Option("--source", help=SOURCE_HELP)] = "auto",
    flip: Annotated[bool, typer.Option(help="also cache the h-flipped frames' latents")] = False,
    batch_size: Annotated[int, typer.Option(help="frames per VAE forward")] = 64,
    dtype: Annotated[str, typer.Option(help="stored moments: " + ", ".join(DTYPES))] = "float16",
    device: str = "auto",
    on_error: Annotated[str, typer.Option(help="error or skip unusable videos")] = "error",
    overwrite: bool = False,
    num_workers: Annotated[int, typer.Option(help="DataLoader processes decoding videos")] = 2,
) -> None:
    """Cache frame-wise VAE latent moments (c, F, h, w) once per video (data.source=latents).

    One item per video: its first --frames frames at --stride; training draws data.frames
    consecutive latent frames from a seeded random start. CLEVRER and folders with train/ and
    val/ give OUT/train and OUT/eval.
    """
    import torch

    from layersync.backends import configure_backends

    positive(batch_size, "--batch-size")
    non_negative(num_workers, "--num-workers")
    choice(dtype, "--dtype", DTYPES)
    choice(on_error, "--on-error", ("error", "skip"))
    device = device_option(device)
    configure_backends()  # the same matmul precision as every other command
    from layersync_video.latents import encode_source

    try:
        with console.status("encoding") as status:
            done = encode_source(
                source,
                vae,
                out,
                size=size,
                frames=frames,
                stride=stride,
                kind=source_kind,
                on_error=on_error,  # type: ignore[arg-type]
                flip=flip,
                overwrite=overwrite,
                status=status.update,
                batch_size=batch_size,
                device=device,
                dtype=getattr(torch, dtype),
                num_workers=num_workers,
                progress=lambda i, n: status.update(f"encoded {i}/{n} videos"),
            )
    except (ValueError, OSError) as e:  # AssetError, VideoDataError; FileExistsError...
        _fail(str(e))
    for split, (path, ds) in done.items():
        what = f"{split}: " if split else ""
        if ds is None:
            console.print(f"{what}latent cache {path} (kept: already encoded)")
            continue
        skipped = f", {len(ds.skipped)} videos skipped" if ds.skipped else ""
        console.print(f"{what}latent cache {path} ({len(ds)} videos x {ds.frames} frames{skipped})")
