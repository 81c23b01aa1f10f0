#!/usr/bin/env bash
# The QEMU side of tern's comparison with virtual machines (BENCHMARKS.md,
# "tern next to QEMU"): the same workload as the migration benchmark's app,
# 64 MiB written at 1 % and 10 % of its pages per 10 ms, in a small Linux
# guest moved between two QEMU processes on loopback by pre-copy and by
# post-copy. Usage: bench/qemu/run.sh [compare.py flags, e.g. --runs 5]
#
# Needs Debian's qemu-system-x86, cpio and gcc (installed when missing), and
# fetches Debian's kernel package once into $TERN_QEMU_CACHE (default
# ~/.cache/tern-qemu); the guest's whole user space is dirty.c, static.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${TERN_QEMU_CACHE:-$HOME/.cache/tern-qemu}"
mkdir -p "$cache"

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v cpio >/dev/null || missing+=(cpio)
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The kernel: Debian's, unpacked from its package (not installed).
kernel="$(ls "$cache"/boot/vmlinuz-* 2>/dev/null | head -n1 || true)"
if [ -z "$kernel" ]; then
  (
    cd "$cache"
    apt-get download linux-image-amd64 >/dev/null
    dep="$(dpkg-deb -f linux-image-amd64_*.deb Depends | sed -E 's/ .*//')"
    apt-get download "$dep" >/dev/null
    dpkg-deb -x "$dep"_*.deb .
  )
  kernel="$(ls "$cache"/boot/vmlinuz-* | head -n1)"
fi

# The guest's init, and an initramfs holding only it.
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
gcc -static -O2 -Wall -Werror -o "$root/init" "$here/dirty.c"
(cd "$root" && echo init | cpio -o -H newc --quiet > "$cache/dirty.cpio")

exec python3 "$here/compare.py" --kernel "$kernel" --initrd "$cache/dirty.cpio" "$@"
