"""Video I/O: round trips through real mp4 files, frame-rate resampling, rotation, bad input."""

from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
import soundfile

from lipsync import video
from lipsync.audio import load_audio
from lipsync.errors import MediaError

SR = 16000


def _indexed_frames(n, height=64, width=96):
    """Frames whose index is written as 8 black/white column blocks (survives H.264 exactly),
    below a blue marker in the top-left corner (BGR), on a grey background."""
    frames = np.full((n, height, width, 3), 128, np.uint8)
    block = width // 8
    for i in range(n):
        for bit in range(8):
            frames[i, 16:, bit * block : (bit + 1) * block] = 255 if (i >> bit) & 1 else 0
        frames[i, :8, :8] = (255, 0, 0)
    return frames


def _frame_index(frame):
    block = frame.shape[1] // 8
    bits = [frame[20:, b * block + 2 : (b + 1) * block - 2].mean() > 128 for b in range(8)]
    return sum(1 << b for b, on in enumerate(bits) if on)


def _mux_with_pyav(path, frames, pts_ms, rotation=None, codec="libx264", rate=25):
    """Write frames at explicit millisecond timestamps (VFR), optionally with a display rotation."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for frame, pts in zip(frames, pts_ms):
            vf = av.VideoFrame.from_ndarray(frame, format="bgr24")
            vf.pts, vf.time_base = int(pts), Fraction(1, 1000)
            container.mux(stream.encode(vf))
        container.mux(stream.encode(None))


# --------------------------------------------------------------------------------- round trip


def test_write_then_read_back(tmp_path):
    path = tmp_path / "clip.mp4"
    frames = _indexed_frames(40)
    t = np.arange(int(1.6 * SR)) / SR
    speech = (0.3 * np.sin(2 * np.pi * 1000 * t) * ((t >= 0.5) & (t < 0.7))).astype(np.float32)
    video.write_video(path, frames, 25, audio=speech)

    info = video.probe(path)
    assert (info.fps, info.n_frames, info.width, info.height) == (25.0, 40, 96, 64)
    assert info.has_video and info.has_audio and info.rotation == 0
    assert abs(info.duration - 1.6) < 1e-3

    clip = video.read_video(path)
    assert clip.frames.shape == (40, 64, 96, 3) and clip.frames.dtype == np.uint8
    assert clip.fps == 25.0
    assert [_frame_index(f) for f in clip.frames] == list(range(40))
    assert np.abs(clip.frames.astype(int) - frames).mean() < 3
    assert clip.frames[0, 2, 2].tolist() == pytest.approx([255, 0, 0], abs=12)  # BGR kept
    assert clip.sample_rate == SR and clip.audio.dtype == np.float32
    assert abs(clip.audio.size - speech.size) <= 16  # 1.6 s of audio, AAC padding trimmed
    onset = np.flatnonzero(np.abs(clip.audio) > 0.1)[0]
    assert abs(onset - int(0.5 * SR)) <= 32  # the 0.5 s tone burst is still at 0.5 s (+-2 ms)


def test_streaming_iterator_and_writer_chunks(tmp_path):
    path = tmp_path / "chunks.mp4"
    frames = _indexed_frames(30, 48, 64)
    with video.VideoWriter(path, 25, 64, 48) as writer:
        for i, frame in enumerate(frames):
            writer.write(frame)
            if i % 10 == 0:
                writer.write_audio(np.zeros(6400, np.float32))  # audio in chunks, interleaved
    got = [_frame_index(f) for f in video.iter_frames(path)]
    assert got == list(range(30))
    assert load_audio(path).size == 3 * 6400


def test_colours_survive_a_round_trip_without_a_shift(tmp_path):
    # swscale's default BGR<->yuv420p path darkened every frame by ~2 levels per round trip
    # (grey 128 came back as (123, 126, 124)); frames that inference passes through must not.
    rng = np.random.default_rng(0)
    blocks = rng.integers(20, 236, size=(6, 8, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(blocks, 16, axis=0), 16, axis=1)  # flat 16 px blocks: no chroma blur
    image[:16, :16] = 128
    path = tmp_path / "colours.mp4"
    video.write_video(path, np.stack([image] * 5), 25, crf=0)
    back = video.read_video(path).frames[0].astype(np.int16)
    assert tuple(back[8, 8]) == (128, 128, 128)
    inner = (back - image)[2:-2, 2:-2]
    assert abs(float(inner.mean())) < 0.3 and float(np.abs(inner).mean()) < 1.0, (inner.mean(), np.abs(inner).mean())


def test_bt709_sources_are_read_with_their_own_matrix_and_outputs_are_tagged(tmp_path):
    rng = np.random.default_rng(1)
    image = np.repeat(np.repeat(rng.integers(30, 220, (8, 8, 3), dtype=np.uint8), 16, axis=0), 16, axis=1)
    path = tmp_path / "bt709.mp4"
    with av.open(str(path), "w") as out:  # an HD-style source tagged BT.709
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 128, "yuv420p"
        stream.codec_context.colorspace, stream.codec_context.color_range = 1, 1
        stream.options = {"crf": "0"}
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p", dst_colorspace=1)
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with av.open(str(path)) as src:
        frame = next(src.decode(video=0))
        assert frame.colorspace == 1
        honouring_tag = frame.to_ndarray(format="bgr24").astype(np.int16)
        as_bt601 = cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420).astype(np.int16)
    ours = video.read_video(path).frames[0].astype(np.int16)
    assert np.array_equal(ours, honouring_tag)
    assert np.abs(as_bt601 - honouring_tag).mean() > 2  # the two matrices really differ here
    written = tmp_path / "written.mp4"
    video.write_video(written, np.stack([image] * 3), 25)
    with av.open(str(written)) as src:
        ctx = src.streams.video[0].codec_context
        assert (ctx.colorspace, ctx.color_range) == (6, 1)  # BT.601 (SMPTE170M), limited range


def test_odd_size_is_padded_to_even(tmp_path):
    path = tmp_path / "odd.mp4"
    frames = _indexed_frames(5, 33, 47)
    video.write_video(path, frames, 25)
    info = video.probe(path)
    assert (info.width, info.height, info.has_audio) == (48, 34, False)
    clip = video.read_video(path)
    assert clip.audio is None and clip.frames.shape == (5, 34, 48, 3)


def test_writer_without_audio_data_writes_silence_of_video_length(tmp_path):
    path = tmp_path / "silent.mp4"
    with video.VideoWriter(path, 25, 64, 48) as writer:
        for frame in _indexed_frames(50, 48, 64):
            writer.write(frame)
    wav = load_audio(path)
    assert abs(wav.size - 2 * SR) <= 16 and np.abs(wav).max() < 1e-3


def test_failed_write_leaves_no_file_and_keeps_an_existing_one(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with video.VideoWriter(path, 25, 64, 48) as writer:
            writer.write(_indexed_frames(1, 48, 64)[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []

    video.write_video(path, _indexed_frames(3, 48, 64), 25)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="expected uint8 frame"):
        with video.VideoWriter(path, 25, 64, 48) as writer:
            writer.write(np.zeros((10, 10, 3), np.uint8))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


# ------------------------------------------------------------------------------- frame rates


def _nearest_source(source_times, target_times):
    """Index of the source frame nearest each target time; ties go to the later frame."""
    source_times = np.asarray(source_times)
    return [int(np.flatnonzero(np.abs(source_times - t) <= np.abs(source_times - t).min() + 1e-9)[-1])
            for t in target_times]


def test_30fps_resampled_to_25(tmp_path):
    path = tmp_path / "thirty.mp4"
    video.write_video(path, _indexed_frames(60), 30)
    assert video.probe(path).fps == pytest.approx(30.0)
    got = [_frame_index(f) for f in video.iter_frames(path, fps=25)]
    assert len(got) == 50  # 2 s at 25 fps
    assert got == _nearest_source(np.arange(60) / 30, np.arange(50) / 25)
    clip = video.read_video(path, fps=25)
    assert clip.fps == 25.0 and clip.frames.shape[0] == 50


def test_variable_frame_rate_resampled_by_timestamps(tmp_path):
    path = tmp_path / "vfr.mp4"
    pts_ms = [0, 30, 90, 100, 180, 200, 260, 330, 340, 400]
    _mux_with_pyav(path, _indexed_frames(len(pts_ms), 48, 64), pts_ms)
    got = [_frame_index(f) for f in video.iter_frames(path, fps=25)]
    expected = _nearest_source(np.array(pts_ms) / 1000, np.arange(11) / 25)
    assert got[:11] == expected  # e.g. 0.28 s repeats the 0.26 s frame, 0.10 s is dropped
    assert len(got) == 11  # last frame shown until 0.44 s
    assert [_frame_index(f) for f in video.iter_frames(path)] == list(range(10))


def test_other_container_and_codec(tmp_path):
    # Matroska + MPEG-4 part 2 at 50 fps: no per-stream duration in the container, other decoder.
    path = tmp_path / "clip.mkv"
    frames = _indexed_frames(20, 48, 64)
    _mux_with_pyav(path, frames, [20 * i for i in range(20)], codec="mpeg4", rate=50)
    assert video.probe(path).fps == pytest.approx(50.0)
    got = [_frame_index(f) for f in video.iter_frames(path, fps=25)]
    assert got == list(range(0, 20, 2))


# ---------------------------------------------------------------------------------- rotation


def test_rotation_metadata_is_applied(tmp_path):
    path = tmp_path / "phone.mp4"
    frames = _indexed_frames(6, 48, 64)  # stored landscape 64 wide, 48 high, marker top-left
    _mux_with_pyav(path, frames, [40 * i for i in range(6)], rotation=90)  # shown turned 90° CCW

    info = video.probe(path)
    assert info.rotation == 90
    assert (info.width, info.height) == (48, 64)

    upright = next(video.iter_frames(path))
    assert upright.shape == (64, 48, 3)
    expected = cv2.rotate(frames[0], cv2.ROTATE_90_COUNTERCLOCKWISE)  # marker ends bottom-left
    assert np.abs(upright.astype(int) - expected).mean() < 3
    assert upright[-3, 2, 1] < 60 and upright[2, 2, 1] > 100  # blue marker (G=0) bottom-left

    raw = next(video.iter_frames(path, rotate=False))
    assert raw.shape == (48, 64, 3)
    assert video.read_video(path).frames.shape == (6, 64, 48, 3)


# ------------------------------------------------------------------------------- bad inputs


@pytest.fixture
def bad_files(tmp_path):
    empty = tmp_path / "zero.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "readme.mp4"
    text.write_text("not a video at all\n" * 50)
    no_samples = tmp_path / "silence0.wav"
    soundfile.write(no_samples, np.zeros(0, np.float32), SR)
    return {"missing": tmp_path / "nope.mp4", "empty": empty, "text": text, "no_samples": no_samples}


@pytest.mark.parametrize("kind", ["missing", "empty", "text"])
@pytest.mark.parametrize("reader", [video.probe, video.read_video, lambda p: list(video.iter_frames(p)),
                                    video.read_image, load_audio])
def test_unreadable_files_raise_media_error_naming_the_path(bad_files, kind, reader):
    path = bad_files[kind]
    with pytest.raises(MediaError) as error:
        reader(path)
    assert str(path) in str(error.value)


def test_audio_without_samples_and_video_without_audio(bad_files, tmp_path):
    with pytest.raises(MediaError, match="silence0.wav.*no samples"):
        load_audio(bad_files["no_samples"])
    with pytest.raises(MediaError, match="silence0.wav.*no video"):
        video.read_video(bad_files["no_samples"])

    mute = tmp_path / "mute.mp4"
    video.write_video(mute, _indexed_frames(3, 48, 64), 25)
    with pytest.raises(MediaError, match="mute.mp4.*no audio stream"):
        video.read_video(mute, require_audio=True)
    with pytest.raises(MediaError, match="mute.mp4.*no audio stream"):
        load_audio(mute)


def test_read_image(tmp_path):
    image = _indexed_frames(1, 40, 30)[0]
    path = tmp_path / "face.png"
    assert cv2.imwrite(str(path), image)
    assert np.array_equal(video.read_image(path), image)
