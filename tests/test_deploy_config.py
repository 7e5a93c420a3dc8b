"""fly.toml, fly.postgres.toml, the Dockerfile and the settings must agree: ports, paths, signals
and timeouts; and the two Fly setups are what the README says (one machine on SQLite, two on
PostgreSQL with a rolling deploy).

These are static cross-checks that run everywhere; ``scripts/container-test`` builds and runs the
image for real.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from webhook.app import create_app
from webhook.drain import longest_shutdown
from webhook.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
SECRET_NAMES = {"HELICONE_API_KEY", "HELICONE_AUTH", "HELICONE_WEBHOOK_SECRET"}
FLY_FILES = ["fly.toml", "fly.postgres.toml"]


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for args in self.args("ENV"):
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
        return env


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions with their continuation lines joined; comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in logical:
        keyword, _, args = instruction.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            stages.append(Stage(base=args.split()[0]))
        elif not stages and keyword == "ARG":
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, args))
    return Dockerfile(global_args, stages)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def load_fly(name: str) -> dict[str, Any]:
    with (ROOT / name).open("rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module", params=FLY_FILES)
def fly(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each Fly setup in turn, for what both must get right."""
    return load_fly(request.param)


@pytest.fixture(scope="module")
def fly_sqlite() -> dict[str, Any]:
    return load_fly("fly.toml")


@pytest.fixture(scope="module")
def fly_postgres() -> dict[str, Any]:
    return load_fly("fly.postgres.toml")


