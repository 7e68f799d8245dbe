"""The table store: one SQLite file shared by every service of the emulator.

Layout of <data dir>/bqemu.sqlite3:

  bq_tables    catalog: one row per BigQuery table (project, dataset, table_id,
               schema JSON, times, and fast_rows = rows counted but not stored
               in --fast mode).  `id` names the table's row table.
  bq_datasets  datasets created explicitly with datasets.insert.
  rows_<id>    the rows of one BigQuery table: seq, insert_id, arrival (epoch
               seconds), request_no, source ('insertAll' or 'write'), json, and
               for Storage Write rows the stream name and the row's offset in it
               (stream_offset; NULL on the default stream).
  write_streams  Storage Write streams made by CreateWriteStream: name, table,
               type, times, row_count (the stream's end offset), flushed
               (BUFFERED: rows made visible), committed.
  write_pending  rows of PENDING / BUFFERED streams that are not visible yet
               (moved into rows_<id> by BatchCommitWriteStreams / FlushRows).
  meta         key/value pairs (request_seq: last request number handed out).

A single writer connection is shared by all request threads behind a lock, and
every insert request is one transaction (executemany).  WAL mode lets the CLI
(`bqemu.py rows`) and the control API read while the server writes.  The
catalog is cached in memory; PRAGMA data_version tells the server when another
process (`bqemu.py create-table`) changed the file, and the cache is dropped.

insertId de-duplication is kept in memory per table (insert_id -> arrival time)
and rebuilt lazily from the stored rows of the last window after a restart.
"""

import collections
import json
import os
import sqlite3
import threading
import time

from emu_schema import compile_schema, normalize_schema

DB_NAME = "bqemu.sqlite3"

_DDL = """
CREATE TABLE IF NOT EXISTS bq_tables (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL, dataset TEXT NOT NULL, table_id TEXT NOT NULL,
    schema_json TEXT NOT NULL, created REAL NOT NULL, modified REAL NOT NULL,
    fast_rows INTEGER NOT NULL DEFAULT 0,
    UNIQUE (project, dataset, table_id));
CREATE TABLE IF NOT EXISTS bq_datasets (
    project TEXT NOT NULL, dataset TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (project, dataset));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS write_streams (
    name TEXT PRIMARY KEY, table_key INTEGER NOT NULL, type INTEGER NOT NULL,
    created REAL NOT NULL, commit_time REAL, finalized REAL,
    row_count INTEGER NOT NULL DEFAULT 0, flushed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS write_pending (
    stream TEXT NOT NULL, stream_offset INTEGER NOT NULL, arrival REAL NOT NULL,
    request_no INTEGER, json TEXT, PRIMARY KEY (stream, stream_offset)) WITHOUT ROWID;
"""

ROWS_DDL = ('CREATE TABLE IF NOT EXISTS "rows_%d" (seq INTEGER PRIMARY KEY, insert_id TEXT,'
            ' arrival REAL NOT NULL, request_no INTEGER, source TEXT, json TEXT,'
            ' stream TEXT, stream_offset INTEGER)')

# Storage Write stream types (WriteStream.Type numbers).
STREAM_COMMITTED, STREAM_PENDING, STREAM_BUFFERED = 1, 2, 3


class TableExists(Exception):
    pass


class TableInfo:
    """One catalog entry.  `compiled` is built on first use."""

    def __init__(self, row):
        (self.id, self.project, self.dataset, self.table_id, schema_json,
         self.created, self.modified, self.fast_rows) = row
        self.schema = json.loads(schema_json)
        self.schema_key = schema_json          # identifies this version of the schema
        self._compiled = None

    @property
    def ref(self):
        return (self.project, self.dataset, self.table_id)

    @property
    def sql_name(self):
        return "rows_%d" % self.id

    @property
    def compiled(self):
        if self._compiled is None:
            self._compiled = compile_schema(self.schema)
        return self._compiled


class DedupIndex:
    """insertId -> first arrival time for one table, expiring after `window` seconds."""

    def __init__(self, window):
        self.window = window
        self.seen = {}
        self.order = collections.deque()   # (time, id) in arrival order, for expiry

    def _expire(self, now):
        if self.window == float("inf"):
            return
        limit = now - self.window
        order, seen = self.order, self.seen
        while order and order[0][0] < limit:
            t, iid = order.popleft()
            if seen.get(iid) == t:
                del seen[iid]

    def is_dup(self, iid, now):
        t = self.seen.get(iid)
        return t is not None and now - t <= self.window

    def add(self, iid, now):
        self.seen[iid] = now
        if self.window != float("inf"):
            self.order.append((now, iid))

    def forget(self, iid):
        self.seen.pop(iid, None)


