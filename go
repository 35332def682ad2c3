#!/usr/bin/env bash
# fedbackdoor's one entry point on a fresh machine: sets up on first use, then runs.
#
#   ./go run [HYDRA_OVERRIDES ...]   run a simulation (no arguments: the default study)
#   ./go test [PYTEST_ARGS ...]      run the test suite
#   ./go setup                       only install
#
# Set-up (once, and again whenever pyproject.toml or requirements/ change):
#   1. Debian's dataset-fashion-mnist package (the embedded default dataset), where apt exists;
#   2. a virtual environment in .venv (FEDBACKDOOR_VENV overrides) with Python >= 3.11;
#   3. torch 2.14.1 with torchvision 0.29.1 (only this pair imports together here);
#   4. flwr 1.42.0's requirements from requirements/flwr-1.42.0.txt, then flwr itself with
#      --no-deps: flwr 1.42.0 asks for a certifi release newer than the package index has,
#      so a plain `pip install "flwr[simulation]==1.42.0"` cannot resolve;
#   5. this package, editable, with its test tools.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV=${FEDBACKDOOR_VENV:-.venv}
PYTHON=${PYTHON:-python3}
FMNIST_DIR=/usr/share/datasets/fashion-mnist

say() { printf '[go] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

install_dataset() {
  [ -d "$FMNIST_DIR" ] && return 0
  if command -v apt-get >/dev/null; then
    say "installing Debian package dataset-fashion-mnist"
    if as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq dataset-fashion-mnist >/dev/null; then
      return 0
    fi
  fi
  say "could not install dataset-fashion-mnist; Fashion-MNIST will be read from dataset.data_dir" \
      "or downloaded where there is internet"
}

make_venv() {
  [ -x "$VENV/bin/python" ] && return 0
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' 2>/dev/null || {
    say "fedbackdoor needs Python >= 3.11; set PYTHON=/path/to/python3.11"; exit 1; }
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    # Debian splits venv out of the interpreter package.
    rm -rf "$VENV"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    "$PYTHON" -m venv "$VENV"
  fi
}

setup() {
  local stamp="$VENV/.fedbackdoor-setup" want
  want=$(cat pyproject.toml requirements/*.txt | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  install_dataset
  make_venv
  local pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  say "installing into $VENV (first use takes a few minutes)"
  "${pip[@]}" "torch==2.14.1" "torchvision==0.29.1"
  "${pip[@]}" -r requirements/flwr-1.42.0.txt
  "${pip[@]}" --no-deps "flwr==1.42.0"
  "${pip[@]}" -e ".[test]"
  echo "$want" >"$stamp"
}

command=${1:-help}
[ $# -gt 0 ] && shift
case "$command" in
  setup) setup ;;
  run) setup; exec "$VENV/bin/fedbackdoor" run "$@" ;;
  test)
    setup
    # Tests must not phone home (telemetry, update checks); users' own runs keep Flower's defaults.
    export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
    exec "$VENV/bin/python" -m pytest "$@" ;;
  *) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; [ "$command" = help ] || exit 2 ;;
esac
