"""Rows of the Storage Write API: from a client's DescriptorProto and encoded
row messages to checked BigQuery rows.

An AppendRows connection declares its rows with one DescriptorProto (the
writer schema).  WriterSchema takes that descriptor and the table's schema and

  1. builds a message class with Google's protobuf runtime (a private
     descriptor pool per descriptor; proto2 semantics, as the service decodes),
  2. matches every proto field to a column, by the column_name annotation
     (FieldOptions extension 454943157) or else by the field name,
     case-insensitively, and checks that the proto type may carry the column's
     type (reference section 2.2) and that the label fits the mode,
  3. decodes each serialized row, converts every value to its canonical JSON
     form (emu_values), checking it with the insertAll value rules of
     emu_schema (ranges, DATE/TIME/DATETIME parsing, NUMERIC precision and
     scale, JSON and GEOGRAPHY text, maxLength) and that every REQUIRED
     column, at every nesting level, is present.

Schema problems raise SchemaProblem (the request fails with
INVALID_ARGUMENT; proto fields without a column carry StorageError
SCHEMA_MISMATCH_EXTRA_FIELDS, as BigQuery does).  Row problems come back per
row, so the caller can answer with row_errors.

Stricter than the service, on purpose (these are encoder bugs): a field whose
number is declared but whose wire type does not match the declaration (the
protobuf runtime would keep it as an unknown field and the value would be
silently NULL) is a row error, and so is a string field that is not UTF-8.
Undeclared field numbers are ignored, as protobuf does.
"""

import decimal
import hashlib
import re
import threading

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor as FD
from google.protobuf.message import DecodeError

from emu_common import StrictJSONError, loads_strict
from emu_schema import check_geography, parse_date, parse_datetime, parse_time
from emu_values import (BIGNUMERIC_SCALE, NUMERIC_SCALE, b64, check_int64, decimal_from_bytes,
                        decode_packed_datetime, decode_packed_time, fmt_clock, fmt_date_days,
                        fmt_date_ordinal, fmt_float, fmt_timestamp_us, round_decimal)

COLUMN_NAME_EXT = 454943157
_COLUMN_NAME_TAG = (COLUMN_NAME_EXT << 3) | 2

# StorageError codes used here (see proto/bigquery_storage_v1.proto).
SCHEMA_MISMATCH_EXTRA_FIELDS = 7

TYPE_NAMES = {v: k[5:].lower() for k, v in vars(FD).items() if k.startswith("TYPE_") and isinstance(v, int)}

# BigQuery type -> proto types that may carry it (reference section 2.2).
ALLOWED = {
    "INTEGER": {FD.TYPE_INT64, FD.TYPE_INT32, FD.TYPE_UINT32, FD.TYPE_ENUM},
    "FLOAT": {FD.TYPE_DOUBLE, FD.TYPE_FLOAT},
    "BOOLEAN": {FD.TYPE_BOOL, FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64},
    "STRING": {FD.TYPE_STRING, FD.TYPE_ENUM},
    "BYTES": {FD.TYPE_BYTES, FD.TYPE_STRING},
    "TIMESTAMP": {FD.TYPE_INT64, FD.TYPE_INT32, FD.TYPE_UINT32},
    "DATE": {FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_STRING},
    "DATETIME": {FD.TYPE_INT64, FD.TYPE_STRING},
    "TIME": {FD.TYPE_INT64, FD.TYPE_STRING},
    "NUMERIC": {FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_DOUBLE,
                FD.TYPE_FLOAT, FD.TYPE_STRING, FD.TYPE_BYTES},
    "GEOGRAPHY": {FD.TYPE_STRING},
    "JSON": {FD.TYPE_STRING},
    "RECORD": {FD.TYPE_MESSAGE},
    "RANGE": {FD.TYPE_MESSAGE},
}
ALLOWED["BIGNUMERIC"] = ALLOWED["NUMERIC"]
RANGE_ELEMENT_ALLOWED = {"DATE": ALLOWED["DATE"], "DATETIME": ALLOWED["DATETIME"],
                         "TIMESTAMP": ALLOWED["TIMESTAMP"]}

_DEC_RE = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
_DEC_CTX = decimal.Context(prec=200, rounding=decimal.ROUND_HALF_UP)


