#!/bin/sh
# Copies BINARY and every shared library it links (as ldd lists them) under
# ROOT, at their own paths: the whole filesystem a distroless image of it
# needs. deploy/Dockerfile's final stage and scripts/images.sh use it.
#
#   scripts/with-libs.sh ROOT BINARY
set -eu
root=$1 binary=$2
mkdir -p "$root$(dirname "$binary")"
cp -L "$binary" "$root$binary"
for lib in $(ldd "$binary" | grep -oE '/[^ ]+'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
