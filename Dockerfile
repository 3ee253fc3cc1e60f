# vae-mnist container images (see docs/containers.md).
#
#   serve (the default, last stage): FastAPI + onnxruntime, no torch, with the embedded default
#         model; non-root, read-only-root friendly; configured only through VAE_* variables.
#           docker build -t vae-mnist:serve .
#   train: torch (CPU) and the training CLI; publishes new versions into /models.
#           docker build --target train -t vae-mnist:train .
#         TORCH_PIP_OPTIONS says where pip finds the CPU build of torch (default: PyTorch's CPU
#         wheel index). Without it pip takes the multi-GB CUDA build from the default index.
#
# Layer order: base -> pinned dependencies (change only with pyproject.toml) -> project wheel.

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

# The pinned requirements, read from pyproject.toml (the one place versions are written):
# torch alone, the rest of `train`, and `serve`. Each file is its own dependency layer.
FROM base AS requirements
WORKDIR /requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; \
p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
x = p['optional-dependencies']; \
reqs = {'serve': p['dependencies'] + x['serve'], 'train': p['dependencies'] + x['train']}; \
unpinned = [r for rs in reqs.values() for r in rs if '==' not in r]; \
assert not unpinned, f'unpinned requirements: {unpinned}'; \
torch = [r for r in reqs['train'] if r.startswith('torch==')]; \
open('torch.txt', 'w').write(''.join(r + '\n' for r in torch)); \
open('train.txt', 'w').write(''.join(r + '\n' for r in reqs['train'] if r not in torch)); \
open('serve.txt', 'w').write(''.join(r + '\n' for r in reqs['serve']))"

# The project itself as pure-Python wheels: one with only service/ (and its embedded model),
# one with only training/. Source edits rebuild these small layers, never the dependencies.
FROM base AS wheel-serve
WORKDIR /src
COPY pyproject.toml ./
COPY service/ service/
RUN pip wheel --no-deps --wheel-dir /dist .

FROM base AS wheel-train
WORKDIR /src
COPY pyproject.toml ./
COPY training/ training/
RUN pip wheel --no-deps --wheel-dir /dist .

# ---------------------------------------------------------------------------------------------
FROM base AS train
# Where pip finds torch, as pip options. The default, PyTorch's CPU index in place of the
# default index, fails at once when unreachable (an extra index would let pip fall back to
# the default index's multi-GB CUDA build). Alternatives: a mirror ("--index-url URL"), or a
# directory holding the CPU wheel ("--find-links /mnt/torch-wheels", mounted into the build
# with podman build --volume DIR:/mnt/torch-wheels:ro, or served over HTTP).
ARG TORCH_PIP_OPTIONS="--index-url https://download.pytorch.org/whl/cpu"
COPY --from=requirements /requirements/torch.txt /tmp/requirements/
RUN pip install ${TORCH_PIP_OPTIONS} -r /tmp/requirements/torch.txt
COPY --from=requirements /requirements/train.txt /tmp/requirements/
RUN pip install -r /tmp/requirements/train.txt \
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
FROM base AS serve
COPY --from=requirements /requirements/serve.txt /tmp/requirements/
# Left out, as never used by the service: the dependencies' own test suites (17 MB) and
# onnxruntime's offline model tooling (transformers/, quantization/, tools/: 9 MB).
RUN pip install -r /tmp/requirements/serve.txt \
    && find /usr/local/lib -depth -type d -path '*-packages/*/tests' -exec rm -rf {} + \
    && find /usr/local/lib -depth -type d -regex '.*-packages/onnxruntime/\(transformers\|quantization\|tools\)' -exec rm -rf {} + \
    && rm -f /usr/local/bin/onnxruntime_test \
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
