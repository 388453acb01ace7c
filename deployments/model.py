"""LargeModel and SmallModel: the Serve deployment of `modm.generation.ModelService`, one model per replica.

Requests and answers are bytes (PNG) and plain numbers, never tensors. The replica runs its model on one device
(`LocalGenerator`) or, with `parallel: {method, world_size}`, on a group of rank actors (`ActorGroupGenerator`);
the service does the same over either. What stays here is Ray's: the ranks' placement, health checks and shutdown
(the global monitor's replica target reaches Serve's autoscaler without the replicas, deployments/autoscaling.py).
"""

from __future__ import annotations

import logging

import numpy as np
import ray
import torch
from ray import serve

from deployments.metrics import ModelMetrics
from deployments.usage_log import record_departed
from modm.config import ModelSpec
from modm.generation import Generator, ModelService, generator_from_spec
from modm.generation.usage import EnergyMeter, ReplicaUsage
from modm.parallel import ParallelMethod

logger = logging.getLogger("ray.serve")


def _rank_placement(spec: ModelSpec) -> dict:
    """Where the ranks go: inside a Serve replica, into the bundles its deployment declared after the replica's own
    (deployments/app.py: placement_group_bundles), each rank on a GPU when its bundle has one; outside one, a
    placement group the actor group reserves itself."""
    pg = ray.util.get_current_placement_group()
    if pg is not None:
        return {
            "placement_group": pg,
            "first_bundle": 1,
            "use_gpu": pg.bundle_specs[1].get("GPU", 0) > 0,
            "cpus_per_rank": pg.bundle_specs[1].get("CPU", 1),
        }
    return {"use_gpu": spec.device.startswith("cuda") or (spec.device == "auto" and torch.cuda.is_available())}


def _start_generator(spec: ModelSpec, role: str) -> Generator:
    if spec.parallel.method is ParallelMethod.NONE:
        return generator_from_spec(spec, role)
    # One model on several devices: this replica holds no weights, it drives one rank actor per device.
    if spec.batching.batches:
        logger.warning("%s model: a %s group does not batch; batching ignored", role, spec.parallel.method.value)
    from deployments.actor_group import ActorGroupGenerator

    return ActorGroupGenerator.start(spec, role, **_rank_placement(spec))


class ModelServer:
    def __init__(self, spec: dict, role: str, *, snapshot_steps: tuple[int, ...] = ()):
        """`snapshot_steps`: NIRVANA mode, where full generations also return their latents after these steps."""
        self.spec = ModelSpec.model_validate(spec)
        self.role = role
        self.generator = _start_generator(self.spec, role)
        try:
            self.service = ModelService(
                self.generator, self.spec, snapshot_steps=snapshot_steps, metrics=ModelMetrics(role)
            )
        except Exception:
            self.generator.close()  # a model that cannot serve its role: release its ranks before Serve retries
            raise
        # Busy seconds, images and (with NVML) joules, for the cost per image. A parallel group's description names
        # its ranks' devices, not one 'cuda:N': no energy counter for it here.
        self.usage = ReplicaUsage(EnergyMeter.for_device(self.generator.device_description))
        logger.info("%s model ready: %s on %s", role, self.spec.source, self.generator.device_description)

    async def generate(self, prompt: str, width: int, height: int, steps: int, seed: int) -> bytes:
        with self.usage.computing():
            return await self.service.generate(prompt, width, height, steps, seed)

    async def refine(
        self, prompt: str, png: bytes, strength: float, width: int, height: int, steps: int, seed: int
    ) -> bytes:
        with self.usage.computing():
            return await self.service.refine(prompt, png, strength, width, height, steps, seed)

    async def generate_with_snapshots(
        self, prompt: str, width: int, height: int, steps: int, seed: int
    ) -> tuple[bytes, dict[int, np.ndarray]]:
        with self.usage.computing():
            return await self.service.generate_with_snapshots(prompt, width, height, steps, seed)

    async def resume(
        self, prompt: str, latents: np.ndarray, steps_done: int, width: int, height: int, steps: int, seed: int
    ) -> bytes:
        with self.usage.computing():
            return await self.service.resume(prompt, latents, steps_done, width, height, steps, seed)

    async def profile(self) -> float:
        return await self.service.profile()

    async def info(self) -> dict:
        return await self.service.info()

    async def capacity(self) -> dict:
        return await self.service.capacity()

    def stats(self) -> dict:
        return self.service.stats()

    def usage_stats(self) -> dict:
        """This replica's busy and up seconds, images and joules (None without NVML): the cost per image."""
        return self.usage.as_dict()

    def placement(self) -> dict:
        """Placement-group ids of this replica and of its rank actors (None outside a placement group)."""

        def pg_id(worker) -> str | None:
            return ray.get_runtime_context().get_placement_group_id()

        group = getattr(self.generator, "group", None)  # an ActorGroupGenerator's
        ranks = [] if group is None else ray.get([w.__ray_call__.remote(pg_id) for w in group.workers])
        return {"replica": ray.get_runtime_context().get_placement_group_id(), "ranks": ranks}

    def check_health(self) -> None:
        self.generator.check_health()  # a dead rank raises: Serve then restarts this replica

    def __del__(self):
        """Serve calls this when it stops the replica: its usage is kept (deployments/usage_log.py), and the rank
        actors go with it (and so does the placement group, which Serve removes)."""
        usage = getattr(self, "usage", None)
        if usage is not None:
            try:
                context = serve.get_replica_context()
                record_departed(context.app_name, context.deployment, context.replica_id.unique_id, usage.as_dict())
            except Exception as err:  # the cluster is going away too: nothing left to report to
                logger.info("usage of this replica not kept: %r", err)
            self.usage = None
        generator = getattr(self, "generator", None)
        if generator is not None:
            generator.close()
            self.generator = None
