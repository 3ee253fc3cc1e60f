# vae-mnist container images (see docs/containers.md).
#
#   serve (the default target): FastAPI + onnxruntime, no torch, with the embedded default
#         model; non-root, read-only-root friendly; configured only through VAE_* variables.
#           docker build --target serve -t vae-mnist:serve .
#   balancer: nginx in front of the serve replicas on Compose (deploy/nginx/, docs/scaling.md).
#           docker build --target balancer -t vae-mnist:balancer .
#   train: torch (CPU) and the training CLI; publishes new versions into /models.
#           docker build --target train -t vae-mnist:train .
#         TORCH_PIP_OPTIONS says where pip finds the CPU build of torch (default: PyTorch's CPU
#         wheel index). Without it pip takes the multi-GB CUDA build from the default index.
#
# Every dependency is installed from a lock with hashes (requirements/*.lock, `make lock`),
# with --require-hashes --no-deps; torch alone is pinned by version (requirements/torch.txt).
#
# Stage order: everything `serve` needs comes before it, then `balancer`, then the torch stages,
# because Docker's legacy builder (no BuildKit/buildx) builds every stage up to the target in
# file order. Layer order: base -> locked dependencies (change only with a lock) -> project wheel.

FROM python:3.11-slim AS base
# ORT_DISABLE_TELEMETRY: onnxruntime's Linux builds otherwise start a telemetry client (which
# also tries to persist a device id, and cannot on a read-only root).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ORT_DISABLE_TELEMETRY=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# One unprivileged user in both images, so that the uid that publishes into the model
# repository volume is the uid that reads it. /models and /data are owned by it, and an
# empty named volume mounted there takes that ownership.
ARG APP_UID=10001
RUN groupadd --gid "${APP_UID}" vae \
    && useradd --uid "${APP_UID}" --gid vae --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin vae \
    && install -d -o vae -g vae -m 0755 /models /data

# The project's own pure-Python wheels, built with the locked build backend (setuptools,
# wheel) and no build isolation, so nothing unhashed is fetched: one wheel with only service/
# (and its embedded model), one with only training/. Source edits rebuild these small layers.
FROM base AS wheel-builder
COPY requirements/build.lock /tmp/requirements/
RUN pip install --require-hashes --no-deps -r /tmp/requirements/build.lock
WORKDIR /src
COPY pyproject.toml ./

FROM wheel-builder AS wheel-serve
COPY service/ service/
RUN pip wheel --no-build-isolation --no-deps --wheel-dir /dist .

# ---------------------------------------------------------------------------------------------
FROM base AS serve
COPY requirements/serve.lock /tmp/requirements/
# Left out, as never used by the service: the dependencies' own test suites (17 MB),
# onnxruntime's offline model tooling (transformers/, quantization/, tools/: 9 MB), numpy's
# build tooling (f2py, the Fortran wrapper generator, C headers, static libraries: 3 MB) and
# type stubs (*.pyi, read by type checkers only: 1.7 MB).
RUN pip install --require-hashes --no-deps -r /tmp/requirements/serve.lock \
    && pip check \
    && find /usr/local/lib -depth -type d -path '*-packages/*/tests' -exec rm -rf {} + \
    && find /usr/local/lib -depth -type d -regex '.*-packages/onnxruntime/\(transformers\|quantization\|tools\)' -exec rm -rf {} + \
    && find /usr/local/lib -depth -type d -regex '.*-packages/numpy/\(f2py\|_core/include\|_core/lib\|random/lib\)' -exec rm -rf {} + \
    && find /usr/local/lib -path '*-packages/*' -name '*.pyi' -delete \
    && rm -f /usr/local/bin/onnxruntime_test /usr/local/bin/f2py /usr/local/bin/numpy-config \
    && python -c "import numpy, onnxruntime, PIL, fastapi, uvicorn"
COPY --from=wheel-serve /dist/ /tmp/dist/
# Then a smoke test of the installed wheel: the embedded model is there, and the app that
# `vae-serve` runs can be built (package data such as static files is complete).
RUN pip install --no-deps /tmp/dist/*.whl \
    && rm -rf /tmp/dist /tmp/requirements \
    && python -c "import service.settings as s; assert any(s.EMBEDDED_MODEL_DIR.glob('vae/*/manifest.json')), 'no embedded default model'" \
    && python -c "import service.main as m; m.server_config(m.load_settings())"
