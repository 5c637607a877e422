# One-shot trainer for the compose stack: the locked training set (requirements/run.txt),
# then `mnistops train`.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH KERAS_BACKEND=jax HOME=/tmp
RUN python3 -m venv /opt/venv
WORKDIR /src
# The lock first, in its own layer: a change to src/ does not reinstall the dependencies.
# A CA bundle can be handed in as a build secret where a proxy re-signs TLS (deploy/Dockerfile).
COPY requirements/run.txt requirements/run.txt
RUN --mount=type=secret,id=hostca,target=/run/secrets/hostca \
    if [ -s /run/secrets/hostca ]; then export PIP_CERT=/run/secrets/hostca; fi \
    && pip install --require-hashes -r requirements/run.txt
COPY pyproject.toml README.md ./
COPY src ./src
RUN --mount=type=secret,id=hostca,target=/run/secrets/hostca \
    if [ -s /run/secrets/hostca ]; then export PIP_CERT=/run/secrets/hostca; fi \
    && pip install --no-deps .
USER 10001
CMD ["mnistops", "train"]
