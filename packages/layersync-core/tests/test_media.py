"""layersync.media: WAV exact at 16 bits, GIF frames/size/duration, MP4 (PyAV), clip grids."""

from __future__ import annotations

import numpy as np
import pytest

from layersync.media import MediaError, save_gif, save_mp4, save_wav, tile_clips


def test_wav_round_trip_exact_16_bit(tmp_path):
    sf = pytest.importorskip("soundfile")
    rng = np.random.default_rng(0)
    ints = rng.integers(-32767, 32768, size=(2, 4001)).astype(np.int16)
    audio = ints.astype(np.float64) / 32767.0  # float in [-1, 1], exactly representable
    path = save_wav(tmp_path / "a.wav", audio.astype(np.float32), 16000)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 2, 4001, "PCM_16")
    back, sr = sf.read(str(path), dtype="int16")
    assert sr == 16000 and np.array_equal(back.T, ints)

    mono = save_wav(tmp_path / "m.wav", np.array([0.0, 1.0, -1.0, 2.0, -3.0, 0.5]), 8000)
    back, _ = sf.read(str(mono), dtype="int16")
    assert back.tolist() == [0, 32767, -32767, 32767, -32767, 16384]  # clipped, rounded


def test_wav_bad_input(tmp_path):
    pytest.importorskip("soundfile")
    with pytest.raises(MediaError, match=r"b.wav: audio must be \(N,\) or \(C, N\)"):
        save_wav(tmp_path / "b.wav", np.zeros((1, 2, 3)), 16000)
    with pytest.raises(MediaError, match="NaN"):
        save_wav(tmp_path / "b.wav", np.array([0.0, np.nan]), 16000)
    assert not (tmp_path / "b.wav").exists()


def _frames(t=5, h=12, w=17, c=3):
    rng = np.random.default_rng(1)
    # a few flat colours per frame: GIF's palette keeps them exactly
    base = rng.integers(0, 256, size=(t, 1, 1, c), dtype=np.uint8)
    frames = np.broadcast_to(base, (t, h, w, c)).copy()
    frames[:, : h // 2, : w // 3] = 255 - frames[:, : h // 2, : w // 3]
    return frames


@pytest.mark.parametrize("fps,ms", [(20, 50), (10, 100), (12.5, 80)])
def test_gif_frames_size_duration(tmp_path, fps, ms):
    from PIL import Image

    frames = _frames()
    path = save_gif(tmp_path / "c.gif", frames, fps)
    with Image.open(path) as im:
        assert im.n_frames == 5 and im.size == (17, 12)
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
            assert np.array_equal(np.asarray(im.convert("RGB")), frames[i])
        assert durations == [ms] * 5 and im.info.get("loop") == 0


def test_gif_grey_and_bad_input(tmp_path):
    from PIL import Image

    grey = _frames(c=1)[..., 0]
    with Image.open(save_gif(tmp_path / "g.gif", grey, 8)) as im:
        im.seek(2)
        assert np.array_equal(np.asarray(im.convert("L")), grey[2])
    with pytest.raises(MediaError, match="frames must be uint8"):
        save_gif(tmp_path / "x.gif", grey.astype(np.float32), 8)
    with pytest.raises(MediaError, match="fps must be positive"):
        save_gif(tmp_path / "x.gif", grey, 0)


def test_mp4(tmp_path):
    av = pytest.importorskip("av")
    frames = _frames(t=7, h=31, w=40)  # odd height: padded to even for yuv420p
    path = save_mp4(tmp_path / "v.mp4", frames, 20)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert float(stream.average_rate) == 20.0
    assert len(decoded) == 7 and decoded[0].shape == (32, 40, 3)
    err = np.abs(np.stack(decoded)[:, :31].astype(int) - frames.astype(int))
    assert err.mean() < 8  # lossy H.264, flat colours


def test_mp4_without_pyav(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("no av")
        return real_import(name, *args, **kwargs)

    monkeypatch.setitem(__import__("sys").modules, "av", None)
    monkeypatch.setattr(builtins, "__import__", no_av)
    with pytest.raises(MediaError, match=r"save_mp4 needs av: .*layersync-core\[media\]"):
        save_mp4(tmp_path / "v.mp4", _frames(), 20)


def test_tile_clips():
    clips = np.arange(5 * 2 * 3 * 4 * 1, dtype=np.uint8).reshape(5, 2, 3, 4, 1)
    grid = tile_clips(clips, nrow=3, pad=1)
    assert grid.shape == (2, 2 * 4 + 1, 3 * 5 + 1, 1) and grid.dtype == np.uint8
    # clip 4 sits at row 1, column 1; the last cell of row 1 is padding
    assert np.array_equal(grid[:, 5:8, 6:10], clips[4])
    assert np.array_equal(grid[:, 1:4, 11:15], clips[2])
    assert (grid[:, 5:8, 11:15] == 128).all() and (grid[:, 0] == 128).all()
    floats = tile_clips(np.zeros((2, 1, 2, 2, 3), np.float32), nrow=8, pad=2)
    assert floats.shape == (1, 6, 10, 3) and floats[0, 0, 0, 0] == 0.5
    with pytest.raises(MediaError, match=r"\(N, T, H, W, C\)"):
        tile_clips(np.zeros((2, 3, 4, 1)))