class Store:
    def __init__(self, data_dir, dedup_window=60.0):
        os.makedirs(data_dir, exist_ok=True)
        self.path = os.path.join(data_dir, DB_NAME)
        self.dedup_window = dedup_window      # 0 = off, inf = forever
        self.lock = threading.RLock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                  timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_DDL)
        self._cache = {}
        self._dedup = {}
        self._streams = {}
        self._migrate_rows_tables()
        self._data_version = self._read_data_version()
        row = self.db.execute("SELECT value FROM meta WHERE key='request_seq'").fetchone()
        self.request_seq = int(row[0]) if row else 0

    def close(self, checkpoint=False):
        """Close; checkpoint=True (the server at exit) folds the WAL back into the file."""
        with self.lock:
            if checkpoint:
                try:
                    self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass
            self.db.close()

    def _migrate_rows_tables(self):
        """Row tables made by an older bqemu lack the stream columns: add them."""
        for (tid,) in self.db.execute("SELECT id FROM bq_tables").fetchall():
            cols = {r[1] for r in self.db.execute('PRAGMA table_info("rows_%d")' % tid)}
            for col, decl in (("stream", "TEXT"), ("stream_offset", "INTEGER")):
                if cols and col not in cols:
                    try:
                        self.db.execute('ALTER TABLE "rows_%d" ADD COLUMN %s %s' % (tid, col, decl))
                    except sqlite3.OperationalError:
                        pass          # another process added it meanwhile

    # -- catalog ----------------------------------------------------------------------------

    def _read_data_version(self):
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    def _check_external_changes(self):
        v = self._read_data_version()
        if v != self._data_version:
            self._data_version = v
            self._cache.clear()

    def next_request_no(self):
        with self.lock:
            self.request_seq += 1
            return self.request_seq

    def get_table(self, project, dataset, table_id):
        key = (project, dataset, table_id)
        with self.lock:
            self._check_external_changes()
            info = self._cache.get(key)
            if info is None:
                row = self.db.execute(
                    "SELECT id, project, dataset, table_id, schema_json, created, modified, fast_rows"
                    " FROM bq_tables WHERE project=? AND dataset=? AND table_id=?", key).fetchone()
                if row is None:
                    return None
                info = TableInfo(row)
                self._cache[key] = info
            return info

    def list_tables(self, project=None, dataset=None):
        with self.lock:
            sql = ("SELECT id, project, dataset, table_id, schema_json, created, modified, fast_rows"
                   " FROM bq_tables")
            args = []
            if project is not None:
                sql += " WHERE project=? AND dataset=?"
                args = [project, dataset]
            return [TableInfo(r) for r in self.db.execute(sql + " ORDER BY project, dataset, table_id",
                                                           args)]

    def create_table(self, project, dataset, table_id, schema, replace=False):
        """Create a table (schema already normalised or raw; it is normalised here).

        replace=True keeps an existing table's rows but swaps its schema."""
        fields = normalize_schema(schema)
        now = time.time()
        with self.lock:
            self._check_external_changes()
            cur = self.db.execute("SELECT id FROM bq_tables WHERE project=? AND dataset=? AND table_id=?",
                                  (project, dataset, table_id)).fetchone()
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if cur is not None:
                    if not replace:
                        raise TableExists("%s:%s.%s" % (project, dataset, table_id))
                    self.db.execute("UPDATE bq_tables SET schema_json=?, modified=? WHERE id=?",
                                    (json.dumps(fields), now, cur[0]))
                    tid = cur[0]
                else:
                    c = self.db.execute(
                        "INSERT INTO bq_tables (project, dataset, table_id, schema_json, created, modified)"
                        " VALUES (?,?,?,?,?,?)", (project, dataset, table_id, json.dumps(fields), now, now))
                    tid = c.lastrowid
                self.db.execute(ROWS_DDL % tid)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self._cache.pop((project, dataset, table_id), None)
        return self.get_table(project, dataset, table_id)

    def update_schema(self, info, fields):
        return self.create_table(info.project, info.dataset, info.table_id, fields, replace=True)

    def delete_table(self, info):
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("DELETE FROM bq_tables WHERE id=?", (info.id,))
                self.db.execute('DROP TABLE IF EXISTS "%s"' % info.sql_name)
                self.db.execute("DELETE FROM write_pending WHERE stream IN"
                                " (SELECT name FROM write_streams WHERE table_key=?)", (info.id,))
                self.db.execute("DELETE FROM write_streams WHERE table_key=?", (info.id,))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self._cache.pop(info.ref, None)
            self._dedup.pop(info.id, None)
            self._streams = {k: v for k, v in self._streams.items() if v.table_key != info.id}

    def dataset_exists_explicitly(self, project, dataset):
        with self.lock:
            r = self.db.execute("SELECT 1 FROM bq_datasets WHERE project=? AND dataset=?",
                                (project, dataset)).fetchone()
            if r:
                return True
            r = self.db.execute("SELECT 1 FROM bq_tables WHERE project=? AND dataset=? LIMIT 1",
                                (project, dataset)).fetchone()
            return r is not None

    def create_dataset(self, project, dataset):
        with self.lock:
            self.db.execute("INSERT OR IGNORE INTO bq_datasets VALUES (?,?,?)", (project, dataset, time.time()))

    # -- rows -------------------------------------------------------------------------------

    def _dedup_for(self, info, now):
        d = self._dedup.get(info.id)
        if d is None:
            d = DedupIndex(self.dedup_window)
            if self.dedup_window == float("inf"):
                cur = self.db.execute('SELECT insert_id, arrival FROM "%s" WHERE insert_id IS NOT NULL'
                                      ' ORDER BY seq' % info.sql_name)
            else:
                cur = self.db.execute('SELECT insert_id, arrival FROM "%s" WHERE insert_id IS NOT NULL'
                                      ' AND arrival >= ? ORDER BY seq' % info.sql_name,
                                      (now - self.dedup_window,))
            for iid, t in cur:
                if iid not in d.seen:
                    d.add(iid, t)
            self._dedup[info.id] = d
        d._expire(now)
        return d

    def insert_rows(self, info, items, request_no, source="insertAll", now=None):
        """Store rows in one transaction.

        items: list of (insert_id or None, json_text).  Returns a list of booleans,
        True where the row was a duplicate of an insertId seen within the window
        (acknowledged but not stored)."""
        now = time.time() if now is None else now
        dup_flags = [False] * len(items)
        with self.lock:
            dedup = self._dedup_for(info, now) if self.dedup_window > 0 else None
            batch, added = [], []
            for i, (iid, text) in enumerate(items):
                if dedup is not None and iid:
                    if dedup.is_dup(iid, now):
                        dup_flags[i] = True
                        continue
                    dedup.add(iid, now)
                    added.append(iid)
                batch.append((iid, now, request_no, source, text))
            try:
                self.db.execute("BEGIN")
                if batch:
                    self.db.executemany('INSERT INTO "%s" (insert_id, arrival, request_no, source, json)'
                                        ' VALUES (?,?,?,?,?)' % info.sql_name, batch)
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('request_seq', ?)",
                                (str(self.request_seq),))
                self.db.execute("COMMIT")
            except BaseException:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if dedup is not None:
                    for iid in added:
                        dedup.forget(iid)
                raise
        return dup_flags

    def dedup_only(self, info, insert_ids):
        """--fast mode: run insertIds through de-duplication without storing rows.
        Returns one boolean per id, True for a duplicate."""
        now = time.time()
        flags = []
        with self.lock:
            d = self._dedup_for(info, now)
            for iid in insert_ids:
                if iid and d.is_dup(iid, now):
                    flags.append(True)
                else:
                    if iid:
                        d.add(iid, now)
                    flags.append(False)
        return flags

    def count_fast(self, info, n):
        """--fast mode: remember that n rows were accepted without storing them."""
        with self.lock:
            self.db.execute("UPDATE bq_tables SET fast_rows = fast_rows + ? WHERE id=?", (n, info.id))
            info.fast_rows += n

    def fetch_rows(self, info, limit=None, after_seq=0):
        sql = ('SELECT seq, insert_id, arrival, request_no, source, json, stream, stream_offset'
               ' FROM "%s" WHERE seq > ? ORDER BY seq' % info.sql_name)
        args = [after_seq]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def count_rows(self, info):
        with self.lock:
            return self.db.execute('SELECT COUNT(*) FROM "%s"' % info.sql_name).fetchone()[0]

    def clear_rows(self):
        """Delete every stored row (tables and schemas stay) and forget insertIds."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for info in self.list_tables():
                    self.db.execute('DELETE FROM "%s"' % info.sql_name)
                self.db.execute("UPDATE bq_tables SET fast_rows = 0")
                self.db.execute("DELETE FROM write_streams")
                self.db.execute("DELETE FROM write_pending")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self._dedup.clear()
            self._cache.clear()
            self._streams.clear()

    # -- Storage Write streams --------------------------------------------------------------

    def create_stream(self, name, info, stype, now=None):
        now = time.time() if now is None else now
        rec = StreamRecord(name, info.id, stype, now, now if stype == STREAM_COMMITTED else None,
                           None, 0, 0)
        with self.lock:
            self.db.execute("INSERT INTO write_streams (name, table_key, type, created, commit_time)"
                            " VALUES (?,?,?,?,?)", (name, info.id, stype, now, rec.commit_time))
            self._streams[name] = rec
        return rec

    def get_stream(self, name):
        """The StreamRecord of an explicit stream, or None."""
        with self.lock:
            rec = self._streams.get(name)
            if rec is None:
                row = self.db.execute("SELECT name, table_key, type, created, commit_time, finalized,"
                                      " row_count, flushed FROM write_streams WHERE name=?",
                                      (name,)).fetchone()
                if row is None:
                    return None
                rec = StreamRecord(*row)
                self._streams[name] = rec
            return rec

    def list_streams(self):
        with self.lock:
            rows = self.db.execute("SELECT name, table_key, type, created, commit_time, finalized,"
                                   " row_count, flushed FROM write_streams ORDER BY created").fetchall()
            return [self._streams.get(r[0]) or StreamRecord(*r) for r in rows]

    def stream_append(self, rec, info, texts, expected, request_no, now=None):
        """Append rows to an explicit stream, checking the offset under the store lock.

        Returns (outcome, offset): ("ok", first row's offset), ("already_exists", end),
        ("out_of_range", end) or ("finalized", end).  Nothing is written unless "ok"."""
        now = time.time() if now is None else now
        with self.lock:
            end = rec.row_count
            if rec.finalized is not None:
                return "finalized", end
            if expected is not None and expected < end:
                return "already_exists", end
            if expected is not None and expected > end:
                return "out_of_range", end
            self._transaction(lambda: self._stream_write(rec, info, texts, end, request_no, now))
            rec.row_count = end + len(texts)
            return "ok", end

    def _stream_write(self, rec, info, texts, start, request_no, now):
        if rec.type == STREAM_COMMITTED:
            self.db.executemany(
                'INSERT INTO "%s" (insert_id, arrival, request_no, source, json, stream, stream_offset)'
                ' VALUES (NULL,?,?,\'write\',?,?,?)' % info.sql_name,
                [(now, request_no, t, rec.name, start + i) for i, t in enumerate(texts)])
        else:
            self.db.executemany(
                "INSERT INTO write_pending (stream, stream_offset, arrival, request_no, json)"
                " VALUES (?,?,?,?,?)", [(rec.name, start + i, now, request_no, t) for i, t in enumerate(texts)])
        self.db.execute("UPDATE write_streams SET row_count=? WHERE name=?", (start + len(texts), rec.name))
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('request_seq', ?)", (str(self.request_seq),))

    def default_append(self, info, stream_name, texts, request_no, now=None):
        """Append rows through a table's default stream (visible at once, no offsets)."""
        now = time.time() if now is None else now
        with self.lock:
            def work():
                self.db.executemany(
                    'INSERT INTO "%s" (insert_id, arrival, request_no, source, json, stream)'
                    ' VALUES (NULL,?,?,\'write\',?,?)' % info.sql_name,
                    [(now, request_no, t, stream_name) for t in texts])
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('request_seq', ?)",
                                (str(self.request_seq),))
            self._transaction(work)

    def finalize_stream(self, rec, now=None):
        now = time.time() if now is None else now
        with self.lock:
            if rec.finalized is None:
                self.db.execute("UPDATE write_streams SET finalized=? WHERE name=?", (now, rec.name))
                rec.finalized = now
            return rec.row_count

    def commit_streams(self, info, recs, now=None):
        """Make the rows of finalized PENDING streams visible, all or nothing."""
        now = time.time() if now is None else now
        with self.lock:
            def work():
                for rec in recs:
                    self._move_pending(info, rec, 0, rec.row_count)
                    self.db.execute("UPDATE write_streams SET commit_time=? WHERE name=?", (now, rec.name))
            self._transaction(work)
            for rec in recs:
                rec.commit_time = now
        return now

    def flush_stream(self, info, rec, upto):
        """BUFFERED: make rows [flushed, upto] visible.  Returns the new flushed count."""
        with self.lock:
            if upto + 1 > rec.flushed:
                def work():
                    self._move_pending(info, rec, rec.flushed, upto + 1)
                    self.db.execute("UPDATE write_streams SET flushed=? WHERE name=?", (upto + 1, rec.name))
                self._transaction(work)
                rec.flushed = upto + 1
            return rec.flushed

    def _move_pending(self, info, rec, lo, hi):
        self.db.execute(
            'INSERT INTO "%s" (insert_id, arrival, request_no, source, json, stream, stream_offset)'
            " SELECT NULL, arrival, request_no, 'write', json, stream, stream_offset FROM write_pending"
            " WHERE stream=? AND stream_offset>=? AND stream_offset<? ORDER BY stream_offset"
            % info.sql_name, (rec.name, lo, hi))
        self.db.execute("DELETE FROM write_pending WHERE stream=? AND stream_offset>=? AND stream_offset<?",
                        (rec.name, lo, hi))

    def _transaction(self, work):
        self.db.execute("BEGIN")
        try:
            work()
            self.db.execute("COMMIT")
        except BaseException:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise


