# healthgate image: a static-enough release binary on distroless/cc, running as non-root.
#   docker build -t healthgate:0.1.0 .
# Without Docker Hub or gcr.io, scripts/image.sh builds the same layout FROM scratch (README,
# "Install on a cluster"; tests/image.rs checks that the two agree).
FROM rust:1.94-bookworm AS build
WORKDIR /src
# Dependencies first, so a source edit does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin && echo 'fn main() {}' > src/main.rs && echo 'fn main() {}' > src/bin/crdgen.rs \
    && touch src/lib.rs && cargo build --release --locked --bin healthgate && rm -rf src
COPY src ./src
COPY migrations ./migrations
COPY crds ./crds
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin healthgate

# distroless/cc has glibc and CA certificates and nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/healthgate /usr/local/bin/healthgate
# nonroot = 65532:65532, the UID the manifests' securityContext pins.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/healthgate"]
CMD ["serve"]
