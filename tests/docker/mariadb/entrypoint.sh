#!/bin/sh
# First start on an empty volume: create the system tables, then the database and
# user the MYSQL_* variables ask for (over the socket only, with networking off, so
# a healthcheck over TCP stays unhealthy until this is done). Then run the server.
set -eu
if [ ! -d /var/lib/mysql/mysql ]; then
  mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null
  mariadbd --user=mysql --skip-networking --socket=/run/mysqld/init.sock &
  init_pid=$!
  until mariadb-admin --socket=/run/mysqld/init.sock ping --silent 2>/dev/null; do
    sleep 0.2
  done
  mariadb --socket=/run/mysqld/init.sock <<SQL
CREATE DATABASE IF NOT EXISTS \`${MYSQL_DATABASE}\`;
CREATE USER '${MYSQL_USER}'@'%' IDENTIFIED BY '${MYSQL_PASSWORD}';
GRANT ALL ON \`${MYSQL_DATABASE}\`.* TO '${MYSQL_USER}'@'%';
ALTER USER 'root'@'localhost' IDENTIFIED BY '${MYSQL_ROOT_PASSWORD}';
SQL
  kill "$init_pid"
  wait "$init_pid" || true
fi
exec mariadbd --user=mysql --bind-address=0.0.0.0 --port=3306 --skip-name-resolve
