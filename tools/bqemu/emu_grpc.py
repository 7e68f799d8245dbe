"""The Storage Write API (gRPC service google.cloud.bigquery.storage.v1.BigQueryWrite).

Served with Python's grpcio on its own port (`serve --grpc-port P`), over TLS
with the same certificate as the REST side when one is configured.  Messages
come from proto/*.proto (emu_pb); the handlers are registered with grpc's
generic handlers and our own (de)serializers, so no generated service code
is needed.

Methods: CreateWriteStream, AppendRows (bidirectional), GetWriteStream,
FinalizeWriteStream, BatchCommitWriteStreams, FlushRows.  Streams live in the
shared SQLite store (emu_store), rows go to the same row tables as insertAll
rows (source "write", with the stream name and offset), so the control API
and `bqemu.py rows` show both alike.

Every call needs "authorization: Bearer <token>" metadata with a token of the
emulator's token store (the REST /token endpoint, the metadata server, the
control API, or a self-signed JWT of a registered key) and one of the scopes
bigquery, bigquery.insertdata or cloud-platform.

How errors are reported follows the service (reference section 1.7):

  in-stream (AppendRowsResponse.error; the call stays open):
      ALREADY_EXISTS / OUT_OF_RANGE for offsets (StorageError
      OFFSET_ALREADY_EXISTS / OFFSET_OUT_OF_RANGE, message "... expected
      offset <end>, received <offset>"), INVALID_ARGUMENT with row_errors for
      bad rows, INVALID_ARGUMENT for an offset on the default stream, a
      finalized stream (STREAM_FINALIZED), an unusable writer schema
      (SCHEMA_MISMATCH_EXTRA_FIELDS for proto fields without a column),
      a request without rows;
  connection-level (the call ends with a status; trailer
  grpc-status-details-bin carries google.rpc.Status):
      UNAUTHENTICATED / PERMISSION_DENIED at call start, INVALID_ARGUMENT for a
      first request without write_stream or writer_schema, an undecodable
      request or one over the size limit ("AppendRows request too large: N
      limit L"), NOT_FOUND for a missing table or stream, ABORTED after
      --grpc-idle-timeout seconds without a request ("Closing the stream
      because it has been inactive for 600 seconds. Entity: ...").

Faults (emu_faults, path "write") are taken per AppendRowsRequest and per
unary call: latency, grpc (close the call with a status, or in_stream),
idle_close, drop (shut the TCP connection down: every call on it dies, the
client sees UNAVAILABLE; mode "cancel" resets only this call; after_commit
appends first), down, reject_pattern (matching rows get row_errors).
"""

import logging
import os
import queue
import re
import secrets
import socket
import struct
import threading
import time
from concurrent import futures

import grpc
from google.protobuf.message import DecodeError

from emu_auth import SCOPE_BIGQUERY, SCOPE_CLOUD, SCOPE_INSERTDATA, AuthError
from emu_common import dumps
from emu_faults import GRPC_NAMES
from emu_pb import SERVICE, STORAGE_ERROR_TYPE_URL, pb
from emu_protorows import SchemaCache, SchemaProblem
from emu_store import STREAM_BUFFERED, STREAM_COMMITTED, STREAM_PENDING

log = logging.getLogger("bqemu")

WRITE_SCOPES = frozenset([SCOPE_BIGQUERY, SCOPE_INSERTDATA, SCOPE_CLOUD])
_STATUS = {sc.value[0]: sc for sc in grpc.StatusCode}

# StorageError.StorageErrorCode
TABLE_NOT_FOUND, STREAM_ALREADY_COMMITTED, STREAM_NOT_FOUND = 1, 2, 3
INVALID_STREAM_TYPE, INVALID_STREAM_STATE, STREAM_FINALIZED = 4, 5, 6
OFFSET_ALREADY_EXISTS, OFFSET_OUT_OF_RANGE = 8, 9

TYPE_NAMES = {STREAM_COMMITTED: "COMMITTED", STREAM_PENDING: "PENDING", STREAM_BUFFERED: "BUFFERED"}
BQ_TYPE_ENUM = {"STRING": 1, "INTEGER": 2, "FLOAT": 3, "RECORD": 4, "BYTES": 5, "BOOLEAN": 6,
                "TIMESTAMP": 7, "DATE": 8, "TIME": 9, "DATETIME": 10, "GEOGRAPHY": 11, "NUMERIC": 12,
                "BIGNUMERIC": 13, "INTERVAL": 14, "JSON": 15, "RANGE": 16}
BQ_MODE_ENUM = {"NULLABLE": 1, "REQUIRED": 2, "REPEATED": 3}

# HTTP status of a "status" fault on the write path -> gRPC code (google.rpc.Code mapping).
HTTP_TO_GRPC = {400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 429: 8, 499: 1, 500: 13, 501: 12,
                503: 14, 504: 4}

