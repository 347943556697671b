# syntax=docker/dockerfile:1
# Static (musl) release binary in a distroless, non-root image with no shell.
FROM rust:1.95-alpine AS build
# make: jemalloc (the operator's allocator) is built from source.
RUN apk add --no-cache musl-dev make
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# .cargo/config.toml sets the allocator's compiled-in defaults.
COPY .cargo ./.cargo
COPY src ./src
COPY crds ./crds
COPY tests/testkit ./tests/testkit
RUN cargo build --release --locked --bin pipedream-secrets-operator \
 && strip target/release/pipedream-secrets-operator

# The release binary alone, as the release publishes it:
#   docker buildx build --target binary --output type=local,dest=dist .
FROM scratch AS binary
ARG TARGETARCH
COPY --from=build /src/target/release/pipedream-secrets-operator /pipedream-secrets-operator-linux-${TARGETARCH}

FROM gcr.io/distroless/static-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="pipedream-secrets-operator" \
      org.opencontainers.image.description="Keeps Pipedream connected-account credentials fresh in Kubernetes Secrets" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
# Metrics (8080) and the probes (8081).
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/pipedream-secrets-operator"]
CMD ["run"]

# The image from a release binary (dist/pipedream-secrets-operator-linux-<arch>, downloaded from the release or
# made by the `binary` target); the release workflow builds its images this way, so the image holds the published
# binary byte for byte:
#   docker build --target from-binary --platform linux/amd64 .
FROM runtime AS from-binary
ARG TARGETARCH
COPY dist/pipedream-secrets-operator-linux-${TARGETARCH} /usr/local/bin/pipedream-secrets-operator

# Default: built from source.
FROM runtime
COPY --from=build /src/target/release/pipedream-secrets-operator /usr/local/bin/pipedream-secrets-operator
