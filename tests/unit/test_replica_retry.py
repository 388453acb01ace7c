"""A call is retried once when the replica that took it died, and never otherwise: the handle proxy turns Ray's
replica-loss exceptions into ReplicaLost (and nothing else), the pipeline's caller retries ReplicaLost once."""

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

from deployments.handles import HandleProxy
from modm.serving.calls import retry_if_replica_lost
from modm.serving.errors import QueueFull, ReplicaLost


class Response:
    """Stands in for a DeploymentResponse: awaitable, plays one outcome, records whether it was cancelled."""

    def __init__(self, outcome):
        self.outcome, self.cancelled = outcome, False

    def __await__(self):
        return self._play().__await__()

    async def _play(self):
        if self.outcome == "slow":
            await asyncio.sleep(30)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self):
        self.cancelled = True


class ScriptedHandle:
    """A deployment handle whose `generate.remote()` answers the outcomes in order."""

    def __init__(self, *outcomes):
        self.outcomes, self.responses = list(outcomes), []

    @property
    def generate(self):
        return self

    def options(self, **options):
        self.options_set = options  # the proxy asks for Serve's gRPC transport
        return self

    def remote(self, *args):
        self.responses.append(Response(self.outcomes[len(self.responses)]))
        return self.responses[-1]


def call_retrying(handle):
    proxy = HandleProxy(handle)
    return asyncio.run(retry_if_replica_lost(lambda: proxy.generate("a prompt"), "large model"))


@pytest.mark.parametrize(
    "lost",
    [ActorDiedError(), ActorUnavailableError("unreachable", b"\0" * 16), ReplicaUnavailableError("replica-1")],
    ids=type,
)
def test_a_lost_replica_is_retried_once(lost):
    handle = ScriptedHandle(lost, b"png")
    assert call_retrying(handle) == b"png"
    assert len(handle.responses) == 2


def test_a_second_loss_is_raised():
    handle = ScriptedHandle(ActorDiedError(), ActorDiedError(), b"never")
    with pytest.raises(ReplicaLost):
        call_retrying(handle)
    assert len(handle.responses) == 2


@pytest.mark.parametrize(
    "error",
    [
        RayTaskError("generate", "traceback", ActorDiedError()).as_instanceof_cause(),  # the replica's own worker died
        RayTaskError("generate", "traceback", ValueError("bad size")).as_instanceof_cause(),
        ValueError("bad size"),
    ],
    ids=["replica raised ActorDiedError", "replica raised ValueError", "ValueError"],
)
def test_an_error_the_replica_answered_with_is_not_retried(error):
    handle = ScriptedHandle(error, b"never")
    with pytest.raises(type(error)):
        call_retrying(handle)
    assert len(handle.responses) == 1


def test_a_full_queue_is_queue_full_and_not_retried():
    handle = ScriptedHandle(BackPressureError(num_queued_requests=64, max_queued_requests=64), b"never")
    with pytest.raises(QueueFull):
        call_retrying(handle)
    assert len(handle.responses) == 1


def test_success_is_one_call():
    handle = ScriptedHandle(b"png")
    assert call_retrying(handle) == b"png"
    assert len(handle.responses) == 1


def test_a_request_that_times_out_cancels_its_model_call():
    handle = ScriptedHandle("slow")
    proxy = HandleProxy(handle)

    async def timed_out():
        await asyncio.wait_for(proxy.generate("a prompt"), timeout=0.05)

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(timed_out())
    assert handle.responses[0].cancelled  # so the replica stops at its next denoising step instead of finishing