DEFAULT_FAULT_MESSAGES = {
    8: "Exceeds 'AppendRows throughput' quota (injected by bqemu): too many bytes appended; "
       "back off and retry.",
    14: "The service is currently unavailable (injected by bqemu).",
    13: "Internal error encountered (injected by bqemu).",
    10: "The operation was aborted (injected by bqemu).",
    4: "Deadline exceeded (injected by bqemu).",
}
ROW_ERRORS_MESSAGE = ("Errors found while processing rows. Please refer to the row_errors field for "
                      "details. The list may not be complete because of the size limitations.")

_TABLE_RE = re.compile(r"^projects/([^/]+)/datasets/([^/]+)/tables/([^/]+)$")
_STREAM_RE = re.compile(r"^(projects/([^/]+)/datasets/([^/]+)/tables/([^/]+))/(?:streams/(_default|[^/]+)|(_default))$")


class Abort(Exception):
    """End the call with this status (raised inside handlers, turned into context.abort)."""

    def __init__(self, code, message, storage=None):
        super().__init__(message)
        self.code, self.message, self.storage = code, message, storage


class Dropped(Exception):
    """The connection was shut down on purpose (fault); nothing more is sent."""


def parse_stream_name(name):
    """-> (table path, (p, d, t), is_default, canonical stream name) or None."""
    m = _STREAM_RE.match(name or "")
    if not m:
        return None
    table_path, p, d, t, sid, bare_default = m.groups()
    is_default = bare_default is not None or sid == "_default"
    canon = table_path + "/streams/" + (sid or "_default")
    return table_path, (p, d, t), is_default, canon


def timestamp_pb(msg, t):
    secs = int(t)
    msg.seconds = secs
    msg.nanos = int(round((t - secs) * 1e9)) // 1000 * 1000


def table_schema_pb(out, fields):
    for f in fields:
        tf = out.fields.add()
        tf.name = f["name"]
        tf.type = BQ_TYPE_ENUM.get(f["type"], 0)
        tf.mode = BQ_MODE_ENUM.get(f.get("mode") or "NULLABLE", 1)
        if f.get("fields"):
            table_schema_pb(tf, f["fields"])
        if f.get("description"):
            tf.description = f["description"]
        for key, attr in (("maxLength", "max_length"), ("precision", "precision"), ("scale", "scale")):
            if f.get(key) is not None:
                setattr(tf, attr, int(f[key]))
        if f.get("defaultValueExpression"):
            tf.default_value_expression = f["defaultValueExpression"]
        if f.get("rangeElementType"):
            tf.range_element_type.type = BQ_TYPE_ENUM[f["rangeElementType"]["type"]]
    return out


def status_pb(code, message, storage=None):
    st = pb.status.Status(code=code, message=message)
    if storage is not None:
        d = st.details.add()
        d.type_url = STORAGE_ERROR_TYPE_URL
        d.value = storage.SerializeToString()
    return st


def storage_error(code, entity, message):
    return pb.storage.StorageError(code=code, entity=entity or "", error_message=message)


# ----------------------------------------------------------------------------------------------
# Connection drops: shut down the TCP connection a call arrived on

def _proc_net_entries():
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            yield parts[1], parts[2], parts[9]


def find_connection_fd(local_port, peer_port):
    """The fd of our socket whose local port is local_port and remote port peer_port, or None."""
    inodes = set()
    for local, remote, inode in _proc_net_entries():
        if int(local.rsplit(":", 1)[1], 16) == local_port and int(remote.rsplit(":", 1)[1], 16) == peer_port:
            inodes.add("socket:[%s]" % inode)
    if not inodes:
        return None
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + fd) in inodes:
                return int(fd)
        except OSError:
            continue
    return None


