# One image for every Dagster process of the production topology: the gRPC code-location
# server (default command), the webserver, the daemon and the celery workers differ only by
# command, so code and dependencies can never drift between them.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/home \
    ETL_DATA_DIR=/data

WORKDIR /opt/dagster/app

# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir etl_assets && touch etl_assets/__init__.py \
    && pip install . \
    && pip uninstall -y etl_assets \
    && rm -rf etl_assets build

COPY . .
RUN pip install --no-deps . && rm -rf build

# A fixed uid so files on the shared volumes have one owner on every machine; the volume
# mount points are created here so named volumes inherit this ownership.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin dagster \
    && mkdir -p "$DAGSTER_HOME" /data /opt/dagster/storage \
    && cp dagster.yaml workspace.yaml "$DAGSTER_HOME"/ \
    && chown -R dagster:dagster "$DAGSTER_HOME" /data /opt/dagster/storage
USER dagster

VOLUME ["/data"]
EXPOSE 4000

CMD ["dagster", "api", "grpc", "-m", "etl_assets.definitions", "-h", "0.0.0.0", "-p", "4000"]