class SchemaProblem(Exception):
    """The writer schema cannot be used for this table."""

    def __init__(self, message, storage_code=None):
        super().__init__(message)
        self.message, self.storage_code = message, storage_code


class RowProblem(Exception):
    pass


# ----------------------------------------------------------------------------------------------
# Value converters: proto value -> canonical JSON value (ValueError on a bad value)

def _text(v):
    if isinstance(v, bytes):      # proto2 string that is not UTF-8: the runtime hands back bytes
        raise ValueError("string is not valid UTF-8")
    return v


def _conv_integer(v):
    return check_int64(int(v))


def _conv_bool(v):
    return bool(v)


def _conv_bytes_from_bytes(v):
    return b64(v)


def _conv_bytes_from_string(v):
    return b64(_text(v).encode("utf-8"))


def _conv_timestamp(v):
    return fmt_timestamp_us(int(v))


def _conv_date_int(v):
    return fmt_date_days(int(v))


def _conv_date_str(v):
    return fmt_date_ordinal(parse_date(_text(v)))


def _conv_datetime_int(v):
    o, h, mi, s, us = decode_packed_datetime(int(v))
    return "%sT%s" % (fmt_date_ordinal(o), fmt_clock(h, mi, s, us))


def _conv_datetime_str(v):
    o, h, mi, s, us = parse_datetime(_text(v))
    return "%sT%s" % (fmt_date_ordinal(o), fmt_clock(h, mi, s, us))


def _conv_time_int(v):
    return fmt_clock(*decode_packed_time(int(v)))


def _conv_time_str(v):
    return fmt_clock(*parse_time(_text(v)))


def _conv_json(v):
    v = _text(v)
    try:
        loads_strict(v)
    except StrictJSONError as e:
        raise ValueError("string is not valid JSON (%s)" % e)
    return v


def _numeric_conv(col, ptype):
    kind = col.type
    wire_scale = NUMERIC_SCALE if kind == "NUMERIC" else BIGNUMERIC_SCALE

    if ptype == FD.TYPE_BYTES:
        def conv(v):
            return round_decimal(decimal_from_bytes(v, wire_scale), col, kind)
    elif ptype == FD.TYPE_STRING:
        def conv(v):
            v = _text(v)
            if not _DEC_RE.match(v):
                raise ValueError("%r is not a decimal number" % v)
            return round_decimal(_DEC_CTX.create_decimal(v), col, kind)
    elif ptype in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        def conv(v):
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError("%s cannot hold %r" % (kind, v))
            return round_decimal(_DEC_CTX.create_decimal(repr(v)), col, kind)
    else:
        def conv(v):
            return round_decimal(decimal.Decimal(int(v)), col, kind)
    return conv


def scalar_converter(col_type, col, fd):
    """Converter for one non-message value of proto field fd going to a column of col_type."""
    t = fd.type
    if col_type == "INTEGER":
        return _conv_integer
    if col_type == "FLOAT":
        return fmt_float
    if col_type == "BOOLEAN":
        return _conv_bool
    if col_type == "STRING":
        if t == FD.TYPE_ENUM:
            names = {v.number: v.name for v in fd.enum_type.values}
            return lambda v: names.get(v, str(v))
        return _text
    if col_type == "BYTES":
        return _conv_bytes_from_bytes if t == FD.TYPE_BYTES else _conv_bytes_from_string
    if col_type == "TIMESTAMP":
        return _conv_timestamp
    if col_type == "DATE":
        return _conv_date_str if t == FD.TYPE_STRING else _conv_date_int
    if col_type == "DATETIME":
        return _conv_datetime_str if t == FD.TYPE_STRING else _conv_datetime_int
    if col_type == "TIME":
        return _conv_time_str if t == FD.TYPE_STRING else _conv_time_int
    if col_type in ("NUMERIC", "BIGNUMERIC"):
        return _numeric_conv(col, t)
    if col_type == "JSON":
        return _conv_json
    if col_type == "GEOGRAPHY":
        def conv(v):
            v = _text(v)
            msg = check_geography(v, col)
            if msg:
                raise ValueError(msg)
            return v
        return conv
    raise ValueError("no converter for %s" % col_type)


