"""The running emulator: shared state and the services that use it.

Emulator holds what every service shares: the table store, the token store,
the key registries, the fault queue and the stats.  A service is an object
with start() (bind and begin serving in a thread), stop() and ready_info()
(the keys it adds to the ready file).  serve() starts the HTTPS REST service
and, when asked, the metadata service and the Storage Write gRPC service
(emu_grpc), which share the store, tokens, faults and stats.

Once every service listens, the ready file is written atomically (temp file +
rename) with the real ports, so a test waits for the file rather than
sleeping.  SIGTERM or SIGINT stop the services, close the store and remove
the ready file.
"""

import json
import logging
import os
import signal
import sys
import threading

from emu_auth import KeyRegistry, TokenStore, UserRegistry, SELF_SIGNED_AUDIENCES
from emu_faults import FaultQueue
from emu_http import EmuHTTPServer
from emu_metadata import MetadataHandler
from emu_rest import RestHandler
from emu_schema import SchemaError
from emu_stats import Stats
from emu_store import Store
from emu_tls import server_context

log = logging.getLogger("bqemu")


class Config:
    """Settings of a running emulator (filled from the `serve` command line)."""

    def __init__(self, **kw):
        self.data_dir = kw.get("data_dir")
        self.host = kw.get("host", "127.0.0.1")
        self.port = kw.get("port", 0)
        self.metadata_port = kw.get("metadata_port")
        self.tls_cert = kw.get("tls_cert")
        self.tls_key = kw.get("tls_key")
        self.token_lifetime = kw.get("token_lifetime", 3600)
        self.fast = kw.get("fast", False)
        self.dedup_window = kw.get("dedup_window", 60.0)
        self.max_request_bytes = kw.get("max_request_bytes", 10485760)
        self.max_rows = kw.get("max_rows", 50000)
        self.idle_timeout = kw.get("idle_timeout", 120.0)
        self.project = kw.get("project", "emu-project")
        self.numeric_project = kw.get("numeric_project", 123456789012)
        self.sa_email = kw.get("sa_email") or "bqemu-vm@%s.iam.gserviceaccount.com" % self.project
        self.schema_dirs = kw.get("schema_dirs") or []
        self.ready_file = kw.get("ready_file")
        self.grpc_port = kw.get("grpc_port")                     # None: no Storage Write service
        self.grpc_idle_timeout = kw.get("grpc_idle_timeout", 600.0)
        self.grpc_max_request_bytes = kw.get("grpc_max_request_bytes", 10485760)
        self.grpc_workers = kw.get("grpc_workers", 64)


def url_host(host):
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return "[%s]" % host if ":" in host else host


class HttpService:
    def __init__(self, emu, name, port, handler, ssl_ctx):
        self.emu, self.name, self.ssl_ctx = emu, name, ssl_ctx
        self.server = EmuHTTPServer(emu.config.host, port, handler, emu, ssl_ctx)
        self.thread = None

    @property
    def port(self):
        return self.server.port

    @property
    def url(self):
        scheme = "https" if self.ssl_ctx is not None else "http"
        return "%s://%s:%d" % (scheme, url_host(self.emu.config.host), self.port)

    def start(self):
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="bqemu-" + self.name, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Emulator:
    def __init__(self, config):
        self.config = config
        self.pid = os.getpid()
        self.stats = Stats()
        self.faults = FaultQueue(self.stats)
        self.store = Store(config.data_dir, config.dedup_window)
        self.tokens = TokenStore(config.token_lifetime)
        self.keys = KeyRegistry(config.data_dir)
        self.users = UserRegistry(config.data_dir)
        self.base_url = None
        self.services = []
        # IAM: permissions denied to every caller, per table ("p.d.t") or "*" (all)
        self.iam_denied = {}

    def denied(self, permission, project=None, dataset=None, table=None):
        """True if `permission` is denied on the table (or on everything)."""
        if permission in self.iam_denied.get("*", ()):
            return True
        if table is not None:
            return permission in self.iam_denied.get("%s.%s.%s" % (project, dataset, table), ())
        return False

    def self_signed_audiences(self):
        return set(SELF_SIGNED_AUDIENCES) | {self.base_url + "/"}

    def describe(self):
        c = self.config
        return {"data_dir": os.path.abspath(c.data_dir), "base_url": self.base_url,
                "token_uri": self.base_url + "/token", "fast": c.fast,
                "dedup_window": None if c.dedup_window == float("inf") else c.dedup_window,
                "token_lifetime": c.token_lifetime, "max_request_bytes": c.max_request_bytes,
                "max_rows": c.max_rows, "project": c.project, "sa_email": c.sa_email,
                "grpc_idle_timeout": c.grpc_idle_timeout, "grpc_max_request_bytes": c.grpc_max_request_bytes,
                "services": {s.name: s.url for s in self.services}}


