#!/usr/bin/env bash
# Builds the rootfs's SSH programs, dropbear (server), dropbearkey and dbclient (the lab's
# and the tests' client), from Debian's own dropbear source package: the version apt offers
# as dropbear-bin, with Debian's patches, fetched and checked by apt from the archives the
# host already uses. Linked statically against musl, as position-independent executables
# (static-pie: the program's own addresses stay randomised).
#
#   images/rootfs/dropbear.sh    prints the directory holding usr/sbin/dropbear,
#                                usr/bin/dropbearkey and usr/bin/dbclient
#
# Why not Debian's binary: the guest's dropbear re-executes itself for every connection it
# accepts (PERSONALISE.md: that is what serves each restored lease with its own key), so
# every SSH connection starts the program anew. Debian's links six libraries; loading and
# relocating them is most of a start's page faults (`dropbear -V`: ~104 minor faults, ~18
# for this build), and in a restored guest each first touch of a page is a nested-paging
# fault on the host, tens of µs each in the nested lab. Build choices, each for the guest's
# use: keys only (DROPBEAR_SVR_PASSWORD_AUTH 0: the rootfs has no passwords, and a server
# that cannot check one cannot be guessed through one), no zlib (no compression), no
# utmp/wtmp/lastlog (nothing in the guest reads them). The build fails unless re-exec per
# connection is compiled in (DROPBEAR_DO_REEXEC needs fexecve).
#
# Cached under $COINOP_CACHE/dropbear/<key>, keyed by (dropbear version, musl version, this
# script); a second run only checks. Needs root the first time (apt).
set -euo pipefail

cache_root=${COINOP_CACHE:-/var/cache/coinop}
say() { printf '==> dropbear: %s\n' "$*" >&2; }
die() { printf 'error: dropbear: %s\n' "$*" >&2; exit 1; }

policy=$(apt-cache policy dropbear-bin 2>/dev/null)
version=$(echo "$policy" | awk '/Candidate:/ { print $2 }')
[ -n "$version" ] && [ "$version" != "(none)" ] || die "dropbear-bin not available from apt"
# The agent starts dropbear before the golden snapshot. That is safe only because since
# 2022.82 dropbear's listener re-executes itself for every connection, and the new program
# reads the host key file (the lease's, by then) and seeds its own PRNG (PERSONALISE.md);
# an older one would serve every lease with the key the listener started with.
dpkg --compare-versions "${version%%-*}" ge 2022.82 ||
  die "dropbear $version predates 2022.82 (no re-exec per connection): see PERSONALISE.md"

packages=()
for p in musl-tools dpkg-dev gcc make binutils bzip2 xz-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || packages+=("$p")
done
if [ "${#packages[@]}" != 0 ]; then
  [ "$(id -u)" = 0 ] || die "installing ${packages[*]} needs root"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
musl_version=$(dpkg-query -W -f='${Version}' musl-dev)
key=$( { echo "$version $musl_version"; cat "$0"; } | sha256sum | cut -c1-16)
dir=$cache_root/dropbear/$key
if [ -x "$dir/usr/sbin/dropbear" ] && [ -x "$dir/usr/bin/dropbearkey" ] && [ -x "$dir/usr/bin/dbclient" ]; then
  echo "$dir"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "building dropbear needs root (apt)"