# ----------------------------------------------------------------------------------------------
# Plans: how to turn one decoded message into a row object

class Entry:
    __slots__ = ("key", "pos", "conv", "repeated", "path", "number", "name")

    def __init__(self, key, pos, conv, repeated, path, number, name):
        self.key, self.pos, self.conv, self.repeated = key, pos, conv, repeated
        self.path, self.number, self.name = path, number, name


class MessagePlan:
    def __init__(self, descriptor):
        self.descriptor = descriptor
        self.by_number = {}
        self.required = []         # (key, path, lower-case name) of REQUIRED columns
        self.in_order = True       # field numbers ascend in column order: no re-sorting needed
        self.declared = frozenset(f.number for f in descriptor.fields)
        self.check_unknown = True

    def finish(self):
        entries = sorted(self.by_number.values(), key=lambda e: e.number)
        self.in_order = all(a.pos < b.pos for a, b in zip(entries, entries[1:]))

    def convert(self, msg, defaults=frozenset()):
        if self.check_unknown:
            unknown = msg.UnknownFields()
            if len(unknown):
                for uf in unknown:
                    if uf.field_number in self.declared:
                        e = self.by_number[uf.field_number]
                        raise RowProblem("%s: wire type %d does not match the declared field type "
                                         "(field number %d)" % (e.path, uf.wire_type, uf.field_number))
        out = {}
        by_number = self.by_number
        for fd, v in msg.ListFields():
            e = by_number[fd.number]
            try:
                if e.repeated:
                    out[e.key] = [e.conv(x) for x in v]
                else:
                    out[e.key] = e.conv(v)
            except ValueError as err:
                raise RowProblem("%s: %s" % (e.path, err))
        for key, path, lname in self.required:
            if key not in out and lname not in defaults:
                raise RowProblem("%s: Missing required field: %s." % (path, path))
        if not self.in_order and len(out) > 1:
            pos = {e.key: e.pos for e in by_number.values()}
            out = dict(sorted(out.items(), key=lambda kv: pos[kv[0]]))
        return out


def _with_max_length(conv, col):
    if col.max_length is None or col.type not in ("STRING", "BYTES"):
        return conv
    limit = col.max_length
    if col.type == "STRING":
        def check(v):
            out = conv(v)
            if len(out) > limit:
                raise ValueError("string of %d characters exceeds maxLength %d" % (len(out), limit))
            return out
    else:
        def check(v):
            out = conv(v)
            n = len(v.encode("utf-8")) if isinstance(v, str) else len(v)
            if n > limit:
                raise ValueError("%d bytes exceed maxLength %d" % (n, limit))
            return out
    return check


def _column_annotation(options_bytes):
    """The column_name extension (454943157) inside serialized FieldOptions, or None."""
    data, i, n = options_bytes, 0, len(options_bytes)
    try:
        while i < n:
            tag, i = _varint(data, i)
            wt = tag & 7
            if wt == 0:
                _, i = _varint(data, i)
            elif wt == 1:
                i += 8
            elif wt == 5:
                i += 4
            elif wt == 2:
                ln, i = _varint(data, i)
                if tag == _COLUMN_NAME_TAG:
                    return data[i:i + ln].decode("utf-8")
                i += ln
            else:
                return None
    except (IndexError, UnicodeDecodeError):
        return None
    return None


def _varint(data, i):
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _annotations(dp, prefix, out):
    """full message name -> {field number: column name} for every message in a DescriptorProto."""
    full = prefix + dp.name
    ann = {}
    for f in dp.field:
        if f.HasField("options"):
            name = _column_annotation(f.options.SerializeToString())
            if name:
                ann[f.number] = name
    out[full] = ann
    for nested in dp.nested_type:
        _annotations(nested, full + ".", out)
    return out


def _check_no_recursion(md, stack=()):
    if md.full_name in stack:
        raise SchemaProblem("Invalid proto schema: recursive message type %s is not supported."
                            % md.full_name)
    for f in md.fields:
        if f.type == FD.TYPE_MESSAGE:
            _check_no_recursion(f.message_type, stack + (md.full_name,))


