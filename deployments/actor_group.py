"""`ParallelActorGroup`: one model served by `world_size` Ray actors that form a torch.distributed process group.

A model deployment configured with `parallel: {method, world_size}` holds one of these. The group

1. reserves one placement-group bundle per rank (`{"GPU": 1}` on GPUs, `{"CPU": n}` otherwise) and waits for it,
2. starts one `_RankWorker` actor in each bundle,
3. asks rank 0 for an address and port on its node, then has every rank join the process group *concurrently*
   (a join blocks until all ranks arrive, so sequential calls would deadlock),
4. loads the pipeline on every rank from the loader it was given (a `ModelSpec` or a picklable callable),
5. runs each request on all ranks and answers from rank 0 (every rank computes the same image).

Every step of start-up has a timeout: a missing rank or an unsatisfiable reservation is a `RendezvousError`, never
a hang. `check_health()` raises when a worker died, so Serve restarts the replica; from then on the group refuses new
requests at once (`ActorGroupUnhealthy`, naming the dead rank) instead of sending them to the surviving ranks, whose
collectives would only fail against the dead peer.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Callable, Union

import ray
import torch
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from modm.config.schema import ModelSpec
from modm.parallel import ParallelConfig, ParallelPipeline, RendezvousError, init_parallel

__all__ = ["ParallelActorGroup", "ActorGroupUnhealthy", "PipelineLoader",
           "START_TIMEOUT_S", "REQUEST_TIMEOUT_S", "HEALTH_TIMEOUT_S"]

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0     # reserve bundles + start actors + rendezvous + load the model
REQUEST_TIMEOUT_S = 600.0   # one generation on all ranks
HEALTH_TIMEOUT_S = 10.0     # every worker answers a ping

# Called on every rank with that rank's device; returns a diffusers pipeline. Must be picklable.
PipelineLoader = Union[ModelSpec, Callable[[torch.device], Any]]


class ActorGroupUnhealthy(RuntimeError):
    """A worker of the group died or stopped answering; the process group is unusable."""


def _load(loader: PipelineLoader, device: torch.device):
    if isinstance(loader, ModelSpec):
        from modm.models.loading import load_pipeline

        return load_pipeline(loader, device=device)
    return loader(device)


class _RankWorker:
    """One rank: owns its device, its share of the process group and a full copy of the pipeline."""

    def __init__(self, rank: int, config: dict, torch_threads: int):
        self.rank = rank
        self.config = ParallelConfig.model_validate(config)
        self.torch_threads = torch_threads
        torch.set_num_threads(torch_threads)
        self.parallel: ParallelPipeline | None = None
        self.ctx = None

    def rendezvous_address(self) -> tuple[str, int]:
        """Rank 0 picks a free port on its own node (where the TCP store will listen)."""
        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, init_method: str, loader: PipelineLoader, timeout_s: float) -> str:
        # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU, so its device is always cuda:0.
        device = torch.device("cuda:0") if ray.get_gpu_ids() else torch.device("cpu")
        self.ctx = init_parallel(self.config, rank=self.rank, world_size=self.config.world_size,
                                 init_method=init_method, device=device, timeout_s=timeout_s)
        self.parallel = ParallelPipeline(_load(loader, device), self.ctx)
        return str(device)

    def generate(self, request: dict, seed: int):
        """Run one request; rank 0 returns the pipeline's images, the other ranks None."""
        if self.parallel is None:
            raise RuntimeError("worker used before setup()")
        generator = torch.Generator("cpu").manual_seed(seed)  # identical initial noise on every rank
        output = self.parallel(**request, generator=generator)
        return output.images if self.rank == 0 else None

    @ray.method(concurrency_group="health")
    def ping(self) -> int:
        """Answered on its own thread, so health checks are not queued behind a long generation."""
        return self.rank

    def shutdown(self) -> None:
        if self.parallel is not None:
            self.parallel.remove()
        if self.ctx is not None:
            self.ctx.destroy()
        self.parallel = self.ctx = None


