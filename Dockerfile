# One image for the web app and the GPU workers (docker-compose.yml picks the command).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FEDVLA_DATA_DIR=/data \
    HF_HOME=/data/huggingface

# ffmpeg: LeRobot datasets store camera frames as video.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY app app
COPY worker worker
COPY migrations migrations
COPY templates templates
COPY static static
# Editable, so that migrations/, templates/ and static/ are found beside the code.
RUN pip install -e .

RUN useradd --create-home --uid 1000 fedvla \
    && mkdir -p /data/runs /data/huggingface && chown -R fedvla /data
USER fedvla
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/api/v1/health', timeout=5)"]

CMD ["fedvla", "serve", "--host", "0.0.0.0", "--port", "8080", "--no-worker"]
