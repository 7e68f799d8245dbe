"""BigQuery table schemas: normalisation and per-row type checking.

A schema is a list of TableFieldSchema objects in BigQuery's JSON form
({"name", "type", "mode", "fields", ...}).  normalize_schema() validates one
and rewrites type names to the legacy spelling the real tables.get returns
(INT64 -> INTEGER, FLOAT64 -> FLOAT, BOOL -> BOOLEAN, STRUCT -> RECORD).

compile_schema() turns a schema into a lookup structure and validate_row()
checks one insertAll row (the value of rows[].json) against it, returning a
list of (location, message) problems plus the row with unknown values removed
when ignoreUnknownValues is set.  The rules follow what BigQuery documents for
the JSON encoding of each type (see docs/emulator.md for the exact list and
where the emulator is stricter or looser than the service).

The checks work on plain Python values, so the Storage Write service can reuse
them after decoding protobuf rows.
"""

import base64
import binascii
import datetime
import decimal
import json
import math
import re

from emu_common import StrictJSONError, loads_strict

LEGACY_TYPES = {
    "STRING": "STRING", "BYTES": "BYTES",
    "INTEGER": "INTEGER", "INT64": "INTEGER",
    "FLOAT": "FLOAT", "FLOAT64": "FLOAT",
    "BOOLEAN": "BOOLEAN", "BOOL": "BOOLEAN",
    "TIMESTAMP": "TIMESTAMP", "DATE": "DATE", "TIME": "TIME", "DATETIME": "DATETIME",
    "GEOGRAPHY": "GEOGRAPHY", "NUMERIC": "NUMERIC", "BIGNUMERIC": "BIGNUMERIC",
    "JSON": "JSON", "RECORD": "RECORD", "STRUCT": "RECORD", "RANGE": "RANGE",
}
MODES = ("NULLABLE", "REQUIRED", "REPEATED")
RANGE_ELEMENT_TYPES = ("DATE", "DATETIME", "TIMESTAMP")

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
TS_MIN, TS_MAX_EXCL = -62135596800, 253402300800   # 0001-01-01 .. 9999-12-31 23:59:59.999999 UTC


class SchemaError(ValueError):
    pass


# ----------------------------------------------------------------------------------------------
# Schema normalisation

def _name_ok(name):
    if not isinstance(name, str) or not name or len(name) > 300:
        return False
    if name != name.strip() or "." in name:
        return False
    return not any(ord(c) < 32 for c in name)


def _int_param(f, key, path):
    v = f.get(key)
    if v is None:
        return None
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise SchemaError("%s: %s must be an integer, got %r" % (path, key, v))
    return n


