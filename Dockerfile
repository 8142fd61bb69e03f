# waclient host: python -m waclient.host on $PORT (8080), the session on the /data volume.
# Build: docker build -t waclient-host .
# Run:   docker run -p 8080:8080 -v waclient-data:/data -e WACLIENT_API_KEY=... -e REDIS_URL=... waclient-host

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtualenv with waclient[host] and its dependencies (wheels preferred) --------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_PREFER_BINARY=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY waclient ./waclient
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-compile ".[host]" \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# -- runtime: the venv, a non-root user, nothing else -------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# neonize imports python-magic, which loads libmagic at import time.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libmagic1 \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin waclient \
 && mkdir -p /data \
 && chown waclient:waclient /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080 \
    WACLIENT_SESSION_DIR=/data \
    WACLIENT_TRANSPORT=isolated
# neonize's Go core ships inside its wheel: fail the build if it is missing or does not load.
RUN python -c "import neonize.client, pathlib; \
p = pathlib.Path(neonize.client.__file__).parent; \
assert any(p.glob('neonize-linux-*.so')), 'neonize native library missing'"
USER 10001:10001
WORKDIR /home/waclient
VOLUME ["/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/health', timeout=4)"]
CMD ["python", "-m", "waclient.host"]
