"""`make demo`: start a local Ray cluster, deploy the local Serve config, send the embedded workload through the
load generator, print a summary, draw a contact sheet of what the system did, and shut everything down.

This is exactly what a user does by hand (README "Run the app"): `ray start`, `serve deploy`, HTTP requests,
`serve shutdown`, `ray stop`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from modm.config import load_config
from modm.demo import demo_workload_path, ensure_zoo, read_workload
from tools.local_cluster import wait_healthy
from tools.serve_configs import local_config_path

DASHBOARD = "http://127.0.0.1:8265"
CONTACT_SHEET = "contact_sheet.png"


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=check, text=True, capture_output=True)


def demo_serve_config(source: Path, work_dir: Path) -> tuple[Path, str]:
    """A copy of the local Serve config whose cache lives in work_dir (emptied first); returns (path, url)."""
    config = yaml.safe_load(source.read_text(encoding="utf-8"))
    cache_dir = work_dir / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    config["applications"][0]["args"]["system"]["cache"]["directory"] = str(cache_dir.resolve())
    path = work_dir / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    http = config.get("http_options", {})
    return path, f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"


def wait_app(url: str, timeout_s: float) -> float:
    try:
        return wait_healthy(url, timeout_s)
    except TimeoutError:
        status = _run(_bin("serve"), "status", "--address", DASHBOARD, check=False).stdout
        raise RuntimeError(f"the app was not healthy after {timeout_s:.0f}s; serve status:\n{status}") from None


def send_workload(url: str, out_dir: Path, workload: Path, size: int, concurrency: int) -> dict:
    """Send the workload, keeping every image; write the run and its contact sheet (CONTACT_SHEET) to out_dir."""
    from loadgen import ClientConfig, RunConfig, run
    from loadgen.contact_sheet import fetch_cached_images, write_contact_sheet
    from loadgen.runner import write_run
    from modm.workload.config import ArrivalConfig, ArrivalKind, TraceConfig
    from modm.workload.report import format_summary

    shutil.rmtree(out_dir, ignore_errors=True)
    rows = len(read_workload(workload))
    client = ClientConfig(
        url=url,
        size=f"{size}x{size}",
        tenant="demo",
        request_timeout_s=300,
        stats_poll_period_s=2.0,
        progress=False,
        image_dir=out_dir / "images",
    )
    config = RunConfig(
        name="demo",
        trace=TraceConfig(path=workload, n_requests=rows),
        arrival=ArrivalConfig(kind=ArrivalKind.CLOSED_LOOP, concurrency=concurrency),
        client=client,
        reference_latency_s=None,
    )
    artifacts = run(config)
    write_run(out_dir, artifacts)  # makes the records' image paths relative to out_dir
    print(format_summary(artifacts.summary))
    records = artifacts.result.records
    sources = fetch_cached_images(client, records, out_dir / "cache_images")
    hits = sum(bool(r.hit) for r in records)
    sheet = write_contact_sheet(
        out_dir / CONTACT_SHEET,
        records,
        base_dir=out_dir,
        cached_images=sources,
        title=f"make demo: {len(records)} requests, {hits} hits (refined from the cached "
        f"image on the right), {len(records) - hits} misses",
    )
    print(f"contact sheet: {sheet}")
    return artifacts.summary.model_dump(mode="json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=local_config_path(), help="Serve config to deploy")
    parser.add_argument(
        "--workload", type=Path, default=None, help="user<TAB>prompt TSV (default: the config's embedded workload)"
    )
    parser.add_argument("--zoo", type=Path, default=Path(".modm/zoo"), help="tiny zoo location (built if missing)")
    parser.add_argument("--work-dir", type=Path, default=Path(".modm/demo"), help="demo cache and records")
    parser.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the local Ray head")
    parser.add_argument("--concurrency", type=int, default=2, help="closed-loop clients")
    parser.add_argument("--keep-running", action="store_true", help="leave the cluster up at the end")
    args = parser.parse_args(argv)

    system = load_config(args.config)
    ensure_zoo(system, args.zoo)
    missing = [
        m.source for m in (system.models.large, system.models.small) if m is not None and not Path(m.source).exists()
    ]
    if missing:
        print(
            f"{args.config}: model directories not found: {missing} (run from the repository root; the world's "
            "models are committed under modm/world/weights, `modm world build` rebuilds them)",
            file=sys.stderr,
        )
        return 1
    workload = args.workload or demo_workload_path(system)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    serve_config, url = demo_serve_config(args.config, args.work_dir)
    started = time.monotonic()
    head = _run(
        _bin("ray"),
        "start",
        "--head",
        f"--num-cpus={args.num_cpus}",
        "--dashboard-host=127.0.0.1",
        "--disable-usage-stats",
        check=False,
    )
    if head.returncode != 0:
        print(head.stdout + head.stderr, file=sys.stderr)
        print("could not start a Ray head (is one running already? `ray stop` ends it)", file=sys.stderr)
        return 1
    try:
        _run(_bin("serve"), "deploy", str(serve_config), "--address", DASHBOARD)
        ready_s = wait_app(url, timeout_s=600)
        print(f"app healthy {ready_s:.1f}s after deploy ({time.monotonic() - started:.1f}s after ray start)")
        print(_run(_bin("serve"), "status", "--address", DASHBOARD).stdout)
        send_workload(url, args.work_dir / "run", workload, system.models.large.default_size, args.concurrency)
        stats = httpx.get(f"{url}/v1/stats", timeout=10).json()
        print(
            "server stats:",
            json.dumps(
                {
                    k: stats[k]
                    for k in ("requests", "hits", "misses", "hit_rate", "k_mix", "served_by", "allocation", "cache")
                },
                indent=1,
            ),
        )
        print(f"records and plots: {args.work_dir / 'run'}")
        return 0
    finally:
        if not args.keep_running:
            _run(_bin("serve"), "shutdown", "-y", "--address", DASHBOARD, check=False)
            _run(_bin("ray"), "stop", check=False)


if __name__ == "__main__":
    sys.exit(main())
