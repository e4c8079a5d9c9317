#!/usr/bin/env bash
# Tests the Debian package (ci/test.sh runs it): builds it, unpacks it into
# a scratch root with dpkg -x and checks that every file is where it
# belongs, that the unpacked binary runs, that man renders its pages, that
# the units name the packaged binary, and that the postinst installs the
# example config once and never over an existing one.
set -euo pipefail
cd "$(dirname "$0")/../.."
fail() { echo "dist/deb/test.sh: $*" >&2; exit 1; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
deb=$(dist/deb/build.sh "$scratch/out")
root="$scratch/root"
dpkg -x "$deb" "$root"
dpkg-deb -e "$deb" "$scratch/DEBIAN"

for f in usr/bin/rbdelta \
    lib/systemd/system/rbdelta.service lib/systemd/system/rbdelta-backup.service \
    lib/systemd/system/rbdelta-backup.timer \
    usr/share/man/man1/rbdelta.1.gz usr/share/man/man1/rbdelta-backup.1.gz \
    usr/share/man/man1/rbdelta-restore.1.gz usr/share/man/man1/rbdelta-mount.1.gz \
    usr/share/bash-completion/completions/rbdelta usr/share/zsh/vendor-completions/_rbdelta \
    usr/share/fish/vendor_completions.d/rbdelta.fish \
    usr/share/doc/rbdelta/README.md usr/share/doc/rbdelta/examples/fleet.yaml; do
    [[ -s $root/$f ]] || fail "$f is missing or empty"
done
[[ ! -e $root/etc ]] || fail "the package ships /etc (the config is installed by the postinst)"
dpkg-deb -f "$deb" Package Version Depends | grep -q '^Depends: .*librbd1' || fail "no Depends on librbd1"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
[[ $("$root/usr/bin/rbdelta" --version) == "rbdelta $version" ]] || fail "--version"
page=$(MANWIDTH=80 man -l "$root/usr/share/man/man1/rbdelta-restore.1.gz" 2>/dev/null)
grep -Eq '^ +rbdelta +restore' <<<"$page" && grep -q -- '--in-place' <<<"$page" ||
    fail "man does not render rbdelta-restore(1)"
grep -q -- '--to-image' "$root/usr/share/bash-completion/completions/rbdelta" || fail "bash completions"
grep -q '^ExecStart=/usr/bin/rbdelta ' "$root/lib/systemd/system/rbdelta.service" || fail "unit ExecStart"
! grep -rq /usr/local/bin "$root/lib/systemd/system" || fail "a unit names /usr/local/bin"

# the postinst, against the scratch root: installs the example, then keeps
# an operator's edit on the next configure
DPKG_ROOT=$root sh "$scratch/DEBIAN/postinst" configure
cmp -s "$root/etc/rbdelta/config.yaml" "$root/usr/share/doc/rbdelta/examples/fleet.yaml" ||
    fail "postinst did not install the example config"
[[ $(stat -c %a "$root/etc/rbdelta/config.yaml") == 600 ]] || fail "config mode"
echo "# edited" >> "$root/etc/rbdelta/config.yaml"
DPKG_ROOT=$root sh "$scratch/DEBIAN/postinst" configure
grep -q '^# edited' "$root/etc/rbdelta/config.yaml" || fail "postinst overwrote an existing config"
echo "dist/deb/test.sh: $(basename "$deb") ok ($(du -k "$deb" | cut -f1) KiB)"
