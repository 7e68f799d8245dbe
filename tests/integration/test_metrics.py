"""Prometheus metrics and health endpoints agree with what happened."""
import json
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request

from relaytest import (EVENTS_SCHEMA, Emulator, Producer, RelayTest, TOOLS, deliver_to,
                       wait_for)

TABLE = "proj.logs.events"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def scrape(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text, name, **labels):
    """The value of one sample, matched by name and labels."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"([a-z_]+)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return None


class MetricsTest(RelayTest):
    def test_metrics_agree_with_the_emulator_and_the_dead_letter_store(self):
        emu = Emulator(self).start()
        emu.create_table(TABLE, EVENTS_SCHEMA)
        port = free_port()
        d = self.daemon(dests=[("events", deliver_to(emu))],
                        relayd__metrics_listen=f"127.0.0.1:{port}")
        d.start()
        base = f"http://127.0.0.1:{port}"
        self.assertEqual(scrape(base + "/healthz"), (200, "ok\n"))
        self.assertEqual(scrape(base + "/readyz"), (200, "ready\n"))
        lines = [json.dumps({"i": i} if i % 50 else {"i": "bad%d" % i}) for i in range(1000)]
        lines += ["not json", "[1]"]
        p = Producer(d.sock)
        p.send_lines(lines)
        p.finish()
        wait_for(lambda: d.status()["spool"]["records"] == 0, 60, "the queue to drain")
        code, text = scrape(base + "/metrics")
        self.assertEqual(code, 200)
        delivered = emu.count(TABLE)
        dlq = subprocess.run([os.path.join(TOOLS, "dlq_dump"), d.spool], stdout=subprocess.PIPE,
                             check=True).stdout.splitlines()
        self.assertEqual(delivered, 980)
        self.assertEqual(len(dlq), 20)
        self.assertEqual(metric(text, "relayd_delivered_total", destination="events"), delivered)
        self.assertEqual(metric(text, "relayd_dead_lettered_total", destination="events"), len(dlq))
        self.assertEqual(metric(text, "relayd_dead_lettered_by_reason_total", destination="events",
                                reason="invalid"), len(dlq))
        self.assertEqual(metric(text, "relayd_dead_letters"), len(dlq))
        self.assertEqual(metric(text, "relayd_ingest_records_total"), 1000)
        self.assertEqual(metric(text, "relayd_acked_records_total"), 1000)
        self.assertEqual(metric(text, "relayd_ingest_refused_total", reason="json"), 1)
        self.assertEqual(metric(text, "relayd_ingest_refused_total", reason="not-object"), 1)
        self.assertEqual(metric(text, "relayd_spool_records", destination="events"), 0)
        reqs = metric(text, "relayd_requests_total", destination="events")
        self.assertEqual(metric(text, "relayd_request_duration_seconds_count", destination="events"), reqs)
        self.assertEqual(metric(text, "relayd_request_duration_seconds_bucket", destination="events",
                                le="+Inf"), reqs)
        self.assertGreaterEqual(metric(text, "relayd_token_refreshes_total", destination="events"), 1)
        self.assertEqual(metric(text, "relayd_state", state="accepting"), 1)
        self.assertEqual(scrape(base + "/nosuch")[0], 404)

    def test_readyz_says_when_the_spool_is_full(self):
        port = free_port()
        d = self.daemon(spool__max_spool_bytes="2M", ingest__max_record_bytes="64K",
                        ingest__full_wait="200ms", relayd__metrics_listen=f"127.0.0.1:{port}")
        d.start()
        path = os.path.join(d.dir, "rows.ndjson")
        with open(path, "w") as f:
            for i in range(4000):
                f.write(json.dumps({"i": i, "pad": "z" * 1000}) + "\n")
        import threading
        sender = threading.Thread(target=d.relayctl, args=("send", path), kwargs={"timeout": 120})
        sender.start()
        seen = []

        def not_ready():
            code, body = scrape(f"http://127.0.0.1:{port}/readyz")
            seen.append((code, body.strip()))
            return code == 503
        wait_for(not_ready, 60, "/readyz to say the spool is full", interval=0.02)
        sender.join(120)
        self.assertIn(seen[-1][1], ("backpressure", "refusing"))
        self.assertEqual(scrape(f"http://127.0.0.1:{port}/healthz")[0], 200)

    def test_metrics_on_a_unix_socket_and_only_on_loopback(self):
        path = "/tmp/relayd-metrics-%d.sock" % os.getpid()
        d = self.daemon(relayd__metrics_listen="unix:" + path)
        d.start()
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        self.assertIn(b"200", data.split(b"\r\n")[0])
        self.assertIn(b"relayd_up 1", data)
        self.assertEqual(d.stop(), 0)
        bad = self.daemon(relayd__metrics_listen="0.0.0.0:9273")
        r = subprocess.run([os.path.join(os.path.dirname(TOOLS), "relayd"), "--check-config", "-c",
                            bad.conf], stderr=subprocess.PIPE)
        self.assertEqual(r.returncode, 3)
        self.assertIn(b"loopback", r.stderr)
