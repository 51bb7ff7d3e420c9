"""Real recordings from Debian's sonic-pi-samples (skipped where it is not installed): the folder
loader decodes and resamples them, and the musicnn port tags drum loops and a piano plausibly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SAMPLES = Path("/usr/share/sonic-pi/samples")
pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason="apt install sonic-pi-samples")


def test_folder_reads_real_flac():
    from layersync_audio.data import AudioFolder

    ds = AudioFolder(SAMPLES, seconds=2.0, sample_rate=16000, seed=0)
    assert len(ds) >= 160 and ds.num_classes == 1
    names = [p.name for p in ds.files]
    for name in ("loop_amen_full.flac", "ambi_piano.flac", "drum_heavy_kick.flac"):
        x, y = ds[names.index(name)]
        assert x.shape == (32000,) and int(y) == 0 and torch.isfinite(x).all()
        assert 0.01 < float(x.abs().max()) < 1.5  # resampling rings past full scale on kicks


@pytest.mark.weights
def test_musicnn_tags_are_plausible():
    from layersync.assets import AssetError
    from layersync_audio.data import read_audio
    from layersync_audio.musicnn import MSD_LABELS, MelFrontEnd, load_musicnn, log_compress, patches

    try:
        model = load_musicnn()
    except AssetError as e:
        pytest.skip(str(e))
    frontend = MelFrontEnd()

    def top(name: str, k: int) -> list[str]:
        wave = read_audio(SAMPLES / f"{name}.flac", 16000)
        with torch.no_grad():
            probs = model(patches(log_compress(frontend(wave))))["logits"].sigmoid().mean(0)
        return [MSD_LABELS[i] for i in probs.argsort(descending=True)[:k]]

    for loop in ("loop_amen_full", "loop_breakbeat"):  # drum breaks: electronic/dance music
        tags = top(loop, 3)
        assert tags[0] == "electronic" and {"electro", "electronica", "dance"} & set(tags), tags
    piano = top("ambi_piano", 5)  # a soft piano: ambient / chillout, nothing heavy
    assert {"ambient", "chillout"} <= set(piano), piano
    assert not {"metal", "hard rock", "punk", "heavy metal"} & set(top("ambi_piano", 15))
