#!/usr/bin/env bash
# Builds the Debian package: dist/deb/build.sh [OUTDIR] (default target/deb)
# prints the path of rbdelta_VERSION_ARCH.deb. It holds:
#   /usr/bin/rbdelta                        the release build, stripped
#   /lib/systemd/system/                    the units of dist/systemd (daemon,
#                                           or nightly timer: enable one)
#   /usr/share/man/man1/rbdelta*.1.gz       from the CLI itself (rbdelta man)
#   bash, zsh and fish completions         from the CLI itself (rbdelta completions)
#   /usr/share/doc/rbdelta/                 README, the systemd notes, example configs
# and a postinst that installs the example as /etc/rbdelta/config.yaml only
# where there is none (never over an operator's file; not a conffile, so
# upgrades and purges leave it alone).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/deb}

cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/rbdelta  # where cargo built it
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/rbdelta_${version}_${arch}"

install -D -m 0755 -s "$bin" "$root/usr/bin/rbdelta"
for unit in dist/systemd/*.service dist/systemd/*.timer; do
    # the units name /usr/local/bin for a hand install; the package's is /usr/bin
    sed 's#/usr/local/bin/rbdelta#/usr/bin/rbdelta#g' "$unit" |
        install -D -m 0644 /dev/stdin "$root/lib/systemd/system/$(basename "$unit")"
done
man="$root/usr/share/man/man1"
"$bin" man "$man" >/dev/null
gzip -9n "$man"/*.1
"$bin" completions bash | install -D -m 0644 /dev/stdin "$root/usr/share/bash-completion/completions/rbdelta"
"$bin" completions zsh | install -D -m 0644 /dev/stdin "$root/usr/share/zsh/vendor-completions/_rbdelta"
"$bin" completions fish | install -D -m 0644 /dev/stdin "$root/usr/share/fish/vendor_completions.d/rbdelta.fish"
doc="$root/usr/share/doc/rbdelta"
install -D -m 0644 README.md "$doc/README.md"
install -D -m 0644 dist/systemd/README.md "$doc/systemd.md"
for f in examples/*.yaml; do install -D -m 0644 "$f" "$doc/examples/$(basename "$f")"; done

install -d "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: rbdelta
Version: $version
Architecture: $arch
Maintainer: rbdelta developers <rbdelta@localhost>
Installed-Size: $size
Depends: libc6, librbd1, librados2
Recommends: fuse3, bubblewrap
Suggests: e2fsprogs, xfsprogs, btrfs-progs, dosfstools
Section: admin
Priority: optional
Description: incremental, verifiable backups of Ceph RBD images
 rbdelta snapshots RBD images through librbd, stores only changed blocks
 (with BLAKE3 checksums) in a plain directory archive of raw sparse fulls
 and deltas, restores any revision into an image or a file, mounts old
 revisions through FUSE and checks the filesystems inside them.
CONTROL
cat > "$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    etc="${DPKG_ROOT:-}/etc/rbdelta"
    install -d -m 0700 "$etc"
    # an example to edit, never over an existing config
    if [ ! -e "$etc/config.yaml" ]; then
        install -m 0600 "${DPKG_ROOT:-}/usr/share/doc/rbdelta/examples/fleet.yaml" "$etc/config.yaml"
    fi
    if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
POSTINST
chmod 0755 "$root/DEBIAN/postinst"

mkdir -p "$out"
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
echo "$out/rbdelta_${version}_${arch}.deb"
