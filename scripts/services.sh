#!/usr/bin/env bash
# Make sure the servers the tests talk to are up (start any that is down, where we can).
# Tests still fail loudly on a missing server; this only saves a red run for a stopped one.
set -u
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_up() { for _ in $(seq 1 60); do up "$1" && return 0; sleep 0.5; done; return 1; }
start() {  # port name command...
  local port=$1 name=$2; shift 2
  if up "$port"; then return 0; fi
  echo "services: $name is down on port $port; starting it"
  "$@" >/dev/null 2>&1 || echo "services: could not start $name"
  wait_up "$port" || echo "services: $name still not answering on $port (its tests will fail)"
}
start 6379 redis redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
start 5672 rabbitmq rabbitmq-server -detached
start 1883 mosquitto mosquitto -d -c /etc/mosquitto/mosquitto.conf
start 5432 postgresql pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql 2>/dev/null | head -1)" main start
start 3306 mariadb start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
start 4222 nats start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
exit 0
