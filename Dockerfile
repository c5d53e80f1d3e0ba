# The kit's image: what the Kubernetes pods (Locust master/workers, allocation consumers) run.
# Built by the Pulumi program (infra/workload_image.py) from the repository root.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Requirements first, so code changes do not reinstall every dependency.
COPY requirements.txt .
RUN pip install -r requirements.txt

# workload/, locustfiles/ and infra/: .dockerignore admits nothing else. One COPY of the
# context (rather than one per folder) builds even before locustfiles/ has its first file.
COPY . .

# The image keeps python's default user (root) on purpose: on a secure cluster the pods mount
# the chart's client key with mode 0400, owned by root, and libpq refuses a key that is readable
# by others, so a non-root user could not read it at all.
ENTRYPOINT ["python", "-m", "workload"]
CMD ["--help"]