say "building dropbear $version (musl $musl_version, static-pie; key $key)"
mkdir -p "$cache_root/dropbear"
tmp=$(mktemp -d "$cache_root/dropbear/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# The source from the archives dropbear-bin itself comes from (the lines under its version
# table: "500 URI SUITE/COMPONENT ARCH Packages"), through a private list directory so the
# host's own apt state is untouched. apt checks the Sources index against the archive's
# signed Release file and the files against the .dsc, as for any package.
mkdir -p "$tmp/apt/lists/partial"
echo "$policy" | awk '$2 ~ /^[a-z]+:\/\// && $3 ~ /\// { split($3, s, "/"); print "deb-src " $2 " " s[1] " " s[2] }' |
  sort -u >"$tmp/apt/sources.list"
[ -s "$tmp/apt/sources.list" ] || die "no archive named for dropbear-bin in apt-cache policy"
apt_private=(-o "Dir::Etc::SourceList=$tmp/apt/sources.list" -o "Dir::Etc::SourceParts=-"
  -o "Dir::State::Lists=$tmp/apt/lists" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
  -o "APT::Sandbox::User=root") # as root, not _apt: the build directory is root's alone
apt-get "${apt_private[@]}" update -qq >&2 || die "apt could not read the source indexes of: $(tr '\n' ';' <"$tmp/apt/sources.list")"
(cd "$tmp" && apt-get "${apt_private[@]}" source --download-only -qq "dropbear=$version" >&2) ||
  die "apt could not fetch dropbear's source $version"
# (apt checked the files; dpkg-source would also check the uploader's own signature, with a
# keyring the host need not have, and says so on stderr: kept in its log.)
dpkg-source -x "$tmp"/dropbear_*.dsc "$tmp/src" >"$tmp/dpkg-source.log" 2>&1 ||
  die "unpacking dropbear's source failed: $(tail -n 5 "$tmp/dpkg-source.log")"

# musl-gcc's specs have no static-pie: the same specs with musl's rcrt1.o as start file and
# the linker told there is no program interpreter.
specs=$tmp/musl-static-pie.specs
musl_specs=$(grep -o '[^" ]*musl-gcc\.specs' "$(command -v musl-gcc)" | head -n 1)
[ -f "$musl_specs" ] || die "musl-gcc names no specs file"
sed -e 's#^%{!shared: \(/[^ ]*\)/Scrt1.o}#%{static-pie:\1/rcrt1.o;!shared:\1/Scrt1.o}#' \
  -e 's#^-dynamic-linker \([^ ]*\)#%{static-pie:-static -pie --no-dynamic-linker -z text;:-dynamic-linker \1}#' \
  "$musl_specs" >"$specs"
grep -q rcrt1.o "$specs" && grep -q -- '--no-dynamic-linker' "$specs" || die "could not derive static-pie specs from musl-gcc's"

cd "$tmp/src"
# Debian's own local options (paths), then ours.
cp debian/localoptions.h localoptions.h
printf '\n/* coinop: keys only (the rootfs has no passwords) */\n#define DROPBEAR_SVR_PASSWORD_AUTH 0\n' >>localoptions.h
log=$tmp/build.log
CC="gcc -specs=$specs" nice -n 19 ./configure --enable-bundled-libtom --disable-zlib \
  --disable-lastlog --disable-utmp --disable-utmpx --disable-wtmp --disable-wtmpx \
  --disable-pututline --disable-pututxline LDFLAGS=-static-pie >"$log" 2>&1 ||
  die "configure failed: $(tail -n 5 "$log")"
grep -q '^#define HAVE_FEXECVE 1' config.h || die "no fexecve: dropbear would not re-execute per connection"
nice -n 19 make -j"$(nproc)" PROGRAMS="dropbear dropbearkey dbclient" >>"$log" 2>&1 ||
  die "make failed: $(tail -n 5 "$log")"
for p in dropbear dropbearkey dbclient; do
  # static-pie: position-independent (type DYN), no program interpreter, no libraries.
  readelf -h "$p" | grep -q 'Type:[[:space:]]*DYN' && ! readelf -l "$p" | grep -q INTERP &&
    ! readelf -d "$p" | grep -q NEEDED || die "$p is not a static-pie program"
  strip "$p"
done
mkdir -p "$tmp/out/usr/sbin" "$tmp/out/usr/bin"
install -m 0755 dropbear "$tmp/out/usr/sbin/dropbear"
install -m 0755 dropbearkey dbclient "$tmp/out/usr/bin/"
cd /
# Renamed into place whole: a half-finished build is never taken for a finished one.
if ! mv -T "$tmp/out" "$dir" 2>/dev/null; then
  [ -x "$dir/usr/sbin/dropbear" ] || die "could not put the build in $dir"
fi
say "built into $dir"
echo "$dir"
