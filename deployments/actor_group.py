"""`ParallelActorGroup`: one model served by `world_size` Ray actors that form a torch.distributed process group.

A model deployment configured with `parallel: {method, world_size}` holds one of these. The group

1. schedules its ranks into one placement-group bundle each (`{"CPU": n, "GPU": 1}` on GPUs, `{"CPU": n}`
   otherwise): in a Serve replica, the bundles the deployment declared (`placement_group_bundles`: the replica's
   own bundle first, then `rank_bundles()`), so Serve and the autoscaler see and reserve the ranks' devices and
   the group goes with the replica; outside Serve it reserves a placement group of its own and waits for it,
2. starts one `_RankWorker` actor in each bundle,
3. asks rank 0 for an address and port on its node, then has every rank join the process group *concurrently*
   (a join blocks until all ranks arrive, so sequential calls would deadlock),
4. loads the model spec's pipeline on every rank, held by a `DiffusionGenerator` (so the ranks build the pipeline
   call exactly as one device does),
5. runs each request on all ranks and answers from rank 0 (every rank computes the same image); `stop(request_id)`
   ends a request at its next denoising step on every rank (the same step: the ranks agree by an all-reduce, see
   `modm.parallel.CollectiveStop`), so a cancelled or timed-out request frees the group promptly.

`ActorGroupGenerator` is the group behind modm's `Generator` interface, for `ModelService`: cancellation, counters
and metrics as on one device.

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
import uuid
from collections.abc import Iterable

import ray
import torch
from PIL import Image
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from modm.config.schema import ModelSpec
from modm.generation import (
    DiffusionGenerator,
    GenerationCounters,
    GenerationInterrupted,
    GenerationRequest,
    Operation,
    StepControl,
    StepCosts,
    UnsupportedOperationError,
    run_stoppable,
    unsupported_operation,
)
from modm.models.loading import load_pipeline
from modm.parallel import ParallelConfig, ParallelPipeline, RendezvousError, init_parallel
from modm.parallel.pipeline import CollectiveStop, ParallelGenerationStopped

__all__ = [
    "ActorGroupGenerator",
    "ParallelActorGroup",
    "ActorGroupUnhealthy",
    "ParallelGenerationStopped",
    "START_TIMEOUT_S",
    "REQUEST_TIMEOUT_S",
    "HEALTH_TIMEOUT_S",
    "rank_bundles",
]

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # reserve bundles + start actors + rendezvous + load the model
REQUEST_TIMEOUT_S = 600.0  # one generation on all ranks
HEALTH_TIMEOUT_S = 10.0  # every worker answers a ping


class ActorGroupUnhealthy(RuntimeError):
    """A worker of the group died or stopped answering; the process group is unusable."""


def rank_bundles(world_size: int, *, use_gpu: bool, cpus_per_rank: float = 1) -> list[dict[str, float]]:
    """One placement-group bundle per rank: what each rank actor asks for."""
    bundle = {"CPU": float(cpus_per_rank), **({"GPU": 1.0} if use_gpu else {})}
    return [dict(bundle) for _ in range(world_size)]


class _RankWorker:
    """One rank: owns its device, its share of the process group and a full copy of the pipeline (in a
    DiffusionGenerator, whose calls run with the parallel denoiser)."""

    def __init__(self, rank: int, config: dict, torch_threads: int):
        self.rank = rank
        self.config = ParallelConfig.model_validate(config)
        self.torch_threads = torch_threads
        torch.set_num_threads(torch_threads)
        self.parallel: ParallelPipeline | None = None
        self.generator: DiffusionGenerator | None = None
        self.ctx = None
        self._stop_requested: set[str] = set()  # request ids; written by stop() on the control thread

    def rendezvous_address(self) -> tuple[str, int]:
        """Rank 0 picks a free port on its own node (where the TCP store will listen)."""
        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, init_method: str, spec: ModelSpec, name: str, timeout_s: float) -> tuple[str, int]:
        """Join the process group and load the model; returns this rank's device and the size multiple requests
        must meet (the pipeline's own, times the row stripes of a patch method)."""
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
        self.parallel = ParallelPipeline(load_pipeline(spec, device=device), self.ctx)
        stripes = self.config.world_size if self.config.is_patch_method else 1
        self.generator = DiffusionGenerator(self.parallel.pipe, spec, name, row_stripes=stripes)
        return str(device), self.generator.size_multiple

    def generate(self, request: GenerationRequest, request_id: str) -> tuple[Image.Image, int] | None:
        """Run one request (the seeded generator gives every rank the same noise); rank 0 returns the image and the
        denoising steps run, the other ranks None. Once stop(request_id) reached any rank, every rank leaves after
        the same step and rank 0 raises ParallelGenerationStopped (with its steps_run)."""
        if self.parallel is None:
            raise RuntimeError("worker used before setup()")
        stop = CollectiveStop(self.ctx, lambda: request_id in self._stop_requested)
        try:
            with self.parallel.calling():
                image = self.generator.txt2img(request, stop)
        except ParallelGenerationStopped:
            if self.rank == 0:
                raise
            return None  # rank 0 reports the stop; nobody reads the other ranks' results
        finally:
            self._stop_requested.discard(request_id)
        return (image, stop.steps_run) if self.rank == 0 else None

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
        self.parallel = self.generator = self.ctx = None


class ParallelActorGroup:
    """`world_size` rank actors in one placement group, driven in lockstep.

    Construct, then `start()`; `generate()`/`submit()` per request; `check_health()` from the deployment's health
    check; `shutdown()` when the replica stops.
    """

    def __init__(
        self,
        config: ParallelConfig,
        spec: ModelSpec,
        *,
        name: str = "parallel",
        use_gpu: bool = False,
        cpus_per_rank: float = 1,
        torch_threads: int = 1,
        start_timeout_s: float = START_TIMEOUT_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        health_timeout_s: float = HEALTH_TIMEOUT_S,
        placement_group=None,
        first_bundle: int = 0,
    ):
        """`spec`: the model every rank loads (its own `parallel` field is not read: `config` is); `name`: its role,
        in errors. `placement_group`: schedule rank r into its bundle `first_bundle + r` (a Serve replica passes its
        own, whose bundle 0 holds the replica); None: reserve a placement group of its own at start()."""
        self.config = config
        self.spec = spec
        self.name = name
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
        self.devices: list[str] = []  # by rank, once started
        self.size_multiple: int | None = None  # what image sides must be a multiple of, once started
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
            ranks = ray.get(
                [w.setup.remote(f"tcp://{host}:{port}", self.spec, self.name, remaining) for w in self._workers],
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
        self.devices = [device for device, _ in ranks]
        self.size_multiple = ranks[0][1]
        logger.info("parallel actor group up: %s x%d on %s", self.config.method.value, self.world_size, self.devices)
        return self

    @staticmethod
    def _left(deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise GetTimeoutError("start-up deadline passed")
        return left

    # -- requests -------------------------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, request_id: str | None = None) -> ray.ObjectRef:
        """Start `request` on every rank; returns the ref of rank 0's (image, denoising steps run).
        `stop(request_id)` can end it at its next denoising step."""
        if not self._workers:
            raise RuntimeError("actor group is not started")
        if self._broken is not None:
            raise ActorGroupUnhealthy(f"{self._broken}; this replica is being replaced")
        request_id = uuid.uuid4().hex if request_id is None else request_id
        with self._submit_lock:
            refs = [w.generate.remote(request, request_id) for w in self._workers]
        return refs[0]

    def stop(self, request_id: str) -> None:
        """Stop `request_id` at its next denoising step on every rank (after its first step if it has not started
        yet). Returns without waiting: the request's ref then raises ParallelGenerationStopped."""
        for worker in self._workers:
            worker.stop.remote(request_id)

    def generate(self, request: GenerationRequest) -> Image.Image:
        """Run `request` on all ranks and return rank 0's image."""
        image, _ = ray.get(self.submit(request), timeout=self.request_timeout_s)
        return image

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


class ActorGroupGenerator:
    """modm's `Generator` over a started `ParallelActorGroup`: full generations only (the parallel methods do not
    refine or resume; the config schema keeps parallel models off those roles).

    A cancelled txt2img stops at its next denoising step on every rank, and the call returns once rank 0 reported
    the stop, so the replica's slot is held until the group is free; rank 0 reports the steps it ran.
    """

    operations = frozenset({Operation.TXT2IMG})

    def __init__(self, group: ParallelActorGroup):
        if group.size_multiple is None:
            raise RuntimeError("actor group is not started")
        self.group = group
        self.name = group.name
        self.size_multiple = group.size_multiple
        self.device_description = f"{group.config.method.value} x{group.world_size} on {group.devices}"
        self.counters = GenerationCounters()
        self.costs = StepCosts()

    @classmethod
    def start(cls, spec: ModelSpec, name: str, **group_options) -> "ActorGroupGenerator":
        """Start a group for `spec.parallel` (`group_options`: ParallelActorGroup's placement and timeouts)."""
        return cls(ParallelActorGroup(spec.parallel, spec, name=name, **group_options).start())

    def check_operations(self, operations: Iterable[Operation]) -> None:
        missing = set(operations) - self.operations
        if missing:
            raise self._unsupported(*missing)

    def _unsupported(self, *operations: Operation) -> UnsupportedOperationError:
        how = f"{self.group.config.method.value} parallel inference"
        return unsupported_operation(self.name, how, self.operations, operations)

    async def txt2img(self, req: GenerationRequest) -> Image.Image:
        request_id = uuid.uuid4().hex
        control = StepControl(on_stop=lambda: self.group.stop(request_id))
        return await run_stoppable(
            self._on_ranks(req, request_id, control), control, self.counters, name=self.name, costs=self.costs
        )

    async def _on_ranks(self, req: GenerationRequest, request_id: str, control: StepControl) -> Image.Image:
        try:
            image, control.steps_run = await self.group.submit(req, request_id)
        except GenerationInterrupted as stopped:  # Ray's wrapper of rank 0's ParallelGenerationStopped
            control.steps_run = stopped.steps_run
            raise
        return image

    async def img2img(self, req: GenerationRequest, image: Image.Image, strength: float) -> Image.Image:
        raise self._unsupported(Operation.IMG2IMG)

    async def txt2img_with_snapshots(self, req: GenerationRequest, snapshot_steps: tuple[int, ...]):
        raise self._unsupported(Operation.SNAPSHOTS)

    async def resume(self, req: GenerationRequest, latents: torch.Tensor, steps_done: int) -> Image.Image:
        raise self._unsupported(Operation.RESUME)

    def check_health(self) -> None:
        self.group.check_health()  # raises when a rank died: Serve then restarts the replica

    def close(self) -> None:
        self.group.shutdown()