def normalize_schema(obj, _prefix=""):
    """Validate a schema (list of fields or {"fields": [...]}) and return a normalised copy.

    Raises SchemaError with a message naming the offending field."""
    if isinstance(obj, dict):
        if "fields" not in obj:
            raise SchemaError("schema object must have a 'fields' list")
        obj = obj["fields"]
    if obj is None:
        obj = []
    if not isinstance(obj, list):
        raise SchemaError("schema must be a list of fields")
    out, seen = [], set()
    for i, f in enumerate(obj):
        if not isinstance(f, dict):
            raise SchemaError("%sfield #%d is not an object" % (_prefix, i))
        name = f.get("name")
        if not _name_ok(name):
            raise SchemaError("%sfield #%d: invalid field name %r" % (_prefix, i, name))
        path = _prefix + name
        if name.lower() in seen:
            raise SchemaError("duplicate field name %s (names are case-insensitive)" % path)
        seen.add(name.lower())
        t = f.get("type")
        if not isinstance(t, str) or t.upper() not in LEGACY_TYPES:
            raise SchemaError("%s: unsupported type %r" % (path, t))
        t = LEGACY_TYPES[t.upper()]
        mode = f.get("mode") or "NULLABLE"
        if not isinstance(mode, str) or mode.upper() not in MODES:
            raise SchemaError("%s: invalid mode %r" % (path, mode))
        nf = dict(f)
        nf["name"], nf["type"], nf["mode"] = name, t, mode.upper()
        if t == "RECORD":
            sub = f.get("fields")
            if not isinstance(sub, list) or not sub:
                raise SchemaError("%s: a RECORD field needs a non-empty 'fields' list" % path)
            nf["fields"] = normalize_schema(sub, path + ".")
        elif f.get("fields"):
            raise SchemaError("%s: only RECORD fields may have sub-fields" % path)
        else:
            nf.pop("fields", None)
        if t == "RANGE":
            ret = f.get("rangeElementType")
            et = ret.get("type") if isinstance(ret, dict) else None
            if not isinstance(et, str) or et.upper() not in RANGE_ELEMENT_TYPES:
                raise SchemaError("%s: RANGE needs rangeElementType.type DATE, DATETIME or TIMESTAMP" % path)
            nf["rangeElementType"] = {"type": et.upper()}
        p, s = _int_param(f, "precision", path), _int_param(f, "scale", path)
        if p is not None or s is not None:
            if t not in ("NUMERIC", "BIGNUMERIC"):
                raise SchemaError("%s: precision/scale only apply to NUMERIC and BIGNUMERIC" % path)
            if p is None:
                raise SchemaError("%s: scale given without precision" % path)
            s = s or 0
            max_int, max_scale = (29, 9) if t == "NUMERIC" else (38, 38)
            if not (0 <= s <= max_scale and 1 <= p - s <= max_int):
                raise SchemaError("%s: precision %d / scale %d out of range for %s" % (path, p, s, t))
        rm = f.get("roundingMode")
        if rm is not None:
            if t not in ("NUMERIC", "BIGNUMERIC"):
                raise SchemaError("%s: roundingMode only applies to NUMERIC and BIGNUMERIC" % path)
            if rm not in ("ROUNDING_MODE_UNSPECIFIED", "ROUND_HALF_AWAY_FROM_ZERO", "ROUND_HALF_EVEN"):
                raise SchemaError("%s: unknown roundingMode %r" % (path, rm))
        ml = _int_param(f, "maxLength", path)
        if ml is not None and (t not in ("STRING", "BYTES") or ml <= 0):
            raise SchemaError("%s: maxLength must be positive and only applies to STRING/BYTES" % path)
        out.append(nf)
    return out


def schema_superset_problem(old, new, _prefix=""):
    """Return a message if `new` cannot replace `old` the way BigQuery allows
    (add NULLABLE/REPEATED columns, relax REQUIRED to NULLABLE), else None."""
    new_by = {f["name"].lower(): f for f in new}
    for of in old:
        path = _prefix + of["name"]
        nf = new_by.get(of["name"].lower())
        if nf is None:
            return "field %s is missing in the new schema" % path
        if nf["type"] != of["type"]:
            return "field %s changed type from %s to %s" % (path, of["type"], nf["type"])
        if nf["mode"] != of["mode"] and not (of["mode"] == "REQUIRED" and nf["mode"] == "NULLABLE"):
            return "field %s changed mode from %s to %s" % (path, of["mode"], nf["mode"])
        if of["type"] == "RECORD":
            msg = schema_superset_problem(of["fields"], nf["fields"], path + ".")
            if msg:
                return msg
    old_names = {f["name"].lower() for f in old}
    for nf in new:
        if nf["name"].lower() not in old_names and nf["mode"] == "REQUIRED":
            return "new field %s%s cannot be REQUIRED" % (_prefix, nf["name"])
    return None


# ----------------------------------------------------------------------------------------------
# Value parsers.  Each returns an error text, or None when the value is acceptable.

def _show(v):
    try:
        s = json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_string(v, col):
    if isinstance(v, str):
        s = v
    elif _is_num(v) or isinstance(v, bool):
        s = json.dumps(v)          # BigQuery converts JSON scalars to their text
    else:
        return "expected a string, got %s" % _show(v)
    if col.max_length is not None and len(s) > col.max_length:
        return "string of %d characters exceeds maxLength %d" % (len(s), col.max_length)
    return None


_B64_STD = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
_B64_URL = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")


