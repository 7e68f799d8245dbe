#!/usr/bin/python3
"""rowenc_check.py -- decode rowenc's output with Google's protobuf library.

An independent check of src/rowenc.c: the DescriptorProto and the encoded
rows are decoded by google.protobuf (the C++ or upb implementation that
Debian's python3-protobuf ships), not by anything in relayd, and the values
are turned back into BigQuery terms by the small, separate implementations
below (NUMERIC bytes -> decimal string, CivilTimeEncoder bits -> date and
time, days -> date), written from the reference
(../shared/reference/bigquery-wire.md section 2), not from rowenc.c.

Input on stdin, one JSON object:
  {"descriptor": "<base64 DescriptorProto>",
   "schema": <the BigQuery schema JSON given to rowenc_schema_parse>,
   "rows": ["<base64 row>", ...]}

Output on stdout, one JSON object:
  {"ok": true,
   "problems": ["...", ...],     # descriptor rule violations; [] if none
   "rows": [{column: value, ...} or {"error": "..."}, ...]}
Columns that are NULL (absent) are left out of a row. Values by type:
  INT64 int; FLOAT64 number or "NaN"/"Infinity"/"-Infinity"; BOOL bool;
  STRING/JSON/GEOGRAPHY/INTERVAL str; BYTES standard base64 with padding;
  NUMERIC/BIGNUMERIC {"hex": bytes as hex, "decimal": canonical decimal};
  DATE {"days": int, "date": "YYYY-MM-DD"};
  DATETIME {"packed": int, "datetime": "YYYY-MM-DDTHH:MM:SS.ffffff"};
  TIME {"packed": int, "time": "HH:MM:SS.ffffff"};
  TIMESTAMP {"micros": int, "utc": "YYYY-MM-DDTHH:MM:SS.ffffffZ"};
  RECORD an object; RANGE {"start": v or null, "end": v or null};
  REPEATED a list.
Exit status 0 when the input could be read (even if rows had errors), 2 when
google.protobuf is missing, 1 on bad input.

Run with /usr/bin/python3 (Debian's python3-protobuf).
"""
import base64
import datetime
import json
import math
import sys

try:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
except ImportError:  # pragma: no cover
    print(json.dumps({"ok": False, "error": "google.protobuf is not installed"}))
    sys.exit(2)

COLUMN_NAME_EXT = 454943157
FD = descriptor_pb2.FieldDescriptorProto

CANON = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "STRUCT": "RECORD",
         "DECIMAL": "NUMERIC", "BIGDECIMAL": "BIGNUMERIC"}

# BigQuery type -> proto type the encoder must declare (reference section 2.2)
PROTO_TYPE = {
    "STRING": FD.TYPE_STRING, "GEOGRAPHY": FD.TYPE_STRING, "JSON": FD.TYPE_STRING,
    "INTERVAL": FD.TYPE_STRING, "BYTES": FD.TYPE_BYTES, "INT64": FD.TYPE_INT64,
    "FLOAT64": FD.TYPE_DOUBLE, "BOOL": FD.TYPE_BOOL, "TIMESTAMP": FD.TYPE_INT64,
    "DATE": FD.TYPE_INT32, "TIME": FD.TYPE_INT64, "DATETIME": FD.TYPE_INT64,
    "NUMERIC": FD.TYPE_BYTES, "BIGNUMERIC": FD.TYPE_BYTES, "RECORD": FD.TYPE_MESSAGE,
    "RANGE": FD.TYPE_MESSAGE,
}
SCALE = {"NUMERIC": 9, "BIGNUMERIC": 38}


def is_ident(name):
    return (name[:1].isascii() and (name[:1].isalpha() or name[:1] == "_") and
            all(c.isascii() and (c.isalnum() or c == "_") for c in name))


def read_varint(b, i):
    shift = v = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return v, i


