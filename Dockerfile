# syntax=docker/dockerfile:1
#
# lease-sync container image.
#
#   docker build -t ghcr.io/lease-sync/lease-sync:0.1.0 \
#     --build-arg VERSION=0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#
# Four stages: chef (Rust + cargo-chef) → planner (recipe.json: the dependency graph only) →
# builder (cooks the dependencies from the recipe, a layer that stays cached until Cargo.toml
# or Cargo.lock changes, then builds lease-sync itself) → runtime.
# tests/manifests.rs checks the essentials of this file; docs/DEPLOY.md has the lint result.

# Rust pinned to the toolchain the project is developed and tested with (rust-version in
# Cargo.toml is the floor, 1.88). Bookworm, so the binary's glibc matches the runtime's.
FROM rust:1.95-slim-bookworm AS chef
# Pinned so a new cargo-chef cannot change the recipe format under a cached layer.
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
# The whole tree: cargo loads the whole workspace (lease-sync, crates/*, bench/), so every
# member's manifest and sources must be in the context (tests/manifests.rs checks .dockerignore).
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is reused while recipe.json (Cargo.toml, Cargo.lock) is unchanged.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin lease-sync
COPY . .
RUN cargo build --release --locked --bin lease-sync

# Runtime: distroless/cc rather than debian:bookworm-slim. It holds what a Rust binary linked
# against glibc needs (glibc, libgcc_s), the CA bundle (/etc/ssl/certs) and tzdata, and nothing
# else: no shell, no package manager, so nothing to patch with apt and less to exploit. The
# HEALTHCHECK below runs the binary itself in exec form, so no shell is needed. For a shell while
# debugging, use `kubectl debug` with an ephemeral container, or the `:debug-nonroot` variant.
# On TLS: lease-sync's HTTP client (reqwest with rustls) trusts the Mozilla roots compiled into
# the binary (webpki-roots), which covers OpenApp's public certificate; the image's CA bundle is
# there for anything that reads the system store.
# Pin by digest (gcr.io/distroless/cc-debian12:nonroot@sha256:…) in the release pipeline.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/lease-sync/lease-sync

LABEL org.opencontainers.image.title="lease-sync" \
      org.opencontainers.image.description="Keeps residents of shared apartment buildings in sync with OpenApp building users, driven by signed lease webhooks." \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"

COPY --from=builder /src/target/release/lease-sync /usr/local/bin/lease-sync
# Every key with its default, for reference; the real config is mounted at
# /etc/lease-sync/config.toml (compose: a bind mount; Kubernetes: the ConfigMap).
COPY deploy/config.example.toml /etc/lease-sync/config.example.toml

# Numeric, so Kubernetes can verify runAsNonRoot without an /etc/passwd entry; the same uid and
# gid as runAsUser/fsGroup in deploy/kubernetes and user: in deploy/compose.yaml.
USER 10001:10001

# 8080: webhooks (POST /webhooks/{source}, /healthz, /readyz).
# 9090: admin listener (/metrics, /healthz, /readyz unauthenticated; /admin/... needs a token).
#       It must listen on 0.0.0.0:9090 in the config to be reachable from outside the container.
EXPOSE 8080 9090

# Ready = Redis answers and, in a process with workers, they run. Probes the admin listener
# from the config (the webhook listener when admin is disabled); reads no secret files. The
# start period covers connecting to Redis and starting the workers.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/lease-sync", "healthcheck", "--config", "/etc/lease-sync/config.toml", "--timeout-ms", "3000"]

ENTRYPOINT ["/usr/local/bin/lease-sync"]
CMD ["serve", "--config", "/etc/lease-sync/config.toml"]
