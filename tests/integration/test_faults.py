"""Faults under load: a model replica, a parallel rank and the cache owner die while requests are in flight.

Each test sends a stream of concurrent requests, kills one process in the middle of it, and then checks that every
request has an outcome (an image, or an explicit error with a JSON reason; nothing hangs, nothing is lost), that
Serve brings the dead part back, and that the app serves again. The counts of each run are printed (`pytest -s`)
and recorded as the test's `fault_counts` property (`--junitxml`).

Replica actors are found through Ray's GCS actor table (`ray._private.state.actors`): the public state API
(`ray.util.state`) needs the dashboard, which the session cluster does not start.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
from PIL import Image

from tests.integration.serve_load import drive, running_replicas

pytestmark = pytest.mark.ray

APP = "modm"  # the session app of tests/integration/conftest.py
CLIENT_TIMEOUT_S = 90.0  # above the app's request timeout: a request still open after this is lost
RECOVERY_TIMEOUT_S = 180.0  # a ceiling for a loaded 2-core machine; a replacement takes ~5-40 s there
EXPLICIT_ERROR_STATUSES = {429, 503, 504}  # shed, failed or timed out, each with a JSON reason


# ---------------------------------------------------------------------------------------------------- counting
@dataclass
class Tally:
    """Outcomes of one load run: every request sent ends in exactly one of completed, rejected or lost."""

    sent: int = 0
    completed: int = 0  # 200 with an image
    rejected: int = 0  # an explicit error: 429/503/504 with a JSON reason
    lost: int = 0  # no answer, a transport error, or an error without a reason
    five_xx: int = 0  # responses with a 5xx status (explicit 503/504 included)
    reasons: Counter = field(default_factory=Counter)

    def row(self) -> dict:
        return {
            "sent": self.sent,
            "completed": self.completed,
            "rejected": self.rejected,
            "lost": self.lost,
            "5xx": self.five_xx,
            "reasons": dict(self.reasons),
        }


def classify(tally: Tally, response: httpx.Response | None, failure: str | None) -> None:
    if response is None:
        tally.lost += 1
        tally.reasons[f"no answer: {failure}"] += 1
        return
    tally.five_xx += response.status_code >= 500
    if response.status_code == 200 and response.json()["data"][0]["b64_json"]:
        tally.completed += 1
        return
    try:
        reason = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        reason = None
    if response.status_code in EXPLICIT_ERROR_STATUSES and reason:
        tally.rejected += 1
        tally.reasons[f"{response.status_code}: {reason}"] += 1
    else:
        tally.lost += 1
        tally.reasons[f"{response.status_code} without a reason: {response.text[:120]}"] += 1


class HttpLoad:
    """`total` generation requests, `concurrency` at a time, on background threads; each one classified."""

    def __init__(self, base_url: str, total: int, concurrency: int, body, headers=lambda i: {}):
        self.base_url, self.total, self.concurrency = base_url, total, concurrency
        self.body, self.headers = body, headers
        self.tally = Tally()
        self._lock = threading.Lock()
        self._next = 0
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="fault-load")
        self._futures = []

    def start(self) -> "HttpLoad":
        self._futures = [self._pool.submit(self._worker) for _ in range(self.concurrency)]
        return self

    def _worker(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=CLIENT_TIMEOUT_S) as client:
            while True:
                with self._lock:
                    if self._next >= self.total:
                        return
                    i, self._next = self._next, self._next + 1
                    self.tally.sent += 1
                response, failure = None, None
                try:
                    response = client.post("/v1/images/generations", json=self.body(i), headers=self.headers(i))
                except httpx.HTTPError as err:
                    failure = type(err).__name__
                with self._lock:
                    classify(self.tally, response, failure)

    def wait_for(self, done: int, timeout_s: float = 60.0) -> None:
        """Block until `done` requests have an outcome."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.tally.completed + self.tally.rejected + self.tally.lost >= done:
                    return
            time.sleep(0.05)
        raise AssertionError(f"fewer than {done} requests finished within {timeout_s:.0f}s: {self.tally.row()}")

    def join(self) -> Tally:
        for future in self._futures:
            future.result(timeout=CLIENT_TIMEOUT_S * self.total)
        self._pool.shutdown()
        return self.tally


def report(record_property, name: str, counts: dict) -> None:
    print(f"\nFAULT COUNTS {name}: {json.dumps(counts)}")
    record_property("fault_counts", json.dumps({name: counts}))


