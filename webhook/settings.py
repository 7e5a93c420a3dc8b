"""Settings, read from the environment and an optional ``.env`` file.

The variable names are a public contract: users' deployments set them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from scorers import DEFAULT_TIMEOUT, Origin, parse_origins
from scorers.fetch import HELICONE_BODY_HOSTS
from scorers.settings import first_error
from webhook.store import is_postgres, sqlite_path, with_connection_settings

__all__ = ["MAX_WORKERS", "Settings", "SettingsError", "load_settings", "worker_count"]

MiB = 1024 * 1024
MIN_STATUS_TOKEN = 16


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("HELICONE_API_KEY", "HELICONE_AUTH")
    )
    webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(), validation_alias=_env("HELICONE_WEBHOOK_SECRET")
    )
    api_base: str = Field(
        default="https://api.helicone.ai", validation_alias=_env("HELICONE_API_BASE")
    )
    database_url: str = Field(
        default="sqlite:///./data/helicone-scorer.db", validation_alias=_env("SCORER_DATABASE_URL")
    )
    # Unset: the URL's option, else the store's default (see the README).
    database_pool_size: int | None = Field(
        default=None, ge=1, le=1000, validation_alias=_env("SCORER_DATABASE_POOL_SIZE")
    )
    database_connect_timeout: float | None = Field(
        default=None, gt=0, le=3600, validation_alias=_env("SCORER_DATABASE_CONNECT_TIMEOUT")
    )
    database_statement_timeout: float | None = Field(
        default=None, gt=0, le=86400, validation_alias=_env("SCORER_DATABASE_STATEMENT_TIMEOUT")
    )
    max_body_bytes: int = Field(
        default=16 * MiB, gt=0, validation_alias=_env("SCORER_MAX_BODY_BYTES")
    )
    max_inflight_bytes: int = Field(
        default=64 * MiB, gt=0, validation_alias=_env("SCORER_MAX_INFLIGHT_BYTES")
    )
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, validation_alias=_env("SCORER_MAX_HEADER_BYTES")
    )
    header_timeout: float = Field(
        default=30.0, gt=0, validation_alias=_env("SCORER_HEADER_TIMEOUT")
    )
    body_timeout: float = Field(default=30.0, gt=0, validation_alias=_env("SCORER_BODY_TIMEOUT"))
    max_connections: int | None = Field(
        default=None, ge=1, validation_alias=_env("SCORER_MAX_CONNECTIONS")
    )
    port: int = Field(default=8080, ge=1, le=65535, validation_alias=_env("PORT"))
    workers: int = Field(default=1, validation_alias=_env("SCORER_WORKERS"))
    allow_unsigned: bool = Field(default=False, validation_alias=_env("SCORER_ALLOW_UNSIGNED"))
    relay_concurrency: int = Field(
        default=8, ge=1, le=256, validation_alias=_env("SCORER_RELAY_CONCURRENCY")
    )
    post_timeout: float = Field(default=10.0, gt=0, validation_alias=_env("SCORER_POST_TIMEOUT"))
    poll_interval: float = Field(default=1.0, gt=0, validation_alias=_env("SCORER_POLL_INTERVAL"))
    max_attempts: int = Field(default=12, ge=1, validation_alias=_env("SCORER_MAX_ATTEMPTS"))
    retry_base: float = Field(default=2.0, gt=0, validation_alias=_env("SCORER_RETRY_BASE"))
    retry_cap: float = Field(default=600.0, gt=0, validation_alias=_env("SCORER_RETRY_CAP"))
    max_age: float = Field(default=86400.0, gt=0, validation_alias=_env("SCORER_MAX_AGE"))
    lease_seconds: float = Field(default=120.0, gt=0, validation_alias=_env("SCORER_LEASE_SECONDS"))
    retention_days: float = Field(
        default=30.0, ge=0, validation_alias=_env("SCORER_RETENTION_DAYS")
    )
    shutdown_grace: float = Field(
        default=20.0, ge=0, validation_alias=_env("SCORER_SHUTDOWN_GRACE")
    )
    scorer_enabled: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), validation_alias=_env("SCORER_ENABLED")
    )
    scorer_disabled: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), validation_alias=_env("SCORER_DISABLED")
    )
    scorer_timeout: float = Field(
        default=DEFAULT_TIMEOUT, gt=0, validation_alias=_env("SCORER_TIMEOUT_SECONDS")
    )
    # Unset: see ``scoring_workers``; 0: the sync scorers run on threads of the server.
    scoring_processes: int | None = Field(
        default=None, ge=0, le=256, validation_alias=_env("SCORER_SCORING_PROCESSES")
    )
    body_url_allow: Annotated[tuple[str, ...], NoDecode] = Field(
        default=HELICONE_BODY_HOSTS, validation_alias=_env("SCORER_BODY_URL_ALLOW")
    )
    body_fetch_timeout: float = Field(
        default=10.0, gt=0, validation_alias=_env("SCORER_BODY_FETCH_TIMEOUT")
    )
    body_fetch_max_bytes: int = Field(
        default=32 * MiB, gt=0, validation_alias=_env("SCORER_BODY_FETCH_MAX_BYTES")
    )

    rate_limit_per_minute: int = Field(
        default=200, ge=1, validation_alias=_env("SCORER_RATE_LIMIT_PER_MINUTE")
    )
    rate_window_seconds: float = Field(
        default=60.0, gt=0, validation_alias=_env("SCORER_RATE_WINDOW_SECONDS")
    )
    sample: Annotated[float | Literal["auto"], NoDecode] = Field(
        default=100.0, validation_alias=_env("SCORER_SAMPLE")
    )
    flow_report_seconds: float = Field(
        default=300.0, gt=0, validation_alias=_env("SCORER_FLOW_REPORT_SECONDS")
    )
    # Unset: 600 with an API key, else 0 (off); see ``reconcile_every``.
    reconcile_interval: float | None = Field(
        default=None, ge=0, validation_alias=_env("SCORER_RECONCILE_INTERVAL")
    )
    reconcile_settle: float = Field(
        default=120.0, ge=0, le=86400, validation_alias=_env("SCORER_RECONCILE_SETTLE")
    )
    reconcile_properties: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, validation_alias=_env("SCORER_RECONCILE_PROPERTIES")
    )
    reconcile_sample: float = Field(
        default=100.0, ge=0, le=100, validation_alias=_env("SCORER_RECONCILE_SAMPLE")
    )
    reconcile_confirm_after: float = Field(
        default=900.0, gt=0, validation_alias=_env("SCORER_RECONCILE_CONFIRM_AFTER")
    )
    feedback_rule: str | None = Field(default=None, validation_alias=_env("SCORER_FEEDBACK_RULE"))
    rules_file: Path | None = Field(default=None, validation_alias=_env("SCORER_RULES_FILE"))
    log_format: Literal["text", "json"] = Field(
        default="text", validation_alias=_env("SCORER_LOG_FORMAT")
    )
    # Unset: no status page (GET /status and /status.json answer 404).
    status_token: SecretStr | None = Field(
        default=None, validation_alias=_env("SCORER_STATUS_TOKEN")
    )

    @field_validator(
        "webhook_secrets", "scorer_enabled", "scorer_disabled", "body_url_allow", mode="before"
    )
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(s.strip() for s in value.split(",") if s.strip())
        return value

    @field_validator("reconcile_properties", mode="before")
    @classmethod
    def _split_properties(cls, value: object) -> object:
        """``key=value`` pairs, comma separated, as Helicone's webhook property filters."""
        if not isinstance(value, str):
            return value
        items = [i for i in value.split(",") if i.strip()]
        return key_values(items, "expected key=value pairs, comma separated")

    @field_validator("body_url_allow")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_origins(value)  # raises ValueError naming the bad entry
        return value

    @field_validator(
        "api_key",
        "reconcile_interval",
        "feedback_rule",
        "rules_file",
        "max_connections",
        "scoring_processes",
        "database_pool_size",
        "database_connect_timeout",
        "database_statement_timeout",
        "status_token",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("sample", mode="before")
    @classmethod
    def _check_sample(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            percent = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError("must be auto, or a percentage above 0 and at most 100") from None
        if not 0 < percent <= 100:
            raise ValueError("must be auto, or a percentage above 0 and at most 100")
        return percent

    @field_validator("workers", mode="before")
    @classmethod
    def _check_workers(cls, value: object) -> int:
        if isinstance(value, str) and not value.strip():
            return 1  # set but blank: the default
        return worker_count(value)

    @field_validator("status_token")
    @classmethod
    def _check_status_token(cls, value: SecretStr | None) -> SecretStr | None:
        """Long enough that guessing it over HTTP is hopeless (the page can re-queue work)."""
        if value is None:
            return None
        token = value.get_secret_value().strip()  # a header's value is stripped too
        if len(token) < MIN_STATUS_TOKEN:
            raise ValueError(f"must be at least {MIN_STATUS_TOKEN} characters")
        return SecretStr(token)

    @field_validator("api_base")
    @classmethod
    def _check_base(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// or http://")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if sqlite_path(value) is None and not is_postgres(value):
            raise ValueError("must be sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE")
        return value

    @property
    def store_url(self) -> str:
        """The URL the store is opened with: ``SCORER_DATABASE_URL`` with the
        ``SCORER_DATABASE_*`` connection settings that are set as its options (a setting beats
        the URL's own option). Messages name ``database_url``, as the person wrote it."""
        return with_connection_settings(
            self.database_url,
            pool_size=self.database_pool_size,
            connect_timeout=self.database_connect_timeout,
            statement_timeout=self.database_statement_timeout,
        )

    @property
    def reconcile_every(self) -> float:
        """Seconds between reconciliation sweeps; 0: none. Unset, every 600 s with an API key."""
        if self.reconcile_interval is not None:
            return self.reconcile_interval
        return 600.0 if self.api_key is not None else 0.0

    @property
    def scoring_workers(self) -> int:
        """Scorer processes the server runs; 0: sync scorers on its threads. Unset, one per
        core but one (left to the loop), at least 2 (so one slow scorer does not hold up every
        webhook), and no more than the webhooks scored at once."""
        if self.scoring_processes is not None:
            return self.scoring_processes
        return min(self.relay_concurrency, max(2, (os.cpu_count() or 1) - 1))

    @property
    def body_origins(self) -> tuple[Origin, ...]:
        """Where "Body too large" webhooks' full bodies may be fetched from."""
        return parse_origins(self.body_url_allow)

    @property
    def secrets(self) -> list[str]:
        return [s.get_secret_value() for s in self.webhook_secrets]


def key_values(items: Iterable[str], expected: str = "expected name=value") -> dict[str, str]:
    """``name=value`` items, each name once, spaces around either stripped; ValueError names the
    first bad item (``expected`` says what was)."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, val = item.partition("=")
        key, val = key.strip(), val.strip()
        if not sep or not key:
            raise ValueError(f"{item.strip()!r}: {expected}")
        if key in pairs:
            raise ValueError(f"{key!r} is given twice")
        pairs[key] = val
    return pairs


MAX_WORKERS = 64


def worker_count(value: object) -> int:
    """A number of server processes (``SCORER_WORKERS``, ``serve --workers``); ValueError says
    what is allowed."""
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_WORKERS:
        raise ValueError(f"must be a whole number from 1 to {MAX_WORKERS}")
    return int(text)


class SettingsError(Exception):
    """A setting has a bad value; the message is one line naming the variable."""


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        field, message = first_error(exc)
        raise SettingsError(f"invalid setting {_variable_name(field)}: {message}") from None


def _variable_name(field: str) -> str:
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return field
