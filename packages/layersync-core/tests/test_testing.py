"""layersync.testing.check_plugin: every in-repo test plugin passes; deliberately broken plugins
fail with a message naming the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from layersync.plugin import LayerSyncDefaults, MetricSpec, depth_ratio_pairs
from layersync.testing import CHECKS, PluginCheckError, check_plugin

SEQ = ["data.size=16", "model.depth=4", "train.batch_size=4"]
IMG = ["data.size=16", "model.depth=4", "train.batch_size=4", "sampler.steps=2"]


@pytest.fixture
def toy_sequence(toy_plugins: Path):
    import toy_sequence

    return toy_sequence


@pytest.fixture
def toy_image(toy_plugins: Path):
    import layersync_toy_image.plugin as toy_image

    return toy_image


def test_toy_sequence_passes(toy_sequence, tmp_path):
    report = check_plugin(toy_sequence.plugin, SEQ, tmp_dir=tmp_path)
    assert report.passed == [c for c in CHECKS if c != "loss_at"]
    assert report.skipped == {"loss_at": "the objective has no loss_at (optional)"}


def test_toy_sequence_reports_core_time(toy_sequence):
    """Step s of T is reported as t = 1 - s/T (t = 1 clean): step 0 (least noise) is t = 1."""
    objective = toy_sequence.X0Diffusion()
    seen = {}

    def model(x, steps, y, mask):
        seen["steps"] = steps
        return torch.zeros_like(x)

    batch = toy_sequence.plugin.collate([toy_sequence.SineDataset(8, 0)[i] for i in range(8)])
    out = objective(model, batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.t, 1 - seen["steps"].float() / toy_sequence.DIFFUSION_STEPS)


def test_toy_image_template_passes_by_name(toy_image, tmp_path):
    report = check_plugin("toy-image", IMG, tmp_dir=tmp_path, skip=["train_resume"])
    assert "gradient" in report.passed and "evaluate" in report.passed
    assert report.skipped["train_resume"] == "skipped by the caller"


# -----------------------------------------------------------------------------
# Broken plugins


def broken(base: type, **attrs: Any) -> Any:
    return type(f"Broken{base.__name__}", (base,), attrs)()


def _failure(plugin, overrides, tmp_path, skip=("train_resume", "samples", "evaluate")) -> str:
    with pytest.raises(PluginCheckError) as err:
        check_plugin(plugin, overrides, tmp_dir=tmp_path, skip=list(skip))
    return str(err.value)


def test_missing_member_is_named(toy_sequence, tmp_path):
    from layersync.plugin import Modality

    members = dict(vars(type(toy_sequence.plugin)))
    del members["config_model"]  # forgot to declare its config sections
    incomplete = type("Incomplete", (Modality,), members)()
    msg = _failure(incomplete, SEQ, tmp_path)
    assert "members: missing member(s): config_model" in msg


class LooseData(BaseModel):  # no extra="forbid": a typo would be silently ignored
    size: int = 16


def test_config_section_allowing_extra_keys_is_named(toy_sequence, tmp_path):
    base = toy_sequence.ToySequenceConfig

    class LooseConfig(base):
        model_config = ConfigDict(extra="forbid")
        data: LooseData = LooseData()

    msg = _failure(broken(type(toy_sequence.plugin), config_model=LooseConfig), SEQ, tmp_path)
    assert "config section 'data' (LooseData) allows unknown keys" in msg
    assert "accepted the unknown key data.no_such_key_xyz" in msg


def test_objective_calling_the_model_twice_is_named(toy_sequence, tmp_path):
    inner = toy_sequence.X0Diffusion()

    def twice(model, batch, generator=None):
        out = inner(model, batch, generator)
        model(batch["x"], torch.zeros(len(batch["x"]), dtype=torch.long), batch["y"], batch["mask"])
        return out

    plugin = broken(type(toy_sequence.plugin), build_objective=lambda self, cfg: twice)
    msg = _failure(plugin, SEQ, tmp_path)
    assert "objective: the objective called the model 2 times for one batch" in msg


def test_wrong_time_convention_and_undeclared_metrics(toy_sequence, tmp_path):
    inner = toy_sequence.X0Diffusion()

    def raw_steps(model, batch, generator=None):
        out = inner(model, batch, generator)
        out.t = (1 - out.t) * toy_sequence.DIFFUSION_STEPS  # the raw step number
        return out

    plugin = broken(type(toy_sequence.plugin), build_objective=lambda self, cfg: raw_steps)
    assert "ObjectiveOutput.t must lie in [0, 1]" in _failure(plugin, SEQ, tmp_path)

    undeclared = broken(type(toy_sequence.plugin), metrics={})
    msg = _failure(undeclared, SEQ, tmp_path, skip=("train_resume",))
    assert "evaluate returned ['template_mse'] but Modality.metrics_for(cfg) declares []" in msg
    two = {"a": MetricSpec(primary=True), "b": MetricSpec(primary=True)}
    msg = _failure(broken(type(toy_sequence.plugin), metrics=two), SEQ, tmp_path)
    assert "exactly one metric primary=True, found ['a', 'b']" in msg


def test_teacher_gradient_and_unresumable_data_are_named(toy_sequence, tmp_path):
    from layersync import loss as loss_module

    plugin = toy_sequence.plugin

    real = loss_module._cosine_parts

    def no_stop_gradient(student, teacher, *args, **kwargs):
        """The reference code's bug: the same value, but gradient also flows into the teacher."""
        cos, *rest = real(student, teacher, *args, **kwargs)
        leak = teacher.float().sum(-1)
        return (cos + leak - leak.detach(), *rest)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loss_module, "_cosine_parts", no_stop_gradient)
        msg = _failure(plugin, SEQ, tmp_path / "a")
    assert "gradient: teacher block 'seqTransEncoder.layers.3'" in msg

    class Unseeded(toy_sequence.SineDataset):  # a private generator no checkpoint can restore
        def __getitem__(self, i):
            if not hasattr(self, "g"):
                self.g = torch.Generator().manual_seed(0)
            item = super().__getitem__(i)
            item["x"] = item["x"] + 0.1 * torch.randn(item["x"].shape, generator=self.g)
            return item

    bad = broken(
        type(plugin),
        build_dataset=lambda self, cfg, split: Unseeded(cfg.data.size, cfg.run.seed),
    )
    msg = _failure(bad, SEQ, tmp_path / "b", skip=("samples", "evaluate"))
    assert "train_resume: 2 steps + resume + 2 steps differ from 4 straight steps" in msg


