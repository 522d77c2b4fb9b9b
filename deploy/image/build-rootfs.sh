#!/usr/bin/env bash
# Assembles the root filesystem of Strait's image (deploy/image/Containerfile copies it whole):
# the binaries, the shared libraries ldd says they load (with the dynamic loader), and
# /etc/passwd and /etc/group naming the user strait (65532). Nothing else: no shell.
#
# Usage: deploy/image/build-rootfs.sh OUT_DIR [BIN_DIR]   (BIN_DIR: target/dist by default)
# OUT_DIR is emptied first. Prints the files it holds, one per line, sorted.
set -euo pipefail

out=${1:?usage: build-rootfs.sh OUT_DIR [BIN_DIR]}
bin_dir=${2:-target/dist}
binaries=(strait-global strait-zone strait-gateway strait-dp straitctl)

for b in "${binaries[@]}"; do
    [ -x "$bin_dir/$b" ] || { echo "build-rootfs.sh: $bin_dir/$b is missing: build it first (cargo build --profile dist --bins)" >&2; exit 1; }
done

rm -rf "$out"
mkdir -p "$out/usr/bin" "$out/etc"
chmod 0755 "$out" "$out/usr" "$out/usr/bin" "$out/etc"

copy_with_parents() {
    local src=$1
    local dest="$out$src"
    mkdir -p "$(dirname "$dest")"
    # The file itself, not a symlink to it (ld.so.cache is absent: the loader's paths must be real).
    cp -L "$src" "$dest"
    chmod 0755 "$dest"
}

for b in "${binaries[@]}"; do
    install -m 0755 "$bin_dir/$b" "$out/usr/bin/$b"
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the loader's own line.
    while read -r lib; do
        [ -e "$out$lib" ] || copy_with_parents "$lib"
    done < <(ldd "$bin_dir/$b" | awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(/ {print $1}')
done

printf 'strait:x:65532:65532:Strait:/nonexistent:/nonexistent\n' > "$out/etc/passwd"
printf 'strait:x:65532:\n' > "$out/etc/group"
chmod 0644 "$out/etc/passwd" "$out/etc/group"

(cd "$out" && find . -type f | sed 's|^\.||' | sort)
