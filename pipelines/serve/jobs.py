"""The service's asynchronous jobs (``POST /v1/lipsync?async=1``): one board for all replicas.

A job is accepted by whichever replica got the request and can be asked about at any other,
so its state lives in one named Ray actor (``JobBoard``, created by the first replica that
needs it): status, progress in frames, the error of a failed job, and the finished video's
bytes (a job's files never touch a disk past its request). Finished jobs are kept for
``ttl_s`` and then forgotten; a job whose replica died stays "running" until then.
"""

from __future__ import annotations

import time

import ray

BOARD_NAME = "lipsync-jobs"
BOARD_NAMESPACE = "serve"


@ray.remote(num_cpus=0)
class JobBoard:
    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self.jobs: dict[str, dict] = {}
        self.results: dict[str, bytes] = {}

    def add(self, job_id: str, version: str) -> None:
        self._forget_expired()
        self.jobs[job_id] = {"id": job_id, "status": "queued", "frames_done": 0, "frames": None,
                             "version": version, "created": time.time(), "ended": None}

    def progress(self, job_id: str, done: int, total: int) -> None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.update(status="running", frames_done=done, frames=total)

    def finish(self, job_id: str, video: bytes) -> None:
        job = self.jobs.get(job_id)
        if job is not None:
            self.results[job_id] = video
            job.update(status="done", frames_done=job["frames"] or job["frames_done"], ended=time.time())

    def fail(self, job_id: str, status: int, message: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.update(status="failed", error=message, error_status=status, ended=time.time())

    def get(self, job_id: str) -> dict | None:
        self._forget_expired()
        job = self.jobs.get(job_id)
        return None if job is None else dict(job)

    def result(self, job_id: str) -> bytes | None:
        return self.results.get(job_id)

    def _forget_expired(self) -> None:
        now = time.time()
        for job_id in [j for j, job in self.jobs.items() if job["ended"] and now - job["ended"] > self.ttl_s]:
            self.jobs.pop(job_id, None)
            self.results.pop(job_id, None)


def job_board(ttl_s: float):
    """The service's board (the same actor from every replica)."""
    return JobBoard.options(name=BOARD_NAME, namespace=BOARD_NAMESPACE, get_if_exists=True,
                            lifetime="detached").remote(ttl_s)


def remove_job_board() -> None:
    """Kill the board when the service stops (it is detached: it would outlive the app)."""
    try:
        ray.kill(ray.get_actor(BOARD_NAME, namespace=BOARD_NAMESPACE))
    except ValueError:  # no job was ever accepted
        pass