def assert_every_request_answered(tally: Tally) -> None:
    assert tally.sent == tally.completed + tally.rejected + tally.lost, tally.row()
    assert tally.lost == 0, tally.row()
    assert tally.five_xx == sum(n for reason, n in tally.reasons.items() if reason[:3] in ("503", "504")), (
        f"a 5xx other than an explicit 503/504: {tally.row()}"
    )


# ----------------------------------------------------------------------------------------------- replicas
def alive_actors(class_name: str) -> list[dict]:
    """ALIVE actors of one class, e.g. 'ServeReplica:modm:LargeModel', with their 'ActorID', 'Name' and 'Pid'."""
    import ray._private.state

    return [
        actor
        for actor in ray._private.state.actors(actor_state_name="ALIVE").values()
        if actor["ActorClassName"] == class_name
    ]


def replica_actors(app: str, deployment: str) -> list[dict]:
    return alive_actors(f"ServeReplica:{app}:{deployment}")


def deployment_status(app: str, deployment: str):
    from ray import serve

    return serve.status().applications[app].deployments[deployment]


def wait_replaced(app: str, deployment: str, dead_actor_id: str, running: int, killed_at: float) -> dict:
    """Wait until Serve reports the deployment HEALTHY with `running` RUNNING replicas, none of them the dead one.

    Returns the seconds since the kill (`killed_at`, a `time.monotonic()`) and every status seen on the way.
    """
    seen = []
    while time.monotonic() - killed_at < RECOVERY_TIMEOUT_S:
        status = deployment_status(app, deployment)
        if not seen or seen[-1] != status.status.value:
            seen.append(status.status.value)
        alive = {actor["ActorID"] for actor in replica_actors(app, deployment)}
        if (
            status.status.value == "HEALTHY"
            and status.replica_states.get("RUNNING", 0) == running
            and dead_actor_id not in alive
            and len(alive) == running
        ):
            return {"recovery_s": round(time.monotonic() - killed_at, 1), "statuses": seen}
        time.sleep(0.25)
    raise AssertionError(
        f"{app}/{deployment} not back to {running} healthy replicas within "
        f"{RECOVERY_TIMEOUT_S:.0f}s (statuses {seen}, now {deployment_status(app, deployment)})"
    )


# ------------------------------------------------------------------------------------------- 1. model replica
def test_a_model_replica_killed_under_load_loses_no_request(serve_app, record_property):
    import ray

    # Another replica must keep serving meanwhile: the monitor gives LargeModel 2 of the 3 replicas under misses,
    # whatever split the tests before left (hits move replicas to SmallModel).
    warm = drive(
        serve_app,
        itertools.repeat("a lantern festival over a river"),
        (f"it-faults-warm-{i}" for i in itertools.count()),
        until=lambda: (
            running_replicas("LargeModel", APP) >= 2 and deployment_status(APP, "LargeModel").status.value == "HEALTHY"
        ),
        timeout_s=150,
    )
    before = deployment_status(APP, "LargeModel")
    running = before.replica_states.get("RUNNING", 0)
    assert before.status.value == "HEALTHY" and running >= 2, (before, warm)

    # A fresh tenant per request is a guaranteed cache miss, so every request goes to LargeModel.
    load = HttpLoad(
        serve_app,
        total=24,
        concurrency=4,
        body=lambda i: {"prompt": f"a lantern festival over a river, view {i}", "size": "64x64", "steps": 4, "seed": i},
        headers=lambda i: {"X-Tenant-Id": f"it-faults-replica-{i}"},
    ).start()
    load.wait_for(6)
    victim = replica_actors(APP, "LargeModel")[0]
    ray.kill(ray.get_actor(victim["Name"], namespace="serve"))
    killed_at, sent_before_kill = time.monotonic(), load.tally.sent
    tally = load.join()
    recovery = wait_replaced(APP, "LargeModel", victim["ActorID"], running, killed_at)
    after = httpx.post(
        f"{serve_app}/v1/images/generations",
        timeout=CLIENT_TIMEOUT_S,
        json={"prompt": "a lantern festival over a river", "size": "64x64", "steps": 4},
        headers={"X-Tenant-Id": "it-faults-replica-after"},
    )

    report(
        record_property,
        "model_replica_killed",
        {
            **tally.row(),
            "sent_before_kill": sent_before_kill,
            "replicas_before": running,
            "replicas_after": deployment_status(APP, "LargeModel").replica_states.get("RUNNING", 0),
            **recovery,
            "after_recovery_status": after.status_code,
        },
    )
    assert_every_request_answered(tally)
    # The router retries a generation whose replica died once, on a live replica: none should fail.
    assert tally.completed == tally.sent, tally.row()
    assert after.status_code == 200, after.text


