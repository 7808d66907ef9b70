# PostgreSQL for the fleet-store tests (payment/postgres-store, coinopd --store): sourced,
# never run, after setup.sh. Idempotent: installs the Debian package only when no server
# binaries are there; the tests start their own throwaway clusters, never a system one.

# Prints the newest /usr/lib/postgresql/N/bin that has initdb (by version number), or nothing.
coinop_postgres_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && echo "$(basename "$(dirname "$d")") $d"
  done | sort -n | tail -1 | cut -d' ' -f2
}

coinop_ensure_postgres() {
  if [ -z "$(coinop_postgres_bindir)" ]; then
    coinop_install_packages postgresql
  fi
  [ -n "$(coinop_postgres_bindir)" ] || die "PostgreSQL installed but no initdb under /usr/lib/postgresql/*/bin"
  # Debian's package starts a system cluster; the tests don't use it and leave it alone.
}
