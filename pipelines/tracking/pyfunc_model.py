"""The MLflow pyfunc model of a registered version (MLflow's "models from code": this file is
copied into every MLflow Model and run where the model is loaded; no pickled object).

``mlflow.pyfunc.load_model("models:/wav2lip@champion").predict(df)``, one row per clip:

* wav2lip: columns ``face``, ``audio``, ``out`` (paths; the dubbed video is written to
  ``out``, returned in column ``out``), or ``face_b64``, ``audio_b64`` (file bytes in base64;
  returned as ``video_b64``), so ``mlflow models serve`` answers remote callers.
* lipsync-expert: ``video`` (a path) or ``video_b64``: the expert's sync scores of the clip
  (``lse_d``, ``lse_c``, ``offset``), as ``lipsync sync-score --judge expert`` gives them.

The weights are the version's own safetensors file (``artifacts/``), loaded with the library's
safe loader; the library (``lipsync``) must be installed where the model is served.
"""

import base64
import os
import tempfile
from pathlib import Path

import mlflow.models
import mlflow.pyfunc
import pandas as pd


def _to_file(b64: str, folder: str, name: str) -> str:
    """Decoded bytes on disk; a still picture gets an image suffix (lipsync then treats it as a photo)."""
    import cv2
    import numpy as np

    data = base64.b64decode(b64)
    is_image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is not None
    path = os.path.join(folder, name + (".png" if is_image else ".media"))
    with open(path, "wb") as f:
        f.write(data)
    return path


class LipsyncModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from lipsync.checkpoints import load_checkpoint

        self.checkpoint = context.artifacts["checkpoint"]
        self.kind = load_checkpoint(self.checkpoint).config.kind
        self._runner = None

    def _wav2lip(self):
        if self._runner is None:
            from lipsync.inference import InferenceOptions, LipSyncer

            self._runner = LipSyncer(self.checkpoint, InferenceOptions(progress=False))
        return self._runner

    def _judge(self):
        if self._runner is None:
            from lipsync.metrics.sync import ExpertJudge
            from lipsync.metrics.sync_score import load_expert

            self._runner = ExpertJudge(load_expert(self.checkpoint))
        return self._runner

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = model_input.to_dict("records")
        return pd.DataFrame([self._dub(r) if self.kind == "wav2lip" else self._score(r) for r in rows])

    def _dub(self, row: dict) -> dict:
        if row.get("face_b64"):
            with tempfile.TemporaryDirectory(prefix="lipsync-pyfunc-") as tmp:
                face = _to_file(row["face_b64"], tmp, "face")
                audio = _to_file(row["audio_b64"], tmp, "audio")
                out = Path(tmp) / "out.mp4"
                self._wav2lip().sync(face, audio, out)
                return {"video_b64": base64.b64encode(out.read_bytes()).decode()}
        self._wav2lip().sync(row["face"], row["audio"], row["out"])
        return {"out": row["out"]}

    def _score(self, row: dict) -> dict:
        from lipsync.metrics.sync_score import score_video

        with tempfile.TemporaryDirectory(prefix="lipsync-pyfunc-") as tmp:
            video = _to_file(row["video_b64"], tmp, "video") if row.get("video_b64") else row["video"]
            s = score_video(video, self._judge())
        return {"lse_d": float(s.lse_d), "lse_c": float(s.lse_c), "offset": int(s.offset)}


mlflow.models.set_model(LipsyncModel())
