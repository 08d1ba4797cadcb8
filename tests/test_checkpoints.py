"""Checkpoint loading/saving: official layouts (built from the reference key tables), our format, bad files."""

import json
import struct
import sys
import types

import pytest
import torch

from lipsync.checkpoints import ModelConfig, load_checkpoint, load_model, save_checkpoint
from lipsync.errors import CheckpointError, ConfigError
from lipsync.models import SyncNet, VisualQualityDiscriminator, Wav2Lip
from official_keys import fake_official_state_dict

MODELS = {"expert": SyncNet, "wav2lip": Wav2Lip, "disc": VisualQualityDiscriminator}


def _inputs(kind, size=96):
    gen = torch.Generator().manual_seed(1)
    audio = torch.rand(1, 1, 80, 16, generator=gen)
    if kind == "expert":
        return audio, torch.rand(1, 15, size // 2, size, generator=gen)
    if kind == "wav2lip":
        return audio, torch.rand(1, 6, size, size, generator=gen)
    return (torch.rand(1, 3, 2, size, size, generator=gen),)


def _outputs(model, kind, size=96):
    with torch.no_grad():
        out = model.eval()(*_inputs(kind, size))
    return out if isinstance(out, tuple) else (out,)


def _direct(kind, state_dict, width=1.0, size=96):
    """The reference: the same weights loaded straight into a freshly built model."""
    model = MODELS[kind](width, size)
    model.load_state_dict(state_dict, strict=True)
    return model


def _assert_same_model(loaded, reference, kind, size=96, skip=()):
    for key, value in reference.state_dict().items():
        if key not in skip:
            assert torch.equal(loaded.state_dict()[key], value), key
    for a, b in zip(_outputs(loaded, kind, size), _outputs(reference, kind, size)):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def official_expert():
    return fake_official_state_dict("expert", seed=0)


def _official_file(tmp_path, state_dict, fmt):
    path = tmp_path / "lipsync_expert.pth"
    if fmt == "no-batch-counts":  # torch < 0.4.1 BatchNorm had no num_batches_tracked
        state_dict = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    if fmt.startswith("module"):
        state_dict = {f"module.{k}": v for k, v in state_dict.items()}
    legacy = fmt == "dict-legacy"  # the 2020 files predate torch's zip serialisation
    if fmt in ("raw", "module-raw"):
        obj = state_dict
    else:
        obj = {"state_dict": state_dict, "optimizer": None, "global_step": 700_000, "global_epoch": 3}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("fmt", ["dict", "dict-legacy", "raw", "module-dict", "module-raw", "no-batch-counts"])
def test_official_expert_formats_load_strictly_with_identical_outputs(tmp_path, official_expert, fmt):
    path = _official_file(tmp_path, official_expert, fmt)
    ckpt = load_checkpoint(path, kind="expert")
    assert ckpt.config.kind == "expert" and ckpt.config.width == 1.0 and ckpt.config.face_size == 96
    assert not ckpt.model.training
    counts = [k for k in official_expert if k.endswith("num_batches_tracked")]
    skip = counts if fmt == "no-batch-counts" else ()  # absent counts start at 0; they never affect outputs
    _assert_same_model(ckpt.model, _direct("expert", official_expert), "expert", skip=skip)
    if fmt.endswith("dict"):
        assert ckpt.source_format == "original"
        assert ckpt.train_state == {"optimizer": None, "global_step": 700_000, "global_epoch": 3}


@pytest.mark.parametrize("kind", ["wav2lip", "disc"])
def test_official_generator_and_discriminator_load_with_kind_inferred(tmp_path, kind):
    state_dict = fake_official_state_dict(kind, seed=2)
    path = tmp_path / f"{kind}.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state_dict.items()}, "optimizer": None,
                "global_step": 258_000, "global_epoch": 88}, path)
    model, config = load_model(path)  # kind=None: found from the keys
    assert config.kind == kind and config.width == 1.0 and config.face_size == 96
    _assert_same_model(model, _direct(kind, state_dict), kind)


def test_in_memory_checkpoint_dict_loads(official_expert):
    model, config = load_model({"state_dict": official_expert, "optimizer": None}, kind="expert")
    assert config.kind == "expert"
    _assert_same_model(model, _direct("expert", official_expert), "expert")


