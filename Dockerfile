# One image for every TaskHub process; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# What a deployment needs only: requirements-dev.txt (embedded servers, playwright, ruff,
# test clients) never enters the image.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# Static files are collected at build time and served by ServeStatic. The throwaway key
# file keeps the build from baking a development key into the image.
RUN DEBUG=1 SECRET_KEY_FILE=/tmp/build-secret-key python manage.py collectstatic --noinput \
    && rm -f /tmp/build-secret-key

RUN useradd --system --uid 1000 taskhub \
    && mkdir -p /app/.data /var/lib/taskhub/prometheus \
    && chown taskhub /app/.data /var/lib/taskhub/prometheus
USER taskhub
EXPOSE 8000 50051
# Daphne through TaskHub's entry point (taskhub/daphne_server.py), as docker-compose.yml.
CMD ["sh", "-c", "exec python -m taskhub.daphne_server -b 0.0.0.0 -p ${PORT:-8000} taskhub.asgi:application"]
