#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the benchmarks (the tests have their own
# in tests/support/pg.rs): Debian's server binaries, a data directory under
# DIR, a free port on 127.0.0.1, a password user owning database "medrelay".
# As root (here and in CI) the server runs as the system user medrelay-test,
# as tests/support/pg.rs does: PostgreSQL refuses to run as root.
#
#   bash benches/support/pg.sh start DIR [SHARED_BUFFERS]   prints the URL on stdout
#   bash benches/support/pg.sh stop DIR
#
# Production settings, not test ones: fsync on, shared_buffers 1GB unless given.
set -euo pipefail
cmd="${1:?start|stop}"
dir="${2:?DIR}"
bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -x "$bin/initdb" ] || { echo "pg.sh: no PostgreSQL server binaries (bash tests/support/setup.sh)" >&2; exit 1; }
user=medrelay-test
as_owner() {
    if [ "$(id -u)" = 0 ]; then setpriv --reuid "$user" --regid "$user" --clear-groups -- "$@"; else "$@"; fi
}
case "$cmd" in
start)
    sb="${3:-1GB}"
    if [ "$(id -u)" = 0 ] && ! id -u "$user" >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
    fi
    mkdir -p "$dir/sock"
    pw="bench-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    printf '%s\n' "$pw" >"$dir/pwfile"
    [ "$(id -u)" = 0 ] && chown -R "$user:$user" "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -U pgadmin -E UTF8 --no-locale --auth-local=trust \
        --auth-host=scram-sha-256 --pwfile="$dir/pwfile" >"$dir/initdb.log" 2>&1
    port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o \
        "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir/sock -c shared_buffers=$sb -c max_connections=100" \
        start >/dev/null
    "$bin/psql" -q -h "$dir/sock" -p "$port" -U pgadmin -d postgres \
        -c "CREATE DATABASE medrelay OWNER pgadmin" >/dev/null
    echo "$port" >"$dir/port"
    echo "postgres://pgadmin:$pw@127.0.0.1:$port/medrelay"
    ;;
stop)
    [ -d "$dir/data" ] && as_owner "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
    ;;
psql)
    shift 2
    "$bin/psql" -h "$dir/sock" -p "$(cat "$dir/port")" -U pgadmin -d medrelay "$@"
    ;;
*) echo "pg.sh: start|stop|psql" >&2; exit 2 ;;
esac
