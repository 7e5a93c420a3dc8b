# helicone-scorer: the webhook server and its relay, in one process.
#
# The base is an ARG, pinned by version, so that scripts/container-test can build this same file on
# a local Debian base (no registry is reachable there). All this file needs from the base is
# `python3` on PATH with its `venv` module, `useradd`, and /bin/sh.
ARG PYTHON_IMAGE=python:3.11.16-slim-bookworm

# --- build: a virtualenv with the project and its dependencies (wheels only, no compiler) --------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ONLY_BINARY=:all:
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scorers ./scorers
COPY webhook ./webhook
# The project itself is built from source (setuptools, in pip's isolated build environment); every
# dependency must come as a wheel. pip and setuptools are then removed: they are not needed to run.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir . \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && /opt/venv/bin/helicone-scorer --help > /dev/null

# --- runtime -------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    PORT=8080 \
    SCORER_DATABASE_URL=sqlite:////data/helicone-scorer.db
RUN groupadd --gid 10001 scorer \
 && useradd --uid 10001 --gid scorer --no-log-init --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin scorer \
 && mkdir /data \
 && chown scorer:scorer /data
COPY --from=build /opt/venv /opt/venv
# The SQLite queue lives here: mount a volume, or what was acknowledged dies with the container.
VOLUME ["/data"]
WORKDIR /data
# Numeric, so a platform can tell it is not root without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/healthz', timeout=4)"]
# SIGTERM: requests in flight finish, the relay gets SCORER_SHUTDOWN_GRACE seconds, then releases
# what is left for the next start.
STOPSIGNAL SIGTERM
CMD ["helicone-scorer", "serve"]
