"""BigQuery values in one canonical JSON spelling, and the binary encodings of
the Storage Write API.

insertAll stores each row's JSON as the client sent it; BigQuery itself would
store typed values.  The Storage Write service stores the rows it decodes from
protobuf as JSON in one canonical spelling per type, the same spelling
canonical_row() produces from any insertAll JSON row that BigQuery accepts.
So a row written either way can be compared: a test that sends canonical JSON
through insertAll gets byte-identical rows, and GET /_emu/rows?canonical=1
canonicalises every stored row for comparisons that must not care about
spelling.

Canonical spelling (what a row stored by the write path looks like):

  STRING, GEOGRAPHY  the string
  BYTES              standard base64 with padding
  INTEGER            a JSON integer (exact, also beyond 2^53)
  FLOAT              a JSON number with a fraction or exponent (1.0, not 1);
                     "NaN", "Infinity", "-Infinity" as strings
  BOOLEAN            true / false
  NUMERIC,           a decimal string rounded half away from zero to the
  BIGNUMERIC         column's scale (9, 38, or `scale`), without exponent,
                     trailing fraction zeros or "-0": "1.5", "-0.000000001"
  TIMESTAMP          "YYYY-MM-DDTHH:MM:SS[.ffffff]Z" (UTC; the fraction only
                     when not zero, then always 6 digits)
  DATE               "YYYY-MM-DD"
  TIME               "HH:MM:SS[.ffffff]"
  DATETIME           "YYYY-MM-DDTHH:MM:SS[.ffffff]"
  JSON               the JSON text (canonical_row() re-serialises it compactly;
                     the write path keeps the client's text, as insertAll does)
  RANGE              "[start, end)" with canonical bounds or UNBOUNDED
  RECORD             an object, keys in schema order
  REPEATED           an array; an empty array is left out like NULL
  NULL               the key is left out

Keys use the schema's spelling of the column name, in schema order.

Storage Write encodings decoded here (reference sections 2.2-2.4):
  DATE        int32 days since 1970-01-01 (-719162 .. 2932896)
  TIMESTAMP   int64 microseconds since the epoch, UTC
  TIME        packed int64: hour<<32 | minute<<26 | second<<20 | micros
  DATETIME    packed int64: year<<46 | month<<42 | day<<37 | hour<<32 |
              minute<<26 | second<<20 | micros
  NUMERIC     bytes: little-endian two's complement of value * 10^9
  BIGNUMERIC  the same with 10^38
"""

import base64
import datetime
import decimal
import json
import math

from emu_schema import (INT64_MAX, INT64_MIN, parse_date, parse_datetime, parse_time,
                        parse_timestamp)

EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
DATE_MIN_DAYS = datetime.date(1, 1, 1).toordinal() - EPOCH_ORDINAL        # -719162
DATE_MAX_DAYS = datetime.date(9999, 12, 31).toordinal() - EPOCH_ORDINAL   # 2932896
TS_MIN_US = -62135596800 * 1000000
TS_MAX_US = 253402300800 * 1000000 - 1

_DEC_CTX = decimal.Context(prec=200, rounding=decimal.ROUND_HALF_UP)
NUMERIC_SCALE = 9
BIGNUMERIC_SCALE = 38
NUMERIC_MAX = decimal.Decimal("99999999999999999999999999999.999999999")
BIGNUMERIC_MIN = decimal.Decimal(-(1 << 255)).scaleb(-38, _DEC_CTX)
BIGNUMERIC_MAX = decimal.Decimal((1 << 255) - 1).scaleb(-38, _DEC_CTX)


# ----------------------------------------------------------------------------------------------
# Formatting

def fmt_clock(h, mi, s, us):
    text = "%02d:%02d:%02d" % (h, mi, s)
    return text + (".%06d" % us if us else "")


def fmt_date_ordinal(ordinal):
    d = datetime.date.fromordinal(ordinal)
    return "%04d-%02d-%02d" % (d.year, d.month, d.day)


def fmt_date_days(days):
    if not DATE_MIN_DAYS <= days <= DATE_MAX_DAYS:
        raise ValueError("%d days since 1970-01-01 is outside the DATE range 0001-01-01..9999-12-31" % days)
    return fmt_date_ordinal(days + EPOCH_ORDINAL)


