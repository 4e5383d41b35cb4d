# Shared settings and helpers for the scripts in this folder (sourced).
# Every port and name can be overridden from the environment.

PT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PT_RUN=${PT_RUN:-$PT_ROOT/.run}
PT_TOOLS=${PT_TOOLS:-$PT_ROOT/.tools}

PT_AMQP_PORT=${PT_AMQP_PORT:-5682}
PT_RABBITMQ_DIST_PORT=${PT_RABBITMQ_DIST_PORT:-25682}
PT_EPMD_PORT=${PT_EPMD_PORT:-4382}
PT_RABBITMQ_NODE=${PT_RABBITMQ_NODE:-paytask@localhost}
PT_REDIS_PORT=${PT_REDIS_PORT:-6382}
PT_MONGO_PORT=${PT_MONGO_PORT:-27027}
PT_FERRET_DEBUG_PORT=${PT_FERRET_DEBUG_PORT:-27028}
PT_FERRETDB_VERSION=${PT_FERRETDB_VERSION:-v1.24.0}

PT_DEB_PACKAGES="build-essential cmake pkg-config git python3 curl ca-certificates \
librabbitmq-dev libuv1-dev libhiredis-dev libbson-dev libmongoc-dev \
libcurl4-openssl-dev libssl-dev libcriterion-dev libh2o-dev uthash-dev \
rabbitmq-server redis-server"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# port_answers PORT: 0 if something accepts connections on 127.0.0.1:PORT
# (a connect bounded to 2 s: a port whose packets are dropped counts as
# free, not as a 2-minute wait).
port_answers() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Which MongoDB the scripts use: "uri" (MONGODB_URI given), "mongod" (one on
# PATH) or "ferretdb" (built into .tools by scripts/setup).
pt_mongo_kind() {
  if [ -n "${MONGODB_URI:-}" ]; then echo uri
  elif command -v mongod >/dev/null 2>&1; then echo mongod
  else echo ferretdb
  fi
}

PT_QUORUM_VHOST=paytask-quorum-test

pt_rabbitmq_env() {
  export HOME=$PT_RUN/rabbitmq/home
  export RABBITMQ_NODENAME=$PT_RABBITMQ_NODE
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT=$PT_AMQP_PORT
  export RABBITMQ_DIST_PORT=$PT_RABBITMQ_DIST_PORT
  export ERL_EPMD_PORT=$PT_EPMD_PORT
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_MNESIA_BASE=$PT_RUN/rabbitmq/mnesia
  export RABBITMQ_LOG_BASE=$PT_RUN/rabbitmq/log
  export RABBITMQ_ENABLED_PLUGINS_FILE=$PT_RUN/rabbitmq/enabled_plugins
  export RABBITMQ_CONFIG_FILE=$PT_RUN/rabbitmq/rabbitmq
  export RABBITMQ_PID_FILE=$PT_RUN/rabbitmq/beam.pid
  # The Erlang distribution listens on loopback only, like everything else.
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} ${PT_RABBITMQ_ERL_ARGS:-}"
  export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

# pt_rabbitmqctl ARGS…: rabbitmqctl against the node scripts/services runs.
pt_rabbitmqctl() {
  (pt_rabbitmq_env; timeout 60 /usr/lib/rabbitmq/bin/rabbitmqctl -n "$PT_RABBITMQ_NODE" -q "$@")
}
