#!/usr/bin/env bash
# Assembles the root filesystem of Strait's image (deploy/image/Containerfile copies it whole):
# the binaries, the shared libraries ldd says they load (with the dynamic loader), and
# /etc/passwd and /etc/group naming the user strait (65532); and iptables (the nf_tables
# variant, with its extensions), which the injected init container's
# `strait-dp transparent-proxy install` runs. Nothing else: no shell.
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
xtables=/usr/sbin/xtables-nft-multi
[ -x "$xtables" ] || { echo "build-rootfs.sh: $xtables is missing: install iptables (apt-get install iptables)" >&2; exit 1; }
extensions=$(dirname "$(ls /usr/lib/*/xtables/libxt_owner.so 2>/dev/null | head -1)")
[ -d "$extensions" ] || { echo "build-rootfs.sh: iptables' extensions (libxt_owner.so) are missing: install iptables" >&2; exit 1; }

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

copy_libraries_of() {
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the loader's own line.
    while read -r lib; do
        [ -e "$out$lib" ] || copy_with_parents "$lib"
    done < <(ldd "$1" | awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(/ {print $1}')
}

for b in "${binaries[@]}"; do
    install -m 0755 "$bin_dir/$b" "$out/usr/bin/$b"
    copy_libraries_of "$bin_dir/$b"
done

# iptables: one multi-call binary under the names the transparent proxy runs, and the
# extensions it loads from the directory it was built with.
mkdir -p "$out/usr/sbin"
chmod 0755 "$out/usr/sbin"
install -m 0755 "$xtables" "$out/usr/sbin/xtables-nft-multi"
copy_libraries_of "$xtables"
for name in iptables ip6tables iptables-restore ip6tables-restore iptables-save ip6tables-save; do
    ln -s xtables-nft-multi "$out/usr/sbin/$name"
done
for extension in "$extensions"/*.so; do
    copy_with_parents "$extension"
    chmod 0644 "$out$extension"
    copy_libraries_of "$extension"
done

printf 'strait:x:65532:65532:Strait:/nonexistent:/nonexistent\n' > "$out/etc/passwd"
printf 'strait:x:65532:\n' > "$out/etc/group"
chmod 0644 "$out/etc/passwd" "$out/etc/group"

(cd "$out" && find . -type f | sed 's|^\.||' | sort)
