"""Caption embeddings from CLIP ViT-B/32's text tower, as MDM computes them (``text.encoder=clip``).

MDM (``model/mdm.py``, ``encode_text``) for HumanML3D/KIT: ``clip.tokenize(captions,
context_length=22, truncate=True)`` (start token, at most 20 BPE tokens, end token; a longer
caption is cut and its 22nd token replaced by the end token), zero-padded to CLIP's 77
positions, then ``clip_model.encode_text(tokens).float()``: 512-d, not normalised. Here the
tokenizer and the model are open-clip-torch's (``pip install 'layersync-motion[clip]'``); its BPE
vocabulary ships inside the package, so nothing is downloaded.

The weights come from a local file, ``text.clip_path``, in one of two formats:

- OpenAI's released ``ViT-B-32.pt`` (a TorchScript archive of fp16 weights; read with
  ``torch.jit.load`` and only its state dict is used), from the URL in ``CLIP_URL``;
- a plain state dict saved with ``torch.save(model.state_dict(), path)`` of an OpenAI-layout
  ViT-B/32 (open_clip's ``ViT-B-32-quickgelu``), read with ``weights_only=True``.

The text tower's keys are checked strictly (names and shapes); the image tower's weights, if
present, are not loaded (only its patch size and width are checked: ViT-B/32, not B/16 or L/14).
open_clip's ``CLIP`` is built with ViT-B/32's text tower and a placeholder one-layer image tower
that is dropped at once. MDM casts CLIP to fp16 and runs it on the GPU; here it runs in float32
on the CPU (the released weights are fp16 values, so only the arithmetic differs). Embeddings are
cached per caption, outside the MDM model, its checkpoints and its EMA.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from .text import CachedTextEncoder

CLIP_DIM = 512
CLIP_CONTEXT = 77
MDM_CONTEXT = 22  # MDM's max_text_len 20 + start + end (HumanML3D and KIT)
CLIP_ARCH = "ViT-B-32-quickgelu"  # OpenAI's ViT-B/32 (QuickGELU) in open_clip's names
CLIP_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"
)
# entries of OpenAI's TorchScript state dict (and open_clip's scripted one) that are not weights
_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
_PLACEHOLDER_VISION = {"image_size": 32, "layers": 1, "width": 64, "patch_size": 32}
_VIT_B32_PATCH = ("visual.conv1.weight", (768, 3, 32, 32))


def _open_clip():
    from layersync.assets import AssetError

    try:
        import open_clip
    except ImportError as e:
        raise AssetError(
            "text.encoder = 'clip' needs open-clip-torch: pip install 'layersync-motion[clip]'"
        ) from e
    return open_clip


def check_clip_assets(clip_path: str | None) -> None:
    """``check_assets`` for ``text.encoder=clip``: open_clip importable and the checkpoint a file
    (one AssetError naming the key, the path and where the file comes from)."""
    from layersync.assets import AssetError

    if not clip_path:
        raise AssetError(
            "text.encoder = 'clip' needs text.clip_path: OpenAI's ViT-B-32.pt, from " + CLIP_URL
        )
    if not Path(clip_path).expanduser().is_file():
        raise AssetError(
            f"text.clip_path: no such file: {clip_path} (OpenAI's CLIP ViT-B/32 checkpoint "
            f"ViT-B-32.pt; download it once from {CLIP_URL})"
        )
    _open_clip()


def mdm_tokenize(captions: list[str]) -> Tensor:
    """(N, 77) int64 token ids as MDM's ``encode_text``: 22 tokens (truncated), then zeros."""
    tokens = _open_clip().tokenize(list(captions), context_length=MDM_CONTEXT)
    pad = tokens.new_zeros(len(tokens), CLIP_CONTEXT - MDM_CONTEXT)
    return torch.cat([tokens, pad], dim=1)


def load_clip_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The weights of a plain state-dict file or of OpenAI's TorchScript archive."""
    from layersync.assets import AssetError

    path = Path(path).expanduser()
    if not path.is_file():
        raise AssetError(f"text.clip_path: no such file: {path}")
    try:
        if _is_torchscript(path):  # weights_only loading refuses these; their code is not run
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation
                state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AssetError(f"{path}: cannot load CLIP weights ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise AssetError(f"{path}: holds a {type(state).__name__}, not a CLIP state dict")
    return {k: v for k, v in state.items() if k not in _NOT_WEIGHTS}


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip whose record holds ``constants.pkl`` (as torch checks)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in z.namelist())


def load_clip_text_model(path: str | Path) -> torch.nn.Module:
    """open_clip's CLIP with ViT-B/32's text tower and the file's text weights (strict), eval;
    its ``encode_text`` is CLIP's. Only a placeholder image tower is built, and dropped."""
    from layersync.assets import AssetError

    open_clip = _open_clip()
    cfg = open_clip.get_model_config(CLIP_ARCH)
    state = load_clip_state_dict(path)
    key, shape = _VIT_B32_PATCH
    if key in state and tuple(state[key].shape) != shape:
        raise AssetError(
            f"{path}: not CLIP ViT-B/32 ({key} is {tuple(state[key].shape)}, expected {shape})"
        )
    text_state = {k: v for k, v in state.items() if not k.startswith("visual.")}
    model = open_clip.CLIP(
        embed_dim=cfg["embed_dim"],
        vision_cfg=_PLACEHOLDER_VISION,
        text_cfg=cfg["text_cfg"],
        quick_gelu=cfg["quick_gelu"],
    )
    del model.visual  # encode_text never uses it
    try:
        missing, unexpected = model.load_state_dict(text_state, strict=False)
    except RuntimeError as e:  # shape mismatches: another text tower
        raise AssetError(f"{path}: not a CLIP ViT-B/32 state dict: {e}") from e
    if missing or unexpected:
        raise AssetError(
            f"{path}: not a CLIP ViT-B/32 state dict: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.float().eval().requires_grad_(False)


class CLIPEncoder(CachedTextEncoder):
    """``encoder(captions) -> (N, 512)`` float32 CLIP text features (MDM's), cached per caption."""

    dim = CLIP_DIM

    def __init__(
        self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 64
    ) -> None:
        super().__init__(batch_size)
        self.device = torch.device(device)
        self.model = load_clip_text_model(path).to(self.device)

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> Tensor:
        tokens = mdm_tokenize(captions).to(self.device)
        return self.model.encode_text(tokens).float().cpu()