class StreamRecord:
    """One explicit write stream (the in-memory copy of its write_streams row)."""
    __slots__ = ("name", "table_key", "type", "created", "commit_time", "finalized", "row_count", "flushed")

    def __init__(self, name, table_key, stype, created, commit_time, finalized, row_count, flushed):
        self.name, self.table_key, self.type = name, table_key, stype
        self.created, self.commit_time, self.finalized = created, commit_time, finalized
        self.row_count, self.flushed = row_count, flushed

    def describe(self):
        return {"name": self.name, "type": {1: "COMMITTED", 2: "PENDING", 3: "BUFFERED"}.get(self.type, self.type),
                "created": self.created, "commit_time": self.commit_time, "finalized": self.finalized,
                "row_count": self.row_count, "flushed": self.flushed if self.type == STREAM_BUFFERED else None}


def rows_report(store, ref=None, limit=None, after_seq=0, with_rows=True, canonical=False):
    """Rows of one table (ref = (p, d, t)) or of every table, as the control API
    and `bqemu.py rows --json` print them.  Returns None if ref names no table.

    Storage Write rows also carry "stream" and "offset".  canonical=True rewrites
    every row's JSON into the canonical spelling (emu_values), so rows stored by
    insertAll and by the Storage Write API compare equal when their values are."""
    if canonical:
        from emu_values import canonical_row
    if ref is not None:
        info = store.get_table(*ref)
        if info is None:
            return None
        tables = [info]
    else:
        tables = store.list_tables()
    out_rows, counts = [], {}
    for info in tables:
        name = "%s.%s.%s" % info.ref
        counts[name] = {"stored": store.count_rows(info), "fast_rows": info.fast_rows}
        if not with_rows:
            continue
        for seq, iid, arrival, req_no, source, text, stream, offset in store.fetch_rows(info, limit, after_seq):
            try:
                value = json.loads(text)
            except (TypeError, ValueError):
                value = text
            if canonical and isinstance(value, dict):
                try:
                    value = canonical_row(info.compiled, value)
                except (ValueError, TypeError, AttributeError, ArithmeticError):
                    pass        # not a row the schema accepts (schema replaced since): leave as stored
            row = {"table": name, "seq": seq, "insert_id": iid, "arrival": arrival,
                   "request_no": req_no, "source": source, "json": value}
            if stream is not None:
                row["stream"], row["offset"] = stream, offset
            out_rows.append(row)
    report = {"count": sum(c["stored"] for c in counts.values()),
              "fast_rows": sum(c["fast_rows"] for c in counts.values()),
              "tables": counts}
    if with_rows:
        report["rows"] = out_rows
    return report
