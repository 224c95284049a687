# portico's container image: a static-enough Rust binary on distroless, run
# as non-root. The Helm chart (charts/portico) runs it as
# /usr/local/bin/portico, user 65532, with /metrics on port 10258; a test
# (tests/chart.rs) keeps the two in agreement. The binary is built without
# default features: no `portico demo`, so neither the demo nor the API
# stand-in it runs is linked (tests/production_build.rs checks the tree).
#
#   docker build -t ghcr.io/portico-lb/portico:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --no-default-features --bin portico

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/portico /usr/local/bin/portico
USER 65532:65532
EXPOSE 10258
ENTRYPOINT ["/usr/local/bin/portico"]
CMD ["run"]
