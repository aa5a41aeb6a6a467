# Makes PostgreSQL and MariaDB reachable for the tests; sourced by
# tools/test.sh (and anything else that needs real databases).
#
#   arbor_databases_up     exports ARBOR_TEST_POSTGRES_URL and ARBOR_TEST_MYSQL_URL
#                          (and ARBOR_TEST_POSTGRES_RESTART, ARBOR_TEST_MYSQL_RESTART:
#                          commands that restart a private instance)
#   arbor_databases_down   stops what arbor_databases_up started (and only that)
#
# For each engine, in order: a URL already in the environment is used as is;
# a server already listening on 127.0.0.1 (5432, 3306) is used with an
# `arbor` role and an `arbor_test` database created through the local admin
# account; otherwise the server is installed if missing and a private
# instance is started on a free port in a temp dir. PostgreSQL runs with
# wal_level=logical and MariaDB with a ROW binlog, for change capture.

ARBOR_DB_TMP=""
ARBOR_DB_STARTED_PG=""
ARBOR_DB_STARTED_MY=""

arbor__log() { echo "databases: $*" >&2; }

arbor__port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

arbor__free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

arbor__as() { # run as a system user when root, else as ourselves
  local user=$1; shift
  if [ "$(id -u)" -eq 0 ]; then runuser -u "$user" -- "$@"; else "$@"; fi
}

arbor__apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  arbor__log "installing $*"
  $sudo apt-get update -qq
  # policy-rc.d 101: packages must not start services; we start our own.
  local policy=/usr/sbin/policy-rc.d created_policy=""
  if [ ! -e "$policy" ] && [ "$(id -u)" -eq 0 ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
  local rc=$?
  [ -n "$created_policy" ] && rm -f "$policy"
  return $rc
}

arbor__tmp() {
  if [ -z "$ARBOR_DB_TMP" ]; then
    ARBOR_DB_TMP=$(mktemp -d /tmp/arbor-databases.XXXXXX)
    chmod 755 "$ARBOR_DB_TMP"
  fi
}

arbor__postgres_up() {
  if [ -n "${ARBOR_TEST_POSTGRES_URL:-}" ]; then
    arbor__log "postgres: using ARBOR_TEST_POSTGRES_URL from the environment"
    return 0
  fi
  if arbor__port_open 5432; then
    arbor__log "postgres: using the server on 127.0.0.1:5432"
    arbor__as postgres psql -h 127.0.0.1 -p 5432 -d postgres -v ON_ERROR_STOP=1 -qc \
      "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'arbor') THEN CREATE ROLE arbor LOGIN SUPERUSER REPLICATION PASSWORD 'arbor'; END IF; END \$\$;" \
      || { arbor__log "postgres: cannot create role arbor on :5432; set ARBOR_TEST_POSTGRES_URL"; return 1; }
    arbor__as postgres psql -h 127.0.0.1 -p 5432 -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'arbor_test'" | grep -q 1 \
      || arbor__as postgres createdb -h 127.0.0.1 -p 5432 -O arbor arbor_test
    export ARBOR_TEST_POSTGRES_URL="postgres://arbor:arbor@127.0.0.1:5432/arbor_test"
    return 0
  fi
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    arbor__apt_install postgresql || return 1
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  arbor__tmp
  local port dir="$ARBOR_DB_TMP/postgres"
  port=$(arbor__free_port)
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
  arbor__as postgres "$bin/initdb" -D "$dir/data" -U arbor --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  arbor__as postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
    "-p $port -k $dir -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_wal_senders=10 -c max_replication_slots=10 -c fsync=off" \
    >/dev/null || { cat "$dir/server.log" >&2; return 1; }
  ARBOR_DB_STARTED_PG="$bin/pg_ctl -D $dir/data"
  # Only for a private instance: lets tests restart the server mid-scan
  # (pg_ctl restart reuses the options it was started with).
  local as_pg=""
  [ "$(id -u)" -eq 0 ] && as_pg="runuser -u postgres --"
  export ARBOR_TEST_POSTGRES_RESTART="$as_pg $bin/pg_ctl -D $dir/data -l $dir/server.log -s -w -t 60 -m fast restart"
  "$bin/createdb" -h 127.0.0.1 -p "$port" -U arbor arbor_test || return 1
  export ARBOR_TEST_POSTGRES_URL="postgres://arbor@127.0.0.1:$port/arbor_test"
  arbor__log "postgres: private instance on 127.0.0.1:$port ($("$bin/postgres" --version))"
}

