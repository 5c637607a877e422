# One-shot trainer for the compose stack: the `train` extra, then `mnistops train`.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 KERAS_BACKEND=jax
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[train]"
USER 10001
CMD ["mnistops", "train"]