def test_full_module_pickle_needs_trust(tmp_path, official_expert):
    path = tmp_path / "Wav2Lip-SD-NOGAN.pt"
    torch.save(_direct("expert", official_expert), path)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    message = str(err.value)
    assert str(path) in message and "pickled" in message and "trust=True" in message
    model, config = load_model(path, trust=True)
    assert config.kind == "expert"
    _assert_same_model(model, _direct("expert", official_expert), "expert")


def test_trusted_pickle_of_classes_we_do_not_have(tmp_path, monkeypatch):
    """The re-uploads pickle the original repo's classes (models.wav2lip.Wav2Lip …), which
    are not importable here; trusted loading still recovers the weights."""
    foreign = types.ModuleType("models")

    class Wav2Lip_original(Wav2Lip):  # noqa: N801 — the original's naming
        pass

    Wav2Lip_original.__module__ = "models"
    Wav2Lip_original.__qualname__ = "Wav2Lip_original"
    foreign.Wav2Lip_original = Wav2Lip_original
    monkeypatch.setitem(sys.modules, "models", foreign)
    torch.manual_seed(0)
    original = Wav2Lip_original(width=0.125)
    path = tmp_path / "foreign.pt"
    torch.save(original, path)
    monkeypatch.delitem(sys.modules, "models")

    with pytest.raises(CheckpointError, match="models.Wav2Lip_original"):
        load_model(path)
    model, config = load_model(path, kind="wav2lip", trust=True)
    assert (config.kind, config.width) == ("wav2lip", 0.125)
    _assert_same_model(model, _direct("wav2lip", original.state_dict(), width=0.125), "wav2lip")


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_torchscript_needs_trust(tmp_path):
    torch.manual_seed(0)
    expert = SyncNet(width=0.125).eval()
    path = tmp_path / "expert_scripted.pt"
    torch.jit.trace(expert, _inputs("expert"), check_trace=False).save(str(path))
    with pytest.raises(CheckpointError, match="TorchScript.*trust=True"):
        load_model(path)
    model, config = load_model(path, trust=True)
    assert (config.kind, config.width) == ("expert", 0.125)
    _assert_same_model(model, expert, "expert")


def _trained_tiny_generator():
    torch.manual_seed(0)
    model = Wav2Lip(width=0.125)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.999))
    for _ in range(2):
        out = model(torch.rand(2, 1, 1, 80, 16), torch.rand(2, 6, 1, 96, 96))
        out.mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _one_more_step(model, opt):
    torch.manual_seed(123)
    model.train()
    model(torch.rand(2, 1, 80, 16), torch.rand(2, 6, 96, 96)).mean().backward()
    opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_our_checkpoint_round_trips_bit_exactly(tmp_path):
    model, opt = _trained_tiny_generator()
    config = ModelConfig(kind="wav2lip", width=0.125, face_size=96, fps=30.0, extra={"note": "tiny"})
    train_state = {
        "optimizer": opt.state_dict(),
        "global_step": 2,
        "global_epoch": 0,
        "sync_weight": 0.03,
        "history": [(1, 0.69), (2, 0.5)],
        "rng": torch.get_rng_state(),
    }
    path = save_checkpoint(tmp_path / "gen.safetensors", model, config, train_state)

    ckpt = load_checkpoint(path, kind="wav2lip")
    assert ckpt.source_format == "lipsync" and ckpt.config == config
    for key, value in model.state_dict().items():
        got = ckpt.model.state_dict()[key]
        assert got.dtype == value.dtype and torch.equal(got, value), key
    state = ckpt.train_state
    assert state["global_step"] == 2 and state["sync_weight"] == 0.03
    assert state["history"] == [(1, 0.69), (2, 0.5)] and torch.equal(state["rng"], train_state["rng"])
    saved_opt = opt.state_dict()
    assert state["optimizer"]["param_groups"] == saved_opt["param_groups"]  # betas stay a tuple, ints stay ints
    assert state["optimizer"]["state"].keys() == saved_opt["state"].keys()
    for index, slots in saved_opt["state"].items():
        for name, value in slots.items():
            assert torch.equal(state["optimizer"]["state"][index][name], value)

    # resuming gives exactly the step the original run would have taken
    resumed = ckpt.model
    resumed_opt = torch.optim.Adam(resumed.parameters(), lr=1e-4, betas=(0.5, 0.999))
    resumed_opt.load_state_dict(state["optimizer"])
    expected, got = _one_more_step(model, opt), _one_more_step(resumed, resumed_opt)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_the_channel_floor_travels_with_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = Wav2Lip(width=0.125, min_channels=8).eval()
    config = ModelConfig(kind="wav2lip", width=0.125, min_channels=8)
    loaded, got = load_model(save_checkpoint(tmp_path / "g.safetensors", model, config), kind="wav2lip")
    assert got.min_channels == 8 and loaded.min_channels == 8
    face, audio = torch.rand(1, 6, 96, 96), torch.randn(1, 1, 80, 16)
    assert torch.equal(loaded(audio, face), model(audio, face))
    with pytest.raises(ConfigError, match="min_channels 4 but the model was built with 8"):
        save_checkpoint(tmp_path / "bad.safetensors", model, ModelConfig(kind="wav2lip", width=0.125))
    # Files written before the floor was stored were built at the old floor, 4.
    assert ModelConfig.from_dict({"kind": "wav2lip", "width": 0.125}).min_channels == 4


