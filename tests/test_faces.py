"""lipsync.faces: real dlib and S3FD (face-alignment) detectors, tracking, smoothing, crops."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from lipsync.errors import CheckpointError, ConfigError, NoFaceError
from lipsync.faces import (
    Detection,
    DlibHogDetector,
    S3FDDetector,
    box_jitter,
    crop_faces,
    interpolate_missing,
    keyframe_indices,
    make_detector,
    padded_boxes,
    s3fd_cache_path,
    smooth_boxes,
    track_faces,
    track_keyframes,
)

# dlib's box on the full 512x512 astronaut (checked by eye: brows to lower lip/chin).
ASTRONAUT_FACE = np.array([179.0, 83.0, 267.0, 171.0])
HEAD = (slice(20, 260), slice(110, 340))  # the astronaut's head and shoulders


def iou(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def background(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(60, 160, width, dtype=np.float32)[None, :, None]
    img = np.broadcast_to(ramp, (height, width, 3)) + rng.normal(0, 6, (height, width, 3))
    return np.clip(img * np.array([1.0, 0.9, 0.8]), 0, 255).astype(np.uint8)


def astronaut_frame(face_px: float, at=(40, 30), frame=(360, 480), seed=0):
    """A talking-head frame: the astronaut's head pasted so her face box is ~face_px wide.

    Returns (frame BGR, expected face box)."""
    bgr = skimage.data.astronaut()[:, :, ::-1]
    head = bgr[HEAD]
    scale = face_px / (ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0])
    head = cv2.resize(head, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    img = background(*frame, seed=seed)
    x, y = at
    h, w = head.shape[:2]
    img[y : y + h, x : x + w] = head
    face = (ASTRONAUT_FACE - [HEAD[1].start, HEAD[0].start] * 2) * scale + [x, y, x, y]
    return img, face


def lfw_frame(index: int, face_px: int, at=(70, 50), frame=(240, 320)):
    gray = (skimage.data.lfw_subset()[index] * 255).astype(np.uint8)
    face = cv2.resize(gray, (face_px, face_px), interpolation=cv2.INTER_CUBIC)
    img = background(*frame, seed=index)
    x, y = at
    img[y : y + face_px, x : x + face_px] = face[:, :, None] * np.array([0.8, 0.9, 1.0])
    return img, np.array([x, y, x + face_px, y + face_px], float)


# ---------------------------------------------------------------- dlib


@pytest.mark.parametrize("face_px", [60, 80, 100, 120])
def test_dlib_finds_astronaut_face_at_talking_head_sizes(face_px):
    img, expected = astronaut_frame(face_px)
    dets = DlibHogDetector().detect([img])[0]
    assert len(dets) == 1
    assert iou(dets[0].box, expected) > 0.6, (dets[0].box, expected)
    assert dets[0].score > 0


def test_dlib_finds_scaled_up_lfw_faces():
    found = 0
    for index in range(12):  # the first 100 images of lfw_subset are faces
        img, pasted = lfw_frame(index, face_px=100)
        dets = DlibHogDetector().detect([img])[0]
        found += any(iou(d.box, pasted) > 0.4 for d in dets)
    assert found >= 10


def test_small_faces_need_upsampling_or_less_downscaling():
    img, expected = astronaut_frame(100, frame=(720, 1280), at=(600, 300))
    # At downscale_to=480 the face is ~38 px in the copy: too small for upsample 0 ...
    assert DlibHogDetector(downscale_to=480).detect([img]) == [[]]
    # ... but one upsampling step finds it, and the box maps back to full-frame pixels.
    dets = DlibHogDetector(downscale_to=480, upsample=1).detect([img])[0]
    assert len(dets) == 1 and iou(dets[0].box, expected) > 0.5
    dets = DlibHogDetector(downscale_to=960).detect([img])[0]
    assert len(dets) == 1 and iou(dets[0].box, expected) > 0.6


def test_batched_detection_equals_per_frame():
    frames = [astronaut_frame(px, at=(20 + px // 3, 30), seed=px)[0] for px in (70, 90, 110)]
    frames.append(lfw_frame(3, 100)[0])  # a different size in the same call
    frames.append(background(360, 480))  # no face
    detector = DlibHogDetector(downscale_to=400)
    batched = detector.detect(frames)
    single = [detector.detect([f])[0] for f in frames]
    assert batched == single
    assert [len(d) for d in batched] == [1, 1, 1, 1, 0]
    # A (N, H, W, 3) array works like a list of frames.
    assert detector.detect(np.stack(frames[:3])) == batched[:3]


def test_detectors_pickle_for_worker_processes(s3fd_torch_home):
    # Ray Data ships detector objects to workers; both must survive pickling.
    # A copy must detect exactly what the original detects.
    img, _ = astronaut_frame(100)
    dlib = DlibHogDetector(upsample=1)
    dlib_copy = pickle.loads(pickle.dumps(dlib))
    assert dlib_copy.upsample == 1
    expected = dlib.detect([img])
    assert len(expected[0]) == 1 and dlib_copy.detect([img]) == expected
    s3fd = S3FDDetector("cpu", weights_path=s3fd_torch_home[1])
    s3fd_copy = pickle.loads(pickle.dumps(s3fd))
    frames = [background(64, 64), background(96, 128, seed=1)]
    expected = s3fd.detect(frames)
    assert len(expected) == 2 and len(expected[0]) > 10  # random weights: many boxes, all compared
    assert s3fd_copy.detect(frames) == expected


def test_detector_rejects_bad_frames():
    with pytest.raises(ValueError, match="frame 1"):
        DlibHogDetector().detect([background(50, 50), np.zeros((50, 50), np.uint8)])
    with pytest.raises(ConfigError):
        DlibHogDetector(downscale_to=8)


# ---------------------------------------------------------------- S3FD (face-alignment)


@pytest.fixture(scope="module")
def s3fd_torch_home(tmp_path_factory):
    """A TORCH_HOME holding randomly initialised S3FD weights under face-alignment's file name."""
    from face_alignment.detection.sfd.net_s3fd import s3fd

    home = tmp_path_factory.mktemp("torch_home")
    target = home / "hub" / "checkpoints" / "s3fd-619a316812.pth"
    target.parent.mkdir(parents=True)
    torch.manual_seed(0)
    state = s3fd().state_dict()
    torch.save(state, target)
    return home, target, state


