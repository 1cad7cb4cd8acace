#!/usr/bin/env bash
# Builds rekey's Beam worker: the cgo worker binary, and the worker image.
#
#   jobs/worker/build.sh binary [OUT]     cgo build on this Linux host (default OUT: dist/rekey-worker)
#   jobs/worker/build.sh image TAG        docker build of the worker image, and dist/rekey-worker
#                                         exported from the same build (the pair to deploy together)
#   jobs/worker/build.sh check FILE       check that FILE can serve as a worker binary
#
# Why: Beam's Go SDK, given no --worker_binary, cross-compiles the launching
# program with CGO_ENABLED=0 for linux/amd64. rekey needs cgo (crypto11 loads
# the PKCS#11 module with dlopen), so that build fails. Pass the binary made
# here instead:  rekey run --worker_binary=dist/rekey-worker ...
#
# Environment: GOARCH (default: this host's), BEAM_VERSION, GO_IMAGE,
# HSM_CLIENT (softhsm|vendor), VENDOR_MODULE, DOCKER (default docker).
set -euo pipefail
cd "$(dirname "$0")/../.."

# The glibc of the Beam Go SDK image (distroless, Debian 12). A binary that
# needs newer symbols does not start in that image.
IMAGE_GLIBC=2.36

die() { echo "build.sh: $*" >&2; exit 1; }

check() {
  local bin=$1
  [ -f "$bin" ] || die "$bin: no such file"
  command -v go >/dev/null || die "go is needed to inspect $bin"
  local info
  info=$(go version -m "$bin") || die "$bin is not a Go binary"
  grep -q $'\tbuild\tCGO_ENABLED=1' <<<"$info" || die "$bin was built with CGO_ENABLED=0: it cannot load a PKCS#11 module"
  grep -q $'\tbuild\tGOOS=linux' <<<"$info" || die "$bin is not a linux binary (Beam workers run linux)"
  grep -q $'\tpath\trekey/jobs/rekey' <<<"$info" || die "$bin is not built from ./jobs/rekey"
  local arch
  arch=$(sed -n 's/^\tbuild\tGOARCH=//p' <<<"$info")
  if command -v objdump >/dev/null; then
    local need
    need=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
    if [ -n "$need" ] && [ "$(printf '%s\n%s\n' "$need" "$IMAGE_GLIBC" | sort -V | tail -1)" != "$IMAGE_GLIBC" ]; then
      die "$bin needs glibc $need, the worker image has $IMAGE_GLIBC: build it with 'build.sh image' (Debian 12 build stage) or on a Debian 12 host"
    fi
    echo "$bin: linux/$arch, cgo, needs glibc ${need:-?} (image has $IMAGE_GLIBC): ok"
  else
    echo "$bin: linux/$arch, cgo: ok (objdump missing: glibc version not checked)"
  fi
}

binary() {
  local out=${1:-dist/rekey-worker}
  [ "$(uname -s)" = Linux ] || die "a cgo worker binary is built on Linux (or use 'build.sh image', which builds in Docker)"
  command -v go >/dev/null || die "go is required"
  command -v "${CC:-gcc}" >/dev/null || die "a C compiler (${CC:-gcc}) is required for cgo (apt-get install gcc)"
  mkdir -p "$(dirname "$out")"
  CGO_ENABLED=1 GOOS=linux GOARCH="${GOARCH:-$(go env GOARCH)}" go build -trimpath -o "$out" ./jobs/rekey
  check "$out"
}

image() {
  local tag=${1:-}
  [ -n "$tag" ] || die "usage: build.sh image REGISTRY/rekey-worker:TAG"
  local docker=${DOCKER:-docker}
  command -v "$docker" >/dev/null || die "$docker is not installed"
  "$docker" info >/dev/null 2>&1 || die "cannot reach the Docker daemon ($docker info fails)"
  local args=(--build-arg "BEAM_VERSION=${BEAM_VERSION:-2.77.0}" --build-arg "HSM_CLIENT=${HSM_CLIENT:-softhsm}")
  [ -n "${GO_IMAGE:-}" ] && args+=(--build-arg "GO_IMAGE=$GO_IMAGE")
  [ -n "${VENDOR_MODULE:-}" ] && args+=(--build-arg "VENDOR_MODULE=$VENDOR_MODULE")
  export DOCKER_BUILDKIT=1
  "$docker" build -f jobs/worker/Dockerfile "${args[@]}" -t "$tag" .
  "$docker" build -f jobs/worker/Dockerfile "${args[@]}" --target bin --output type=local,dest=dist .
  check dist/rekey-worker
  # The module and its libraries load in the final image (SoftHSM: its tool
  # links the same libraries as the module).
  if [ "${HSM_CLIENT:-softhsm}" = softhsm ]; then
    "$docker" run --rm --entrypoint /usr/bin/softhsm2-util "$tag" --version >/dev/null ||
      die "softhsm2-util does not start in $tag: a shared library is missing"
  fi
  "$docker" run --rm --entrypoint /usr/local/bin/rekey "$tag" version >/dev/null ||
    die "rekey does not start in $tag"
  echo "image $tag and dist/rekey-worker are ready: deploy them together"
}

case "${1:-}" in
  binary) shift; binary "$@" ;;
  image) shift; image "$@" ;;
  check) shift; check "${1:?usage: build.sh check FILE}" ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
