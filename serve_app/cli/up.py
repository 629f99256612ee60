"""`threadgate up`: the whole gateway on one machine, stopped cleanly by Ctrl-C/SIGTERM.

Stopping drains before it tears down: the Serve application is deleted first, so no new
request is admitted while the requests in flight, streamed turns included, run to their
end and are stored and billed (DESIGN.md, invariant 4). Only then do Ray and the stores
stop, in that order, because a draining replica still needs MongoDB, Redis and the
upstream. The drain is bounded by the deployments' `graceful_shutdown_timeout_s` in
configs/serve.yaml; a second Ctrl-C or SIGTERM cuts it short.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from serve_app.cli.processes import StartupFailed, free_port
from serve_app.cli.stack import LocalStack, http_ready
from serve_app.settings import PROJECT_ROOT

logger = logging.getLogger(__name__)

SERVE_CONFIG = PROJECT_ROOT / "configs" / "serve.yaml"
APP_NAME = "threadgate"
# The two flags that take a deployment hop from ~19 ms to ~6 ms and throughput ~5x on
# the 2-core machines we measure on (DESIGN.md, "Local stack").
RAY_SERVE_FLAGS = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# A draining ingress replica stays reachable this long before it closes its listener, so
# load balancers can take it out of rotation (Serve's default: 30 s). On one machine the
# app is deleted before any replica drains, so HAProxy's next reload already routes
# nothing to it; waiting 30 s would only make every stop 30 s slower.
DRAIN_ENVIRONMENT = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}
# Serve's default for deployments that set no graceful_shutdown_timeout_s.
DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S = 20.0
# Waited beyond the replicas' own deadline: Serve's reaction time and bookkeeping.
DRAIN_SLACK_S = 10.0


def deployment_options(config_path: Path) -> dict[str, dict[str, Any]]:
    """The `deployments:` section of serve.yaml, keyed by deployment name."""
    config = yaml.safe_load(config_path.read_text())
    app = next(app for app in config["applications"] if app["name"] == APP_NAME)
    options = {}
    for deployment in app.get("deployments", []):
        settings = dict(deployment)
        options[settings.pop("name")] = settings
    return options


def _start_ray() -> None:
    # Imported here: Ray takes seconds to import and other subcommands never need it.
    import ray

    ray.init(
        address="local",
        include_dashboard=False,
        logging_level=logging.WARNING,
        configure_logging=False,
    )


def _start_serve(host: str, port: int, options: dict[str, dict[str, Any]]) -> None:
    from ray import serve

    from deployments.app import build

    serve.start(http_options={"host": host, "port": port})
    serve.run(
        build({"deployment_options": options}), name=APP_NAME, route_prefix="/", blocking=False
    )


def replica_shutdown_timeout_s(options: dict[str, dict[str, Any]]) -> float:
    """The longest `graceful_shutdown_timeout_s` of the app's deployments.

    Deleting the app stops every deployment at once, and Serve kills a replica that still
    holds requests this long after its stop began: the slowest deployment bounds the drain.
    """
    timeouts = [
        float(settings.get("graceful_shutdown_timeout_s", DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S))
        for settings in options.values()
    ]
    return max(timeouts, default=DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S)


def _stop_serve(stop_now: threading.Event, replica_timeout_s: float) -> None:
    """Drain the app, then end the local Ray cluster (replicas and HAProxy with it)."""
    import ray

    if not ray.is_initialized():
        return
    try:
        _drain_app(stop_now, replica_timeout_s)
    finally:
        ray.shutdown()


def _drain_app(stop_now: threading.Event, replica_timeout_s: float) -> None:
    """Delete the app and wait until its replicas have finished their requests.

    From the deletion on, HAProxy routes no new request to the app (it answers 404), while
    the connections it already holds stay open: a streaming client keeps reading to the
    end of its turn. Each replica exits once its requests are done, or is killed by Serve
    after `replica_timeout_s`. Serve counts HTTP requests, not the tasks they leave
    behind: a turn that goes on after its client left is not waited for.
    """
    from ray import serve
    from ray.exceptions import RayError
    from ray.serve.exceptions import RayServeException

    started = time.monotonic()
    deadline = started + replica_timeout_s + DRAIN_SLACK_S
    logger.info(
        "draining: no new requests; requests in flight get up to %.0f s to finish "
        "(Ctrl-C or SIGTERM again stops at once)",
        replica_timeout_s,
    )
    try:
        serve.delete(APP_NAME, _blocking=False)
        while APP_NAME in serve.status().applications:
            if stop_now.wait(0.25):
                return
            if time.monotonic() > deadline:
                logger.warning(
                    "the app was still being deleted after %.0f s; stopping Ray",
                    deadline - started,
                )
                return
    except (RayError, RayServeException) as exc:
        # Serve never started, or its controller is gone: nothing is left to drain.
        logger.warning("could not drain the app (%s); stopping Ray", exc)
        return

    drained_s = time.monotonic() - started
    if drained_s < replica_timeout_s:
        logger.info("drained in %.1f s", drained_s)
    else:
        logger.warning(
            "replicas still busy after %.0f s were stopped by Serve; "
            "requests they held were cut off",
            replica_timeout_s,
        )


def _haproxy_environment(data_dir: Path) -> dict[str, str]:
    """HAProxy's files and ports apart per stack, so two stacks on one machine don't collide.

    They live in a short /tmp path named after the data dir, not in it: HAProxy refuses
    socket paths over 97 characters, and Ray adds a 40-character directory of its own.
    """
    digest = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:10]
    base = Path(tempfile.gettempdir()) / f"tg-haproxy-{digest}"
    base.mkdir(parents=True, exist_ok=True)
    return {
        # Its stats and metrics listeners default to fixed ports on 0.0.0.0.
        "RAY_SERVE_HAPROXY_STATS_PORT": os.environ.get(
            "RAY_SERVE_HAPROXY_STATS_PORT", str(free_port())
        ),
        "RAY_SERVE_HAPROXY_METRICS_PORT": os.environ.get(
            "RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port())
        ),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
    }


def run_up(host: str, port: int, data_dir: Path) -> int:
    stop_requested = threading.Event()
    stop_now = threading.Event()  # a second signal: skip the drain

    def request_stop(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop_requested.is_set():
            logger.warning("received %s again; stopping at once, cutting off requests", name)
            stop_now.set()
            return
        logger.info("received %s; stopping", name)
        stop_requested.set()

    def install_handlers() -> None:
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

    install_handlers()
    options = deployment_options(SERVE_CONFIG)
    stack = LocalStack(data_dir, dict(os.environ))
    try:
        endpoints = stack.start()
        if endpoints.sandbox_url:
            logger.info(
                "providers without an API key are served by the sandbox upstream at %s",
                endpoints.sandbox_url,
            )
        os.environ.update(endpoints.environment())
        os.environ.update(RAY_SERVE_FLAGS)
        os.environ.update(_haproxy_environment(data_dir))
        for name, value in DRAIN_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")

        _start_ray()
        # ray.init installs its own handlers, which end the process at once (on SIGTERM,
        # with an abort 3 s later whatever is still running); ours stop every child first.
        install_handlers()
        _start_serve(host, port, options)
        gateway_url = f"http://{host}:{port}"
        _wait_for_health(gateway_url, stop_requested)
        if stop_requested.is_set():
            return 0

        endpoints.gateway_url = gateway_url
        stack.write_stack_file(endpoints)
        print(f"threadgate ready at {gateway_url}", flush=True)
        stop_requested.wait()
        return 0
    except StartupFailed as exc:
        logger.error("%s", exc)
        return 1
    finally:
        try:
            _stop_serve(stop_now, replica_shutdown_timeout_s(options))
        finally:
            # ray.shutdown() puts SIGTERM back to its default action while Python still
            # reports our handler: another signal now would kill this process and leave
            # the stores running. And a SIGTERM that came while ray.init ran went to
            # Ray's crash handler, which set an alarm to abort the process 3 s later.
            install_handlers()
            signal.alarm(0)
            # Last: the replicas needed the stores and the sandbox while they drained.
            stack.stop()
            logger.info("threadgate stopped")


def _wait_for_health(gateway_url: str, stop_requested: threading.Event) -> None:
    deadline = time.monotonic() + 180
    while not stop_requested.is_set():
        if http_ready(f"{gateway_url}/healthz"):
            return
        if time.monotonic() > deadline:
            raise StartupFailed(f"{gateway_url}/healthz did not turn green within 180 s")
        stop_requested.wait(0.25)
