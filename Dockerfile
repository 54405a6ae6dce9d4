# ftfsearch as a container image: `docker build -t ftfsearch:0.1.0 .` (the tag that
# deploy/k8s/ingest-job.yaml, deploy/docker-compose.single.yml and deploy/helm/values.yaml name;
# tests/test_container.py checks that they agree with this file and with the CLI).
# Not built in ftfsearch's own CI (no container engine there): see README, "Container image".
#
# Stage 1 builds a wheel and installs it, with CPU torch pinned first as every install path does
# (an unpinned torch would pull the CUDA build, several GB), into a virtual environment.
# Stage 2 copies that environment onto a slim base and runs as a non-root user. The default model
# is package data of the wheel (ftfsearch/model/default) and its base towers are pinned packages:
# the image needs no download at run time.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/ftfsearch
ENV PATH=/opt/ftfsearch/bin:$PATH
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ftfsearch ./ftfsearch
COPY ingest ./ingest
RUN pip install ".[geo]" \
    && python -c "import ftfsearch.model.loading as m; m.load_encoder(None, device='cpu')"

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
RUN useradd --create-home --uid 10001 ftfsearch
COPY --from=build /opt/ftfsearch /opt/ftfsearch
ENV PATH=/opt/ftfsearch/bin:$PATH \
    FTF_STORE=/home/ftfsearch/store \
    FTF_DEVICE=cpu
USER ftfsearch
WORKDIR /home/ftfsearch
EXPOSE 8000
ENTRYPOINT ["ftfsearch"]
CMD ["--help"]
