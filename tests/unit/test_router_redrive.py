"""The Ingress's re-drive of a request whose Router replica died: once on another replica, else 503 + Retry-After."""

import asyncio
from collections import Counter

import pytest
from ray.serve.exceptions import DeploymentUnavailableError

from deployments.http_ingress import RouterUnavailable, redriven_once
from modm.serving.errors import ReplicaLost


def attempts(*outcomes):
    """A Router call whose successive attempts raise or return `outcomes` in order."""
    calls = []

    async def call():
        calls.append(len(calls))
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return call, calls


def test_a_request_whose_router_died_is_redriven_once_and_counted():
    call, calls = attempts(ReplicaLost("ActorDiedError"), "images")
    counts = Counter()
    assert asyncio.run(redriven_once(call, lambda outcome: counts.update([outcome]))) == "images"
    assert len(calls) == 2 and counts == Counter({"redriven": 1})


@pytest.mark.parametrize(
    "outcomes",
    [(ReplicaLost("ActorDiedError"), ReplicaLost("ActorDiedError")), (DeploymentUnavailableError("Router"),)],
    ids=["lost-twice", "no-replica"],
)
def test_without_a_router_to_take_it_the_answer_is_503_with_retry_after(outcomes):
    call, calls = attempts(*outcomes)
    counts = Counter()
    with pytest.raises(RouterUnavailable) as refused:
        asyncio.run(redriven_once(call, lambda outcome: counts.update([outcome])))
    assert refused.value.status == 503 and refused.value.headers()["Retry-After"].isdigit()
    assert len(calls) == len(outcomes) and counts["router_unavailable"] == 1


def test_a_router_that_answered_with_an_error_is_not_redriven():
    call, calls = attempts(RuntimeError("a bug in the pipeline"), "never")
    with pytest.raises(RuntimeError):
        asyncio.run(redriven_once(call, lambda outcome: None))
    assert len(calls) == 1
