#!/usr/bin/env bash
# flowwatch local stack: Apache Kafka (single-node KRaft), Redis, Mosquitto (MQTT), PostgreSQL 15.
#
# Usage:
#   bash scripts/stack.sh up       # install/download what is missing, start all three, wait until ready
#   bash scripts/stack.sh down     # stop all three (SIGTERM, wait 30s, SIGKILL); exits non-zero if any
#                                  # process of this stack remains (ports held by others: warning only)
#   bash scripts/stack.sh status   # one line per component; exit 0 if all running, 1 otherwise
#
# `up` and `down` are idempotent: `up` on a running stack only re-checks it, `down` on a stopped
# stack does nothing. Everything listens on 127.0.0.1 only.
#
# Environment (defaults in brackets):
#   KAFKA_PORT [9092]  KAFKA_CONTROLLER_PORT [9093]  REDIS_PORT [6379]  MQTT_PORT [1883]  PG_PORT [5432]
#   KAFKA_VERSION [4.3.1]  KAFKA_HEAP_OPTS [-Xms256m -Xmx512m]
#   FLOWWATCH_CACHE [$HOME/.cache/flowwatch]   downloads (Maven repo + Kafka jars), reused across runs
#   FLOWWATCH_STACK_DIR [<project>/.stack]     data, logs, pid files, generated configs (git-ignored)
#   FLOWWATCH_STACK_TIMEOUT [60]               seconds `up` waits for Kafka to answer metadata
#
# Files (paths relative to the project root, the parent of scripts/):
#   .stack/pids/kafka.pid  .stack/pids/redis.pid  .stack/pids/mosquitto.pid
#   .stack/logs/kafka.log (broker log4j2 log)  .stack/logs/kafka.out (JVM stdout/stderr)
#   .stack/logs/redis.log  .stack/logs/mosquitto.log
#   .stack/data/kafka (KRaft log dir; meta.properties holds the random cluster id)  .stack/data/redis
#   .stack/conf/server.properties  .stack/conf/log4j2.properties  .stack/conf/mosquitto.conf
#
# `status` output, one line per component, space-separated, fixed order kafka, redis, mosquitto:
#   <component> <state> pid=<pid|-> port=<port>      (then postgres)
#   state is one of: running | starting (process up, not answering yet) | stopped |
#                    port-busy (port held by a process that is not this stack's)
#
# Kafka jars come from Maven Central (org.apache.kafka:kafka_2.13 + runtime deps) and live in
# $FLOWWATCH_CACHE/kafka-$KAFKA_VERSION/libs. Kafka's own CLI tools are on that classpath too, e.g.
#   java -cp "$HOME/.cache/flowwatch/kafka-4.3.1/libs/*" org.apache.kafka.tools.TopicCommand \
#        --bootstrap-server 127.0.0.1:9092 --list
#
# Kafka version: 4.3.1 is the newest 4.x whose runtime dependencies are all published on Maven
# Central. kafka_2.13 4.4.0 is listed there, but its runtime dependency kafka-tools-api 4.4.0 (and
# kafka-tools 4.4.0) is not, so 4.4.0 cannot be resolved into a runnable broker. 4.3.1 works with
# aiokafka 0.14.0 / faust-streaming 0.15.3 (checked: admin create_topics, produce, consume with a
# consumer group, a faust worker with a changelog-backed table). Set KAFKA_VERSION to try another
# release. Topics are never auto-created (auto.create.topics.enable=false): faust declares only its
# internal topics (changelogs, repartition), so source topics must be created up front.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${FLOWWATCH_STACK_DIR:-$ROOT/.stack}"
CACHE_DIR="${FLOWWATCH_CACHE:-$HOME/.cache/flowwatch}"
BIND_HOST=127.0.0.1

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
REDIS_PORT="${REDIS_PORT:-6379}"
MQTT_PORT="${MQTT_PORT:-1883}"
PG_PORT="${PG_PORT:-5432}"
KAFKA_VERSION="${KAFKA_VERSION:-4.3.1}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
UP_TIMEOUT="${FLOWWATCH_STACK_TIMEOUT:-60}"
STOP_TIMEOUT=30

PID_DIR="$STACK_DIR/pids"
LOG_DIR="$STACK_DIR/logs"
DATA_DIR="$STACK_DIR/data"
CONF_DIR="$STACK_DIR/conf"

