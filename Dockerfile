# notifier API / worker image. PostgreSQL and Redis are external: set NOTIFIER_DATABASE_URL and
# NOTIFIER_REDIS_URL. Run `migrate` once per release, then any number of `serve` and `worker`
# containers (deploy/compose.yaml shows the whole set). serve/worker refuse to start without
# NOTIFIER_WEBHOOK_SECRET, NOTIFIER_LINK_SECRET and NOTIFIER_PUBLIC_URL; `doctor` checks a
# deployment's settings and servers. No secret is baked in: everything comes from the environment.
#
# The base is pinned to the exact Python the test suite runs on; dependencies are the hashed lock
# of the versions the suite runs with (deploy/requirements.lock, `make lock`), installed with
# --require-hashes. The project itself is not pip-installed: it runs from /app (python -m
# notifier), so schemas/ sits where notifier/db/migrations.py looks for it.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/app \
    NOTIFIER_HOST=0.0.0.0 NOTIFIER_PORT=8080 NOTIFIER_LOG_FORMAT=json

WORKDIR /app
COPY deploy/requirements.lock ./deploy/requirements.lock
RUN pip install --no-cache-dir --no-deps --require-hashes -r deploy/requirements.lock \
 && useradd --system --no-create-home --uid 10001 notifier
COPY notifier ./notifier
COPY schemas ./schemas

USER 10001
EXPOSE 8080
# /readyz: PostgreSQL and Redis reachable (503 otherwise). Workers override this in compose
# (their /healthz on the metrics port).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('NOTIFIER_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["python", "-m", "notifier"]
CMD ["serve"]
