"""`threadgate up`: the whole gateway on one machine, stopped cleanly by Ctrl-C/SIGTERM."""

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


def deployment_options(config_path: Path) -> dict[str, dict[str, Any]]:
    """The `deployments:` section of serve.yaml, keyed by deployment name."""
    config = yaml.safe_load(config_path.read_text())
    app = next(app for app in config["applications"] if app["name"] == APP_NAME)
    options = {}
    for deployment in app.get("deployments", []):
        settings = dict(deployment)
        options[settings.pop("name")] = settings
    return options


def _start_serve(host: str, port: int, data_dir: Path) -> None:
    # Imported here: Ray takes seconds to import and other subcommands never need it.
    import ray
    from ray import serve

    from deployments.app import build

    ray.init(
        address="local",
        include_dashboard=False,
        logging_level=logging.WARNING,
        configure_logging=False,
    )
    serve.start(http_options={"host": host, "port": port})
    options = deployment_options(SERVE_CONFIG)
    serve.run(
        build({"deployment_options": options}), name=APP_NAME, route_prefix="/", blocking=False
    )


def _stop_serve() -> None:
    import ray

    if ray.is_initialized():
        # Ending the local cluster ends every replica and the HAProxy ingress with it;
        # serve.shutdown() first would only add a slow controller drain.
        ray.shutdown()


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

    def request_stop(signum: int, _frame: Any) -> None:
        logger.info("received %s; stopping", signal.Signals(signum).name)
        stop_requested.set()

    def install_handlers() -> None:
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

    install_handlers()
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
        os.environ.setdefault("HF_HUB_OFFLINE", "1")

        _start_serve(host, port, data_dir)
        # ray.init installs its own handlers, which end the process at once; ours stop
        # every child first.
        install_handlers()
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
        _stop_serve()
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