KAFKA_HOME="$CACHE_DIR/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_PROPS="$CONF_DIR/server.properties"
KAFKA_LOG4J="$CONF_DIR/log4j2.properties"
KAFKA_DATA="$DATA_DIR/kafka"
MOSQ_CONF="$CONF_DIR/mosquitto.conf"
REDIS_DATA="$DATA_DIR/redis"

COMPONENTS=(kafka redis mosquitto postgres)

# ---------------------------------------------------------------------------------------------
# helpers

log() { printf 'stack: %s\n' "$*" >&2; }

die() {
  printf 'stack: ERROR: %s\n' "$*" >&2
  exit 1
}

# fail_component NAME WHAT [LOGFILE...] : clear failure message (with the tail of the logs), exit 1.
# Set FAIL_HINT beforehand to replace the generic "what to do" advice.
FAIL_HINT=""
fail_component() {
  local name="$1" what="$2"
  shift 2
  {
    printf '\nstack: ERROR: %s could not start: %s\n' "$name" "$what"
    local f
    for f in "$@"; do
      if [[ -s "$f" ]]; then
        printf -- '----- last lines of %s -----\n' "$f"
        tail -n 30 "$f" || true
        printf -- '-----\n'
      fi
    done
    if [[ -n "$FAIL_HINT" ]]; then
      printf 'stack: what to do: %s\n' "$FAIL_HINT"
    else
      printf 'stack: what to do: read %s; check that nothing else uses its port;\n' "${*:-the output above}"
      printf 'stack:   then run "bash scripts/stack.sh down" and "bash scripts/stack.sh up" again.\n'
      if [[ "$name" == kafka ]]; then
        printf 'stack:   If the Kafka data dir is from another Kafka version or cluster, remove %s\n' "$KAFKA_DATA"
        printf 'stack:   (local data only) and retry. Raise FLOWWATCH_STACK_TIMEOUT on a slow machine.\n'
      fi
    fi
  } >&2
  exit 1
}

port_var_of() {
  case "$1" in
    kafka) echo KAFKA_PORT ;;
    redis) echo REDIS_PORT ;;
    mosquitto) echo MQTT_PORT ;;
    postgres) echo PG_PORT ;;
  esac
}

port_of() {
  case "$1" in
    kafka) echo "$KAFKA_PORT" ;;
    redis) echo "$REDIS_PORT" ;;
    mosquitto) echo "$MQTT_PORT" ;;
    postgres) echo "$PG_PORT" ;;
  esac
}

pidfile_of() { echo "$PID_DIR/$1.pid"; }

cmdline_of() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

# is_ours COMPONENT PID : the pid is alive and is this stack's process for COMPONENT
is_ours() {
  local comp="$1" pid="$2" cmd cwd
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -d "/proc/$pid" ]] || return 1
  cmd="$(cmdline_of "$pid")"
  case "$comp" in
    kafka) [[ "$cmd" == *kafka.Kafka*"$KAFKA_PROPS"* ]] ;;
    mosquitto) [[ "$cmd" == *mosquitto*"$MOSQ_CONF"* ]] ;;
    postgres) [[ "$cmd" == *postgres*"-D $PG_DATA"* ]] ;;
    redis)
      # redis rewrites its argv to "redis-server 127.0.0.1:PORT"; it chdirs to its --dir.
      cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null || true)"
      [[ "$cmd" == redis-server* && "$cwd" == "$REDIS_DATA" ]]
      ;;
    *) return 1 ;;
  esac
}

# pid of COMPONENT from its pid file if that process is alive and ours, else empty
live_pid() {
  local comp="$1" f pid
  f="$(pidfile_of "$comp")"
  [[ -f "$f" ]] || return 0
  pid="$(tr -dc '0-9' <"$f" || true)"
  if is_ours "$comp" "$pid"; then echo "$pid"; fi
}

# all pids that look like this stack's COMPONENT, pid file or not (stragglers)
stack_pids() {
  local comp="$1" d pid
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    if is_ours "$comp" "$pid"; then echo "$pid"; fi
  done
}