class CompiledDescriptor:
    """A client's DescriptorProto turned into a message class (independent of any table)."""

    def __init__(self, raw):
        dp = descriptor_pb2.DescriptorProto()
        try:
            dp.ParseFromString(raw)
        except DecodeError as e:
            raise SchemaProblem("Invalid proto schema: the DescriptorProto cannot be decoded (%s)." % e)
        if not dp.name:
            raise SchemaProblem("Invalid proto schema: the DescriptorProto has no name.")
        _strip_proto3(dp)
        digest = hashlib.sha1(raw).hexdigest()[:16]
        fdp = descriptor_pb2.FileDescriptorProto(name="bqemu_writer_%s.proto" % digest, syntax="proto2")
        fdp.message_type.add().CopyFrom(dp)
        pool = descriptor_pool.DescriptorPool()
        try:
            pool.Add(fdp)
            md = pool.FindMessageTypeByName(dp.name)
        except (TypeError, KeyError, ValueError) as e:
            raise SchemaProblem("Invalid proto schema: the descriptor is not self-contained or not valid "
                                "(%s). Every referenced type must be a nested type of the root message."
                                % str(e).strip())
        _check_no_recursion(md)
        self.pool, self.descriptor = pool, md
        self.cls = message_factory.MessageFactory(pool).GetPrototype(md)
        self.annotations = _annotations(dp, "", {})


def _strip_proto3(dp):
    # The service decodes as proto2: proto3 'optional' markers and synthetic oneofs mean nothing here.
    for f in dp.field:
        if f.proto3_optional:
            f.ClearField("proto3_optional")
            f.ClearField("oneof_index")
    if not any(f.HasField("oneof_index") for f in dp.field):
        del dp.oneof_decl[:]
    for nested in dp.nested_type:
        _strip_proto3(nested)


def _label_problem(fd, col, path):
    repeated = fd.label == FD.LABEL_REPEATED
    if col.mode == "REPEATED" and not repeated:
        return "field %s is REPEATED in the table but not repeated in the proto schema" % path
    if repeated and col.mode != "REPEATED":
        return "field %s is repeated in the proto schema but %s in the table" % (path, col.mode)
    return None


def _build_plan(cd, md, comp, prefix):
    plan = MessagePlan(md)
    anns = cd.annotations.get(md.full_name, {})
    extras, used = [], {}
    for fd in md.fields:
        cname = anns.get(fd.number) or fd.name
        path = prefix + cname
        col = comp.by_lower.get(cname.lower())
        if col is None:
            extras.append(path)
            continue
        if col.lname in used:
            raise SchemaProblem("Invalid proto schema: fields %s and %s both map to column %s."
                                % (used[col.lname], fd.name, prefix + col.name))
        used[col.lname] = fd.name
        msg = _label_problem(fd, col, path)
        if msg:
            raise SchemaProblem("Invalid proto schema: " + msg + ".")
        if fd.type not in ALLOWED[col.type]:
            raise SchemaProblem("Invalid proto schema: field %s has proto type %s, which cannot be "
                                "converted to BigQuery %s." % (path, TYPE_NAMES.get(fd.type, fd.type), col.type))
        if col.type == "RECORD":
            sub = _build_plan(cd, fd.message_type, col.sub, path + ".")
            conv = sub.convert
        elif col.type == "RANGE":
            conv = _range_converter(fd.message_type, col, path)
        else:
            conv = _with_max_length(scalar_converter(col.type, col, fd), col)
        plan.by_number[fd.number] = Entry(col.name, comp.order[col.lname], conv,
                                          fd.label == FD.LABEL_REPEATED, path, fd.number, fd.name)
    if extras:
        raise SchemaProblem("Input schema has more fields than BigQuery schema, extra fields: '%s'"
                            % "', '".join(extras), SCHEMA_MISMATCH_EXTRA_FIELDS)
    plan.required = [(c.name, prefix + c.name, c.lname) for c in comp.columns if c.mode == "REQUIRED"]
    plan.finish()
    return plan


