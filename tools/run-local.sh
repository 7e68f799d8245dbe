#!/bin/sh
# make run: starts relayd in the foreground with a local config under ./run/.
#
# Where rows go:
#  - run/relayd.conf exists and is your own (no "written by make run" line): it is used as is;
#  - GOOGLE_APPLICATION_CREDENTIALS, RELAYD_PROJECT and RELAYD_DATASET are set: real BigQuery;
#  - otherwise: the bundled local BigQuery emulator (tools/bqemu), started here over TLS.
# Ctrl-C stops relayd (and the emulator); acknowledged rows stay in ./run/spool.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
run="$top/run"
py=/usr/bin/python3
mkdir -p "$run"
conf="$run/relayd.conf"
marker="# written by make run"
emu_pid=""
relayd_pid=""

cleanup() {
    trap - EXIT INT TERM
    set +e    # Ctrl-C is the normal way out: make must not report an error for it
    if [ -n "$relayd_pid" ]; then kill -TERM "$relayd_pid" 2>/dev/null; wait "$relayd_pid" 2>/dev/null; fi
    [ -n "$emu_pid" ] && kill "$emu_pid" 2>/dev/null
    exit 0
}
trap cleanup EXIT INT TERM

write_conf() {   # $1: destination keys
    cat > "$conf" <<CONF
$marker ($2). Edit freely: remove the line above to keep your edits.
# Every key: docs/configuration.md
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
$1
CONF
}

mode=own
if [ ! -f "$conf" ] || grep -q "^$marker" "$conf"; then
    if [ -n "${GOOGLE_APPLICATION_CREDENTIALS:-}" ] && [ -n "${RELAYD_PROJECT:-}" ] && [ -n "${RELAYD_DATASET:-}" ]; then
        mode=bigquery
        write_conf "project = $RELAYD_PROJECT
dataset = $RELAYD_DATASET
table = ${RELAYD_TABLE:-events}
credentials = adc" "BigQuery"
    else
        mode=emulator
        emu="$run/bqemu"
        mkdir -p "$emu"
        [ -f "$emu/tls/ca.pem" ] || $py tools/bqemu/bqemu.py gen-tls --dir "$emu/tls" >/dev/null
        rm -f "$emu/ready.json"
        $py tools/bqemu/bqemu.py serve --dir "$emu/data" --port 0 \
            --tls-cert "$emu/tls/server.pem" --tls-key "$emu/tls/server.key" \
            --ready-file "$emu/ready.json" 2>"$emu/bqemu.log" &
        emu_pid=$!
        i=0
        while [ ! -f "$emu/ready.json" ]; do
            i=$((i + 1))
            if [ $i -gt 300 ] || ! kill -0 "$emu_pid" 2>/dev/null; then
                echo "make run: the emulator did not start; see $emu/bqemu.log" >&2; exit 1
            fi
            sleep 0.1
        done
        url=$($py -c 'import json,sys; print(json.load(open(sys.argv[1]))["base_url"])' "$emu/ready.json")
        $py tools/bqemu/bqemu.py gen-key --dir "$emu/data" --out "$emu/key.json" --token-uri "$url/token" >/dev/null
        chmod 600 "$emu/key.json"
        cat > "$emu/events.schema.json" <<'SCHEMA'
{"fields": [
  {"name": "user", "type": "STRING"}, {"name": "action", "type": "STRING"},
  {"name": "n", "type": "INTEGER"}, {"name": "ok", "type": "BOOLEAN"},
  {"name": "ts", "type": "TIMESTAMP"}, {"name": "msg", "type": "STRING"}]}
SCHEMA
        $py tools/bqemu/bqemu.py create-table --dir "$emu/data" demo.relayd.events \
            --schema "$emu/events.schema.json" --replace >/dev/null
        write_conf "project = demo
dataset = relayd
table = events
credentials = $emu/key.json
endpoint = $url
ca_file = $emu/tls/ca.pem
flush_interval = 100ms" "local emulator"
    fi
fi

cat <<MSG
relayd is starting with $conf ($mode)

Pipe rows in (one JSON object per line; each is acknowledged once durable):
  echo '{"user":"ada","action":"login","n":1}' | socat - UNIX-CONNECT:$run/relayd.sock
  ./build/relayctl -c $conf send rows.ndjson
See the queue and delivery:
  ./build/relayctl -c $conf status
MSG
if [ "$mode" = emulator ]; then
cat <<MSG
See what arrived in the emulator's table demo.relayd.events (columns: user, action, n, ok, ts, msg;
a row with other columns or wrong types goes to the dead-letter store):
  $py tools/bqemu/bqemu.py rows --dir $run/bqemu/data --table demo.relayd.events
MSG
fi
echo "Press Ctrl-C to stop."
echo
./build/relayd -c "$conf" &
relayd_pid=$!
wait "$relayd_pid"