def check_bytes(v, col):
    if not isinstance(v, str):
        return "expected a base64 string, got %s" % _show(v)
    if _B64_STD.match(v):
        alt = None
    elif _B64_URL.match(v):
        alt = b"-_"
    else:
        return "not valid base64: %s" % _show(v)
    body = v.rstrip("=")
    if len(body) % 4 == 1 or ("=" in v and len(v) % 4 != 0):
        return "not valid base64 (bad length): %s" % _show(v)
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=alt, validate=True)
    except (binascii.Error, ValueError):
        return "not valid base64: %s" % _show(v)
    if col.max_length is not None and len(raw) > col.max_length:
        return "%d bytes exceed maxLength %d" % (len(raw), col.max_length)
    return None


_INT_RE = re.compile(r"^[+-]?[0-9]+\Z")


def check_integer(v, col):
    if isinstance(v, bool):
        return "expected an integer, got a boolean"
    if isinstance(v, int):
        n = v
    elif isinstance(v, float):
        if not math.isfinite(v) or not v.is_integer():
            return "expected an integer, got %s" % _show(v)
        n = int(v)
    elif isinstance(v, str):
        if not _INT_RE.match(v):
            return "%s is not an integer" % _show(v)
        n = int(v)
    else:
        return "expected an integer, got %s" % _show(v)
    if not INT64_MIN <= n <= INT64_MAX:
        return "%s is outside the INT64 range" % _show(v)
    return None


_FLOAT_RE = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
_FLOAT_SPECIAL = {"nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def check_float(v, col):
    if isinstance(v, bool):
        return "expected a number, got a boolean"
    if isinstance(v, int):
        return None
    if isinstance(v, float):
        return None if math.isfinite(v) else "number out of the FLOAT64 range"
    if isinstance(v, str):
        if v.lower() in _FLOAT_SPECIAL:
            return None
        if _FLOAT_RE.match(v):
            return None if math.isfinite(float(v)) else "%s is out of the FLOAT64 range" % _show(v)
        return "%s is not a number" % _show(v)
    return "expected a number, got %s" % _show(v)


def check_boolean(v, col):
    if isinstance(v, bool):
        return None
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return None
    return "expected true or false, got %s" % _show(v)


# ASCII digits only, and \Z (not $, which also matches before a final newline).
_DATE_RE = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})\Z", re.ASCII)
_TIME_RE = re.compile(r"^(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d{1,6}))?\Z", re.ASCII)
_DT_RE = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})"
                    r"(?:[Tt ](\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.(\d{1,6}))?)?)?\Z", re.ASCII)
_TS_RE = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})"
                    r"(?:[Tt ](\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.(\d{1,6}))?)?)?"
                    r"[ \t]*(?:(Z|z|UTC)|([+-])(?:(\d\d)(?::?(\d\d))?|(\d)(?::(\d\d))?))?\Z", re.ASCII)
_EPOCH = datetime.datetime(1970, 1, 1)


def _date(y, m, d):
    return datetime.date(int(y), int(m), int(d))       # ValueError on a bad date / year 0


def _clock(h, mi, s, frac):
    h, mi, s = int(h or 0), int(mi or 0), int(s or 0)
    if h > 23 or mi > 59 or s > 59:
        raise ValueError("time of day out of range")
    us = int((frac or "").ljust(6, "0") or 0)
    return h, mi, s, us


def parse_date(v):
    m = _DATE_RE.match(v)
    if not m:
        raise ValueError("expected YYYY-MM-DD")
    return _date(*m.groups()).toordinal()


def parse_time(v):
    m = _TIME_RE.match(v)
    if not m:
        raise ValueError("expected HH:MM:SS[.ffffff]")
    return _clock(*m.groups())


def parse_datetime(v):
    m = _DT_RE.match(v)
    if not m:
        raise ValueError("expected YYYY-MM-DD[ HH:MM[:SS[.ffffff]]] without a time zone")
    g = m.groups()
    return (_date(*g[:3]).toordinal(),) + _clock(*g[3:])


