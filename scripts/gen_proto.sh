#!/usr/bin/env bash
# Regenerate the gRPC code from protos/ (the source of truth):
#   - betterproto messages, grpclib client stub and server base  (signingkeys/v1/__init__.py)
#   - protobuf descriptors (signingkeys/v1/signing_keys_pb2.py, with its .pyi), which server
#     reflection needs and the strict codec validates requests with
#
# Usage: scripts/gen_proto.sh [OUT_DIR]    (default: service/grpc/generated)
# Only OUT_DIR/__init__.py and OUT_DIR/signingkeys/ are replaced; nothing else is touched.
# Runs from any directory; uses the project's .venv (grpcio-tools, betterproto[compiler]).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/service/grpc/generated}"
venv_bin="${VENV_BIN:-$root/.venv/bin}"

if [[ ! -x "$venv_bin/protoc-gen-python_betterproto" ]]; then
    echo "gen_proto: $venv_bin/protoc-gen-python_betterproto is missing;" \
        "install the dev extras (pip install -e '.[dev]')" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# protoc finds its plugins (protoc-gen-python_betterproto) on PATH only.
(
    cd "$root/protos"
    PATH="$venv_bin:$PATH" "$venv_bin/python" -m grpc_tools.protoc \
        -I . \
        --python_betterproto_out="$work" \
        --python_out="$work" \
        --pyi_out="$work" \
        signingkeys/v1/signing_keys.proto 2> >(grep -v "^Writing " >&2)
)

mkdir -p "$out"
rm -rf "$out/signingkeys"
cp -R "$work/signingkeys" "$out/signingkeys"
cp "$work/__init__.py" "$out/__init__.py"
