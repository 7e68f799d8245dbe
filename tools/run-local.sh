#!/bin/sh
# make run: starts relayd in the foreground with a local config under ./run/,
# and says how to pipe records in. Ctrl-C stops it (acked records stay in
# ./run/spool and are there at the next start).
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
run="$top/run"
mkdir -p "$run"
conf="$run/relayd.conf"
if [ ! -f "$conf" ]; then
    cat > "$conf" <<CONF
# Local development config written by 'make run'. See docs/configuration.md.
[relayd]
log_level = info
control_socket = $run/relayd.ctl

[spool]
dir = $run/spool
max_spool_bytes = 1G
durability = fsync

[ingest]
socket = $run/relayd.sock
default_table = events

[destination events]
[destination audit]
CONF
fi
cat <<MSG
relayd is starting with $conf

Pipe records in (one JSON object per line; each is acknowledged once durable):
  echo '{"user":"ada","action":"login"}' | socat - UNIX-CONNECT:$run/relayd.sock
  ./build/relayctl -c $conf send rows.ndjson
  ./build/relayctl -c $conf send --table audit rows.ndjson
See what is queued:
  ./build/relayctl -c $conf status
  ./build/relayctl -c $conf spool dump --limit 10

Delivery to BigQuery is not built yet: records stay queued in $run/spool.
Press Ctrl-C to stop.

MSG
exec ./build/relayd -c "$conf"
