"""Child processes of `threadgate up`: started with their output in a log file, stopped
with SIGTERM and, if they linger, SIGKILL."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


class StartupFailed(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class ManagedProcess:
    def __init__(self, name: str, command: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self._command = command
        self._log_path = log_path
        self._env = env
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self._log_path.open("ab")
        # Its own session: Ctrl-C in the terminal reaches `threadgate up` alone, which
        # then stops children in order instead of all of them dying at once.
        self._process = subprocess.Popen(
            self._command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env,
            start_new_session=True,
        )
        log.close()
        logger.info("started %s (pid %d), log: %s", self.name, self._process.pid, self._log_path)

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise StartupFailed(
                    f"{self.name} exited with status {self._process.returncode}; "
                    f"see {self._log_path}"
                )
            if probe():
                return
            time.sleep(0.1)
        raise StartupFailed(
            f"{self.name} was not ready after {timeout_s:.0f} s; see {self._log_path}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0f s; killing it", self.name, timeout_s)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
        logger.info("stopped %s", self.name)
