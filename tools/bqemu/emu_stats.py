"""Counters the tests read back through GET /_emu/stats.

Everything is in memory and cleared by POST /_emu/reset.  The insertAll log
keeps one entry per insertAll request (time, status, rows, request number),
bounded to the last LOG_MAX entries, so a test can count the requests a client
made during a 429 storm and see how far apart they were.

The Storage Write (gRPC) service keeps its own section, "write": the final
status of every call per method, the outcome of every AppendRowsRequest, row
counts (appended, deduplicated = sent again at an offset that already existed,
rejected = in requests that failed), and append_rows_log, one entry per
AppendRows response (time, stream, offset, rows, status code name).
"""

import collections
import threading
import time

LOG_MAX = 200000


class Stats:
    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self):
        with self._lock:
            self.started = time.time()
            self.requests = collections.defaultdict(collections.Counter)   # endpoint -> status -> n
            self.counters = collections.Counter()
            self.row_errors = collections.Counter()                        # reason -> n
            self.tables = collections.defaultdict(collections.Counter)     # "p.d.t" -> counter
            self.token_grants = collections.Counter()
            self.token_failures = collections.Counter()
            self.faults_fired = collections.Counter()
            self.user_projects = collections.Counter()
            self.insert_log = collections.deque(maxlen=LOG_MAX)
            self.write_calls = collections.defaultdict(collections.Counter)     # method -> code -> n
            self.write_appends = collections.Counter()                          # code -> n (per request)
            self.write_counters = collections.Counter()
            self.write_tables = collections.defaultdict(collections.Counter)
            self.append_log = collections.deque(maxlen=LOG_MAX)

    def request(self, endpoint, status):
        with self._lock:
            self.requests[endpoint][str(status)] += 1

    def add(self, name, n=1):
        with self._lock:
            self.counters[name] += n

    def fault_fired(self, kind):
        with self._lock:
            self.faults_fired[kind] += 1

    def token_grant(self, kind):
        with self._lock:
            self.token_grants[kind] += 1

    def token_failure(self, error):
        with self._lock:
            self.token_failures[error] += 1

    def user_project(self, project):
        with self._lock:
            self.user_projects[project] += 1

    def insert_result(self, table, received, stored, deduplicated, errors_by_reason):
        with self._lock:
            c = self.counters
            c["rows_received"] += received
            c["rows_stored"] += stored
            c["rows_deduplicated"] += deduplicated
            t = self.tables[table]
            t["received"] += received
            t["stored"] += stored
            t["deduplicated"] += deduplicated
            for reason, n in errors_by_reason.items():
                self.row_errors[reason] += n
                t["errors_" + reason] += n
                c["row_errors"] += n

    def log_insert(self, entry):
        with self._lock:
            self.insert_log.append(entry)

    def write_call(self, method, code):
        with self._lock:
            self.write_calls[method][code] += 1

    def write_add(self, name, n=1):
        with self._lock:
            self.write_counters[name] += n

    def write_append(self, entry, appended=0, deduplicated=0, rejected=0):
        """One AppendRows response: entry = {t, stream, table, offset, rows, code, ms, ...}."""
        with self._lock:
            self.write_appends[entry["code"]] += 1
            c, t = self.write_counters, self.write_tables[entry.get("table") or "?"]
            c["rows_received"] += entry.get("rows") or 0
            c["rows_appended"] += appended
            c["rows_deduplicated"] += deduplicated
            c["rows_rejected"] += rejected
            t["appended"] += appended
            t["deduplicated"] += deduplicated
            t["rejected"] += rejected
            self.append_log.append(entry)

    def snapshot(self, include_log=True):
        with self._lock:
            c = self.counters
            snap = {
                "started": self.started,
                "uptime_s": round(time.time() - self.started, 3),
                "requests": {ep: dict(st) for ep, st in self.requests.items()},
                "connections": c["connections"],
                "tls_handshake_failures": c["tls_handshake_failures"],
                "rows": {
                    "received": c["rows_received"],
                    "stored": c["rows_stored"],
                    "deduplicated": c["rows_deduplicated"],
                    "errors": c["row_errors"],
                    "errors_by_reason": dict(self.row_errors),
                },
                "tables": {t: dict(v) for t, v in self.tables.items()},
                "bytes": {"wire": c["bytes_wire"], "decompressed": c["bytes_decompressed"],
                          "gzip_requests": c["gzip_requests"]},
                "token_grants": dict(self.token_grants),
                "token_failures": dict(self.token_failures),
                "auth_failures": c["auth_failures"],
                "faults_fired": dict(self.faults_fired),
                "user_projects": dict(self.user_projects),
                "counters": dict(c),
            }
            w = self.write_counters
            snap["write"] = {
                "calls": {m: dict(v) for m, v in self.write_calls.items()},
                "append_requests": dict(self.write_appends),
                "rows": {"received": w["rows_received"], "appended": w["rows_appended"],
                         "deduplicated": w["rows_deduplicated"], "rejected": w["rows_rejected"]},
                "tables": {t: dict(v) for t, v in self.write_tables.items()},
                "counters": {k: v for k, v in w.items() if not k.startswith("rows_")},
            }
            if include_log:
                snap["insert_all_log"] = list(self.insert_log)
                snap["write"]["append_rows_log"] = list(self.append_log)
            return snap
