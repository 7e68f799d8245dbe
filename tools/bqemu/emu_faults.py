"""Fault injection: a queue of misbehaviours the services consult per request.

A fault is queued as a JSON object (POST /_emu/faults or `bqemu.py fault`)
with exactly one kind key:

  {"status": 429, "count": 3, "reason": ..., "message": ..., "retry_after": 2}
        answer with this HTTP status and a Google error body instead of working
  {"latency_ms": 1500, "count": 2} / {"latency_ms": 200, "for_s": 10}
        sleep before handling the request
  {"drop": 2, "mode": "close"|"reset", "after_commit": false}
        read the request, then close the connection without answering;
        after_commit=true does the work first (rows are stored) and loses only the answer
  {"truncate": 1, "truncate_at": 10}
        do the work, send the headers and only part of the body, then close
  {"reject_pattern": "regex", "reason": "invalid", "message": "..."}
        rows whose JSON text matches get a per-row error with that reason
  {"down": true} / {"down": false}
        drop every request (all endpoints except /_emu/) until turned off
  {"grpc": "UNAVAILABLE", "message": ..., "in_stream": false}
        Storage Write only: fail with this gRPC status (name or number); an
        AppendRows call is closed with it, or with in_stream=true only that
        request fails (AppendRowsResponse.error) and the call stays open
  {"idle_close": true}
        Storage Write only: close the AppendRows call with ABORTED and the
        service's idle-timeout message at the next request

Common keys: "path" (endpoint name or list: insertAll, token, tables, datasets,
metadata, write; "*" for all; default insertAll, except down = all and
grpc/idle_close = write), "method" (write path only: which BigQueryWrite
method(s): AppendRows (default), CreateWriteStream, GetWriteStream,
FinalizeWriteStream, BatchCommitWriteStreams, FlushRows, a list, or "*";
down defaults to "*"),
"table" ("project.dataset.table" or bare table id; for path token, the token
URL path, /token or /oauth2/v4/token, so that only the key files whose
token_uri names it are affected: {"latency_ms": 8000, "path": "token",
"table": "/oauth2/v4/token", "for_s": 5} makes that token endpoint hang), "count" (requests it
applies to; null = unlimited), "for_s" (active for this many seconds),
"after" (let this many matching requests pass first).

Counting: status/drop/truncate/latency/grpc/idle_close default to count 1;
reject_pattern and down last until removed (DELETE /_emu/faults or POST
/_emu/reset).  Action faults (status, drop, truncate, down, grpc, idle_close)
are taken first-in first-out: queue {"status":429,"count":3} then
{"status":503} to get three 429s and one 503.  On the write path a fault is
counted per AppendRowsRequest message (and per call of the unary methods).
"""

import re
import threading
import time

ENDPOINTS = ("insertAll", "token", "tables", "datasets", "metadata", "write")
WRITE_METHODS = ("CreateWriteStream", "AppendRows", "GetWriteStream", "FinalizeWriteStream",
                 "BatchCommitWriteStreams", "FlushRows")
ACTION_KINDS = ("status", "drop", "truncate", "down", "grpc", "idle_close")
_KIND_KEYS = {"status": "status", "latency_ms": "latency", "drop": "drop", "truncate": "truncate",
              "reject_pattern": "reject", "down": "down", "grpc": "grpc", "idle_close": "idle_close"}
