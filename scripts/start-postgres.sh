#!/usr/bin/env bash
# A PostgreSQL server on 127.0.0.1 for the results-store tests: installs the
# Debian package if missing, starts the cluster, creates the role and the
# database `redraft`, and prints the URL. Idempotent. The password is one no
# other part of the URL contains, so the tests can grep every output and
# stored record for it (tests/it/store.rs).
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "start-postgres: installing postgresql" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$version main$"; then
  pg_createcluster "$version" main >&2
fi
pg_ctlcluster "$version" main start >&2 2>/dev/null || true
for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 && break
  sleep 1
done
password=pw-test-5e7a1c
su postgres -c "psql -q -tAc \"SELECT 1 FROM pg_roles WHERE rolname = 'redraft'\"" | grep -q 1 ||
  su postgres -c "psql -q -c \"CREATE ROLE redraft LOGIN\"" >&2
su postgres -c "psql -q -c \"ALTER ROLE redraft PASSWORD '$password'\"" >&2
su postgres -c "psql -q -tAc \"SELECT 1 FROM pg_database WHERE datname = 'redraft'\"" | grep -q 1 ||
  su postgres -c "psql -q -c 'CREATE DATABASE redraft OWNER redraft'" >&2
echo "postgres://redraft:$password@127.0.0.1:5432/redraft"
