"""Face detection, tracking and cropping (frames are BGR uint8, boxes x1, y1, x2, y2)."""

from lipsync.faces.crop import crop_faces, padded_boxes
from lipsync.faces.detect import (
    S3FD_URL,
    Detection,
    DlibHogDetector,
    FaceDetector,
    S3FDDetector,
    download_s3fd_weights,
    make_detector,
    resolve_s3fd_weights,
    s3fd_cache_path,
)
from lipsync.faces.temporal import box_jitter, box_sizes, interpolate_missing, smooth_boxes
from lipsync.faces.track import (
    FaceTrack,
    TrackStats,
    keyframe_indices,
    spread_keyframes,
    track_faces,
    track_keyframes,
)

__all__ = [
    "S3FD_URL",
    "Detection",
    "DlibHogDetector",
    "FaceDetector",
    "FaceTrack",
    "S3FDDetector",
    "TrackStats",
    "box_jitter",
    "box_sizes",
    "crop_faces",
    "download_s3fd_weights",
    "interpolate_missing",
    "keyframe_indices",
    "make_detector",
    "padded_boxes",
    "resolve_s3fd_weights",
    "s3fd_cache_path",
    "smooth_boxes",
    "spread_keyframes",
    "track_faces",
    "track_keyframes",
]