class ParallelActorGroup:
    """`world_size` rank actors in one placement group, driven in lockstep.

    Construct, then `start()`; `generate()`/`submit()` per request; `check_health()` from the deployment's health
    check; `shutdown()` when the replica stops.
    """

    def __init__(self, config: ParallelConfig, loader: PipelineLoader, *, use_gpu: bool = False,
                 cpus_per_rank: float = 1, torch_threads: int = 1, start_timeout_s: float = START_TIMEOUT_S,
                 request_timeout_s: float = REQUEST_TIMEOUT_S, health_timeout_s: float = HEALTH_TIMEOUT_S):
        self.config = config
        self.loader = loader
        self.use_gpu = use_gpu
        self.cpus_per_rank = cpus_per_rank
        self.torch_threads = torch_threads
        self.start_timeout_s = start_timeout_s
        self.request_timeout_s = request_timeout_s
        self.health_timeout_s = health_timeout_s
        self._pg = None
        self._workers: list = []
        self._broken: str | None = None  # why the group can no longer serve, once check_health() found out
        # All ranks must receive requests in the same order, so submission to the workers is serialised.
        self._submit_lock = threading.Lock()

    @property
    def world_size(self) -> int:
        return self.config.world_size

    @property
    def workers(self) -> tuple:
        """The rank actors' handles, by rank (empty before start)."""
        return tuple(self._workers)

    @property
    def bundles(self) -> list[dict[str, float]]:
        bundle = {"CPU": self.cpus_per_rank}
        if self.use_gpu:
            bundle["GPU"] = 1
        return [dict(bundle) for _ in range(self.world_size)]

    # -- start-up -------------------------------------------------------------------------------------------------
    def start(self) -> "ParallelActorGroup":
        if self._workers:
            raise RuntimeError("actor group already started")
        deadline = time.monotonic() + self.start_timeout_s
        self._pg = placement_group(self.bundles, strategy="PACK")
        try:
            ray.get(self._pg.ready(), timeout=self.start_timeout_s)
        except GetTimeoutError:
            self.shutdown()
            raise RendezvousError(
                f"could not reserve {self.world_size} bundles {self.bundles[0]} within {self.start_timeout_s:.0f} s "
                f"(cluster resources: {ray.cluster_resources()})") from None
        # Requests run in the default group (one at a time, in submission order); pings in their own group.
        worker_cls = ray.remote(concurrency_groups={"health": 1})(_RankWorker)
        self._workers = [
            worker_cls.options(
                num_cpus=self.cpus_per_rank, num_gpus=1 if self.use_gpu else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self._pg, placement_group_bundle_index=rank),
            ).remote(rank, self.config.model_dump(mode="json"), self.torch_threads)
            for rank in range(self.world_size)
        ]
        try:
            host, port = ray.get(self._workers[0].rendezvous_address.remote(), timeout=self._left(deadline))
            remaining = self._left(deadline)
            devices = ray.get([w.setup.remote(f"tcp://{host}:{port}", self.loader, remaining)
                               for w in self._workers], timeout=remaining)
        except (GetTimeoutError, RayActorError) as exc:
            self.shutdown()
            raise RendezvousError(f"the {self.world_size} ranks did not all start and join within "
                                  f"{self.start_timeout_s:.0f} s: {exc}") from exc
        except Exception:
            self.shutdown()
            raise
        logger.info("parallel actor group up: %s x%d on %s", self.config.method.value, self.world_size, devices)
        return self

    @staticmethod
    def _left(deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise GetTimeoutError("start-up deadline passed")
        return left

    # -- requests -------------------------------------------------------------------------------------------------
    def submit(self, request: dict, seed: int) -> ray.ObjectRef:
        """Start `request` (pipeline keyword arguments, no generator) on every rank; returns rank 0's result ref."""
        if not self._workers:
            raise RuntimeError("actor group is not started")
        if self._broken is not None:
            raise ActorGroupUnhealthy(f"{self._broken}; this replica is being replaced")
        if "generator" in request:
            raise ValueError("pass `seed`, not a generator: each rank builds its own identical generator")
        with self._submit_lock:
            refs = [w.generate.remote(request, seed) for w in self._workers]
        return refs[0]

    def generate(self, request: dict, seed: int):
        """Run `request` on all ranks and return rank 0's images."""
        return ray.get(self.submit(request, seed), timeout=self.request_timeout_s)

    # -- health and teardown --------------------------------------------------------------------------------------
    def check_health(self) -> None:
        """Raise `ActorGroupUnhealthy` if any worker is dead or does not answer within the health timeout.

        Pings run in a separate concurrency group of the workers, so a long generation does not delay them. A dead
        rank breaks the process group for good: the group stays unhealthy and `submit` refuses work from then on.
        """
        if not self._workers:
            raise ActorGroupUnhealthy("actor group is not started")
        if self._broken is not None:
            raise ActorGroupUnhealthy(self._broken)
        pings = [w.ping.remote() for w in self._workers]
        for rank, ref in enumerate(pings):
            try:
                ray.get(ref, timeout=self.health_timeout_s)
            except (RayActorError, GetTimeoutError) as exc:
                logger.error("rank %d of the parallel actor group is unhealthy: %s", rank, exc)
                reason = f"rank {rank} of {self.world_size} is dead or unresponsive: {type(exc).__name__}"
                if isinstance(exc, ActorDiedError):  # a slow rank may recover; a dead one never rejoins the group
                    self._broken = reason
                raise ActorGroupUnhealthy(reason) from exc

    def shutdown(self) -> None:
        """Leave the process group on every live rank, kill the actors and release the reservation."""
        if self._workers:
            try:
                ray.get([w.shutdown.remote() for w in self._workers], timeout=self.health_timeout_s)
            except Exception as exc:  # dead or stuck ranks: killing them below is all that is left to do
                logger.warning("parallel actor group shutdown was not clean: %s", exc)
            for worker in self._workers:
                ray.kill(worker)
            self._workers = []
        if self._pg is not None:
            remove_placement_group(self._pg)
            self._pg = None
