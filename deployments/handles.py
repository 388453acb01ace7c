"""Deployment handles as the request pipeline's backends: `proxy.method(*args)` awaits
`handle.method.remote(*args)`, so a handle serves wherever `modm.serving.backends` expects a service.

The proxy is the one place that knows Ray's exceptions: the loss of the replica that took a call becomes
`ReplicaLost` (the pipeline retries once), Serve's bounded queue refusing a call becomes `QueueFull`; and when the
awaiting request is cancelled (its timeout, or the client went away) the call is cancelled too, so the model replica
stops instead of finishing an image nobody will receive.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from modm.serving.errors import QueueFull, ReplicaLost

__all__ = ["HandleProxy"]


class HandleProxy:
    def __init__(self, handle: DeploymentHandle):
        # Serve's gRPC transport between replicas instead of Ray actor calls and the object store: a hop costs about
        # a third as much on a local cluster (benchmarks/serve_hop_floor.py), and the replies here are small.
        self._handle = handle.options(_by_reference=False)

    def __getattr__(self, name: str):
        method = getattr(self._handle, name)

        async def call(*args: Any) -> Any:
            response = method.remote(*args)
            try:
                return await response
            except asyncio.CancelledError:
                response.cancel()
                raise
            except BackPressureError as err:
                raise QueueFull(str(err), err.retry_after_s) from None
            except (RayActorError, ReplicaUnavailableError) as err:  # ActorDiedError, ActorUnavailableError
                if isinstance(err, RayTaskError):  # the replica answered with an error: a retry would repeat it
                    raise
                raise ReplicaLost(type(err).__name__) from err

        call.__name__ = name
        setattr(self, name, call)  # built once per method: later lookups find it without __getattr__
        return call