def test_loss_at_must_be_deterministic(toy_sequence, tmp_path):
    class WithLossAt(toy_sequence.X0Diffusion):
        def noise_like(self, batch, generator):
            return torch.randn(batch["x"].shape, generator=generator)

        def loss_at(self, model, batch, t, noise):
            t = t + 1e-3 * torch.rand(t.shape)  # a hidden draw: not common random numbers
            steps = ((1 - t) * toy_sequence.DIFFUSION_STEPS).long().clamp(0, 49)
            ab = self.ab[steps].view(-1, 1, 1)
            pred = model(
                ab.sqrt() * batch["x"] + (1 - ab).sqrt() * noise, steps, batch["y"], batch["mask"]
            )
            loss = ((pred - batch["x"]) ** 2).mean((1, 2)) + t
            return toy_sequence.ObjectiveOutput(loss=loss, t=t)

    plugin = broken(type(toy_sequence.plugin), build_objective=lambda self, cfg: WithLossAt())
    assert "loss_at gave different losses for the same t and noise" in _failure(
        plugin, SEQ, tmp_path
    )


# -----------------------------------------------------------------------------
# The contract's documented defaults


class NoDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")


def test_default_block_names_layersync_and_write_samples(toy_image, tmp_path):
    from layersync.plugin import Modality

    class Minimal(Modality):  # only the required members; the defaults fill in the rest
        name = "minimal"
        config_model = NoDefaults
        presets = {"demo": {}}

        def build_dataset(self, cfg, split):
            return []

        def build_model(self, cfg):
            return toy_image.TinyDiT(16, 12, 2)

        def build_objective(self, cfg):
            return None

        def sample(self, model, cfg, n, condition, generator):
            return torch.zeros(n, 2)

    plugin = Minimal()
    model = plugin.build_model(None)
    assert plugin.block_names(None, model) == [f"blocks.{i}" for i in range(12)]
    assert plugin.default_layersync(None) == LayerSyncDefaults(pairs="3<-7", weight=0.2)
    assert depth_ratio_pairs(28) == "8<-16" and depth_ratio_pairs(12) == "3<-7"
    # at least two blocks apart where the depth allows (no heuristic warning on the default)
    assert [depth_ratio_pairs(d) for d in (2, 3, 4, 6)] == ["1<-2", "1<-3", "1<-3", "2<-4"]
    state = torch.random.get_rng_state()
    plugin.default_layersync(None)  # counting the blocks draws no random numbers
    assert torch.equal(state, torch.random.get_rng_state())
    paths = plugin.write_samples(torch.arange(6.0).reshape(3, 2), tmp_path, None, prefix="s")
    assert [p.name for p in paths] == ["s-0000.npy", "s-0001.npy", "s-0002.npy"]
    import numpy as np

    assert np.load(paths[2]).tolist() == [4.0, 5.0]
    with pytest.raises(NotImplementedError, match="has no `blocks` ModuleList"):
        plugin.block_names(None, torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"override Modality\.write_samples"):
        plugin.write_samples({"a": 1}, tmp_path, None)


def test_assert_tree_equal_names_the_first_difference():
    import pytest
    import torch

    from layersync.testing import assert_tree_equal

    a = {"state": {0: {"exp_avg": torch.ones(3)}}, "step": [1, 2]}
    assert_tree_equal(a, {"state": {0: {"exp_avg": torch.ones(3)}}, "step": [1, 2]})
    with pytest.raises(AssertionError, match=r"tensors differ at \.state\.0\.exp_avg"):
        assert_tree_equal(a, {"state": {0: {"exp_avg": torch.zeros(3)}}, "step": [1, 2]})
    with pytest.raises(AssertionError, match=r"2 != 3 at \.step\[1\]"):
        assert_tree_equal(a, {"state": {0: {"exp_avg": torch.ones(3)}}, "step": [1, 3]})
    with pytest.raises(AssertionError, match="tensors differ"):  # a tensor against a number
        assert_tree_equal(torch.ones(1), 1.0)


def test_every_check_has_one_runner_in_order():
    from layersync.conformance import NEEDS, RUNNERS

    assert tuple(RUNNERS) == CHECKS
    assert set(NEEDS) <= set(CHECKS) and all(set(n) <= set(CHECKS) for n in NEEDS.values())