def test_s3fd_loads_weights_from_torch_home_cache(s3fd_torch_home, monkeypatch):
    home, target, state = s3fd_torch_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    assert s3fd_cache_path() == target
    detector = S3FDDetector("cpu")
    assert detector.weights_path == target
    loaded = detector.net.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)

    frames = [background(96, 128, seed=1), background(96, 128, seed=2)]
    out = detector.detect(frames)
    assert len(out) == 2
    for dets in out:
        assert all(isinstance(d, Detection) for d in dets)
        scores = [d.score for d in dets]
        assert scores == sorted(scores, reverse=True)
        assert all(d.score > 0.5 for d in dets)
        for d in dets:
            x1, y1, x2, y2 = d.box
            assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 96
    assert detector.describe()["weights"] == str(target)


def test_s3fd_matches_face_alignment_postprocessing(s3fd_torch_home):
    """Our vectorised decode + NMS keeps exactly the boxes face-alignment's own loop keeps."""
    from face_alignment.detection.sfd.sfd_detector import SFDDetector

    _, target, _ = s3fd_torch_home
    ours = S3FDDetector("cpu", weights_path=target)
    reference = SFDDetector("cpu", path_to_detector=str(target))
    frames = [background(64, 96, seed=s) for s in (3, 4)]
    # face-alignment takes RGB (B, 3, H, W) and flips it to BGR itself.
    rgb = torch.from_numpy(np.stack(frames)[..., ::-1].copy()).permute(0, 3, 1, 2).float()
    expected = reference.detect_from_batch(rgb)
    got = ours.detect(frames)
    for exp, dets in zip(expected, got):
        exp = np.array(exp).reshape(-1, 5)
        # We clip boxes to the frame and drop those left empty (entirely outside it).
        exp[:, [0, 2]] = exp[:, [0, 2]].clip(0, 96)
        exp[:, [1, 3]] = exp[:, [1, 3]].clip(0, 64)
        exp = exp[(exp[:, 2] > exp[:, 0]) & (exp[:, 3] > exp[:, 1])]
        assert len(exp) == len(dets) > 0
        mine = np.array([[*d.box, d.score] for d in dets])
        np.testing.assert_allclose(mine, exp, rtol=1e-4, atol=1e-3)


