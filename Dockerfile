# tee-daemon itself, as an image (see "Running in a dstack CVM with Docker" in README.md).
#
#   docker build -t tee-daemon .                                  # FROM python:3.11-slim-bookworm
#   docker build --build-arg BASE=python@sha256:<digest> .       # pin the base you choose
#
# Offline builds: `pip wheel -w wheelhouse .` first (it also builds tee-daemon's own
# wheel); with ./wheelhouse present nothing is fetched from an index (--no-index).
# The base needs python3 (>= 3.11) with the venv module and a glibc (manylinux) libc.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
COPY . /src
RUN set -eu; \
    python3 -m venv /opt/tee-daemon; \
    pip="/opt/tee-daemon/bin/pip install --no-cache-dir --disable-pip-version-check"; \
    if ls /src/wheelhouse/tee_daemon-*.whl >/dev/null 2>&1; then \
        $pip --no-index --find-links /src/wheelhouse /src/wheelhouse/tee_daemon-*.whl; \
    else \
        $pip /src; \
    fi; \
    /opt/tee-daemon/bin/tee-daemon --version

FROM ${BASE}
COPY --from=build /opt/tee-daemon /opt/tee-daemon
ENV PATH=/opt/tee-daemon/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TEE_DAEMON_HOST=0.0.0.0 \
    TEE_DAEMON_PORT=8080 \
    TEE_DAEMON_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["tee-daemon"]
CMD ["serve"]