def fmt_timestamp_us(us):
    if not TS_MIN_US <= us <= TS_MAX_US:
        raise ValueError("%d microseconds since the epoch is outside the TIMESTAMP range" % us)
    secs, frac = divmod(us, 1000000)
    days, rem = divmod(secs, 86400)
    h, rem = divmod(rem, 3600)
    mi, s = divmod(rem, 60)
    return "%sT%sZ" % (fmt_date_ordinal(days + EPOCH_ORDINAL), fmt_clock(h, mi, s, frac))


def fmt_float(v):
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return float(v)


def fmt_decimal(d):
    """Decimal -> plain text without exponent or trailing fraction zeros; never '-0'."""
    if d.is_zero():
        return "0"
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


# ----------------------------------------------------------------------------------------------
# Storage Write binary encodings

def decode_packed_time(v):
    """CivilTimeEncoder TIME (micros) -> (hour, minute, second, micros)."""
    if v < 0 or v >> 37:
        raise ValueError("packed TIME %d has bits outside the 37-bit layout" % v)
    us = v & 0xFFFFF
    secs = v >> 20
    h, mi, s = (secs >> 12) & 0x1F, (secs >> 6) & 0x3F, secs & 0x3F
    if h > 23 or mi > 59 or s > 59 or us > 999999:
        raise ValueError("packed TIME %d decodes to an invalid time %02d:%02d:%02d.%06d" % (v, h, mi, s, us))
    return h, mi, s, us


def decode_packed_datetime(v):
    """CivilTimeEncoder DATETIME (micros) -> (ordinal, hour, minute, second, micros)."""
    if v < 0 or v >> 60:
        raise ValueError("packed DATETIME %d has bits outside the 60-bit layout" % v)
    us = v & 0xFFFFF
    secs = v >> 20
    y, mo, d = (secs >> 26) & 0x3FFF, (secs >> 22) & 0xF, (secs >> 17) & 0x1F
    h, mi, s = (secs >> 12) & 0x1F, (secs >> 6) & 0x3F, secs & 0x3F
    try:
        ordinal = datetime.date(y, mo, d).toordinal()
    except ValueError:
        raise ValueError("packed DATETIME %d decodes to an invalid date %04d-%02d-%02d" % (v, y, mo, d))
    if h > 23 or mi > 59 or s > 59 or us > 999999:
        raise ValueError("packed DATETIME %d decodes to an invalid time %02d:%02d:%02d.%06d" % (v, h, mi, s, us))
    return ordinal, h, mi, s, us


def encode_packed_time(h, mi, s, us):
    return (((h << 12) | (mi << 6) | s) << 20) | us


def encode_packed_datetime(y, mo, d, h, mi, s, us):
    return (((y << 26) | (mo << 22) | (d << 17) | (h << 12) | (mi << 6) | s) << 20) | us


def decimal_from_bytes(raw, scale):
    """Little-endian two's complement bytes of value * 10^scale -> Decimal."""
    if not raw:
        raise ValueError("empty bytes for a NUMERIC/BIGNUMERIC value")
    unscaled = int.from_bytes(raw, "little", signed=True)
    return decimal.Decimal(unscaled).scaleb(-scale, _DEC_CTX)


def decimal_to_bytes(d, scale):
    """Decimal -> the bytes decimal_from_bytes() reads (minimal two's complement, little-endian)."""
    unscaled = int(d.scaleb(scale, _DEC_CTX).to_integral_value(decimal.ROUND_HALF_UP))
    n = (unscaled.bit_length() + 8) // 8     # room for the sign bit, like Java's toByteArray()
    return unscaled.to_bytes(n, "little", signed=True)


