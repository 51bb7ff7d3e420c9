"""``text.encoder=clip``: CLIP ViT-B/32 text features as MDM computes them, with random weights.

No OpenAI checkpoint is available offline, so the file is made here: open_clip's OpenAI-layout
ViT-B/32 (``ViT-B-32-quickgelu``) with random weights (seed 0), stored as a plain state dict in
fp16 like the released weights. The reference is computed directly from that model with MDM's
recipe written out (``encode_text`` in MDM's ``model/mdm.py``): ``[sot] + BPE(caption) + [eot]``
cut to 22 tokens with the 22nd replaced by ``eot`` (``clip.tokenize(..., context_length=22,
truncate=True)``), zeros up to 77, ``clip_model.encode_text(tokens).float()``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("open_clip") is None,
    reason="pip install 'layersync-motion[clip]' (open-clip-torch)",
)

SHORT = ["a person walks forward", "a person does a cartwheel", "someone jumps up twice"]
# 20+ BPE tokens: MDM keeps the first 20; the two differ only after them
LONG = (
    "a person walks forward slowly, then turns around to the left, raises both arms above "
    "the head and claps three times"
)
LONG_A, LONG_B = LONG + " before sitting down on a chair", LONG + " and then waves goodbye"


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """(path of a random ViT-B/32 state dict, the same model in float32). The first use pays
    for importing open_clip (torchvision, timm, transformers)."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    path = tmp_path_factory.mktemp("clip") / "vit-b-32-random.pt"
    torch.save(model.half().state_dict(), path)  # fp16 values, as OpenAI's release
    return path, model.float()


@pytest.fixture(scope="module")
def encoder(clip_file):
    """The process-wide encoder for that file (as the plugin gets it), batching 2 captions at a
    time (sorted): must not matter."""
    from layersync_motion.clip_text import CLIPEncoder
    from layersync_motion.text import text_encoder

    enc = text_encoder("clip", str(clip_file[0]))
    assert isinstance(enc, CLIPEncoder) and text_encoder("clip", str(clip_file[0])) is enc
    enc.batch_size = 2
    return enc


