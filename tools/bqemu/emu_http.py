"""HTTP/1.1 plumbing shared by the REST and metadata services.

EmuHTTPServer is a thread-per-connection server (socketserver.ThreadingMixIn)
with persistent connections.  When given an SSL context it performs the TLS
handshake in the connection's own thread, so a slow or failing handshake never
blocks the accept loop; failed handshakes are counted in the stats (a client
that rejects our certificate shows up there).  Accepted sockets get
TCP_NODELAY and every response is written with a single write (status line,
headers and body together), so keep-alive clients see no Nagle delays.

BaseHandler reads the request body completely before any handler runs (fixed
Content-Length or chunked; a POST with neither gets 411 like Google's front
end), always sends Content-Length, gzips large responses when the client sent
Accept-Encoding: gzip, and offers drop()/truncated responses for fault
injection.  Subclasses implement route(method, body).
"""

import email.utils
import gzip
import http.server
import ipaddress
import logging
import socket
import socketserver
import ssl
import struct
import time
import urllib.parse

from emu_common import JSON_CT, dumps_bytes, google_error

log = logging.getLogger("bqemu")

MAX_WIRE_BODY = 64 * 1024 * 1024     # larger bodies are read, discarded and refused with 413


class BodyError(Exception):
    def __init__(self, status, reason, message):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def is_loopback(host):
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class EmuHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    block_on_close = False

    def __init__(self, host, port, handler_class, emu, ssl_ctx=None):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.emu, self.ssl_ctx, self.host = emu, ssl_ctx, host
        super().__init__((host, port), handler_class)

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if self.host == "::" else 1)
            except OSError:
                pass
        # TCPServer.server_bind: HTTPServer's version does a reverse DNS lookup we do not need.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.host, self.socket.getsockname()[1]

    @property
    def port(self):
        return self.socket.getsockname()[1]

    def get_request(self):
        sock, addr = self.socket.accept()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return sock, addr

    def finish_request(self, request, client_address):
        self.emu.stats.add("connections")
        conn = request
        if self.ssl_ctx is not None:
            request.settimeout(10)
            try:
                conn = self.ssl_ctx.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                self.emu.stats.add("tls_handshake_failures")
                log.debug("%s TLS handshake failed: %s", client_address[0], e)
                return
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            if conn is not request:
                try:
                    conn.close()
                except OSError:
                    pass

    def handle_error(self, request, client_address):
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)


class BaseHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bqemu/1"
    sys_version = ""
    endpoint = "other"

    def setup(self):
        self.timeout = self.server.emu.config.idle_timeout
        super().setup()

    def log_message(self, fmt, *args):      # the base class logs to stderr; we log per request ourselves
        log.debug("%s %s", self.client_address[0], fmt % args)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_DELETE(self):
        self._handle("DELETE")

    # -- request side ---------------------------------------------------------------------

    def _handle(self, method):
        self._t0 = time.monotonic()
        self._responded = False
        self._status = None
        self.note = ""
        self.endpoint = "other"
        self.request_no = None
        url = urllib.parse.urlsplit(self.path)
        self.req_path = url.path
        self.query = urllib.parse.parse_qs(url.query)
        self.wire_bytes = 0
        try:
            body = self._read_body(method)
        except BodyError as e:
            self.close_connection = True
            self.respond_json(e.status, google_error(e.status, e.reason, e.message), close=True)
            self._finish_request(method)
            return
        except (OSError, ValueError) as e:
            self.close_connection = True
            log.debug("%s reading body failed: %s", self.client_address[0], e)
            return
        try:
            self.route(method, body)
        except Exception:
            log.exception("internal error handling %s %s", method, self.path)
            if not self._responded:
                self.respond_json(500, google_error(500, "internalError", "bqemu internal error (see its log)."),
                                  close=True)
        self._finish_request(method)

    def _finish_request(self, method):
        try:
            self.after_request(method)
        except Exception:
            log.exception("after_request failed")
        self._log_line(method)

    def after_request(self, method):
        """Hook for subclasses: runs once per request after the answer (or drop)."""

    def _read_body(self, method):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            return self._read_chunked()
        cl = self.headers.get("Content-Length")
        if cl is None:
            if method in ("POST", "PUT", "PATCH") and not self.req_path.startswith("/_emu"):
                raise BodyError(411, "required", "POST requests require a Content-Length header.")
            return b""
        try:
            n = int(cl)
        except ValueError:
            raise BodyError(400, "badRequest", "Invalid Content-Length header.")
        if n < 0:
            raise BodyError(400, "badRequest", "Invalid Content-Length header.")
        self.wire_bytes = n
        if n > MAX_WIRE_BODY:
            left = n
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
            raise BodyError(413, "invalid", "Request entity too large (%d bytes)." % n)
        data = self.rfile.read(n)
        if len(data) != n:
            raise ValueError("client closed the connection mid-body")
        return data

    def _read_chunked(self):
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise ValueError("client closed the connection mid-body")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:                  # trailers up to the blank line
                    t = self.rfile.readline(8192)
                    if t in (b"\r\n", b"\n", b""):
                        break
                break
            total += size
            if total > MAX_WIRE_BODY:
                raise BodyError(413, "invalid", "Request entity too large.")
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)
        self.wire_bytes = total
        return b"".join(parts)

    # -- response side --------------------------------------------------------------------

    def build_response(self, status, body, content_type, headers=None, close=False):
        accept = (self.headers.get("Accept-Encoding") or "").lower()
        hdrs = [("Date", email.utils.formatdate(usegmt=True)), ("Server", self.server_version)]
        if content_type:
            hdrs.append(("Content-Type", content_type))
        if len(body) > 200 and "gzip" in accept:
            body = gzip.compress(body, compresslevel=1)
            hdrs += [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
        hdrs.append(("Content-Length", str(len(body))))
        if self.request_no is not None:
            hdrs.append(("X-Emu-Request", str(self.request_no)))
        for k, v in (headers or []):
            hdrs.append((k, v))
        if close or self.close_connection:
            self.close_connection = True
            hdrs.append(("Connection", "close"))
        reason = self.responses.get(status, ("Error",))[0]
        head = "HTTP/1.1 %d %s\r\n" % (status, reason) + "".join("%s: %s\r\n" % kv for kv in hdrs) + "\r\n"
        return head.encode("latin-1") + body

    def respond(self, status, body=b"", content_type=JSON_CT, headers=None, close=False, truncate_at=None):
        if self._responded:
            return
        self._responded = True
        self._status = status
        data = self.build_response(status, body, content_type, headers, close)
        if truncate_at is not None:
            head_len = data.index(b"\r\n\r\n") + 4
            cut = head_len + min(truncate_at, max(0, len(data) - head_len - 1))
            data = data[:cut]
            self.close_connection = True
            self._status = "truncated"
        try:
            self.wfile.write(data)
        except OSError as e:
            log.debug("%s write failed: %s", self.client_address[0], e)
            self.close_connection = True
        self.server.emu.stats.request(self.endpoint, self._status)

    def respond_json(self, status, obj, headers=None, close=False, truncate_at=None):
        self.respond(status, dumps_bytes(obj), JSON_CT, headers, close, truncate_at)

    def drop(self, mode="close"):
        """Close the connection without answering."""
        if self._responded:
            return
        self._responded = True
        self._status = "dropped"
        self.close_connection = True
        self.server.emu.stats.request(self.endpoint, "dropped")
        try:
            self.wfile.flush()
        except OSError:
            pass
        if mode == "reset":
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        try:
            self.connection.close()
        except OSError:
            pass

    def _log_line(self, method):
        if log.isEnabledFor(logging.DEBUG):
            ms = (time.monotonic() - self._t0) * 1000.0
            log.debug("%s %s %s -> %s%s %.1fms", self.client_address[0], method, self.path,
                      self._status, (" " + self.note.strip()) if self.note else "", ms)

    def route(self, method, body):
        raise NotImplementedError
