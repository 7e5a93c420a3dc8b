"""The scorers' own settings (the LLM judge's), read from the environment and ``.env``.

They live here, not in ``webhook.settings``, because ``scorers`` never imports ``webhook``.
The variable names are a public contract.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from scorers.registry import ScorerConfigError

__all__ = ["JudgeSettings", "first_error", "load_judge_settings"]

_CRITERION = re.compile(r"[a-z][a-z0-9_]{0,39}")


class JudgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    base_url: str | None = Field(default=None, validation_alias="SCORER_JUDGE_BASE_URL")
    api_key: SecretStr | None = Field(default=None, validation_alias="SCORER_JUDGE_API_KEY")
    model: str | None = Field(default=None, validation_alias="SCORER_JUDGE_MODEL")
    criteria: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("accuracy", "relevance", "helpfulness"),
        validation_alias="SCORER_JUDGE_CRITERIA",
    )
    timeout: float = Field(default=30.0, gt=0, validation_alias="SCORER_JUDGE_TIMEOUT")
    concurrency: int = Field(default=4, ge=1, le=256, validation_alias="SCORER_JUDGE_CONCURRENCY")
    max_chars: int = Field(default=20_000, ge=100, validation_alias="SCORER_JUDGE_MAX_CHARS")

    @field_validator("base_url", "model", "api_key", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("base_url")
    @classmethod
    def _check_base(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// or http://")
        return value.rstrip("/") if value else value

    @field_validator("criteria", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(dict.fromkeys(c.strip().lower() for c in value.split(",") if c.strip()))
            bad = [c for c in value if not _CRITERION.fullmatch(c)]
            if bad:
                raise ValueError(f"criterion {bad[0]!r}: use lower-case letters, digits and _")
            if not value:
                raise ValueError("name at least one criterion")
        return value

    @property
    def problem(self) -> str | None:
        """Why the judge cannot run, or None when it is configured."""
        if not self.base_url or not self.model:
            return self.half_set or "set SCORER_JUDGE_BASE_URL and SCORER_JUDGE_MODEL"
        return None

    @property
    def half_set(self) -> str | None:
        """Set when only one of the two settings the judge needs is: a mistake worth a warning."""
        if bool(self.base_url) == bool(self.model):
            return None
        given, missing = (
            ("SCORER_JUDGE_BASE_URL", "SCORER_JUDGE_MODEL")
            if self.base_url
            else ("SCORER_JUDGE_MODEL", "SCORER_JUDGE_BASE_URL")
        )
        return f"{given} is set but {missing} is not"


def first_error(exc: ValidationError) -> tuple[str, str]:
    """The first error's field and message, for a one-line settings error. A validator's own
    ``ValueError`` is quoted as it was raised, without pydantic's ``Value error,`` prefix."""
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else "?"
    cause = err.get("ctx", {}).get("error") if err["type"] == "value_error" else None
    return field, str(cause) if isinstance(cause, ValueError) else err["msg"]


def load_judge_settings() -> JudgeSettings:
    try:
        return JudgeSettings()
    except ValidationError as exc:
        field, message = first_error(exc)
        info = JudgeSettings.model_fields.get(field)
        name = info.validation_alias if info and isinstance(info.validation_alias, str) else field
        raise ScorerConfigError(f"invalid setting {name}: {message}") from None
