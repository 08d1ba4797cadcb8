"""The three networks against the reference tables, and their input/output conventions."""

import pytest
import torch
import torch.nn.functional as F

from lipsync.errors import ConfigError
from lipsync.models import (
    SyncNet,
    VisualQualityDiscriminator,
    Wav2Lip,
    generator_input,
    mask_lower_half,
    sync_probability,
    syncnet_face_input,
)
from lipsync.models.blocks import fold_time, unfold_time
from lipsync.models.discriminator import bce_with_logits
from official_keys import OFFICIAL_COUNTS, official_shapes, trainable_count

MODELS = {"expert": SyncNet, "wav2lip": Wav2Lip, "disc": VisualQualityDiscriminator}


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["expert", "wav2lip", "disc"])
def test_official_layout_matches_reference_tables(kind):
    with torch.device("meta"):  # shapes only; no memory for 36M parameters
        model = MODELS[kind]()
    expected = official_shapes(kind)
    n_tensors, n_params = OFFICIAL_COUNTS[kind]
    assert len(expected) == n_tensors and trainable_count(expected) == n_params  # the table itself

    got = _shapes(model)
    assert sorted(got) == sorted(expected), set(got) ^ set(expected)
    assert got == expected
    assert len(got) == n_tensors
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n_params


@pytest.mark.parametrize("kind", ["expert", "wav2lip", "disc"])
def test_official_state_dict_keeps_original_key_order_within_blocks(kind):
    with torch.device("meta"):
        keys = list(MODELS[kind]().state_dict())
    # official files list blocks in module order; ours must too (same names, same sequence)
    assert keys == list(official_shapes(kind))


def test_full_size_models_run_forward_with_official_shapes():
    torch.manual_seed(0)
    audio, face = torch.rand(2, 1, 80, 16), torch.rand(2, 6, 96, 96)
    with torch.no_grad():
        out = Wav2Lip().eval()(audio, face)
        a, v = SyncNet().eval()(audio, torch.rand(2, 15, 48, 96))
        d = VisualQualityDiscriminator().eval()(torch.rand(1, 3, 2, 96, 96))
    assert out.shape == (2, 3, 96, 96) and 0 <= out.min() and out.max() <= 1
    assert a.shape == v.shape == (2, 512)
    assert torch.allclose(a.norm(dim=1), torch.ones(2)) and torch.allclose(v.norm(dim=1), torch.ones(2))
    assert (a >= 0).all() and (v >= 0).all()  # embeddings come out of a ReLU
    assert d.shape == (2, 1) and ((0 <= d) & (d <= 1)).all()


@pytest.mark.parametrize("width,face_size", [(0.125, 96), (0.125, 128), (0.125, 192), (0.125, 256)])
def test_width_and_face_size_variants_forward(width, face_size):
    torch.manual_seed(0)
    s = face_size
    gen = Wav2Lip(width, face_size).eval()
    expert = SyncNet(width, face_size).eval()
    disc = VisualQualityDiscriminator(width, face_size).eval()
    with torch.no_grad():
        out = gen(torch.rand(1, 5, 1, 80, 16), torch.rand(1, 6, 5, s, s))
        single = gen(torch.rand(2, 1, 80, 16), torch.rand(2, 6, s, s))
        a, v = expert(torch.rand(1, 1, 80, 16), syncnet_face_input(out))
        d = disc(out)
    assert out.shape == (1, 3, 5, s, s) and single.shape == (2, 3, s, s)
    emb = max(4, round(512 * width))
    assert a.shape == v.shape == (1, emb)
    assert d.shape == (5, 1)
    # every face encoder ends in a 1x1 bottleneck whatever the size
    x = torch.rand(1, 6, s, s)
    for stage in gen.face_encoder_blocks:
        x = stage(x)
    assert x.shape[-2:] == (1, 1)
    assert expert.face_encoder(torch.rand(1, 15, s // 2, s)).shape[-2:] == (1, 1)


def test_narrow_model_is_much_smaller():
    full = sum(p.numel() for p in Wav2Lip().parameters())
    tiny = sum(p.numel() for p in Wav2Lip(width=0.125).parameters())
    assert tiny < full / 40


def test_a_channel_floor_widens_only_the_narrow_layers():
    def narrowest(model):
        convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        return min(m.out_channels for m in convs if m.out_channels != 3)  # the BGR output is 3 by design

    assert narrowest(Wav2Lip(width=0.125)) == 4  # the models' default floor
    floored = Wav2Lip(width=0.125, min_channels=8)
    assert narrowest(floored) == 8
    assert floored.face_encoder_blocks[0][0].conv_block[0].out_channels == 8  # full resolution: 16 · 0.125 = 2, floored to 8 (was 4)
    assert floored.face_encoder_blocks[-1][0].conv_block[0].out_channels == 64  # 512 · 0.125: above the floor
    out = floored(torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96))
    assert out.shape == (2, 3, 96, 96)
    for kind, model in MODELS.items():  # width 1 is the official model whatever the floor
        assert _shapes(model(min_channels=16)) == official_shapes(kind)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_bad_channel_floor_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="min_channels"):
        Wav2Lip(width=0.125, min_channels=bad)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
