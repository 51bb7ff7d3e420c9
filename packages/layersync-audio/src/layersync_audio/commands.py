"""Audio-only commands: ``layersync audio encode``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# the core CLI's error handler and markup-free consoles: one `error:` line, exit 2, --debug
from layersync.cli.common import choice, console, device_option, plugin_app, positive
from layersync.cli.common import fail as _fail

app = plugin_app("Audio modality commands.")


@app.command()
def encode(
    source: Annotated[
        Path, typer.Argument(help="audio folder (class sub-folders) or MTG-Jamendo root")
    ],
    vae: Annotated[Path, typer.Option(help="local diffusers AutoencoderOobleck folder")],
    out: Annotated[Path, typer.Option(help="output latent cache directory")],
    tsv: Annotated[
        Path | None, typer.Option(help="MTG-Jamendo autotagging*.tsv (audio at SOURCE/PATH)")
    ] = None,
    seconds: Annotated[
        float, typer.Option(help="window length, rounded to whole latent frames")
    ] = 30.0,
    tag_categories: Annotated[
        str, typer.Option(help="jamendo: comma-separated genre, instrument, mood/theme")
    ] = "genre,instrument",
    batch_size: Annotated[
        int, typer.Option(help="windows per VAE call (30-s stereo windows are large)")
    ] = 4,
    device: str = "auto",
    dtype: Annotated[str, typer.Option(help="float16 or float32 moments")] = "float16",
    on_error: Annotated[str, typer.Option(help="error or skip unreadable files")] = "error",
    overwrite: bool = False,
) -> None:
    """Cache VAE latent moments of consecutive windows of every file, once, so training never
    re-encodes (data.source=latents data.path=OUT)."""
    import torch

    from layersync.backends import configure_backends

    if seconds <= 0:
        _fail(f"--seconds must be > 0, got {seconds}")
    positive(batch_size, "--batch-size")
    choice(dtype, "--dtype", ("float16", "float32"))
    choice(on_error, "--on-error", ("error", "skip"))
    device = device_option(device)
    configure_backends()  # the same matmul precision as every other command
    from layersync.assets import AssetError
    from layersync_audio.data import AudioFolder, JamendoDataset
    from layersync_audio.vae import AudioWindows, encode_windows, vae_spec

    try:
        spec = vae_spec(vae, key="--vae")
        frames = max(1, round(seconds * spec.sample_rate / spec.hop_length))
        if tsv is not None:
            categories = tuple(c.strip() for c in tag_categories.split(",") if c.strip())
            files = JamendoDataset(
                source, tsv, seconds, spec.sample_rate, categories=categories, on_error=on_error
            )
        else:
            files = AudioFolder(source, seconds, spec.sample_rate, on_error=on_error)
        windows = AudioWindows(files, spec, frames, on_error=on_error)
        with console.status(f"encoding {len(windows)} windows of {frames} frames") as status:
            path = encode_windows(
                windows,
                out,
                batch_size=batch_size,
                device=device,
                dtype=getattr(torch, dtype),
                overwrite=overwrite,
                progress=lambda done, total: status.update(f"encoded {done}/{total}"),
            )
    except (AssetError, FileNotFoundError, FileExistsError, ValueError, OSError, ImportError) as e:
        _fail(str(e))
    skipped = windows.skipped + len(getattr(files, "missing", []))
    console.print(
        f"latent cache: {path} ({len(windows)} windows of {frames} frames from "
        f"{len(files.files) - windows.skipped} files"
        + (f"; {skipped} unreadable or missing files skipped)" if skipped else ")")
    )
