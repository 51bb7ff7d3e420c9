"""LAION-CLAP's music audio encoder: the embedding of ``fad_clap`` (``clap-laion-music``).

The network is laion_clap's own (``pip install --no-deps laion-clap`` plus the extra ``clap``):
HTSAT-base audio encoder + audio projection, L2-normalised exactly as laion_clap's
``CLAP.get_audio_embedding`` (what ``CLAP_Module.get_audio_embedding_from_data`` ends in). The
weights are the user's ``music_audioset_epoch_15_esc_90.14.pt`` (HuggingFace
``lukewys/laion_clap``) given as ``metric.weights``; only its audio-branch keys are used, and
every one of them must load.

Input as fadtk's ``clap-laion-music``: 48 kHz mono, the int16 round trip of laion_clap
(``clip(x, -1, 1) * 32767`` cast to int16, i.e. truncated toward zero, then ``/ 32767``), then a
10-s window starting at every whole second of the clip (0 s, 1 s, ... while the start is inside
the clip), zero-padded to 10 s: ``ceil(N / 48000)`` windows, so 23 s -> 23 and 3.5 s -> 4. One
512-d embedding per window.

laion_clap's package ``__init__`` imports its training code, which builds three Hub tokenizers
at import time (network); the audio encoder lives in its ``clap_module`` package, which is
imported here as laion_clap's own hook imports it (top level, from the package folder that
laion_clap puts on ``sys.path``), so no tokenizer or text model is fetched.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import math
import sys
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

SAMPLE_RATE, WINDOW, HOP, EMBED_DIM = 48000, 480000, 48000, 512
CHECKPOINT = "music_audioset_epoch_15_esc_90.14.pt"
WHERE = f"download {CHECKPOINT} from HuggingFace lukewys/laion_clap"
AUDIO_KEYS = ("audio_branch.", "audio_projection.", "audio_transform.")
# The text branch is never run: the smallest config laion_clap builds without a download.
_TEXT_CFG = {"context_length": 77, "vocab_size": 1, "width": 8, "heads": 1, "layers": 1,
             "model_type": "transformer"}  # fmt: skip


def clap_module() -> ModuleType:
    """laion_clap's ``clap_module`` package (model code), imported as its hook does."""
    from layersync.assets import AssetError

    spec = importlib.util.find_spec("laion_clap")
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            "metric.embedding=clap-laion-music needs laion-clap: pip install --no-deps "
            "laion-clap==1.1.7 and pip install 'layersync-audio[clap]'"
        )
    folder = str(Path(next(iter(spec.submodule_search_locations))))
    if folder not in sys.path:
        sys.path.append(folder)  # what `import laion_clap` does
    try:
        with warnings.catch_warnings():  # timm's deprecated `timm.models.layers` path
            warnings.simplefilter("ignore", FutureWarning)
            return importlib.import_module("clap_module")
    except ImportError as e:
        raise AssetError(
            f"laion-clap cannot import {e.name or e}: pip install 'layersync-audio[clap]'"
        ) from None


def build_clap(amodel: str = "HTSAT-base") -> nn.Module:
    """A randomly initialised laion_clap ``CLAP`` (audio model ``amodel``, a 1-layer dummy text
    branch) in eval mode."""
    cm = clap_module()
    configs = importlib.import_module("clap_module.factory")._MODEL_CONFIGS
    cfg = copy.deepcopy(configs[amodel])
    cfg["text_cfg"] = dict(_TEXT_CFG)
    with warnings.catch_warnings():  # HTSAT calls torch.meshgrid without `indexing`
        warnings.filterwarnings("ignore", "torch.meshgrid", UserWarning)
        return cm.CLAP(**cfg, enable_fusion=False, fusion_type="None").eval()


def load_clap(path: str | Path | None, amodel: str = "HTSAT-base") -> nn.Module:
    """``CLAP`` with the audio-branch weights of a laion_clap checkpoint (``{"state_dict":
    {"module.<key>": ...}}``); a missing, partial or foreign file fails naming it."""
    from layersync.assets import AssetError, load_torch_state

    clap_module()  # first: a missing package is named before the weights
    if not path:
        raise AssetError(f"metric.weights: pass the LAION-CLAP music checkpoint ({WHERE})")
    if not Path(path).is_file():
        raise AssetError(f"metric.weights: {path}: file not found ({WHERE})")
    ckpt, model = load_torch_state(path), build_clap(amodel)
    state = ckpt.get("state_dict", ckpt)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    audio = {k: v for k, v in state.items() if k.startswith(AUDIO_KEYS)}
    try:
        result = model.load_state_dict(audio, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise AssetError(f"{path}: not a {amodel} CLAP checkpoint ({e})") from None
    missing = [k for k in result.missing_keys if k.startswith(AUDIO_KEYS)]
    if missing or result.unexpected_keys:
        bad = (missing or result.unexpected_keys)[:3]
        what = "lacks" if missing else "has unknown"
        raise AssetError(f"{path}: not a {amodel} CLAP checkpoint ({what} keys {bad})")
    return model.eval()


def quantize(wave: torch.Tensor) -> torch.Tensor:
    """laion_clap's ``int16_to_float32(float32_to_int16(x))`` (the cast truncates)."""
    x = np.clip(wave.detach().cpu().float().numpy(), -1.0, 1.0)
    return torch.from_numpy(((x * 32767.0).astype(np.int16) / 32767.0).astype(np.float32))


def windows(wave: torch.Tensor) -> torch.Tensor:
    """``(ceil(N / HOP), WINDOW)``: a window at every 1-s start, zero-padded (fadtk)."""
    n = max(1, math.ceil(len(wave) / HOP))
    padded = torch.nn.functional.pad(wave, (0, (n - 1) * HOP + WINDOW - len(wave)))
    return padded.unfold(0, WINDOW, HOP)


class ClapEmbedding(nn.Module):
    """Clips (48 kHz mono waveforms) -> per-10-s-window 512-d L2-normalised embeddings."""

    dim = EMBED_DIM
    sample_rate = SAMPLE_RATE
    batch_size = 8

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @torch.no_grad()
    def forward(self, waves: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        batch = torch.cat([windows(quantize(torch.as_tensor(w))) for w in waves])
        longer = torch.tensor([False])  # laion_clap's get_audio_features on a 10-s window
        out = [
            self.model.get_audio_embedding([{"waveform": w, "longer": longer} for w in chunk])
            for chunk in batch.split(self.batch_size)
        ]
        return torch.cat(out).float().cpu()
