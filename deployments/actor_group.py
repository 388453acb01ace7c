"""`ParallelActorGroup`: one model served by `world_size` Ray actors that form a torch.distributed process group.

A model deployment configured with `parallel: {method, world_size}` holds one of these. The group

1. schedules its ranks into one placement-group bundle each (`{"CPU": n, "GPU": 1}` on GPUs, `{"CPU": n}`
   otherwise): in a Serve replica, the bundles the deployment declared (`placement_group_bundles`: the replica's
   own bundle first, then `rank_bundles()`), so Serve and the autoscaler see and reserve the ranks' devices and
   the group goes with the replica; outside Serve it reserves a placement group of its own and waits for it,
2. starts one `_RankWorker` actor in each bundle,
3. asks rank 0 for an address and port on its node, then has every rank join the process group *concurrently*
   (a join blocks until all ranks arrive, so sequential calls would deadlock),
4. loads the pipeline on every rank from the loader it was given (a `ModelSpec` or a picklable callable),
5. runs each request on all ranks and answers from rank 0 (every rank computes the same image); `stop(request_id)`
   ends a request at its next denoising step on every rank (the same step: the ranks agree by an all-reduce, see
   `modm.parallel.CollectiveStop`), so a cancelled or timed-out request frees the group promptly.

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
from modm.parallel.pipeline import CollectiveStop, ParallelGenerationStopped

__all__ = [
    "ParallelActorGroup",
    "ActorGroupUnhealthy",
    "ParallelGenerationStopped",
    "PipelineLoader",
    "START_TIMEOUT_S",
    "REQUEST_TIMEOUT_S",
    "HEALTH_TIMEOUT_S",
    "rank_bundles",
]

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # reserve bundles + start actors + rendezvous + load the model
REQUEST_TIMEOUT_S = 600.0  # one generation on all ranks
HEALTH_TIMEOUT_S = 10.0  # every worker answers a ping

# Called on every rank with that rank's device; returns a diffusers pipeline. Must be picklable.
PipelineLoader = Union[ModelSpec, Callable[[torch.device], Any]]


class ActorGroupUnhealthy(RuntimeError):
    """A worker of the group died or stopped answering; the process group is unusable."""


def rank_bundles(world_size: int, *, use_gpu: bool, cpus_per_rank: float = 1) -> list[dict[str, float]]:
    """One placement-group bundle per rank: what each rank actor asks for."""
    bundle = {"CPU": float(cpus_per_rank), **({"GPU": 1.0} if use_gpu else {})}
    return [dict(bundle) for _ in range(world_size)]


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
        self._stop_requested: set[str] = set()  # request ids; written by stop() on the control thread

    def rendezvous_address(self) -> tuple[str, int]:
        """Rank 0 picks a free port on its own node (where the TCP store will listen)."""
        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, init_method: str, loader: PipelineLoader, timeout_s: float) -> str:
        # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU, so its device is always cuda:0.
        device = torch.device("cuda:0") if ray.get_gpu_ids() else torch.device("cpu")
        self.ctx = init_parallel(
            self.config,
            rank=self.rank,
            world_size=self.config.world_size,
            init_method=init_method,
            device=device,
            timeout_s=timeout_s,
        )
        self.parallel = ParallelPipeline(_load(loader, device), self.ctx)
        return str(device)

    def generate(self, request: dict, seed: int, request_id: str | None = None):
        """Run one request; rank 0 returns the pipeline's images, the other ranks None. Raises
        ParallelGenerationStopped (on every rank, after the same step) once stop(request_id) reached any rank."""
        if self.parallel is None:
            raise RuntimeError("worker used before setup()")
        generator = torch.Generator("cpu").manual_seed(seed)  # identical initial noise on every rank
        stop = None if request_id is None else CollectiveStop(self.ctx, lambda: request_id in self._stop_requested)
        try:
            output = self.parallel(**request, generator=generator, stop=stop)
        finally:
            self._stop_requested.discard(request_id)
        return output.images if self.rank == 0 else None

    @ray.method(concurrency_group="control")
    def stop(self, request_id: str) -> None:
        """Ask the request to stop at its next denoising step (also when it is still queued behind another)."""
        if len(self._stop_requested) > 1024:  # ids of requests that finished before their stop arrived
            self._stop_requested.clear()
        self._stop_requested.add(request_id)

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

    def __init__(
        self,
        config: ParallelConfig,
        loader: PipelineLoader,
        *,
        use_gpu: bool = False,
        cpus_per_rank: float = 1,
        torch_threads: int = 1,
        start_timeout_s: float = START_TIMEOUT_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        health_timeout_s: float = HEALTH_TIMEOUT_S,
        placement_group=None,
        first_bundle: int = 0,
    ):
        """`placement_group`: schedule rank r into its bundle `first_bundle + r` (a Serve replica passes its own,
        whose bundle 0 holds the replica); None: reserve a placement group of its own at start()."""
        self.config = config
        self.loader = loader
        self.use_gpu = use_gpu
        self.cpus_per_rank = cpus_per_rank
        self.torch_threads = torch_threads
        self.start_timeout_s = start_timeout_s
        self.request_timeout_s = request_timeout_s
        self.health_timeout_s = health_timeout_s
        self._pg = placement_group
        self._owns_pg = placement_group is None
        self._first_bundle = first_bundle if placement_group is not None else 0
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
        return rank_bundles(self.world_size, use_gpu=self.use_gpu, cpus_per_rank=self.cpus_per_rank)

    @property
    def placement_group(self):
        return self._pg

    # -- start-up -------------------------------------------------------------------------------------------------
    def start(self) -> "ParallelActorGroup":
        if self._workers:
            raise RuntimeError("actor group already started")
        deadline = time.monotonic() + self.start_timeout_s
        if self._owns_pg:
            self._pg = placement_group(self.bundles, strategy="PACK")
            try:
                ray.get(self._pg.ready(), timeout=self.start_timeout_s)
            except GetTimeoutError:
                self.shutdown()
                raise RendezvousError(
                    f"could not reserve {self.world_size} bundles {self.bundles[0]} within "
                    f"{self.start_timeout_s:.0f} s (cluster resources: {ray.cluster_resources()})"
                ) from None
        elif len(self._pg.bundle_specs) < self._first_bundle + self.world_size:
            raise RendezvousError(
                f"the placement group has {len(self._pg.bundle_specs)} bundles; {self.world_size} "
                f"ranks from bundle {self._first_bundle} need {self._first_bundle + self.world_size}"
            )
        # Requests run in the default group (one at a time, in submission order); pings and stops in their own.
        worker_cls = ray.remote(concurrency_groups={"health": 1, "control": 1})(_RankWorker)
        self._workers = [
            worker_cls.options(
                num_cpus=self.cpus_per_rank,
                num_gpus=1 if self.use_gpu else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self._pg, placement_group_bundle_index=self._first_bundle + rank
                ),
            ).remote(rank, self.config.model_dump(mode="json"), self.torch_threads)
            for rank in range(self.world_size)
        ]
        try:
            host, port = ray.get(self._workers[0].rendezvous_address.remote(), timeout=self._left(deadline))
            remaining = self._left(deadline)
            devices = ray.get(
                [w.setup.remote(f"tcp://{host}:{port}", self.loader, remaining) for w in self._workers],
                timeout=remaining,
            )
        except (GetTimeoutError, RayActorError) as exc:
            self.shutdown()
            raise RendezvousError(
                f"the {self.world_size} ranks did not all start and join within {self.start_timeout_s:.0f} s: {exc}"
            ) from exc
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
    def submit(self, request: dict, seed: int, request_id: str | None = None) -> ray.ObjectRef:
        """Start `request` (pipeline keyword arguments, no generator) on every rank; returns rank 0's result ref.
        With a `request_id`, `stop(request_id)` can end it at its next denoising step."""
        if not self._workers:
            raise RuntimeError("actor group is not started")
        if self._broken is not None:
            raise ActorGroupUnhealthy(f"{self._broken}; this replica is being replaced")
        if "generator" in request:
            raise ValueError("pass `seed`, not a generator: each rank builds its own identical generator")
        with self._submit_lock:
            refs = [w.generate.remote(request, seed, request_id) for w in self._workers]
        return refs[0]

    def stop(self, request_id: str) -> None:
        """Stop `request_id` at its next denoising step on every rank (after its first step if it has not started
        yet). Returns without waiting: the request's ref then raises ParallelGenerationStopped."""
        for worker in self._workers:
            worker.stop.remote(request_id)

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
        if self._pg is not None and self._owns_pg:  # a replica's own group goes with the replica
            remove_placement_group(self._pg)
        self._pg = None
