#!/usr/bin/env bash
# Builds the local Docker image presence-redis:local from the installed
# redis-server and the libraries it links (no image registry is needed).
set -euo pipefail
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/tmp"
cp "$(command -v redis-server)" "$root/usr/bin/redis-server"
for lib in $(ldd "$(command -v redis-server)" | grep -oE '/[^ ]+'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
tar -C "$root" -c . | docker import -c 'ENTRYPOINT ["/usr/bin/redis-server"]' - presence-redis:local >/dev/null
echo "built presence-redis:local"