def test_our_checkpoint_is_a_plain_safetensors_file(tmp_path):
    from safetensors import safe_open

    path = save_checkpoint(tmp_path / "x.safetensors", SyncNet(width=0.125), ModelConfig(kind="expert", width=0.125))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["format"] == "lipsync-checkpoint" and json.loads(meta["config"])["kind"] == "expert"
    assert "face_encoder.0.conv_block.0.weight" in {k.removeprefix("model.") for k in keys}
    # a directory holding it as model.safetensors loads too (how an MLflow artifact dir looks)
    (tmp_path / "artifact").mkdir()
    path.rename(tmp_path / "artifact" / "model.safetensors")
    assert load_model(tmp_path / "artifact", kind="expert")[1].width == 0.125


def test_original_layout_is_what_the_original_code_reads(tmp_path):
    """The original's Wav2Lip has one width, the full one: a file in the original layout must
    hold exactly that model's state_dict (the reference's layer table, key for key, shape for
    shape) and an Adam state whose i-th entry fits its i-th parameter (the optimizer the original
    builds over model.parameters(); load_state_dict matches by position, not by name)."""
    from official_keys import official_shapes

    official = official_shapes("wav2lip")
    weights = fake_official_state_dict("wav2lip", seed=3)
    with torch.device("meta"):  # no 36M-parameter init: the weights are assigned below
        model = Wav2Lip(width=1.0)
    model.load_state_dict(weights, assign=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.999))
    # Moments for every parameter, as after a step, each holding its parameter's position so the
    # file says which is which. Stride-0 views: the shapes are what is checked, and a real Adam
    # step over 36M values (and 290 MB more to write) would cost this test seconds.
    for i, p in enumerate(model.parameters()):
        moment = torch.tensor(float(i)).expand_as(p)
        opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": moment, "exp_avg_sq": moment}
    config = ModelConfig(kind="wav2lip", width=1.0)
    path = save_checkpoint(tmp_path / "checkpoint_step000000002.pth", model, config,
                           {"optimizer": opt.state_dict(), "global_step": 2, "global_epoch": 1,
                            "sync_weight": 0.01}, layout="original")

    raw = torch.load(path, weights_only=True)
    assert {"state_dict", "optimizer", "global_step", "global_epoch"} <= set(raw)
    assert raw["global_step"] == 2 and raw["global_epoch"] == 1
    # What the original's load_checkpoint reads (after stripping `module.`): its own keys and shapes.
    saved = {k.replace("module.", ""): v for k, v in raw["state_dict"].items()}
    assert {k: tuple(v.shape) for k, v in saved.items()} == official
    assert all(v.dtype == (torch.long if k.endswith("num_batches_tracked") else torch.float32)
               for k, v in saved.items())
    assert all(torch.equal(saved[k], weights[k]) for k in official)
    # The Adam state, by position, against the original's parameters in its registration order.
    trainable = [shape for key, shape in official.items()
                 if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    (group,) = raw["optimizer"]["param_groups"]
    assert group["params"] == list(range(len(trainable))) and group["betas"] == (0.5, 0.999)
    state = raw["optimizer"]["state"]
    assert [tuple(state[i]["exp_avg"].shape) for i in group["params"]] == trainable
    assert all(float(state[i]["exp_avg"].flatten()[0]) == i for i in group["params"])
    # Ours beside it, under keys the original ignores.
    assert raw["lipsync_config"] == config.to_dict() and raw["lipsync_train_state"] == {"sync_weight": 0.01}

    # Our loader reads the layout back, config and training state included (a tiny width is
    # enough for that: building the full model again would only cost time).
    tiny, _ = _trained_tiny_generator()
    tiny_config = ModelConfig(kind="wav2lip", width=0.125)
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "tiny.pth", tiny, tiny_config,
                                           {"global_step": 2, "sync_weight": 0.01}, layout="original"))
    assert ckpt.source_format == "original" and ckpt.config == tiny_config
    assert ckpt.train_state["global_step"] == 2 and ckpt.train_state["sync_weight"] == 0.01
    _assert_same_model(ckpt.model, tiny, "wav2lip")


