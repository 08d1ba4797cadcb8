"""lipsync.metrics, unit level (no Ray, no MLflow): image metrics against scikit-image, the
Fréchet distance against a direct eigen-decomposition, the FID Inception and SyncNet v2 weight
layouts loaded strictly, and the reference sync protocol against a literal re-statement of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from lipsync.errors import CheckpointError
from lipsync.metrics import face_quality, frechet_distance, frechet_distance_of_features, mouth_region, psnr, ssim
from lipsync.metrics.inception import FEATURE_DIM, FIDInceptionV3, load_fid_inception
from lipsync.metrics.sync import score_embeddings
from lipsync.metrics.syncnet_v2 import SyncNetV2, load_syncnet_v2, mfcc_features


def _known_images(seed=0, shape=(48, 40, 3)):
    rng = np.random.default_rng(seed)
    a = cv_smooth(rng.integers(0, 256, shape).astype(np.uint8))
    b = np.clip(a.astype(int) + rng.integers(-25, 26, shape), 0, 255).astype(np.uint8)
    return a, b


def cv_smooth(img):
    import cv2
    return cv2.GaussianBlur(img, (5, 5), 1.0)


def test_ssim_psnr_match_scikit_image_whole_face_and_mouth():
    a, b = _known_images()
    ref_ssim = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=255, channel_axis=-1)
    assert ssim(a, b) == pytest.approx(ref_ssim, abs=1e-9)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)
    # PSNR by hand on a known pair: every pixel off by 5 → 10·log10(255²/25).
    assert psnr(np.full((16, 16, 3), 100, np.uint8), np.full((16, 16, 3), 105, np.uint8)) == pytest.approx(
        10 * np.log10(255**2 / 25))
    assert ssim(a, a) == pytest.approx(1.0) and psnr(a, a) == float("inf")
    # The mouth region is the lower half; a change only in the upper half leaves it perfect.
    c = a.copy()
    c[:10] = 0
    q = face_quality(np.stack([c, c]), np.stack([a, a]))
    assert q["psnr_mouth"] == float("inf") and q["ssim_mouth"] == pytest.approx(1.0) and q["ssim"] < 0.99
    lower = a[24:]
    assert np.array_equal(mouth_region(a), lower)
    ref_mouth = structural_similarity(mouth_region(b), lower, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=255, channel_axis=-1)
    assert face_quality(b[None], a[None])["ssim_mouth"] == pytest.approx(ref_mouth, abs=1e-9)


def test_frechet_distance_matches_direct_eigen_computation():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(0.5, 1.3, size=(250, 6)) @ rng.normal(size=(6, 6))
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((S1 S2)^½) = Tr((S1^½ S2 S1^½)^½), computed with symmetric eigen-decompositions only.
    w, v = np.linalg.eigh(s1)
    s1_half = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(s1_half @ s2 @ s1_half)
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(inner, 0, None)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-8)
    assert frechet_distance_of_features(a, b) == pytest.approx(direct, rel=1e-8)
    assert frechet_distance_of_features(a, a) == pytest.approx(0.0, abs=1e-6)
    # 1-d check by formula: (μ1-μ2)² + (σ1-σ2)².
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)


def test_fid_inception_loads_pytorch_fid_layout_strictly(tmp_path):
    model = FIDInceptionV3()
    # torchvision's Inception3 has 27,161,264 parameters; without the auxiliary head (3,326,696)
    # and with pytorch-fid's 1008-way fc (+16,392) that is 23,850,960.
    assert sum(p.numel() for p in model.parameters()) == 23_850_960
    sd = model.state_dict()
    assert tuple(sd["Conv2d_1a_3x3.conv.weight"].shape) == (32, 3, 3, 3)
    assert tuple(sd["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape) == (384, 384, 3, 1)
    assert tuple(sd["Mixed_6e.branch7x7dbl_5.conv.weight"].shape) == (192, 192, 1, 7)
    assert tuple(sd["fc.weight"].shape) == (1008, 2048)
    gen = torch.Generator().manual_seed(0)
    # The file as pytorch-fid ships it: no num_batches_tracked buffers.
    state = {k: (torch.rand(v.shape, generator=gen) * 0.1 + (1.0 if k.endswith("running_var") else 0.0))
             for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    loaded = load_fid_inception(path)
    assert torch.equal(loaded.state_dict()["Mixed_5b.branch_pool.conv.weight"], state["Mixed_5b.branch_pool.conv.weight"])
    with torch.no_grad():
        feats = loaded(torch.rand(1, 3, 64, 64, generator=gen))
    assert feats.shape == (1, FEATURE_DIM) and torch.isfinite(feats).all()

    bad = dict(state)
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad\.pth: not a weight file for the FID Inception.*unexpected"):
        load_fid_inception(tmp_path / "bad.pth")


# The public syncnet_v2.model layout, written from the reference's table (§1), not from our model.
def public_syncnet_v2_layout() -> dict[str, tuple]:
    layout = {}
    convs = {"netcnnaud": {0: (64, 1, 3, 3), 4: (192, 64, 3, 3), 8: (384, 192, 3, 3), 11: (256, 384, 3, 3),
                           14: (256, 256, 3, 3), 18: (512, 256, 5, 4)},
             "netcnnlip": {0: (96, 3, 5, 7, 7), 4: (256, 96, 1, 5, 5), 8: (256, 256, 1, 3, 3),
                           11: (256, 256, 1, 3, 3), 14: (256, 256, 1, 3, 3), 18: (512, 256, 1, 6, 6)}}
    bns = {"netcnnaud": {1: 64, 5: 192, 9: 384, 12: 256, 15: 256, 19: 512},
           "netcnnlip": {1: 96, 5: 256, 9: 256, 12: 256, 15: 256, 19: 512}}
    for net in ("netcnnaud", "netfcaud", "netfclip", "netcnnlip"):
        if net.startswith("netfc"):
            layout |= {f"{net}.0.weight": (512, 512), f"{net}.0.bias": (512,), f"{net}.3.weight": (1024, 512),
                       f"{net}.3.bias": (1024,)}
            bn = {1: 512}
        else:
            for i, shape in convs[net].items():
                layout |= {f"{net}.{i}.weight": shape, f"{net}.{i}.bias": (shape[0],)}
            bn = bns[net]
        for i, c in bn.items():
            layout |= {f"{net}.{i}.{p}": (c,) for p in ("weight", "bias", "running_mean", "running_var")}
    return layout


def test_syncnet_v2_public_layout_loads_strictly_and_other_files_are_named_errors(tmp_path):
    layout = public_syncnet_v2_layout()
    ours = SyncNetV2().state_dict()
    assert sum(int(np.prod(s)) for k, s in layout.items() if "running" not in k) == 13_631_616
    assert {k for k in ours if not k.endswith("num_batches_tracked")} == set(layout)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.rand(s, generator=gen) * 0.05 + (1.0 if k.endswith("running_var") else 0.0)
             for k, s in layout.items()}
    path = tmp_path / "syncnet_v2.model"
    torch.save(state, path)
    model = load_syncnet_v2(path)
    assert torch.equal(model.netcnnlip[18].weight, state["netcnnlip.18.weight"])  # every key used
    with torch.no_grad():
        a = model.forward_aud(torch.randn(2, 1, 13, 20, generator=gen))
        v = model.forward_lip(torch.rand(2, 3, 5, 224, 224, generator=gen) * 255)
    assert a.shape == v.shape == (2, 1024) and torch.isfinite(a).all() and torch.isfinite(v).all()

    # Another model's file: our expert's weights, and a file with one key missing.
    from lipsync.models import SyncNet
    torch.save(SyncNet(width=0.0625).state_dict(), tmp_path / "lipsync_expert.pth")
    with pytest.raises(CheckpointError) as e:
        load_syncnet_v2(tmp_path / "lipsync_expert.pth")
    msg = str(e.value)
    assert "lipsync_expert.pth: not a weight file for SyncNet v2" in msg and "\n" not in msg
    missing = dict(state)
    missing.pop("netfcaud.3.bias")
    torch.save(missing, tmp_path / "partial.model")
    with pytest.raises(CheckpointError, match=r"partial\.model: .*1 missing keys \(e\.g\. netfcaud\.3\.bias\)"):
        load_syncnet_v2(tmp_path / "partial.model")
    (tmp_path / "notes.model").write_text("not weights")
    with pytest.raises(CheckpointError, match=r"notes\.model: not a SyncNet v2 weight file"):
        load_syncnet_v2(tmp_path / "notes.model")


def test_mfcc_front_end_is_python_speech_features_defaults():
    # 1 s of a 440 Hz tone: frame count 1 + ceil((16000-400)/160) = 99, 13 coefficients.
    t = np.arange(16000) / 16000
    feats = mfcc_features(0.5 * np.sin(2 * np.pi * 440 * t))
    assert feats.shape == (13, 99)
    # c0 is the natural log of the frame energy of the int16-scaled signal (appendEnergy=True).
    frame = np.round(0.5 * np.sin(2 * np.pi * 440 * t[:400]) * 32767)
    emph = np.append(frame[0], frame[1:] - 0.97 * frame[:-1])
    energy = np.sum(np.abs(np.fft.rfft(emph, 512)) ** 2 / 512)
    assert feats[0, 0] == pytest.approx(np.log(energy), rel=1e-4)


def reference_calc_pdist(feat1, feat2, vshift=15):
    """syncnet_python's calc_pdist + evaluate's reduction, restated literally."""
    win_size = vshift * 2 + 1
    feat2p = F.pad(feat2, (0, 0, vshift, vshift))
    dists = [F.pairwise_distance(feat1[[i], :].repeat(win_size, 1), feat2p[i:i + win_size, :])
             for i in range(len(feat1))]
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    return vshift - int(minidx), float(torch.median(mdist) - minval), float(minval)


@pytest.mark.parametrize("lead", [0, 5, -3])
def test_protocol_matches_reference_and_sign_convention(lead):
    gen = torch.Generator().manual_seed(3)
    n, d = 60, 32
    content = torch.randn(n + 20, d, generator=gen)
    video = content[10:10 + n]
    # Audio leading by `lead` frames: audio window j carries the sound of lip window j + lead.
    audio = content[10 + lead:10 + lead + n] + 0.05 * torch.randn(n, d, generator=gen)
    score = score_embeddings(video, audio, judge="test")
    offset, conf, minval = reference_calc_pdist(video, audio)
    assert (score.offset, score.lse_c, score.lse_d) == (offset, pytest.approx(conf, rel=1e-5),
                                                        pytest.approx(minval, rel=1e-5))
    assert score.offset == lead and score.frames == n and len(score.mdist) == 31


def test_streamed_scores_equal_the_whole_clip_computation():
    """``SyncJudge.score`` streams (a batch of frames at a time, distances as they complete); it
    gives exactly the whole-clip protocol: every window embedded at once, then ``score_embeddings``."""
    from lipsync.audio import melspectrogram
    from lipsync.metrics.sync import ExpertJudge
    from lipsync.models import SyncNet

    torch.manual_seed(0)
    judge = ExpertJudge(SyncNet(width=0.0625), batch_size=7)  # batches that do not divide the windows
    rng = np.random.default_rng(0)
    size = judge.input_size
    frames = rng.integers(0, 255, (48, size, size, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(44 * 640 + 300)).astype(np.float32)  # the audio ends first
    n = 44 - 5
    with torch.no_grad():
        video_emb, audio_emb = judge.embed_windows(frames, melspectrogram(audio), np.arange(n))
    whole = score_embeddings(video_emb, audio_emb, judge.name)
    streamed = judge.score(frames, audio)
    assert streamed.frames == whole.frames == n
    assert streamed.mdist == whole.mdist and (streamed.lse_d, streamed.offset) == (whole.lse_d, whole.offset)
