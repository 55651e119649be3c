FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# EXTRAS=spark: the Spark engine (pyspark, with Spark itself), Java 17 for it and the PostgreSQL JDBC
# driver (/usr/share/java/postgresql.jar, the event log's reads); pyspark pinned to SPARK_VERSION, the
# Spark of the cluster it drives (docker-compose.yml's `spark` profile: docker/spark-worker/Dockerfile).
ARG EXTRAS=""
ARG SPARK_VERSION=4.3.0
RUN if [ "$EXTRAS" = "spark" ]; then apt-get update && apt-get install -y --no-install-recommends \
        openjdk-17-jre-headless procps libpostgresql-jdbc-java && rm -rf /var/lib/apt/lists/*; fi

WORKDIR /app
COPY pyproject.toml ./
COPY featurestore ./featurestore
COPY transforms ./transforms
COPY workers ./workers
COPY examples ./examples
RUN if [ "$EXTRAS" = "spark" ]; then pip install ".[spark]" "pyspark==${SPARK_VERSION}"; \
    else pip install ".${EXTRAS:+[$EXTRAS]}"; fi

# Worker health and Prometheus metrics; the feature server (featurestore serve).
EXPOSE 9108 6566
ENTRYPOINT ["featurestore"]
CMD ["--help"]
