"""The whole mission on one machine, as a user would run it: every step is the real command.

    synthetic corpus → preprocess (Ray Data) → train the expert (Ray Train) → evaluate + promote it
    → preprocess again, sync-filtered by that champion (off-sync clips rejected, shifted ones
    realigned) → train the generator on those shards, judged by the champion → evaluate + promote it
    → lipsync infer on a held-out speaker's video with another speaker's audio

Local Ray on 127.0.0.1 and the embedded SQLite MLflow store (./mlruns.db, the store every
lipsync command reads by default). Each step prints one line with a progress bar; the
commands' own output (Ray's and MLflow's included) goes to <workdir>/demo.log unless
--verbose. A re-run reuses every step whose command and inputs are unchanged (--fresh
starts over). Sizes are chosen so the whole chain takes minutes on 2 CPU cores; the same
commands scale up by their flags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines.common.console import PIECES_PROGRESS  # noqa: E402
from pipelines.orchestrate.chain import Chain  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="demo", help="where the corpus, shards, outputs and log go (default: demo)")
    p.add_argument("--speakers", type=int, default=8, help="synthetic speakers (default: 8)")
    p.add_argument("--clips-per-speaker", type=int, default=4, help="clips per speaker (default: 4)")
    p.add_argument("--expert-steps", type=int, default=300, help="expert training steps (default: 300)")
    p.add_argument("--expert-width", type=float, default=0.25, help="expert channel multiplier (default: 0.25)")
    p.add_argument("--expert-gate", type=float, default=0.6,
                   help="held-out accuracy the expert needs to become champion (default: 0.6)")
    p.add_argument("--min-sync-confidence", type=float, default=None,
                   help="sync filter: reject clips under this confidence (default: the expert judge's, 0.2)")
    p.add_argument("--max-sync-offset", type=int, default=6,
                   help="sync filter: reject clips whose audio is off by more frames (default: 6)")
    p.add_argument("--generator-steps", type=int, default=400, help="generator training steps (default: 400)")
    p.add_argument("--generator-width", type=float, default=0.125,
                   help="generator channel multiplier (default: 0.125)")
    p.add_argument("--generator-batch-size", type=int, default=16, help="generator global batch (default: 16)")
    p.add_argument("--generator-lr", type=float, default=1e-3,
                   help="generator and discriminator learning rate (default: 1e-3; the paper's 1e-4 is for "
                        "full-size runs of days)")
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (default: 2)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlruns.db)")
    p.add_argument("--fresh", action="store_true", help="run every step again instead of reusing finished ones")
    p.add_argument("--verbose", action="store_true", help="show every command's own output instead of the log file")
    return p


def held_out_pair(corpus: Path) -> tuple[Path, Path]:
    """A test-split video and the audio of a clip of another held-out speaker (test split
    first, then val: neither was trained on)."""
    def listed(split: str) -> list[Path]:
        lines = (corpus / f"{split}.txt").read_text().splitlines()
        return [corpus / "main" / f"{line.strip()}.mp4" for line in lines if line.strip()]

    test = listed("test")
    face = test[0]
    others = [c for c in test + listed("val") if c.parent.name != face.parent.name]
    if not others:
        raise SystemExit(f"demo: {corpus} has one held-out speaker; pass --speakers 8 or more")
    return face, others[0]


def summary_rows(shards: Path, synced: Path, expert_eval, scores) -> list[tuple[str, str]]:
    summary = json.loads((shards / "summary.json").read_text())
    rows = [("clips processed / rejected", f"{summary['ok']} / {summary['rejected'] + summary.get('errors', 0)}")]
    filtered = json.loads((synced / "summary.json").read_text())
    sync = filtered.get("sync") or {}
    rows.append(("sync filter: kept / rejected / realigned",
                 f"{filtered['ok']} / {filtered['rejected']} / {sync.get('realigned_clips', 0)}"))
    metrics = (expert_eval.result or {}).get("metrics", {})
    if "test_accuracy" in metrics:
        rows.append(("expert accuracy, held-out speakers", f"{metrics['test_accuracy']:.3f}"))
    names = ("dubbed output", "undubbed input, same audio", "ground truth (the audio's own video)")
    for name, score in zip(names, scores.objects):
        if score.get("lse_d") is not None:
            rows.append((f"LSE-D / LSE-C, {name}", f"{score['lse_d']:.3f} / {score['lse_c']:.3f}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    from lipsync.model_ref import default_tracking_uri

    args = build_parser().parse_args(argv)
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    tracking = args.tracking_uri or default_tracking_uri()
    # Every step is told its store (--tracking-uri) and runs in the caller's folder: nothing may
    # lean on MLflow's process-wide default there (tests/test_demo.py checks the folder is left as it was).
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = str(REPO)
    chain = Chain(work, env, Path.cwd(), tracking, fresh=args.fresh, verbose=args.verbose)
    py = sys.executable
    # The workflows run with --verbose: the chain already keeps every command's whole output
    # in demo.log and shows one bar per step; their own quiet console would split the log in two.
    corpus, shards, synced = work / "corpus", work / "shards", work / "shards_synced"

    chain.run("corpus", "synthetic corpus", [
        py, "-m", "lipsync", "synth", "--out", str(corpus), "--speakers", str(args.speakers),
        "--clips-per-speaker", str(args.clips_per_speaker), "--seed", "0", "--layout", "lrs2"],
        outputs=[corpus / "synth.json"], progress=r"synth clips:.*?(\d+)/(\d+)")
    chain.run("preprocess", "preprocess (Ray Data → WebDataset shards)", [
        py, str(REPO / "workflows" / "preprocess.py"), "--input", str(corpus), "--layout", "lrs2",
        "--output", str(shards), "--tracking-uri", tracking, "--verbose"], outputs=[shards / "summary.json"],
        after=["corpus"], progress=PIECES_PROGRESS)
    chain.run("expert", "train the lip-sync expert (Ray Train DDP)", [
        py, str(REPO / "workflows" / "train.py"), "--stage", "expert", "--shards", str(shards),
        "--width", str(args.expert_width),
        "--max-steps", str(args.expert_steps), "--lr", "1e-3", "--num-workers", str(args.num_workers),
        "--storage-path", str(work / "ray_results"), "--tracking-uri", tracking, "--verbose"], after=["preprocess"],
        registers="lipsync-expert")
    expert_eval = chain.run("expert_eval", "evaluate the expert on held-out speakers; promote it to champion", [
        py, str(REPO / "workflows" / "evaluate.py"), "--model", "models:/lipsync-expert@candidate",
        "--shards", str(shards),
        "--tracking-uri", tracking, "--promote", "--threshold", f"test_accuracy={args.expert_gate}"],
        after=["expert"])
    confidence = [] if args.min_sync_confidence is None else ["--min-sync-confidence", str(args.min_sync_confidence)]
    chain.run("sync_filter", "sync-filter the clips with the champion expert (reject off-sync, realign shifted)", [
        py, str(REPO / "workflows" / "preprocess.py"), "--input", str(corpus), "--layout", "lrs2",
        "--output", str(synced),
        "--sync-filter", "models:/lipsync-expert@champion", "--fix-offset", "--max-sync-offset",
        str(args.max_sync_offset), *confidence, "--tracking-uri", tracking, "--verbose"],
        outputs=[synced / "summary.json"], after=["expert_eval"], progress=PIECES_PROGRESS)
    chain.run("generator", "train the generator (Wav2Lip + GAN), judged by the champion expert", [
        py, str(REPO / "workflows" / "train.py"), "--stage", "generator", "--shards", str(synced),
        "--expert", "models:/lipsync-expert@champion", "--width", str(args.generator_width),
        "--max-steps", str(args.generator_steps), "--batch-size", str(args.generator_batch_size),
        "--lr", str(args.generator_lr), "--disc-lr", str(args.generator_lr),
        "--checkpoint-every", str(max(1, args.generator_steps // 4)), "--log-every", "20",
        "--num-workers", str(args.num_workers), "--storage-path", str(work / "ray_results"),
        "--tracking-uri", tracking, "--verbose"], after=["sync_filter"], registers="wav2lip")
    chain.run("generator_eval", "evaluate the generator on held-out speakers; promote it to champion", [
        py, str(REPO / "workflows" / "evaluate.py"), "--model", "models:/wav2lip@candidate",
        "--shards", str(synced),
        "--judge-model", "models:/lipsync-expert@champion", "--tracking-uri", tracking, "--promote"],
        after=["generator"])

    face, audio = held_out_pair(corpus)
    out, undubbed = work / "result.mp4", work / "undubbed.mp4"
    both, strip = work / "side_by_side.mp4", work / "strip.png"
    chain.run("infer", "lip-sync a held-out speaker's video to another speaker's audio", [
        py, "-m", "lipsync", "infer", "--face", str(face), "--audio", str(audio),
        "--model", "models:/wav2lip@champion", "--tracking-uri", tracking, "--out", str(out)],
        after=["generator_eval"], outputs=[out],
        progress=r"(\d+)/(\d+) \[")
    chain.run("compare", "before and after: side-by-side video, PNG strip", [
        py, "-m", "lipsync", "compare", "--input", str(face), "--output", str(out), "--side-by-side", str(both),
        "--strip", str(strip), "--undubbed", str(undubbed)], after=["infer"], outputs=[both, strip, undubbed])
    scores = chain.run("score", "sync scores (our champion expert as the judge)", [
        py, "-m", "lipsync", "sync-score", "--judge", "expert", "--model", "models:/lipsync-expert@champion",
        "--tracking-uri", tracking, "--json", str(out), str(undubbed), str(audio)], after=["compare"])

    chain.finish(work, tracking, rows=summary_rows(shards, synced, expert_eval, scores), paths=[
        ("output video (held-out face, another speaker's audio)", out), ("side-by-side video", both),
        ("before/after strip", strip)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