def mdm_tokens(caption: str) -> list[int]:
    """MDM's tokenisation, spelled out (open_clip's BPE is the only shared piece)."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    ids = [tok.sot_token_id, *tok.encode(caption), tok.eot_token_id]
    if len(ids) > 22:
        ids = ids[:22]
        ids[-1] = tok.eot_token_id
    return ids + [0] * (77 - len(ids))


def test_embeddings_equal_encode_text_on_mdm_tokens(clip_file, encoder):
    _, model = clip_file
    captions = [*SHORT, LONG_A]
    emb = encoder(captions)
    with torch.no_grad():
        ref = model.encode_text(torch.tensor([mdm_tokens(c) for c in captions])).float()
    assert emb.shape == (4, 512) and emb.dtype == torch.float32
    assert ref.abs().mean() > 0.1  # a real signal, not zeros
    torch.testing.assert_close(emb, ref, atol=1e-5, rtol=1e-5)
    assert set(encoder.cache) == set(captions)  # cached per caption, outside any model
    assert torch.equal(encoder([SHORT[1], SHORT[1]]), emb[[1, 1]])


def test_long_captions_are_cut_to_20_tokens(clip_file, encoder):
    """Only the first 20 BPE tokens count: two captions that differ after them embed alike,
    and differently from the uncut 77-token encoding."""
    import open_clip

    from layersync_motion.clip_text import mdm_tokenize

    _, model = clip_file
    tokens = mdm_tokenize([LONG_A, SHORT[0]])
    assert tokens.shape == (2, 77)
    assert len(open_clip.tokenize([LONG_A])[0].nonzero()) > 30  # uncut: well past 22
    assert (tokens[0] != 0).sum() == 22 and tokens[0, 21] == 49407 and tokens[0, 0] == 49406
    assert tokens[0].tolist() == mdm_tokens(LONG_A) and tokens[1].tolist() == mdm_tokens(SHORT[0])
    assert torch.equal(mdm_tokenize([LONG_B])[0], tokens[0])
    emb = encoder([LONG_A, LONG_B])  # equal up to float rounding (batched differently)
    torch.testing.assert_close(emb[0], emb[1], atol=1e-5, rtol=0)
    with torch.no_grad():
        uncut = model.encode_text(open_clip.tokenize([LONG_A]))[0]
    assert (emb[0] - uncut).abs().max() > 0.1


def test_mdm_built_for_clip_takes_512_d_text_and_mdm_checkpoints(clip_file, encoder, tmp_path):
    """text.encoder=clip at MDM's size: embed_text is Linear(512 -> 512) as in the official
    checkpoints (clip_dim 512) and the plugin feeds it the CLIP features; an MDM-layout state
    dict with clip_model.* entries loads into it, and is refused by the MiniLM-sized model."""
    from layersync.assets import AssetError
    from layersync.config import resolve
    from layersync_motion.model import load_mdm_checkpoint
    from layersync_motion.plugin import encode_captions, plugin

    path, _ = clip_file
    clip = ["text.encoder=clip", f"text.clip_path={path}"]
    cfg = resolve(plugin, preset="mdm-humanml3d", overrides=clip)
    model = plugin.build_model(cfg)
    lin = model.embed_text
    assert (lin.in_features, lin.out_features) == (512, 512)
    text = encode_captions(cfg, SHORT[:2], "cpu")
    assert torch.equal(text, encoder(SHORT[:2]))
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, 40, 263), torch.tensor([3, 999]), text)
    assert out.shape == (2, 40, 263) and torch.isfinite(out).all()
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    state["clip_model.positional_embedding"] = torch.zeros(77, 512)  # as MDM saves it
    ckpt = tmp_path / "model000000001.pt"
    torch.save(state, ckpt)
    fresh = plugin.build_model(cfg)
    load_mdm_checkpoint(fresh, ckpt)
    assert torch.equal(fresh.embed_text.weight, state["embed_text.weight"])
    minilm = plugin.build_model(resolve(plugin, preset="mdm-humanml3d"))
    assert minilm.embed_text.in_features == 384
    with pytest.raises(AssetError, match=r"embed_text\.weight"):
        load_mdm_checkpoint(minilm, ckpt)


def test_missing_clip_file_is_one_line_before_the_run_directory(tmp_path):
    """check_assets names the key, the path and where the file comes from; `train` stops with
    that one `error:` line before creating the run directory."""
    from typer.testing import CliRunner

    from layersync.assets import AssetError
    from layersync.cli import app
    from layersync.config import resolve
    from layersync_motion.plugin import plugin

    gone = tmp_path / "ViT-B-32.pt"
    with pytest.raises(AssetError, match=r"needs text\.clip_path"):
        plugin.check_assets(resolve(plugin, overrides=["text.encoder=clip"]))
    clip = ["text.encoder=clip", f"text.clip_path={gone}"]
    with pytest.raises(AssetError) as err:
        plugin.check_assets(resolve(plugin, overrides=clip))
    assert str(err.value).startswith(f"text.clip_path: no such file: {gone} (OpenAI's CLIP")
    assert "openaipublic.azureedge.net/clip/models/" in str(err.value)
    done = CliRunner().invoke(
        app,
        ["train", "-m", "motion", *clip, f"run.out_dir={tmp_path / 'runs'}", "run.name=r"],
    )
    assert done.exit_code == 2, done.output
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: text.clip_path: no such file: {gone}")
    assert not (tmp_path / "runs").exists()


def test_torchscript_archives_and_other_files(clip_file, tmp_path):
    """OpenAI's released file is a TorchScript archive: its state dict is read (a scripted
    module stands in for it here; a non-weight attn_mask entry is dropped). A file that is
    not ViT-B/32 is refused naming the file."""
    import warnings

    from layersync.assets import AssetError
    from layersync_motion.clip_text import load_clip_state_dict, load_clip_text_model

    module = torch.nn.Linear(3, 2)
    module.register_buffer("attn_mask", torch.ones(2))
    scripted = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation
        torch.jit.script(module).save(str(scripted))
    state = load_clip_state_dict(scripted)
    assert sorted(state) == ["bias", "weight"]
    assert torch.equal(state["weight"], module.weight.detach())
    with pytest.raises(AssetError, match=rf"{scripted}: not a CLIP ViT-B/32 state dict"):
        load_clip_text_model(scripted)
    path, _ = clip_file
    b16 = dict(load_clip_state_dict(path))
    b16["visual.conv1.weight"] = torch.zeros(768, 3, 16, 16)
    torch.save(b16, tmp_path / "b16.pt")
    with pytest.raises(AssetError, match=r"not CLIP ViT-B/32 \(visual\.conv1\.weight is"):
        load_clip_text_model(tmp_path / "b16.pt")