def seconds(value: object) -> float:
    """Fly durations: an int of seconds, or a string like "60s", "2m"."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", str(value))
    assert match, f"not a duration: {value!r}"
    number, unit = float(match[1]), match[2]
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def sqlite_path(url: str) -> PurePosixPath:
    assert url.startswith("sqlite:///"), url
    return PurePosixPath(url.removeprefix("sqlite:///"))


# -- the Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_a_pinned_slim_base_from_an_arg(
    dockerfile: Dockerfile,
) -> None:
    assert len(dockerfile.stages) >= 2
    assert {s.base for s in dockerfile.stages} == {"${PYTHON_IMAGE}"}
    default = dockerfile.global_args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", default), default


def test_final_stage_runs_as_numeric_non_root_and_copies_only_the_venv(
    dockerfile: Dockerfile,
) -> None:
    final = dockerfile.final
    users = final.args("USER")
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    # Build tools stay in the build stage: the final stage installs nothing.
    for run in final.args("RUN"):
        assert not re.search(r"\b(apt-get|apt|pip|gcc|make)\b", run), run
    copies = final.args("COPY")
    assert copies
    assert all(c.startswith("--from=") for c in copies), copies


def test_dockerfile_environment_command_and_no_secrets(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    env = final.env()
    assert env["PYTHONUNBUFFERED"] == "1"
    assert json.loads(final.args("CMD")[-1]) == ["helicone-scorer", "serve"]
    assert final.args("STOPSIGNAL") == ["SIGTERM"]
    baked = set(env) | {a.partition("=")[0] for s in dockerfile.stages for a in s.args("ARG")}
    assert not baked & SECRET_NAMES


def test_image_port_and_healthcheck(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    assert final.args("EXPOSE") == [final.env()["PORT"]]
    healthcheck = final.args("HEALTHCHECK")[-1]
    assert "/healthz" in healthcheck
    # It honours PORT rather than assuming 8080.
    assert "PORT" in healthcheck


def test_dockerignore_keeps_local_state_out_of_the_build() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data", ".env", "tests", "*.db"} <= ignored


# -- fly.toml against the Dockerfile and the settings ------------------------------------------


def test_app_name_is_a_placeholder(fly: dict[str, Any]) -> None:
    assert "change-me" in fly["app"]


def test_internal_port_matches_the_image(fly: dict[str, Any], dockerfile: Dockerfile) -> None:
    image_port = int(dockerfile.final.args("EXPOSE")[-1])
    assert fly["http_service"]["internal_port"] == image_port
    assert int(fly["env"].get("PORT", dockerfile.final.env()["PORT"])) == image_port
    assert fly["http_service"]["force_https"] is True


def test_checks_probe_the_healthcheck_route(fly: dict[str, Any], dockerfile: Dockerfile) -> None:
    checks = fly["http_service"]["checks"]
    assert checks
    for check in checks:
        assert check["path"] == "/healthz"
        assert check["method"].upper() == "GET"
    assert "/healthz" in dockerfile.final.args("HEALTHCHECK")[-1]
    settings = Settings(allow_unsigned=True, api_key=None, database_url="sqlite:////nonexistent/x")
    app = create_app(settings)
    assert "/healthz" in {getattr(route, "path", None) for route in app.routes}


def test_database_lives_on_the_mounted_volume(
    fly_sqlite: dict[str, Any], dockerfile: Dockerfile
) -> None:
    mounts = fly_sqlite["mounts"]
    mount = mounts[0] if isinstance(mounts, list) else mounts
    destination = PurePosixPath(mount["destination"])
    assert json.loads(dockerfile.final.args("VOLUME")[-1]) == [str(destination)]
    fly_db = sqlite_path(fly_sqlite["env"]["SCORER_DATABASE_URL"])
    image_db = sqlite_path(dockerfile.final.env()["SCORER_DATABASE_URL"])
    assert fly_db == image_db
    assert fly_db.is_absolute()
    assert destination in fly_db.parents


def test_env_names_are_settings_and_values_are_valid(fly: dict[str, Any]) -> None:
    known = set()
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        known |= set(getattr(alias, "choices", [alias]))
    env = fly["env"]
    assert set(env) <= known, set(env) - known
    assert not set(env) & SECRET_NAMES
    settings = load_settings(**{name: str(value) for name, value in env.items()})
    assert settings.database_url == env.get("SCORER_DATABASE_URL", settings.database_url)


def test_sigterm_and_a_grace_period_longer_than_the_shutdown(fly: dict[str, Any]) -> None:
    # SIGTERM is the signal the server drains on (SIGINT would too, but a second one forces).
    assert fly["kill_signal"] == "SIGTERM"
    default = Settings.model_fields["shutdown_grace"].default
    grace = float(fly["env"].get("SCORER_SHUTDOWN_GRACE", default))
    kill_timeout = seconds(fly["kill_timeout"])
    assert longest_shutdown(grace) < kill_timeout <= 300  # Fly's maximum


def test_machines_never_all_auto_stop(fly: dict[str, Any]) -> None:
    service = fly["http_service"]
    # The relay works in the background, with no HTTP traffic to wake a stopped machine: auto-stop
    # is off and one machine always runs (either alone would keep one up; this file does both).
    assert service["auto_stop_machines"] in (False, "off")
    assert service["min_machines_running"] >= 1
    assert service["auto_start_machines"] is True
    # And they are the machines that run the server: the process group the service routes to
    # is the default one, which runs the image's CMD (no [processes] section replaces it).
    assert service["processes"] == ["app"]
    assert "processes" not in fly


def test_readme_shows_the_secrets() -> None:
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"fly secrets set HELICONE_API_KEY=\S+ HELICONE_WEBHOOK_SECRET=", readme)


# -- the two setups ----------------------------------------------------------------------------


def test_one_machine_on_sqlite_is_the_default(fly_sqlite: dict[str, Any]) -> None:
    assert fly_sqlite["http_service"]["min_machines_running"] == 1
    assert fly_sqlite["env"]["SCORER_DATABASE_URL"].startswith("sqlite:///")
    assert "mounts" in fly_sqlite


def test_two_machines_on_postgres_deploy_one_at_a_time(fly_postgres: dict[str, Any]) -> None:
    assert fly_postgres["http_service"]["min_machines_running"] == 2
    deploy = fly_postgres["deploy"]
    assert deploy["strategy"] == "rolling"
    assert deploy["max_unavailable"] == 1
    # The queue is in PostgreSQL, shared: no volume, and its URL (with a password) is a secret.
    assert "mounts" not in fly_postgres
    assert "SCORER_DATABASE_URL" not in fly_postgres["env"]


def test_the_setups_differ_only_where_they_must(
    fly_sqlite: dict[str, Any], fly_postgres: dict[str, Any]
) -> None:
    for key in ("kill_signal", "kill_timeout", "build", "primary_region"):
        assert fly_sqlite[key] == fly_postgres[key], key
    service = {k: v for k, v in fly_sqlite["http_service"].items() if k != "min_machines_running"}
    assert service == {
        k: v for k, v in fly_postgres["http_service"].items() if k != "min_machines_running"
    }
    env = {k: v for k, v in fly_sqlite["env"].items() if k != "SCORER_DATABASE_URL"}
    assert env == fly_postgres["env"]


def test_readme_shows_both_setups_and_the_database_secret() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "fly deploy --config fly.postgres.toml" in readme
    assert re.search(r"fly secrets set [^`]*SCORER_DATABASE_URL=postgresql://\S+", readme)
    assert (ROOT / ".dockerignore").read_text().split().count("fly.postgres.toml") == 1
