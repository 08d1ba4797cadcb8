"""Does the generator learn? Measured on held-out speakers, with judges it was not trained against.

Builds (or reuses, with --workdir) a synthetic corpus and its shards, takes an expert
(--expert, or trains one), trains the generator with Ray Train (checkpoint every
--checkpoint-every steps, all logged to MLflow), then scores every checkpoint on the *test*
split — speakers never seen in training:

1. **Dubbing, judged from pixels.** Each held-out video is lip-synced to the audio of a clip
   of *another* held-out speaker with ``lipsync infer``'s engine. The synthetic mouth's
   opening is measured from the output's pixels (``lipsync.synth.measure``) and correlated
   with the *new* audio's loudness frame by frame (Pearson r; a pair whose dubbed mouth
   never moves has no r and counts as 0). References: the corpus's own
   clips against their own audio (what perfect sync scores) and the undubbed input against
   the new audio (what no lip-sync scores, about 0).
2. **Reconstruction** of the lower face on held-out windows with their own audio: L1, PSNR
   and SSIM against the ground truth, beside two trivial baselines (copy the reference frame;
   copy the masked input).
3. **The expert's view** (the one the generator was trained against, so the weakest judge):
   mean P(in sync) of frames generated for another clip's audio, against that audio, beside
   the same for the undubbed ground-truth frames.

Every figure is printed per checkpoint and logged to the generator's MLflow run as
``bench_*`` metrics at the checkpoint's step, with the curves as an image.

    python benchmarks/generator_curve.py --workdir /tmp/gen_curve --expert models:/lipsync-expert@candidate \\
        --tracking-uri sqlite:////tmp/curve/mlflow.db --max-steps 3000 --checkpoint-every 500
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_parser() -> argparse.ArgumentParser:
    from lipsync.training.schedule import LR_SCHEDULES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="generator_curve_work", help="corpus, shards, runs and dubbed videos")
    p.add_argument("--speakers", type=int, default=16, help="synthetic speakers (default 16: 12/2/2 split)")
    p.add_argument("--clips", type=int, default=8, help="clips per speaker (default 8)")
    p.add_argument("--expert", default=None,
                   help="the expert reference (file, runs:/, models:/); default: train one first")
    p.add_argument("--expert-steps", type=int, default=1500, help="steps when training the expert here")
    p.add_argument("--width", type=float, default=0.25, help="generator channel multiplier (default 0.25)")
    p.add_argument("--batch-size", type=int, default=16, help="global generator batch (default 16)")
    p.add_argument("--lr", type=float, default=1e-4, help="generator lr (default: the paper's 1e-4)")
    p.add_argument("--disc-lr", type=float, default=None, help="discriminator lr (default: --lr)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="constant (paper) or cosine decay of both rates to 2%% at --max-steps")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (default 0)")
    p.add_argument("--no-gan", action="store_true", help="plain Wav2Lip (no discriminator)")
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--pairs", type=int, default=8, help="dubbed (video, other audio) pairs per checkpoint")
    p.add_argument("--windows", type=int, default=512,
                   help="held-out windows for reconstruction and the expert (default 512)")
    p.add_argument("--tracking-uri", default=None, help="default: sqlite under --workdir")
    p.add_argument("--run-id", default=None, help="score the checkpoints of this finished generator run instead of training")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="score only these checkpoint steps (default: all)")
    return p


# ----------------------------------------------------------------------------- data and models


def corpus_and_shards(work: Path, speakers: int, clips: int) -> tuple[Path, Path]:
    from lipsync.synth import make_corpus
    from pipelines.preprocess.driver import PreprocessConfig, run_preprocess

    corpus, shards = work / "corpus", work / "shards"
    if not (shards / "summary.json").exists():
        if not (corpus / "synth.json").exists():
            make_corpus(corpus, speakers=speakers, clips_per_speaker=clips, seed=11, layout="lrs2")
        run_preprocess(PreprocessConfig(input=str(corpus), output=str(shards), layout="lrs2", num_cpus=2))
    return corpus, shards


def train(stage: str, values: dict):
    from pipelines.train.config import TrainConfig
    from pipelines.train.driver import run_training

    return run_training(TrainConfig.from_flat(stage, values))


def held_out_videos(corpus: Path, split: str) -> list[Path]:
    """The raw videos of a held-out split, in the corpus's own list order."""
    return [corpus / "main" / f"{line.strip()}.mp4" for line in (corpus / f"{split}.txt").read_text().splitlines()
            if line.strip()]


