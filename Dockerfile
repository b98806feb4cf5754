# The driftrag image: the stream job (`driftrag run`), the query service (`driftrag serve`) and the CLI.
#
# CPU-only by default: torch comes from PyTorch's CPU wheel index (no CUDA libraries, ~2 GB smaller) and the
# CPU builds of FAISS and ONNX Runtime from pyproject.toml. The GPU variant (CUDA 12; needs the NVIDIA Container
# Toolkit on the host, see README "With Docker Compose"):
#   docker build --build-arg VARIANT=gpu -t driftrag:gpu .
# swaps in CUDA torch and the `gpu` extra's faiss-gpu-cu12 and onnxruntime-gpu (same modules as the CPU builds:
# never both in one environment; the extra is installed with its CUDA dependencies, the CPU builds removed, and
# the GPU builds written again over the files that removal took).
FROM python:3.11-slim

ARG VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_GPU_INDEX_URL=https://download.pytorch.org/whl/cu126

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    DRIFTRAG_CACHE_DIR=/cache/driftrag \
    DRIFTRAG_RUN__METRICS_HOST=0.0.0.0 \
    DRIFTRAG_RUN__METRICS_PORT=9108

# A fixed non-root user; /data (job and query state) and /cache (the ONNX export cache) belong to it, so named
# volumes mounted there start out writable by it.
RUN groupadd --system --gid 10001 driftrag \
    && useradd --system --uid 10001 --gid driftrag --home-dir /home/driftrag --create-home --shell /usr/sbin/nologin driftrag \
    && mkdir -p /data /cache/driftrag \
    && chown -R driftrag:driftrag /data /cache

WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY operators ./operators
COPY index ./index
COPY deploy/docker/healthcheck.py /usr/local/bin/driftrag-healthcheck

# torch first, from the variant's index, so `pip install .` finds sentence-transformers' torch satisfied.
RUN set -eux; \
    case "$VARIANT" in \
      cpu) pip install --index-url "$TORCH_INDEX_URL" torch; pip install . ;; \
      gpu) pip install --index-url "$TORCH_GPU_INDEX_URL" torch; pip install '.[gpu]'; \
           pip uninstall -y faiss-cpu onnxruntime; \
           pip install --force-reinstall --no-deps $(python -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["gpu"]))') ;; \
      *) echo "VARIANT must be cpu or gpu, got $VARIANT" >&2; exit 1 ;; \
    esac; \
    chmod 0755 /usr/local/bin/driftrag-healthcheck; \
    python -c "import streams.cli, operators.embedding, index.http"

USER driftrag:driftrag
EXPOSE 8000 9108

# The job's /healthz (DRIFTRAG_RUN__METRICS_PORT) or the query service's; the first start may export the ONNX
# model (a minute or two on a small CPU) before the endpoint is up, hence the start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 CMD ["python", "/usr/local/bin/driftrag-healthcheck"]

ENTRYPOINT ["driftrag"]
CMD ["run"]
