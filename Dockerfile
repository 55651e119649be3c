FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml ./
COPY featurestore ./featurestore
COPY transforms ./transforms
COPY workers ./workers
COPY examples ./examples
RUN pip install .

# Worker health and Prometheus metrics; the feature server (featurestore serve).
EXPOSE 9108 6566
ENTRYPOINT ["featurestore"]
CMD ["--help"]