def dub_pairs(faces: list[Path], voices: list[Path], n: int) -> list[tuple[Path, Path]]:
    """(video, audio source) pairs, the audio always from another speaker's clip."""
    pairs = []
    for i, video in enumerate(faces):
        other = next((v for v in voices[i:] + voices[:i] if v.parent.name != video.parent.name), None)
        if other is not None:
            pairs.append((video, other))
        if len(pairs) == n:
            break
    return pairs


def checkpoint_steps(client, run_id: str) -> list[int]:
    return sorted(int(a.path.rsplit("step-", 1)[1]) for a in client.list_artifacts(run_id, "checkpoints")
                  if "step-" in a.path)


def logged_rows(client, run_id: str) -> dict[int, dict]:
    """The bench_* figures an earlier scoring of this run logged, per step."""
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith("bench_")]
    rows: dict[int, dict] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            rows.setdefault(m.step, {})[key[len("bench_"):]] = m.value
    return rows


# ----------------------------------------------------------------------------- judges


def dub_scores(model, pairs, out_dir: Path, detector) -> list[float]:
    """Pearson r of the dubbed mouth opening against the new audio's loudness, per pair."""
    from lipsync.audio import load_audio
    from lipsync.inference import InferenceOptions, LipSyncer
    from lipsync.synth.measure import frame_log_rms, lip_audio_correlation, mouth_opening
    from lipsync.video import read_video

    syncer = LipSyncer(model, InferenceOptions(progress=False, precision="fp32"))
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = []
    for k, (video, audio_clip) in enumerate(pairs):
        out = out_dir / f"dub_{k}.mp4"
        syncer.sync(video, audio_clip, out)
        dubbed = read_video(out)
        audio = load_audio(audio_clip)
        opening = mouth_opening(dubbed.frames, detector)
        scores.append(lip_audio_correlation(opening, frame_log_rms(audio, len(dubbed.frames), dubbed.fps)))
    return scores


def reference_scores(pairs, detector) -> tuple[list[float], list[float]]:
    """r for the audio's own clip (perfect sync) and for the undubbed input (no lip-sync)."""
    from lipsync.synth.measure import frame_log_rms, lip_audio_correlation, mouth_opening
    from lipsync.video import read_video

    own, undubbed = [], []
    for video, audio_clip in pairs:
        source, target = read_video(video), read_video(audio_clip)
        loud = frame_log_rms(target.audio, len(target.frames), target.fps)
        own.append(lip_audio_correlation(mouth_opening(target.frames, detector), loud))
        looped = source.frames[np.arange(len(target.frames)) % len(source.frames)]
        undubbed.append(lip_audio_correlation(mouth_opening(looped, detector), loud))
    return own, undubbed


HELD_OUT_CHUNK = 64  # windows per forward pass: bounds memory, not the sample


def held_out_batches(shards: Path, n: int, face_size: int) -> list[dict]:
    """A fixed sample of generator windows from the test split (the same for every
    checkpoint), collated in chunks of HELD_OUT_CHUNK windows."""
    from lipsync.data.shard_stream import iter_clips, list_shards
    from lipsync.data.generator_windows import GeneratorSampling

    sampling = GeneratorSampling(face_size=face_size)
    clips = list(iter_clips(list_shards(shards, "test")))
    rng = np.random.default_rng(1234)
    windows = []
    for i in range(50 * n):
        windows += sampling.sample(clips[i % len(clips)], 1, rng)
        if len(windows) == n:
            break
    return [sampling.collate(windows[i: i + HELD_OUT_CHUNK]) for i in range(0, len(windows), HELD_OUT_CHUNK)]


def _frames_uint8(t):
    """(B,3,T,S,S) BGR [0,1] -> (B*T, S, S, 3) uint8."""
    return (t.permute(0, 2, 3, 4, 1).reshape(-1, *t.shape[-2:], 3).clamp(0, 1) * 255 + 0.5).byte().numpy()


