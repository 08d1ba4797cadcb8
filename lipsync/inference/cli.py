"""`lipsync infer`: the command-line face of `LipSyncer`.

The original inference.py's flags keep their names (underscore spellings are accepted as
aliases: --checkpoint_path, --outfile, --resize_factor, --face_det_batch_size, ...) and
their meanings; see InferenceOptions for each flag's documentation.
"""

from __future__ import annotations

import argparse
import os
import sys

from lipsync.errors import ConfigError
from lipsync.inference.options import (
    AUDIO_LONGER,
    COMPOSITING,
    DETECTORS,
    DEVICES,
    FACE_SELECT,
    NO_FACE_POLICIES,
    PRECISIONS,
    InferenceOptions,
)


def _bool_value(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = InferenceOptions()
    io = parser.add_argument_group("input and output")
    io.add_argument("--face", required=True, help="face video, or an image (jpg/png/...: implies --static)")
    io.add_argument("--audio", required=True, help="speech: any audio or video file with an audio track")
    io.add_argument("--out", "--outfile", dest="out", required=True,
                    help="output video; .mp4, .m4v, .mov or .mkv by its extension (written only on success)")
    io.add_argument("--model", "--checkpoint_path", "--checkpoint-path", dest="model", required=True,
                    help="generator checkpoint (ours, or the official wav2lip.pth / wav2lip_gan.pth) "
                         "or an MLflow model URI such as models:/wav2lip@champion")
    io.add_argument("--tracking-uri", default=None,
                    help="MLflow tracking URI for models:/ and runs:/ references (default: "
                         "$MLFLOW_TRACKING_URI, else the embedded store ./mlruns.db; never created by a lookup)")
    io.add_argument("--trust-checkpoint", action="store_true",
                    help="allow checkpoints that unpickle arbitrary code (only for files you trust)")

    orig = parser.add_argument_group("flags of the original inference.py (same meanings)")
    orig.add_argument("--pads", type=int, nargs=4, default=list(d.pads), metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                      help="pixels added to the detected face box (default: 0 10 0 0)")
    orig.add_argument("--resize-factor", "--resize_factor", dest="resize_factor", type=int, default=d.resize_factor,
                      help="integer downscale of every frame (default: 1)")
    orig.add_argument("--crop", type=int, nargs=4, default=list(d.crop), metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                      help="keep this region of each frame after resize/rotate; -1 = full size (default: 0 -1 0 -1)")
    orig.add_argument("--box", type=int, nargs=4, default=[-1, -1, -1, -1], metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                      help="fixed face box for every frame, skips detection (default: -1 -1 -1 -1 = detect)")
    orig.add_argument("--rotate", action="store_true", help="rotate frames 90 degrees clockwise")
    orig.add_argument("--nosmooth", action="store_true", help="do not smooth face boxes over time")
    orig.add_argument("--static", nargs="?", const=True, default=False, type=_bool_value,
                      help="use only the first frame of the face video")
    orig.add_argument("--fps", type=float, default=d.fps, help="output frame rate for an image face (default: 25)")
    orig.add_argument("--face-det-batch-size", "--face_det_batch_size", dest="face_det_batch_size", type=int,
                      default=d.face_det_batch_size, help="frames per face-detector call (default: 16)")
    orig.add_argument("--wav2lip-batch-size", "--wav2lip_batch_size", dest="wav2lip_batch_size", type=int,
                      default=d.wav2lip_batch_size, help=f"faces per generator pass (default: {d.wav2lip_batch_size})")

    new = parser.add_argument_group("robustness, quality and speed")
    new.add_argument("--on-no-face", choices=NO_FACE_POLICIES, default=d.on_no_face,
                     help="frames without a face: pass them through unchanged (default) or stop with an error")
    new.add_argument("--compositing", choices=COMPOSITING, default=d.compositing,
                     help="blend: feathered lower-face mask (default); paste: the original's hard box")
    new.add_argument("--hard-paste", dest="compositing", action="store_const", const="paste",
                     help="same as --compositing paste")
    new.add_argument("--audio-longer", choices=AUDIO_LONGER, default=d.audio_longer,
                     help="when the audio outlasts the video: loop it or ping-pong it (default: loop)")
    new.add_argument("--spill-dir", default=d.spill_dir,
                     help="folder for the frames --audio-longer pingpong keeps on disk, H*W*3 bytes each "
                          "(default: $TMPDIR, else /tmp)")
    new.add_argument("--detect-every", type=int, default=d.detect_every,
                     help=f"detect faces on every k-th frame, track in between (default: {d.detect_every})")
    new.add_argument("--detect-max-side", type=int, default=d.detect_max_side,
                     help=f"detect on a copy at most this many pixels wide/high, 0 = full size "
                          f"(default: {d.detect_max_side})")
    new.add_argument("--no-detect-roi", dest="detect_roi", action="store_false",
                     help="search every keyframe over the whole frame (default: near the last face first)")
    new.add_argument("--detector", choices=DETECTORS, default=d.detector,
                     help="auto: S3FD when its weights are present on a GPU, else dlib HOG (offline)")
    new.add_argument("--face-select", choices=FACE_SELECT, default=d.face_select,
                     help="which face when several are found (default: largest)")
    new.add_argument("--device", choices=DEVICES, default=d.device, help="auto: CUDA when available, else CPU")
    new.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                     help="generator backend: fp32/bf16 (PyTorch), ort-fp32/int8 (ONNX Runtime); auto: bf16 on "
                          "CUDA, on a CPU the fastest its features allow by a timed probe cached per machine and "
                          "model, int8 only if it keeps >= 30 dB PSNR vs fp32 (default: auto)")
    new.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                     help="keep the generator in the default (NCHW) memory format")
    new.add_argument("--mel-mode", choices=("training", "inference"), default=None,
                     help="mel window alignment (default: as the generator was trained)")
    new.add_argument("--crf", type=int, default=d.crf, help=f"H.264 quality (default: {d.crf})")
    new.add_argument("--preset", default=d.preset, help=f"libx264 preset (default: {d.preset})")
    new.add_argument("--queue-frames", type=int, default=d.queue_frames,
                     help=f"frames buffered between pipeline stages (default: {d.queue_frames})")
    new.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def options_from_args(args: argparse.Namespace) -> InferenceOptions:
    box = tuple(args.box)
    return InferenceOptions(
        pads=tuple(args.pads), resize_factor=args.resize_factor, crop=tuple(args.crop),
        box=None if box == (-1, -1, -1, -1) else box, rotate=args.rotate, nosmooth=args.nosmooth,
        static=bool(args.static), fps=args.fps, face_det_batch_size=args.face_det_batch_size,
        wav2lip_batch_size=args.wav2lip_batch_size, on_no_face=args.on_no_face, compositing=args.compositing,
        audio_longer=args.audio_longer, spill_dir=args.spill_dir, detect_every=args.detect_every,
        detect_max_side=args.detect_max_side,
        detect_roi=args.detect_roi, detector=args.detector, face_select=args.face_select, device=args.device,
        precision=args.precision,
        channels_last=args.channels_last, mel_mode=args.mel_mode, trust_checkpoint=args.trust_checkpoint,
        crf=args.crf, preset=args.preset, queue_frames=args.queue_frames, progress=args.progress,
    ).check()


def run(args: argparse.Namespace) -> int:
    from lipsync.inference.pipeline import LipSyncer
    from lipsync.video import container_for

    opts = options_from_args(args)
    container_for(args.out)  # an unsupported extension fails now, not after the model has loaded
    for name in ("face", "audio"):
        if os.path.abspath(getattr(args, name)) == os.path.abspath(args.out):
            raise ConfigError(f"--out {args.out}: would overwrite the --{name} input")
    syncer = LipSyncer(args.model, opts, tracking_uri=args.tracking_uri)
    result = syncer.sync(args.face, args.audio, args.out)
    passed = f", {result.frames_passed_through} without a face passed through" if result.frames_passed_through else ""
    print(f"wrote {result.out_path}: {result.n_frames} frames {result.width}x{result.height} @ {result.fps:g} fps, "
          f"{result.audio_seconds:.2f} s{passed}; {result.seconds:.1f} s end to end = "
          f"{result.fps_end_to_end:.1f} frames/s including start-up (the progress bar counts frames "
          f"once they flow) ({result.generator['device']}, {result.generator['precision']})", file=sys.stderr)
    return 0
