#!/usr/bin/env bash
# Build (or find in the cache) one guest image and print its path on the last
# line of stdout. Progress goes to stderr.
#
#   images/build.sh kernel                 -> .../kernel-<hash>/vmlinux
#   images/build.sh kernel-kvm             -> .../kernel-kvm-<hash>/vmlinux
#   images/build.sh rootfs-base            -> .../rootfs-base-<hash>/tree
#   images/build.sh rootfs ENVD_BINARY     -> .../rootfs-<hash>.ext4
#
# Every output lives in $PETREL_CACHE_DIR (default /var/cache/petrel/images),
# under a name keyed by the SHA-256 of its recipe (the files of this folder
# that it is built from), so an unchanged recipe is never built twice. Outputs
# appear atomically (built under a temporary name, then renamed).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${PETREL_CACHE_DIR:-/var/cache/petrel/images}
mkdir -p "$cache"

# The temporary build directory of this run, removed on exit whatever happens.
work=
cleanup() { [ -z "$work" ] || rm -rf "$work"; }
trap cleanup EXIT

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# Bump a recipe version when the steps below change what they build; the
# inputs named in each key (config fragment, package list, scripts) count on
# their own.
KERNEL_RECIPE=kernel-v1
ROOTFS_BASE_RECIPE=rootfs-base-v1
ROOTFS_RECIPE=rootfs-v1

# Runs a long command with its output in LOG, printing a progress line every
# 20 seconds, and shows the end of the log when it fails.
run_logged() {
    local what=$1 logfile=$2; shift 2
    local start=$SECONDS
    "$@" >"$logfile" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        sleep 2
        if (( (SECONDS - start) % 20 < 2 )); then
            log "$what: $((SECONDS - start)) s, $(wc -l <"$logfile") log lines"
        fi
    done
    if ! wait "$pid"; then
        tail -n 40 "$logfile" >&2
        die "$what failed (log: $logfile)"
    fi
    log "$what: done in $((SECONDS - start)) s"
}

# Builds one kernel variant: tinyconfig plus the given fragments (the first
# is always petrel.config), keyed by the recipe, the source version and the
# fragments' contents.
kernel_variant() {
    local name=$1; shift
    local fragments=("$@")
    local src=/usr/src/linux-source-6.12.tar.xz
    [ -f "$src" ] || die "$src missing: install linux-source-6.12 (cargo xtask setup)"
    local version
    version=$(dpkg-query -W -f='${Version}' linux-source-6.12)
    local key
    key=$(printf '%s %s\n' "$KERNEL_RECIPE" "$version" | hash_of - "${fragments[@]}")
    local out=$cache/$name-$key
    if [ -f "$out/vmlinux" ]; then
        log "$name: cached ($out)"
        echo "$out/vmlinux"; return
    fi
    log "$name: building linux $version with ${fragments[*]##*/} (about 6 minutes on 2 cores)"
    work=$(mktemp -d "$cache/.$name-build.XXXXXX")
    tar -xJf "$src" -C "$work"
    local tree=$work/linux-source-6.12
    (
        cd "$tree"
        make -s ARCH=x86_64 tinyconfig >/dev/null
        scripts/kconfig/merge_config.sh -m .config "${fragments[@]}" >/dev/null
        make -s ARCH=x86_64 olddefconfig >/dev/null
    )
    # Every option the fragments ask for must have survived olddefconfig.
    local missing=0
    while IFS= read -r line; do
        case "$line" in CONFIG_*=y) grep -qx "$line" "$tree/.config" || { log "$name: config lost $line"; missing=1; } ;; esac
    done < <(cat "${fragments[@]}")
    [ "$missing" = 0 ] || die "the config fragments ask for options the kernel does not take"
    run_logged "$name: make vmlinux" "$work/make.log" make -C "$tree" ARCH=x86_64 -j"$(nproc)" vmlinux
    mkdir -p "$work/out"
    cp "$tree/vmlinux" "$tree/.config" "$work/out/"
    rm -rf "$out"
    mv "$work/out" "$out"
    echo "$out/vmlinux"
}

