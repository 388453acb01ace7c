"""Fidelity in the world: what the parallel methods and NIRVANA's hits do to the large model's pictures.

- `ParallelWorldGenerator` runs the world's large pipeline on `world_size` gloo ranks under a `ParallelConfig`
  (DistriFusion synchronous or with stale activations, naive patch, AsyncDiff) and is a `PromptGenerator`, so
  `modm.world.eval.evaluate_generator` grades it exactly as it grades the model on one rank.
- `nirvana_replay` replays NIRVANA's hits: the large model's latents after k of T steps for a cache of world
  prompts, each query of the calibration stream matched prompt to prompt (the world CLIP's text embeddings, as
  NIRVANA retrieves) and finished from the best entry's latents at every k, against the same query's full run.
"""

from __future__ import annotations

import queue
import socket
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modm.config.parallel import ParallelConfig
from modm.world.calibrate import CalibrationQuery
from modm.world.eval import clip_scores
from modm.world.judge import Judge, accuracy, score_image
from modm.world.pipelines import WORLD_IMAGE_SIZE

# How long a worker group may take to start (load the pipeline, rendezvous) or to answer one batch.
WORKER_TIMEOUT_S = 1800.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main(
    rank: int,
    config: ParallelConfig,
    pipeline_dir: str,
    steps: int,
    threads: int,
    port: int,
    inbox,
    outbox,
) -> None:
    """One rank: load the large pipeline, join the group, then answer (prompts, seeds) batches until None."""
    try:
        torch.set_num_threads(threads)
        from modm.models.loading import load_pipeline
        from modm.parallel import ParallelPipeline, init_parallel
        from modm.world.pipelines import pipeline_generator, world_model_spec

        ctx = init_parallel(config, rank=rank, world_size=config.world_size, init_method=f"tcp://127.0.0.1:{port}")
        parallel = ParallelPipeline(load_pipeline(world_model_spec(pipeline_dir, "large", device="cpu")), ctx)
        generate = pipeline_generator(parallel.pipe, steps=steps, role="large")
        outbox.put((rank, "ready", None))
        while (batch := inbox.get()) is not None:
            prompts, seeds = batch
            with parallel.calling():
                images = generate(prompts, seeds)
            # Every rank returns the same images; rank 0's are the answer, the others only say they are done.
            outbox.put((rank, "images", [np.asarray(im) for im in images] if rank == 0 else None))
        ctx.destroy()
    except BaseException:  # noqa: BLE001 - the parent reports any failure of a rank, with its traceback
        outbox.put((rank, "error", traceback.format_exc()))


