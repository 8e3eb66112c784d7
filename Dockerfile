# LayerSync Studio for GPU machines: the web app (`layersync serve`) and its training workers.
#
#   docker build -t layersync-studio .
#   docker run -d --gpus all -p 8000:8000 -v layersync-data:/data -e LAYERSYNC_TOKEN=... layersync-studio
#
# Base: the official PyTorch runtime image, torch 2.9.1 built for CUDA 12.8 with cuDNN 9 (Ubuntu, `python` on
# PATH, no curl: hence a Python healthcheck). Why this tag: a CUDA build that satisfies pyproject's torch>=2.4;
# CUDA 12.8 runs on Volta through Blackwell (RTX 50xx, B200), with an NVIDIA driver >= 570 (525+ through CUDA's
# minor-version compatibility); the runtime variant has no compiler or CUDA toolkit, several GB smaller than
# -devel, and nothing here compiles CUDA code. Pinned, never `latest`: a rebuild must not change torch under runs.
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LAYERSYNC_DATA_DIR=/data

# tini as PID 1: reaps processes orphaned by a killed worker (the server does not, and a zombie pid looks alive)
# and forwards SIGTERM to the server on `docker stop`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

# The source tree stays here: the app finds templates/ and static/ at the repository root, next to app/
# (app/routes/pages.py: Path(__file__).parents[2]), which an editable install from this tree keeps true.
WORKDIR /opt/layersync
COPY pyproject.toml README.md ./
COPY app ./app
COPY trainer ./trainer
COPY templates ./templates
COPY static ./static
COPY examples ./examples
COPY tests ./tests
COPY docker ./docker

# Installed as CI installs it (.ci/run: pip install torch==2.13.0 -e '.[test]'), minus the CPU torch pin: the
# base image's CUDA torch is kept by a constraint on its exact version, so pip fails rather than replace it,
# and the build fails if torch is no longer a CUDA build afterwards.
RUN python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > /tmp/torch-constraint.txt \
 && pip install --no-cache-dir -c /tmp/torch-constraint.txt -e '.[test]' \
 && python -c "import torch; assert torch.version.cuda, 'pip replaced the CUDA build of torch'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" \
 && rm /tmp/torch-constraint.txt

# A non-root user owns the data volume (uid 1000: chown a host directory to it before bind-mounting one).
# The source tree stays root-owned and read-only to it.
RUN if id -u 1000 >/dev/null 2>&1; then userdel --remove "$(id -nu 1000)"; fi \
 && useradd --create-home --uid 1000 --shell /bin/bash layersync \
 && mkdir -p /data \
 && chown layersync:layersync /data
VOLUME /data
USER layersync
# relative paths (`layersync train`'s default layersync-runs/) land in the volume
WORKDIR /data

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "/opt/layersync/docker/healthcheck.py", "http://127.0.0.1:8000/api/health"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["layersync", "serve", "--host", "0.0.0.0", "--port", "8000"]