def reconstruction_and_expert(generator, expert, batches: list[dict]) -> dict[str, float]:
    """Lower-face L1/PSNR/SSIM of generated frames and of the two trivial baselines against the
    ground truth (own audio), and the expert's P(sync) of dubbed against undubbed windows.

    The generated-minus-copy-reference L1 is also given per window, paired, with its 95%
    interval: the two are close, and a mean over a few windows can rank them either way."""
    import torch

    from lipsync.metrics.image import mouth_region, psnr, ssim
    from lipsync.models import syncnet_face_input
    from lipsync.training.expert import sync_scores

    names = ("generated", "copy_reference", "copy_masked")
    l1 = {k: [] for k in names}  # per window
    psnrs, ssims = {k: [] for k in names}, {k: [] for k in names}  # per frame
    p_dubbed, p_undubbed = [], []
    for batch in batches:
        with torch.no_grad():
            generated = generator(batch["indiv_mels"], batch["x"])
            other_mels = torch.roll(batch["indiv_mels"], 1, 0)  # each window gets its neighbour clip's audio
            dubbed = generator(other_mels, batch["x"])
            other_sync_mel = torch.roll(batch["mel"], 1, 0)
            p_dubbed.append(sync_scores(expert, other_sync_mel, syncnet_face_input(dubbed)))
            p_undubbed.append(sync_scores(expert, other_sync_mel, syncnet_face_input(batch["gt"])))
        gt = mouth_region(_frames_uint8(batch["gt"]))
        n_windows = batch["gt"].shape[0]
        for name, t in zip(names, (generated, batch["x"][:, 3:], batch["x"][:, :3])):
            lower = mouth_region(_frames_uint8(t))
            err = np.abs(lower.astype(np.float64) - gt) / 255
            l1[name] += list(err.reshape(n_windows, -1).mean(axis=1))
            psnrs[name] += [psnr(a, b) for a, b in zip(lower, gt)]
            ssims[name] += [ssim(a, b) for a, b in zip(lower, gt)]
    out = {"expert_p_sync_dubbed": torch.cat(p_dubbed).mean().item(),
           "expert_p_sync_undubbed": torch.cat(p_undubbed).mean().item()}
    for name in names:
        out[f"l1_{name}"] = float(np.mean(l1[name]))
        out[f"psnr_{name}"] = float(np.mean(psnrs[name]))
        out[f"ssim_{name}"] = float(np.mean(ssims[name]))
    diff = np.array(l1["generated"]) - np.array(l1["copy_reference"])
    out["l1_generated_minus_reference"] = float(diff.mean())
    half_width = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    out["l1_generated_minus_reference_ci95"] = float(half_width)
    return out


# ----------------------------------------------------------------------------- main