arbor__mysql_up() {
  if [ -n "${ARBOR_TEST_MYSQL_URL:-}" ]; then
    arbor__log "mariadb: using ARBOR_TEST_MYSQL_URL from the environment"
    return 0
  fi
  local setup_sql="CREATE DATABASE IF NOT EXISTS arbor_test;
    CREATE USER IF NOT EXISTS 'arbor'@'127.0.0.1' IDENTIFIED BY 'arbor';
    GRANT ALL ON *.* TO 'arbor'@'127.0.0.1' WITH GRANT OPTION;"
  if arbor__port_open 3306; then
    arbor__log "mariadb: using the server on 127.0.0.1:3306"
    mariadb -uroot -e "$setup_sql" 2>/dev/null || mysql -uroot -e "$setup_sql" \
      || { arbor__log "mariadb: cannot create user arbor on :3306; set ARBOR_TEST_MYSQL_URL"; return 1; }
    export ARBOR_TEST_MYSQL_URL="mysql://arbor:arbor@127.0.0.1:3306/arbor_test"
    return 0
  fi
  local server
  server=$(command -v mariadbd || ls /usr/sbin/mariadbd 2>/dev/null || true)
  if [ -z "$server" ]; then
    arbor__apt_install mariadb-server mariadb-client || return 1
    server=/usr/sbin/mariadbd
  fi
  arbor__tmp
  local port dir="$ARBOR_DB_TMP/mariadb" user=mysql
  port=$(arbor__free_port)
  mkdir -p "$dir"
  id mysql >/dev/null 2>&1 || user=$(id -un)
  [ "$(id -u)" -eq 0 ] && chown "$user": "$dir"
  mariadb-install-db --no-defaults --datadir="$dir/data" --user="$user" \
    --auth-root-authentication-method=normal >"$dir/install.log" 2>&1 \
    || { cat "$dir/install.log" >&2; return 1; }
  # The start, as a script: tests restart a private instance with it
  # (ARBOR_TEST_MYSQL_RESTART), as pg_ctl restart does for PostgreSQL.
  cat >"$dir/start.sh" <<EOF
#!/usr/bin/env bash
"$server" --no-defaults --datadir="$dir/data" --user="$user" --port="$port" \\
  --bind-address=127.0.0.1 --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" \\
  --log-error="$dir/error.log" --skip-name-resolve --server-id=1 \\
  --log-bin="$dir/binlog" --binlog-format=ROW --innodb-flush-log-at-trx-commit=2 \\
  >/dev/null 2>&1 </dev/null &
for i in \$(seq 1 120); do
  mariadb-admin --no-defaults --socket="$dir/mysqld.sock" -uroot ping >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "mariadb did not answer within 60 s; see $dir/error.log" >&2
exit 1
EOF
  cat >"$dir/restart.sh" <<EOF
#!/usr/bin/env bash
mariadb-admin --no-defaults --socket="$dir/mysqld.sock" -uroot shutdown || exit 1
exec bash "$dir/start.sh"
EOF
  ARBOR_DB_STARTED_MY="$dir"
  bash "$dir/start.sh" || return 1
  export ARBOR_TEST_MYSQL_RESTART="bash $dir/restart.sh"
  mariadb --no-defaults --socket="$dir/mysqld.sock" -uroot -e "$setup_sql" \
    || { cat "$dir/error.log" >&2; return 1; }
  export ARBOR_TEST_MYSQL_URL="mysql://arbor:arbor@127.0.0.1:$port/arbor_test"
  arbor__log "mariadb: private instance on 127.0.0.1:$port ($("$server" --version | head -n 1))"
}

arbor_databases_up() {
  arbor__postgres_up || { arbor__log "postgres could not be made reachable"; return 1; }
  arbor__mysql_up || { arbor__log "mariadb could not be made reachable"; return 1; }
}

arbor_databases_down() {
  if [ -n "$ARBOR_DB_STARTED_PG" ]; then
    arbor__as postgres $ARBOR_DB_STARTED_PG -m fast -w stop >/dev/null 2>&1 || true
    ARBOR_DB_STARTED_PG=""
  fi
  if [ -n "$ARBOR_DB_STARTED_MY" ]; then
    mariadb-admin --no-defaults --socket="$ARBOR_DB_STARTED_MY/mysqld.sock" -uroot shutdown >/dev/null 2>&1 \
      || kill "$(cat "$ARBOR_DB_STARTED_MY/mysqld.pid" 2>/dev/null)" 2>/dev/null || true
    ARBOR_DB_STARTED_MY=""
  fi
  if [ -n "$ARBOR_DB_TMP" ]; then
    rm -rf "$ARBOR_DB_TMP"
    ARBOR_DB_TMP=""
  fi
}
