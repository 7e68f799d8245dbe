"""The HTTPS front end: BigQuery v2 REST, the OAuth token endpoint and the
/_emu/ control API, all on one port like Google's front end serves many APIs.

BigQuery paths are accepted with or without the /bigquery/v2 prefix:

  POST   /projects/{p}/datasets/{d}/tables/{t}/insertAll   tabledata.insertAll
  GET    /projects/{p}/datasets/{d}/tables/{t}             tables.get
  PATCH  /projects/{p}/datasets/{d}/tables/{t}             tables.patch (schema widening only)
  PUT    /projects/{p}/datasets/{d}/tables/{t}             tables.update (same rules)
  DELETE /projects/{p}/datasets/{d}/tables/{t}             tables.delete
  POST   /projects/{p}/datasets/{d}/tables                 tables.insert
  GET    /projects/{p}/datasets/{d}/tables                 tables.list
  POST   /projects/{p}/datasets/{d}/tables/{t}:testIamPermissions   tables.testIamPermissions
  GET    /projects/{p}/datasets/{d}                        datasets.get (datasets are implicit)
  POST   /projects/{p}/datasets                            datasets.insert
  POST   /token  (also /oauth2/v4/token)                   OAuth2 token endpoint

Every BigQuery call needs "Authorization: Bearer <token>" with a token this
emulator issued (or a self-signed JWT of a registered key, AIP-4111).

Per request the order is: read the whole body, injected latency, injected
action fault (drop / status / down), authentication, then the real work.
"""

import re
import time
import urllib.parse
import zlib

from emu_auth import (INSERT_SCOPES, JWT_BEARER, SCOPE_CLOUD, TABLE_SCOPES, AuthError, verify_jwt)
from emu_common import (DEFAULT_MESSAGES, DEFAULT_REASONS, StrictJSONError, dumps, dumps_bytes,
                        epoch_ms_text, google_error, loads_fast, loads_strict, parse_table_ref)
from emu_http import BaseHandler, is_loopback
from emu_schema import SchemaError, normalize_schema, schema_superset_problem, validate_row
from emu_store import TableExists, rows_report

_RE_INSERT = re.compile(r"^/projects/([^/]+)/datasets/([^/]+)/tables/([^/]+)/insertAll$")
_RE_TABLE = re.compile(r"^/projects/([^/]+)/datasets/([^/]+)/tables/([^/]+)$")
_RE_TESTIAM = re.compile(r"^/projects/([^/]+)/datasets/([^/]+)/tables/([^/]+):testIamPermissions$")
_RE_TABLES = re.compile(r"^/projects/([^/]+)/datasets/([^/]+)/tables$")
_RE_DATASET = re.compile(r"^/projects/([^/]+)/datasets/([^/]+)$")
_RE_DATASETS = re.compile(r"^/projects/([^/]+)/datasets$")
_RE_PARTITION = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2})?)?)?$|^__UNPARTITIONED__$")
TOKEN_PATHS = ("/token", "/oauth2/v4/token")

INSERT_KEYS = {"kind", "skipInvalidRows", "ignoreUnknownValues", "templateSuffix", "traceId", "rows"}
ROW_KEYS = {"insertId", "json"}
MAX_INSERT_ID = 128


def _stopped():
    return {"reason": "stopped", "location": "", "debugInfo": "", "message": ""}


