"""Run a function on N fresh rank processes with a hard deadline, so a distributed bug fails a test, never hangs it.

Ranks are forked from a forkserver that imported torch/diffusers once (`PRELOAD`): on a shared 2-core machine,
importing those in every spawned rank would cost more than the tests themselves. The forkserver never runs torch
ops, so forking from it is as safe as spawning.
"""

from __future__ import annotations

import os
import queue
import socket
import traceback

import torch.multiprocessing as mp

__all__ = ["free_port", "run_ranks", "RankFailure"]


class RankFailure(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(fn, rank: int, world_size: int, port: int, results, kwargs) -> None:
    import torch

    torch.set_num_threads(1)  # the machine's cores are shared by every rank
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    try:
        results.put((rank, True, fn(rank, world_size, f"tcp://127.0.0.1:{port}", **kwargs)))
    except BaseException:  # report every failure to the parent, which raises it
        results.put((rank, False, traceback.format_exc()))


# Installed modules only: the forkserver does not inherit this test folder's sys.path and skips what it cannot import.
PRELOAD = [
    "torch",
    "modm.parallel",
    "modm.models.tiny_zoo",
    "modm.models.tokenizer",
    "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl",
    "diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3",
]


def run_ranks(fn, world_size: int, *, timeout_s: float = 90.0, **kwargs) -> list:
    """fn(rank, world_size, init_method, **kwargs) on every rank; returns the results by rank."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(fn, r, world_size, port, results, kwargs), daemon=True)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    out: dict[int, object] = {}
    try:
        import time

        deadline = time.monotonic() + timeout_s
        while len(out) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RankFailure(
                    f"ranks {sorted(set(range(world_size)) - set(out))} did not finish within {timeout_s} s"
                )
            try:
                rank, ok, value = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in out]
                if dead:
                    raise RankFailure(f"rank(s) {dead} died with exit codes {[procs[r].exitcode for r in dead]}")
                continue
            if not ok:
                raise RankFailure(f"rank {rank} failed:\n{value}")
            out[rank] = value
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    return [out[r] for r in range(world_size)]
