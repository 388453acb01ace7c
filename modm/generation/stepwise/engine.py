"""`StepEngine`: one thread that runs the denoising of many requests, joining and leaving at step boundaries.

Each loop: admit waiting requests up to the batch size (when idle, wait up to `max_wait_s` for company), drop the
stopped ones, run one denoiser pass over the active requests of one batch key (image size; keys take turns; a pass
that fails runs again one request at a time), and decode and answer the finished ones. Only this thread touches the
pipeline: diffusers pipelines are not re-entrant, and each request's start uses the pipeline's own scheduler before it
takes its copy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import torch

from modm.config.feature_cache import FEATURE_CACHE_INFO_KEY
from modm.generation.interface import Operation
from modm.generation.stepwise.family import Denoising, Family, Job

__all__ = ["EngineClosedError", "StepEngine"]

logger = logging.getLogger(__name__)


class EngineClosedError(RuntimeError):
    """The step-batching engine was closed: it takes no more requests."""


class StepEngine:
    def __init__(
        self,
        family: Family,
        *,
        name: str,
        max_batch_size: int,
        max_wait_s: float,
        on_pass: Callable[[int, float, int], None] | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be at least 1")
        if not max_wait_s >= 0:
            raise ValueError(f"max_wait_s={max_wait_s} must be >= 0")
        self.family = family
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.on_pass = on_pass
        self._waiting: deque[Job] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._passes = 0
        # Seconds of request starts (text and image encoding) and decodes since the last reported pass: added to
        # it, so that the passes' seconds add up to what the requests cost, as a whole pipeline call's do.
        self._unreported_s = 0.0
        self._thread = threading.Thread(target=self._serve, name=f"step-batching-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------- other threads
    def submit(self, job: Job) -> None:
        with self._changed:
            if self._closed:
                raise self._closed_error()
            self._waiting.append(job)
            self._changed.notify()

    def wake(self) -> None:
        """A request was stopped: let the loop see it now even when idle."""
        with self._changed:
            self._changed.notify()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the loop after its current pass; requests still waiting or running fail with EngineClosedError."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _closed_error(self) -> EngineClosedError:
        return EngineClosedError(f"the {self.name} model's step-batching engine is closed")

    # ------------------------------------------------------------------------------------------- the loop
    def _serve(self) -> None:
        active: list[Denoising] = []
        try:
            while True:
                admitted = self._admit(len(active))
                if admitted is None:
                    break
                with torch.inference_mode():
                    active += [state for state in map(self._start, admitted) if state is not None]
                    active = self._leave(active)
                    if active:
                        active = self._leave(self._pass(active))
        except BaseException:  # the loop's own bug: say so rather than leave every caller waiting
            logger.exception("%s model: the step-batching engine stopped", self.name)
            raise
        finally:
            with self._changed:
                self._closed = True
                left = list(self._waiting)
                self._waiting.clear()
            for job in left + [state.job for state in active]:
                _fail(job, self._closed_error())

    def _admit(self, active: int) -> list[Job] | None:
        """Waiting requests that fit beside `active` running ones; blocks while there is nothing to do. None once
        closed."""
        with self._changed:
            while not self._closed and active == 0 and not self._drop_stopped_waiting():
                self._changed.wait()
            if active == 0 and self.max_wait_s > 0:  # idle: give others a moment to share the first pass
                deadline = time.monotonic() + self.max_wait_s
                while not self._closed and len(self._waiting) < self.max_batch_size:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._changed.wait(left)
                    self._drop_stopped_waiting()
            if self._closed:
                return None
            self._drop_stopped_waiting()
            room = self.max_batch_size - active
            return [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]

    def _drop_stopped_waiting(self) -> int:
        """Answer the waiting requests whose caller went away; how many still wait (under the lock)."""
        for job in [job for job in self._waiting if job.control.should_stop()]:
            self._waiting.remove(job)
            _fail(job, job.control.interrupted())
        return len(self._waiting)

    def _start(self, job: Job) -> Denoising | None:
        if job.control.should_stop():
            _fail(job, job.control.interrupted())
            return None
        started = time.perf_counter()
        try:
            return self.family.start(job)
        except Exception as error:  # this request alone fails: its input, or its share of the device
            logger.warning("%s model: a %s request failed to start: %r", self.name, job.operation.value, error)
            _fail(job, error)
            return None
        finally:
            self._unreported_s += time.perf_counter() - started

    def _pass(self, active: list[Denoising]) -> list[Denoising]:
        """One denoising step of the requests of the batch key that waited longest, in one denoiser pass; those
        still running after it. A pass that fails is run again one request at a time, so that only a request that
        fails by itself gets the error."""
        first = min(active, key=lambda state: state.last_pass)
        if self.family.one_request_per_pass:
            group = [first]
        else:
            group = [state for state in active if state.batch_key == first.batch_key]
        self._passes += 1
        for state in group:
            state.last_pass = self._passes
        error = self._step(group)
        if error is not None and len(group) > 1:
            logger.warning(
                "%s model: a pass over %d requests failed (%r); running them one at a time",
                self.name,
                len(group),
                error,
            )
            for state in group:
                self._step([state])
        return [state for state in active if not state.job.future.done()]

    def _step(self, states: list[Denoising]) -> Exception | None:
        """One denoiser pass over `states` and each one's scheduler step; the pass's error, if it failed (and then
        no request moved on), after failing a request that ran alone. A request whose own step fails fails alone."""
        started = time.perf_counter()
        try:
            predictions = self.family.predict(states)
        except Exception as error:
            if len(states) == 1:
                logger.warning("%s model: a denoising step failed: %r", self.name, error)
                _fail(states[0].job, error)
            return error
        for state, prediction in zip(states, predictions):
            try:
                self.family.advance(state, prediction)
            except Exception as error:
                logger.warning("%s model: a scheduler step failed: %r", self.name, error)
                _fail(state.job, error)
                continue
            state.job.control.steps_run += 1
            if state.snapshots is not None:
                done = state.position - 1  # as the pipelines' callback_on_step_end: the index of the step just run
                state.snapshots(state.pipe, done, state.timesteps[done], {"latents": state.latents})
        if self.on_pass is not None:
            if self.family.device.type == "cuda":
                torch.cuda.synchronize(self.family.device)  # the pass's time, not its launch's
            try:
                self.on_pass(len(states), time.perf_counter() - started + self._unreported_s, 1)
                self._unreported_s = 0.0
            except Exception:
                logger.exception("%s model: on_pass failed", self.name)
        return None

    def _leave(self, active: list[Denoising]) -> list[Denoising]:
        """Answer the stopped and the finished requests; the rest keep running."""
        running = []
        for state in active:
            job = state.job
            if job.control.should_stop():
                _fail(job, job.control.interrupted())
            elif state.done:
                started = time.perf_counter()
                try:
                    image = self.family.decode(state)
                except Exception as error:
                    logger.warning("%s model: decoding failed: %r", self.name, error)
                    _fail(job, error)
                    continue
                finally:
                    self._unreported_s += time.perf_counter() - started
                if state.feature_cache is not None:
                    image.info[FEATURE_CACHE_INFO_KEY] = state.feature_cache.counts.as_dict()
                result = (image, state.snapshots.latents) if job.operation is Operation.SNAPSHOTS else image
                _resolve(job, result)
            else:
                running.append(state)
        return running


def _resolve(job: Job, result) -> None:
    if not job.future.done():
        job.future.set_result(result)


def _fail(job: Job, error: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(error)
