"""Small helpers shared by every bqemu service: Google-style error bodies,
strict JSON parsing, table references and time formatting.

Google's JSON APIs answer errors with one envelope:

    {"error": {"code": 404, "message": "...",
               "errors": [{"domain": "global", "reason": "notFound", "message": "..."}],
               "status": "NOT_FOUND"}}

`code` is the HTTP status, `status` the canonical gRPC code name, and each
entry of `errors` carries a BigQuery `reason` that clients use to decide
whether to retry.  Everything that builds such a body goes through
google_error() so the shape is identical everywhere.
"""

import json
import re
import time

# HTTP status -> canonical status name used in the "status" member.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ALREADY_EXISTS",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

# Default BigQuery reason for an HTTP status when a fault does not name one.
DEFAULT_REASONS = {
    400: "invalid",
    401: "authError",
    403: "rateLimitExceeded",
    404: "notFound",
    408: "timeout",
    409: "duplicate",
    413: "invalid",
    429: "rateLimitExceeded",
    500: "backendError",
    501: "notImplemented",
    502: "backendError",
    503: "backendError",
    504: "backendError",
}

# Default human text for a reason when a fault does not give a message.
DEFAULT_MESSAGES = {
    "rateLimitExceeded": "Exceeded rate limits: too many requests for this table (injected by bqemu).",
    "quotaExceeded": "Quota exceeded: the project exceeded its streaming quota (injected by bqemu).",
    "backendError": "The service encountered a temporary error. Retry the request (injected by bqemu).",
    "internalError": "An internal error occurred (injected by bqemu).",
    "authError": "The request carried invalid authentication credentials (injected by bqemu).",
    "accessDenied": "Access denied (injected by bqemu).",
    "invalid": "Invalid request (injected by bqemu).",
    "notFound": "Not found (injected by bqemu).",
    "timeout": "The request timed out (injected by bqemu).",
}

JSON_CT = "application/json; charset=UTF-8"


def status_name(code):
    if code in STATUS_NAMES:
        return STATUS_NAMES[code]
    if 400 <= code < 500:
        return "FAILED_PRECONDITION"
    return "UNKNOWN"


def google_error(code, reason, message, location=None, location_type=None):
    """Return the dict of a Google API error body."""
    item = {"domain": "global", "reason": reason, "message": message}
    if location is not None:
        item["location"] = location
    if location_type is not None:
        item["locationType"] = location_type
    return {"error": {"code": code, "message": message, "errors": [item],
                      "status": status_name(code)}}


def dumps(obj):
    """Compact JSON text (the form stored and sent on the wire)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def dumps_bytes(obj):
    return dumps(obj).encode("utf-8")


class StrictJSONError(ValueError):
    pass


def _reject_constant(name):
    # Python's json accepts NaN / Infinity tokens; JSON (and Google's parser) do not.
    raise StrictJSONError("invalid JSON token %s" % name)


def _reject_duplicates(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise StrictJSONError("duplicate key %r" % k)
        obj[k] = v
    return obj


def loads_strict(data):
    """Parse JSON text or UTF-8 bytes like a strict JSON parser would.

    Rejects NaN/Infinity tokens, duplicate keys, invalid UTF-8 and trailing
    garbage.  Raises StrictJSONError (a ValueError) with a short reason.
    """
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise StrictJSONError("body is not valid UTF-8 (%s)" % e.reason)
    try:
        return json.loads(data, parse_constant=_reject_constant,
                          object_pairs_hook=_reject_duplicates)
    except StrictJSONError:
        raise
    except ValueError as e:
        raise StrictJSONError(str(e))
    except RecursionError:
        raise StrictJSONError("JSON nested too deeply")


def loads_fast(data):
    """Parse JSON quickly (no duplicate-key check); still rejects NaN/Infinity."""
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except StrictJSONError:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise StrictJSONError(str(e))
    except RecursionError:
        raise StrictJSONError("JSON nested too deeply")


_REF_RE = re.compile(r"^([^.:/\s]+)[.:]([^./\s]+)\.([^./\s]+)$")


def parse_table_ref(text):
    """'project.dataset.table' (or 'project:dataset.table') -> (p, d, t)."""
    m = _REF_RE.match(text or "")
    if not m:
        raise ValueError("table reference must look like project.dataset.table, got %r" % text)
    return m.group(1), m.group(2), m.group(3)


def table_ref_text(ref):
    return "%s.%s.%s" % tuple(ref)


def iso_time(ts):
    """Epoch seconds -> 'YYYY-MM-DDTHH:MM:SS.ffffffZ'."""
    whole = int(ts)
    frac = int(round((ts - whole) * 1e6))
    if frac >= 1000000:
        whole, frac = whole + 1, frac - 1000000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + ".%06dZ" % frac


def epoch_ms_text(ts):
    return str(int(ts * 1000))
