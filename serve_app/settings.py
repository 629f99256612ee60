"""Configuration, read from the environment (and `.env`) by pydantic-settings.

Service locations use the names operators already know (`MONGODB_URI`, `REDIS_URL`,
`MILVUS_URI`, `ANTHROPIC_API_KEY`, ...); everything else is `THREADGATE_*`.
"""

from __future__ import annotations

from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS_PATH = PROJECT_ROOT / "configs" / "models.yaml"


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, f"THREADGATE_{name}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="THREADGATE_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # Stores. `threadgate up` fills these in for the services it starts itself.
    mongodb_uri: str = Field(
        "mongodb://127.0.0.1:27017/?directConnection=true", validation_alias=_env("MONGODB_URI")
    )
    mongodb_db: str = "threadgate"
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=_env("REDIS_URL"))
    milvus_uri: str = Field(".data/milvus.db", validation_alias=_env("MILVUS_URI"))

    # Providers. A provider with no API key is served by the sandbox when one is running.
    anthropic_api_key: SecretStr | None = Field(None, validation_alias=_env("ANTHROPIC_API_KEY"))
    anthropic_base_url: str = Field(
        "https://api.anthropic.com", validation_alias=_env("ANTHROPIC_BASE_URL")
    )
    openai_api_key: SecretStr | None = Field(None, validation_alias=_env("OPENAI_API_KEY"))
    openai_base_url: str = Field(
        "https://api.openai.com/v1", validation_alias=_env("OPENAI_BASE_URL")
    )
    openai_compatible_api_key: SecretStr | None = Field(
        None, validation_alias=_env("OPENAI_COMPATIBLE_API_KEY")
    )
    openai_compatible_base_url: str | None = Field(
        None, validation_alias=_env("OPENAI_COMPATIBLE_BASE_URL")
    )
    sandbox_url: str | None = None
    upstream_timeout_s: float = 600.0
    upstream_connect_timeout_s: float = 10.0
    upstream_max_attempts: int = 4  # the first try and 3 retries on 429, 5xx and connect errors

    # Money and models.
    markup: Decimal = Decimal("1.07")
    models_path: Path = DEFAULT_MODELS_PATH

    # Turns.
    history_max_turns: int = 50
    turn_lock_wait_s: float = 60.0
    turn_lock_ttl_s: float = 30.0
    # A call's holder pushes its reservation's expiry ahead every third of this; a holder
    # that died (or lost Redis while settling) has its reservation judged by the ledger
    # this long after its last sign of life.
    reservation_ttl_s: float = Field(120.0, ge=3)
    # How long a finished turn keeps trying to reach MongoDB before the request fails.
    persist_retry_s: float = Field(30.0, ge=0)
    # When a replica stops: how long turns still running (their clients gone) may go on
    # before streams are cut and stored as "interrupted". Below the deployments'
    # graceful_shutdown_timeout_s (30 s) in configs/serve.yaml.
    shutdown_turn_wait_s: float = Field(20.0, ge=0)
    stream_disconnect: Literal["drain", "cancel"] = "drain"
    stream_ping_interval_s: float = 10.0

    # HTTP edge.
    max_body_bytes: int = 8 * 1024 * 1024
    idempotency_ttl_s: int = 24 * 3600
    key_cache_ttl_s: float = 30.0
    log_level: str = "INFO"

    @field_validator("markup")
    @classmethod
    def _markup_at_least_one(cls, value: Decimal) -> Decimal:
        if value < 1 or value.as_tuple().exponent < -4:  # type: ignore[operator]
            raise ValueError(f"markup must be >= 1 with at most 4 decimals, got {value}")
        return value

    @cached_property
    def markup_bp(self) -> int:
        """The markup in basis points (1.07 -> 10700), so money math stays integral."""
        return int(self.markup * 10_000)
