# notifier API / worker image. PostgreSQL and Redis are external: set NOTIFIER_DATABASE_URL and
# NOTIFIER_REDIS_URL. Run `notifier migrate` once per release, then any number of
# `notifier serve` and `notifier worker` containers (one worker per core is a good start).
# serve/worker refuse to start without NOTIFIER_WEBHOOK_SECRET, NOTIFIER_LINK_SECRET and
# NOTIFIER_PUBLIC_URL (see README, "Quick start"); provider accounts are configured per channel.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    NOTIFIER_HOST=0.0.0.0 NOTIFIER_PORT=8080

WORKDIR /app
COPY pyproject.toml README.md ./
COPY notifier ./notifier
COPY schemas ./schemas
RUN pip install --no-cache-dir -e . \
 && useradd --system --no-create-home --uid 10001 notifier

USER notifier
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,os; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('NOTIFIER_PORT','8080'))"
ENTRYPOINT ["notifier"]
CMD ["serve"]