def column_name_option(options_bytes):
    """The column_name extension (454943157) in serialized FieldOptions."""
    i, found = 0, None
    while i < len(options_bytes):
        key, i = read_varint(options_bytes, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            _, i = read_varint(options_bytes, i)
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        elif wt == 2:
            n, i = read_varint(options_bytes, i)
            if num == COLUMN_NAME_EXT:
                found = options_bytes[i:i + n].decode("utf-8")
            i += n
        else:
            raise ValueError("bad wire type in FieldOptions")
    return found


# ---- BigQuery value decoders (from the reference, section 2) ----

def numeric_decimal(raw, scale):
    """Little-endian minimal two's complement unscaled integer -> decimal."""
    if not raw:
        raise ValueError("empty NUMERIC bytes")
    v = int.from_bytes(raw, "little", signed=True)
    bits = v.bit_length() if v >= 0 else (~v).bit_length()
    minimal = bits // 8 + 1                      # value bits plus a sign bit
    if len(raw) != minimal:
        raise ValueError("NUMERIC bytes %s are not minimal (want %d bytes)" % (raw.hex(), minimal))
    if scale == 9 and abs(v) > 10 ** 38 - 1:
        raise ValueError("NUMERIC out of range")
    if scale == 38 and not -(2 ** 255) <= v <= 2 ** 255 - 1:
        raise ValueError("BIGNUMERIC out of range")
    sign = "-" if v < 0 else ""
    ip, fp = divmod(abs(v), 10 ** scale)
    frac = str(fp).rjust(scale, "0").rstrip("0")
    return sign + str(ip) + ("." + frac if frac else "")


def date_from_days(days):
    if not -719162 <= days <= 2932896:
        raise ValueError("DATE %d out of range" % days)
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=days)).isoformat()


def unpack_time(v, with_date):
    micros = v & 0xFFFFF
    sec = (v >> 20) & 0x3F
    minute = (v >> 26) & 0x3F
    hour = (v >> 32) & 0x1F
    if micros > 999999 or sec > 59 or minute > 59 or hour > 23:
        raise ValueError("bad packed time %d" % v)
    t = "%02d:%02d:%02d.%06d" % (hour, minute, sec, micros)
    if not with_date:
        if v >> 37:
            raise ValueError("TIME %d has bits above 36" % v)
        return t
    day = (v >> 37) & 0x1F
    month = (v >> 42) & 0xF
    year = (v >> 46) & 0x3FFF
    if v >> 60:
        raise ValueError("DATETIME %d has bits above 59" % v)
    d = datetime.date(year, month, day)  # raises on an impossible date
    return "%sT%s" % (d.isoformat(), t)


def timestamp_utc(us):
    if not -62135596800000000 <= us <= 253402300799999999:
        raise ValueError("TIMESTAMP %d out of range" % us)
    t = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=us)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (t.year, t.month, t.day, t.hour, t.minute,
                                                   t.second, t.microsecond)


def render_scalar(bqtype, v, elem=None):
    if bqtype == "FLOAT64":
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return v
    if bqtype == "BYTES":
        return base64.b64encode(v).decode("ascii")
    if bqtype in SCALE:
        return {"hex": v.hex(), "decimal": numeric_decimal(v, SCALE[bqtype])}
    if bqtype == "DATE":
        return {"days": v, "date": date_from_days(v)}
    if bqtype == "DATETIME":
        return {"packed": v, "datetime": unpack_time(v, True)}
    if bqtype == "TIME":
        return {"packed": v, "time": unpack_time(v, False)}
    if bqtype == "TIMESTAMP":
        return {"micros": v, "utc": timestamp_utc(v)}
    return v  # INT64, BOOL, STRING, JSON, GEOGRAPHY, INTERVAL


# ---- schema <-> descriptor ----

def schema_fields(schema):
    if isinstance(schema, list):
        return schema
    if "fields" in schema:
        return schema["fields"]
    return schema["schema"]["fields"]


