# ghostwire-relay as a container: built with cargo, run from a minimal distroless image as a
# non-root user, with nothing in it but the binary (no shell, no package manager).
#
#   docker build -t ghostwire-relay .
#   docker run -p 8765:8765 -p 9765:9765 ghostwire-relay
#
# Without a Docker engine, scripts/build-release.sh builds the same binary the same way (the
# tests check that both run the same command).

# ---- build ------------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
# librdkafka (the Kafka upstream's client, which the rdkafka crate builds from source) needs a C
# and C++ toolchain, make and OpenSSL's headers. Not pinned: Debian's security updates move them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Manifests first, so the dependency layer is cached across source edits.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY shared/Cargo.toml shared/Cargo.toml
COPY relay/Cargo.toml relay/Cargo.toml
COPY client/Cargo.toml client/Cargo.toml
COPY tests/Cargo.toml tests/Cargo.toml
COPY bench/Cargo.toml bench/Cargo.toml
COPY shared/src shared/src
COPY relay/src relay/src
COPY relay/build.rs relay/build.rs
COPY client/src client/src
COPY tests/src tests/src
COPY bench/src bench/src
# The commit on /metrics (ghostwire_build_info); the build context has no .git, so pass it:
#   docker build --build-arg GHOSTWIRE_COMMIT="$(git rev-parse --short=12 HEAD)" .
ARG GHOSTWIRE_COMMIT=unknown
RUN cargo build --locked --release -p ghostwire-relay \
    && cp target/release/ghostwire-relay /ghostwire-relay

# ---- run --------------------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /ghostwire-relay /usr/local/bin/ghostwire-relay
# Listen on all interfaces inside the container; the admin port is for probes and scrapers only.
ENV GHOSTWIRE_LISTEN=0.0.0.0:8765 \
    GHOSTWIRE_ADMIN_LISTEN=0.0.0.0:9765
EXPOSE 8765 9765
# The distroless "nonroot" user, numerically, so hosts and runAsNonRoot can check it.
USER 65532:65532
# No shell or curl in the image: the relay binary is its own probe (GET /healthz on the admin port).
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/ghostwire-relay", "--probe"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ghostwire-relay"]