port_listening() {
  local port="$1"
  if command -v ss >/dev/null 2>&1; then
    [[ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]]
  else
    timeout 2 bash -c "exec 3<>/dev/tcp/$BIND_HOST/$port" 2>/dev/null
  fi
}

port_owner() {
  local port="$1"
  if command -v ss >/dev/null 2>&1; then
    ss -Hltnp "sport = :$port" 2>/dev/null | head -n 3 || true
  fi
}

# Close every fd above 2 in the current (sub)shell. Daemons are exec'ed after this so they do not
# inherit the stack.lock fd (they would hold the lock forever) or a caller's pipes (a CI runner or
# `make ... | tee` would then wait on them forever).
close_extra_fds() {
  local f fd
  for f in /proc/"$BASHPID"/fd/*; do
    fd="${f##*/}"
    if [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
}

python_bin() {
  if [[ -x "$ROOT/.venv/bin/python" ]]; then
    echo "$ROOT/.venv/bin/python"
  elif command -v python3 >/dev/null 2>&1; then
    command -v python3
  else
    die "python3 is needed for the Kafka readiness check and was not found"
  fi
}

# Kafka answers a Metadata (v4) request and lists a broker on our port. Standard library only.
kafka_ready() {
  "$(python_bin)" - "$BIND_HOST" "$KAFKA_PORT" <<'PY' >/dev/null 2>&1
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
client = b"flowwatch-stack"
# request header v1 (api_key=3 Metadata, api_version=4, correlation_id, client_id)
# body v4: topics = empty array (no topics), allow_auto_topic_creation = false
req = struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">ib", 0, 0)
try:
    with socket.create_connection((host, port), timeout=2) as s:
        s.settimeout(3)
        s.sendall(struct.pack(">i", len(req)) + req)
        def recvn(n):
            buf = b""
            while len(buf) < n:
                chunk = s.recv(n - len(buf))
                if not chunk:
                    raise EOFError
                buf += chunk
            return buf
        (size,) = struct.unpack(">i", recvn(4))
        data = recvn(size)
    corr, _throttle, nbrokers = struct.unpack_from(">iii", data, 0)
    off, ports = 12, []
    for _ in range(nbrokers):
        _node, hlen = struct.unpack_from(">ih", data, off)
        off += 6 + hlen
        (bport, rlen) = struct.unpack_from(">ih", data, off)
        off += 6 + max(rlen, 0)
        ports.append(bport)
    sys.exit(0 if corr == 7 and port in ports else 1)
except Exception:
    sys.exit(1)
PY
}

redis_ready() {
  [[ "$(timeout 3 redis-cli -h "$BIND_HOST" -p "$REDIS_PORT" ping 2>/dev/null || true)" == PONG ]]
}

mosquitto_ready() { port_listening "$MQTT_PORT"; }

component_ready() {
  case "$1" in
    kafka) kafka_ready ;;
    redis) redis_ready ;;
    mosquitto) mosquitto_ready ;;
    postgres) pg_ready ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# installing what is missing

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    die "need root to run: $* (install the packages yourself, or run as root)"
  fi
}

mosquitto_bin() {
  if command -v mosquitto >/dev/null 2>&1; then
    command -v mosquitto
  elif [[ -x /usr/sbin/mosquitto ]]; then
    echo /usr/sbin/mosquitto
  fi
}

# comm-name pids (no procps needed)
pids_by_comm() {
  local name="$1" d
  for d in /proc/[0-9]*; do
    if [[ "$(cat "$d/comm" 2>/dev/null || true)" == "$name" ]]; then echo "${d#/proc/}"; fi
  done
}

