"""The musicnn MSD port equals the original TensorFlow network; its front end equals librosa's.

Fixture ``data/musicnn_msd.npz``, made once by running the ORIGINAL musicnn 0.1.0 code::

    python3.11 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu==2.15.1 numpy==1.23.5 librosa==0.8.1 \\
        numba==0.58.1 soundfile
    /tmp/tfenv/bin/pip install --no-deps musicnn
    /tmp/tfenv/bin/python make_fixture.py musicnn_msd.npz

where make_fixture.py: writes each clip of ``musicnn_clips.clips()`` to a float WAV; runs
``musicnn.extractor.batch_data(path, 187, 187)`` (librosa.load at 16 kHz, librosa 0.8.1
melspectrogram, float16, log10(10000 x + 1), 187-frame patches) and stores the float32 power
mel ``mel<i>`` (frames, 96); builds ``musicnn.models.define_model(x, is_training, "MSD_musicnn",
50)``, restores ``musicnn/MSD_musicnn/`` with ``tf.compat.v1.train.Saver`` WITHOUT the
extractor's bare ``except`` and checks every one of the 64 graph variables equals the
checkpoint tensor (so the weights really are the trained ones); runs the patches with
``is_training=False`` and stores ``logits`` (unsigmoided), ``penultimate``, ``mean_pool``,
``max_pool`` (4 patches: 1 + 1 + 2) and ``timbral``/``temporal`` (every 16th frame).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from musicnn_clips import clips

FIXTURE = Path(__file__).parent / "data" / "musicnn_msd.npz"


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("torchaudio")
    from layersync_audio.musicnn import load_musicnn

    try:
        return load_musicnn()
    except ValueError as e:  # AssetError: musicnn not installed
        pytest.skip(str(e))


def test_frontend_equals_librosa_reflect_padding(reference):
    pytest.importorskip("torchaudio")
    from layersync_audio.musicnn import MelFrontEnd

    frontend = MelFrontEnd()
    for i, wave in enumerate(clips()):
        ref = reference[f"mel{i}"]
        mel = frontend(torch.from_numpy(wave)).numpy()
        assert mel.shape == ref.shape == (1 + len(wave) // 256, 96)
        np.testing.assert_allclose(mel, ref, rtol=1e-5, atol=1e-5 * float(ref.max()))


def test_network_equals_original_on_three_clips(reference, model):
    from layersync_audio.musicnn import log_compress, patches

    batch = torch.cat(
        [patches(log_compress(torch.from_numpy(reference[f"mel{i}"]))) for i in range(3)]
    )
    assert batch.shape == (4, 187, 96) and list(reference["patches"]) == [1, 1, 2]
    with torch.no_grad():
        out = model(batch)
    for key in ("penultimate", "logits", "mean_pool", "max_pool"):
        np.testing.assert_allclose(
            out[key].numpy(), reference[key], rtol=1e-4, atol=1e-4, err_msg=key
        )
    for key in ("timbral", "temporal"):
        np.testing.assert_allclose(
            out[key][:, ::16].numpy(), reference[key], rtol=1e-4, atol=1e-4, err_msg=key
        )


def test_embedding_from_waveforms_and_short_clips(model):
    from layersync_audio.musicnn import EMBED_DIM, MusicnnEmbedding

    embed = MusicnnEmbedding(model)
    waves = clips()
    emb = embed(waves)
    assert emb.shape == (4, EMBED_DIM)
    # a 1-s clip is repeated to fill one 3-s patch: equal to embedding the tiled clip
    short = torch.from_numpy(waves[1][:16000])
    tiled = short.repeat(3)
    e_short, e_tiled = embed([short]), embed([tiled])
    assert e_short.shape == (1, EMBED_DIM)
    # the tiled clip's frames differ from repeated frames only near the seams (STFT windows)
    cos = torch.nn.functional.cosine_similarity(e_short, e_tiled).item()
    assert cos > 0.98


def test_missing_weights_one_line_hint(tmp_path):
    from layersync.assets import AssetError
    from layersync_audio.tfckpt import load_checkpoint, read_index

    with pytest.raises(AssetError, match=r"nothere\.index: cannot read"):
        read_index(tmp_path / "nothere.index")
    bad = tmp_path / "bad.index"
    bad.write_bytes(b"\0" * 100)
    with pytest.raises(AssetError, match=r"bad\.index: cannot read TensorFlow checkpoint index"):
        load_checkpoint(bad)
