# The wasmjobs binary alone on a distroless base (glibc, CA certificates, no shell), run as a
# non-root user. docs/serving.md, "In a container".
#
#   docker build -t wasmjobs .
#   docker run -p 8080:8080 -v wasmjobs-data:/data wasmjobs
#
# Listening on 0.0.0.0 needs API tokens: put a wasmjobs.toml with [[tokens]] in /data.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p wasmjobs \
 && cp target/release/wasmjobs /wasmjobs \
 && mkdir /data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /wasmjobs /usr/local/bin/wasmjobs
# The working directory, where the database, the artifact cache and a wasmjobs.toml go: owned
# by the user the server runs as (the base image has no shell to chown it).
COPY --from=build --chown=nonroot:nonroot /data /data
WORKDIR /data
ENV WASMJOBS_CACHE_DIR=/data/cache \
    WASMJOBS_DB=/data/wasmjobs.db
USER nonroot
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/wasmjobs"]
CMD ["serve", "--addr", "0.0.0.0:8080"]