def parse_timestamp(v):
    """-> microseconds since the epoch (UTC)."""
    if _is_num(v):
        if not (isinstance(v, int) or math.isfinite(v)) or not TS_MIN <= v < TS_MAX_EXCL:
            raise ValueError("epoch seconds out of the TIMESTAMP range")
        if isinstance(v, float) and decimal.Decimal(repr(v)).as_tuple().exponent < -6:
            # the stricter reading: digits below a microsecond are refused, as in strings
            raise ValueError("%r has more than 6 fractional digits" % v)
        return int(round(v * 1000000))
    if not isinstance(v, str):
        raise ValueError("expected a timestamp string or epoch seconds")
    m = _TS_RE.match(v)
    if not m:
        raise ValueError("expected 'YYYY-MM-DD HH:MM:SS[.ffffff][ UTC|Z|+HH:MM]' or epoch seconds")
    g = m.groups()
    day = _date(*g[:3])
    h, mi, s, us = _clock(*g[3:7])
    dt = datetime.datetime(day.year, day.month, day.day, h, mi, s, us)
    if g[8]:
        # +HH, +HHMM, +HH:MM, +H, +H:MM ("+241" is no offset: hours take two digits first)
        oh, om = int(g[9] or g[11]), int(g[10] or g[12] or 0)
        if oh > 14 or om > 59:
            raise ValueError("time zone offset out of range")
        off = datetime.timedelta(hours=oh, minutes=om)
        try:
            dt = dt - off if g[8] == "+" else dt + off
        except OverflowError:
            raise ValueError("timestamp out of range")
    delta = dt - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000000 + delta.microseconds


def _string_checker(parser, what):
    def check(v, col):
        if not isinstance(v, str):
            return "expected a %s string, got %s" % (what, _show(v))
        try:
            parser(v)
        except ValueError as e:
            return "%s: %s" % (_show(v), e)
        return None
    return check


check_date = _string_checker(parse_date, "DATE")
check_time = _string_checker(parse_time, "TIME")
check_datetime = _string_checker(parse_datetime, "DATETIME")


def check_timestamp(v, col):
    if isinstance(v, bool):
        return "expected a timestamp, got a boolean"
    try:
        parse_timestamp(v)
    except ValueError as e:
        return "%s: %s" % (_show(v), e)
    return None


_DEC_RE = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
_DEC_CTX = decimal.Context(prec=200, rounding=decimal.ROUND_HALF_UP)
_BIGNUM_LIMIT = decimal.Decimal(1 << 255).scaleb(-38, _DEC_CTX)   # |v| bound for BIGNUMERIC


def _numeric_checker(kind):
    def check(v, col):
        if isinstance(v, bool):
            return "expected a %s, got a boolean" % kind
        if isinstance(v, int):
            text = str(v)
        elif isinstance(v, float):
            if not math.isfinite(v):
                return "%s cannot hold %s" % (kind, _show(v))
            text = repr(v)
        elif isinstance(v, str):
            text = v
        else:
            return "expected a %s string, got %s" % (kind, _show(v))
        if not _DEC_RE.match(text):
            return "%s is not a decimal number" % _show(v)
        d = _DEC_CTX.create_decimal(text)    # exact: the default context would round to 28 digits
        if d.adjusted() > 80:
            return "%s is out of range for %s" % (_show(v), kind)
        if col.precision is not None:
            scale, int_digits = col.scale, col.precision - col.scale
        elif kind == "NUMERIC":
            scale, int_digits = 9, 29
        else:
            scale, int_digits = 38, None
        # BigQuery rounds to the scale, by the column's roundingMode
        q = d.quantize(decimal.Decimal(1).scaleb(-scale), rounding=col.rounding, context=_DEC_CTX)
        if int_digits is not None:
            if q.copy_abs() >= decimal.Decimal(10).scaleb(int_digits - 1, _DEC_CTX):
                return "%s is out of range for %s (%d integer digits max)" % (_show(v), kind, int_digits)
        elif not (_BIGNUM_LIMIT.copy_negate() <= q < _BIGNUM_LIMIT):
            return "%s is out of range for BIGNUMERIC" % _show(v)
        return None
    return check


def check_json(v, col):
    if isinstance(v, str):
        try:
            loads_strict(v)
        except StrictJSONError as e:
            return "string is not valid JSON (%s)" % e
    return None