# An empty /models (no volume mounted) serves the embedded default model.
ENV VAE_HOST=0.0.0.0 \
    VAE_PORT=8000 \
    VAE_MODEL_REPOSITORY=/models
ARG APP_UID=10001
USER ${APP_UID}:${APP_UID}
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('VAE_PORT', '8000'), timeout=4)"]
CMD ["vae-serve"]

# ---------------------------------------------------------------------------------------------
# The balancer in front of N `serve` replicas (docker compose up --scale api=N; docs/scaling.md):
# Debian's nginx on the same base, whose layers it shares with serve. After serve, so that the
# legacy builder never runs it for --target serve (for --target balancer it builds serve's
# stages first, cached once Compose has built `api`; BuildKit builds only `base`). The version
# is pinned to Debian 12's nginx (1.22), security updates included.
FROM base AS balancer
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx-light=1.22.* \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && nginx -V
COPY deploy/nginx/nginx.conf /etc/vae-balancer/nginx.conf
COPY deploy/nginx/balancer.sh /usr/local/bin/vae-balancer
ARG APP_UID=10001
USER ${APP_UID}:${APP_UID}
EXPOSE 8000
# nginx's graceful stop (SIGTERM is its fast one): requests in flight finish.
STOPSIGNAL SIGQUIT
# Healthy when a replica answers /readyz through nginx.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["vae-balancer"]

# ---------------------------------------------------------------------------------------------
# Everything below is the training image's; the legacy builder reaches it only for --target
# train (or no target at all).
FROM wheel-builder AS wheel-train
COPY training/ training/
RUN pip wheel --no-build-isolation --no-deps --wheel-dir /dist .

FROM base AS train
# Where pip finds torch, as pip options. The default, PyTorch's CPU index in place of the
# default index, fails at once when unreachable (an extra index would let pip fall back to
# the default index's multi-GB CUDA build). Alternatives: a mirror ("--index-url URL"), or a
# directory holding the CPU wheel ("--find-links /mnt/torch-wheels", mounted into the build
# with podman build --volume DIR:/mnt/torch-wheels:ro, or served over HTTP).
ARG TORCH_PIP_OPTIONS="--index-url https://download.pytorch.org/whl/cpu"
# Torch alone and without its dependencies (they are in train.lock, with hashes).
COPY requirements/torch.txt /tmp/requirements/
RUN pip install --no-deps ${TORCH_PIP_OPTIONS} -r /tmp/requirements/torch.txt
COPY requirements/train.lock /tmp/requirements/
RUN pip install --require-hashes --no-deps -r /tmp/requirements/train.lock \
    && pip check \
    && python -c "import torch; assert not torch.version.cuda, 'CUDA torch: set TORCH_PIP_OPTIONS'"
COPY --from=wheel-train /dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl \
    && rm -rf /tmp/dist /tmp/requirements
# The embedded default model, as files: the quality gate's reference while the repository
# has no version with figures (the service image serves the same model).
COPY service/default_model/ /opt/vae-mnist/default_model/
# Training writes only to /models (the repository volume), /data (the MNIST cache volume)
# and /tmp (a tmpfs: the run directory, matplotlib's cache).
ENV MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache \
    HOME=/tmp \
    VAE_EMBEDDED_MODEL=/opt/vae-mnist/default_model
# Numeric, so that a runtime can check it is not root (e.g. Kubernetes' runAsNonRoot).
ARG APP_UID=10001
USER ${APP_UID}:${APP_UID}
WORKDIR /tmp
ENTRYPOINT ["vae-train"]
CMD ["train", "--preset=compact", "--data-dir=/data", "--model-repository=/models", "--run-dir=/tmp/run", "--no-progress"]

# ---------------------------------------------------------------------------------------------
# The default target (a build with no --target) is the serving image. The legacy builder
# builds every stage above for it, torch included: give it --target serve (Compose does).
FROM serve
