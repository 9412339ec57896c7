"""One loaded model serving many clients: a fair FIFO queue, workers, cancellation, timeouts.

A plain llama.cpp context (and a transformers model) runs one generation at
a time, so requests are jobs in a bounded first-in-first-out queue that one
worker thread runs in order. With the batched engine (``--parallel P``) P
workers take jobs from the same queue, in order, and their generations
decode together in one context. A full queue is refused at once (the
HTTP layer answers 429 with Retry-After), a job whose client went away is
cancelled (its generation stops at the next token and the model is free for
the next job), and a job that runs past its time limit is cancelled too.

Chunks go from the worker thread to the waiting request's asyncio loop
through ``call_soon_threadsafe``, so the web server never blocks on the
model. The model loads in the background: until it is ready ``/health``
says 503.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from knowlm_local.errors import KnowLMError

_DONE = object()


class QueueFull(Exception):
    """More jobs are waiting than the queue holds."""


@dataclass(eq=False)  # jobs are compared by identity (they live in a set while running)
class Job:
    """Work for the model: ``run(model, job)`` yields results (chunks) or returns one value."""

    run: Callable[[Any, Job], Any]
    loop: asyncio.AbstractEventLoop
    timeout: float
    cancel: threading.Event = field(default_factory=threading.Event)
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    started: float | None = None
    queued_at: float = field(default_factory=time.monotonic)

    def emit(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)

    def expired(self) -> bool:
        return self.started is not None and time.monotonic() - self.started > self.timeout


class Engine:
    """The model, its queue and its worker thread."""

    def __init__(self, loader: Callable[[], Any], queue_size: int = 16, timeout: float = 300.0,
                 workers: int = 1) -> None:
        self._loader = loader
        self.queue_size = queue_size
        self.timeout = timeout
        self.workers = max(1, workers)
        self.model: Any = None
        self.error: KnowLMError | None = None
        self.ready = threading.Event()
        self._jobs: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._stop = False
        self.running: set[Job] = set()
        self.served = 0
        self._thread = threading.Thread(target=self._load, name="knowlm-model", daemon=True)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            for job in self._jobs:
                job.cancel.set()
            self._cv.notify_all()
        for job in list(self.running):
            job.cancel.set()
        self._thread.join(timeout=30)
        for thread in self._threads:
            thread.join(timeout=30)
        if self.model is not None:
            self.model.backend.close()

    @property
    def waiting(self) -> int:
        return len(self._jobs)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: a guess from the jobs ahead (at least 1)."""
        return max(1, min(60, self.waiting))

    def submit(self, run: Callable[[Any, Job], Any], timeout: float | None = None) -> Job:
        job = Job(run, asyncio.get_running_loop(), timeout or self.timeout)
        with self._cv:
            if len(self._jobs) >= self.queue_size:
                raise QueueFull
            self._jobs.append(job)
            self._cv.notify()
        return job

    def _load(self) -> None:
        try:
            self.model = self._loader()
        except KnowLMError as exc:
            self.error = exc
        except Exception as exc:  # a bug while loading: keep the server up, say it on /health
            self.error = KnowLMError(f"the model failed to load: {type(exc).__name__}: {exc}", "see the server log")
        finally:
            self.ready.set()
        self._threads = [threading.Thread(target=self._work, name=f"knowlm-worker-{i}", daemon=True)
                         for i in range(1, self.workers)]
        for thread in self._threads:
            thread.start()
        self._work()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                job = self._jobs.popleft()
            if job.cancel.is_set():
                job.emit(_DONE)
                continue
            with self._cv:
                self.running.add(job)
            job.started = time.monotonic()
            try:
                if self.error is not None:
                    raise self.error
                result = job.run(self.model, job)
                if hasattr(result, "__next__"):
                    for item in result:
                        job.emit(item)
                        if job.cancel.is_set() or job.expired():
                            job.cancel.set()
                            result.close()
                            break
                else:
                    job.emit(result)
            except Exception as exc:  # delivered to the request, which answers with the error
                job.emit(exc)
            finally:
                with self._cv:
                    self.running.discard(job)
                    self.served += 1
                job.emit(_DONE)


async def results(job: Job) -> AsyncIterator[Any]:
    """What the worker produced for ``job``, as it comes; an exception raised by the job is re-raised here."""
    while True:
        item = await job.out.get()
        if item is _DONE:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def cancel_on_exit(job: Job) -> None:
    """Stop ``job`` (a client that disconnected, or a request handler that ended early)."""
    job.cancel.set()