_COMMON = {"path", "table", "count", "for_s", "after", "comment", "method"}
_EXTRA = {
    "status": {"reason", "message", "retry_after", "body", "content_type"},
    "latency": set(),
    "drop": {"mode", "after_commit"},
    "truncate": {"truncate_at"},
    "reject": {"reason", "message"},
    "down": {"mode"},
    "grpc": {"message", "in_stream"},
    "idle_close": {"message"},
}
# gRPC status codes by name (google.rpc.Code).
GRPC_CODES = {"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
              "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
              "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
              "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16}
GRPC_NAMES = {v: k for k, v in GRPC_CODES.items()}


class Fault:
    def __init__(self, fid, kind, spec):
        self.id, self.kind, self.spec = fid, kind, dict(spec)
        default_path = {"down": "*", "grpc": "write", "idle_close": "write"}.get(kind, "insertAll")
        path = spec.get("path", default_path)
        if path in ("*", "any", "all", None):
            self.paths = None
        else:
            paths = [path] if isinstance(path, str) else path
            if not isinstance(paths, list) or not all(p in ENDPOINTS for p in paths):
                raise ValueError("path must be one of %s, '*', or a list of them" % ", ".join(ENDPOINTS))
            self.paths = frozenset(paths)
        if kind in ("grpc", "idle_close") and self.paths != frozenset(["write"]):
            raise ValueError("%s faults apply to the write path only" % kind)
        if kind == "truncate" and (self.paths is None or "write" in self.paths):
            if "path" in spec:
                raise ValueError("truncate does not apply to the write path (gRPC)")
        method = spec.get("method", "*" if kind == "down" else "AppendRows")
        if method in ("*", "any", "all", None):
            self.methods = None
        else:
            methods = [method] if isinstance(method, str) else method
            if not isinstance(methods, list) or not all(m in WRITE_METHODS for m in methods):
                raise ValueError("method must be one of %s, '*', or a list of them" % ", ".join(WRITE_METHODS))
            self.methods = frozenset(methods)
        if kind == "idle_close" and self.methods != frozenset(["AppendRows"]):
            raise ValueError("idle_close applies to AppendRows only")
        self.table = spec.get("table")
        if self.table is not None and not isinstance(self.table, str):
            raise ValueError("table must be a string")
        default_count = None if kind in ("reject", "down") or "for_s" in spec else 1
        if kind in ("drop", "truncate") and not isinstance(spec[kind], bool):
            if "count" in spec:
                raise ValueError("give the number of requests as the value of %r, not as count" % kind)
            default_count = spec[kind]
        self.remaining = spec.get("count", default_count)
        if self.remaining is not None and (not isinstance(self.remaining, int) or self.remaining < 1):
            raise ValueError("count must be a positive integer or null (unlimited)")
        for_s = spec.get("for_s")
        if for_s is not None and (not isinstance(for_s, (int, float)) or for_s <= 0):
            raise ValueError("for_s must be a positive number of seconds")
        self.until = time.monotonic() + for_s if for_s else None
        self.after = spec.get("after", 0)
        if not isinstance(self.after, int) or self.after < 0:
            raise ValueError("after must be a non-negative integer")
        self.fired = 0
        self._check_kind(spec)

    def _check_kind(self, spec):
        k = self.kind
        if k == "status":
            st = spec["status"]
            if not isinstance(st, int) or not 400 <= st <= 599:
                raise ValueError("status must be an HTTP error status 400..599")
            ra = spec.get("retry_after")
            if ra is not None and (not isinstance(ra, (int, float)) or ra < 0):
                raise ValueError("retry_after must be a number of seconds")
        elif k == "latency":
            if not isinstance(spec["latency_ms"], (int, float)) or spec["latency_ms"] < 0:
                raise ValueError("latency_ms must be a non-negative number")
        elif k in ("drop", "down"):
            modes = ("close", "reset", "cancel") if k == "drop" else ("close", "reset")
            if spec.get("mode", "close") not in modes:
                raise ValueError("mode must be one of %s" % ", ".join(modes))
            if spec.get("mode") == "cancel" and self.paths != frozenset(["write"]):
                raise ValueError("mode 'cancel' (end only the gRPC call) needs path 'write'")
        elif k == "grpc":
            code = spec["grpc"]
            if isinstance(code, str) and code.upper() in GRPC_CODES:
                code = GRPC_CODES[code.upper()]
            if isinstance(code, bool) or not isinstance(code, int) or not 1 <= code <= 16:
                raise ValueError("grpc must be a gRPC status name (UNAVAILABLE, ...) or number 1..16")
            self.grpc_code = code
            if not isinstance(spec.get("in_stream", False), bool):
                raise ValueError("in_stream must be true or false")
        elif k == "idle_close":
            if spec["idle_close"] is not True:
                raise ValueError("idle_close must be true")
        elif k == "truncate":
            ta = spec.get("truncate_at")
            if ta is not None and (not isinstance(ta, int) or ta < 0):
                raise ValueError("truncate_at must be a byte count")
        elif k == "reject":
            try:
                self.regex = re.compile(spec["reject_pattern"])
            except (re.error, TypeError) as e:
                raise ValueError("reject_pattern is not a valid regular expression: %s" % e)

    def live(self, now):
        return (self.remaining is None or self.remaining > 0) and (self.until is None or now < self.until)

    def matches(self, endpoint, table, method=None):
        if self.paths is not None and endpoint not in self.paths:
            return False
        if endpoint == "write" and self.methods is not None and method not in self.methods:
            return False
        if self.table is not None:
            if table is None:
                return False
            if self.table != table and self.table != table.rsplit(".", 1)[-1]:
                return False
        return True

    def fire(self):
        self.fired += 1
        if self.remaining is not None:
            self.remaining -= 1

    def describe(self):
        d = dict(self.spec)
        d.update({"id": self.id, "kind": self.kind, "fired": self.fired, "remaining": self.remaining})
        if self.until is not None:
            d["seconds_left"] = round(max(0.0, self.until - time.monotonic()), 3)
        return d


class FaultQueue:
    def __init__(self, stats=None):
        self._faults = []
        self._next_id = 1
        self._lock = threading.Lock()
        self.stats = stats

    def add(self, spec):
        """Queue one fault spec (dict).  Returns its description, or None for {"down": false}."""
        if not isinstance(spec, dict):
            raise ValueError("a fault must be a JSON object")
        kinds = [k for k in _KIND_KEYS if k in spec]
        if len(kinds) != 1:
            raise ValueError("a fault needs exactly one of: %s" % ", ".join(_KIND_KEYS))
        kind = _KIND_KEYS[kinds[0]]
        unknown = set(spec) - _COMMON - _EXTRA[kind] - {kinds[0]}
        if unknown:
            raise ValueError("unknown keys for a %s fault: %s" % (kind, ", ".join(sorted(unknown))))
        if kind == "down" and not spec["down"]:
            with self._lock:
                self._faults = [f for f in self._faults if f.kind != "down"]
            return None
        with self._lock:
            f = Fault(self._next_id, kind, spec)
            self._next_id += 1
            self._faults.append(f)
        return f.describe()

    def clear(self):
        with self._lock:
            n = len(self._faults)
            self._faults = []
            return n

    def describe(self):
        now = time.monotonic()
        with self._lock:
            self._faults = [f for f in self._faults if f.live(now)]
            return [f.describe() for f in self._faults]

    def _fired(self, f):
        f.fire()
        if self.stats is not None:
            self.stats.fault_fired(f.kind)

    def take_latency(self, endpoint, table=None, method=None):
        """Total milliseconds to sleep for this request (consumes latency faults)."""
        total = 0.0
        now = time.monotonic()
        with self._lock:
            for f in self._faults:
                if f.kind == "latency" and f.live(now) and f.matches(endpoint, table, method):
                    if f.after > 0:
                        f.after -= 1
                        continue
                    self._fired(f)
                    total += f.spec["latency_ms"]
        return total

    def take_action(self, endpoint, table=None, method=None):
        """The first live action fault (status/drop/truncate/down/grpc/idle_close) for this
        request, consumed; or None."""
        now = time.monotonic()
        chosen = None
        with self._lock:
            for f in self._faults:
                if f.kind in ACTION_KINDS and f.live(now) and f.matches(endpoint, table, method):
                    if f.after > 0:
                        f.after -= 1
                        continue
                    if chosen is None:
                        chosen = f
                        self._fired(f)
        return chosen

    def peek_down(self, endpoint, method="AppendRows"):
        """The live "down" fault for this endpoint, if any (not consumed: down lasts)."""
        now = time.monotonic()
        with self._lock:
            for f in self._faults:
                if f.kind == "down" and f.live(now) and f.matches(endpoint, None, method):
                    return f
        return None

    def take_row_rules(self, endpoint, table=None, method=None):
        """Live reject_pattern faults for this request: list of (regex, reason, message)."""
        now = time.monotonic()
        rules = []
        with self._lock:
            for f in self._faults:
                if f.kind == "reject" and f.live(now) and f.matches(endpoint, table, method):
                    if f.after > 0:
                        f.after -= 1
                        continue
                    self._fired(f)
                    rules.append((f.regex, f.spec.get("reason", "invalid"),
                                  f.spec.get("message") or "Row rejected by injected fault (pattern %r)."
                                  % f.spec["reject_pattern"]))
        return rules