def drop_connection(context, local_port, mode):
    """Shut the call's TCP connection down (mode close = FIN, reset = RST on close), or, with
    mode cancel or when the socket cannot be found, reset only this call (RST_STREAM)."""
    if mode != "cancel":
        peer = context.peer() or ""
        try:
            peer_port = int(peer.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            peer_port = None
        fd = find_connection_fd(local_port, peer_port) if peer_port else None
        if fd is not None:
            s = socket.socket(fileno=os.dup(fd))
            try:
                if mode == "reset":
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                s.close()       # closes only our duplicate; gRPC notices the shutdown and cleans up
            return "tcp"
    context.cancel()
    return "cancel"


# ----------------------------------------------------------------------------------------------
# The service

class WriteService:
    name = "grpc"

    def __init__(self, emu, port, tls_cert=None, tls_key=None):
        cfg = emu.config
        self.emu = emu
        self.idle_timeout = cfg.grpc_idle_timeout
        self.max_request = cfg.grpc_max_request_bytes
        self.schemas = SchemaCache()
        self._call_seq = 0
        self._seq_lock = threading.Lock()
        pb.load()          # generate and import the messages now: fail at start, not on the first call
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.grpc_workers, thread_name_prefix="bqemu-grpc"),
            options=[("grpc.max_receive_message_length", max(64 << 20, 2 * self.max_request + (1 << 20))),
                     ("grpc.max_send_message_length", -1),
                     ("grpc.so_reuseport", 0)])
        S = pb.storage
        ser = lambda m: m.SerializeToString()   # noqa: E731
        handlers = {
            "CreateWriteStream": grpc.unary_unary_rpc_method_handler(
                self._unary("CreateWriteStream", self.create_write_stream, S.WriteStream),
                request_deserializer=S.CreateWriteStreamRequest.FromString, response_serializer=ser),
            "GetWriteStream": grpc.unary_unary_rpc_method_handler(
                self._unary("GetWriteStream", self.get_write_stream, S.WriteStream),
                request_deserializer=S.GetWriteStreamRequest.FromString, response_serializer=ser),
            "FinalizeWriteStream": grpc.unary_unary_rpc_method_handler(
                self._unary("FinalizeWriteStream", self.finalize_write_stream, S.FinalizeWriteStreamResponse),
                request_deserializer=S.FinalizeWriteStreamRequest.FromString, response_serializer=ser),
            "BatchCommitWriteStreams": grpc.unary_unary_rpc_method_handler(
                self._unary("BatchCommitWriteStreams", self.batch_commit, S.BatchCommitWriteStreamsResponse),
                request_deserializer=S.BatchCommitWriteStreamsRequest.FromString, response_serializer=ser),
            "FlushRows": grpc.unary_unary_rpc_method_handler(
                self._unary("FlushRows", self.flush_rows, S.FlushRowsResponse),
                request_deserializer=S.FlushRowsRequest.FromString, response_serializer=ser),
            # Requests stay bytes until the handler has checked their size.
            "AppendRows": grpc.stream_stream_rpc_method_handler(
                self.append_rows, request_deserializer=None, response_serializer=ser),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        host = cfg.host
        addr = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
        try:
            if tls_cert:
                with open(tls_key, "rb") as f:
                    key = f.read()
                with open(tls_cert, "rb") as f:
                    cert = f.read()
                self.port = self.server.add_secure_port(addr, grpc.ssl_server_credentials([(key, cert)]))
            else:
                self.port = self.server.add_insecure_port(addr)
        except RuntimeError as e:
            raise SystemExit("bqemu: cannot listen for gRPC on %s: %s" % (addr, e))
        if not self.port:
            raise SystemExit("bqemu: cannot listen for gRPC on %s" % addr)
        self.tls = bool(tls_cert)
        from emu_server import url_host
        self.target = "%s:%d" % (url_host(host), self.port)

    @property
    def url(self):
        return ("grpcs://" if self.tls else "grpc://") + self.target

    def start(self):
        self.server.start()

    def stop(self):
        self.server.stop(grace=0.5).wait(5)

    def next_call_id(self):
        with self._seq_lock:
            self._call_seq += 1
            return self._call_seq

    # -- shared pieces ----------------------------------------------------------------------

    def authenticate(self, context):
        """Check the bearer token of a call; raises Abort.  Returns the metadata dict."""
        emu = self.emu
        md = {}
        for k, v in context.invocation_metadata():
            md.setdefault(k.lower(), v)
        h = md.get("authorization")
        if not h:
            emu.stats.add("auth_failures")
            raise Abort(16, "Request is missing required authentication credential: the call needs "
                            "'authorization: Bearer <OAuth 2 access token>' metadata.")
        scheme, _, cred = h.strip().partition(" ")
        cred = cred.strip()
        if scheme.lower() != "bearer" or not cred:
            emu.stats.add("auth_failures")
            raise Abort(16, "Request had invalid authentication credentials: authorization metadata must "
                            "be 'Bearer <access token>'.")
        tok = emu.tokens.lookup(cred)
        if tok is None and cred.count(".") == 2 and cred.startswith("ey"):
            try:
                tok = emu.tokens.check_self_signed(cred, emu.keys, emu.self_signed_audiences())
                emu.stats.add("self_signed_jwt_requests")
            except AuthError as e:
                emu.stats.add("auth_failures")
                raise Abort(16, "Request had invalid authentication credentials: invalid self-signed "
                                "JWT: %s" % e.description)
        if tok is None:
            emu.stats.add("auth_failures")
            raise Abort(16, "Request had invalid authentication credentials: unknown access token.")
        if tok.expired():
            emu.stats.add("auth_failures")
            raise Abort(16, "Request had invalid authentication credentials: the access token has expired.")
        if not (tok.scopes & WRITE_SCOPES):
            raise Abort(7, "Request had insufficient authentication scopes (token has: %s)."
                        % " ".join(sorted(tok.scopes)))
        up = md.get("x-goog-user-project")
        if up:
            emu.stats.user_project(up)
        emu.stats.write_add("routing_header_present" if md.get("x-goog-request-params")
                            else "routing_header_missing")
        return md

    def abort(self, context, exc):
        st = status_pb(exc.code, exc.message, exc.storage)
        context.set_trailing_metadata((("grpc-status-details-bin", st.SerializeToString()),))
        context.abort(_STATUS[exc.code], exc.message)

    def fault_abort(self, act, entity):
        """Abort for a grpc/status/idle_close action fault."""
        if act.kind == "idle_close":
            msg = act.spec.get("message") or self.idle_message(entity)
            self.emu.stats.write_add("idle_closes_injected")
            return Abort(10, msg)
        code = act.grpc_code if act.kind == "grpc" else HTTP_TO_GRPC.get(act.spec["status"], 2)
        msg = act.spec.get("message") or DEFAULT_FAULT_MESSAGES.get(code, "Injected error (bqemu).")
        if entity:
            msg += " Entity: %s" % entity
        return Abort(code, msg)

    def idle_message(self, entity):
        t = self.idle_timeout
        return "Closing the stream because it has been inactive for %s seconds. Entity: %s" % (
            int(t) if float(t).is_integer() else t, entity)

    def unary_faults(self, context, method, table_text, entity):
        emu = self.emu
        ms = emu.faults.take_latency("write", table_text, method)
        if ms:
            time.sleep(ms / 1000.0)
        act = emu.faults.take_action("write", table_text, method)
        if act is None:
            return None
        if act.kind in ("drop", "down", "truncate"):
            if act.kind == "drop" and act.spec.get("after_commit"):
                return act
            drop_connection(context, self.port, act.spec.get("mode", "close"))
            raise Dropped()
        raise self.fault_abort(act, entity)

    def _unary(self, method, fn, resp_cls):
        def handler(request, context):
            t0 = time.monotonic()
            code = "OK"
            try:
                try:
                    self.authenticate(context)
                    resp, act = fn(request, context)
                except Abort as e:
                    code = GRPC_NAMES.get(e.code, str(e.code))
                    self.abort(context, e)
                except (Dropped, grpc.RpcError):
                    raise
                except Exception as e:       # a bug: answer INTERNAL rather than a bare UNKNOWN
                    log.exception("grpc %s failed", method)
                    code = "INTERNAL"
                    self.abort(context, Abort(13, "Internal error in bqemu: %s" % e))
                if act is not None:          # drop after_commit: the work is done, the answer lost
                    drop_connection(context, self.port, act.spec.get("mode", "close"))
                    code = "dropped"
                    return resp_cls()
                return resp
            except Dropped:
                code = "dropped"
                return resp_cls()
            finally:
                self.emu.stats.write_call(method, code)
                log.debug("grpc %s %s %s %.1fms", context.peer(), method, code, (time.monotonic() - t0) * 1e3)
        return handler

    def table_for(self, table_path):
        m = _TABLE_RE.match(table_path or "")
        if not m:
            raise Abort(3, "Invalid table name %r: expected projects/{p}/datasets/{d}/tables/{t}." % table_path)
        if self.emu.denied("bigquery.tables.updateData", *m.groups()):
            raise Abort(7, "Permission 'TABLES_UPDATE_DATA' denied on resource '%s' (or it may not exist)."
                        % table_path)
        info = self.emu.store.get_table(*m.groups())
        if info is None:
            raise Abort(5, "Requested entity was not found. Entity: %s" % table_path,
                        storage_error(TABLE_NOT_FOUND, table_path, "Table not found: %s" % table_path))
        return info

    def stream_for(self, name):
        """-> (parsed name, table info, StreamRecord or None for the default stream); raises Abort."""
        parsed = parse_stream_name(name)
        if parsed is None:
            raise Abort(3, "Invalid stream name %r: expected projects/{p}/datasets/{d}/tables/{t}/streams/{id}."
                        % name)
        table_path, ref, is_default, canon = parsed
        info = self.table_for(table_path)
        if is_default:
            return parsed, info, None
        rec = self.emu.store.get_stream(name)
        if rec is None or rec.table_key != info.id:
            raise Abort(5, "Requested entity was not found. Entity: %s" % name,
                        storage_error(STREAM_NOT_FOUND, name, "Stream not found: %s" % name))
        return parsed, info, rec

    def write_stream_pb(self, name, stype, created, commit_time, info, with_schema):
        ws = pb.storage.WriteStream(name=name, type=stype, write_mode=1, location="US")
        timestamp_pb(ws.create_time, created)
        if commit_time is not None:
            timestamp_pb(ws.commit_time, commit_time)
        if with_schema:
            table_schema_pb(ws.table_schema, info.schema)
        return ws

    # -- unary methods ----------------------------------------------------------------------

    def create_write_stream(self, req, context):
        parent = req.parent
        m = _TABLE_RE.match(parent)
        act = self.unary_faults(context, "CreateWriteStream", "%s.%s.%s" % m.groups() if m else None, parent)
        info = self.table_for(parent)
        stype = req.write_stream.type
        if stype not in TYPE_NAMES:
            raise Abort(3, "write_stream.type must be COMMITTED, PENDING or BUFFERED (got %d)." % stype)
        if req.write_stream.write_mode not in (0, 1):
            raise Abort(3, "write_stream.write_mode must be INSERT.")
        name = "%s/streams/%s" % (parent, secrets.token_urlsafe(24))
        rec = self.emu.store.create_stream(name, info, stype)
        self.emu.stats.write_add("streams_created")
        return self.write_stream_pb(name, stype, rec.created, rec.commit_time, info, True), act

    def get_write_stream(self, req, context):
        parsed = parse_stream_name(req.name)
        act = self.unary_faults(context, "GetWriteStream", "%s.%s.%s" % parsed[1] if parsed else None, req.name)
        parsed, info, rec = self.stream_for(req.name)
        full = req.view == 2
        if rec is None:        # the default stream: COMMITTED, as old as its table
            return self.write_stream_pb(parsed[3], STREAM_COMMITTED, info.created, info.created, info, full), act
        return self.write_stream_pb(rec.name, rec.type, rec.created, rec.commit_time, info, full), act

    def finalize_write_stream(self, req, context):
        parsed = parse_stream_name(req.name)
        act = self.unary_faults(context, "FinalizeWriteStream", "%s.%s.%s" % parsed[1] if parsed else None,
                                req.name)
        parsed, info, rec = self.stream_for(req.name)
        if rec is None:
            raise Abort(3, "The default stream cannot be finalized. Entity: %s" % req.name,
                        storage_error(INVALID_STREAM_TYPE, req.name, "Cannot finalize the default stream."))
        n = self.emu.store.finalize_stream(rec)
        return pb.storage.FinalizeWriteStreamResponse(row_count=n), act

    def batch_commit(self, req, context):
        m = _TABLE_RE.match(req.parent)
        act = self.unary_faults(context, "BatchCommitWriteStreams", "%s.%s.%s" % m.groups() if m else None,
                                req.parent)
        info = self.table_for(req.parent)
        if not req.write_streams:
            raise Abort(3, "write_streams must name at least one stream.")
        errors, recs = [], []
        store = self.emu.store
        for name in req.write_streams:
            parsed = parse_stream_name(name)
            rec = store.get_stream(name) if parsed and not parsed[2] else None
            if rec is None or rec.table_key != info.id or parsed[0] != req.parent:
                errors.append(storage_error(STREAM_NOT_FOUND, name, "Stream not found in table %s: %s"
                                            % (req.parent, name)))
            elif rec.type != STREAM_PENDING:
                errors.append(storage_error(INVALID_STREAM_TYPE, name, "Stream must be created in PENDING "
                                            "mode to be committed, actual: %s" % TYPE_NAMES[rec.type]))
            elif rec.commit_time is not None:
                errors.append(storage_error(STREAM_ALREADY_COMMITTED, name, "Stream is already committed: %s"
                                            % name))
            elif rec.finalized is None:
                errors.append(storage_error(INVALID_STREAM_STATE, name, "Stream is not finalized: %s" % name))
            else:
                recs.append(rec)
        resp = pb.storage.BatchCommitWriteStreamsResponse()
        if errors:
            resp.stream_errors.extend(errors)
            return resp, act
        t = store.commit_streams(info, recs)
        timestamp_pb(resp.commit_time, t)
        self.emu.stats.write_add("streams_committed", len(recs))
        return resp, act

    def flush_rows(self, req, context):
        parsed = parse_stream_name(req.write_stream)
        act = self.unary_faults(context, "FlushRows", "%s.%s.%s" % parsed[1] if parsed else None,
                                req.write_stream)
        parsed, info, rec = self.stream_for(req.write_stream)
        name = req.write_stream
        if rec is None or rec.type != STREAM_BUFFERED:
            raise Abort(3, "FlushRows is only supported on BUFFERED streams. Entity: %s" % name,
                        storage_error(INVALID_STREAM_TYPE, name, "Stream is not a BUFFERED stream."))
        if rec.finalized is not None:
            raise Abort(3, "Stream has been finalized and cannot be appended: %s" % name,
                        storage_error(STREAM_FINALIZED, name, "Stream has been finalized."))
        if not req.HasField("offset"):
            raise Abort(3, "FlushRows needs an offset.")
        off = req.offset.value
        if off < 0 or off >= rec.row_count:
            raise Abort(11, "Offset %d is beyond the end of the stream (%d rows). Entity: %s"
                        % (off, rec.row_count, name),
                        storage_error(OFFSET_OUT_OF_RANGE, name, "The offset is beyond stream, expected "
                                      "offset %d, received %d" % (rec.row_count, off)))
        self.emu.store.flush_stream(info, rec, off)
        return pb.storage.FlushRowsResponse(offset=off), act

    # -- AppendRows -------------------------------------------------------------------------

    def append_rows(self, request_iterator, context):
        return AppendCall(self, context).run(request_iterator)


_EOF = object()


class AppendCall:
    """One AppendRows call: its target stream, writer schema and state."""

    def __init__(self, svc, context):
        self.svc, self.emu, self.context = svc, svc.emu, context
        self.id = svc.next_call_id()
        self.stream = None            # canonical name of the current target
        self.stream_given = None      # the name as the client wrote it (echoed back)
        self.table_ref = None
        self.is_default = False
        self.rec = None
        self.schema_raw = None        # the writer schema's DescriptorProto bytes
        self.seen_schema_key = None   # table schema version last told to the client
        self.default_mvi = None       # sticky default_missing_value_interpretation
        self.code = "OK"
        self.requests = 0

    # reader thread: requests -> queue, so the handler can wait with a timeout (idle close)
    @staticmethod
    def _put(q, item, stop):
        while not stop.is_set():
            try:
                q.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _reader(self, it, q, stop):
        try:
            for raw in it:
                if not self._put(q, raw, stop):
                    return
            self._put(q, _EOF, stop)
        except Exception as e:          # the call ended (cancelled by the client, or by us)
            self._put(q, e, stop)

    def run(self, request_iterator):
        emu, ctx = self.emu, self.context
        stats = emu.stats
        stats.write_add("append_calls")
        stop = threading.Event()
        q = queue.Queue(maxsize=16)
        t0 = time.monotonic()
        try:
            try:
                down = emu.faults.peek_down("write")
                if down is not None:
                    drop_connection(ctx, self.svc.port, down.spec.get("mode", "close"))
                    raise Dropped()
                self.svc.authenticate(ctx)
            except Abort as e:
                self.code = GRPC_NAMES.get(e.code, str(e.code))
                self.svc.abort(ctx, e)
            threading.Thread(target=self._reader, args=(request_iterator, q, stop),
                             name="bqemu-grpc-reader-%d" % self.id, daemon=True).start()
            idle = self.svc.idle_timeout
            last = time.monotonic()
            while True:
                try:
                    item = q.get(timeout=max(0.0, last + idle - time.monotonic()))
                except queue.Empty:
                    stats.write_add("idle_closes")
                    self.code = "ABORTED"
                    self.svc.abort(ctx, Abort(10, self.svc.idle_message(self.stream or "")))
                if item is _EOF:
                    if not ctx.is_active():
                        self.code = "CANCELLED"
                    return
                if isinstance(item, Exception):
                    self.code = "CANCELLED"
                    return
                self.requests += 1
                try:
                    resp = self.handle(item)
                except Abort as e:
                    self.code = GRPC_NAMES.get(e.code, str(e.code))
                    self.svc.abort(ctx, e)
                except (Dropped, grpc.RpcError):
                    raise
                except Exception as e:       # a bug: answer INTERNAL rather than a bare UNKNOWN
                    log.exception("grpc AppendRows call %d failed", self.id)
                    self.code = "INTERNAL"
                    self.svc.abort(ctx, Abort(13, "Internal error in bqemu: %s" % e))
                if resp is not None:
                    yield resp
                last = time.monotonic()
        except Dropped:
            self.code = "dropped"
        finally:
            stop.set()
            stats.write_call("AppendRows", self.code)
            log.debug("grpc %s AppendRows call %d: %d request(s), %s, %.1fms", ctx.peer(), self.id,
                      self.requests, self.code, (time.monotonic() - t0) * 1e3)

    # -- one request ------------------------------------------------------------------------

    def handle(self, raw):
        emu, svc = self.emu, self.svc
        t0 = time.monotonic()
        S = pb.storage
        try:
            req = S.AppendRowsRequest.FromString(raw)
        except DecodeError as e:
            raise Abort(3, "Invalid AppendRowsRequest: cannot decode it (%s)." % e)
        name = req.write_stream or self.stream_given
        if name is None:
            raise Abort(3, "The first AppendRowsRequest of a connection must set write_stream.")
        parsed = parse_stream_name(name)
        table_text = "%s.%s.%s" % parsed[1] if parsed else None
        n_rows = len(req.proto_rows.rows.serialized_rows) if req.HasField("proto_rows") else 0
        offset = req.offset.value if req.HasField("offset") else None
        entry = {"t": time.time(), "call": self.id, "stream": parsed[3] if parsed else name,
                 "table": table_text, "offset": offset, "rows": n_rows, "bytes": len(raw)}

        # faults
        ms = emu.faults.take_latency("write", table_text, "AppendRows")
        if ms:
            time.sleep(ms / 1000.0)
        act = emu.faults.take_action("write", table_text, "AppendRows")
        after_commit = None
        try:
            if act is not None:
                if act.kind == "drop" and act.spec.get("after_commit"):
                    after_commit = act
                elif act.kind in ("drop", "down", "truncate"):
                    drop_connection(self.context, svc.port, act.spec.get("mode", "close"))
                    raise Dropped()
                elif act.kind == "grpc" and act.spec.get("in_stream"):
                    msg = (act.spec.get("message")
                           or DEFAULT_FAULT_MESSAGES.get(act.grpc_code, "Injected error (bqemu)."))
                    if parsed is not None:
                        self.select_target(req, name, parsed)
                    return self.finish(entry, t0, error=(act.grpc_code, msg + " Entity: %s" % name, None))
                else:
                    raise svc.fault_abort(act, name)

            if len(raw) > svc.max_request:
                raise Abort(3, "AppendRows request too large: %d limit %d Entity: %s"
                            % (len(raw), svc.max_request, name))
            if parsed is None:
                raise Abort(3, "Invalid stream name %r: expected projects/{p}/datasets/{d}/tables/{t}/streams/{id}."
                            % name)
            self.select_target(req, name, parsed)
            resp = self.append(req, entry, t0, offset, table_text)
        except Abort as e:
            entry.update(code=GRPC_NAMES.get(e.code, str(e.code)), closed=True,
                         ms=round((time.monotonic() - t0) * 1000.0, 3))
            emu.stats.write_append(entry, rejected=n_rows)
            raise
        except Dropped:
            entry.update(code="dropped", closed=True, ms=round((time.monotonic() - t0) * 1000.0, 3))
            emu.stats.write_append(entry, rejected=n_rows)
            raise
        if after_commit is not None:
            drop_connection(self.context, svc.port, after_commit.spec.get("mode", "close"))
            self.code = "dropped"
            raise Dropped()
        return resp

    def select_target(self, req, name, parsed):
        """Switch to the request's write_stream (first request, or a change) and its schema."""
        first = self.stream_given is None
        switching = first or (req.write_stream and req.write_stream != self.stream_given)
        has_schema = req.HasField("proto_rows") and req.proto_rows.HasField("writer_schema")
        if switching:
            table_path, ref, is_default, canon = parsed
            # The writer schema is needed on the first request and when the table changes; a
            # switch to another stream of the same table may keep the current one.
            if not has_schema and not req.HasField("arrow_rows") and (first or ref != self.table_ref):
                raise Abort(3, "The first AppendRowsRequest for a %s must carry proto_rows.writer_schema. "
                               "Entity: %s" % ("connection" if first else "new table", name))
            _, info, rec = self.svc.stream_for(name)
            self.stream, self.stream_given, self.table_ref = canon if is_default else name, name, ref
            self.is_default, self.rec = is_default, rec
            self.seen_schema_key = info.schema_key
        if req.HasField("default_missing_value_interpretation"):
            self.default_mvi = req.default_missing_value_interpretation
        if has_schema:
            self.schema_raw = req.proto_rows.writer_schema.proto_descriptor.SerializeToString()

    def current_table(self):
        """The target's table as of now (its schema may have changed); the stream must still exist."""
        store = self.emu.store
        if self.emu.denied("bigquery.tables.updateData", *self.table_ref):
            raise Abort(7, "Permission 'TABLES_UPDATE_DATA' denied on resource '%s' (or it may not exist)."
                        % self.stream)
        info = store.get_table(*self.table_ref)
        if info is None:
            raise Abort(5, "Requested entity was not found. Entity: %s" % self.stream,
                        storage_error(TABLE_NOT_FOUND, self.stream, "Table not found."))
        if self.rec is not None:
            self.rec = store.get_stream(self.stream)    # gone after a table delete or a rows reset
            if self.rec is None or self.rec.table_key != info.id:
                raise Abort(5, "Requested entity was not found. Entity: %s" % self.stream,
                            storage_error(STREAM_NOT_FOUND, self.stream, "Stream not found."))
        return info

    def append(self, req, entry, t0, offset, table_text):
        emu = self.emu
        info = self.current_table()
        name = self.stream_given
        if req.HasField("arrow_rows"):
            return self.finish(entry, t0, info=info, error=(3, "Arrow rows are not supported by bqemu; send "
                                                           "proto_rows. Entity: %s" % name, None))
        if not req.HasField("proto_rows") or not req.proto_rows.rows.serialized_rows:
            return self.finish(entry, t0, info=info, error=(3, "The request has no rows. Entity: %s" % name, None))
        if any(v == 0 for v in req.missing_value_interpretations.values()):
            return self.finish(entry, t0, info=info, error=(
                3, "missing_value_interpretations must be NULL_VALUE or DEFAULT_VALUE, not "
                   "MISSING_VALUE_INTERPRETATION_UNSPECIFIED. Entity: %s" % name, None))
        if self.is_default and offset is not None:
            return self.finish(entry, t0, info=info, error=(
                3, "The default stream does not accept offsets (offset %d given). Entity: %s" % (offset, name), None))
        if self.rec is not None and self.rec.finalized is not None:
            return self.finish(entry, t0, info=info, error=(
                3, "Stream has been finalized and cannot be appended: %s" % name,
                storage_error(STREAM_FINALIZED, name, "Stream has been finalized and cannot be appended.")))
        if self.schema_raw is None:
            return self.finish(entry, t0, info=info, error=(
                3, "No writer_schema has been sent on this connection. Entity: %s" % name, None))
        try:
            ws = self.svc.schemas.writer_schema(self.schema_raw, info)
        except SchemaProblem as e:
            return self.finish(entry, t0, info=info, error=(
                3, "%s Entity: %s" % (e.message, name),
                storage_error(e.storage_code, name, e.message) if e.storage_code else None))
        rows, errors = ws.decode_rows(req.proto_rows.rows.serialized_rows, self.missing_defaults(req, info))
        texts = [dumps(r) if r is not None else None for r in rows]
        rules = emu.faults.take_row_rules("write", table_text, "AppendRows")
        if rules:
            for i, text in enumerate(texts):
                if text is None:
                    continue
                for rx, reason, msg in rules:
                    if rx.search(text):
                        errors.append((i, msg))
                        break
            errors.sort()
        if errors:
            return self.finish(entry, t0, info=info, error=(3, "%s Entity: %s" % (ROW_ERRORS_MESSAGE, name), None),
                               row_errors=errors)
        request_no = emu.store.next_request_no()
        entry["request_no"] = request_no
        if self.is_default:
            emu.store.default_append(info, self.stream, texts, request_no)
            return self.finish(entry, t0, info=info, appended=len(texts), result_offset=None)
        outcome, pos = emu.store.stream_append(self.rec, info, texts, offset, request_no)
        if outcome == "ok":
            return self.finish(entry, t0, info=info, appended=len(texts), result_offset=pos)
        if outcome == "already_exists":
            text = "The offset is within stream, expected offset %d, received %d" % (pos, offset)
            return self.finish(entry, t0, info=info, dedup=True, error=(
                6, "%s Entity: %s" % (text, name), storage_error(OFFSET_ALREADY_EXISTS, name, text)))
        if outcome == "out_of_range":
            text = "The offset is beyond stream, expected offset %d, received %d" % (pos, offset)
            return self.finish(entry, t0, info=info, error=(
                11, "%s Entity: %s" % (text, name), storage_error(OFFSET_OUT_OF_RANGE, name, text)))
        return self.finish(entry, t0, info=info, error=(
            3, "Stream has been finalized and cannot be appended: %s" % name,
            storage_error(STREAM_FINALIZED, name, "Stream has been finalized and cannot be appended.")))

    def missing_defaults(self, req, info):
        """Top-level columns whose absence means DEFAULT_VALUE and that have a default expression."""
        mvi = dict(req.missing_value_interpretations)
        if not mvi and self.default_mvi != 2:
            return frozenset()
        out = set()
        for col in info.compiled.columns:
            how = mvi.get(col.name, mvi.get(col.lname, self.default_mvi))
            if how == 2 and col.default_expr:
                out.add(col.lname)
        return frozenset(out)

    def finish(self, entry, t0, info=None, error=None, row_errors=None, appended=0, result_offset=None,
               dedup=False):
        """Build the response, update the stats and the log."""
        S = pb.storage
        resp = S.AppendRowsResponse(write_stream=self.stream_given or "")
        n = entry["rows"]
        if error is not None:
            code, msg, storage = error
            resp.error.CopyFrom(status_pb(code, msg, storage))
            for i, m in row_errors or ():
                resp.row_errors.add(index=i, code=1, message=m)
            entry["code"] = GRPC_NAMES.get(code, str(code))
            if row_errors:
                entry["row_errors"] = len(row_errors)
        else:
            resp.append_result.SetInParent()
            if result_offset is not None:
                resp.append_result.offset.value = result_offset
            entry["code"] = "OK"
            entry["result_offset"] = result_offset
        if info is not None and self.seen_schema_key is not None and info.schema_key != self.seen_schema_key:
            table_schema_pb(resp.updated_schema, info.schema)
            self.seen_schema_key = info.schema_key
            entry["updated_schema"] = True
            self.emu.stats.write_add("updated_schema_sent")
        entry["ms"] = round((time.monotonic() - t0) * 1000.0, 3)
        self.emu.stats.write_append(entry, appended=appended, deduplicated=n if dedup else 0,
                                    rejected=0 if (error is None or dedup) else n)
        log.debug("grpc AppendRows call %d %s offset=%s rows=%d %s", self.id, entry["stream"], entry["offset"],
                  n, entry["code"])
        return resp
