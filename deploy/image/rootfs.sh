#!/bin/sh
# rootfs.sh BINARY DEST: lays out the container image's root file system in
# DEST (which must not exist): the agent at /l2announcer, and each shared
# library and the dynamic loader that `ldd BINARY` lists, at the path ldd
# names (symbolic links resolved, so the image holds plain files). Nothing
# else: no shell, no /etc, no certificates; the agent needs none of them
# (in-cluster it trusts the service account's ca.crt, and the kubelet mounts
# /etc/resolv.conf and /etc/hosts).
#
# The one layout step shared by deploy/image/Dockerfile (the builder stage)
# and `cargo xtask image`, so both images hold the same files.
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 BINARY DEST" >&2
    exit 2
fi
bin=$1
dest=$2
if [ -e "$dest" ]; then
    echo "$0: $dest exists; give a new directory" >&2
    exit 2
fi

# ldd prints "name => /path (0x...)" for libraries, "/path (0x...)" for the
# loader and "name (0x...)" for the vDSO, which has no file. A library it
# cannot find ("=> not found") would leave the image unable to start.
libs=$(ldd "$bin") || {
    echo "$0: ldd $bin failed" >&2
    exit 1
}
if printf '%s\n' "$libs" | grep -q 'not found'; then
    printf '%s: missing libraries:\n%s\n' "$0" "$libs" >&2
    exit 1
fi

mkdir -p "$dest"
cp -L "$bin" "$dest/l2announcer"
chmod 0755 "$dest/l2announcer"
printf '%s\n' "$libs" | awk '$2 == "=>" { print $3; next } $1 ~ /^\// { print $1 }' |
    while read -r lib; do
        mkdir -p "$dest$(dirname "$lib")"
        cp -L "$lib" "$dest$lib"
    done
