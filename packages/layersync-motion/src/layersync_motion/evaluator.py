"""Text-to-motion evaluators: T2M's networks (official key names) and a self-trained one.

T2M (Guo et al. 2022; ``finest.tar``'s ``movement_encoder``, ``motion_encoder``,
``text_encoder``): motions without the 4 foot contacts -> MovementConvEncoder (two stride-2
convs: T/4 steps) -> MotionEncoderBiGRUCo over length // 4 steps -> 512-d; captions as GloVe +
POS -> TextEncoderBiGRUCo -> 512-d. Evaluation normalises generated motions with the
evaluator's own mean/std.

``TrainedEvaluator`` (``metric.evaluator = trained``, the offline default): the same motion
path, and a text head (MLP) on the MiniLM caption embeddings, trained contrastively as T2M's
TextMotionMatchTrainer (pairwise distance, margin-10 hinge on shifted negatives) on the train
split, with the training data's own mean/std.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

# -- T2M networks (data_loaders/humanml/networks/modules.py names) -------------------------


class MovementConvEncoder(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv1d(input_size, hidden_size, 4, 2, 1),
            nn.Dropout(0.2),
            nn.LeakyReLU(0.2),
            nn.Conv1d(hidden_size, output_size, 4, 2, 1),
            nn.Dropout(0.2),
            nn.LeakyReLU(0.2),
        )
        self.out_net = nn.Linear(output_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, F) -> (B, T/4, output)."""
        return self.out_net(self.main(x.permute(0, 2, 1)).permute(0, 2, 1))


class _BiGRUHead(nn.Module):
    def __init__(self, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True, bidirectional=True)
        self.output_net = nn.Sequential(
            nn.Linear(hidden_size * 2, hidden_size),
            nn.LayerNorm(hidden_size),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_size, output_size),
        )
        self.hidden = nn.Parameter(torch.randn(2, 1, hidden_size))

    def _run(self, emb: Tensor, lengths: Tensor) -> Tensor:
        """Packed BiGRU over valid steps (any order of lengths), last states -> output."""
        order = torch.argsort(lengths, descending=True)
        packed = pack_padded_sequence(
            emb[order], lengths[order].cpu().long().clamp_min(1), batch_first=True
        )
        _, last = self.gru(packed, self.hidden.repeat(1, emb.shape[0], 1))
        out = self.output_net(torch.cat([last[0], last[1]], -1))
        return out[torch.argsort(order)]


class MotionEncoderBiGRUCo(_BiGRUHead):
    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__(hidden_size, output_size)
        self.input_emb = nn.Linear(input_size, hidden_size)

    def forward(self, movements: Tensor, m_lens: Tensor) -> Tensor:
        return self._run(self.input_emb(movements), m_lens)


class TextEncoderBiGRUCo(_BiGRUHead):
    def __init__(self, word_size: int, pos_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__(hidden_size, output_size)
        self.pos_emb = nn.Linear(pos_size, word_size)
        self.input_emb = nn.Linear(word_size, hidden_size)

    def forward(self, word_embs: Tensor, pos_onehot: Tensor, cap_lens: Tensor) -> Tensor:
        return self._run(self.input_emb(word_embs + self.pos_emb(pos_onehot)), cap_lens)


# -- the self-trained evaluator ------------------------------------------------------------


@dataclass(frozen=True)
class EvaluatorSize:
    movement_hidden: int = 512
    movement_out: int = 512
    motion_hidden: int = 1024
    out: int = 512
    unit_length: int = 4


class TrainedEvaluator(nn.Module):
    """Motion path as T2M's; a text head on fixed caption embeddings (MiniLM)."""

    def __init__(
        self, feature_dim: int, text_dim: int, size: EvaluatorSize = EvaluatorSize()
    ) -> None:
        super().__init__()
        self.size = size
        self.movement_encoder = MovementConvEncoder(
            feature_dim - 4, size.movement_hidden, size.movement_out
        )
        self.motion_encoder = MotionEncoderBiGRUCo(size.movement_out, size.motion_hidden, size.out)
        self.text_encoder = nn.Sequential(
            nn.Linear(text_dim, size.motion_hidden), nn.LayerNorm(size.motion_hidden), nn.LeakyReLU(0.2),
            nn.Linear(size.motion_hidden, size.out),
        )  # fmt: skip
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))

    def motion_embedding(self, motions: Tensor, lengths: Tensor) -> Tensor:
        """Raw (unnormalised) features (B, T, F) and frame counts (B,) -> (B, out)."""
        x = ((motions - self.mean) / self.std)[..., :-4]
        valid = (torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]).unsqueeze(-1)
        movements = self.movement_encoder(x * valid)
        return self.motion_encoder(movements, (lengths // self.size.unit_length).clamp_min(1))

    def text_embedding(self, text: Tensor) -> Tensor:
        return self.text_encoder(text)


def contrastive_loss(
    text: Tensor, motion: Tensor, shift: int, margin: float = 10.0, neg_valid: Tensor | None = None
) -> Tensor:
    """T2M's matching loss: mean d² of the true pairs plus mean max(margin - d, 0)² of each
    motion against the caption ``shift`` places along the batch (pairs whose captions are equal
    excluded via ``neg_valid``)."""
    pos = nn.functional.pairwise_distance(text, motion)
    neg = (
        (margin - nn.functional.pairwise_distance(torch.roll(text, shift, 0), motion))
        .clamp_min(0)
        .pow(2)
    )
    if neg_valid is not None:
        neg = neg[neg_valid] if bool(neg_valid.any()) else neg[:0]
    return pos.pow(2).mean() + (neg.mean() if len(neg) else neg.sum())


def train_evaluator(
    dataset,
    encode_text,
    steps: int = 2000,
    batch_size: int = 32,
    lr: float = 1e-4,
    seed: int = 0,
    size: EvaluatorSize = EvaluatorSize(),
    log=None,
) -> TrainedEvaluator:
    """Train on a ``MotionDataset`` (items normalised by the dataset's Mean/Std; the evaluator
    keeps those as its own statistics and sees raw features)."""
    with torch.inference_mode(False), torch.enable_grad():  # callable from an evaluation context
        return _train(dataset, encode_text, steps, batch_size, lr, seed, size, log)


def _train(dataset, encode_text, steps, batch_size, lr, seed, size, log) -> TrainedEvaluator:
    from torch.utils.data import DataLoader

    torch.manual_seed(seed)
    ev = TrainedEvaluator(dataset.spec.feature_dim, encode_text.dim, size)
    ev.mean.copy_(torch.from_numpy(dataset.mean))
    ev.std.copy_(torch.from_numpy(dataset.std))
    opt = torch.optim.Adam(ev.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    step, epoch = 0, 0
    ev.train()
    while step < steps:
        dataset.set_epoch(epoch)
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=g
        )
        for batch in loader:
            raw = dataset.denormalize(batch["x"]) * batch["mask"].unsqueeze(-1)
            motion = ev.motion_embedding(raw, batch["length"])
            text = ev.text_embedding(encode_text(list(batch["caption"])))
            shift = int(torch.randint(1, batch_size, (), generator=g))
            captions = list(batch["caption"])
            valid = torch.tensor(
                [captions[i] != captions[(i - shift) % batch_size] for i in range(batch_size)]
            )
            loss = contrastive_loss(text, motion, shift, neg_valid=valid)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(ev.parameters(), 1.0)
            opt.step()
            step += 1
            if log is not None and step % 100 == 0:
                log(step, float(loss))
            if step >= steps:
                break
        epoch += 1
    return ev.eval()
