FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# EXTRAS=spark: the Spark engine (pyspark, with Spark itself) and Java 17 for it; the compose `spark`
# profile runs a standalone master and worker from this image, so executors have the driver's Python
# and this package.
ARG EXTRAS=""
RUN if [ "$EXTRAS" = "spark" ]; then apt-get update && apt-get install -y --no-install-recommends \
        openjdk-17-jre-headless procps && rm -rf /var/lib/apt/lists/*; fi

WORKDIR /app
COPY pyproject.toml ./
COPY featurestore ./featurestore
COPY transforms ./transforms
COPY workers ./workers
COPY examples ./examples
RUN pip install ".${EXTRAS:+[$EXTRAS]}"

# Worker health and Prometheus metrics; the feature server (featurestore serve).
EXPOSE 9108 6566
ENTRYPOINT ["featurestore"]
CMD ["--help"]
