# syntax=docker/dockerfile:1
#
# The stock dynbulk binary in a small image, for the engines in deploy/
# (a Kubernetes Job, an AWS Batch array job, ECS tasks):
#
#   docker build -t dynbulk:0.1.0 .
#
# The image has no migrations of its own. A team bakes its TypeScript or
# JavaScript migrations in with two lines of its own Dockerfile (the image's
# WORKDIR is /app, and dynbulk looks for ./migrations):
#
#   FROM dynbulk:0.1.0
#   COPY migrations/ ./migrations/
#
# A team whose migrations are a Rust crate (`dynbulk init --rust`) builds its
# crate's binary instead and puts it in this image under the same name, so
# the ENTRYPOINT and the manifests stay as they are (deploy/README.md).
#
# Both stages use the same Debian release, so the binary finds the glibc it
# was linked against.
ARG RUST_VERSION=1.94
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src

# Dependencies first, in a layer of their own that changes only with
# Cargo.toml and Cargo.lock: the manifest is built once over stub sources
# (every target it names must exist), then the stubs and what was built from
# them are removed, leaving the compiled dependencies.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin benches \
    && echo 'fn main() {}' > src/bin/dynbulk.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/pipeline.rs \
    && echo 'fn main() {}' > benches/capacity.rs \
    && echo 'fn main() {}' > benches/join.rs \
    && cargo build --release --locked --bin dynbulk \
    && rm -rf src benches \
        target/release/dynbulk target/release/dynbulk.d \
        target/release/deps/dynbulk-* target/release/deps/libdynbulk-* \
        target/release/.fingerprint/dynbulk-*

# The sources (the reference TypeScript migration in migrations/ is compiled
# into the binary: `dynbulk init` writes it). COPY keeps the build context's
# modification times, which may be older than the stub build: touching them
# makes cargo rebuild the crate.
COPY src ./src
COPY benches ./benches
COPY migrations ./migrations
RUN find src benches -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bin dynbulk \
    && install -m 0755 target/release/dynbulk /usr/local/bin/dynbulk

FROM debian:${DEBIAN_RELEASE}-slim
# CA certificates: the DynamoDB client verifies TLS against the system's
# certificate store.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 dynbulk \
    && useradd --system --uid 10001 --gid dynbulk --home-dir /app --shell /usr/sbin/nologin dynbulk \
    && mkdir -p /app/migrations \
    && chown dynbulk:dynbulk /app

COPY --from=builder /usr/local/bin/dynbulk /usr/local/bin/dynbulk

# ./migrations is looked for here, and the default dead-letter files
# (dynbulk-dead-letter-<time>.jsonl) are written here: /app belongs to the
# runtime user. The migrations folder stays root's (read-only to dynbulk).
WORKDIR /app
USER 10001:10001

# Prometheus metrics, when the command asks for them with
# --metrics-addr 0.0.0.0:9464 (dynbulk binds to nothing unless told).
EXPOSE 9464

ENTRYPOINT ["dynbulk"]
CMD ["--help"]