class RestHandler(BaseHandler):

    # -- routing --------------------------------------------------------------------------

    def route(self, method, body):
        path = self.req_path
        if path == "/_emu" or path.startswith("/_emu/"):
            self.endpoint = "control"
            return self.control(method, path[len("/_emu"):].rstrip("/") or "/", body)
        if path in TOKEN_PATHS:
            self.endpoint = "token"
            return self.token_endpoint(method, body)
        if path.startswith("/bigquery/v2/"):
            path = path[len("/bigquery/v2"):]
        for rx, name in ((_RE_INSERT, "insertAll"), (_RE_TESTIAM, "testIam"), (_RE_TABLE, "table"),
                         (_RE_TABLES, "tables"),
                         (_RE_DATASET, "dataset"), (_RE_DATASETS, "datasets")):
            m = rx.match(path)
            if m:
                args = [urllib.parse.unquote(g) for g in m.groups()]
                return getattr(self, "ep_" + name)(method, body, *args)
        self.respond_json(404, google_error(404, "notFound", "Not Found: %s %s" % (method, self.req_path)))

    def after_request(self, method):
        if self.endpoint == "insertAll":
            entry = {"t": time.time(), "status": self._status, "request_no": self.request_no,
                     "table": getattr(self, "table_text", None), "rows": getattr(self, "row_count", None),
                     "ms": round((time.monotonic() - self._t0) * 1000.0, 3)}
            self.server.emu.stats.log_insert(entry)

    # -- faults ---------------------------------------------------------------------------

    def apply_faults(self, table_text):
        """Latency and action faults.  Returns "done" if the request was answered (or
        dropped) by a fault, a Fault to apply when answering (after_commit drop,
        truncate), or None."""
        emu = self.server.emu
        ms = emu.faults.take_latency(self.endpoint, table_text)
        if ms:
            self.note += "latency=%dms " % ms
            time.sleep(ms / 1000.0)
        act = emu.faults.take_action(self.endpoint, table_text)
        if act is None:
            return None
        self.note += "fault=%s " % act.kind
        if act.kind == "down" or (act.kind == "drop" and not act.spec.get("after_commit")):
            self.drop(act.spec.get("mode", "close"))
            return "done"
        if act.kind == "status":
            self.fault_status(act)
            return "done"
        return act

    def fault_status(self, f):
        st = f.spec["status"]
        reason = f.spec.get("reason") or DEFAULT_REASONS.get(st, "backendError")
        msg = f.spec.get("message") or DEFAULT_MESSAGES.get(reason, "Injected error (bqemu).")
        headers = []
        if f.spec.get("retry_after") is not None:
            ra = f.spec["retry_after"]
            headers.append(("Retry-After", str(int(ra)) if float(ra).is_integer() else str(ra)))
        if st == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/", error="invalid_token"'))
        if "body" in f.spec:
            body = f.spec["body"]
            self.respond(st, body.encode("utf-8") if isinstance(body, str) else dumps_bytes(body),
                         f.spec.get("content_type") or "text/html; charset=UTF-8", headers)
        elif self.endpoint == "token":
            err = {429: "rate_limit_exceeded", 503: "temporarily_unavailable"}.get(
                st, "internal_failure" if st >= 500 else reason)
            self.respond_json(st, {"error": err, "error_description": msg}, headers)
        else:
            self.respond_json(st, google_error(st, reason, msg), headers)

    def finish_with(self, act, status, obj, headers=None):
        """Send the answer, unless an after-commit fault loses or cuts it."""
        if act is not None and act.kind == "drop":
            self.drop(act.spec.get("mode", "close"))
        elif act is not None and act.kind == "truncate":
            self.respond_json(status, obj, headers, truncate_at=act.spec.get("truncate_at", 1 << 30))
        else:
            self.respond_json(status, obj, headers)

    # -- authentication -------------------------------------------------------------------

    def unauthorized(self, reason, message, token_given):
        emu = self.server.emu
        emu.stats.add("auth_failures")
        www = 'Bearer realm="https://accounts.google.com/"'
        if token_given:
            www += ', error="invalid_token"'
        body = google_error(401, reason, message, location="Authorization", location_type="header")
        self.respond_json(401, body, [("WWW-Authenticate", www)])

    def authenticate(self, needed):
        emu = self.server.emu
        h = self.headers.get("Authorization")
        if not h:
            self.unauthorized("required", "Request is missing the Authorization header: an OAuth 2 "
                                          "access token (Bearer) is required.", False)
            return None
        scheme, _, cred = h.strip().partition(" ")
        cred = cred.strip()
        if scheme.lower() != "bearer" or not cred:
            self.unauthorized("authError", "Authorization header must be 'Bearer <access token>'.", True)
            return None
        tok = emu.tokens.lookup(cred)
        if tok is None and cred.count(".") == 2 and cred.startswith("ey"):
            try:
                tok = emu.tokens.check_self_signed(cred, emu.keys, emu.self_signed_audiences())
                emu.stats.add("self_signed_jwt_requests")
            except AuthError as e:
                self.unauthorized("authError", "Invalid self-signed JWT: %s" % e.description, True)
                return None
        if tok is None:
            self.unauthorized("authError", "Request had invalid authentication credentials: unknown "
                                           "access token.", True)
            return None
        if tok.expired():
            self.unauthorized("authError", "Request had invalid authentication credentials: the access "
                                           "token has expired.", True)
            return None
        if not (tok.scopes & needed):
            self.respond_json(403, google_error(403, "insufficientPermissions",
                                                "Request had insufficient authentication scopes (token has: %s)."
                                                % " ".join(sorted(tok.scopes))))
            return None
        up = self.headers.get("x-goog-user-project")
        if up:
            emu.stats.user_project(up)
        return tok

    # -- body helpers ---------------------------------------------------------------------

    def require_json_ct(self):
        ct = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ct != "application/json":
            self.respond_json(400, google_error(400, "invalid", "Content-Type must be application/json "
                                                "(got %r)." % (self.headers.get("Content-Type") or "")))
            return False
        return True

    def decode_body(self, body):
        """Undo Content-Encoding; enforce the decompressed size limit.  None if answered."""
        emu = self.server.emu
        limit = emu.config.max_request_bytes
        enc = (self.headers.get("Content-Encoding") or "").strip().lower()
        emu.stats.add("bytes_wire", len(body))
        if enc in ("", "identity"):
            raw = body
        elif enc in ("gzip", "x-gzip", "deflate"):
            emu.stats.add("gzip_requests")
            raw = self._inflate(body, 31 if enc != "deflate" else 15, limit)
            if raw is None:
                return None
        else:
            self.respond_json(400, google_error(400, "invalid", "Unsupported Content-Encoding %r." % enc))
            return None
        emu.stats.add("bytes_decompressed", len(raw))
        if len(raw) > limit:
            self.too_large(limit)
            return None
        return raw

    def too_large(self, limit):
        self.respond_json(400, google_error(400, "invalid", "Request payload size exceeds the limit: %d bytes."
                                            % limit))

    def _inflate(self, data, wbits, limit):
        out, total = [], 0
        while data:
            d = zlib.decompressobj(wbits)
            try:
                chunk = d.decompress(data, limit + 1 - total)
            except zlib.error as e:
                self.respond_json(400, google_error(400, "parseError", "Request body could not be "
                                                    "decompressed: %s" % e))
                return None
            out.append(chunk)
            total += len(chunk)
            if total > limit or d.unconsumed_tail:
                self.server.emu.stats.add("bytes_decompressed", total)
                self.too_large(limit)
                return None
            if not d.eof:
                self.respond_json(400, google_error(400, "parseError", "Compressed request body is truncated."))
                return None
            data = d.unused_data if wbits == 31 else b""
        return b"".join(out)

    def parse_json_body(self, raw, fast=False):
        try:
            return (loads_fast if fast else loads_strict)(raw)
        except StrictJSONError as e:
            self.respond_json(400, google_error(400, "parseError", "Invalid JSON payload received. %s" % e))
            return None

    # -- tabledata.insertAll --------------------------------------------------------------

    def ep_insertAll(self, method, body, project, dataset, table_id):
        emu = self.server.emu
        self.endpoint = "insertAll"
        self.table_text = "%s.%s.%s" % (project, dataset, table_id)
        if method != "POST":
            return self.respond_json(404, google_error(404, "notFound", "insertAll takes POST."))
        act = self.apply_faults(self.table_text)
        if act == "done":
            return
        if not self.authenticate(INSERT_SCOPES) or not self.require_json_ct():
            return
        if self.iam_refused("bigquery.tables.updateData", project, dataset, table_id.partition("$")[0]):
            return
        raw = self.decode_body(body)
        if raw is None:
            return
        req = self.parse_json_body(raw, fast=emu.config.fast)
        if req is None:
            return
        self._escapes_seen = b"\\u" in raw
        bad = self.check_insert_request(req)
        if bad:
            return self.respond_json(400, google_error(400, "invalid", bad))
        rows = req["rows"]
        self.row_count = len(rows)
        base_id, _, decorator = table_id.partition("$")
        if decorator and not _RE_PARTITION.match(decorator):
            return self.respond_json(400, google_error(400, "invalid", "Invalid partition decorator $%s." % decorator))
        info = emu.store.get_table(project, dataset, base_id)
        if info is None:
            return self.respond_json(404, google_error(404, "notFound", "Not found: Table %s:%s.%s"
                                                       % (project, dataset, base_id)))
        suffix = req.get("templateSuffix")
        if suffix:
            target = emu.store.get_table(project, dataset, base_id + suffix)
            if target is None:
                try:
                    target = emu.store.create_table(project, dataset, base_id + suffix, info.schema)
                except TableExists:
                    target = emu.store.get_table(project, dataset, base_id + suffix)
            info = target
        self.request_no = emu.store.next_request_no()
        if emu.config.fast:
            return self.insert_fast(info, rows, req.get("skipInvalidRows", False), act)
        return self.insert_checked(info, rows, req, act)

    def check_insert_request(self, req):
        """Whole-request problems (Google answers these with HTTP 400); None if fine."""
        if not isinstance(req, dict):
            return "Invalid JSON payload received: the body must be a JSON object."
        unknown = set(req) - INSERT_KEYS
        if unknown:
            return "Invalid JSON payload received. Unknown name %r: no such field in the request." % sorted(unknown)[0]
        for k in ("skipInvalidRows", "ignoreUnknownValues"):
            if k in req and not isinstance(req[k], bool):
                return "Invalid value for %s: expected true or false." % k
        for k in ("templateSuffix", "traceId", "kind"):
            if k in req and req[k] is not None and not isinstance(req[k], str):
                return "Invalid value for %s: expected a string." % k
        rows = req.get("rows")
        if rows is None or rows == []:
            return "No rows present in the request."
        if not isinstance(rows, list):
            return "Invalid value for rows: expected an array."
        limit = self.server.emu.config.max_rows
        if len(rows) > limit:
            return "Too many rows present in the request, limit: %d row count: %d." % (limit, len(rows))
        for i, r in enumerate(rows):
            if not isinstance(r, dict):
                return "Invalid value at 'rows[%d]': expected an object." % i
            if set(r) - ROW_KEYS:
                return "Invalid JSON payload received. Unknown name %r at 'rows[%d]'." % (sorted(set(r) - ROW_KEYS)[0], i)
            j = r.get("json")
            if j is not None and not isinstance(j, dict):
                return "Invalid value at 'rows[%d].json': expected an object." % i
            iid = r.get("insertId")
            if iid is not None and not isinstance(iid, str):
                return "Invalid value at 'rows[%d].insertId': expected a string." % i
        return None

    def insert_fast(self, info, rows, skip_invalid, act):
        """--fast: no type checks, no row storage; only counting (and optional reject rules)."""
        emu = self.server.emu
        name = "%s.%s.%s" % info.ref
        rules = emu.faults.take_row_rules("insertAll", name)
        errors = {}
        if rules:
            for i, r in enumerate(rows):
                text = dumps(r.get("json") or {})
                for rx, reason, msg in rules:
                    if rx.search(text):
                        errors[i] = [{"reason": reason, "location": "", "debugInfo": "", "message": msg}]
                        break
        ok = len(rows) - len(errors)
        if not skip_invalid and any(e[0]["reason"] == "invalid" for e in errors.values()):
            ok = 0
            for i in range(len(rows)):
                errors.setdefault(i, [_stopped()])
        dups = 0
        if ok and emu.store.dedup_window > 0:
            ids = [r.get("insertId") for i, r in enumerate(rows) if i not in errors]
            dups = sum(emu.store.dedup_only(info, ids))
        if ok - dups:
            emu.store.count_fast(info, ok - dups)
        self.finish_insert(info, rows, errors, ok - dups, dups, act)

    def insert_checked(self, info, rows, req, act):
        emu = self.server.emu
        name = "%s.%s.%s" % info.ref
        skip_invalid = req.get("skipInvalidRows", False)
        ignore_unknown = req.get("ignoreUnknownValues", False)
        rules = emu.faults.take_row_rules("insertAll", name)
        comp = info.compiled
        # \uD800-style escapes can smuggle unpaired surrogates into strings; only then check each row
        check_utf8 = self._escapes_seen
        errors, items = {}, []
        for i, r in enumerate(rows):
            iid = r.get("insertId")
            value = r.get("json") or {}
            problems, cleaned = validate_row(comp, value, ignore_unknown)
            if iid is not None and len(iid) > MAX_INSERT_ID:
                problems.append(("insertId", "insertId is longer than %d characters." % MAX_INSERT_ID))
            if problems:
                errors[i] = [{"reason": "invalid", "location": loc, "debugInfo": "", "message": msg}
                             for loc, msg in problems]
                continue
            text = dumps(cleaned)
            if check_utf8:
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    errors[i] = [{"reason": "invalid", "location": "", "debugInfo": "",
                                  "message": "Row contains a string with an unpaired UTF-16 surrogate."}]
                    continue
            hit = None
            for rx, reason, msg in rules:
                if rx.search(text):
                    hit = [{"reason": reason, "location": "", "debugInfo": "", "message": msg}]
                    break
            if hit:
                errors[i] = hit
                continue
            items.append((i, iid or None, text))
        if not skip_invalid and any(e[0]["reason"] == "invalid" for e in errors.values()):
            for i, _, _ in items:
                errors[i] = [_stopped()]
            items = []
        dups = 0
        if items:
            flags = emu.store.insert_rows(info, [(iid, text) for _, iid, text in items], self.request_no)
            dups = sum(flags)
        self.finish_insert(info, rows, errors, len(items) - dups, dups, act)

    def finish_insert(self, info, rows, errors, stored, dups, act):
        emu = self.server.emu
        by_reason = {}
        for errs in errors.values():
            by_reason[errs[0]["reason"]] = by_reason.get(errs[0]["reason"], 0) + 1
        emu.stats.insert_result("%s.%s.%s" % info.ref, len(rows), stored, dups, by_reason)
        self.note += "rows=%d stored=%d dups=%d errors=%d" % (len(rows), stored, dups, len(errors))
        resp = {"kind": "bigquery#tableDataInsertAllResponse"}
        if errors:
            resp["insertErrors"] = [{"index": i, "errors": errors[i]} for i in sorted(errors)]
        self.finish_with(act, 200, resp)

    # -- tables ---------------------------------------------------------------------------

    def table_resource(self, info):
        emu = self.server.emu
        p, d, t = info.ref
        n = emu.store.count_rows(info) + info.fast_rows
        res = {
            "kind": "bigquery#table",
            "etag": "emu-%d-%d" % (info.id, int(info.modified * 1000)),
            "id": "%s:%s.%s" % (p, d, t),
            "selfLink": "%s/bigquery/v2/projects/%s/datasets/%s/tables/%s" % (
                emu.base_url, urllib.parse.quote(p), urllib.parse.quote(d), urllib.parse.quote(t)),
            "tableReference": {"projectId": p, "datasetId": d, "tableId": t},
            "schema": {"fields": info.schema},
            "numBytes": "0", "numLongTermBytes": "0", "numRows": "0",
            "creationTime": epoch_ms_text(info.created),
            "lastModifiedTime": epoch_ms_text(info.modified),
            "type": "TABLE", "location": "US",
        }
        if n:
            res["streamingBuffer"] = {"estimatedRows": str(n), "estimatedBytes": "0",
                                      "oldestEntryTime": epoch_ms_text(info.created)}
        return res

    def table_prelude(self, table_text, scopes):
        act = self.apply_faults(table_text)
        if act == "done":
            return "done"
        if not self.authenticate(scopes):
            return "done"
        return act

    def iam_refused(self, permission, p, d, t=None):
        """Answers 403 accessDenied (as BigQuery does) when IAM denies the permission."""
        if not self.server.emu.denied(permission, p, d, t):
            return False
        what = "table %s:%s.%s" % (p, d, t) if t is not None else "dataset %s:%s" % (p, d)
        self.respond_json(403, google_error(403, "accessDenied", "Access Denied: %s: Permission %s "
                                            "denied on %s (or it may not exist)." % (what, permission, what)))
        return True

    def ep_testIam(self, method, body, p, d, t):
        emu = self.server.emu
        self.endpoint = "tables"
        act = self.table_prelude("%s.%s.%s" % (p, d, t), TABLE_SCOPES)
        if act == "done":
            return
        if method != "POST":
            return self.respond_json(404, google_error(404, "notFound", "testIamPermissions takes POST."))
        if emu.store.get_table(p, d, t) is None:
            return self.not_found_table(p, d, t)
        req = self.parse_json_body(body) if body else {}
        if req is None:
            return
        perms = req.get("permissions") if isinstance(req, dict) else None
        if not isinstance(perms, list) or not all(isinstance(x, str) for x in perms):
            return self.respond_json(400, google_error(400, "invalid", "permissions must be a list of strings."))
        granted = [x for x in perms if not emu.denied(x, p, d, t)]
        self.finish_with(act, 200, {"permissions": granted} if granted else {})

    def not_found_table(self, p, d, t):
        self.respond_json(404, google_error(404, "notFound", "Not found: Table %s:%s.%s" % (p, d, t)))

    def ep_table(self, method, body, p, d, t):
        emu = self.server.emu
        self.endpoint = "tables"
        act = self.table_prelude("%s.%s.%s" % (p, d, t), TABLE_SCOPES)
        if act == "done":
            return
        if method == "GET" and self.iam_refused("bigquery.tables.get", p, d, t):
            return
        info = emu.store.get_table(p, d, t)
        if info is None:
            return self.not_found_table(p, d, t)
        if method == "GET":
            return self.finish_with(act, 200, self.table_resource(info))
        if method == "DELETE":
            emu.store.delete_table(info)
            return self.respond(204, b"", None)
        if method in ("PATCH", "PUT"):
            if not self.require_json_ct():
                return
            req = self.parse_json_body(body)
            if req is None:
                return
            if not isinstance(req, dict):
                return self.respond_json(400, google_error(400, "invalid", "Body must be a table resource."))
            if req.get("schema") is not None:
                try:
                    fields = normalize_schema(req["schema"])
                except SchemaError as e:
                    return self.respond_json(400, google_error(400, "invalid", str(e)))
                problem = schema_superset_problem(info.schema, fields)
                if problem:
                    return self.respond_json(400, google_error(400, "invalid", "Provided Schema does not match "
                                                               "Table %s:%s.%s: %s." % (p, d, t, problem)))
                info = emu.store.update_schema(info, fields)
            return self.finish_with(act, 200, self.table_resource(info))
        self.respond_json(404, google_error(404, "notFound", "Method %s not supported on a table." % method))

    def ep_tables(self, method, body, p, d):
        emu = self.server.emu
        self.endpoint = "tables"
        if method == "GET":
            act = self.table_prelude(None, TABLE_SCOPES)
            if act == "done":
                return
            tables = emu.store.list_tables(p, d)
            return self.finish_with(act, 200, {
                "kind": "bigquery#tableList", "totalItems": len(tables),
                "tables": [{"kind": "bigquery#table", "id": "%s:%s.%s" % i.ref, "type": "TABLE",
                            "tableReference": {"projectId": i.project, "datasetId": i.dataset,
                                               "tableId": i.table_id}} for i in tables]})
        if method != "POST":
            return self.respond_json(404, google_error(404, "notFound", "Method %s not supported." % method))
        act = self.table_prelude(None, TABLE_SCOPES)
        if act == "done" or not self.require_json_ct():
            return
        req = self.parse_json_body(body)
        if req is None:
            return
        ref = req.get("tableReference") if isinstance(req, dict) else None
        if not isinstance(ref, dict) or not isinstance(ref.get("tableId"), str) or not ref["tableId"]:
            return self.respond_json(400, google_error(400, "invalid", "tableReference.tableId is required."))
        if ref.get("projectId", p) != p or ref.get("datasetId", d) != d:
            return self.respond_json(400, google_error(400, "invalid", "tableReference does not match the "
                                                       "project and dataset in the URL."))
        t = ref["tableId"]
        if not re.match(r"^[\w\- ]{1,1024}$", t):
            return self.respond_json(400, google_error(400, "invalid", "Invalid table ID %r." % t))
        try:
            info = emu.store.create_table(p, d, t, req.get("schema") or [])
        except SchemaError as e:
            return self.respond_json(400, google_error(400, "invalid", str(e)))
        except TableExists:
            return self.respond_json(409, google_error(409, "duplicate", "Already Exists: Table %s:%s.%s"
                                                       % (p, d, t)))
        self.finish_with(act, 200, self.table_resource(info))

    # -- datasets (implicit) --------------------------------------------------------------

    @staticmethod
    def dataset_resource(p, d):
        return {"kind": "bigquery#dataset", "id": "%s:%s" % (p, d),
                "datasetReference": {"projectId": p, "datasetId": d}, "location": "US"}

    def ep_dataset(self, method, body, p, d):
        self.endpoint = "datasets"
        act = self.table_prelude(None, TABLE_SCOPES)
        if act == "done":
            return
        if method != "GET":
            return self.respond_json(404, google_error(404, "notFound", "Method %s not supported." % method))
        if self.iam_refused("bigquery.datasets.get", p, d):
            return
        self.finish_with(act, 200, self.dataset_resource(p, d))

    def ep_datasets(self, method, body, p):
        emu = self.server.emu
        self.endpoint = "datasets"
        act = self.table_prelude(None, TABLE_SCOPES)
        if act == "done":
            return
        if method != "POST":
            return self.respond_json(404, google_error(404, "notFound", "Method %s not supported." % method))
        if not self.require_json_ct():
            return
        req = self.parse_json_body(body)
        if req is None:
            return
        ref = req.get("datasetReference") if isinstance(req, dict) else None
        d = ref.get("datasetId") if isinstance(ref, dict) else None
        if not isinstance(d, str) or not re.match(r"^\w{1,1024}$", d):
            return self.respond_json(400, google_error(400, "invalid", "datasetReference.datasetId is required."))
        if emu.store.dataset_exists_explicitly(p, d):
            return self.respond_json(409, google_error(409, "duplicate", "Already Exists: Dataset %s:%s" % (p, d)))
        emu.store.create_dataset(p, d)
        self.finish_with(act, 200, self.dataset_resource(p, d))

    # -- OAuth token endpoint -------------------------------------------------------------

    def token_audiences(self):
        emu = self.server.emu
        scheme = "https" if self.server.ssl_ctx is not None else "http"
        auds = {emu.base_url + p for p in TOKEN_PATHS}
        host = self.headers.get("Host")
        if host:
            auds.update("%s://%s%s" % (scheme, host, p) for p in TOKEN_PATHS)
        return auds

    def token_endpoint(self, method, body):
        emu = self.server.emu
        # A fault's "table" names the token URL path here (/token or
        # /oauth2/v4/token), so one key file's token_uri can misbehave alone.
        act = self.apply_faults(self.req_path)
        if act == "done":
            return
        try:
            if method != "POST":
                raise AuthError("invalid_request", "The token endpoint only accepts POST.", 405)
            ct = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ct == "application/json":
                try:
                    params = loads_strict(body)
                except StrictJSONError:
                    raise AuthError("invalid_request", "Body is not valid JSON.")
                if not isinstance(params, dict):
                    raise AuthError("invalid_request", "Body must be a JSON object.")
            elif ct == "application/x-www-form-urlencoded":
                try:
                    qs = urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
                except UnicodeDecodeError:
                    raise AuthError("invalid_request", "Body is not UTF-8.")
                params = {k: v[0] for k, v in qs.items()}
            else:
                raise AuthError("invalid_request", "Content-Type must be application/x-www-form-urlencoded.")
            grant = params.get("grant_type")
            if grant == JWT_BEARER:
                assertion = params.get("assertion")
                if not assertion:
                    raise AuthError("invalid_request", "Missing required parameter: assertion")
                claims, meta = verify_jwt(assertion, emu.keys, time.time(), self.token_audiences())
                tok, life = emu.tokens.issue(claims["iss"], claims["scope"].split(), "jwt-bearer")
                emu.stats.token_grant("jwt-bearer")
                resp = {"access_token": tok.value, "expires_in": life, "token_type": "Bearer"}
            elif grant == "refresh_token":
                rt = params.get("refresh_token")
                if not rt:
                    raise AuthError("invalid_request", "Missing required parameter: refresh_token")
                user = emu.users.lookup(rt)
                if user is None:
                    raise AuthError("invalid_grant", "Bad Request: unknown or revoked refresh token.")
                if params.get("client_id") != user["client_id"] or params.get("client_secret") != user["client_secret"]:
                    raise AuthError("invalid_client", "Unauthorized: client_id/client_secret do not match.", 401)
                scopes = (params.get("scope") or "").split() or [SCOPE_CLOUD]
                tok, life = emu.tokens.issue(user.get("account", "user"), scopes, "refresh_token")
                emu.stats.token_grant("refresh_token")
                resp = {"access_token": tok.value, "expires_in": life, "token_type": "Bearer",
                        "scope": " ".join(scopes)}
            else:
                raise AuthError("unsupported_grant_type", "Invalid grant_type: %s" % (grant or ""))
        except AuthError as e:
            emu.stats.token_failure(e.error)
            self.note += "token error=%s " % e.error
            return self.respond_json(e.status, e.body())
        self.note += "token granted "
        self.finish_with(act, 200, resp, [("Cache-Control", "no-cache, no-store, max-age=0, must-revalidate"),
                                          ("Pragma", "no-cache")])

    # -- control API ----------------------------------------------------------------------

    def control(self, method, sub, body):
        emu = self.server.emu
        if not is_loopback(self.client_address[0]):
            return self.respond_json(403, google_error(403, "accessDenied", "The control API is loopback-only."))
        obj = None
        if body:
            try:
                obj = loads_strict(body)
            except StrictJSONError as e:
                return self.respond_json(400, {"error": "body is not valid JSON: %s" % e})
        key = (method, sub)
        if key == ("GET", "/health"):
            return self.respond_json(200, {"ok": True, "pid": emu.pid})
        if key == ("GET", "/config"):
            return self.respond_json(200, emu.describe())
        if key == ("GET", "/stats"):
            include = self.query.get("log", ["1"])[0] not in ("0", "false", "no")
            return self.respond_json(200, emu.stats.snapshot(include_log=include))
        if key == ("POST", "/reset"):
            what = obj if isinstance(obj, dict) else {}
            done = {}
            if what.get("faults", True):
                done["faults_cleared"] = emu.faults.clear()
            if what.get("stats", True):
                emu.stats.reset()
                done["stats_cleared"] = True
            if what.get("rows", False):
                emu.store.clear_rows()
                done["rows_cleared"] = True
            if what.get("tokens", False):
                done["tokens_revoked"] = emu.tokens.revoke_all()
            if what.get("iam", True):
                emu.iam_denied.clear()
            return self.respond_json(200, done)
        if sub == "/faults":
            if method == "GET":
                return self.respond_json(200, {"faults": emu.faults.describe()})
            if method == "DELETE":
                return self.respond_json(200, {"cleared": emu.faults.clear()})
            if method == "POST":
                specs = obj if isinstance(obj, list) else [obj]
                added = []
                try:
                    for spec in specs:
                        added.append(emu.faults.add(spec))
                except ValueError as e:
                    return self.respond_json(400, {"error": str(e)})
                return self.respond_json(200, {"added": added, "faults": emu.faults.describe()})
        if sub == "/iam":
            if method == "GET":
                return self.respond_json(200, {"denied": {k: sorted(v) for k, v in emu.iam_denied.items()}})
            if method == "DELETE":
                emu.iam_denied.clear()
                return self.respond_json(200, {"denied": {}})
            if method == "POST":
                deny = obj.get("deny") if isinstance(obj, dict) else None
                table = obj.get("table", "*") if isinstance(obj, dict) else "*"
                if not isinstance(deny, list) or not all(isinstance(x, str) for x in deny) or \
                        not isinstance(table, str):
                    return self.respond_json(400, {"error": 'expected {"deny": [permission, ...], '
                                                            '"table": "p.d.t" (default "*": all)}'})
                emu.iam_denied.setdefault(table, set()).update(deny)
                return self.respond_json(200, {"denied": {k: sorted(v) for k, v in emu.iam_denied.items()}})
        if key == ("GET", "/rows"):
            tname = self.query.get("table", [None])[0]
            try:
                ref = parse_table_ref(tname) if tname else None
                limit = int(self.query["limit"][0]) if "limit" in self.query else None
                after = int(self.query.get("after_seq", ["0"])[0])
            except ValueError as e:
                return self.respond_json(400, {"error": str(e)})
            canonical = self.query.get("canonical", ["0"])[0] not in ("0", "false", "no", "")
            rep = rows_report(emu.store, ref, limit, after, canonical=canonical)
            if rep is None:
                return self.respond_json(404, {"error": "no such table %s" % tname})
            return self.respond_json(200, rep)
        if key == ("GET", "/streams"):
            by_id = {i.id: "%s.%s.%s" % i.ref for i in emu.store.list_tables()}
            out = []
            for rec in emu.store.list_streams():
                d = rec.describe()
                d["table"] = by_id.get(rec.table_key)
                out.append(d)
            return self.respond_json(200, {"streams": out})
        if sub == "/tables":
            if method == "GET":
                return self.respond_json(200, {"tables": [
                    {"table": "%s.%s.%s" % i.ref, "schema": i.schema, "fast_rows": i.fast_rows}
                    for i in emu.store.list_tables()]})
            if method == "POST":
                if not isinstance(obj, dict) or "table" not in obj:
                    return self.respond_json(400, {"error": 'expected {"table": "p.d.t", "schema": [...]}'})
                try:
                    ref = parse_table_ref(obj["table"])
                    info = emu.store.create_table(*ref, obj.get("schema") or [], replace=bool(obj.get("replace")))
                except (ValueError, SchemaError) as e:
                    return self.respond_json(400, {"error": str(e)})
                except TableExists:
                    return self.respond_json(409, {"error": "table %s exists" % obj["table"]})
                return self.respond_json(200, {"table": "%s.%s.%s" % info.ref, "schema": info.schema})
        if key == ("POST", "/token"):
            o = obj if isinstance(obj, dict) else {}
            scopes = o.get("scopes") or [SCOPE_CLOUD]
            life = o.get("lifetime")
            if (life is not None and (isinstance(life, bool) or not isinstance(life, (int, float)) or life <= 0)) \
                    or not isinstance(scopes, list) or not all(isinstance(x, str) for x in scopes):
                return self.respond_json(400, {"error": 'expected {"scopes": [str, ...], "lifetime": seconds}'})
            tok, life = emu.tokens.issue(o.get("principal", "control-api"), scopes, "control", life)
            emu.stats.token_grant("control")
            return self.respond_json(200, {"access_token": tok.value, "expires_in": life, "token_type": "Bearer"})
        if key == ("POST", "/revoke-tokens"):
            return self.respond_json(200, {"revoked": emu.tokens.revoke_all()})
        self.respond_json(404, {"error": "unknown control call %s /_emu%s" % (method, sub)})
