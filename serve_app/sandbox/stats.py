"""What the sandbox has been asked, so a test can prove a request did or did not reach it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

APIS = ("anthropic", "openai")


@dataclass(slots=True)
class SandboxStats:
    calls: int = 0  # every request to a model endpoint, refused or failed ones included
    by_api: Counter[str] = field(default_factory=lambda: Counter(dict.fromkeys(APIS, 0)))
    by_model: Counter[str] = field(default_factory=Counter)
    injected_failures: int = 0  # answers replaced by a sandbox:fail status
    streams: int = 0  # streamed answers started

    def count_call(self, api: str) -> None:
        self.calls += 1
        self.by_api[api] += 1

    def count_model(self, model: str) -> None:
        self.by_model[model] += 1

    def reset(self) -> None:
        self.calls = 0
        self.by_api = Counter(dict.fromkeys(APIS, 0))
        self.by_model = Counter()
        self.injected_failures = 0
        self.streams = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "by_api": dict(self.by_api),
            "by_model": dict(self.by_model),
            "injected_failures": self.injected_failures,
            "streams": self.streams,
        }
