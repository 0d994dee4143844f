#!/bin/sh
# Entrypoint of rookery-postgres:dev (e2e/images/postgres/Dockerfile).
#
#   postgres-entrypoint.sh [postgres] [postgres options...]   initialise if needed, then serve
#   postgres-entrypoint.sh COMMAND [args...]                   run COMMAND instead
#
# Environment:
#   PGDATA             data directory (default /var/lib/postgresql/data)
#   POSTGRES_USER      role that gets the password (default rookery; a superuser)
#   POSTGRES_PASSWORD  its password; needed the first time (when $PGDATA is empty)
#   POSTGRES_DB        database created for it (default rookery)
#
# Started as root, it makes $PGDATA belong to `postgres` and runs itself again as that user;
# initdb and the server never run as root.
set -eu

PGDATA=${PGDATA:-/var/lib/postgresql/data}
POSTGRES_USER=${POSTGRES_USER:-rookery}
POSTGRES_DB=${POSTGRES_DB:-rookery}
export PGDATA

log() { echo "postgres-entrypoint: $*" >&2; }

# Options alone mean "postgres with these options".
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
    exec "$@"
fi
shift

bindir=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /run/postgresql
    chown postgres:postgres "$PGDATA" /run/postgresql
    chmod 0700 "$PGDATA"
    chmod 2775 /run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$0" postgres "$@"
fi

# The Unix socket: the usual directory when this user may write there.
sockdir=/run/postgresql
if ! [ -d "$sockdir" ] || ! [ -w "$sockdir" ]; then
    sockdir=/tmp
fi

if ! [ -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        log "PGDATA ($PGDATA) is empty and POSTGRES_PASSWORD is not set: cannot initialise"
        exit 1
    fi
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA"
    log "initialising $PGDATA for role $POSTGRES_USER, database $POSTGRES_DB"
    pwfile=$(mktemp)
    trap 'rm -f "$pwfile"' EXIT
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    # The bootstrap superuser is $POSTGRES_USER, with the password from the file (stored as a
    # SCRAM hash). Every login needs the password, on the socket too.
    "$bindir/initdb" -D "$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
        --encoding=UTF8 --no-locale >/dev/null
    rm -f "$pwfile"
    trap - EXIT
    # Any address; `md5` accepts md5 clients and SCRAM ones (the stored hash is SCRAM).
    {
        echo
        echo "# rookery-postgres: password logins from anywhere"
        echo "host all all 0.0.0.0/0 md5"
        echo "host all all ::/0 md5"
    } >> "$PGDATA/pg_hba.conf"

    if [ "$POSTGRES_DB" != postgres ]; then
        # A server on the socket only, to create the database.
        "$bindir/pg_ctl" -D "$PGDATA" -w -s \
            -o "-c listen_addresses='' -c unix_socket_directories=$sockdir" start
        PGPASSWORD=$POSTGRES_PASSWORD "$bindir/psql" -X -q -v ON_ERROR_STOP=1 \
            -h "$sockdir" -U "$POSTGRES_USER" -d postgres \
            -v db="$POSTGRES_DB" -v owner="$POSTGRES_USER" <<'SQL'
CREATE DATABASE :"db" OWNER :"owner";
SQL
        "$bindir/pg_ctl" -D "$PGDATA" -w -s -m fast stop
    fi
    log "initialised"
fi

exec "$bindir/postgres" -D "$PGDATA" \
    -c listen_addresses=0.0.0.0 -p 5432 \
    -c unix_socket_directories="$sockdir" \
    "$@"
