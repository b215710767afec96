#!/usr/bin/env bash
# Debian's Chromium for the console's browser tests and benchmark: installed with apt-get when
# missing (like scripts/stack.sh installs its servers), never a browser build downloaded by a test
# tool (`playwright install` cannot work here: there is no internet but the package registries).
#
# Usage: bash scripts/browser.sh     # prints the browser's path; exit 1 with the reason if it cannot be had
# Environment: FLOWWATCH_CHROMIUM [/usr/bin/chromium]   FLOWWATCH_CACHE [$HOME/.cache/flowwatch] (apt log)
set -euo pipefail

BROWSER="${FLOWWATCH_CHROMIUM:-/usr/bin/chromium}"
LOG_DIR="${FLOWWATCH_CACHE:-$HOME/.cache/flowwatch}"

if [[ -x "$BROWSER" ]]; then
  echo "$BROWSER"
  exit 0
fi
if [[ "$BROWSER" != /usr/bin/chromium ]]; then
  echo "browser: FLOWWATCH_CHROMIUM=$BROWSER is not an executable" >&2
  exit 1
fi

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"; else
    echo "browser: installing chromium needs root (or password-less sudo): apt-get install chromium" >&2
    return 1
  fi
}

mkdir -p "$LOG_DIR"
log="$LOG_DIR/apt-chromium.log"
echo "browser: installing Debian's chromium (first run only; a minute or two)" >&2
export DEBIAN_FRONTEND=noninteractive
# Fonts: without one, screenshots show boxes instead of text.
pkgs=(chromium fonts-dejavu-core)
if ! as_root apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"$log" 2>&1; then
  as_root apt-get update -q >>"$log" 2>&1 || true
  if ! as_root apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$log" 2>&1; then
    tail -n 20 "$log" >&2 || true
    echo "browser: apt-get install ${pkgs[*]} failed (full log: $log)" >&2
    exit 1
  fi
fi
[[ -x "$BROWSER" ]] || { echo "browser: $BROWSER still missing after the install (log: $log)" >&2; exit 1; }
echo "$BROWSER"
