"""Video I/O on PyAV: probe, streaming decode with rotation and frame-rate resampling, H.264+AAC mp4 out.

Frames are numpy uint8 (H, W, 3) in BGR order (the library's convention; conversion happens in
this package). One concept per module, each importing only the ones listed above it:

    probing       opening a media file for reading; ``probe`` and ``VideoInfo``
    colour        yuv420p <-> BGR pixels, frames turned upright by their display rotation
    resample      timed frames onto a constant frame rate (nearest timestamp)
    align         decoded audio shifted so sample 0 is the first video frame (whole or streamed)
    decode        ``iter_frames``, ``iter_frame_range``, ``read_video``, ``read_image``
    containers    output containers by extension, and the audio codecs each takes as they are
    passthrough   a source file's audio track carried into an output
    encode        ``VideoWriter``, ``write_video``: H.264 + audio in one pass

This module only re-exports their public names.
"""

from lipsync.video.align import align_audio_to_video, audio_shift, iter_aligned_audio
from lipsync.video.colour import bgr_to_i420_frame
from lipsync.video.containers import CONTAINERS, container_for
from lipsync.video.decode import Video, iter_frame_range, iter_frames, read_image, read_video
from lipsync.video.encode import VideoWriter, write_video
from lipsync.video.probing import VideoInfo, probe
from lipsync.video.resample import SEEK_TOLERANCE_S

__all__ = [
    "CONTAINERS",
    "SEEK_TOLERANCE_S",
    "Video",
    "VideoInfo",
    "VideoWriter",
    "align_audio_to_video",
    "audio_shift",
    "iter_aligned_audio",
    "bgr_to_i420_frame",
    "container_for",
    "iter_frame_range",
    "iter_frames",
    "probe",
    "read_image",
    "read_video",
    "write_video",
]