_WKT_RE = re.compile(r"^\s*(POINT|LINESTRING|POLYGON|MULTIPOINT|MULTILINESTRING|MULTIPOLYGON|"
                     r"GEOMETRYCOLLECTION)\s*(Z|M|ZM)?\s*(EMPTY|\(.*\))\s*$", re.I | re.S)
_WKT_CHARS = re.compile(r"^[A-Za-z0-9\s().,+\-]*$")
_GEOJSON_TYPES = {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon",
                  "MultiPolygon", "GeometryCollection"}


def _coords_ok(lon, lat):
    return -180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0


def _check_wkt(s):
    m = _WKT_RE.match(s)
    if not m or not _WKT_CHARS.match(s):
        return "not WKT or GeoJSON"
    depth = 0
    for c in s:
        depth += (c == "(") - (c == ")")
        if depth < 0:
            return "unbalanced parentheses"
    if depth:
        return "unbalanced parentheses"
    # every innermost group "(x y, x y ...)" must hold coordinate pairs in range
    for group in re.findall(r"\(([^()]*)\)", s):
        if not group.strip() or group.strip().upper() == "EMPTY":
            continue
        for point in group.split(","):
            parts = point.split()
            if len(parts) not in (2, 3, 4):
                return "bad coordinate %r" % point.strip()
            try:
                nums = [float(p) for p in parts]
            except ValueError:
                return "bad coordinate %r" % point.strip()
            if not _coords_ok(nums[0], nums[1]):
                return "coordinate %r out of range" % point.strip()
    return None


def check_geography(v, col):
    if not isinstance(v, str):
        return "expected a WKT or GeoJSON string, got %s" % _show(v)
    if v.lstrip().startswith("{"):
        try:
            g = loads_strict(v)
        except StrictJSONError as e:
            return "GeoJSON is not valid JSON (%s)" % e
        if not isinstance(g, dict) or g.get("type") not in _GEOJSON_TYPES:
            return "GeoJSON must be a geometry object"
        key = "geometries" if g["type"] == "GeometryCollection" else "coordinates"
        if not isinstance(g.get(key), list):
            return "GeoJSON %s needs a '%s' array" % (g["type"], key)
        return None
    msg = _check_wkt(v)
    return None if msg is None else "%s: %s" % (_show(v), msg)


_RANGE_RE = re.compile(r"^\[\s*([^,]*?)\s*,\s*([^,]*?)\s*\)$")
_RANGE_PARSERS = {"DATE": parse_date, "DATETIME": parse_datetime, "TIMESTAMP": parse_timestamp}


def check_range(v, col):
    if not isinstance(v, str):
        return "expected a '[start, end)' string, got %s" % _show(v)
    m = _RANGE_RE.match(v)
    if not m:
        return "%s: expected '[start, end)'" % _show(v)
    parse = _RANGE_PARSERS[col.range_type]
    keys = []
    for part in m.groups():
        if part.upper() in ("UNBOUNDED", "NULL"):
            keys.append(None)
            continue
        try:
            keys.append(parse(part))
        except ValueError as e:
            return "%s: bound %r is not a %s (%s)" % (_show(v), part, col.range_type, e)
    if keys[0] is not None and keys[1] is not None and not keys[0] < keys[1]:
        return "%s: start must be before end" % _show(v)
    return None


CHECKERS = {
    "STRING": check_string, "BYTES": check_bytes, "INTEGER": check_integer, "FLOAT": check_float,
    "BOOLEAN": check_boolean, "TIMESTAMP": check_timestamp, "DATE": check_date,
    "TIME": check_time, "DATETIME": check_datetime, "NUMERIC": _numeric_checker("NUMERIC"),
    "BIGNUMERIC": _numeric_checker("BIGNUMERIC"), "JSON": check_json,
    "GEOGRAPHY": check_geography, "RANGE": check_range, "RECORD": None,
}


# ----------------------------------------------------------------------------------------------
# Compiled schemas and row validation

