"""The Ray Serve deployment: the service's routes.

* ``GET /`` (no token): the web page (``page.html``): pick or drop a face and an audio file
  (or record one), type the token, watch the job's progress, play and download the result.
* ``GET /healthz`` (no token): the model as named, the version it was pinned to, the
  generator's backend, and the requests this replica holds.
* ``POST /v1/lipsync`` (multipart ``face``, ``audio`` and any of infer's options as text
  fields): the dubbed video (``video/mp4``); with ``?async=1`` 202 and a job id instead.
* ``GET /v1/jobs/{id}`` status and progress; ``GET /v1/jobs/{id}/result`` the video.

One replica holds one ``LipSyncer`` (the generator loaded once, from the model version pinned
when the service started) and runs one inference at a time: on a CPU a second one would only
halve the speed of both, and the syncer's detector is shared. Up to ``queue`` more requests
wait on the replica; past that the caller gets 503 with ``Retry-After`` at once, never a hang.
Serve's own admission limit sits just above that count, so its router spreads requests over
replicas and the autoscaler sees them as ongoing.

Every request works in its own temporary folder, removed when the answer is ready (a job's,
when the job ends): nothing stays on disk. Errors are JSON ``{"error": "<one line>"}``.
"""


import asyncio
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from lipsync.errors import LipsyncError
from pipelines.serve.auth import bearer_matches
from pipelines.serve.request_options import FIELDS, request_options
from pipelines.serve.uploads import RequestError, UploadBudget, recognise, save_upload

log = logging.getLogger("lipsync.serve")

MEDIA = ("face", "audio")
GRACE_S = 3600
PAGE = (Path(__file__).resolve().parent / "page.html").read_text()  # the web page at /: plain HTML + JS
TEMP_PREFIX = "lipsync-serve-"  # + the replica's pid: a new replica removes a dead one's folders


