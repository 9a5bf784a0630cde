#!/usr/bin/env bash
# Queue mode side by side: `sluice bench --mode queue` and the same closed loop (peers-queue)
# against Redis Streams (XREADGROUP + XACK) and NATS JetStream (work-queue stream, explicit
# ack), 100 B and 1 KiB jobs, 1 and 4 worker connections, concurrency 64. One RESULT line each.
# Durability as each ships it, and Redis also with appendfsync always: Sluice acks are fsynced
# (fsync = always, group commit); Redis AOF everysec; NATS 2.9 syncs every 2 minutes.
# usage: benches/peers-queue/run.sh [COUNT=100000]   (from the repository root)
set -euo pipefail
N=${1:-100000}
GEN_DIR=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$GEN_DIR/../.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
source "$PEERS/common.sh"
apt_need redis-server redis-tools nats-server
(cd "$ROOT" && cargo build --release -q -p sluice-server)
cargo build --release -q --manifest-path "$GEN_DIR/Cargo.toml"
SLUICE=$ROOT/target/release/sluice; GEN=$GEN_DIR/target/release/peers-queue
D=$(mktemp -d /tmp/peers-queue.XXXX)
"$SLUICE" serve --data-dir "$D/sluice" --grpc-addr 127.0.0.1:17370 --http-addr 127.0.0.1:17371 2>"$D/sluice.log" & SP=$!
redis-server --bind 127.0.0.1 --port 6390 --dir "$D" --save '' --appendonly yes --appendfsync everysec \
  --protected-mode yes --daemonize no --logfile "$D/redis.log" & RP=$!
nats-server -a 127.0.0.1 -p 4222 -js -sd "$D/js" -l "$D/nats.log" & NP=$!
trap 'rc=$?; kill $SP $RP $NP 2>/dev/null || true; wait $SP $RP $NP 2>/dev/null || true; rm -rf "$D"; exit $rc' EXIT
wait_port 17370; wait_port 6390; wait_port 4222
for SZ in 100 1024; do
  for W in 1 4; do
    r=$(timeout 300 "$SLUICE" --broker 127.0.0.1:17370 bench --mode queue --count "$N" --record-size $SZ --workers $W --concurrency 64 --json)
    echo "RESULT peer=sluice size=$SZ workers=$W $r"
    redis-cli -p 6390 config set appendfsync everysec >/dev/null
    timeout 300 "$GEN" redis --size $SZ --count "$N" --workers $W --concurrency 64
    redis-cli -p 6390 config set appendfsync always >/dev/null
    echo -n "(appendfsync always) "; timeout 300 "$GEN" redis --size $SZ --count "$N" --workers $W --concurrency 64
    timeout 300 "$GEN" nats --size $SZ --count "$N" --workers $W --concurrency 64
  done
done
