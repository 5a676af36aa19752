# syntax=docker/dockerfile:1
# One image for every Levee process; the build arg TORCH chooses what inference gets:
#   TORCH=none  web, platform worker, beat, migrate (the web tier never imports torch) — the default
#   TORCH=cpu   an inference worker on CPU (the demo checkpoint): torch's CPU-only build
#   TORCH=cuda  an inference worker on an NVIDIA GPU: torch's CUDA build from PyPI, plus Triton
# docker-compose.yml builds all three; see docs/operations.md.
FROM python:3.11-slim

ARG TORCH=none
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app/platform:/app \
    DJANGO_SETTINGS_MODULE=levee.settings \
    LEVEE_ENV=production \
    LEVEE_DATA_DIR=/var/lib/levee \
    STATIC_ROOT=/app/var/static \
    PROMETHEUS_MULTIPROC_DIR=/tmp/levee-metrics

RUN groupadd --system levee && useradd --system --gid levee --home-dir /app --shell /usr/sbin/nologin levee

WORKDIR /app

# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN set -eux; \
    case "$TORCH" in \
      none) pip install . ;; \
      cpu)  pip install --index-url "$TORCH_CPU_INDEX" "$TORCH_SPEC" && pip install . ;; \
      cuda) pip install "$TORCH_SPEC" && pip install ".[inference]" ;; \
      *) echo "TORCH must be none, cpu or cuda (got $TORCH)" >&2; exit 1 ;; \
    esac

# The code (.dockerignore keeps out the venv, local data, tests, docs and secrets).
COPY . .

# Static files are baked in and served by whitenoise. Settings demand a secret in production; this
# throwaway one exists only for this build step and is never in the image's environment.
RUN python ops/compile_messages.py \
 && SECRET_KEY=collectstatic-only-not-a-real-secret-0123456789 ALLOWED_HOSTS=localhost \
    python manage.py collectstatic --noinput -v0 \
 && mkdir -p /var/lib/levee /tmp/levee-metrics \
 && chown -R levee:levee /var/lib/levee /tmp/levee-metrics

USER levee
EXPOSE 8000
ENV LEVEE_BIND=0.0.0.0:8000
CMD ["gunicorn", "-c", "ops/gunicorn.conf.py", "levee.asgi:application"]
