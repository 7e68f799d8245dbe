"""The table store: one SQLite file shared by every service of the emulator.

Layout of <data dir>/bqemu.sqlite3:

  bq_tables    catalog: one row per BigQuery table (project, dataset, table_id,
               schema JSON, times, and fast_rows = rows counted but not stored
               in --fast mode).  `id` names the table's row table.
  bq_datasets  datasets created explicitly with datasets.insert.
  rows_<id>    the rows of one BigQuery table: seq, insert_id, arrival (epoch
               seconds), request_no, source ('insertAll', later 'write'), json.
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
"""


class TableExists(Exception):
    pass


class TableInfo:
    """One catalog entry.  `compiled` is built on first use."""

    def __init__(self, row):
        (self.id, self.project, self.dataset, self.table_id, schema_json,
         self.created, self.modified, self.fast_rows) = row
        self.schema = json.loads(schema_json)
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
                self.db.execute(
                    'CREATE TABLE IF NOT EXISTS "rows_%d" (seq INTEGER PRIMARY KEY, insert_id TEXT,'
                    ' arrival REAL NOT NULL, request_no INTEGER, source TEXT, json TEXT)' % tid)
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
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self._cache.pop(info.ref, None)
            self._dedup.pop(info.id, None)

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
        sql = ('SELECT seq, insert_id, arrival, request_no, source, json FROM "%s" WHERE seq > ?'
               ' ORDER BY seq' % info.sql_name)
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
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self._dedup.clear()
            self._cache.clear()


def rows_report(store, ref=None, limit=None, after_seq=0, with_rows=True):
    """Rows of one table (ref = (p, d, t)) or of every table, as the control API
    and `bqemu.py rows --json` print them.  Returns None if ref names no table."""
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
        for seq, iid, arrival, req_no, source, text in store.fetch_rows(info, limit, after_seq):
            try:
                value = json.loads(text)
            except (TypeError, ValueError):
                value = text
            out_rows.append({"table": name, "seq": seq, "insert_id": iid, "arrival": arrival,
                             "request_no": req_no, "source": source, "json": value})
    report = {"count": sum(c["stored"] for c in counts.values()),
              "fast_rows": sum(c["fast_rows"] for c in counts.values()),
              "tables": counts}
    if with_rows:
        report["rows"] = out_rows
    return report
