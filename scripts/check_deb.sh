#!/usr/bin/env bash
# Check a vigil .deb: install it into a scratch root (dpkg -x, as the issue allows: no
# maintainer scripts run), check the layout, the conffile and systemd hooks, the model's hash,
# the binary's architecture (stripped), and that `systemd-analyze verify` passes on the unit *as
# installed* (the scratch root also gets the host's systemd units, as on a real system).
#   usage: scripts/check_deb.sh path/to/vigil_<version>_<arch>.deb
set -euo pipefail
deb=${1:?usage: check_deb.sh DEB}
cd "$(dirname "$0")/.."
fail() { echo "check_deb: FAIL: $*" >&2; exit 1; }

arch=$(dpkg-deb --field "$deb" Architecture)
case "$arch" in
  arm64) elf="ARM aarch64" ;;
  armhf) elf="ARM, EABI5" ;;
  amd64) elf="x86-64" ;;
  *) fail "unexpected architecture $arch" ;;
esac
[ "$(dpkg-deb --field "$deb" Package)" = vigil ] || fail "package name"

root=$(mktemp -d)
ctl=$(mktemp -d)
trap 'rm -rf "$root" "$ctl"' EXIT
dpkg-deb -x "$deb" "$root"
dpkg-deb -e "$deb" "$ctl"

# Layout.
for f in usr/bin/vigil etc/vigil/vigil.toml \
         usr/share/vigil/models/efficientnet_lite0_pooled.onnx \
         usr/share/vigil/models/efficientnet_lite0_s16.onnx \
         usr/share/vigil/models/models.json usr/share/doc/vigil/README.md; do
  [ -f "$root/$f" ] || fail "missing /$f"
done
[ -x "$root/usr/bin/vigil" ] || fail "/usr/bin/vigil is not executable"
file -b "$root/usr/bin/vigil" | grep -q "$elf" || fail "/usr/bin/vigil is not $elf: $(file -b "$root/usr/bin/vigil")"
# Stripped, as the release profile says (a per-package profile override once dropped it: +8 MB).
file -b "$root/usr/bin/vigil" | grep -q ", stripped" || fail "/usr/bin/vigil is not stripped: $(file -b "$root/usr/bin/vigil")"
# The size goal for the boards (issue 6; cross/README.md "Binary size" says where it comes from).
max_bytes=${VIGIL_MAX_BINARY_BYTES:-15000000}
size=$(stat -c %s "$root/usr/bin/vigil")
[ "$size" -le "$max_bytes" ] || fail "/usr/bin/vigil is $size B, over the $max_bytes B goal (cross/README.md, \"Binary size\")"
unit=""
for d in lib/systemd/system usr/lib/systemd/system; do
  [ -f "$root/$d/vigil.service" ] && unit="$d/vigil.service"
done
[ -n "$unit" ] || fail "no vigil.service under /lib/systemd/system or /usr/lib/systemd/system"
cmp -s "$root/$unit" systemd/vigil.service || fail "/$unit differs from systemd/vigil.service"
[ ! -e "$root/var/lib/vigil" ] || fail "/var/lib/vigil must be left to StateDirectory= (DynamicUser)"

# The shipped model is the one models.json describes.
for m in efficientnet_lite0_pooled.onnx efficientnet_lite0_s16.onnx; do
  want=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["sha256"])' \
         "$root/usr/share/vigil/models/models.json" "$m")
  got=$(sha256sum "$root/usr/share/vigil/models/$m" | cut -d' ' -f1)
  [ "$want" = "$got" ] || fail "$m sha256 $got, models.json says $want"
done

# The config points at what the package installs and where the unit keeps state.
grep -q '^backbone = "/usr/share/vigil/models/efficientnet_lite0_pooled.onnx"' "$root/etc/vigil/vigil.toml" \
  || fail "vigil.toml's backbone is not the installed model"
grep -q '^state_dir = "/var/lib/vigil"' "$root/etc/vigil/vigil.toml" || fail "vigil.toml's state_dir"
grep -q '^StateDirectory=vigil$' "$root/$unit" || fail "unit has no StateDirectory=vigil"
grep -q '^ExecStart=/usr/bin/vigil run --config /etc/vigil/vigil.toml$' "$root/$unit" || fail "ExecStart"

# Maintainer side: the config is a conffile (kept on upgrade), the unit is enabled on install
# and not started (a camera needs its model first), stopped on removal.
grep -qx /etc/vigil/vigil.toml "$ctl/conffiles" || fail "/etc/vigil/vigil.toml is not a conffile"
grep -q 'deb-systemd-helper.*enable.*vigil.service\|deb-systemd-helper.*vigil.service.*enable' "$ctl/postinst" \
  || { grep -q 'vigil.service' "$ctl/postinst" && grep -q 'enable' "$ctl/postinst"; } \
  || fail "postinst does not enable vigil.service"
grep -q 'vigil.service' "$ctl/prerm" || fail "prerm does not stop vigil.service"
# (an upgrade may try-restart a service that already runs: that is fine.)
if grep -E 'deb-systemd-invoke +(start|restart|\$_dh_action)' "$ctl/postinst" | grep -q vigil.service; then
  fail "postinst starts vigil.service before a model exists"
fi
# The glibc the binary needs (highest GLIBC_x.y symbol version it references) is what
# Depends: libc6 (>= x.y) promises: a board with an older glibc refuses the package instead
# of failing at start with "version `GLIBC_2.3x' not found".
dep=$(dpkg-deb --field "$deb" Depends | sed -n 's/.*libc6 (>= \([0-9.]*\)).*/\1/p')
[ -n "$dep" ] || fail "no versioned libc6 dependency"
need=$(readelf -V "$root/usr/bin/vigil" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -Vu | tail -n1)
[ "$(printf '%s\n%s\n' "$need" "$dep" | sort -V | tail -n1)" = "$dep" ] \
  || fail "the binary needs glibc $need, the package promises libc6 (>= $dep)"

# systemd-analyze verify on the unit as installed: the host's units give it the default
# dependencies (sysinit.target, ...) a real system has; ExecStart= is resolved in the root.
mkdir -p "$root/lib/systemd/system"
cp -an /lib/systemd/system/. "$root/lib/systemd/system/"
out=$(systemd-analyze verify --root="$root" "$unit" 2>&1) || fail "systemd-analyze verify: $out"
if echo "$out" | grep -q vigil.service; then fail "systemd-analyze verify: $out"; fi

echo "check_deb: OK $deb ($arch, $(stat -c %s "$deb") bytes, binary $(stat -c %s "$root/usr/bin/vigil") bytes)"
