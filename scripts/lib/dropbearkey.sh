# shellcheck shell=bash
# Dropbear's own `dropbearkey`, from the Debian package the rootfs's SSH server comes from
# (dropbear-bin; images/rootfs/build.sh), for the test that checks the guest agent's host
# key file against it (lease/daemon/src/guest_host_key.rs). Unpacked, not installed (no SSH
# server on the host), into a cache dir keyed by the package version; its libraries are
# installed from apt. Idempotent: a second run only checks. Run directly
# (`bash scripts/lib/dropbearkey.sh` prints the program's path) or sourced
# (`coinop_dropbearkey` does the same).

coinop_dropbearkey() {
  local cache=${COINOP_CACHE:-/var/cache/coinop}/dropbear-bin version dir tmp deps
  version=$(apt-cache policy dropbear-bin 2>/dev/null | awk '/Candidate:/ { print $2 }')
  if [ -z "$version" ] || [ "$version" = "(none)" ]; then
    echo "dropbear-bin is not available from apt" >&2
    return 1
  fi
  dir=$cache/$version
  if [ ! -x "$dir/usr/bin/dropbearkey" ]; then
    [ "$(id -u)" = 0 ] || { echo "installing dropbear-bin's dropbearkey needs root" >&2; return 1; }
    mkdir -p "$cache" || return 1
    tmp=$(mktemp -d "$cache/.unpack.XXXXXX") || return 1
    chmod 755 "$tmp"  # apt-get download fetches as the _apt user
    if ! (cd "$tmp" && apt-get download -q "dropbear-bin=$version" >&2) ||
      ! dpkg-deb -x "$tmp"/dropbear-bin_*.deb "$tmp/root"; then
      rm -rf "$tmp"
      return 1
    fi
    deps=$(dpkg-deb -f "$tmp"/dropbear-bin_*.deb Depends | tr ',' '\n' | sed 's/(.*//; s/|.*//' | tr -d ' ')
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $deps >&2 || {
      rm -rf "$tmp"
      return 1
    }
    # Renamed into place whole: a half-finished unpack is never taken for a finished one.
    if ! mv -T "$tmp/root" "$dir" 2>/dev/null; then
      [ -x "$dir/usr/bin/dropbearkey" ] || { rm -rf "$tmp"; return 1; }
    fi
    rm -rf "$tmp"
  fi
  echo "$dir/usr/bin/dropbearkey"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  coinop_dropbearkey
fi