def test_bad_width_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="width"):
        Wav2Lip(width=bad)


@pytest.mark.parametrize("bad", [64, 100, 160, 97])
def test_bad_face_size_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="face_size"):
        SyncNet(face_size=bad)


def test_fold_time_is_time_major_like_the_original():
    x = torch.arange(2 * 3 * 5 * 4 * 4, dtype=torch.float32).reshape(2, 3, 5, 4, 4)  # B=2, T=5
    folded = fold_time(x, time_dim=2)
    original = torch.cat([x[:, :, t] for t in range(5)], dim=0)
    assert torch.equal(folded, original)
    assert torch.equal(unfold_time(folded, batch=2, time_dim=2), x)


def test_generator_window_equals_frame_by_frame():
    torch.manual_seed(0)
    gen = Wav2Lip(width=0.125).eval()
    audio, face = torch.rand(2, 3, 1, 80, 16), torch.rand(2, 6, 3, 96, 96)
    with torch.no_grad():
        window = gen(audio, face)
        frames = torch.stack([gen(audio[:, t], face[:, :, t]) for t in range(3)], dim=2)
    assert window.shape == (2, 3, 3, 96, 96)
    assert torch.allclose(window, frames, atol=1e-6)


def test_discriminator_sees_only_the_lower_half():
    torch.manual_seed(0)
    disc = VisualQualityDiscriminator(width=0.125).eval()
    frames = torch.rand(1, 3, 5, 96, 96)
    upper_changed, lower_changed = frames.clone(), frames.clone()
    upper_changed[..., :48, :] = torch.rand(1, 3, 5, 48, 96)
    lower_changed[..., 48:, :] = torch.rand(1, 3, 5, 48, 96)
    with torch.no_grad():
        base = disc(frames)
        assert torch.equal(disc(upper_changed), base)
        assert not torch.equal(disc(lower_changed), base)


def test_perceptual_loss_is_bce_against_real_on_the_input_device():
    torch.manual_seed(0)
    disc = VisualQualityDiscriminator(width=0.125)
    fake = torch.rand(2, 3, 5, 96, 96, requires_grad=True)
    loss = disc.perceptual_loss(fake)
    expected = F.binary_cross_entropy(disc(fake), torch.ones(10, 1))
    assert loss.device == fake.device and torch.allclose(loss, expected)
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_a_saturated_discriminator_still_learns():
    # Fakes scored p = 1 in float32: BCE of the sigmoid's output has no gradient left there
    # (the original's loss, and the demo's discriminator stuck for good at step 200); from
    # the score the gradient is p - 0 = 1.
    torch.manual_seed(0)
    disc = VisualQualityDiscriminator(width=0.125)
    with torch.no_grad():
        disc.binary_pred[0].bias.fill_(40.0)
    fake = torch.rand(1, 3, 5, 96, 96)
    assert torch.equal(disc(fake), torch.ones(5, 1))
    old = F.binary_cross_entropy(disc(fake).clamp(1e-6, 1 - 1e-6), torch.zeros(5, 1))
    old.backward()
    assert disc.binary_pred[0].bias.grad.abs().item() == 0
    disc.zero_grad()
    loss = bce_with_logits(disc(fake, logits=True), 0.0)
    assert loss.item() > 39
    loss.backward()
    assert disc.binary_pred[0].bias.grad.item() == pytest.approx(1.0)
    assert torch.allclose(torch.sigmoid(disc(fake, logits=True)), disc(fake))


def test_syncnet_face_input_stacks_lower_halves_frame_major():
    frames = torch.rand(2, 3, 5, 96, 96)
    x = syncnet_face_input(frames)
    assert x.shape == (2, 15, 48, 96)
    for t in range(5):
        for ch in range(3):  # f0 B,G,R, f1 B,G,R, …
            assert torch.equal(x[:, 3 * t + ch], frames[:, ch, t, 48:, :])


def test_sync_probability_is_the_cosine_in_unit_interval():
    torch.manual_seed(0)
    a, v = F.normalize(torch.rand(8, 64), dim=1), F.normalize(torch.rand(8, 64), dim=1)
    p = sync_probability(a, v)
    assert p.shape == (8,)
    assert torch.allclose(p, (a * v).sum(dim=1), atol=1e-6)
    assert ((0 <= p) & (p <= 1)).all()
    assert torch.allclose(sync_probability(a, a), torch.ones(8))


def test_generator_input_masks_the_target_lower_half_and_keeps_the_reference():
    target, reference = torch.rand(2, 3, 5, 96, 96), torch.rand(2, 3, 5, 96, 96)
    x = generator_input(target, reference)
    assert x.shape == (2, 6, 5, 96, 96)
    assert (x[:, :3, :, 48:] == 0).all()
    assert torch.equal(x[:, :3, :, :48], target[..., :48, :])
    assert torch.equal(x[:, 3:], reference)
    assert torch.equal(mask_lower_half(target)[..., :48, :], target[..., :48, :])
    assert target[..., 48:, :].abs().sum() > 0  # the input itself is not modified
