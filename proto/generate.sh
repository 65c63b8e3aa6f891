#!/bin/sh
# Regenerate proto/celltap_pb2.py and proto/celltap_pb2_grpc.py from proto/celltap.proto.
# Run from anywhere: sh proto/generate.sh   (needs grpcio-tools, installed with '.[dev]')
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
python=${PYTHON:-"$root/.venv/bin/python"}
[ -x "$python" ] || python=python3
cd "$root"
"$python" -m grpc_tools.protoc -I proto --python_out=proto --grpc_python_out=proto --pyi_out=proto proto/celltap.proto
# protoc writes a top-level 'import celltap_pb2'; make it a package import so it imports as celltap.proto.
sed -i 's/^import celltap_pb2 as celltap__pb2$/from celltap.proto import celltap_pb2 as celltap__pb2/' proto/celltap_pb2_grpc.py
