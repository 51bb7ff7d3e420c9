"""The official T2M evaluator (``metric.evaluator = t2m``): finest.tar + GloVe + its mean/std.

Files (all local, checked at start, errors name the path and its role)::

    t2m_dir/finest.tar            {"movement_encoder", "motion_encoder", "text_encoder": state dicts}
    t2m_dir/mean.npy, std.npy     the evaluator's own feature statistics (t2m_mean / t2m_std)
    glove_dir/our_vab_data.npy    GloVe vectors (N, 300)
    glove_dir/our_vab_words.pkl   word list; glove_dir/our_vab_idx.pkl  word -> row

Captions enter as HumanML3D tokens ("word/POS ..."): sos + at most 20 tokens + eos, padded with
unk to 22, GloVe + POS one-hot (15 categories; T2M's VIP word lists override the tagger's POS;
unknown words are 'unk'/OTHER); the length counts to eos inclusive. Motions are normalised
with the evaluator's mean/std, the foot contacts dropped, lengths // 4 for the GRU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .evaluator import MotionEncoderBiGRUCo, MovementConvEncoder, TextEncoderBiGRUCo

POS = [
    "VERB", "NOUN", "DET", "ADP", "NUM", "AUX", "PRON", "ADJ", "ADV",
    "Loc_VIP", "Body_VIP", "Obj_VIP", "Act_VIP", "Desc_VIP", "OTHER",
]  # fmt: skip
VIP = {
    "Loc_VIP": ("left", "right", "clockwise", "counterclockwise", "anticlockwise", "forward", "back", "backward",
                "up", "down", "straight", "curve"),
    "Body_VIP": ("arm", "chin", "foot", "feet", "face", "hand", "mouth", "leg", "waist", "eye", "knee", "shoulder",
                 "thigh"),
    "Obj_VIP": ("stair", "dumbbell", "chair", "window", "floor", "car", "ball", "handrail", "baseball", "basketball"),
    "Act_VIP": ("walk", "run", "swing", "pick", "bring", "kick", "put", "squat", "throw", "hop", "dance", "jump",
                "turn", "stumble", "dance", "stop", "sit", "lift", "lower", "raise", "wash", "stand", "kneel",
                "stroll", "rub", "bend", "balance", "flap", "jog", "shuffle", "lean", "rotate", "spin", "spread",
                "climb"),
    "Desc_VIP": ("slowly", "carefully", "fast", "careful", "slow", "quickly", "happy", "angry", "sad", "happily",
                 "angrily", "sadly"),
}  # fmt: skip
MAX_TEXT_LEN = 20


def _file(path: Path, role: str) -> Path:
    from layersync.assets import AssetError

    if not path.is_file():
        raise AssetError(f"{role} not found: {path}")
    return path


class WordVectorizer:
    """GloVe + POS one-hot per "word/POS" token (T2M's WordVectorizer)."""

    def __init__(self, glove_dir: str | Path, prefix: str = "our_vab") -> None:
        from layersync.assets import load_numpy_pickle

        root = Path(glove_dir)
        vectors = np.load(_file(root / f"{prefix}_data.npy", "GloVe vectors"), allow_pickle=False)
        words = load_numpy_pickle(_file(root / f"{prefix}_words.pkl", "GloVe word list"))
        idx = load_numpy_pickle(_file(root / f"{prefix}_idx.pkl", "GloVe word index"))
        self.word2vec = {w: vectors[idx[w]] for w in words}

    @staticmethod
    def pos_onehot(pos: str) -> np.ndarray:
        out = np.zeros(len(POS), np.float32)
        out[POS.index(pos) if pos in POS else POS.index("OTHER")] = 1
        return out

    def __getitem__(self, token: str) -> tuple[np.ndarray, np.ndarray]:
        word, _, pos = token.partition("/")
        if word not in self.word2vec:
            return self.word2vec["unk"], self.pos_onehot("OTHER")
        vip = next((k for k, words in VIP.items() if word in words), None)
        return self.word2vec[word], self.pos_onehot(vip or pos)

    def encode(self, tokens: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(22, 300) word vectors, (22, 15) POS, length to eos inclusive (T2M's dataset)."""
        toks = tokens.split()[:MAX_TEXT_LEN]
        toks = ["sos/OTHER", *toks, "eos/OTHER"]
        length = len(toks)
        toks += ["unk/OTHER"] * (MAX_TEXT_LEN + 2 - length)
        pairs = [self[t] for t in toks]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), length


class T2MEvaluator(nn.Module):
    """finest.tar's three networks (dims 259 -> 512 -> 1024 -> 512; GloVe 300 + POS 15 -> 512)."""

    def __init__(self, feature_dim: int = 263, glove_dir: str | Path | None = None) -> None:
        super().__init__()
        self.movement_encoder = MovementConvEncoder(feature_dim - 4, 512, 512)
        self.motion_encoder = MotionEncoderBiGRUCo(512, 1024, 512)
        self.text_encoder = TextEncoderBiGRUCo(300, len(POS), 512, 512)
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))
        self.vectorizer = WordVectorizer(glove_dir) if glove_dir is not None else None

    @classmethod
    def load(
        cls, t2m_dir: str | Path, glove_dir: str | Path, feature_dim: int = 263
    ) -> T2MEvaluator:
        from layersync.assets import AssetError, load_torch_state

        root = Path(t2m_dir)
        ev = cls(feature_dim, glove_dir)
        ckpt = load_torch_state(_file(root / "finest.tar", "T2M evaluator checkpoint (finest.tar)"))
        for name in ("movement_encoder", "motion_encoder", "text_encoder"):
            if name not in ckpt:
                raise AssetError(f"{root / 'finest.tar'}: no {name!r} state dict")
            getattr(ev, name).load_state_dict(ckpt[name], strict=True)
        for buf, fname in (("mean", "mean.npy"), ("std", "std.npy")):
            arr = np.load(_file(root / fname, f"T2M evaluator {buf} ({fname})"))
            if arr.shape != (feature_dim,):
                raise AssetError(f"{root / fname}: shape {arr.shape}, expected ({feature_dim},)")
            getattr(ev, buf).copy_(torch.from_numpy(arr.astype(np.float32)))
        return ev.eval()

    def motion_embedding(self, motions: Tensor, lengths: Tensor) -> Tensor:
        """Raw features (B, T, F) -> (B, 512), in the evaluator's normalisation."""
        x = ((motions - self.mean) / self.std)[..., :-4]
        valid = (torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]).unsqueeze(-1)
        return self.motion_encoder(self.movement_encoder(x * valid), (lengths // 4).clamp_min(1))

    def text_embedding_from_tokens(self, tokens: list[str]) -> Tensor:
        enc = [self.vectorizer.encode(t) for t in tokens]
        words = torch.from_numpy(np.stack([e[0] for e in enc])).float()
        pos = torch.from_numpy(np.stack([e[1] for e in enc])).float()
        lens = torch.tensor([e[2] for e in enc])
        return self.text_encoder(words, pos, lens)
