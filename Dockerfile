# The nightshift image: one statically linked binary, nothing else (no shell, no libc, no CA
# bundle: the operator trusts the cluster CA from its service-account mount).
#
# Built by `make image` (tests/image/build.sh), which first builds the binary with
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu
# and then this file with buildah. It is single-stage on purpose: the build needs no base image,
# so it works without access to a container registry.
FROM scratch

ARG VERSION=0.1.0

LABEL org.opencontainers.image.title="nightshift" \
      org.opencontainers.image.description="A Kubernetes operator for long-running background jobs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# The operator, and the worker agent that the agent injection's init container copies from
# /nightshift (`nightshift install-agent`).
COPY target/x86_64-unknown-linux-gnu/release/nightshift /nightshift

# The chart runs it as this user too (the `restricted` Pod Security level wants non-root).
USER 65532:65532

ENTRYPOINT ["/nightshift"]
CMD ["run"]