class Column:
    __slots__ = ("name", "lname", "type", "mode", "check", "sub", "max_length",
                 "precision", "scale", "rounding", "range_type", "default_expr", "description")

    def __init__(self, f):
        self.name, self.lname = f["name"], f["name"].lower()
        self.type, self.mode = f["type"], f["mode"]
        self.check = CHECKERS[self.type]
        self.sub = compile_schema(f["fields"]) if self.type == "RECORD" else None
        ml = f.get("maxLength")
        self.max_length = int(ml) if ml is not None else None
        self.precision = int(f["precision"]) if f.get("precision") is not None else None
        self.scale = int(f.get("scale") or 0)
        self.rounding = (decimal.ROUND_HALF_EVEN if f.get("roundingMode") == "ROUND_HALF_EVEN"
                         else decimal.ROUND_HALF_UP)   # half away from zero, the default
        self.range_type = (f.get("rangeElementType") or {}).get("type")
        self.default_expr = f.get("defaultValueExpression")
        self.description = f.get("description")


class Compiled:
    __slots__ = ("by_lower", "required", "columns", "order")

    def __init__(self, fields):
        self.by_lower = {}
        self.columns = []             # in schema order
        self.order = {}               # lower-case name -> position
        for f in fields:
            c = Column(f)
            self.by_lower[c.lname] = c
            self.order[c.lname] = len(self.columns)
            self.columns.append(c)
        self.required = [c for c in self.by_lower.values() if c.mode == "REQUIRED"]


def compile_schema(fields):
    return Compiled(fields)


MAX_ERRORS_PER_ROW = 20


def _check_one(col, v, loc, errs, ignore_unknown):
    """Check a non-null scalar/record value; return it, or a cleaned copy of a record."""
    if col.type == "RECORD":
        if not isinstance(v, dict):
            errs.append((loc, "This field: %s is not a record (got %s)." % (loc, _show(v))))
            return v
        sub_errs, cleaned = validate_row(col.sub, v, ignore_unknown, loc + ".")
        errs.extend(sub_errs)
        return cleaned
    if isinstance(v, dict) and col.type != "JSON":
        errs.append((loc, "JSON object given for non-record field: %s." % loc))
        return v
    if isinstance(v, list) and col.type != "JSON":
        errs.append((loc, "Array given for non-repeated field: %s." % loc))
        return v
    msg = col.check(v, col)
    if msg:
        errs.append((loc, "Invalid %s value for field %s: %s" % (col.type, loc, msg)))
    return v


def validate_row(comp, row, ignore_unknown, prefix=""):
    """Check one row (a dict) against a compiled schema.

    Returns (errors, cleaned) where errors is a list of (location, message)
    and cleaned is the row itself, or a copy without unknown values when
    ignore_unknown dropped some."""
    errs = []
    cleaned = row
    seen = set()
    for key, v in row.items():
        loc = prefix + key
        col = comp.by_lower.get(key.lower())
        if col is None:
            if ignore_unknown:
                if cleaned is row:
                    cleaned = dict(row)
                del cleaned[key]
            else:
                errs.append((loc, "no such field: %s." % loc))
            continue
        if col.lname in seen:
            errs.append((loc, "field %s appears twice (column names are case-insensitive)." % loc))
            continue
        seen.add(col.lname)
        if v is None:
            if col.mode == "REQUIRED":
                errs.append((loc, "Missing required field: %s." % loc))
            continue
        if col.mode == "REPEATED":
            if not isinstance(v, list):
                errs.append((loc, "Repeated field %s must be an array (got %s)." % (loc, _show(v))))
                continue
            new_list = v
            for i, el in enumerate(v):
                if el is None:
                    errs.append((loc, "Repeated field %s has a null element at index %d." % (loc, i)))
                    continue
                out = _check_one(col, el, loc, errs, ignore_unknown)
                if out is not el:
                    if new_list is v:
                        new_list = list(v)
                    new_list[i] = out
            if new_list is not v:
                if cleaned is row:
                    cleaned = dict(row)
                cleaned[key] = new_list
        else:
            out = _check_one(col, v, loc, errs, ignore_unknown)
            if out is not v:
                if cleaned is row:
                    cleaned = dict(row)
                cleaned[key] = out
        if len(errs) >= MAX_ERRORS_PER_ROW:
            return errs, cleaned
    for col in comp.required:
        if col.lname not in seen:
            errs.append((prefix + col.name, "Missing required field: %s%s." % (prefix, col.name)))
    return errs, cleaned
