"""Audio-visual sync scores (LSE-D, LSE-C, AV offset) exactly as the reference protocol computes
them (``shared/reference/syncnet_v2.md`` §3, ``SyncNetInstance.evaluate`` / ``calc_pdist``), with
two judges: the public evaluation SyncNet v2 and our own lip-sync expert.

Protocol, for a clip of ``n_frames`` 25 fps frames and ``n_samples`` 16 kHz samples:
1. ``min_length = min(n_frames, n_samples // 640)``, ``lastframe = min_length - 5``; windows
   v = 0 .. lastframe-1 (one fewer than would fit, as the reference).
2. Each window v gives a video embedding (frames v..v+4) and an audio embedding (the audio of
   the same 5 frames).
3. The audio embeddings are padded with ``vshift`` (15) zero rows at each end; window i is
   compared (L2, ``F.pairwise_distance`` with its eps 1e-6) with audio i-15 .. i+15.
4. ``mdist`` = mean over windows (31 values); LSE-D = min(mdist); LSE-C = median(mdist) - LSE-D;
   offset = 15 - argmin(mdist).

**Offset sign** (the reference's): ``offset = +N`` means the audio that matches lip window i is
audio window i-N, i.e. **the audio leads the picture by N frames** (each sound is heard N frames
before the mouth makes it); delaying the audio by N frames puts the clip in sync. ``-N``: the
audio lags by N frames. Our synthetic check: dropping the first N frames' worth of audio of an
in-sync clip (so every sound comes N frames early) gives +N.

Judges differ only in how a window is embedded:
* ``SyncNetV2Judge``: BGR 0-255 frames resized to 224x224 (cv2 bilinear), MFCC front-end; its
  distances are the papers' LSE-D / LSE-C scale.
* ``ExpertJudge``: our colour expert (``lipsync.models.SyncNet``): the lower half of face crops
  resized to its face size, BGR in [0, 1], the mel window of the same frames (the pairing it was
  trained on); embeddings are L2-normalised, so its distances lie in [0, 2] and are NOT
  comparable with SyncNet v2's numbers — compare a judge only with itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lipsync.audio import SAMPLES_PER_FRAME, mel_windows
from lipsync.mel_stream import stream_melspectrogram
from lipsync.data.windows import expert_face_array, valid_expert_starts
from lipsync.errors import MediaError
from lipsync.models.syncnet import SYNC_FRAMES
from lipsync.metrics import syncnet_v2 as sn2

VSHIFT = 15
BATCH_SIZE = 20  # the reference's default


@dataclass
class SyncScore:
    """One clip's result. ``mdist``: mean distance at each offset +15 .. -15 (index k ↔ offset 15-k)."""

    frames: int
    lse_d: float
    lse_c: float
    offset: int
    judge: str
    mdist: list = field(default_factory=list, repr=False)

    def to_dict(self, with_curve: bool = False) -> dict:
        d = asdict(self)
        if not with_curve:
            d.pop("mdist")
        return d


