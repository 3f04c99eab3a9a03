# syntax=docker/dockerfile:1
# Minimal image; a later issue adds dependency caching, a healthcheck and OCI labels.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY deploy ./deploy
RUN cargo build --release --locked --bin lease-sync

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/lease-sync /usr/local/bin/lease-sync
COPY deploy/config.example.toml /etc/lease-sync/config.example.toml
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/lease-sync"]
CMD ["serve", "--config", "/etc/lease-sync/config.toml"]
