"""Our MDM equals MDM's own model class under one random state dict with MDM's key names.

``fixtures/mdm_trans_enc.npz`` was made once by running GuyTevet/motion-diffusion-model's
``model/mdm.py`` (unchanged; the unused ``clip``, ``model.rotation2xyz`` and BERT imports
replaced by stubs, the text passed as the cached ``y['text_embed']``):

    MDM(njoints=263, nfeats=1, latent_dim=32, ff_size=64, num_layers=2, num_heads=4, dropout=0.1,
        activation="gelu", data_rep="hml_vec", dataset="humanml", clip_dim=384, arch="trans_enc",
        cond_mode="text", mask_frames=False / True), in eval mode
    state: for k in sorted(state_dict) (not *.pe): 0.05 * randn(shape, Generator().manual_seed(123))
    g = Generator().manual_seed(7); x = randn(3, 263, 1, 10, g); t = [0, 17, 999]
    text = randn(3, 384, g); mask (3, 1, 1, 10) all True but sample 1 from frame 6
    out = m(x, t, {"text_embed": text[None], "mask": mask}); out_uncond = same with "uncond": True
    out_masked = the mask_frames=True model on the same inputs
    keys, shapes: the state-dict names (clip_model.* excluded) and shapes
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from layersync.assets import AssetError
from layersync_motion.model import MDM, load_mdm_checkpoint

REF = np.load(Path(__file__).parent / "fixtures" / "mdm_trans_enc.npz")


def fixture_model(mask_frames: bool = False) -> MDM:
    model = MDM(
        263,
        latent_dim=32,
        ff_size=64,
        num_layers=2,
        num_heads=4,
        text_dim=384,
        mask_frames=mask_frames,
    )
    state = model.state_dict()
    g = torch.Generator().manual_seed(123)
    for k in sorted(state):
        if not k.endswith(".pe"):
            state[k] = 0.05 * torch.randn(state[k].shape, generator=g)
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_keys_and_shapes_are_mdms():
    state = MDM(
        263, latent_dim=32, ff_size=64, num_layers=2, num_heads=4, text_dim=384
    ).state_dict()
    assert sorted(state) == REF["keys"].tolist()
    assert [str(tuple(state[k].shape)) for k in REF["keys"]] == REF["shapes"].tolist()


@pytest.mark.parametrize("mask_frames", [False, True])
def test_forward_equals_mdm(mask_frames):
    model = fixture_model(mask_frames)
    x, t, text = (torch.from_numpy(REF[k]) for k in ("x", "t", "text"))
    mask = torch.from_numpy(REF["mask"])[:, 0, 0]
    with torch.no_grad():
        out = model(x, t, text, mask)  # MDM's (B, F, 1, T) layout
        ours = model(x.squeeze(2).transpose(1, 2), t, text, mask)  # (B, T, F)
    ref = REF["out_masked" if mask_frames else "out"]
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(ours.transpose(1, 2).unsqueeze(2).numpy(), ref, atol=1e-5, rtol=1e-4)
    if not mask_frames:
        with torch.no_grad():
            uncond = model(x, t, torch.zeros_like(text))
        np.testing.assert_allclose(uncond.numpy(), REF["out_uncond"], atol=1e-5, rtol=1e-4)


def test_layer_outputs_are_sequence_first_with_cond_token():
    model = fixture_model()
    seen = []
    model.seqTransEncoder.layers[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model(torch.zeros(2, 7, 263), torch.tensor([1, 2]), torch.zeros(2, 384))
    assert seen == [torch.Size([8, 2, 32])]


def test_checkpoint_load_drops_clip_and_pe(tmp_path):
    model = fixture_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["clip_model.token_embedding.weight"] = torch.zeros(3, 4)
    state["sequence_pos_encoder.pe"] = torch.zeros(100, 1, 32)  # an older table size
    torch.save({"model": state}, tmp_path / "model000475000.pt")
    fresh = MDM(263, latent_dim=32, ff_size=64, num_layers=2, num_heads=4, text_dim=384)
    load_mdm_checkpoint(fresh, tmp_path / "model000475000.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    del state["embed_text.weight"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(
        AssetError, match=r"bad.pt: MDM state dict mismatch: missing \['embed_text.weight'\]"
    ):
        load_mdm_checkpoint(fresh, tmp_path / "bad.pt")
    wide = MDM(263, latent_dim=64, ff_size=64, num_layers=2, num_heads=4, text_dim=384)
    with pytest.raises(AssetError, match="not an MDM trans_enc state dict for this configuration"):
        load_mdm_checkpoint(wide, tmp_path / "model000475000.pt")