# The guest kernel of every sandbox.
kernel() { kernel_variant kernel "$here/kernel/petrel.config"; }

# The outer VM's kernel for nested KVM (`cargo xtask vmtest --kvm`): the
# guest kernel plus KVM_AMD and the host-side features Petrel uses.
kernel_kvm() { kernel_variant kernel-kvm "$here/kernel/petrel.config" "$here/kernel/kvm-host.config"; }

rootfs_base_key() {
    echo "$ROOTFS_BASE_RECIPE" | hash_of - "$here/rootfs/packages" "$here/rootfs/setup-chroot.sh"
}

rootfs_base() {
    command -v debootstrap >/dev/null || die "debootstrap missing (cargo xtask setup)"
    local key out
    key=$(rootfs_base_key)
    out=$cache/rootfs-base-$key
    if [ -d "$out/tree" ]; then
        log "rootfs-base: cached ($out)"
        echo "$out/tree"; return
    fi
    work=$(mktemp -d "$cache/.rootfs-build.XXXXXX")
    local include
    include=$(grep -v '^#' "$here/rootfs/packages" | xargs | tr ' ' ',')
    # The host's own Debian mirror (xtask reads it from apt's sources).
    local mirror=${PETREL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
    log "rootfs-base: debootstrap bookworm from $mirror with $include (1-3 minutes)"
    run_logged "rootfs-base: debootstrap" "$work/debootstrap.log" \
        debootstrap --variant=minbase --include="$include" bookworm "$work/tree" "$mirror"
    cp "$here/rootfs/setup-chroot.sh" "$work/tree/setup-chroot.sh"
    chroot "$work/tree" /bin/bash /setup-chroot.sh >&2
    rm -f "$work/tree/setup-chroot.sh"
    rm -rf "$out"
    mkdir -p "$out"
    mv "$work/tree" "$out/tree"
    echo "$out/tree"
}

rootfs() {
    local envd=${1:-}
    [ -n "$envd" ] && [ -x "$envd" ] || die "usage: build.sh rootfs ENVD_BINARY"
    local base
    base=$(rootfs_base | tail -n 1)
    [ -d "$base" ] || die "rootfs-base missing"
    local key
    key=$( { echo "$ROOTFS_RECIPE"; rootfs_base_key; sha256sum <"$envd"; } | hash_of - "$here/rootfs/init")
    local out=$cache/rootfs-$key.ext4
    if [ -f "$out" ]; then
        log "rootfs: cached ($out)"
        # Its access time marks its last use (not mtime: the host agent
        # keys imported templates on it), for the pruning below.
        touch -a "$out"
        echo "$out"; return
    fi
    work=$(mktemp -d "$cache/.rootfs-image.XXXXXX")
    # Hard links make the staging copy cheap; the files we add are new inodes.
    cp -al "$base" "$work/tree"
    install -m 0755 "$envd" "$work/tree/usr/local/bin/envd"
    install -m 0755 "$here/rootfs/init" "$work/tree/sbin/petrel-init"
    log "rootfs: mkfs.ext4 (2 GiB, sparse)"
    truncate -s 2G "$work/rootfs.ext4"
    mkfs.ext4 -q -F -L petrel-root -d "$work/tree" "$work/rootfs.ext4"
    mv "$work/rootfs.ext4" "$out"
    # Keep the three last used images and any used within a day (a test
    # run or agent on another checkout may be starting from it); older ones
    # only held older envd builds.
    ls -1tu "$cache"/rootfs-*.ext4 | tail -n +4 | while read -r old; do
        if [ -n "$(find "$old" -maxdepth 0 -amin +1440)" ]; then rm -f "$old"; fi
    done
    echo "$out"
}

case "${1:-}" in
    kernel) kernel ;;
    kernel-kvm) kernel_kvm ;;
    rootfs-base) rootfs_base ;;
    rootfs) shift; rootfs "$@" ;;
    *) die "usage: build.sh kernel | kernel-kvm | rootfs-base | rootfs ENVD_BINARY" ;;
esac
