#!/usr/bin/env bash
# Make sure the services SafeWatch talks to answer on this machine:
#   Mosquitto 127.0.0.1:1883, InfluxDB 1.x 127.0.0.1:8086 and, with --postgres,
#   PostgreSQL 127.0.0.1:5432 (what the contract tests use).
# Idempotent: a service that already answers is left alone. Installs missing
# Debian packages (needs root). No systemd needed: daemons are started directly,
# which is what containers and CI runners need.
#
#   scripts/services.sh [--postgres]
set -euo pipefail

WANT_POSTGRES=0
for arg in "$@"; do
    case "$arg" in
        --postgres) WANT_POSTGRES=1 ;;
        -h | --help)
            sed -n '2,9p' "$0"
            exit 0
            ;;
        *)
            echo "services.sh: unknown argument '$arg' (use --postgres)" >&2
            exit 2
            ;;
    esac
done

START_TIMEOUT_S="${SAFEWATCH_SERVICE_TIMEOUT_S:-60}"
export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0

say() { echo "services: $*"; }
die() {
    echo "services: ERROR: $*" >&2
    exit 1
}

port_open() { # port_open PORT -> 0 when something accepts TCP on 127.0.0.1:PORT
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

influx_up() { curl -sf -o /dev/null --max-time 2 http://127.0.0.1:8086/ping; }
mosquitto_up() { port_open 1883; }
postgres_up() { port_open 5432; }

need_root() { # need_root WHAT
    [ "$(id -u)" -eq 0 ] || die "$1 needs root; run: sudo scripts/services.sh"
}

apt_install() { # apt_install PACKAGE... ; runs apt-get update once per invocation
    need_root "installing $*"
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install -y $*"
    apt-get install -y -qq --no-install-recommends "$@"
}

wait_for() { # wait_for NAME CHECK_FUNCTION [LOG_FILE]
    local name="$1" check="$2" log="${3:-}"
    local deadline=$((SECONDS + START_TIMEOUT_S))
    until "$check"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            if [ -n "$log" ] && [ -r "$log" ]; then
                echo "--- last lines of $log ---" >&2
                tail -n 20 "$log" >&2
            fi
            die "$name did not answer within ${START_TIMEOUT_S}s"
        fi
        sleep 0.5
    done
    say "$name is up"
}

ensure_mosquitto() {
    if mosquitto_up; then
        say "Mosquitto already answers on 127.0.0.1:1883"
        return
    fi
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto
    local bin
    bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
    need_root "starting Mosquitto"
    mkdir -p /run/mosquitto /var/log/mosquitto
    chown mosquitto /run/mosquitto /var/log/mosquitto
    say "starting Mosquitto: $bin -d -c /etc/mosquitto/mosquitto.conf"
    "$bin" -d -c /etc/mosquitto/mosquitto.conf || die "Mosquitto failed to start"
    wait_for "Mosquitto (127.0.0.1:1883)" mosquitto_up /var/log/mosquitto/mosquitto.log
}

ensure_influxdb() {
    if influx_up; then
        say "InfluxDB already answers on http://127.0.0.1:8086"
        return
    fi
    if port_open 8086; then
        die "something listens on 127.0.0.1:8086 but /ping does not answer; is it InfluxDB 1.x?"
    fi
    command -v influxd >/dev/null 2>&1 || apt_install influxdb
    need_root "starting InfluxDB"
    local log_dir=/var/log/influxdb
    mkdir -p "$log_dir" /var/lib/influxdb
    local log="$log_dir/influxd.log"
    say "starting InfluxDB: influxd -config /etc/influxdb/influxdb.conf (log: $log)"
    nohup influxd -config /etc/influxdb/influxdb.conf >>"$log" 2>&1 </dev/null &
    disown || true
    wait_for "InfluxDB (http://127.0.0.1:8086/ping)" influx_up "$log"
}

ensure_postgres() {
    if postgres_up; then
        say "PostgreSQL already answers on 127.0.0.1:5432"
        return
    fi
    local installed_now=0
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
        apt_install postgresql
        installed_now=1
    fi
    need_root "starting PostgreSQL"
    local version
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    [ -n "$version" ] || die "PostgreSQL is installed but has no cluster under /etc/postgresql"
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    if [ "$installed_now" -eq 1 ] && ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
        # Only on a machine we just set up for tests: password-less local TCP logins.
        say "PostgreSQL: trust auth for 127.0.0.1/32 in $hba"
        sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    fi
    if pg_ctlcluster --skip-systemctl-redirect "$version" main status >/dev/null 2>&1; then
        # On a systemd host, installing the package already started the cluster: reload so
        # the trust line above takes effect ('start' would fail with "already running").
        say "PostgreSQL $version/main is running; reloading its configuration"
        pg_ctlcluster --skip-systemctl-redirect "$version" main reload ||
            die "PostgreSQL $version/main failed to reload"
    else
        say "starting PostgreSQL $version/main"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
            die "PostgreSQL $version/main failed to start"
    fi
    wait_for "PostgreSQL (127.0.0.1:5432)" postgres_up "/var/log/postgresql/postgresql-$version-main.log"
    if [ "$installed_now" -eq 1 ]; then
        # from /, which the postgres user can enter (the caller's directory may be under /root)
        if ! (cd / && su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='test'\"") |
            grep -q 1; then
            say "PostgreSQL: creating database 'test'"
            (cd / && su postgres -c "createdb test") || die "could not create PostgreSQL database 'test'"
        fi
    fi
}

command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates

ensure_mosquitto
ensure_influxdb
if [ "$WANT_POSTGRES" -eq 1 ]; then
    ensure_postgres
fi
say "ready"