def test_s3fd_explicit_path_and_auto_choice(s3fd_torch_home, tmp_path, monkeypatch):
    _, target, _ = s3fd_torch_home
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    explicit = S3FDDetector("cpu", weights_path=target, downscale_to=64)
    assert explicit.weights_path == target
    # A frame larger than downscale_to: boxes come back in full-frame coordinates.
    dets = explicit.detect([background(150, 200)])[0]
    assert all(0 <= d.box[0] < d.box[2] <= 200 and 0 <= d.box[1] < d.box[3] <= 150 for d in dets)
    # auto: S3FD needs its weights and a GPU; on CPU or without weights it is dlib.
    assert isinstance(make_detector("auto", "cpu", weights_path=target), DlibHogDetector)
    assert isinstance(make_detector("auto", "cuda"), DlibHogDetector)  # no weights in cache
    assert isinstance(make_detector("s3fd", "cpu", weights_path=target), S3FDDetector)
    with pytest.raises(ConfigError, match="mystery"):
        make_detector("mystery")


def test_s3fd_missing_weights_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "s3fd-619a316812.pth"
    with pytest.raises(CheckpointError, match=str(expected)) as err:
        S3FDDetector("cpu")
    assert "Download" in str(err.value)
    with pytest.raises(CheckpointError, match="s3fd-619a316812.pth"):
        make_detector("s3fd")
    with pytest.raises(CheckpointError, match="nowhere.pth"):
        S3FDDetector("cpu", weights_path=tmp_path / "nowhere.pth")


