#!/usr/bin/env bash
# Build the edge-gateway container image with podman from deploy/Containerfile.
#
#   deploy/build-image.sh [--tag IMAGE] [--platform linux/amd64|linux/arm64] [--ref GITREF]
#                         [-- PODMAN-BUILD-OPTIONS...]   (e.g. -- --no-cache)
#
# The Containerfile is plain and builds anywhere:
#   podman build --format docker -f deploy/Containerfile .
# This script adds only what a host without registry access behind a TLS-intercepting proxy
# needs, and only when it needs it, so none of it ends up in the Containerfile:
#   * no registry to pull debian:bookworm-slim from: make it from Debian's packages with
#     debootstrap and tag it under the name the Containerfile uses (host architecture only);
#   * a TLS-intercepting proxy whose CA only this host trusts (anything in
#     /usr/local/share/ca-certificates): pip in the build gets the host's CA bundle through a
#     pip.conf (`cert = ...`) in a folder mounted over /root during RUN steps. Mounting the CA
#     folder at /usr/local/share/ca-certificates instead would also work, but then the
#     ca-certificates package's postinst adds the proxy CA to the image's trust store and the
#     image ships it; mounting over paths the base lacks leaves empty mount points behind.
#     HOST_CA_BUNDLE=FILE picks another bundle, HOST_CA_BUNDLE= turns this off;
#   * the host refuses the default runtime or raising resource limits: a containers.conf with
#     runc and fixed ulimits (only if CONTAINERS_CONF is unset and a probe container fails).
# The build context is the work tree without what git ignores (.venv, caches), or with
# --ref the committed tree `git archive REF`: the developer's .venv never reaches the build.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
tag=localhost/edge-gateway:latest
platform=
ref=
base=docker.io/library/debian:bookworm-slim
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  host_ca_bundle=${HOST_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
else
  host_ca_bundle=${HOST_CA_BUNDLE-}
fi

usage() { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --platform) platform=$2; shift 2 ;;
    --ref) ref=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "build-image.sh: unknown argument $1" >&2; usage 2 >&2 ;;
  esac
done

command -v podman >/dev/null || {
  echo "build-image.sh: podman is missing (apt-get install podman buildah); with Docker use" \
       "'docker buildx build -f deploy/Containerfile .' (see deploy/README.md)" >&2
  exit 1
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# -- runtime: keep the host's configuration unless a container cannot start with it -------------
probe() { podman run --rm --network none "$base" true >/dev/null 2>&1; }

# -- base image ----------------------------------------------------------------------------------
host_arch=$(podman info --format '{{.Host.Arch}}')
want_arch=${platform#*/}
want_arch=${want_arch%%/*}
if ! podman image exists "$base" && ! podman pull ${platform:+--platform "$platform"} "$base" \
    >/dev/null 2>&1; then
  if [ -n "$want_arch" ] && [ "$want_arch" != "$host_arch" ]; then
    echo "build-image.sh: cannot pull $base for $platform and a local base is only made for" \
         "this host's architecture ($host_arch); build on a $want_arch machine" >&2
    exit 1
  fi
  command -v debootstrap >/dev/null || {
    echo "build-image.sh: $base cannot be pulled and debootstrap is missing" \
         "(apt-get install debootstrap)" >&2
    exit 1
  }
  echo "build-image.sh: $base cannot be pulled: making it with debootstrap from $mirror"
  rootfs=$work/rootfs
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    exit 1
  }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import - localhost/debian:bookworm-slim >/dev/null
  podman tag localhost/debian:bookworm-slim "$base"
  rm -rf "$rootfs"
fi

if [ -z "${CONTAINERS_CONF:-}" ] && ! probe; then
  cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
  export CONTAINERS_CONF=$work/containers.conf
  probe || {
    echo "build-image.sh: podman cannot start a container here, not even with runc" >&2
    podman run --rm --network none "$base" true >&2 || true
    exit 1
  }
  echo "build-image.sh: using runc and fixed ulimits (the host's defaults cannot start containers)"
fi

# -- build context: the sources only ------------------------------------------------------------
ctx=$work/context
mkdir -p "$ctx"
if [ -n "$ref" ]; then
  git -C "$repo" archive --format=tar "$ref" | tar -C "$ctx" -xf -
  revision=$(git -C "$repo" rev-parse "$ref^{commit}")
else
  # Tracked and untracked files git does not ignore, as they are now (deleted ones left out).
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard) |
    while IFS= read -r -d '' f; do [ -e "$repo/$f" ] && printf '%s\0' "$f"; done |
    tar -C "$repo" --null -T - -cf - | tar -C "$ctx" -xf -
  revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
  [ -z "$(git -C "$repo" status --porcelain 2>/dev/null)" ] || revision="$revision-dirty"
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ctx/pyproject.toml" | head -1)

build=(podman build --format docker --file "$ctx/deploy/Containerfile" --tag "$tag"
  --label "org.opencontainers.image.version=$version"
  --label "org.opencontainers.image.revision=$revision")
[ -n "$platform" ] && build+=(--platform "$platform")
if [ -n "$host_ca_bundle" ]; then
  # /root exists in the base, so the mount leaves nothing behind; pip reads ~/.config/pip.
  mkdir -p "$work/home/.config/pip"
  cp "$host_ca_bundle" "$work/home/.config/pip/host-ca.pem"
  printf '[global]\ncert = /root/.config/pip/host-ca.pem\n' >"$work/home/.config/pip/pip.conf"
  build+=(--volume "$work/home:/root")
  echo "build-image.sh: pip in the build trusts $host_ca_bundle (this host's CAs)"
fi
build+=("$@")

echo "build-image.sh: building $tag (edge-gateway $version, $revision)"
start=$(date +%s.%N)
"${build[@]}" "$ctx"
end=$(date +%s.%N)
size=$(podman image inspect --format '{{.Size}}' "$tag")
awk -v t="$tag" -v s="$start" -v e="$end" -v b="$size" \
  'BEGIN { printf "build-image.sh: built %s in %.1f s, %.0f MB\n", t, e - s, b / 1e6 }'
