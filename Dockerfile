# syntax=docker/dockerfile:1
# distinfer: one image for `distinfer gateway` and `distinfer node`.
#
#   docker build -t distinfer:local .                 # ONNX Runtime only (~400 MB)
#   docker build -t distinfer:local --build-arg TORCH=1 .   # + CPU torch 2.13.0 (TorchScript / torch.export models)
#
# Runs as uid 10001 and works with a read-only root filesystem (only /tmp is written).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH=0
# CPU-only wheels: the default PyPI torch for Linux pulls several GB of CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first and pinned, so that the package's own install never resolves another build of it.
RUN if [ "$TORCH" = "1" ]; then pip install --index-url "$TORCH_INDEX_URL" "torch==2.13.0"; fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway_plugin ./gateway_plugin
COPY discovery ./discovery
COPY balancer ./balancer
COPY compat ./compat
COPY worker ./worker
COPY bench ./bench
RUN if [ "$TORCH" = "1" ]; then pip install ".[torch]"; else pip install .; fi \
    # Byte-compile now: the running container cannot write next to the sources.
    && python -m compileall -q /opt/venv \
    && mkdir -p /opt/distinfer \
    && ln -s "$(python -c 'from worker.bundled import bundled_models; print(bundled_models())')" /opt/distinfer/models \
    && distinfer --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="distinfer" \
      org.opencontainers.image.description="Distributed inference gateway and Open Inference Protocol nodes" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 distinfer \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin distinfer
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/distinfer /opt/distinfer
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
WORKDIR /srv
USER 10001:10001
EXPOSE 8000 8001
ENTRYPOINT ["distinfer"]
CMD ["gateway", "--host", "0.0.0.0", "--port", "8000"]
