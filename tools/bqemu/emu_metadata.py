"""A GCE-style metadata server (plain HTTP), for Application Default Credentials.

  GET /                                                          detection ping
  GET /computeMetadata/v1/instance/service-accounts/default/token[?scopes=a,b]
  GET /computeMetadata/v1/instance/service-accounts/default/email
  GET /computeMetadata/v1/instance/service-accounts/default/?recursive=true
  GET /computeMetadata/v1/project/project-id
  GET /computeMetadata/v1/project/numeric-project-id

Like the real server every answer carries "Metadata-Flavor: Google", every
path except the root ping needs the request header "Metadata-Flavor: Google"
(403 otherwise), and a request with X-Forwarded-For is refused (403), which
is how the real server defends against being reached through a proxy.  The
account may be named "default" or by its email.  Tokens come from the same
store as the REST service, so expiry (--token-lifetime) applies the same way.
Faults with "path": "metadata" apply to the token call.
"""

import json
import time

from emu_auth import SCOPE_CLOUD
from emu_http import BaseHandler

PREFIX = "/computeMetadata/v1"


class MetadataHandler(BaseHandler):
    server_version = "Metadata Server for VM"

    def _text(self, status, text, ctype="application/text"):
        self.respond(status, text.encode("utf-8"), ctype, [("Metadata-Flavor", "Google")])

    def _json(self, status, obj):
        self.respond(status, json.dumps(obj).encode("utf-8"), "application/json",
                     [("Metadata-Flavor", "Google")])

    def route(self, method, body):
        emu = self.server.emu
        self.endpoint = "metadata"
        path = self.req_path
        if method != "GET":
            return self._text(405, "Method not allowed\n")
        if path in ("/", ""):
            return self._text(200, "computeMetadata/\n")
        if self.headers.get("X-Forwarded-For"):
            return self._text(403, "Requests with X-Forwarded-For are refused by the metadata server.\n")
        if self.headers.get("Metadata-Flavor") != "Google":
            return self._text(403, "Missing required header: \"Metadata-Flavor: Google\"\n", "text/html")
        if path in (PREFIX, PREFIX + "/"):
            return self._text(200, "instance/\nproject/\n")
        if path == PREFIX + "/project/project-id":
            return self._text(200, emu.config.project)
        if path == PREFIX + "/project/numeric-project-id":
            return self._text(200, str(emu.config.numeric_project))
        sa_prefix = PREFIX + "/instance/service-accounts/"
        if path.startswith(sa_prefix):
            rest = path[len(sa_prefix):]
            account, _, leaf = rest.partition("/")
            email = emu.config.sa_email
            if account not in ("default", email):
                return self._text(404, "Not found\n", "text/html")
            if leaf == "token":
                return self.token()
            if leaf == "email":
                return self._text(200, email)
            if leaf == "scopes":
                return self._text(200, SCOPE_CLOUD + "\n")
            if leaf == "" and self.query.get("recursive", [""])[0] == "true":
                return self._json(200, {"aliases": ["default"], "email": email, "scopes": [SCOPE_CLOUD]})
        self._text(404, "Not found\n", "text/html")

    def token(self):
        emu = self.server.emu
        ms = emu.faults.take_latency("metadata")
        if ms:
            time.sleep(ms / 1000.0)
        act = emu.faults.take_action("metadata")
        if act is not None:
            if act.kind in ("drop", "down"):
                return self.drop(act.spec.get("mode", "close"))
            if act.kind == "status":
                return self._text(act.spec["status"], act.spec.get("message") or "injected metadata error\n")
        scopes = [s for s in self.query.get("scopes", [""])[0].split(",") if s] or [SCOPE_CLOUD]
        tok, life = emu.tokens.issue(emu.config.sa_email, scopes, "metadata")
        emu.stats.token_grant("metadata")
        body = {"access_token": tok.value, "expires_in": life, "token_type": "Bearer"}
        if act is not None and act.kind == "truncate":
            self.respond(200, json.dumps(body).encode(), "application/json", [("Metadata-Flavor", "Google")],
                         truncate_at=act.spec.get("truncate_at", 1 << 30))
        else:
            self._json(200, body)
