# syntax=docker/dockerfile:1
#
# The one image of every target (`ehr serve --target gateway|patient-record|…`), used by the Helm
# chart in helm/ehr. Build from the repository root:
#
#   docker build -t ehr:0.1.0 .
#
# Stages: cargo-chef computes a recipe of the dependencies from the manifests and Cargo.lock, and
# the dependencies are compiled in a layer of their own that is reused until a manifest or the
# lock file changes; then the workspace is compiled. The final image is distroless (glibc,
# libgcc, CA certificates, no shell, no package manager) and runs as uid/gid 65532. The binary
# needs nothing else: SQLite is compiled in, and there is no TLS library (TLS terminates in front
# of the gateway). See docs/operations/kubernetes.md, "The image".

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.78

FROM rust:${RUST_VERSION}-bookworm AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /build
# The same release profile for the dependency layer and the final build; symbols stripped.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
# Dependencies only (the cached layer).
RUN cargo chef cook --release --locked --bin ehr --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin ehr \
 && install -D -m 0755 target/release/ehr /out/ehr

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="ehr" \
      org.opencontainers.image.description="Reference implementation of the MHLW standard specification for cloud-native hospital EHRs" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/ehr /usr/local/bin/ehr
# 65532 is distroless's `nonroot`; the Helm chart runs the pods with the same ids. Its home is
# the working directory, so that `ehr serve` (target all) can create ./data when run by hand.
USER 65532:65532
WORKDIR /home/nonroot
# HTTP (`listen`), MLLP for lab results (`lab.listen`), metrics (`telemetry.metrics_listen`).
EXPOSE 8080 2575 9464
ENTRYPOINT ["/usr/local/bin/ehr"]
CMD ["serve"]
