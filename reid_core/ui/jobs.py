"""Work slower than a request (building a gallery index) run in a background thread, with
progress the page polls."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

RUNNING, DONE, FAILED = "running", "done", "failed"


@dataclass
class Job:
    """One piece of background work: what it is, how far it got, how it ended."""

    key: str
    title: str
    state: str = RUNNING
    done: int = 0
    total: int = 0
    message: str = ""
    started: float = field(default_factory=time.monotonic)

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def as_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "title": self.title,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "message": self.message,
            "seconds": round(time.monotonic() - self.started, 1),
        }


class Jobs:
    """Background jobs by key: starting a key that is running returns the running job, so a
    reloaded page never starts the same work twice."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, key: str, title: str, work: Callable[[Job], None]) -> Job:
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.state == RUNNING:
                return job
            job = self._jobs[key] = Job(key, title)
        threading.Thread(target=self._run, args=(job, work), daemon=True, name=key).start()
        return job

    def get(self, key: str) -> Job | None:
        return self._jobs.get(key)

    @staticmethod
    def _run(job: Job, work: Callable[[Job], None]) -> None:
        try:
            work(job)
        except Exception as err:  # noqa: BLE001 - the page shows why; the log has the trace
            log.exception("%s failed", job.title)
            job.message = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            job.state = FAILED
        else:
            job.state = DONE