class Checker:
    def __init__(self, dp, schema):
        self.problems = []
        self.nested = {m.name: m for m in dp.nested_type}
        for m in dp.nested_type:
            if m.nested_type:
                self.problems.append("nested type %s has nested types (not flattened)" % m.name)
        self.plan = self.map_message(dp, schema_fields(schema), dp.name)

    def problem(self, msg):
        self.problems.append(msg)

    def map_message(self, dp, fields, where):
        """[(proto field name, column name, bqtype, repeated, sub-plan or range elem)]"""
        plan = []
        if len(dp.field) != len(fields):
            self.problem("%s: %d proto fields for %d columns" % (where, len(dp.field), len(fields)))
        for i, (pf, col) in enumerate(zip(dp.field, fields)):
            name = col["name"]
            bqtype = CANON.get(col["type"].upper(), col["type"].upper())
            mode = (col.get("mode") or "NULLABLE").upper()
            here = "%s.%s" % (where, name)
            if pf.number != i + 1:
                self.problem("%s: number %d, want %d" % (here, pf.number, i + 1))
            colopt = (column_name_option(pf.options.SerializeToString())
                      if pf.HasField("options") else None)
            if is_ident(name):
                if pf.name != name.lower() or colopt is not None:
                    self.problem("%s: proto name %r, want %r" % (here, pf.name, name.lower()))
            elif colopt != name:
                self.problem("%s: placeholder %r carries column_name %r" % (here, pf.name, colopt))
            want_label = {"NULLABLE": FD.LABEL_OPTIONAL, "REPEATED": FD.LABEL_REPEATED,
                          "REQUIRED": FD.LABEL_OPTIONAL if col.get("defaultValueExpression")
                          else FD.LABEL_REQUIRED}[mode]
            if pf.label != want_label:
                self.problem("%s: label %d, want %d" % (here, pf.label, want_label))
            if pf.type != PROTO_TYPE[bqtype]:
                self.problem("%s: proto type %d, want %d" % (here, pf.type, PROTO_TYPE[bqtype]))
            sub = None
            if bqtype == "RECORD":
                nt = self.nested.get(pf.type_name)
                if nt is None:
                    self.problem("%s: type %r is not a nested type of the root"
                                 % (here, pf.type_name))
                else:
                    sub = self.map_message(nt, col["fields"], here)
            elif bqtype == "RANGE":
                elem = col["rangeElementType"]["type"].upper()
                nt = self.nested.get(pf.type_name)
                if nt is None or [(f.name, f.number, f.type) for f in nt.field] != [
                        ("start", 1, PROTO_TYPE[elem]), ("end", 2, PROTO_TYPE[elem])]:
                    self.problem("%s: bad RANGE type %r" % (here, pf.type_name))
                sub = elem
            plan.append((pf.name, name, bqtype, mode == "REPEATED", sub))
        return plan

    def render(self, msg, plan):
        out = {}
        for pname, col, bqtype, repeated, sub in plan:
            if repeated:
                vals = list(getattr(msg, pname))
                if not vals:
                    continue
                out[col] = [self.render_one(v, bqtype, sub) for v in vals]
            elif msg.HasField(pname):
                out[col] = self.render_one(getattr(msg, pname), bqtype, sub)
        return out

    def render_one(self, v, bqtype, sub):
        if bqtype == "RECORD":
            return self.render(v, sub)
        if bqtype == "RANGE":
            return {k: (render_scalar(sub, getattr(v, k)) if v.HasField(k) else None)
                    for k in ("start", "end")}
        return render_scalar(bqtype, v)


def message_class(pool, full_name):
    md = pool.FindMessageTypeByName(full_name)
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(md)
    return message_factory.MessageFactory(pool).GetPrototype(md)


def unknown_field_count(msg):
    n = len(msg.UnknownFields())
    for fd, value in msg.ListFields():
        if fd.type == fd.TYPE_MESSAGE:
            for m in (value if fd.label == fd.LABEL_REPEATED else [value]):
                n += unknown_field_count(m)
    return n


def main():
    req = json.load(sys.stdin)
    raw = base64.b64decode(req["descriptor"])
    dp = descriptor_pb2.DescriptorProto.FromString(raw)
    fdp = descriptor_pb2.FileDescriptorProto(name="rowenc_check.proto", package="rowenc_check")
    fdp.message_type.add().CopyFrom(dp)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    cls = message_class(pool, "rowenc_check." + dp.name)
    checker = Checker(dp, req["schema"])
    rows = []
    for b64 in req.get("rows", []):
        data = base64.b64decode(b64)
        try:
            msg = cls.FromString(data)
            if not msg.IsInitialized():  # proto2 required fields (not all backends raise)
                raise ValueError("missing required fields: %s"
                                 % ", ".join(msg.FindInitializationErrors()))
            if unknown_field_count(msg):
                raise ValueError("row has fields the descriptor does not declare"
                                 " (or wrong wire types)")
            rows.append(checker.render(msg, checker.plan))
        except Exception as exc:  # report per row, keep going
            rows.append({"error": "%s: %s" % (type(exc).__name__, exc)})
    json.dump({"ok": True, "problems": checker.problems, "rows": rows}, sys.stdout,
              sort_keys=True, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:
        print(json.dumps({"ok": False, "error": "%s: %s" % (type(exc).__name__, exc)}))
        sys.exit(1)
