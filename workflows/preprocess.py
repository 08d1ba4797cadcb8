"""Preprocess raw talking-head videos into WebDataset shards + manifest.parquet.

Local (starts a private Ray cluster on 127.0.0.1):
    python workflows/preprocess.py --input data/lrs2 --layout lrs2 --output shards/

On a cluster (the driver joins it through RAY_ADDRESS, which ray job submit sets):
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python workflows/preprocess.py --input /data/lrs2 --layout lrs2 --output /data/shards

Re-running the same command resumes: inputs already in completed shards are skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Run as a script (python workflows/preprocess.py): make the repo importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lipsync.cli import HelpFormatter  # noqa: E402
from lipsync.errors import LipsyncError  # noqa: E402
from pipelines.common.console import PIECES_PROGRESS, quiet_console  # noqa: E402
from pipelines.common.paths import resolve_path_args  # noqa: E402
from pipelines.preprocess.driver import PreprocessConfig, run_preprocess  # noqa: E402
from pipelines.dataset.shards import parse_size  # noqa: E402
from pipelines.preprocess.sources import LAYOUTS  # noqa: E402
from pipelines.preprocess.splits import parse_fractions  # noqa: E402
from pipelines.preprocess.sync_filter import DEFAULT_MAX_OFFSET, DEFAULT_MIN_CONFIDENCE, make_sync_filter  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    d = PreprocessConfig(input="", output="")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    io = p.add_argument_group("input / output")
    io.add_argument("--input", required=True, help="corpus root (or a filelist for --layout filelist)")
    io.add_argument("--layout", choices=LAYOUTS, default=d.layout,
                    help="how speakers and splits are read from the folder: lrs2 (main/<spk>/<clip>.mp4 + "
                         "train/val/test.txt), voxceleb2 (dev|test/mp4/<id>/...), folder (any videos; speaker "
                         "= parent folder or --speaker-regex), filelist (a text file of paths)")
    io.add_argument("--output", required=True, help="directory (or s3:// / gs:// URI) for shards, manifest.parquet, summary.json")
    io.add_argument("--speaker-regex", default=None,
                    help="folder layout: regex on the path relative to --input; group 1 is the speaker "
                         "(default: the parent folder's name), e.g. '^([^_/]+)_' for <speaker>_<clip>.mp4")
    io.add_argument("--filelists", default=None,
                    help="lrs2: directory holding train/val/test.txt (default: looked up under --input)")
    io.add_argument("--split-fractions", default="0.8,0.1,0.1",
                    help="train,val,test fractions of speakers when there are no official lists")
    io.add_argument("--split-seed", default=d.split_seed,
                    help="seed of the speaker shuffle that deals speakers into splits")
    io.add_argument("--shard-size", default="256MB", help="target shard size, e.g. 256MB, 1G")
    io.add_argument("--codec", choices=("jpeg", "png"), default=d.codec,
                    help="face crop encoding in shards (png is lossless)")
    io.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, help="JPEG quality of the crops (1-100)")
    io.add_argument("--overwrite", action="store_true", help="delete what earlier runs wrote in --output (only that; a folder that is not a shard folder is refused) instead of resuming")
    clips = p.add_argument_group("clips")
    clips.add_argument("--max-clip-seconds", type=float, default=d.max_clip_seconds,
                       help="split longer videos into clips of at most this long (0: never)")
    clips.add_argument("--min-clip-seconds", type=float, default=d.min_clip_seconds,
                       help="shorter clips (after scene cuts) are dropped")
    clips.add_argument("--scene-cut-threshold", type=float, default=d.scene_cut_threshold,
                       help="mean abs frame difference (0-255) that starts a new clip (0: off)")
    clips.add_argument("--segment-seconds", type=float, default=d.segment_seconds,
                       help="inputs longer than 1.5x this are cut into pieces of about this length, "
                            "processed as separate tasks (0: never)")
    faces = p.add_argument_group("faces")
    faces.add_argument("--detector", choices=("auto", "dlib", "s3fd"), default=d.detector,
                       help="auto: S3FD where its weights are present (batched on GPU), else dlib HOG (offline)")
    faces.add_argument("--detector-weights", default=None,
                       help="S3FD weights file (default: face-alignment's cache)")
    faces.add_argument("--detect-every", type=int, default=d.detect_every,
                       help="detect on every k-th frame and interpolate boxes in between")
    faces.add_argument("--detect-downscale-to", type=int, default=d.detect_downscale_to,
                       help="detect on a copy whose longer side is at most this many px")
    faces.add_argument("--detect-upsample", type=int, default=d.detect_upsample,
                       help="dlib: upsample the image this many times to find small faces (slower)")
    faces.add_argument("--detect-batch-size", type=int, default=d.detect_batch_size,
                       help="frames per detector call (S3FD on GPU)")
    faces.add_argument("--face-policy", choices=("largest", "central", "reject-multiple"), default=d.face_policy,
                       help="which face to keep when several are found; reject-multiple drops such clips")
    faces.add_argument("--min-face-size", type=float, default=d.min_face_size,
                       help="smallest face kept, in px of the shorter box side")
    faces.add_argument("--min-detection-rate", type=float, default=d.min_detection_rate,
                       help="clips with a face in fewer of the checked frames are rejected")
    faces.add_argument("--smooth-window", type=int, default=d.smooth_window,
                       help="frames of temporal smoothing of the face boxes (1: none)")
    faces.add_argument("--crop-size", type=int, nargs="+", default=list(d.crop_sizes),
                       help="crop size(s) in px; the first is the primary one (e.g. 96 192)")
    faces.add_argument("--pads", type=int, nargs=4, default=list(d.pads), metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                       help="px added to the face box before cropping (the original's default includes the chin)")
    sync = p.add_argument_group("sync filter (pipelines/preprocess/sync_filter.py)")
    sync.add_argument("--sync-filter", default=None, metavar="MODEL",
                      help="measure every clip's AV offset and confidence with this expert (file, models:/…, "
                           "runs:/…) or with 'syncnet-v2' (needs --sync-weights); off by default")
    sync.add_argument("--sync-weights", default=None, help="the public syncnet_v2.model, for --sync-filter syncnet-v2")
    sync.add_argument("--min-sync-confidence", type=float, default=None,
                      help="reject clips whose confidence (LSE-C) is lower (default: "
                           + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_MIN_CONFIDENCE.items()) + ")")
    sync.add_argument("--max-sync-offset", type=int, default=DEFAULT_MAX_OFFSET,
                      help="reject clips whose audio is off by more frames than this")
    sync.add_argument("--fix-offset", action="store_true",
                      help="realign kept clips whose offset is not 0 (trims |offset| frames; recorded as sync_shift)")
    sync.add_argument("--trust-checkpoint", action="store_true",
                      help="allow a pickled expert checkpoint to run code when loaded (only for files you trust)")
    res = p.add_argument_group("resources / tracking")
    res.add_argument("--num-cpus", type=int, default=None,
                     help="CPUs to use (default: all of the local machine or the cluster)")
    res.add_argument("--num-gpus", type=float, default=None,
                     help="GPUs for face detection (default: all the cluster has; 0: CPU only)")
    res.add_argument("--inputs-per-task", type=int, default=d.inputs_per_task,
                     help="most inputs per Ray task (fewer tasks = less scheduling overhead)")
    res.add_argument("--ray-address", default=None, help="default: RAY_ADDRESS, else a local cluster")
    res.add_argument("--tracking-uri", default=None, help="MLflow tracking URI; logs the run summary")
    res.add_argument("--experiment", default=d.experiment, help="MLflow experiment of the run summary")
    res.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in CI logs)")
    res.add_argument("--verbose", action="store_true",
                     help="print Ray's and MLflow's own output here too (default: a log file, named once)")
    return p


def sync_filter_from_args(args: argparse.Namespace):
    """The sync filter the flags ask for (checked and pinned here, on the driver), or None."""
    if not args.sync_filter:
        return None
    return make_sync_filter(args.sync_filter, weights=args.sync_weights, min_confidence=args.min_sync_confidence,
                            max_offset=args.max_sync_offset, fix_offset=args.fix_offset,
                            tracking_uri=args.tracking_uri, trust=args.trust_checkpoint)


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    return PreprocessConfig(
        input=args.input, output=args.output, layout=args.layout, speaker_regex=args.speaker_regex,
        filelists=args.filelists, split_fractions=parse_fractions(args.split_fractions),
        split_seed=args.split_seed, max_clip_seconds=args.max_clip_seconds,
        min_clip_seconds=args.min_clip_seconds, scene_cut_threshold=args.scene_cut_threshold,
        segment_seconds=args.segment_seconds,
        detector=args.detector, detector_weights=args.detector_weights, detect_every=args.detect_every,
        detect_downscale_to=args.detect_downscale_to, detect_upsample=args.detect_upsample,
        detect_batch_size=args.detect_batch_size, face_policy=args.face_policy,
        min_face_size=args.min_face_size, min_detection_rate=args.min_detection_rate,
        smooth_window=args.smooth_window, crop_sizes=tuple(args.crop_size), pads=tuple(args.pads),
        codec=args.codec, jpeg_quality=args.jpeg_quality, shard_size=parse_size(args.shard_size),
        overwrite=args.overwrite, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
        inputs_per_task=args.inputs_per_task,
        ray_address=args.ray_address or os.environ.get("RAY_ADDRESS"), tracking_uri=args.tracking_uri,
        experiment=args.experiment, progress=not args.no_progress, sync_filter=sync_filter_from_args(args),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resolve_path_args(args, "input", "output", "filelists", "detector_weights", "sync_weights")  # workers run elsewhere
    with quiet_console("preprocess", verbose=args.verbose, progress=PIECES_PROGRESS, label="pieces"):
        try:
            run_preprocess(config_from_args(args))
        except LipsyncError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