def load_schema_dirs(store, dirs):
    """Create (or widen) tables from <dir>/<project>.<dataset>.<table>.json files."""
    n = 0
    for d in dirs:
        for name in sorted(os.listdir(d)):
            if not name.endswith(".json"):
                continue
            parts = name[:-5].split(".")
            if len(parts) != 3:
                log.warning("schema dir: skipping %s (name must be project.dataset.table.json)", name)
                continue
            with open(os.path.join(d, name)) as f:
                schema = json.load(f)
            try:
                store.create_table(*parts, schema, replace=True)
            except SchemaError as e:
                raise SystemExit("bqemu: bad schema in %s: %s" % (os.path.join(d, name), e))
            n += 1
    return n


def write_ready_file(path, info):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def serve(config):
    emu = Emulator(config)
    if config.schema_dirs:
        n = load_schema_dirs(emu.store, config.schema_dirs)
        log.info("loaded %d table schema(s)", n)
    ssl_ctx = None
    if config.tls_cert:
        ssl_ctx = server_context(config.tls_cert, config.tls_key)
    rest = HttpService(emu, "rest", config.port, RestHandler, ssl_ctx)
    emu.services.append(rest)
    emu.base_url = rest.url
    meta = None
    if config.metadata_port is not None:
        meta = HttpService(emu, "metadata", config.metadata_port, MetadataHandler, None)
        emu.services.append(meta)
    grpc_svc = None
    if config.grpc_port is not None:
        from emu_grpc import WriteService
        grpc_svc = WriteService(emu, config.grpc_port, config.tls_cert, config.tls_key)
        emu.services.append(grpc_svc)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for s in emu.services:
        s.start()

    info = {"https_port": rest.port, "port": rest.port,
            "scheme": "https" if ssl_ctx is not None else "http",
            "metadata_port": meta.port if meta else None, "pid": emu.pid,
            "host": config.host, "base_url": rest.url, "token_uri": rest.url + "/token",
            "metadata_url": meta.url if meta else None,
            "data_dir": os.path.abspath(config.data_dir), "fast": config.fast,
            "grpc_port": grpc_svc.port if grpc_svc else None,
            "grpc_target": grpc_svc.target if grpc_svc else None,
            "grpc_tls": grpc_svc.tls if grpc_svc else None}
    if config.ready_file:
        write_ready_file(config.ready_file, info)
    print("bqemu: listening on %s%s%s (data %s%s)" % (
        rest.url, (", metadata " + meta.url) if meta else "",
        (", storage write " + grpc_svc.url) if grpc_svc else "", info["data_dir"],
        ", FAST mode: rows are counted, not stored" if config.fast else ""), flush=True)

    while not stop.wait(0.5):
        pass
    log.info("stopping")
    for s in emu.services:
        s.stop()
    emu.store.close(checkpoint=True)
    if config.ready_file:
        try:
            os.unlink(config.ready_file)
        except OSError:
            pass
    sys.stdout.flush()
    return 0
