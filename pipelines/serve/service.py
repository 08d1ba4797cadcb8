"""The Ray Serve deployment: ``GET /healthz`` and ``POST /v1/lipsync``.

One replica holds one ``LipSyncer`` (the generator loaded once, from the model version pinned
when the service started) and runs one inference at a time: on a CPU a second one would only
halve the speed of both, and the syncer's detector is shared. Up to ``queue`` more requests
wait on the replica; past that the caller gets 503 with ``Retry-After`` at once, never a hang.
Serve's own admission limit sits just above that count, so its router spreads requests over
replicas and the autoscaler sees them as ongoing.

Every request works in its own temporary folder, removed when the answer is ready: nothing
stays on disk. Errors are JSON ``{"error": "<one line>"}``.
"""


import asyncio
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from lipsync.errors import LipsyncError
from pipelines.serve.auth import bearer_matches
from pipelines.serve.request_options import FIELDS, request_options
from pipelines.serve.uploads import RequestError, UploadBudget, recognise, save_upload

log = logging.getLogger("lipsync.serve")

MEDIA = ("face", "audio")
GRACE_S = 3600


@dataclass
class ServiceConfig:
    model: str  # as the user named it (models:/wav2lip@champion)
    version: str  # what it pointed at when the service started (models:/wav2lip/7, or a file)
    tracking_uri: str | None
    token_digest: str  # SHA-256 of the bearer token (the token itself stays with the starter)
    max_upload_mb: float = 200.0
    queue: int = 4
    precision: str = "auto"
    device: str = "auto"
    retry_after_s: int = 5


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


app = FastAPI(title="lipsync", docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(name="lipsync")
@serve.ingress(app)
class LipsyncService:
    def __init__(self, config: dict):
        from lipsync.inference.options import InferenceOptions
        from lipsync.inference.pipeline import LipSyncer

        self.config = ServiceConfig(**config)
        self.base = InferenceOptions(progress=False, precision=self.config.precision,
                                     device=self.config.device).check()
        self.syncer = LipSyncer(self.config.version, self.base, tracking_uri=self.config.tracking_uri)
        self.lock = asyncio.Lock()
        self.admitted = 0  # running + waiting on this replica

    @app.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "model": self.config.model, "version": self.config.version,
                "generator": self.syncer.generator.describe(), "ongoing": self.admitted}

    @app.post("/v1/lipsync")
    async def lipsync(self, request: Request):
        if not bearer_matches(request.headers.get("authorization"), self.config.token_digest):
            return error(401, "missing or wrong bearer token (send Authorization: Bearer <token>)")
        limit = int(self.config.max_upload_mb * 2**20)
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return error(411, "the upload needs a Content-Length header")
        if int(length) > limit:
            return error(413, f"the upload ({int(length) / 2**20:.1f} MB) is over the service's limit "
                              f"of {self.config.max_upload_mb:g} MB")
        if self.admitted > self.config.queue:
            return error(503, "every replica is busy; retry later",
                         headers={"Retry-After": str(self.config.retry_after_s)})
        self.admitted += 1
        folder = Path(tempfile.mkdtemp(prefix="lipsync-serve-"))
        labels: dict[str, str] = {}  # saved path -> "face (clip.mp4)": errors name what the caller sent
        try:
            face, audio, opts = await self._read(request, folder, UploadBudget(limit), labels)
            out = folder / "out.mp4"
            async with self.lock:
                result = await asyncio.to_thread(self._sync, face, audio, opts, out)
            return Response(out.read_bytes(), media_type="video/mp4", headers={
                "X-Lipsync-Model-Version": self.config.version, "X-Lipsync-Frames": str(result.n_frames),
                "X-Lipsync-Seconds": f"{result.audio_seconds:.3f}"})
        except RequestError as e:
            return error(e.status, e.message)
        except LipsyncError as e:  # no face, no usable audio, a bad option: the caller's input
            message = str(e).splitlines()[0]
            for path, label in labels.items():
                message = message.replace(path, label)
            return error(400, message)
        except Exception as e:  # noqa: BLE001 - the service answers, logs, and keeps serving
            log.exception("request failed")
            return error(500, f"internal error: {type(e).__name__}")
        finally:
            self.admitted -= 1
            shutil.rmtree(folder, ignore_errors=True)

    async def _read(self, request: Request, folder: Path, budget: UploadBudget, labels: dict):
        form = await request.form(max_files=len(MEDIA), max_fields=len(FIELDS))
        try:
            saved, names, fields = {}, {}, {}
            for key, value in form.multi_items():
                if isinstance(value, str):
                    fields[key] = value
                elif key in MEDIA and key not in saved:
                    names[key] = value.filename
                    saved[key] = await save_upload(value, folder, key, budget)
                else:
                    raise RequestError(400, f"unexpected file field {key!r} (send face and audio once each)")
        finally:
            await form.close()
        missing = [m for m in MEDIA if m not in saved]
        if missing:
            raise RequestError(400, f"missing file field {missing[0]!r} (multipart fields: face, audio)")
        opts = request_options(fields, self.base)
        face, audio = (recognise(saved[m], m, names[m]) for m in MEDIA)
        labels.update({str(face): f"face ({names['face'] or 'unnamed'})",
                       str(audio): f"audio ({names['audio'] or 'unnamed'})"})
        return face, audio, opts

    def _sync(self, face: Path, audio: Path, opts, out: Path):
        # One inference at a time (the lock): the options are this request's for its duration.
        self.syncer.options = opts
        return self.syncer.sync(face, audio, out)


def deployment(config: ServiceConfig, *, min_replicas: int = 1, max_replicas: int = 1,
               num_cpus: float = 1.0, num_gpus: float = 0.0):
    """The bound application: replicas autoscaled on ongoing requests between the bounds."""
    scaling = ({"autoscaling_config": {"min_replicas": min_replicas, "max_replicas": max_replicas,
                                       "target_ongoing_requests": 1, "upscale_delay_s": 2,
                                       "downscale_delay_s": 30}}
               if max_replicas > min_replicas else {"num_replicas": min_replicas})
    # A replica being replaced (a new version, a downscale) finishes what it holds first: a
    # lip-sync of a long file takes minutes, Serve's default grace is 20 s.
    return LipsyncService.options(
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        max_ongoing_requests=config.queue + 2, graceful_shutdown_timeout_s=GRACE_S,
        graceful_shutdown_wait_loop_s=1, **scaling,
    ).bind(asdict(config))
