"""A registered version as an MLflow Model: the pyfunc flavor from code
(``pipelines/tracking/pyfunc_model.py``), a signature, an input example, and the version's
own checkpoint file as its one artifact, so MLflow's tools (``mlflow.pyfunc.load_model``,
``mlflow models serve``, ``build-docker``) can use what the registry holds. Nothing is pickled.
"""

from __future__ import annotations

from pathlib import Path

PYFUNC_CODE = Path(__file__).resolve().parent / "pyfunc_model.py"
MODEL_DIR = "mlflow-model"  # inside the registered checkpoint folder of the run

_COLUMNS = {
    "wav2lip": (("face", "audio", "out", "face_b64", "audio_b64"), ("out", "video_b64"),
                {"face": ["face.mp4"], "audio": ["speech.wav"], "out": ["dubbed.mp4"]}),
    "expert": (("video", "video_b64"), ("lse_d", "lse_c", "offset"), {"video": ["clip.mp4"]}),
}
PYFUNC_KINDS = tuple(_COLUMNS)  # other kinds (a discriminator, a third stage's) stay plain checkpoint folders


def save_mlflow_model(checkpoint: Path, kind: str, dst: Path) -> Path:
    """Write the MLflow Model of ``checkpoint`` (a ``kind`` model file) into ``dst``."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs, outputs, example = _COLUMNS[kind]
    out_types = {"lse_d": "double", "lse_c": "double", "offset": "long"}
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", name, required=False) for name in inputs]),
        outputs=Schema([ColSpec(out_types.get(name, "string"), name, required=False) for name in outputs]))
    mlflow.pyfunc.save_model(
        str(dst), python_model=str(PYFUNC_CODE), artifacts={"checkpoint": str(checkpoint)},
        signature=signature, input_example=pd.DataFrame(example),
        # The library itself, installed where the model is served (this repository, or the image).
        pip_requirements=["lipsync"])
    return dst
