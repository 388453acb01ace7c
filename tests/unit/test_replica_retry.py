"""The router retries a call once when the replica that took it died, and never otherwise."""

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve.exceptions import ReplicaUnavailableError

from deployments.router import Router

retry = Router._retry_if_replica_lost


def scripted(*outcomes):
    """A call that plays `outcomes` in order (an exception is raised, anything else returned); counts calls."""
    calls = []

    async def answer(outcome):
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def call():
        calls.append(1)
        return answer(outcomes[len(calls) - 1])

    return call, calls


@pytest.mark.parametrize(
    "lost",
    [ActorDiedError(), ActorUnavailableError("unreachable", b"\0" * 16), ReplicaUnavailableError("replica-1")],
    ids=type,
)
def test_a_lost_replica_is_retried_once(lost):
    call, calls = scripted(lost, b"png")
    assert asyncio.run(retry(call, "large model")) == b"png"
    assert len(calls) == 2


def test_a_second_loss_is_raised():
    call, calls = scripted(ActorDiedError(), ActorDiedError(), b"never")
    with pytest.raises(ActorDiedError):
        asyncio.run(retry(call, "large model"))
    assert len(calls) == 2


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
    call, calls = scripted(error, b"never")
    with pytest.raises(type(error)):
        asyncio.run(retry(call, "large model"))
    assert len(calls) == 1


def test_success_is_one_call():
    call, calls = scripted(b"png")
    assert asyncio.run(retry(call, "cache")) == b"png"
    assert len(calls) == 1


class SlowCall:
    """Stands in for a DeploymentResponse: awaitable, and records whether it was cancelled."""

    def __init__(self):
        self.cancelled = False

    def __await__(self):
        return asyncio.sleep(30).__await__()

    def cancel(self):
        self.cancelled = True


def test_a_request_that_times_out_cancels_its_model_call():
    slow = SlowCall()

    async def timed_out():
        await asyncio.wait_for(retry(lambda: slow, "large model"), timeout=0.05)

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(timed_out())
    assert slow.cancelled  # so the replica stops at its next denoising step instead of finishing the image
