# One image for the API and the batch (docker-compose.yml runs both).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# libgomp: LightGBM and implicit use OpenMP.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY recsys_batch ./recsys_batch
COPY cli ./cli
COPY api ./api
# EXTRAS="[dask]" adds dask.distributed (docker-compose.yml's `dask` profile).
ARG EXTRAS=""
RUN pip install ".${EXTRAS}"
# /shared: the data location Dask workers read (scale.shared_dir); a fresh named volume
# takes this owner.
RUN useradd --create-home --uid 1000 recsys && mkdir -p /data /shared \
    && chown recsys /data /shared
USER recsys
EXPOSE 8000
CMD ["recsys", "--help"]
