#!/usr/bin/env bash
# The helm CLI, built once from its Go module into the flowwatch cache and reused.
#
#   bash scripts/helm.sh                 build helm if missing, print its path
#   bash scripts/helm.sh lint CHART ...  build if missing, then run helm with these arguments
#
# helm is not a Debian package here, but Go is on the machine and the Go module proxy is
# reachable, so we build the pinned release from source (CGO off, so it is a static binary).
# Everything lives under ${FLOWWATCH_CACHE:-~/.cache/flowwatch}: the binary in bin/, and a
# private Go module and build cache in go/ (removed after the build) so a cold build here is
# the same as on a fresh CI machine: about 3 minutes on 2 cores, download included. Failing to build is an error,
# never a silent skip: the chart's tests depend on it.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v4.3.1}"
CACHE="${FLOWWATCH_CACHE:-$HOME/.cache/flowwatch}"
BIN_DIR="$CACHE/bin"
HELM="$BIN_DIR/helm"
MODULE="helm.sh/helm/${HELM_VERSION%%.*}"

log() { echo "scripts/helm.sh: $*" >&2; }

installed_version() {
    [[ -x "$HELM" ]] && "$HELM" version --template '{{.Version}}' 2>/dev/null || true
}

build() {
    if ! command -v go >/dev/null 2>&1; then
        log "error: Go is not installed, and helm is built from its Go module. Install Go (>= 1.24) and re-run."
        exit 1
    fi
    mkdir -p "$BIN_DIR" "$CACHE/go"
    local tmp start
    tmp="$(mktemp -d "$CACHE/go/bin.XXXXXX")"
    start=$SECONDS
    log "building helm $HELM_VERSION from $MODULE (first time only; a few minutes on 2 cores)..."
    # -modcacherw: the module cache stays deletable with rm -rf.
    # The version ldflag is what helm's own Makefile sets, so `helm version` tells the truth.
    if ! CGO_ENABLED=0 GOFLAGS=-modcacherw GOBIN="$tmp" \
        GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" \
        go install -trimpath \
        -ldflags "-s -w -X $MODULE/internal/version.version=$HELM_VERSION" \
        "$MODULE/cmd/helm@$HELM_VERSION" >&2; then
        rm -rf "$tmp"
        log "error: could not build helm $HELM_VERSION (GOPROXY=$(go env GOPROXY)). Is the Go module proxy reachable?"
        exit 1
    fi
    mv -f "$tmp/helm" "$HELM"
    # The Go caches (~1.7 GB) are only needed to build; a new HELM_VERSION rebuilds from scratch.
    rm -rf "$CACHE/go"
    log "built $HELM ($(installed_version)) in $((SECONDS - start)) s"
}

mkdir -p "$CACHE"
# One build at a time: parallel test runs on a fresh machine wait for the first one.
exec 9>"$CACHE/.helm.lock"
flock 9
if [[ "$(installed_version)" != "$HELM_VERSION" ]]; then
    build
fi
flock -u 9

if [[ $# -eq 0 ]]; then
    echo "$HELM"
else
    exec "$HELM" "$@"
fi