apt_install() {
  local pkgs=("$@") created_policy=0 rc=0
  log "installing Debian packages: ${pkgs[*]}"
  # Keep package maintainer scripts from starting system services (Docker-style policy-rc.d).
  if [[ ! -e /usr/sbin/policy-rc.d && "$(id -u)" -eq 0 ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  local before_redis before_mosq
  before_redis=" $(pids_by_comm redis-server | tr '\n' ' ') "
  before_mosq=" $(pids_by_comm mosquitto | tr '\n' ' ') "
  local before_pg
  before_pg=" $(pids_by_comm postgres | tr '\n' ' ') "
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"$LOG_DIR/apt.log" 2>&1; then
    log "apt-get install failed; running apt-get update and retrying"
    as_root apt-get update -q >>"$LOG_DIR/apt.log" 2>&1 || true
    as_root apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$LOG_DIR/apt.log" 2>&1 || rc=$?
  fi
  if [[ "$created_policy" -eq 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
  if [[ "$rc" -ne 0 ]]; then
    tail -n 20 "$LOG_DIR/apt.log" >&2 || true
    die "apt-get install ${pkgs[*]} failed (full log: $LOG_DIR/apt.log)"
  fi
  # If a package's postinst started a system service anyway, stop it: it would hold our ports.
  local pid svc
  for svc in redis-server mosquitto postgres; do
    local before="$before_redis"
    [[ "$svc" == mosquitto ]] && before="$before_mosq"
    [[ "$svc" == postgres ]] && before="$before_pg"
    for pid in $(pids_by_comm "$svc"); do
      [[ "$before" == *" $pid "* ]] && continue
      log "package install started a system $svc (pid $pid); stopping it"
      as_root service "$svc" stop >/dev/null 2>&1 || as_root kill "$pid" 2>/dev/null || true
    done
  done
}

ensure_debian_tools() {
  local need=()
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
  [[ -n "$(mosquitto_bin)" ]] || need+=(mosquitto)
  java_ok || need+=(openjdk-17-jre-headless)
  [[ -n "$(pg_bindir)" ]] || need+=(postgresql)
  if [[ ! -f "$KAFKA_HOME/.complete" ]] && ! command -v mvn >/dev/null 2>&1; then need+=(maven); fi
  if [[ ${#need[@]} -gt 0 ]]; then apt_install "${need[@]}"; fi
  java_ok || die "Java 17+ is required for Kafka $KAFKA_VERSION; 'java -version' says: $(java -version 2>&1 | head -n 1)"
  command -v redis-server >/dev/null 2>&1 || die "redis-server not found after installing it"
  [[ -n "$(mosquitto_bin)" ]] || die "mosquitto not found after installing it"
  [[ -n "$(pg_bindir)" ]] || die "PostgreSQL server binaries (initdb, postgres) not found after installing postgresql"
}

java_bin() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then echo "$JAVA_HOME/bin/java"; else echo java; fi
}

java_ok() {
  local v
  v="$("$(java_bin)" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)" || return 1
  [[ -n "$v" && "$v" -ge 17 ]]
}

# Resolve kafka_2.13 + its runtime classpath (plus the tools and log4j2 backend) from Maven Central
# into $KAFKA_LIBS. Done once per version; later runs reuse it.
ensure_kafka_libs() {
  [[ -f "$KAFKA_HOME/.complete" ]] && return 0
  command -v mvn >/dev/null 2>&1 || die "Maven (mvn) is needed to fetch Kafka $KAFKA_VERSION"
  log "fetching Kafka $KAFKA_VERSION and its runtime dependencies from Maven Central (first run only)"
  mkdir -p "$KAFKA_HOME"
  cat >"$KAFKA_HOME/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <!-- generated by flowwatch scripts/stack.sh: the runtime classpath of a single-node Kafka -->
  <groupId>local.flowwatch</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <!-- broker (kafka.Kafka) and storage format tool (kafka.tools.StorageTool) -->
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- CLI tools (TopicCommand, ConsumerGroupCommand, ...), without Kafka Connect's runtime -->
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version>
      <exclusions>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion>
        <exclusion><groupId>com.fasterxml.jackson.jakarta.rs</groupId><artifactId>jackson-jakarta-rs-json-provider</artifactId></exclusion>
      </exclusions>
    </dependency>
    <!-- logging backend: log4j2 behind slf4j 1.7 (what Kafka 4.x ships) -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
EOF
  local tmp="$KAFKA_HOME/libs.tmp"
  rm -rf "$tmp"
  if ! mvn -B -q -C -f "$KAFKA_HOME/pom.xml" -Dmaven.repo.local="$CACHE_DIR/m2" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
      >"$KAFKA_HOME/mvn.log" 2>&1; then
    tail -n 20 "$KAFKA_HOME/mvn.log" >&2 || true
    die "kafka: Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its runtime dependencies (log: $KAFKA_HOME/mvn.log). Check network access to Maven Central, or set KAFKA_VERSION to a release whose artifacts are all published."
  fi
  [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] || die "kafka: kafka_2.13-$KAFKA_VERSION.jar missing after Maven resolution (see $KAFKA_HOME/mvn.log)"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
  touch "$KAFKA_HOME/.complete"
}

# ---------------------------------------------------------------------------------------------
# configs

write_kafka_config() {
  mkdir -p "$KAFKA_DATA"
  cat >"$KAFKA_PROPS" <<EOF
# generated by scripts/stack.sh on each 'up'; edit the script, not this file
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$BIND_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$BIND_HOST:$KAFKA_PORT,CONTROLLER://$BIND_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$BIND_HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
EOF
  cat >"$KAFKA_LOG4J" <<EOF
# generated by scripts/stack.sh
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $LOG_DIR/kafka.log
appender.file.filePattern = $LOG_DIR/kafka.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
EOF
}

write_mosquitto_config() {
  mkdir -p "$DATA_DIR/mosquitto"
  cat >"$MOSQ_CONF" <<EOF
# generated by scripts/stack.sh on each 'up'
pid_file $(pidfile_of mosquitto)
# do not switch user when started as root (keeps .stack/ files writable)
user $(id -un)
listener $MQTT_PORT $BIND_HOST
allow_anonymous true
persistence false
log_dest file $LOG_DIR/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
log_timestamp_format %Y-%m-%dT%H:%M:%S
EOF
}

# ---------------------------------------------------------------------------------------------
# start

# check_port_free COMPONENT : dies with a clear message if the port is held by something else
check_port_free() {
  local comp="$1" port
  port="$(port_of "$comp")"
  if port_listening "$port"; then
    FAIL_HINT="stop that process, or start the stack on another port ($(port_var_of "$comp")=...)."
    fail_component "$comp" "port $BIND_HOST:$port is already in use by a process that is not this stack's:
$(port_owner "$port")"
  fi
}

# start_kafka: launches the JVM in the background (readiness is awaited later)
start_kafka() {
  local java cp
  java="$(java_bin)"
  cp="$KAFKA_LIBS/*"
  check_port_free kafka
  if port_listening "$KAFKA_CONTROLLER_PORT"; then
    FAIL_HINT="stop that process, or start the stack with another KAFKA_CONTROLLER_PORT=..."
    fail_component kafka "controller port $BIND_HOST:$KAFKA_CONTROLLER_PORT is already in use:
$(port_owner "$KAFKA_CONTROLLER_PORT")"
  fi
  write_kafka_config
  # kafka.log/kafka.out hold this run only (so a failure shows this run's lines); keep the last run's
  if [[ -f "$LOG_DIR/kafka.log" ]]; then mv -f "$LOG_DIR/kafka.log" "$LOG_DIR/kafka.log.prev"; fi
  : >"$LOG_DIR/kafka.out"
  local heap_opts jvm_opts
  read -r -a heap_opts <<<"$KAFKA_HEAP_OPTS"
  jvm_opts=("${heap_opts[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true -Dlog4j2.configurationFile="$KAFKA_LOG4J" -Dkafka.logs.dir="$LOG_DIR")
  if [[ ! -f "$KAFKA_DATA/meta.properties" ]]; then
    local cluster_id
    # same format as 'kafka-storage random-uuid' (16 random bytes, base64url, no padding, no leading '-')
    cluster_id="$("$(python_bin)" -c 'import base64,os
while True:
    u = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    if not u.startswith("-"): break
print(u)' 2>>"$LOG_DIR/kafka.out" || true)"
    [[ -n "$cluster_id" ]] || fail_component kafka "could not generate a cluster id" "$LOG_DIR/kafka.out"
    log "kafka: formatting storage in $KAFKA_DATA (cluster id $cluster_id)"
    if ! "$java" -cp "$cp" "${jvm_opts[@]}" kafka.tools.StorageTool format \
        --cluster-id "$cluster_id" --config "$KAFKA_PROPS" --ignore-formatted >>"$LOG_DIR/kafka.out" 2>&1; then
      fail_component kafka "'kafka-storage format' failed" "$LOG_DIR/kafka.out"
    fi
  fi
  log "kafka: starting $KAFKA_VERSION on $BIND_HOST:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT)"
  (close_extra_fds && exec setsid "$java" -cp "$cp" "${jvm_opts[@]}" kafka.Kafka "$KAFKA_PROPS") \
    </dev/null >>"$LOG_DIR/kafka.out" 2>&1 &
  echo $! >"$(pidfile_of kafka)"
}

wait_kafka() {
  local pid deadline
  pid="$(tr -dc '0-9' <"$(pidfile_of kafka)")"
  deadline=$((SECONDS + UP_TIMEOUT))
  while ! kafka_ready; do
    if ! is_ours kafka "$pid"; then
      rm -f "$(pidfile_of kafka)"
      fail_component kafka "the broker process (pid $pid) exited during startup" "$LOG_DIR/kafka.out" "$LOG_DIR/kafka.log"
    fi
    if ((SECONDS >= deadline)); then
      fail_component kafka "the broker did not answer a metadata request on $BIND_HOST:$KAFKA_PORT within ${UP_TIMEOUT}s" \
        "$LOG_DIR/kafka.out" "$LOG_DIR/kafka.log"
    fi
    sleep 0.5
  done
}

start_redis() {
  check_port_free redis
  mkdir -p "$REDIS_DATA"
  log "redis: starting on $BIND_HOST:$REDIS_PORT"
  local out
  if ! out="$(cd "$REDIS_DATA" && close_extra_fds && exec redis-server --bind "$BIND_HOST" --port "$REDIS_PORT" --protected-mode yes \
      --daemonize yes --pidfile "$(pidfile_of redis)" --dir "$REDIS_DATA" \
      --save '' --appendonly no --logfile "$LOG_DIR/redis.log" </dev/null 2>&1)"; then
    printf '%s\n' "$out" >>"$LOG_DIR/redis.log"
    fail_component redis "redis-server exited with an error" "$LOG_DIR/redis.log"
  fi
  local deadline=$((SECONDS + 15))
  until redis_ready && [[ -n "$(live_pid redis)" ]]; do
    ((SECONDS < deadline)) || fail_component redis "no PONG from $BIND_HOST:$REDIS_PORT within 15s" "$LOG_DIR/redis.log"
    sleep 0.2
  done
}

start_mosquitto() {
  check_port_free mosquitto
  write_mosquitto_config
  log "mosquitto: starting on $BIND_HOST:$MQTT_PORT"
  local bin out
  bin="$(mosquitto_bin)"
  rm -f "$(pidfile_of mosquitto)"
  if ! out="$(close_extra_fds && exec "$bin" -c "$MOSQ_CONF" -d </dev/null 2>&1)"; then
    printf '%s\n' "$out" >>"$LOG_DIR/mosquitto.log"
    fail_component mosquitto "mosquitto exited with an error" "$LOG_DIR/mosquitto.log"
  fi
  local deadline=$((SECONDS + 15))
  until mosquitto_ready && [[ -n "$(live_pid mosquitto)" ]]; do
    ((SECONDS < deadline)) || fail_component mosquitto "not listening on $BIND_HOST:$MQTT_PORT within 15s" "$LOG_DIR/mosquitto.log"
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------------------------
# postgres (PostgreSQL 15 from Debian's packages; the history store)
#
# Data in .stack/data/postgres (initdb on the first `up`), log .stack/logs/postgres.log, pid file
# .stack/pids/postgres.pid. Listens on $BIND_HOST:$PG_PORT only, no Unix socket. Authentication is
# `trust` for local connections as on Redis here: a development stack on the loopback address. A
# database `flowwatch` is created on the first `up`. PostgreSQL refuses to run as root: when root,
# the server runs as the `postgres` system user (created by the package), which owns the data dir.

PG_DATA="$DATA_DIR/postgres"

pg_bindir() {
  local d
  for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    if [[ -x "$d/initdb" && -x "$d/postgres" ]]; then
      echo "$d"
      return 0
    fi
  done
}

# prefix that runs the server as the cluster's owner (empty when not root)
# (setpriv execs in place, so the pid we record is the server's own)
pg_runner() { if [[ "$(id -u)" -eq 0 ]]; then echo "setpriv --reuid=postgres --regid=postgres --init-groups"; fi; }

# run a PostgreSQL binary as the user that owns the cluster
pg_as_owner() {
  if [[ "$(id -u)" -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_ready() {
  local bin
  bin="$(pg_bindir)"
  [[ -n "$bin" ]] && "$bin/pg_isready" -q -h "$BIND_HOST" -p "$PG_PORT" -t 2 >/dev/null 2>&1
}

start_postgres() {
  local bin
  bin="$(pg_bindir)"
  check_port_free postgres
  mkdir -p "$PG_DATA"
  : >>"$LOG_DIR/postgres.log"
  if [[ "$(id -u)" -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || fail_component postgres "running as root and there is no 'postgres' user to run the server as"
    if ! runuser -u postgres -- test -x "$PG_DATA"; then
      FAIL_HINT="make every directory above $PG_DATA searchable by others (chmod o+x), or set FLOWWATCH_STACK_DIR elsewhere."
      fail_component postgres "the 'postgres' user cannot reach $PG_DATA (PostgreSQL refuses to run as root)"
    fi
    chown postgres: "$PG_DATA" "$LOG_DIR/postgres.log"
  fi
  chmod 700 "$PG_DATA"
  if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
    log "postgres: initialising a cluster in $PG_DATA"
    if ! pg_as_owner "$bin/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
        >>"$LOG_DIR/postgres.log" 2>&1; then
      fail_component postgres "initdb failed" "$LOG_DIR/postgres.log"
    fi
  fi
  log "postgres: starting on $BIND_HOST:$PG_PORT"
  (close_extra_fds && cd "$PG_DATA" && exec setsid $(pg_runner) "$bin/postgres" -D "$PG_DATA" \
    -c listen_addresses="$BIND_HOST" -c port="$PG_PORT" -c unix_socket_directories= \
    -c fsync=off -c synchronous_commit=off \
    -c full_page_writes=off -c max_connections=200 -c shared_buffers=128MB) \
    </dev/null >>"$LOG_DIR/postgres.log" 2>&1 &
  local server=$! deadline=$((SECONDS + UP_TIMEOUT))
  echo "$server" >"$(pidfile_of postgres)"
  until pg_ready && [[ -n "$(live_pid postgres)" ]]; do
    if [[ ! -d "/proc/$server" ]]; then
      rm -f "$(pidfile_of postgres)"
      fail_component postgres "the server exited during startup" "$LOG_DIR/postgres.log"
    fi
    ((SECONDS < deadline)) || fail_component postgres "not accepting connections on $BIND_HOST:$PG_PORT within ${UP_TIMEOUT}s" "$LOG_DIR/postgres.log"
    sleep 0.2
  done
  "$bin/psql" -q -h "$BIND_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'flowwatch'" | grep -q 1 ||
    "$bin/psql" -q -h "$BIND_HOST" -p "$PG_PORT" -U postgres -d postgres -c "CREATE DATABASE flowwatch" >/dev/null ||
    fail_component postgres "could not create the database 'flowwatch'" "$LOG_DIR/postgres.log"
}

# ---------------------------------------------------------------------------------------------
# stop

# stop_component NAME : SIGTERM the pid-file process and any straggler of this stack, wait,
# then SIGKILL what is left. Returns non-zero if something survived.
stop_component() {
  local comp="$1" pids pid deadline
  pids="$( { live_pid "$comp"; stack_pids "$comp"; } | sort -u | tr '\n' ' ')"
  if [[ -n "${pids// /}" ]]; then
    log "$comp: stopping (pid ${pids% })"
    # PostgreSQL's SIGTERM waits for every client to leave; SIGINT is its fast shutdown.
    local sig=TERM
    [[ "$comp" == postgres ]] && sig=INT
    for pid in $pids; do kill -"$sig" "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + STOP_TIMEOUT))
    while ((SECONDS < deadline)); do
      local alive=0
      for pid in $pids; do if is_ours "$comp" "$pid"; then alive=1; fi; done
      ((alive)) || break
      sleep 0.2
    done
    for pid in $pids; do
      if is_ours "$comp" "$pid"; then
        log "$comp: pid $pid still alive after ${STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
    # let the parent (often init) reap them, so no <defunct> entry lingers in ps right after down
    deadline=$((SECONDS + 3))
    for pid in $pids; do
      while [[ -d "/proc/$pid" ]] && ((SECONDS < deadline)); do sleep 0.1; done
    done
  fi
  rm -f "$(pidfile_of "$comp")"
  [[ -z "$(stack_pids "$comp")" ]]
}

# ---------------------------------------------------------------------------------------------
# subcommands

component_state() {
  local comp="$1" pid port
  port="$(port_of "$comp")"
  pid="$(live_pid "$comp")"
  if [[ -n "$pid" ]]; then
    if component_ready "$comp"; then echo "running $pid"; else echo "starting $pid"; fi
  elif port_listening "$port"; then
    echo "port-busy -"
  else
    echo "stopped -"
  fi
}

cmd_status() {
  local comp state pid rc=0
  for comp in "${COMPONENTS[@]}"; do
    read -r state pid < <(component_state "$comp")
    printf '%-9s %-9s pid=%s port=%s\n' "$comp" "$state" "$pid" "$(port_of "$comp")"
    [[ "$state" == running ]] || rc=1
  done
  return "$rc"
}

# Serialises up/down. fd 9 must not leak into the daemons: see close_extra_fds.
lock_stack() {
  mkdir -p "$STACK_DIR"
  exec 9>"$STACK_DIR/stack.lock"
  if command -v flock >/dev/null 2>&1; then
    flock -w 300 9 || die "another 'stack.sh up/down' holds $STACK_DIR/stack.lock for 300s"
  fi
}

# components this `up` started; if `up` fails they are stopped again (no half-started stack)
STARTED=()
cleanup_failed_up() {
  local rc=$? comp
  trap - EXIT
  if ((rc != 0 && ${#STARTED[@]} > 0)); then
    log "up failed; stopping what this run started: ${STARTED[*]}"
    for comp in "${STARTED[@]}"; do stop_component "$comp" >/dev/null 2>&1 || true; done
  fi
  exit "$rc"
}

cmd_up() {
  local t0=$SECONDS
  trap cleanup_failed_up EXIT
  lock_stack
  mkdir -p "$PID_DIR" "$LOG_DIR" "$DATA_DIR" "$CONF_DIR" "$CACHE_DIR"
  ensure_debian_tools
  ensure_kafka_libs

  # Kafka is slowest: launch it first, start the others while it boots, then wait for it.
  local kafka_started=0
  if [[ -n "$(live_pid kafka)" ]]; then
    log "kafka: already running (pid $(live_pid kafka))"
  else
    STARTED+=(kafka)
    start_kafka
    kafka_started=1
  fi
  if [[ -n "$(live_pid redis)" ]]; then
    redis_ready || fail_component redis "process $(live_pid redis) is running but does not answer PING" "$LOG_DIR/redis.log"
    log "redis: already running (pid $(live_pid redis))"
  else
    STARTED+=(redis)
    start_redis
  fi
  if [[ -n "$(live_pid mosquitto)" ]]; then
    log "mosquitto: already running (pid $(live_pid mosquitto))"
  else
    STARTED+=(mosquitto)
    start_mosquitto
  fi
  if [[ -n "$(live_pid postgres)" ]]; then
    pg_ready || fail_component postgres "process $(live_pid postgres) is running but does not accept connections" "$LOG_DIR/postgres.log"
    log "postgres: already running (pid $(live_pid postgres))"
  else
    STARTED+=(postgres)
    start_postgres
  fi
  wait_kafka
  if ((kafka_started)); then log "kafka: ready"; fi
  STARTED=()
  log "up in $((SECONDS - t0))s"
  cmd_status
}

cmd_down() {
  local comp rc=0 port
  lock_stack
  for comp in postgres mosquitto redis kafka; do
    stop_component "$comp" || { log "$comp: a process survived SIGKILL: $(stack_pids "$comp" | tr '\n' ' ')"; rc=1; }
  done
  # verify: no process of this stack remains and none of our ports is still held by one
  for comp in "${COMPONENTS[@]}"; do
    if [[ -n "$(stack_pids "$comp")" ]]; then
      log "$comp: still running after down"
      rc=1
    fi
  done
  for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$REDIS_PORT" "$MQTT_PORT" "$PG_PORT"; do
    if port_listening "$port"; then
      log "warning: port $port is still in use (not by this stack): $(port_owner "$port")"
    fi
  done
  if ((rc == 0)); then log "down: kafka, redis, mosquitto, postgres stopped"; fi
  return "$rc"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *)
    sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