class ParallelWorldGenerator:
    """The world's large pipeline on `config.world_size` CPU ranks (gloo), as a `PromptGenerator`.

    Use it as a context manager: entering starts the ranks (one process each, `threads` torch threads) and waits
    until every rank has loaded the pipeline and joined the group; leaving stops them. A failing rank raises
    `RuntimeError` with its traceback instead of leaving the caller waiting.
    """

    def __init__(
        self,
        pipeline_dir: str | Path,
        config: ParallelConfig,
        *,
        steps: int,
        threads: int = 1,
        timeout_s: float = WORKER_TIMEOUT_S,
    ):
        if config.world_size < 2:
            raise ValueError(f"a parallel generator needs world_size >= 2, got {config.world_size}")
        self.pipeline_dir = str(pipeline_dir)
        self.config = config
        self.steps = steps
        self.threads = threads
        self.timeout_s = timeout_s
        self._procs: list = []
        self._inboxes: list = []
        self._outbox = None

    def __enter__(self) -> "ParallelWorldGenerator":
        context = torch.multiprocessing.get_context("spawn")
        self._outbox = context.Queue()
        port = _free_port()
        for rank in range(self.config.world_size):
            inbox = context.Queue()
            proc = context.Process(
                target=_rank_main,
                args=(rank, self.config, self.pipeline_dir, self.steps, self.threads, port, inbox, self._outbox),
                daemon=True,
            )
            proc.start()
            self._inboxes.append(inbox)
            self._procs.append(proc)
        try:
            self._collect("ready")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for inbox in self._inboxes:
            inbox.put(None)
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
        self._procs, self._inboxes = [], []

    def _collect(self, kind: str) -> dict[int, object]:
        """One message of `kind` from every rank; an error or a dead rank raises."""
        replies: dict[int, object] = {}
        waited = 0.0
        while len(replies) < len(self._procs):
            try:
                rank, got, body = self._outbox.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
                dead = [r for r, p in enumerate(self._procs) if not p.is_alive() and r not in replies]
                if dead or waited > self.timeout_s:
                    why = f"ranks {dead} exited" if dead else f"no answer in {self.timeout_s:.0f} s"
                    raise RuntimeError(f"parallel generator ({self.config.method.value}): {why}") from None
                continue
            if got == "error":
                raise RuntimeError(f"parallel generator ({self.config.method.value}), rank {rank} failed:\n{body}")
            if got != kind:
                raise RuntimeError(f"rank {rank} answered {got!r}, expected {kind!r}")
            replies[rank] = body
        return replies

    def __call__(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        if not self._procs:
            raise RuntimeError("enter the ParallelWorldGenerator (`with ...:`) before generating")
        for inbox in self._inboxes:
            inbox.put((list(prompts), [int(s) for s in seeds]))
        return [Image.fromarray(a) for a in self._collect("images")[0]]


def mean_psnr(images: Sequence[Image.Image], references: Sequence[Image.Image]) -> float:
    """Mean PSNR (dB, 8-bit range) of each image against its reference; inf when all are identical."""
    values = []
    for image, reference in zip(images, references, strict=True):
        mse = float(np.mean((np.asarray(image, np.float64) - np.asarray(reference, np.float64)) ** 2))
        values.append(np.inf if mse == 0 else 10 * np.log10(255.0**2 / mse))
    return float(np.mean(values))


@dataclass
class NirvanaReplay:
    """Judge accuracy (and CLIPScore) of NIRVANA's hits per k, and of the hits its own table would grant."""

    full_accuracy: dict[str, float]
    resumed_accuracy: dict[int, dict[str, float]]
    scores: list[float]
    full_clip_score: float | None = None
    resumed_clip_score: dict[int, float] = field(default_factory=dict)
    # The queries NIRVANA's table admits, each at the k the table grants: how many, and full vs hit accuracy.
    granted: dict[str, object] = field(default_factory=dict)


def nirvana_replay(
    cache: Sequence[tuple[str, object]],
    queries: Sequence[CalibrationQuery],
    *,
    generator,
    total_steps: int,
    embedder,
    judge: Judge,
    k_table,
    k_choices: Sequence[int],
    scorer=None,
    batch_size: int = 16,
    progress: Callable[[str], None] = lambda _: None,
) -> NirvanaReplay:
    """Replay NIRVANA's hits for `queries` against `cache` at every k of `k_choices`.

    `generator` is the large model's `DiffusionGenerator`, the serving code: its full runs keep the latents after
    each k (in float16, as the latent cache stores them), its resumes run the last T - k steps from them. The
    queries' full runs use the seeds of the MoDM calibration (100_000 + i), so the two replays share Q_full.
    """
    from modm.generation.generator import GenerationRequest

    if not cache or not queries:
        raise ValueError("a NIRVANA replay needs a non-empty cache and query stream")
    ks = sorted(int(k) for k in k_choices)
    size = WORLD_IMAGE_SIZE

    def requests(prompts, seeds):
        return [GenerationRequest(p, size, size, total_steps, int(s)) for p, s in zip(prompts, seeds)]

    progress(f"large: {len(cache)} cached runs, latents after steps {ks}")
    cached_prompts = [p for p, _ in cache]
    cached_latents: list[dict[int, torch.Tensor]] = []
    for start in range(0, len(cache), batch_size):
        prompts = cached_prompts[start : start + batch_size]
        runs = generator.txt2img_with_snapshots_batch(requests(prompts, range(start, start + len(prompts))), tuple(ks))
        cached_latents += [{k: one.to(torch.float16) for k, one in latents.items()} for _, latents in runs]
    prompts = [q.prompt for q in queries]
    seeds = [100_000 + i for i in range(len(queries))]
    progress(f"large: {len(queries)} full runs of the queries")
    full: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        full += generator.txt2img_batch(
            requests(prompts[start : start + batch_size], seeds[start : start + batch_size])
        )
    similarity = embedder.embed_text(prompts) @ embedder.embed_text(cached_prompts).T
    best = np.argmax(similarity, axis=1)
    scores = [float(similarity[i, j]) for i, j in enumerate(best)]

    def verdicts(images):
        return [score_image(r, q.scene, q.mentions) for r, q in zip(judge.read(images), queries)]

    full_verdicts = verdicts(full)
    resumed_images: dict[int, list[Image.Image]] = {}
    for k in ks:
        progress(f"large: every query resumed from its best entry's latents after step {k}")
        resumed_images[k] = []
        for start in range(0, len(prompts), batch_size):
            reqs = requests(prompts[start : start + batch_size], seeds[start : start + batch_size])
            latents = [cached_latents[j][k] for j in best[start : start + batch_size]]
            resumed_images[k] += generator.resume_batch(reqs, latents, k)
    resumed_verdicts = {k: verdicts(images) for k, images in resumed_images.items()}

    def mean_clip(images, texts) -> float | None:
        return float(np.mean(clip_scores(scorer, images, texts))) if scorer is not None else None

    granted = [(i, d.k) for i, d in enumerate(k_table.decide(s) for s in scores) if d.hit]
    summary: dict[str, object] = {"hits": len(granted), "queries": len(queries)}
    if granted:
        hit_prompts = [prompts[i] for i, _ in granted]
        summary.update(
            k_counts={str(k): sum(1 for _, g in granted if g == k) for k in ks},
            full_accuracy=accuracy([full_verdicts[i] for i, _ in granted]),
            hit_accuracy=accuracy([resumed_verdicts[k][i] for i, k in granted]),
            full_clip_score=mean_clip([full[i] for i, _ in granted], hit_prompts),
            hit_clip_score=mean_clip([resumed_images[k][i] for i, k in granted], hit_prompts),
        )
    return NirvanaReplay(
        full_accuracy=accuracy(full_verdicts),
        resumed_accuracy={k: accuracy(v) for k, v in resumed_verdicts.items()},
        scores=scores,
        full_clip_score=mean_clip(full, prompts),
        resumed_clip_score={k: mean_clip(images, prompts) for k, images in resumed_images.items()}
        if scorer is not None
        else {},
        granted=summary,
    )