def round_decimal(d, col, kind):
    """Round to the column's scale and check the range; -> canonical text.  ValueError if out of range."""
    if col is not None and col.precision is not None:
        scale, int_digits = col.scale, col.precision - col.scale
    elif kind == "NUMERIC":
        scale, int_digits = NUMERIC_SCALE, 29
    else:
        scale, int_digits = BIGNUMERIC_SCALE, None
    if not d.is_finite():
        raise ValueError("%s cannot hold %s" % (kind, d))
    rounding = col.rounding if col is not None else decimal.ROUND_HALF_UP
    q = d.quantize(decimal.Decimal(1).scaleb(-scale), rounding=rounding, context=_DEC_CTX)
    if int_digits is not None:
        if q.copy_abs() >= decimal.Decimal(10).scaleb(int_digits - 1, _DEC_CTX):
            raise ValueError("%s is out of range for %s (%d integer digits max)" % (fmt_decimal(d), kind, int_digits))
    elif not BIGNUMERIC_MIN <= q <= BIGNUMERIC_MAX:
        raise ValueError("%s is out of range for BIGNUMERIC" % fmt_decimal(d))
    return fmt_decimal(q)


# ----------------------------------------------------------------------------------------------
# Canonical form of an insertAll JSON row (values already checked by validate_row)

_FLOAT_SPECIAL = {"nan": "NaN", "inf": "Infinity", "+inf": "Infinity", "infinity": "Infinity",
                  "+infinity": "Infinity", "-inf": "-Infinity", "-infinity": "-Infinity"}


def _canon_bytes(v):
    body = v.rstrip("=")
    alt = b"-_" if ("-" in body or "_" in body) else None
    raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=alt)
    return base64.b64encode(raw).decode("ascii")


def _canon_range_bound(text, etype):
    if text.upper() in ("UNBOUNDED", "NULL"):
        return "UNBOUNDED"
    return _canon_scalar_text(etype, text)


def _canon_scalar_text(t, v):
    if t == "DATE":
        return fmt_date_ordinal(parse_date(v))
    if t == "TIME":
        return fmt_clock(*parse_time(v))
    if t == "DATETIME":
        o, h, mi, s, us = parse_datetime(v)
        return "%sT%s" % (fmt_date_ordinal(o), fmt_clock(h, mi, s, us))
    if t == "TIMESTAMP":
        return fmt_timestamp_us(parse_timestamp(v))
    raise ValueError("no text form for %s" % t)


def canonical_value(col, v):
    t = col.type
    if t == "RECORD":
        return canonical_row(col.sub, v)
    if t == "STRING":
        return v if isinstance(v, str) else json.dumps(v)
    if t == "INTEGER":
        return int(v)
    if t == "FLOAT":
        if isinstance(v, str):
            special = _FLOAT_SPECIAL.get(v.lower())
            return special if special else fmt_float(float(v))
        return fmt_float(float(v))
    if t == "BOOLEAN":
        return v if isinstance(v, bool) else v.lower() == "true"
    if t == "BYTES":
        return _canon_bytes(v)
    if t in ("NUMERIC", "BIGNUMERIC"):
        text = repr(v) if isinstance(v, float) else str(v)
        return round_decimal(_DEC_CTX.create_decimal(text), col, t)
    if t in ("DATE", "TIME", "DATETIME", "TIMESTAMP"):
        return _canon_scalar_text(t, v)
    if t == "JSON":
        if isinstance(v, str):
            v = json.loads(v)
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False)
    if t == "RANGE":
        inner = v.strip()[1:-1]
        a, b = [p.strip() for p in inner.split(",")]
        return "[%s, %s)" % (_canon_range_bound(a, col.range_type), _canon_range_bound(b, col.range_type))
    return v      # GEOGRAPHY


def canonical_row(comp, row):
    """A row that validate_row() accepted -> its canonical form (see the module doc).

    Unknown keys (possible only with ignoreUnknownValues) are dropped."""
    found = {}
    for key, v in row.items():
        col = comp.by_lower.get(key.lower())
        if col is None or v is None:
            continue
        if col.mode == "REPEATED":
            if not v:
                continue
            found[col.lname] = (col, [canonical_value(col, el) for el in v])
        else:
            found[col.lname] = (col, canonical_value(col, v))
    return {col.name: val for lname, (col, val) in
            sorted(found.items(), key=lambda kv: comp.order[kv[0]])}


def check_int64(v):
    if not INT64_MIN <= v <= INT64_MAX:
        raise ValueError("%d is outside the INT64 range" % v)
    return v


def b64(raw):
    return base64.b64encode(raw).decode("ascii")

