# One file, two slim images: `api` (front end) and `worker` (engines).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY shared ./shared
COPY voxline ./voxline

FROM base AS api
RUN pip install --no-cache-dir .
EXPOSE 8000
CMD ["voxline", "api", "--host", "0.0.0.0"]

FROM base AS worker
# Neural engines need the `model` extra: build with --build-arg EXTRAS=model.
ARG EXTRAS=""
RUN pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"
CMD ["voxline", "worker"]