def n_windows(n_frames: int, n_samples: int) -> int:
    """Number of windows the reference scores (``lastframe``): min(frames, samples//640) - 5."""
    return min(n_frames, n_samples // SAMPLES_PER_FRAME) - SYNC_FRAMES


def offset_distances(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """``calc_pdist``: (N, 2·vshift+1) distances of video window i to audio i-vshift .. i+vshift,
    the audio zero-padded at both ends."""
    n = video_emb.shape[0]
    padded = F.pad(audio_emb.float(), (0, 0, vshift, vshift))
    idx = torch.arange(n)[:, None] + torch.arange(2 * vshift + 1)[None, :]
    return F.pairwise_distance(video_emb.float()[:, None, :].expand(-1, 2 * vshift + 1, -1), padded[idx], eps=1e-6)


def score_embeddings(video_emb: torch.Tensor, audio_emb: torch.Tensor, judge: str, vshift: int = VSHIFT) -> SyncScore:
    """LSE-D, LSE-C and offset from per-window embeddings (steps 3-4 of the module doc)."""
    return score_distances(offset_distances(video_emb, audio_emb, vshift), judge, vshift)


def score_distances(distances: torch.Tensor, judge: str, vshift: int = VSHIFT) -> SyncScore:
    """Step 4 of the module doc from the (N, 2·vshift+1) distances of ``offset_distances``."""
    mdist = distances.mean(dim=0).double()
    minval, minidx = torch.min(mdist, dim=0)
    return SyncScore(frames=int(distances.shape[0]), lse_d=float(minval), lse_c=float(torch.median(mdist) - minval),
                     offset=int(vshift - int(minidx)), judge=judge, mdist=mdist.tolist())


class StreamedDistances:
    """``offset_distances`` of embeddings that arrive a batch at a time, the same numbers,
    keeping only the embeddings a later window still needs (2·vshift audio rows and the
    video rows waiting for them); what stays is the (N, 2·vshift+1) distances, 124 bytes a
    window, instead of two embeddings per window (8 KB for SyncNet v2)."""

    def __init__(self, vshift: int = VSHIFT):
        self.vshift = vshift
        self.video: torch.Tensor | None = None  # the windows whose distances are not out yet
        self.audio: torch.Tensor | None = None  # from vshift windows before those (zeros before 0)
        self.rows: list[torch.Tensor] = []

    def add(self, video_emb: torch.Tensor, audio_emb: torch.Tensor) -> None:
        video_emb, audio_emb = video_emb.float(), audio_emb.float()
        if self.video is None:
            self.video = video_emb[:0]
            self.audio = F.pad(audio_emb[:0], (0, 0, self.vshift, 0))
        self.video = torch.cat([self.video, video_emb])
        self.audio = torch.cat([self.audio, audio_emb])
        ready = self.video.shape[0] - self.vshift  # windows whose audio i+vshift has arrived
        if ready > 0:
            self._emit(ready, self.audio)

    def finish(self) -> torch.Tensor:
        if self.video is not None and self.video.shape[0]:
            self._emit(self.video.shape[0], F.pad(self.audio, (0, 0, 0, self.vshift)))
        if not self.rows:
            return torch.zeros((0, 2 * self.vshift + 1))
        return torch.cat(self.rows)

    def _emit(self, count: int, audio: torch.Tensor) -> None:
        width = 2 * self.vshift + 1
        idx = torch.arange(count)[:, None] + torch.arange(width)[None, :]
        video = self.video[:count]
        self.rows.append(F.pairwise_distance(video[:, None, :].expand(-1, width, -1), audio[idx], eps=1e-6))
        self.video, self.audio = self.video[count:], self.audio[count:]


class SyncJudge:
    """Embeds a clip's windows. Subclasses define ``name``, ``input_size`` (the square frames are
    resized to with ``--crop none``), ``audio_features`` (a streamed front-end) and
    ``embed_batch`` (the windows of one batch)."""

    name = "judge"
    input_size = 224

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = BATCH_SIZE):
        self.device = torch.device(device)
        self.batch_size = batch_size

    def score(self, frames: np.ndarray, audio: np.ndarray, source: str = "clip", vshift: int = VSHIFT) -> SyncScore:
        """Score face frames (N, H, W, 3) uint8 BGR at 25 fps against 16 kHz mono audio in [-1, 1]."""
        return self.score_stream(iter(frames), [np.asarray(audio, np.float32)], source, vshift)

    def score_stream(self, frames, audio_chunks, source: str = "clip", vshift: int = VSHIFT) -> SyncScore:
        """``score`` of frames and audio given as iterables (frames one at a time, audio in
        chunks), the same numbers, holding only one batch of frames and the audio's features
        (``audio_features``) -- memory that does not follow the video's size.

        Windows are embedded in the batches ``score`` always used (0..B-1, B..2B-1, ...), so
        the embeddings are those of the whole-clip computation; a batch runs once the frame
        after it has arrived (the last window needs one frame more than it covers)."""
        features, n_samples = self.audio_features(audio_chunks)
        audio_windows = n_samples // SAMPLES_PER_FRAME - SYNC_FRAMES
        size = self.input_size
        distances = StreamedDistances(vshift)
        held: list[np.ndarray] = []  # resized frames from frame `start` (the next batch's first window) on
        start = n_frames = 0
        with torch.no_grad():
            for frame in frames:
                n_frames += 1
                if n_frames > audio_windows + SYNC_FRAMES - 1:
                    continue  # past the audio: no window will use it (it is still counted)
                held.append(frame if frame.shape[:2] == (size, size) else cv2.resize(frame, (size, size)))
                stop = start + self.batch_size
                if stop <= audio_windows and n_frames >= stop + SYNC_FRAMES:
                    self._embed_into(distances, held, start, stop, features)
                    del held[: stop - start]
                    start = stop
        n = n_windows(n_frames, n_samples)
        if n < 1:
            raise MediaError(
                f"{source}: too short to score ({n_frames} frames, {n_samples / 16000:.2f} s of audio; "
                f"need at least {SYNC_FRAMES + 1} frames of both)")
        with torch.no_grad():
            while start < n:
                stop = min(start + self.batch_size, n)
                self._embed_into(distances, held, start, stop, features)
                del held[: stop - start]
                start = stop
        return score_distances(distances.finish(), self.name, vshift)

    def _embed_into(self, distances: StreamedDistances, held: list, start: int, stop: int, features) -> None:
        """Windows start .. stop-1 into ``distances``; ``held`` begins with frame ``start``."""
        frames = np.stack(held[: stop - start + SYNC_FRAMES - 1])
        video_emb, audio_emb = self.embed_batch(frames, features, np.arange(start, stop))
        distances.add(video_emb.cpu(), audio_emb.cpu())

    def audio_features(self, audio_chunks) -> tuple[np.ndarray, int]:
        """(the front-end's features of the whole audio, number of samples), from chunks."""
        raise NotImplementedError

    def embed_batch(self, frames: np.ndarray, features: np.ndarray, vs: np.ndarray):
        """(video, audio) embeddings of windows ``vs``; ``frames`` (resized) start at frame vs[0]."""
        raise NotImplementedError


class SyncNetV2Judge(SyncJudge):
    """The public evaluation SyncNet (papers' LSE-D / LSE-C)."""

    name = "syncnet-v2"
    input_size = sn2.INPUT_SIZE

    def __init__(self, model: sn2.SyncNetV2, device="cpu", batch_size: int = BATCH_SIZE):
        super().__init__(device, batch_size)
        self.model = model.to(self.device).eval()

    def audio_features(self, audio_chunks):
        stream, parts, n_samples = sn2.MfccStream(), [], 0
        for chunk in audio_chunks:
            n_samples += len(chunk)
            parts.append(stream.push(chunk))
        parts.append(stream.finish())
        return np.concatenate(parts, axis=1), n_samples  # (13, T'), 0.3 MB a minute

    def embed_batch(self, frames, features, vs):
        # uint8 until the batch (a minute of 224x224 frames is 225 MB as uint8, 900 MB as float)
        video = torch.from_numpy(frames).permute(3, 0, 1, 2)  # (3, T, 224, 224) BGR
        mfcc = torch.from_numpy(features)
        first = int(vs[0])
        lip_batch = torch.stack([video[:, v - first : v - first + SYNC_FRAMES] for v in vs]).to(self.device).float()
        cc_batch = torch.stack([mfcc[None, :, sn2.MFCC_PER_FRAME * v : sn2.MFCC_PER_FRAME * v + sn2.MFCC_WINDOW]
                                for v in vs]).to(self.device)
        return self.model.forward_lip(lip_batch).cpu(), self.model.forward_aud(cc_batch).cpu()


class ExpertJudge(SyncJudge):
    """Our lip-sync expert (works with nothing downloaded); distances on its own [0, 2] scale."""

    name = "expert"

    def __init__(self, model: torch.nn.Module, device="cpu", batch_size: int = 64):
        super().__init__(device, batch_size)
        self.model = model.to(self.device).eval()
        self.input_size = int(model.face_size)

    def audio_features(self, audio_chunks):
        return stream_melspectrogram(np.asarray(chunk, np.float32) for chunk in audio_chunks)

    def embed_batch(self, frames, features, vs):
        return self.embed_windows(frames, features, vs, first_frame=int(vs[0]))

    def embed_windows(self, faces: np.ndarray, mel: np.ndarray, starts: np.ndarray, fps: float = 25.0,
                      first_frame: int = 0):
        """Embeddings of windows starting at ``starts``: faces (N, S, S, 3) uint8 BGR from frame
        ``first_frame`` on, mel (80, T). Audio window v = the mel window of frames v..v+4 (as the
        expert was trained)."""
        lip, aud = [], []
        for i in range(0, len(starts), self.batch_size):
            vs = starts[i : i + self.batch_size]
            face = torch.from_numpy(np.stack([expert_face_array(faces[v - first_frame : v - first_frame + SYNC_FRAMES])
                                              for v in vs]))
            mels = torch.from_numpy(mel_windows(mel, vs, fps=fps))[:, None]
            audio_emb, face_emb = self.model(mels.to(self.device), face.to(self.device).float().div_(255.0))
            lip.append(face_emb.float().cpu())
            aud.append(audio_emb.float().cpu())
        return torch.cat(lip), torch.cat(aud)

    def score_clip(self, faces: np.ndarray, mel: np.ndarray, source: str = "clip", shift: int = 0,
                   vshift: int = VSHIFT) -> SyncScore:
        """Score a preprocessed clip (shard face crops + its mel) without re-deriving audio.
        ``shift`` frames > 0 makes the audio lead by ``shift`` (audio window v+shift paired with
        lip window v), < 0 lag; the scored windows are those where both exist."""
        n = valid_expert_starts(len(faces), mel.shape[1], fps=25.0, T=SYNC_FRAMES)
        lo, hi = max(0, -shift), n - max(0, shift)
        if hi - lo < 1:
            raise MediaError(f"{source}: too short to score at a shift of {shift} frames ({len(faces)} frames)")
        with torch.no_grad():
            video_emb, audio_emb = self.embed_windows(faces, mel, np.arange(n))
        video_emb, audio_emb = video_emb[lo:hi], audio_emb[lo + shift : hi + shift]
        return score_embeddings(video_emb, audio_emb, self.name, vshift)