def remove_dead_replicas_folders() -> None:
    """A replica killed mid-request (OOM, a lost node's restart) leaves its request's folder;
    the next replica on the machine removes every folder whose replica process is gone."""
    for folder in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*-*"):
        pid = folder.name[len(TEMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or not folder.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


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
    job_ttl_s: float = 3600.0  # how long a finished job's status and video are kept
    model_store: str | None = None  # a local checkpoint file shipped to the replicas (model_store.py)


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
        remove_dead_replicas_folders()
        self.base = InferenceOptions(progress=False, precision=self.config.precision,
                                     device=self.config.device).check()
        model = self.config.version
        if self.config.model_store:  # the starter's file, on whichever node this replica runs
            from pipelines.serve.model_store import fetch_model_file

            shipped = fetch_model_file(self.config.model_store)
            model = str(shipped)
        self.syncer = LipSyncer(model, self.base, tracking_uri=self.config.tracking_uri)
        if self.config.model_store:
            shutil.rmtree(shipped.parent, ignore_errors=True)  # loaded: the copy is not needed
        self.lock = asyncio.Lock()
        self.admitted = 0  # running + waiting on this replica (requests and jobs)
        self.limit = int(self.config.max_upload_mb * 2**20)
        self.jobs: set = set()  # the running jobs' tasks (the loop keeps only weak references)
        self._board = None

    @app.get("/", response_class=HTMLResponse)
    def page(self) -> HTMLResponse:
        # The page holds no secret: the person types the token, its script sends it per request.
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})

    @app.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "model": self.config.model, "version": self.config.version,
                "generator": self.syncer.generator.describe(), "ongoing": self.admitted}

    @app.post("/v1/lipsync")
    async def lipsync(self, request: Request):
        refused = self._refusal(request)
        if refused is not None:
            return refused
        self.admitted += 1
        folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
        labels: dict[str, str] = {}  # saved path -> "face (clip.mp4)": errors name what the caller sent
        handed_over = False  # to an asynchronous job, which then cleans up
        try:
            face, audio, opts = await self._read(request, folder, UploadBudget(self.limit), labels)
            if request.query_params.get("async", "").lower() in ("1", "true", "yes"):
                job_id = uuid.uuid4().hex
                await self.board().add.remote(job_id, self.config.version)
                self.jobs.add(asyncio.get_running_loop().create_task(
                    self._job(job_id, folder, face, audio, opts, labels)))
                handed_over = True
                return JSONResponse({"id": job_id, "status": "queued", "status_url": f"/v1/jobs/{job_id}",
                                     "result_url": f"/v1/jobs/{job_id}/result"}, status_code=202)
            result, video = await self._run(face, audio, opts, folder / "out.mp4")
            return Response(video, media_type="video/mp4", headers={
                "X-Lipsync-Model-Version": self.config.version, "X-Lipsync-Frames": str(result.n_frames),
                "X-Lipsync-Seconds": f"{result.audio_seconds:.3f}"})
        except Exception as e:  # noqa: BLE001 - every failure is an answer; the service keeps serving
            return error(*self._failure(e, labels))
        finally:
            if not handed_over:
                self.admitted -= 1
                shutil.rmtree(folder, ignore_errors=True)

    @app.get("/v1/jobs/{job_id}")
    async def job(self, job_id: str, request: Request):
        job = await self._job_for(job_id, request)
        if isinstance(job, JSONResponse):
            return job
        body = {k: job[k] for k in ("id", "status", "frames_done", "frames", "version")}
        body["progress"] = round(job["frames_done"] / job["frames"], 4) if job["frames"] else 0.0
        if job["status"] == "failed":
            body["error"] = job["error"]
        return body

    @app.get("/v1/jobs/{job_id}/result")
    async def job_result(self, job_id: str, request: Request):
        job = await self._job_for(job_id, request)
        if isinstance(job, JSONResponse):
            return job
        if job["status"] == "failed":
            return error(job["error_status"], job["error"])
        if job["status"] != "done":
            return error(409, f"job {job_id} is {job['status']} ({job['frames_done']}/{job['frames'] or '?'} frames); "
                              f"ask again later", headers={"Retry-After": str(self.config.retry_after_s)})
        video = await self.board().result.remote(job_id)
        return Response(video, media_type="video/mp4", headers={
            "X-Lipsync-Model-Version": job["version"], "X-Lipsync-Frames": str(job["frames"])})

    # ------------------------------------------------------------------ steps

    def _refusal(self, request: Request) -> JSONResponse | None:
        """The answer to a request refused before its body is read, or None."""
        if not bearer_matches(request.headers.get("authorization"), self.config.token_digest):
            return error(401, "missing or wrong bearer token (send Authorization: Bearer <token>)")
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return error(411, "the upload needs a Content-Length header")
        if int(length) > self.limit:
            return error(413, f"the upload ({int(length) / 2**20:.1f} MB) is over the service's limit "
                              f"of {self.config.max_upload_mb:g} MB")
        if self.admitted > self.config.queue:
            return error(503, "every replica is busy; retry later",
                         headers={"Retry-After": str(self.config.retry_after_s)})
        return None

    async def _job_for(self, job_id: str, request: Request):
        if not bearer_matches(request.headers.get("authorization"), self.config.token_digest):
            return error(401, "missing or wrong bearer token (send Authorization: Bearer <token>)")
        job = await self.board().get.remote(job_id)
        if job is None:
            return error(404, f"no job {job_id} (unknown, or finished more than "
                              f"{self.config.job_ttl_s:g} s ago)")
        return job

    async def _run(self, face: Path, audio: Path, opts, out: Path, on_frame=None):
        async with self.lock:
            result = await asyncio.to_thread(self._sync, face, audio, opts, out, on_frame)
        return result, out.read_bytes()

    async def _job(self, job_id: str, folder: Path, face: Path, audio: Path, opts, labels: dict) -> None:
        board = self.board()
        last = [0.0]

        def on_frame(done: int, total: int) -> None:  # inference thread: a few updates a second
            now = time.monotonic()
            if done == total or now - last[0] > 0.25:
                last[0] = now
                board.progress.remote(job_id, done, total)

        try:
            _, video = await self._run(face, audio, opts, folder / "out.mp4", on_frame)
            await board.finish.remote(job_id, video)
        except Exception as e:  # noqa: BLE001 - a failed job is a status, not a dead replica
            await board.fail.remote(job_id, *self._failure(e, labels))
        finally:
            self.admitted -= 1
            shutil.rmtree(folder, ignore_errors=True)
            self.jobs.discard(asyncio.current_task())

    @staticmethod
    def _failure(e: Exception, labels: dict) -> tuple[int, str]:
        """(HTTP status, one-line message) of a failed request, naming the caller's files."""
        if isinstance(e, RequestError):
            return e.status, e.message
        if isinstance(e, LipsyncError):  # no face, no usable audio, a bad option: the caller's input
            message = str(e).splitlines()[0]
            for path, label in labels.items():
                message = message.replace(path, label)
            return 400, message
        log.error("request failed", exc_info=e)
        return 500, f"internal error: {type(e).__name__}"

    def board(self):
        if self._board is None:
            from pipelines.serve.jobs import job_board

            self._board = job_board(self.config.job_ttl_s)
        return self._board

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

    def _sync(self, face: Path, audio: Path, opts, out: Path, on_frame=None):
        # One inference at a time (the lock): the options are this request's for its duration.
        self.syncer.options = opts
        return self.syncer.sync(face, audio, out, on_frame=on_frame)


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
