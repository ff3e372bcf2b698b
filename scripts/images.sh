#!/usr/bin/env bash
# Builds the local Docker images the tests run, with no image registry:
#
#   scripts/images.sh redis   presence-redis:local  the installed redis-server and the libraries it links
#   scripts/images.sh nginx   presence-nginx:local  the installed nginx and the libraries it links
#   scripts/images.sh rust    presence-rust:local   a Debian bookworm rootfs from debootstrap (gcc,
#                                                   libc6-dev, ca-certificates) with this machine's
#                                                   Rust toolchain: deploy/Dockerfile's build base
#   scripts/images.sh node    presence-node:local   deploy/Dockerfile, built on presence-rust:local
#
# debootstrap needs root and Debian's mirror; its rootfs is kept under
# target/images/ for the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

image_redis() {
  local root
  root=$(mktemp -d)
  trap 'rm -rf "$root"' RETURN
  ./scripts/with-libs.sh "$root" "$(command -v redis-server)"
  mkdir -p "$root/tmp" && chmod 1777 "$root/tmp"
  tar -C "$root" -c . | docker import -c "ENTRYPOINT [\"$(command -v redis-server)\"]" - presence-redis:local >/dev/null
  echo "built presence-redis:local"
}

image_nginx() {
  local root bin
  root=$(mktemp -d)
  trap 'rm -rf "$root"' RETURN
  bin=$( [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx || command -v nginx)
  ./scripts/with-libs.sh "$root" "$bin"
  # The paths Debian's nginx opens before it reads its configuration, and
  # the user its workers run as.
  mkdir -p "$root/etc/nginx" "$root/var/log/nginx" "$root/var/lib/nginx" "$root/run" "$root/tmp"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0::/root:/nonexistent\nnobody:x:65534:65534::/nonexistent:/nonexistent\nwww-data:x:33:33::/nonexistent:/nonexistent\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\nnobody:x:65534:\nwww-data:x:33:\n' >"$root/etc/group"
  tar -C "$root" -c . | docker import \
    -c "ENTRYPOINT [\"$bin\"]" -c 'CMD ["-g", "daemon off;"]' - presence-nginx:local >/dev/null
  echo "built presence-nginx:local"
}

image_rust() {
  local rootfs=target/images/bookworm sysroot
  if [ ! -x "$rootfs/usr/bin/gcc" ]; then
    as_root rm -rf "$rootfs"
    mkdir -p target/images
    echo "==> debootstrap bookworm (gcc, libc6-dev, ca-certificates) into $rootfs"
    as_root debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates \
      bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >target/images/debootstrap.log 2>&1 \
      || { tail -20 target/images/debootstrap.log >&2; exit 1; }
  fi
  sysroot=$(rustc --print sysroot)
  # The toolchain the project builds with (rust-toolchain pins none), without its docs.
  as_root rm -rf "$rootfs/usr/local/rust"
  as_root mkdir -p "$rootfs/usr/local/rust/bin"
  as_root cp -L "$sysroot/bin/cargo" "$sysroot/bin/rustc" "$rootfs/usr/local/rust/bin/"
  as_root cp -a "$sysroot/lib" "$rootfs/usr/local/rust/lib"
  # Trust what this machine trusts (a proxy's CA, say): the build fetches crates.
  as_root cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  as_root tar -C "$rootfs" -c . | docker import \
    -c 'ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV CARGO_HOME=/usr/local/cargo' - presence-rust:local >/dev/null
  echo "built presence-rust:local ($(rustc --version))"
}

# With IMAGES_IDLE=1 the image's build gets only the CPU that other work
# leaves: it runs in a cgroup of the least CPU weight (cgroup v1's
# cpu.shares; elsewhere at normal priority). The test command builds the
# image beside the end-to-end tests, which leave most of the two cores idle.
idle_cgroup() {
  local cg=/sys/fs/cgroup/cpu/presence-idle
  [ "${IMAGES_IDLE:-}" = 1 ] || return 0
  if [ -d /sys/fs/cgroup/cpu ] && as_root mkdir -p "$cg" 2>/dev/null \
    && echo 2 | as_root tee "$cg/cpu.shares" >/dev/null 2>&1; then
    echo "--cgroup-parent=/presence-idle"
  else
    echo "no cgroup v1 cpu controller: the image builds at normal priority" >&2
  fi
}

image_node() {
  docker image inspect presence-rust:local >/dev/null 2>&1 || image_rust
  # The build fetches crates from crates.io: on the host's network (the
  # engine here has no bridge).
  docker build --network host $(idle_cgroup) -f deploy/Dockerfile \
    --build-arg BUILD_IMAGE=presence-rust:local \
    -t presence-node:local .
}

[ $# -gt 0 ] || { sed -n '2,9p' "$0" >&2; exit 2; }
for image in "$@"; do
  case "$image" in
    redis | nginx | rust | node) "image_$image" ;;
    *) echo "unknown image: $image (redis, nginx, rust or node)" >&2; exit 2 ;;
  esac
done