# ---------------------------------------------------------------------------------------- 2. parallel worker
def ranks_of(replica: dict) -> dict[str, dict]:
    """The rank actors a model replica started (their owner is the replica's worker)."""
    return {
        actor["ActorID"]: actor for actor in alive_actors("_RankWorker") if actor["OwnerAddress"] == replica["Address"]
    }


def test_a_parallel_rank_killed_under_load_gets_its_replica_replaced(parallel_app, record_property):
    app, base = parallel_app["app"], parallel_app["url"]
    replica = replica_actors(app, "LargeModel")[0]
    ranks_before = ranks_of(replica)
    assert len(ranks_before) == 2, ranks_before

    load = HttpLoad(
        base, total=12, concurrency=3, body=lambda i: {"prompt": f"a paper boat on a puddle, take {i}", "seed": i}
    ).start()
    load.wait_for(3)
    victim = next(iter(ranks_before.values()))  # either rank: both hold the group's collectives
    os.kill(victim["Pid"], signal.SIGKILL)
    killed_at, sent_before_kill = time.monotonic(), load.tally.sent
    tally = load.join()
    recovery = wait_replaced(app, "LargeModel", replica["ActorID"], 1, killed_at)
    ranks_after = set(ranks_of(replica_actors(app, "LargeModel")[0]))
    after = httpx.post(
        f"{base}/v1/images/generations",
        timeout=CLIENT_TIMEOUT_S,
        json={"prompt": "a paper boat on a puddle", "seed": 1},
    )

    report(
        record_property,
        "parallel_rank_killed",
        {
            **tally.row(),
            "sent_before_kill": sent_before_kill,
            **recovery,
            "new_ranks": len(ranks_after - set(ranks_before)),
            "after_recovery_status": after.status_code,
        },
    )
    assert_every_request_answered(tally)
    assert tally.completed >= 3, tally.row()
    # The replica whose rank died failed its health check and was replaced, with a fresh group of ranks.
    assert len(ranks_after - set(ranks_before)) == 2, (ranks_before.keys(), ranks_after)
    assert after.status_code == 200, after.text


# ---------------------------------------------------------------------------------------------- 3. cache owner
# Distinct subjects, each with a paraphrase that must retrieve it after the restart (MiniLM text->text retrieval).
SUBJECTS = [
    ("a red fox sleeping in fresh snow", "a sleeping red fox lying in the snow"),
    ("a steam locomotive crossing a stone bridge", "an old steam train going over a stone bridge"),
    ("a bowl of ramen with a soft boiled egg", "ramen noodles in a bowl topped with a boiled egg"),
    ("a lighthouse on a cliff during a thunderstorm", "a lighthouse on a cliff in a thunderstorm"),
    ("an astronaut riding a horse on the moon", "an astronaut on horseback on the moon"),
    ("a violin lying on sheet music", "a violin resting on a page of sheet music"),
    ("a hot air balloon over a desert canyon", "a hot-air balloon floating above a canyon in the desert"),
    ("a cat wearing a tiny wizard hat", "a small cat with a little wizard hat on"),
    ("a sailboat in a harbor at sunrise", "a sailing boat in the harbour at sunrise"),
    ("a bonsai tree on a wooden table", "a small bonsai tree standing on a wooden table"),
    ("a snowy mountain cabin with smoke from the chimney", "a cabin in snowy mountains with a smoking chimney"),
    ("a robot watering flowers in a garden", "a robot that waters the flowers in a garden"),
    ("a chess board in a sunlit park", "a chessboard in a sunny park"),
    ("a jellyfish glowing in the deep ocean", "a glowing jellyfish deep in the ocean"),
    ("a stack of pancakes with blueberries", "pancakes stacked up with blueberries on top"),
    ("a tram in a rainy city street at night", "a tram on a rainy street in the city at night"),
]
ADMISSIONS_PER_SUBJECT = 3
CACHE_TENANT = "it-faults-cache"