def _range_converter(md, col, path):
    """RANGE<T>: a message with fields start and end of T's proto type; unset = unbounded."""
    et = col.range_type
    by_name = {f.name.lower(): f for f in md.fields}
    extra = set(by_name) - {"start", "end"}
    if extra:
        raise SchemaProblem("Invalid proto schema: RANGE field %s may only have fields start and end "
                            "(found %s)." % (path, ", ".join(sorted(extra))))
    convs = {}
    for name, f in by_name.items():
        if f.label == FD.LABEL_REPEATED or f.type not in RANGE_ELEMENT_ALLOWED[et]:
            raise SchemaProblem("Invalid proto schema: %s.%s has proto type %s, which cannot hold a "
                                "RANGE<%s> bound." % (path, f.name, TYPE_NAMES.get(f.type, f.type), et))
        convs[f.number] = (name, scalar_converter(et, col, f))

    def conv(msg):
        bounds = {"start": None, "end": None}
        for fd, v in msg.ListFields():
            name, c = convs[fd.number]
            bounds[name] = c(v)
        a, b = bounds["start"], bounds["end"]
        if a is not None and b is not None and not _bound_key(et, a) < _bound_key(et, b):
            raise ValueError("RANGE start %s must be before end %s" % (a, b))
        return "[%s, %s)" % (a if a is not None else "UNBOUNDED", b if b is not None else "UNBOUNDED")
    return conv


def _bound_key(et, text):
    # Canonical DATE/DATETIME/TIMESTAMP texts of one type sort like the values they name
    # (fixed-width fields; TIMESTAMP and DATETIME only differ in an optional fraction).
    if et == "DATE":
        return text
    base, _, frac = text.rstrip("Z").partition(".")
    return base, int(frac or 0)


class WriterSchema:
    """A compiled descriptor matched against one version of a table's schema."""

    def __init__(self, cd, table_comp):
        self.cd = cd
        self.comp = table_comp
        self.plan = _build_plan(cd, cd.descriptor, table_comp, "")
        self.has_required = _has_required(cd.descriptor)

    def decode_rows(self, serialized_rows, defaults=frozenset()):
        """-> (rows, errors): rows = list of dicts (None where bad), errors = [(index, message)].

        defaults: lower-case top-level column names whose absence means DEFAULT_VALUE (REQUIRED
        columns with a default value expression may then be omitted)."""
        cls, plan = self.cd.cls, self.plan
        rows, errors = [], []
        for i, raw in enumerate(serialized_rows):
            msg = cls()
            try:
                msg.ParseFromString(raw)
                if self.has_required and not msg.IsInitialized():
                    missing = msg.FindInitializationErrors()
                    raise RowProblem("%s: Missing required field (declared required in the writer schema)."
                                     % ", ".join(missing))
                row = plan.convert(msg, defaults)
            except DecodeError as e:
                errors.append((i, "Cannot decode the row as %s: %s" % (self.cd.descriptor.name, e)))
                rows.append(None)
                continue
            except RowProblem as e:
                errors.append((i, "Field %s" % e))
                rows.append(None)
                continue
            rows.append(row)
        return rows, errors


def _has_required(md, seen=None):
    seen = set() if seen is None else seen
    if md.full_name in seen:
        return False
    seen.add(md.full_name)
    for f in md.fields:
        if f.label == FD.LABEL_REQUIRED:
            return True
        if f.type == FD.TYPE_MESSAGE and _has_required(f.message_type, seen):
            return True
    return False


class SchemaCache:
    """Compiled descriptors by their bytes, and writer schemas by (descriptor, table schema)."""

    MAX = 256

    def __init__(self):
        self._lock = threading.Lock()
        self._descs = {}
        self._plans = {}

    def writer_schema(self, raw, table_info):
        key = hashlib.sha1(raw).digest()
        with self._lock:
            cd = self._descs.get(key)
        if cd is None:
            cd = CompiledDescriptor(raw)       # SchemaProblem propagates (not cached)
            with self._lock:
                if len(self._descs) >= self.MAX:
                    self._descs.clear()
                    self._plans.clear()
                self._descs[key] = cd
        pkey = (key, table_info.id, table_info.schema_key)
        with self._lock:
            ws = self._plans.get(pkey)
        if ws is None:
            ws = WriterSchema(cd, table_info.compiled)
            with self._lock:
                if len(self._plans) >= self.MAX:
                    self._plans.clear()
                self._plans[pkey] = ws
        return ws