def main() -> int:
    args = build_parser().parse_args()
    import torch
    from mlflow import MlflowClient

    from lipsync import model_ref
    from lipsync.faces import DlibHogDetector

    torch.set_num_threads(2)
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    corpus, shards = corpus_and_shards(work, args.speakers, args.clips)
    tracking_uri = args.tracking_uri or f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    started = time.time()
    expert_ref = args.expert
    if expert_ref is None:
        result = train("expert", dict(shards=str(shards), width=0.25, lr=1e-3, lr_schedule="cosine", warmup_steps=100,
                                      max_steps=args.expert_steps, checkpoint_every=250, num_workers=args.num_workers,
                                      storage_path=str(work / "ray_results"), tracking_uri=tracking_uri,
                                      experiment="lipsync-generator-curve", run_name=time.strftime("expert-%H%M%S")))
        expert_ref = f"models:/lipsync-expert/{result.model_version}"
        print(f"expert trained: {expert_ref}, val accuracy {result.best_value:.3f} ({(time.time() - started) / 60:.1f} min)")
    expert_ref = model_ref.pin(expert_ref, tracking_uri)
    run_id = args.run_id
    if run_id is None:
        t0 = time.time()
        result = train("generator", dict(
            shards=str(shards), expert=expert_ref, width=args.width, batch_size=args.batch_size, lr=args.lr,
            disc_lr=args.disc_lr or args.lr, lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps,
            gan=not args.no_gan, max_steps=args.max_steps, checkpoint_every=args.checkpoint_every,
            log_every=50, num_workers=args.num_workers, storage_path=str(work / "ray_results"),
            tracking_uri=tracking_uri, experiment="lipsync-generator-curve",
            run_name=time.strftime("generator-%H%M%S")))
        run_id = result.run_id
        print(f"generator trained: run {run_id}, {result.final_step} steps in {(time.time() - t0) / 60:.1f} min")

    expert, expert_config = model_ref.load(expert_ref, kind="expert", tracking_uri=tracking_uri)
    expert.eval()
    detector = DlibHogDetector(expand=(0.0, 0.0, 0.0, 0.0))
    test = held_out_videos(corpus, "test")
    pairs = dub_pairs(test, test + held_out_videos(corpus, "val"), args.pairs)  # voices: held-out speakers only
    own, undubbed = reference_scores(pairs, detector)
    batches = held_out_batches(shards, args.windows, expert_config.face_size)
    print(f"\nheld-out speakers: {len(pairs)} dubbed pairs, {args.windows} windows")
    print(f"mouth opening vs the new audio's loudness: own clips r {np.nanmean(own):.2f}, "
          f"undubbed input r {np.nanmean(undubbed):.2f}")
    header = (f"{'step':>6} {'dub r':>6} {'moving':>6} {'L1 gen/ref/masked':>22} {'L1 gen-ref (95%)':>18} "
              f"{'PSNR gen/ref':>13} {'SSIM gen/ref':>13} {'expert P(sync) dubbed/undubbed':>31}")
    print(header)
    rows = logged_rows(client, run_id) if args.steps else {}  # the curve keeps the steps scored before
    for step in [s for s in checkpoint_steps(client, run_id) if args.steps is None or s in args.steps]:
        ref = f"runs:/{run_id}/checkpoints/step-{step:07d}"
        generator, _ = model_ref.load(ref, kind="wav2lip", tracking_uri=tracking_uri)
        generator.eval()
        figures = reconstruction_and_expert(generator, expert, batches)
        scores = np.array(dub_scores(generator, pairs, work / "dubbed" / f"step-{step}", detector))
        # r is undefined (NaN) for a pair whose dubbed mouth never opens: it counts as 0, not left out.
        figures["dub_r"] = float(np.nan_to_num(scores, nan=0.0).mean())
        figures["dub_pairs_mouth_moving"] = float(np.isfinite(scores).sum())
        rows[step] = figures
        client.log_batch(run_id, metrics=[_metric(f"bench_{k}", v, step) for k, v in figures.items()])
        print(f"{step:>6} {figures['dub_r']:>6.2f} {int(figures['dub_pairs_mouth_moving']):>3}/{len(pairs):<2} "
              f"{figures['l1_generated']:>8.4f}/{figures['l1_copy_reference']:.4f}/"
              f"{figures['l1_copy_masked']:.4f} {figures['l1_generated_minus_reference']:>+9.4f}±"
              f"{figures['l1_generated_minus_reference_ci95']:.4f} "
              f"{figures['psnr_generated']:>6.2f}/{figures['psnr_copy_reference']:.2f} "
              f"{figures['ssim_generated']:>6.3f}/{figures['ssim_copy_reference']:.3f} "
              f"{figures['expert_p_sync_dubbed']:>20.3f}/{figures['expert_p_sync_undubbed']:.3f}", flush=True)
    client.log_figure(run_id, _curves(rows, np.nanmean(own), np.nanmean(undubbed)), "curves/generator_bench.png")
    last = rows[max(rows)]
    print(f"\nlast checkpoint: dubbed mouth follows the new audio with r {last['dub_r']:.2f} "
          f"(own clips {np.nanmean(own):.2f}, undubbed {np.nanmean(undubbed):.2f}); total "
          f"{(time.time() - started) / 60:.1f} min; MLflow run {run_id} at {tracking_uri}")
    return 0


def _metric(key, value, step):
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), int(step))


def _curves(rows: dict, own_r: float, undubbed_r: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(rows)
    fig, (a, l1, b, c) = plt.subplots(1, 4, figsize=(18, 4))
    a.plot(steps, [rows[s]["dub_r"] for s in steps], marker="o", label="dubbed output")
    a.axhline(own_r, color="green", ls="--", lw=0.8, label="own clips (perfect sync)")
    a.axhline(undubbed_r, color="grey", ls="--", lw=0.8, label="undubbed input")
    a.set_title("mouth opening vs new audio loudness (r)")
    for key, label in (("psnr_generated", "generated"), ("psnr_copy_reference", "copy reference")):
        b.plot(steps, [rows[s][key] for s in steps], marker="o", label=label)
    b.set_title("lower-face PSNR (dB), held-out, own audio")
    for key, label in (("l1_generated", "generated"), ("l1_copy_reference", "copy reference")):
        l1.plot(steps, [rows[s][key] for s in steps], marker="o", label=label)
    l1.set_title("lower-face L1, held-out, own audio")
    for key, label in (("expert_p_sync_dubbed", "dubbed"), ("expert_p_sync_undubbed", "undubbed")):
        c.plot(steps, [rows[s][key] for s in steps], marker="o", label=label)
    c.set_title("expert P(sync) with another clip's audio")
    for ax in (a, l1, b, c):
        ax.set_xlabel("generator step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(main())
