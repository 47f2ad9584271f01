#!/usr/bin/env bash
# Builds keygate's OCI image FROM scratch with buildah: the keygate binary and
# exactly the shared libraries it links (as ldd resolves them on this
# machine), owned by root, run as UID/GID 65532. No shell, no package
# manager, no base image to pull. `Containerfile` is the same image built
# the usual way (a Rust builder stage, then distroless cc) where base images
# can be pulled.
#
# Usage: scripts/build-image.sh [--binary PATH] [--tag REPO:TAG] [--oci-dir DIR] [--storage DIR]
#   --binary PATH   package this binary instead of building
#                   `cargo build --release --locked -p keygate --bin keygate`
#   --tag REPO:TAG  default ghcr.io/keygate/keygate:<version in Cargo.toml>, the
#                   Helm chart's default image
#   --oci-dir DIR   also write the image to DIR as an OCI image layout
#   --storage DIR   keep buildah's images under DIR instead of its default store
# Env: STORAGE_DRIVER (buildah's own; vfs where overlay mounts are not allowed).
# Push afterwards with `buildah push REPO:TAG` (after `buildah login`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

die() { echo "build-image: $*" >&2; exit 1; }

VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
[[ -n "$VERSION" ]] || die "no version in Cargo.toml"
REPOSITORY=ghcr.io/keygate/keygate
binary="" tag="$REPOSITORY:$VERSION" oci_dir="" storage=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --oci-dir) oci_dir="$2"; shift 2 ;;
    --storage) storage=(--root "$2/root" --runroot "$2/run"); shift 2 ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
command -v buildah >/dev/null || die "buildah is not installed (Debian: apt-get install buildah)"

if [[ -z "$binary" ]]; then
  cargo build --release --locked -p keygate --bin keygate
  binary="${CARGO_TARGET_DIR:-$ROOT/target}/release/keygate"
fi
[[ -x "$binary" ]] || die "$binary is not an executable"

staging="$(mktemp -d)"
container=""
cleanup() {
  [[ -n "$container" ]] && buildah "${storage[@]}" rm "$container" >/dev/null 2>&1 || true
  rm -rf "$staging"
}
trap cleanup EXIT

install -D -m 0555 "$binary" "$staging/usr/local/bin/keygate"
# Every library the dynamic loader resolves, and the loader itself, at the
# path the binary asks for (ldd prints `name => path (addr)` or `path (addr)`);
# executable, because the kernel execs the loader.
libraries="$(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')"
[[ -n "$libraries" ]] || die "ldd found no shared libraries in $binary"
for library in $libraries; do
  install -D -m 0555 "$(readlink -f "$library")" "$staging$library"
done

revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
container="$(buildah "${storage[@]}" from scratch)"
buildah "${storage[@]}" copy --chown 0:0 "$container" "$staging" / >/dev/null
buildah "${storage[@]}" config \
  --user 65532:65532 \
  --env PATH=/usr/local/bin \
  --entrypoint '["/usr/local/bin/keygate"]' \
  --cmd serve \
  --port 50051/tcp --port 50052/tcp --port 9090/tcp \
  --label org.opencontainers.image.title=keygate \
  --label "org.opencontainers.image.description=API-key service for the Envoy / Istio data plane" \
  --label "org.opencontainers.image.version=$VERSION" \
  --label "org.opencontainers.image.revision=$revision" \
  --label org.opencontainers.image.source=https://github.com/keygate/keygate \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  "$container"
buildah "${storage[@]}" commit --quiet "$container" "$tag" >/dev/null
if [[ -n "$oci_dir" ]]; then
  rm -rf "$oci_dir"
  buildah "${storage[@]}" push --quiet "$tag" "oci:$oci_dir:$tag" >/dev/null
fi
echo "build-image: built $tag from $binary ($(echo "$libraries" | wc -w) shared libraries)"