def test_s3fd_refuses_wrong_or_unsafe_files(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1_1.weight": torch.zeros(3)}, wrong)
    with pytest.raises(CheckpointError, match="wrong.pth"):
        S3FDDetector("cpu", weights_path=wrong)
    unsafe = tmp_path / "unsafe.pth"
    with open(unsafe, "wb") as f:
        pickle.dump({"weights": ConfigError("a pickled class")}, f, protocol=2)
    with pytest.raises(CheckpointError, match="unsafe.pth"):
        S3FDDetector("cpu", weights_path=unsafe)


# ---------------------------------------------------------------- tracking


def det(x, y, size, score=1.0) -> Detection:
    return Detection((x, y, x + size, y + size), score)


def test_tracking_follows_one_identity_not_the_largest_box_per_frame():
    rng = np.random.default_rng(0)
    frames = []
    for t in range(40):
        a = det(100 + 2 * t, 80, 100)  # the speaker, moving right
        b = det(400, 90, 125 if t == 10 else 80)  # a bystander, briefly larger
        pair = [a, b]
        rng.shuffle(pair)
        frames.append(pair)
    track = track_faces(frames, policy="largest")
    assert track.reject_reason is None
    assert track.found.all() and track.n_faces_max == 2
    np.testing.assert_allclose(track.boxes[:, 0], 100 + 2 * np.arange(40))
    assert track.stats.detection_rate == 1.0
    assert track.stats.mean_face_size == pytest.approx(100)
    assert track.stats.jitter == pytest.approx(0.0)  # constant speed: no jitter


def test_tracking_policies():
    frames = [[det(20, 20, 120), det(270, 190, 90)] for _ in range(10)]
    assert track_faces(frames, policy="largest").boxes[0, 0] == 20
    central = track_faces(frames, policy="central", frame_size=(480, 640))
    assert central.boxes[0, 0] == 270
    rejected = track_faces(frames, policy="reject-multiple")
    assert "several faces" in rejected.reject_reason and rejected.reject_code == "multiple_faces"
    with pytest.raises(NoFaceError, match="clip7.mp4: several faces"):
        rejected.require("clip7.mp4")
    # One spurious second face in 40 frames is tolerated (within 5%).
    frames = [[det(20, 20, 120)] for _ in range(40)]
    frames[5] = frames[5] + [det(300, 300, 70)]
    ok = track_faces(frames, policy="reject-multiple")
    assert ok.reject_reason is None and ok.n_faces_max == 2
    with pytest.raises(ConfigError):
        track_faces(frames, policy="central")
    with pytest.raises(ConfigError):
        track_faces(frames, policy="biggest")


def test_min_face_and_no_face():
    frames = [[det(10, 10, 40)] for _ in range(5)]
    small = track_faces(frames, min_face=60)
    assert small.reject_reason == "no face of at least 60 px" and not small.found.any()
    assert small.reject_code == "face_too_small"
    assert np.isnan(small.boxes).all()
    none = track_faces([[] for _ in range(5)])
    assert none.reject_reason == "no face detected" and none.reject_code == "no_face"
    ok = track_faces(frames, min_face=30)
    assert ok.found.all() and ok.reject_code is None and ok.reject_reason is None


def test_gaps_are_interpolated_and_split_tracks_merged():
    frames = [[det(100 + 3 * t, 50, 90)] for t in range(60)]
    for t in (10, 11, 12):
        frames[t] = []  # missed detections
    for t in range(25, 45):
        frames[t] = []  # face lost longer than the link gap
    track = track_faces(frames, max_link_gap=5)
    assert track.found.sum() == 60 - 3 - 20  # both pieces merged into one track
    assert track.stats.detection_rate == pytest.approx(37 / 60)
    filled = track.filled(max_gap=5)
    np.testing.assert_allclose(filled.boxes[10:13, 0], 100 + 3 * np.arange(10, 13))
    assert np.isnan(filled.boxes[25:45]).all()  # longer than max_gap: left unknown
    assert filled.valid.sum() == 40


def test_interpolate_missing_edges():
    boxes = np.full((10, 4), np.nan)
    boxes[2] = [0, 0, 10, 10]
    boxes[5] = [30, 0, 40, 10]
    out = interpolate_missing(boxes, max_gap=2)
    np.testing.assert_allclose(out[3:5, 0], [10, 20])
    np.testing.assert_allclose(out[:2], boxes[[2, 2]])  # leading gap held
    assert np.isnan(out[6:]).all()  # trailing gap of 4 > max_gap
    assert np.isnan(interpolate_missing(boxes, max_gap=2, hold_edges=False)[0]).all()


def test_keyframe_detection_with_interpolation():
    n = 23
    truth = np.array([[50 + 4 * t, 40 + t, 150 + 4 * t, 140 + t] for t in range(n)], float)
    keys = keyframe_indices(n, every=5)
    assert keys.tolist() == [0, 5, 10, 15, 20, 22]
    dets = [[Detection(tuple(truth[k]), 1.0)] for k in keys]
    dets[2] = []  # one keyframe missed: bridged by the default max gap
    track = track_keyframes(n, keys, dets)
    np.testing.assert_allclose(track.boxes, truth)
    assert np.isnan(track.stats.jitter)  # the miss leaves no three evenly spaced detections
    full = track_keyframes(n, keys, [[Detection(tuple(truth[k]), 1.0)] for k in keys])
    assert full.stats.jitter == pytest.approx(0.0)  # measured over keyframes 0, 5, 10, 15, 20
    assert track.stats.n_evaluated == 6 and track.stats.detection_rate == pytest.approx(5 / 6)


def test_smoothing_reduces_jitter_without_lag():
    rng = np.random.default_rng(1)
    t = np.arange(100)
    truth = np.stack([100 + 1.5 * t, 80 + 0.5 * t, 200 + 1.5 * t, 180 + 0.5 * t], axis=1).astype(float)
    noisy = truth + rng.normal(0, 4, truth.shape)
    smooth = smooth_boxes(noisy, window=5)
    assert box_jitter(smooth) < box_jitter(noisy) / 3
    assert np.abs(smooth - truth).mean() < np.abs(noisy - truth).mean() / 1.5
    # Centered mean of a linear track is the track itself (no lag) away from the ends;
    # the original's forward mean of 5 is 2 frames ahead.
    np.testing.assert_allclose(smooth_boxes(truth, 5)[2:-2], truth[2:-2])
    forward = smooth_boxes(truth, 5, mode="forward")
    np.testing.assert_allclose(forward[:-4], truth[2:-2])
    np.testing.assert_allclose(forward[-4:], np.repeat(truth[-5:].mean(0, keepdims=True), 4, 0))
    # Unknown frames stay unknown and do not poison their neighbours.
    holed = truth.copy()
    holed[50] = np.nan
    out = smooth_boxes(holed, 5)
    assert np.isnan(out[50]).all() and not np.isnan(out[49]).any()


# ---------------------------------------------------------------- crops


def test_crop_shape_pads_and_content():
    frame = np.zeros((200, 300, 3), np.uint8)
    frame[50:150, 100:200] = (10, 20, 30)  # the "face"
    frame[150:160, 100:200] = (200, 200, 200)  # the 10 px under it
    boxes = np.array([[100, 50, 200, 150]], float)
    plain = crop_faces([frame], boxes, size=96, pads=(0, 0, 0, 0))
    assert plain.shape == (1, 96, 96, 3) and plain.dtype == np.uint8
    assert (plain[0] == (10, 20, 30)).all()
    padded = crop_faces([frame], boxes, size=110, pads=(0, 10, 0, 0))
    assert (padded[0, :100] == (10, 20, 30)).all() and (padded[0, -9:] == 200).all()
    np.testing.assert_array_equal(padded_boxes(boxes, (200, 300), (5, 10, 15, 20)), [[85, 45, 220, 160]])


def test_crop_clips_to_the_frame():
    frames = np.stack([background(120, 160)] * 3)
    boxes = np.array([[-20, -10, 50, 60], [100, 70, 190, 130], [10, 10, 60, 60.4]])
    regions = padded_boxes(boxes, (120, 160), (10, 10, 10, 10))
    np.testing.assert_array_equal(regions, [[0, 0, 60, 70], [90, 60, 160, 120], [0, 0, 70, 70]])
    crops = crop_faces(frames, boxes, size=48, pads=(10, 10, 10, 10))
    assert crops.shape == (3, 48, 48, 3)
    expected = cv2.resize(frames[1][60:120, 90:160], (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(crops[1], expected)


def test_crop_without_a_box_names_the_frame():
    frames = [background(50, 50)] * 3
    boxes = np.array([[0, 0, 20, 20], [np.nan] * 4, [0, 0, 20, 20]])
    with pytest.raises(NoFaceError, match="frame 1"):
        crop_faces(frames, boxes)
    with pytest.raises(NoFaceError, match="frame 0"):
        crop_faces([frames[0]], np.array([[60, 60, 80, 80]]))


def test_dlib_min_face_estimate_matches_detection():
    detector = DlibHogDetector(downscale_to=640)
    assert detector.min_face_px(720, 1280) == pytest.approx(120)
    assert DlibHogDetector(downscale_to=640, upsample=1).min_face_px(720, 1280) == pytest.approx(60)
    assert DlibHogDetector().min_face_px(160, 160) == pytest.approx(60)
    img, expected = astronaut_frame(135, frame=(720, 1280), at=(500, 200))
    assert iou(detector.detect([img])[0][0].box, expected) > 0.6
    img, _ = astronaut_frame(90, frame=(720, 1280), at=(500, 200))
    assert detector.detect([img]) == [[]]