def test_wrong_kind_names_the_file_and_both_kinds(tmp_path, official_expert):
    path = _official_file(tmp_path, official_expert, "dict")
    with pytest.raises(CheckpointError) as err:
        load_model(path, kind="wav2lip")
    message = str(err.value)
    assert str(path) in message and "'expert'" in message and "'wav2lip'" in message
    ours = save_checkpoint(tmp_path / "disc.safetensors", VisualQualityDiscriminator(width=0.125),
                           ModelConfig(kind="disc", width=0.125))
    with pytest.raises(CheckpointError, match="'disc'.*'expert'"):
        load_model(ours, kind="expert")


@pytest.mark.parametrize("kind,width,size", [("wav2lip", 0.125, 192), ("expert", 0.125, 256),
                                             ("disc", 0.125, 128), ("wav2lip", 0.25, 256)])
def test_architecture_is_inferred_from_a_bare_state_dict(tmp_path, kind, width, size):
    torch.manual_seed(0)
    model = MODELS[kind](width, size)
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    loaded, config = load_model(path)
    assert (config.kind, config.width, config.face_size) == (kind, width, size)
    _assert_same_model(loaded, model, kind, size)


def test_saving_with_a_config_of_another_kind_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="wav2lip"):
        save_checkpoint(tmp_path / "x.safetensors", SyncNet(width=0.125), ModelConfig(kind="wav2lip", width=0.125))
    assert not list(tmp_path.iterdir())


def test_config_dict_round_trip_keeps_unknown_keys():
    config = ModelConfig(kind="expert", width=0.5, face_size=192)
    assert ModelConfig.from_dict(config.to_dict()) == config
    newer = ModelConfig.from_dict({**config.to_dict(), "future_field": 1})
    assert newer.extra["future_field"] == 1 and newer.width == 0.5
    with pytest.raises(ConfigError):
        ModelConfig(kind="vae")


def _bad_file(tmp_path, what):
    path = tmp_path / f"{what}.pth"
    if what == "empty":
        path.write_bytes(b"")
    elif what == "text":
        path.write_text("this is not a checkpoint\n")
    elif what == "truncated":
        torch.save({"state_dict": SyncNet(width=0.125).state_dict()}, path)
        path.write_bytes(path.read_bytes()[:5000])
    elif what == "truncated-safetensors":
        path = save_checkpoint(tmp_path / "t.safetensors", SyncNet(width=0.125), ModelConfig(kind="expert", width=0.125))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif what == "not-a-model":
        torch.save({"epoch": 3, "lr": 0.1}, path)
    elif what == "unknown-weights":
        torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    elif what == "missing-key":
        sd = fake_official_state_dict("expert")
        del sd["audio_encoder.3.conv_block.0.weight"]
        torch.save({"state_dict": sd}, path)
    elif what == "safetensors-garbage":
        header = b'{"a": 1}'
        path.write_bytes(struct.pack("<Q", len(header)) + header + b"xx")
    elif what == "empty-dir":
        path = tmp_path / "emptydir"
        path.mkdir()
    return path


@pytest.mark.parametrize("what,needle", [
    ("missing", "not found"), ("empty", "empty"), ("text", "not a checkpoint"),
    ("truncated", "corrupt"), ("truncated-safetensors", "corrupt"), ("not-a-model", "state_dict"),
    ("unknown-weights", "none of the known models"), ("missing-key", "missing"),
    ("safetensors-garbage", "corrupt"), ("empty-dir", "directory"),
])
def test_bad_files_give_one_clear_error_naming_the_file(tmp_path, what, needle):
    path = tmp_path / "missing.pth" if what == "missing" else _bad_file(tmp_path, what)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert str(path) in str(err.value) and needle in str(err.value)
    assert "\n" not in str(err.value)
