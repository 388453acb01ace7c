"""Serve-layer defaults, named with their units; each can be overridden by an environment variable."""

import os


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


HEALTH_CHECK_PERIOD_S = _env_float("MODM_HEALTH_CHECK_PERIOD_S", 10.0)
HEALTH_CHECK_TIMEOUT_S = _env_float("MODM_HEALTH_CHECK_TIMEOUT_S", 30.0)
# Light deployments (embedder, caches, monitor) answer in well under a second; 20 s is plenty to drain them.
GRACEFUL_SHUTDOWN_TIMEOUT_S = _env_float("MODM_GRACEFUL_SHUTDOWN_TIMEOUT_S", 20.0)
# Model replicas: a replica picked for removal finishes its in-flight generation first, so its graceful-shutdown
# timeout covers the longest one it may be running: profiled_latency_s (default size and steps) scaled by the largest
# request's pixels and steps, times this margin for run-to-run variance and the drain loop's polling. 1.5 because
# MoDM's MI210 latencies vary well within +-30% between runs, and an idle replica stops at once however long it is.
GRACEFUL_SHUTDOWN_MARGIN = _env_float("MODM_GRACEFUL_SHUTDOWN_MARGIN", 1.5)
# How often a stopping replica re-checks its ongoing requests (Serve's default is 2 s).
GRACEFUL_SHUTDOWN_WAIT_LOOP_S = _env_float("MODM_GRACEFUL_SHUTDOWN_WAIT_LOOP_S", 1.0)
# Serve's autoscaling metrics interval and look-back for the model deployments (whose replica count the monitor's
# published target sets, deployments/autoscaling.py).
AUTOSCALING_METRICS_INTERVAL_S = _env_float("MODM_AUTOSCALING_METRICS_INTERVAL_S", 1.0)
AUTOSCALING_LOOK_BACK_S = _env_float("MODM_AUTOSCALING_LOOK_BACK_S", 2.0)

DEFAULT_DEPLOYMENT_OPTIONS = {
    "health_check_period_s": HEALTH_CHECK_PERIOD_S,
    "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
    "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_TIMEOUT_S,
    "graceful_shutdown_wait_loop_s": GRACEFUL_SHUTDOWN_WAIT_LOOP_S,
}