def solid_png(index: int) -> bytes:
    image = Image.new("RGB", (8, 8), ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_cache_owner_sigkilled_during_admissions_loses_no_committed_entry(serve_app, record_property):
    from ray import serve

    from modm.config import PolicyConfig
    from modm.policy import KTable

    serve.get_deployment_handle("Router", app_name=APP).drain_admissions.remote().result(timeout_s=60)
    cache = serve.get_deployment_handle("CacheIndex", app_name=APP)
    embedder = serve.get_deployment_handle("Embedder", app_name=APP)
    items = [(n, SUBJECTS[n % len(SUBJECTS)][0], solid_png(n)) for n in range(len(SUBJECTS) * ADMISSIONS_PER_SUBJECT)]
    keys = [embedder.embed_for_cache.remote(png, prompt) for _, prompt, png in items]
    keys = [key.result(timeout_s=60) for key in keys]
    entries_before = cache.stats.remote().result(timeout_s=30)["entries"]
    owner = replica_actors(APP, "CacheIndex")[0]

    outcomes: dict[int, int | str] = {}  # item -> entry id, or the error it raised
    returned_before_kill: dict[int, int] = {}
    killed = threading.Event()
    lock = threading.Lock()

    def admit(n: int) -> None:
        _, prompt, png = items[n]
        try:
            entry_id = cache.add.remote(png, keys[n], prompt, CACHE_TENANT, "large", 0).result(
                timeout_s=CLIENT_TIMEOUT_S
            )
        except TimeoutError:
            outcome = "lost: no answer"
        except Exception as err:  # the explicit error a caller sees when the owner dies under its call
            outcome = f"error: {type(err).__name__}"
        else:
            outcome = entry_id
        with lock:
            outcomes[n] = outcome
            if isinstance(outcome, int) and not killed.is_set():
                returned_before_kill[n] = outcome

    with ThreadPoolExecutor(6, thread_name_prefix="fault-admit") as pool:
        futures = [pool.submit(admit, n) for n in range(len(items))]
        deadline = time.monotonic() + 60
        while len(returned_before_kill) < len(items) // 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        with lock:  # from here on an `add` that returns is not counted as committed before the kill
            killed.set()
            committed = dict(returned_before_kill)
        os.kill(owner["Pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        for future in futures:
            future.result()

    recovery = wait_replaced(APP, "CacheIndex", owner["ActorID"], 1, killed_at)
    stats = cache.stats.remote().result(timeout_s=30)
    errors = Counter(o for o in outcomes.values() if isinstance(o, str))
    lost = sum(n for reason, n in errors.items() if reason.startswith("lost"))
    ids = [o for o in outcomes.values() if isinstance(o, int)]
    # Every add that returned an id, before or after the kill, is there with its own image.
    missing = [
        n
        for n, entry_id in outcomes.items()
        if isinstance(entry_id, int) and cache.get_png.remote(entry_id).result(timeout_s=30) != items[n][2]
    ]

    # Retrieval works on the rebuilt index: each subject's paraphrase finds one of that subject's entries (told
    # apart by their images: an add that raised may still have committed, and its id is known only from here).
    k_table = KTable.from_config(PolicyConfig(k_table="minilm-text"))
    item_of_png = {png: n for n, _, png in items}
    subjects_stored = sorted({n % len(SUBJECTS) for n, o in outcomes.items() if isinstance(o, int)})
    queries = {s: embedder.embed_text.remote(SUBJECTS[s][1]) for s in subjects_stored}
    retrieval = {
        s: cache.query.remote(q.result(timeout_s=60), [CACHE_TENANT]).result(timeout_s=30) for s, q in queries.items()
    }
    found = {
        s: item_of_png[cache.get_png.remote(m.entry_id).result(timeout_s=30)] % len(SUBJECTS)
        for s, m in retrieval.items()
        if m is not None and k_table.decide(m.score).hit
    }
    paraphrase_hits = sum(found.get(s) == s for s in subjects_stored)

    report(
        record_property,
        "cache_owner_sigkilled",
        {
            "sent": len(items),
            "completed": len(ids),
            "rejected": sum(errors.values()) - lost,
            "lost": lost,
            "5xx": None,  # admissions go through the deployment handle, not HTTP
            "reasons": dict(errors),
            "committed_before_kill": len(committed),
            "entries_before": entries_before,
            "entries_after": stats["entries"],
            "missing_committed": len(missing),
            "paraphrase_hits": f"{paraphrase_hits}/{len(subjects_stored)}",
            **recovery,
        },
    )
    assert lost == 0, outcomes
    assert len(outcomes) == len(items) and committed, outcomes
    assert not missing, f"committed entries lost or changed: {missing}"
    # Entries that raised may or may not have been committed before the kill; the returned ones must all count.
    assert entries_before + len(ids) <= stats["entries"] <= entries_before + len(items), (stats, len(ids))
    assert paraphrase_hits == len(subjects_stored), (retrieval, found)
