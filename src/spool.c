/*
 * spool.c -- the durable queue on LMDB. See spool.h for the layout and the
 * rules; this comment explains the choices.
 *
 * One database per destination lets every append use MDB_APPEND (sequence
 * numbers only grow), which fills leaf pages completely instead of splitting
 * them in half. A transaction's appends to a destination are gathered in
 * memory and written at commit as chunks (below), each with MDB_RESERVE, so
 * a row is copied twice: into the gathering buffer, then into LMDB's page.
 *
 * The byte and record counts of each destination live in its "dests" entry
 * and are updated in the same transaction as the records, so they are exact
 * across crashes and across processes (relayctl edits the spool too).
 *
 * Full: LMDB can only report MDB_MAP_FULL once the map is exhausted, and a
 * map that is exhausted cannot even run the transaction that deletes
 * delivered records (copy-on-write needs fresh pages). So appends are
 * admitted only while the pages in use, plus an estimate of what the append
 * needs, stay below the bound less a reserve; removals may use the reserve.
 */
#include "spool.h"
#include "dlq.h"
#include "qval.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define SPOOL_VERSION 2      /* 2: chunks and per-destination record counts; 1 is read and upgraded */
#define RESERVE_MIN   (256u << 10)
#define RESERVE_MAX   (64ull << 20)
/* spool_read unmaps what it has read (spool_release_pages) after this many
 * bytes: a backlog being drained is read once, and without it the resident
 * set would grow by every page read until the committer's next release,
 * which waits for ingest (a drain after an outage has none). */
#define RELEASE_READ_BYTES (16ull << 20)

struct dest_rec {          /* value in the dests database */
    uint32_t id;
    uint32_t flags;
    uint64_t bytes;
    uint64_t created_ms;
    uint64_t records;      /* absent in version 1 (24 bytes): mdb_stat counted them */
};
#define DEST_REC_V1 24

/* A chunk: the records one transaction appends to one destination, stored
 * as one value under the key of the first (spool.h has the layout). LMDB's
 * cost is per value, above all when delivered records are deleted oldest
 * first (each delete moves a node in from the next page), so a chunk of K
 * records costs about one delete instead of K (docs/benchmarks.md,
 * "chunked spool"). A group of one record is stored as a plain record.
 * qval.c builds and parses the bytes; this file stores and finds them. */
#ifndef CHUNK_MAX_BYTES
/* four overflow pages less their header: a full chunk wastes less than a row */
#define CHUNK_MAX_BYTES (4 * 4096 - 16)
#endif

/* Records appended to one destination in this transaction, not yet written. */
struct pend {
    uint32_t dest;
    unsigned n;
    uint64_t first_seq;
    uint32_t delta[QVAL_MAX_RECS], end[QVAL_MAX_RECS];
    size_t len;
    unsigned char data[CHUNK_MAX_BYTES];
};

struct dest_slot {
    char *name;
    MDB_dbi dbi;
    int ready;             /* set (release) once name and dbi are usable */
};

struct spool {
    MDB_env *env;
    MDB_dbi meta, dests, dlq;
    char *dir;
    char *datafile;
    char uuid[33];
    bool readonly;
    bool upgrade;                  /* a version 1 spool opened for writing */
    enum spool_durability durability;
    uint64_t max_bytes;
    unsigned psize;
    void *map_addr;                /* LMDB's mapping of data.mdb, for release_pages */
    size_t map_len;
    _Atomic uint64_t read_unreleased;   /* bytes spool_read read since its last release */
    pthread_mutex_t dbi_lock;      /* mdb_dbi_open is single-transaction only */
    /* Reset read transactions kept for spool_read (MDB_NOTLS: renewable on
     * any thread). mdb_txn_begin callocs a transaction sized by maxdbs (tens
     * of KiB) per call; a renewed one costs no allocation. */
    pthread_mutex_t rtxn_lock;
    MDB_txn *rtxn[4];
    unsigned n_rtxn;
    struct dest_slot dest[SPOOL_MAX_DESTS + 1];   /* by id; id 0 unused */
};

#define MAX_DELTAS 64
struct spool_txn {
    struct spool *s;
    MDB_txn *txn;
    uint64_t next_seq;
    bool seq_loaded, seq_dirty;
    size_t n_deltas;
    struct { uint32_t dest; int64_t bytes, records; } delta[MAX_DELTAS];
    int64_t dlq_delta;        /* bytes added to (or taken from) the dead-letter store */
    size_t n_pend;
    struct pend *pend[MAX_DELTAS];
};

static __thread char last_error[256];

static void find_map(struct spool *s);
static void pend_free(struct spool_txn *t);
static uint64_t reserve_bytes(uint64_t max);

const char *spool_last_error(void) { return last_error; }

const char *spool_strerror(int rc)
{
    switch (rc) {
    case SPOOL_OK:       return "ok";
    case SPOOL_FULL:     return "spool is full";
    case SPOOL_CORRUPT:  return "record is corrupt";
    case SPOOL_NOTFOUND: return "not found";
    case SPOOL_IO:       return "I/O error";
    case SPOOL_NOMEM:    return "out of memory";
    case SPOOL_INVAL:    return "invalid argument";
    case SPOOL_ERR:      return last_error[0] ? last_error : "LMDB error";
    }
    return "unknown error";
}

/* Maps an LMDB or errno code to a spool_rc, remembering the text. */
static int map_rc(int rc, const char *what)
{
    if (rc == 0)
        return SPOOL_OK;
    snprintf(last_error, sizeof last_error, "%s: %s", what, mdb_strerror(rc));
    switch (rc) {
    case MDB_MAP_FULL:
    case ENOSPC:
    case EDQUOT:
        return SPOOL_FULL;
    case MDB_NOTFOUND:
        return SPOOL_NOTFOUND;
    case ENOMEM:
        return SPOOL_NOMEM;
    case EIO:
    case MDB_PANIC:
        return SPOOL_IO;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
        return SPOOL_CORRUPT;
    default:
        return SPOOL_ERR;
    }
}

/* Parses the value v stored under k in dest's queue. */
static void parse_kv(uint32_t dest, const MDB_val *k, const MDB_val *v, struct qval *q)
{
    bool ok = k->mv_size == 8;
    qval_parse(dest, ok, ok ? qval_get_be64(k->mv_data) : 0, v->mv_data, v->mv_size, q);
}

/* ---- opening ---- */

static int open_dest_dbi(struct spool *s, MDB_txn *txn, uint32_t id, const char *name,
                         size_t nlen, bool create)
{
    char dbname[32];
    snprintf(dbname, sizeof dbname, "q.%u", id);
    MDB_dbi dbi;
    int rc = mdb_dbi_open(txn, dbname, create ? MDB_CREATE : 0, &dbi);
    if (rc)
        return map_rc(rc, "open queue database");
    char *copy = malloc(nlen + 1);
    if (!copy)
        return SPOOL_NOMEM;
    memcpy(copy, name, nlen);
    copy[nlen] = 0;
    s->dest[id].name = copy;
    s->dest[id].dbi = dbi;
    return SPOOL_OK;
}

/* Loads destinations not yet known to this process. Caller holds dbi_lock;
 * the new handles are published only after txn commits (see callers). */
static int load_dests(struct spool *s, MDB_txn *txn, uint32_t *fresh, size_t *n_fresh)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, s->dests, &c);
    if (rc)
        return map_rc(rc, "open cursor");
    MDB_val k, v;
    int op = MDB_FIRST;
    *n_fresh = 0;
    while ((rc = mdb_cursor_get(c, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        struct dest_rec dr;
        if ((v.mv_size != sizeof dr && v.mv_size != DEST_REC_V1) || k.mv_size == 0 ||
            k.mv_size > SPOOL_DEST_MAX) {
            rc = MDB_CORRUPTED;
            break;
        }
        memcpy(&dr, v.mv_data, DEST_REC_V1);
        if (dr.id == 0 || dr.id > SPOOL_MAX_DESTS) {
            rc = MDB_CORRUPTED;
            break;
        }
        if (s->dest[dr.id].name)
            continue;
        int r = open_dest_dbi(s, txn, dr.id, k.mv_data, k.mv_size, false);
        if (r) {
            mdb_cursor_close(c);
            return r;
        }
        fresh[(*n_fresh)++] = dr.id;
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? SPOOL_OK : map_rc(rc, "read destinations");
}

static void publish(struct spool *s, const uint32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        __atomic_store_n(&s->dest[ids[i]].ready, 1, __ATOMIC_RELEASE);
}

static void unpublish_failed(struct spool *s, const uint32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(s->dest[ids[i]].name);
        s->dest[ids[i]].name = NULL;
    }
}

int spool_refresh_dests(struct spool *s)
{
    uint32_t fresh[SPOOL_MAX_DESTS];
    pthread_mutex_lock(&s->dbi_lock);
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc) {
        pthread_mutex_unlock(&s->dbi_lock);
        return map_rc(rc, "begin read");
    }
    size_t n = 0;
    rc = load_dests(s, txn, fresh, &n);
    if (rc == SPOOL_OK) {
        /* handles opened in a read-only transaction stay valid after it ends */
        mdb_txn_commit(txn);
        publish(s, fresh, n);
    } else {
        mdb_txn_abort(txn);
        unpublish_failed(s, fresh, n);
    }
    pthread_mutex_unlock(&s->dbi_lock);
    return rc;
}

/* Reads the spool's uuid, creating it when missing (and writable). */
static int load_uuid(struct spool *s, MDB_txn *txn, char *err, size_t errlen)
{
    MDB_val k = { 4, "uuid" }, v;
    unsigned char id[16];
    int rc = mdb_get(txn, s->meta, &k, &v);
    if (rc == 0 && v.mv_size == sizeof id) {
        memcpy(id, v.mv_data, sizeof id);
    } else if (rc == MDB_NOTFOUND && !s->readonly) {
        if (getrandom(id, sizeof id, 0) != (ssize_t)sizeof id) {
            snprintf(err, errlen, "%s: cannot get random bytes: %s", s->dir, strerror(errno));
            return SPOOL_ERR;
        }
        v.mv_size = sizeof id;
        v.mv_data = id;
        if ((rc = mdb_put(txn, s->meta, &k, &v, 0)) != 0) {
            snprintf(err, errlen, "%s: cannot write uuid: %s", s->dir, mdb_strerror(rc));
            return map_rc(rc, "uuid");
        }
    } else if (rc == MDB_NOTFOUND) {
        memset(id, 0, sizeof id);   /* read-only and older than uuids: none yet */
    } else {
        snprintf(err, errlen, "%s: metadata is damaged (uuid)", s->dir);
        return SPOOL_CORRUPT;
    }
    for (int i = 0; i < 16; i++)
        snprintf(s->uuid + 2 * i, 3, "%02x", id[i]);
    return SPOOL_OK;
}

const char *spool_uuid(const struct spool *s) { return s->uuid; }

static int init_meta(struct spool *s, MDB_txn *txn, char *err, size_t errlen)
{
    MDB_val k = { 7, "version" }, v;
    int rc = mdb_get(txn, s->meta, &k, &v);
    if (rc == MDB_NOTFOUND) {
        if (s->readonly) {
            snprintf(err, errlen, "%s: not a relayd spool (no version)", s->dir);
            return SPOOL_INVAL;
        }
        uint32_t ver = SPOOL_VERSION;
        v.mv_size = sizeof ver;
        v.mv_data = &ver;
        rc = mdb_put(txn, s->meta, &k, &v, 0);
        if (rc) {
            snprintf(err, errlen, "%s: cannot initialise: %s", s->dir, mdb_strerror(rc));
            return map_rc(rc, "init");
        }
        return SPOOL_OK;
    }
    if (rc) {
        snprintf(err, errlen, "%s: cannot read metadata: %s", s->dir, mdb_strerror(rc));
        return map_rc(rc, "read meta");
    }
    uint32_t ver;
    if (v.mv_size != sizeof ver) {
        snprintf(err, errlen, "%s: metadata is damaged (version)", s->dir);
        return SPOOL_CORRUPT;
    }
    memcpy(&ver, v.mv_data, sizeof ver);
    if (ver == 1) {
        s->upgrade = !s->readonly;   /* spool_open rewrites it as version 2 */
        return SPOOL_OK;
    }
    if (ver != SPOOL_VERSION) {
        snprintf(err, errlen, "%s: spool format version %u; this relayd reads version %u",
                 s->dir, ver, SPOOL_VERSION);
        return SPOOL_INVAL;
    }
    return SPOOL_OK;
}

/* Version 1 had no chunks and no record counts (mdb_stat counted records):
 * each destination entry gets its count, then the version says 2. One
 * transaction, so a crash leaves either version whole. */
static int upgrade_v1(struct spool *s, MDB_txn *txn)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, s->dests, &c);
    if (rc)
        return map_rc(rc, "open cursor");
    MDB_val k, v;
    int op = MDB_FIRST;
    while ((rc = mdb_cursor_get(c, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        if (v.mv_size != DEST_REC_V1)
            continue;
        struct dest_rec dr = { 0 };
        memcpy(&dr, v.mv_data, DEST_REC_V1);
        MDB_stat ms;
        if (dr.id == 0 || dr.id > SPOOL_MAX_DESTS || !s->dest[dr.id].name) {
            rc = MDB_CORRUPTED;
            break;
        }
        if ((rc = mdb_stat(txn, s->dest[dr.id].dbi, &ms)) != 0)
            break;
        dr.records = ms.ms_entries;
        char name[SPOOL_DEST_MAX];        /* k points into the page the put rewrites */
        memcpy(name, k.mv_data, k.mv_size);
        MDB_val nk = { k.mv_size, name }, nv = { sizeof dr, &dr };
        if ((rc = mdb_cursor_put(c, &nk, &nv, MDB_CURRENT)) != 0)
            break;
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND)
        return map_rc(rc, "upgrade destinations");
    uint32_t ver = SPOOL_VERSION;
    MDB_val vk = { 7, "version" }, vv = { sizeof ver, &ver };
    return map_rc(mdb_put(txn, s->meta, &vk, &vv, 0), "upgrade version");
}

int spool_open(const struct spool_opts *o, struct spool **out, char *err, size_t errlen)
{
    struct spool *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return SPOOL_NOMEM;
    }
    pthread_mutex_init(&s->dbi_lock, NULL);
    pthread_mutex_init(&s->rtxn_lock, NULL);
    s->readonly = o->readonly;
    s->durability = o->durability;
    s->dir = strdup(o->dir);
    size_t dl = strlen(o->dir) + 16;
    s->datafile = malloc(dl);
    if (!s->dir || !s->datafile) {
        snprintf(err, errlen, "out of memory");
        spool_close(s);
        return SPOOL_NOMEM;
    }
    snprintf(s->datafile, dl, "%s/data.mdb", o->dir);
    s->psize = (unsigned)sysconf(_SC_PAGESIZE);

    struct stat st;
    if (o->readonly) {
        if (stat(s->datafile, &st) != 0) {
            snprintf(err, errlen, "%s: no spool here (%s): check [spool] dir in the config",
                     s->dir, strerror(errno));
            spool_close(s);
            return SPOOL_NOTFOUND;
        }
    } else {
        if (mkdir(o->dir, 0700) != 0 && errno != EEXIST) {
            snprintf(err, errlen, "cannot create spool directory %s: %s", o->dir, strerror(errno));
            spool_close(s);
            return SPOOL_IO;
        }
    }
    uint64_t map = o->max_bytes;
    if (stat(s->datafile, &st) == 0 && (uint64_t)st.st_size + reserve_bytes(o->max_bytes) > map) {
        /* LMDB cannot shrink a file: keep it mapped whole plus the reserve,
         * so that it can drain; appends stay refused until it is below the
         * new bound. */
        map = (uint64_t)st.st_size + reserve_bytes(o->max_bytes);
    }
    s->max_bytes = o->max_bytes;
    map = (map + s->psize - 1) / s->psize * s->psize;

    int rc = mdb_env_create(&s->env);
    if (!rc)
        rc = mdb_env_set_maxdbs(s->env, SPOOL_MAX_DESTS + 8);
    if (!rc)
        rc = mdb_env_set_maxreaders(s->env, 256);
    if (!rc)
        rc = mdb_env_set_mapsize(s->env, (size_t)map);
    if (rc) {
        snprintf(err, errlen, "cannot set up LMDB: %s", mdb_strerror(rc));
        spool_close(s);
        return map_rc(rc, "env");
    }
    unsigned flags = MDB_NOTLS;
    if (o->readonly)
        flags |= MDB_RDONLY;
    if (o->durability != SPOOL_SYNC)
        flags |= MDB_NOSYNC;
    rc = mdb_env_open(s->env, o->dir, flags, 0600);
    if (rc) {
        snprintf(err, errlen, "cannot open spool %s: %s%s", o->dir, mdb_strerror(rc),
                 rc == EACCES ? " (run as the user that owns the spool)" : "");
        spool_close(s);
        return map_rc(rc, "open");
    }

    MDB_txn *txn;
    rc = mdb_txn_begin(s->env, NULL, o->readonly ? MDB_RDONLY : 0, &txn);
    if (rc) {
        snprintf(err, errlen, "cannot begin transaction on %s: %s", o->dir, mdb_strerror(rc));
        spool_close(s);
        return map_rc(rc, "begin");
    }
    unsigned cf = o->readonly ? 0 : MDB_CREATE;
    if ((rc = mdb_dbi_open(txn, "meta", cf, &s->meta)) ||
        (rc = mdb_dbi_open(txn, "dests", cf, &s->dests)) ||
        (rc = mdb_dbi_open(txn, "dlq", cf, &s->dlq))) {
        mdb_txn_abort(txn);
        snprintf(err, errlen, "%s: %s%s", o->dir, mdb_strerror(rc),
                 rc == MDB_NOTFOUND ? " (not a relayd spool)" : "");
        spool_close(s);
        return map_rc(rc, "open databases");
    }
    int r = init_meta(s, txn, err, errlen);
    if (r == SPOOL_OK)
        r = load_uuid(s, txn, err, errlen);
    uint32_t fresh[SPOOL_MAX_DESTS];
    size_t n = 0;
    if (r == SPOOL_OK && (r = load_dests(s, txn, fresh, &n)) != SPOOL_OK)
        snprintf(err, errlen, "%s: cannot load destinations: %s", o->dir, spool_strerror(r));
    if (r == SPOOL_OK && s->upgrade && (r = upgrade_v1(s, txn)) != SPOOL_OK)
        snprintf(err, errlen, "%s: cannot upgrade the spool to format version %d: %s", o->dir,
                 SPOOL_VERSION, spool_strerror(r));
    if (r == SPOOL_OK && (rc = mdb_txn_commit(txn)) != 0) {
        r = map_rc(rc, "commit");
        snprintf(err, errlen, "%s: cannot commit: %s", o->dir, mdb_strerror(rc));
    } else if (r != SPOOL_OK) {
        mdb_txn_abort(txn);
    }
    if (r != SPOOL_OK) {
        spool_close(s);
        return r;
    }
    publish(s, fresh, n);
    find_map(s);
    *out = s;
    return SPOOL_OK;
}

void spool_close(struct spool *s)
{
    if (!s)
        return;
    for (unsigned i = 0; i < s->n_rtxn; i++)
        mdb_txn_abort(s->rtxn[i]);
    if (s->env)
        mdb_env_close(s->env);
    pthread_mutex_destroy(&s->rtxn_lock);
    for (unsigned i = 0; i <= SPOOL_MAX_DESTS; i++)
        free(s->dest[i].name);
    pthread_mutex_destroy(&s->dbi_lock);
    free(s->dir);
    free(s->datafile);
    free(s);
}

const char *spool_path(struct spool *s) { return s->datafile; }

/* ---- destinations ---- */

static bool dest_ready(struct spool *s, uint32_t id)
{
    return id >= 1 && id <= SPOOL_MAX_DESTS &&
           __atomic_load_n(&s->dest[id].ready, __ATOMIC_ACQUIRE);
}

const char *spool_dest_name(struct spool *s, uint32_t id)
{
    return dest_ready(s, id) ? s->dest[id].name : NULL;
}

static int find_dest(struct spool *s, const char *name, uint32_t *id)
{
    size_t n = strlen(name);
    for (uint32_t i = 1; i <= SPOOL_MAX_DESTS; i++) {
        if (dest_ready(s, i) && strlen(s->dest[i].name) == n &&
            memcmp(s->dest[i].name, name, n) == 0) {
            *id = i;
            return SPOOL_OK;
        }
    }
    return SPOOL_NOTFOUND;
}

int spool_dest(struct spool *s, const char *name, bool create, uint32_t *id)
{
    size_t nlen = strlen(name);
    if (nlen == 0 || nlen > SPOOL_DEST_MAX)
        return SPOOL_INVAL;
    if (find_dest(s, name, id) == SPOOL_OK)
        return SPOOL_OK;
    int rc = spool_refresh_dests(s);
    if (rc)
        return rc;
    if (find_dest(s, name, id) == SPOOL_OK)
        return SPOOL_OK;
    if (!create || s->readonly)
        return SPOOL_NOTFOUND;

    pthread_mutex_lock(&s->dbi_lock);
    MDB_txn *txn;
    int mrc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (mrc) {
        pthread_mutex_unlock(&s->dbi_lock);
        return map_rc(mrc, "begin");
    }
    /* another process may have created it meanwhile */
    MDB_val k = { nlen, (void *)name }, v;
    struct dest_rec dr;
    mrc = mdb_get(txn, s->dests, &k, &v);
    if (mrc == 0) {
        mdb_txn_abort(txn);
        pthread_mutex_unlock(&s->dbi_lock);
        rc = spool_refresh_dests(s);
        return rc ? rc : find_dest(s, name, id);
    }
    MDB_val mk = { 9, "next_dest" };
    uint32_t next = 1;
    if (mdb_get(txn, s->meta, &mk, &v) == 0 && v.mv_size == sizeof next)
        memcpy(&next, v.mv_data, sizeof next);
    if (next > SPOOL_MAX_DESTS) {
        mdb_txn_abort(txn);
        pthread_mutex_unlock(&s->dbi_lock);
        snprintf(last_error, sizeof last_error, "too many destinations (at most %d)",
                 SPOOL_MAX_DESTS);
        return SPOOL_ERR;
    }
    memset(&dr, 0, sizeof dr);
    dr.id = next;
    dr.created_ms = (uint64_t)time(NULL) * 1000;
    v.mv_size = sizeof dr;
    v.mv_data = &dr;
    uint32_t after = next + 1;
    MDB_val av = { sizeof after, &after };
    rc = SPOOL_OK;
    if ((mrc = mdb_put(txn, s->dests, &k, &v, MDB_NOOVERWRITE)) ||
        (mrc = mdb_put(txn, s->meta, &mk, &av, 0)))
        rc = map_rc(mrc, "create destination");
    if (rc == SPOOL_OK)
        rc = open_dest_dbi(s, txn, next, name, nlen, true);
    if (rc == SPOOL_OK && (mrc = mdb_txn_commit(txn)) != 0) {
        rc = map_rc(mrc, "commit destination");
        free(s->dest[next].name);
        s->dest[next].name = NULL;
    } else if (rc != SPOOL_OK) {
        mdb_txn_abort(txn);
        free(s->dest[next].name);
        s->dest[next].name = NULL;
    }
    if (rc == SPOOL_OK) {
        publish(s, &next, 1);
        *id = next;
    }
    pthread_mutex_unlock(&s->dbi_lock);
    return rc;
}

/* ---- write transactions ---- */

int spool_txn_begin(struct spool *s, struct spool_txn **out)
{
    if (s->readonly)
        return SPOOL_INVAL;
    struct spool_txn *t = calloc(1, sizeof *t);
    if (!t)
        return SPOOL_NOMEM;
    t->s = s;
    int rc = mdb_txn_begin(s->env, NULL, 0, &t->txn);
    if (rc) {
        free(t);
        return map_rc(rc, "begin");
    }
    *out = t;
    return SPOOL_OK;
}

void spool_txn_abort(struct spool_txn *t)
{
    if (!t)
        return;
    mdb_txn_abort(t->txn);
    pend_free(t);
    free(t);
}

static int add_delta(struct spool_txn *t, uint32_t dest, int64_t bytes, int64_t records)
{
    for (size_t i = 0; i < t->n_deltas; i++) {
        if (t->delta[i].dest == dest) {
            t->delta[i].bytes += bytes;
            t->delta[i].records += records;
            return SPOOL_OK;
        }
    }
    if (t->n_deltas == MAX_DELTAS) {
        snprintf(last_error, sizeof last_error,
                 "one transaction touches more than %d destinations", MAX_DELTAS);
        return SPOOL_INVAL;
    }
    t->delta[t->n_deltas].dest = dest;
    t->delta[t->n_deltas].bytes = bytes;
    t->delta[t->n_deltas].records = records;
    t->n_deltas++;
    return SPOOL_OK;
}

static int load_seq(struct spool_txn *t)
{
    if (t->seq_loaded)
        return SPOOL_OK;
    MDB_val k = { 8, "next_seq" }, v;
    int rc = mdb_get(t->txn, t->s->meta, &k, &v);
    if (rc == MDB_NOTFOUND) {
        t->next_seq = 1;
    } else if (rc) {
        return map_rc(rc, "read next_seq");
    } else {
        if (v.mv_size != 8)
            return SPOOL_CORRUPT;
        memcpy(&t->next_seq, v.mv_data, 8);
    }
    t->seq_loaded = true;
    return SPOOL_OK;
}

/* Puts a new value at the end of dest's queue, reserving size bytes. */
static int put_last(struct spool_txn *t, uint32_t dest, uint64_t key, size_t size,
                    unsigned char **out)
{
    unsigned char kb[8];
    qval_put_be64(kb, key);
    MDB_val k = { 8, kb }, v = { size, NULL };
    MDB_dbi dbi = t->s->dest[dest].dbi;
    int mrc = mdb_put(t->txn, dbi, &k, &v, MDB_APPEND | MDB_RESERVE);
    if (mrc == MDB_KEYEXIST) {   /* not the last key: cannot happen with one counter */
        v.mv_size = size;
        mrc = mdb_put(t->txn, dbi, &k, &v, MDB_NOOVERWRITE | MDB_RESERVE);
    }
    if (mrc)
        return map_rc(mrc, "append");
    *out = v.mv_data;
    return SPOOL_OK;
}

/* Writes p's records [i0, i1): one alone as a plain record, more as a chunk
 * under the first one's seq. */
static int write_group(struct spool_txn *t, const struct pend *p, unsigned i0, unsigned i1)
{
    unsigned n = i1 - i0;
    uint32_t start = i0 ? p->end[i0 - 1] : 0, len = p->end[i1 - 1] - start;
    uint64_t key = p->first_seq + p->delta[i0];
    unsigned char *out;
    int rc;
    if (n == 1) {
        if ((rc = put_last(t, p->dest, key, len, &out)) == SPOOL_OK)
            memcpy(out, p->data + start, len);
        return rc;
    }
    struct qval_bytes rec[QVAL_MAX_RECS];
    uint32_t delta[QVAL_MAX_RECS];
    for (unsigned i = 0; i < n; i++) {
        uint32_t from = i0 + i ? p->end[i0 + i - 1] : 0;
        rec[i] = (struct qval_bytes){ p->data + from, p->end[i0 + i] - from };
        delta[i] = p->delta[i0 + i] - p->delta[i0];
    }
    if ((rc = put_last(t, p->dest, key, qval_chunk_size(n, len), &out)) == SPOOL_OK)
        qval_chunk_build(out, p->dest, key, n, delta, rec);
    return rc;
}

/* Writes p's records. A full chunk (the next record did not fit) goes whole:
 * its overflow pages waste less than a record. What is left at the end of a
 * transaction goes in chunks small enough for a leaf page (LEAF_CHUNK), so
 * that a part-filled chunk never takes whole overflow pages it does not use
 * (and spool_footprint's estimate holds). */
#define LEAF_CHUNK 2000
static int pend_flush(struct spool_txn *t, struct pend *p, bool full)
{
    int rc = SPOOL_OK;
    if (p->n && (full || qval_chunk_size(p->n, p->len) <= LEAF_CHUNK)) {
        rc = write_group(t, p, 0, p->n);
    } else {
        unsigned i0 = 0;
        while (rc == SPOOL_OK && i0 < p->n) {
            unsigned i1 = i0 + 1;
            uint32_t start = i0 ? p->end[i0 - 1] : 0;
            while (i1 < p->n &&
                   qval_chunk_size(i1 + 1 - i0, p->end[i1] - start) <= LEAF_CHUNK)
                i1++;
            rc = write_group(t, p, i0, i1);
            i0 = i1;
        }
    }
    p->n = 0;
    p->len = 0;
    return rc;
}

/* Writes every destination's pending records: before anything else touches
 * the queues in this transaction, and at commit. */
static int flush_all(struct spool_txn *t)
{
    for (size_t i = 0; i < t->n_pend; i++) {
        int rc = pend_flush(t, t->pend[i], false);
        if (rc)
            return rc;
    }
    return SPOOL_OK;
}

static void pend_free(struct spool_txn *t)
{
    for (size_t i = 0; i < t->n_pend; i++)
        free(t->pend[i]);
    t->n_pend = 0;
}

static struct pend *pend_for(struct spool_txn *t, uint32_t dest)
{
    for (size_t i = 0; i < t->n_pend; i++)
        if (t->pend[i]->dest == dest)
            return t->pend[i];
    if (t->n_pend == MAX_DELTAS)
        return NULL;
    struct pend *p = malloc(sizeof *p);
    if (!p)
        return NULL;
    p->dest = dest;
    p->n = 0;
    p->len = 0;
    t->pend[t->n_pend++] = p;
    return p;
}

int spool_txn_append(struct spool_txn *t, uint32_t dest, const void *row, size_t len,
                     uint64_t time_ms, uint64_t *seq_out)
{
    struct spool *s = t->s;
    if (!dest_ready(s, dest) || len > UINT32_MAX - SPOOL_HDR)
        return SPOOL_INVAL;
    int rc = load_seq(t);
    if (rc)
        return rc;
    uint64_t seq = t->next_seq;
    size_t size = SPOOL_HDR + len;
    struct pend *p = pend_for(t, dest);
    if (!p && t->n_pend < MAX_DELTAS)
        return SPOOL_NOMEM;
    if (!p) {
        snprintf(last_error, sizeof last_error,
                 "one transaction touches more than %d destinations", MAX_DELTAS);
        return SPOOL_INVAL;
    }
    bool alone = qval_chunk_size(1, size) > CHUNK_MAX_BYTES;   /* too big for any chunk */
    if (p->n && !alone) {
        /* full by bytes: written whole; by count: in leaf-sized pieces */
        bool full = qval_chunk_size(p->n + 1, p->len + size) > CHUNK_MAX_BYTES;
        if ((full || p->n == QVAL_MAX_RECS || seq - p->first_seq > UINT32_MAX) &&
            (rc = pend_flush(t, p, full)) != SPOOL_OK)
            return rc;
    }
    if (alone) {
        /* too big for a chunk: a plain record, after what is pending (keys
         * only grow) */
        unsigned char *out;
        if ((rc = pend_flush(t, p, false)) != SPOOL_OK ||
            (rc = put_last(t, dest, seq, size, &out)) != SPOOL_OK)
            return rc;
        qval_record_build(out, dest, seq, row, len, time_ms);
    } else {
        if (p->n == 0)
            p->first_seq = seq;
        qval_record_build(p->data + p->len, dest, seq, row, len, time_ms);
        p->len += size;
        p->delta[p->n] = (uint32_t)(seq - p->first_seq);
        p->end[p->n] = (uint32_t)p->len;
        p->n++;
    }
    t->next_seq = seq + 1;
    t->seq_dirty = true;
    if ((rc = add_delta(t, dest, (int64_t)len, 1)) != SPOOL_OK)
        return rc;
    if (seq_out)
        *seq_out = seq;
    return SPOOL_OK;
}

/* Positions a cursor of database dbi on key qval_put_be64(seq); returns the value. */
static int seek_dbi(struct spool_txn *t, MDB_dbi dbi, uint64_t seq, MDB_cursor **c,
                    unsigned char kb[8], MDB_val *v, const char *what)
{
    int rc = mdb_cursor_open(t->txn, dbi, c);
    if (rc)
        return map_rc(rc, "cursor");
    qval_put_be64(kb, seq);
    MDB_val k = { 8, kb };
    rc = mdb_cursor_get(*c, &k, v, MDB_SET_KEY);
    if (rc) {
        mdb_cursor_close(*c);
        return map_rc(rc, what);
    }
    return SPOOL_OK;
}

/* Positions c on the value of dest's queue that would hold seq -- the one
 * under that key, or the chunk before whose range covers it -- and parses it
 * into q. With at_next the cursor rests where seq may be (after a delete):
 * that value is tried before a search from the root. MDB_NOTFOUND: none. */
static int locate(MDB_cursor *c, uint32_t dest, uint64_t seq, bool at_next, struct qval *q)
{
    MDB_val k, v;
    if (at_next && mdb_cursor_get(c, &k, &v, MDB_GET_CURRENT) == 0) {
        parse_kv(dest, &k, &v, q);
        if (qval_covers(q, seq))
            return 0;
    }
    unsigned char kb[8];
    qval_put_be64(kb, seq);
    k = (MDB_val){ 8, kb };
    int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    if (rc == 0 && k.mv_size == 8 && qval_get_be64(k.mv_data) == seq) {
        parse_kv(dest, &k, &v, q);
        return 0;
    }
    if (rc == MDB_NOTFOUND)
        rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
    else if (rc == 0)
        rc = mdb_cursor_get(c, &k, &v, MDB_PREV);
    if (rc)
        return rc;
    parse_kv(dest, &k, &v, q);
    return qval_covers(q, seq) ? 0 : MDB_NOTFOUND;
}

/* Rewrites the chunk the cursor is on without the records marked in drop. */
static int chunk_rewrite(MDB_cursor *c, uint32_t dest, const struct qval *q, const bool *drop)
{
    struct qval_bytes rec[QVAL_MAX_RECS];
    uint32_t delta[QVAL_MAX_RECS];
    unsigned n = 0;
    size_t bytes = 0;
    for (unsigned i = 0; i < q->n; i++) {
        if (drop[i])
            continue;
        rec[n] = qval_rec(q, i);
        delta[n] = (uint32_t)(qval_seq(q, i) - q->key);
        bytes += rec[n].len;
        n++;
    }
    size_t size = qval_chunk_size(n, bytes);
    unsigned char *buf = malloc(size);   /* q points into the page the put rewrites */
    if (!buf)
        return ENOMEM;
    qval_chunk_build(buf, dest, q->key, n, delta, rec);
    unsigned char kb[8];
    qval_put_be64(kb, q->key);
    MDB_val k = { 8, kb }, v = { size, buf };
    int rc = mdb_cursor_put(c, &k, &v, MDB_CURRENT);
    free(buf);
    return rc;
}

/* Removes from the value q the cursor is on the records marked in drop (m of
 * them): the whole value when that is all of it. The cursor then rests on
 * that value or, when it went, on the next. */
static int remove_marked(MDB_cursor *c, uint32_t dest, const struct qval *q, const bool *drop,
                         unsigned m)
{
    return m == q->n ? mdb_cursor_del(c, 0) : chunk_rewrite(c, dest, q, drop);
}

int spool_txn_remove(struct spool_txn *t, uint32_t dest, uint64_t seq)
{
    size_t removed = 0;
    int rc = spool_txn_remove_run(t, dest, &seq, 1, &removed);
    if (rc == SPOOL_OK && removed == 0) {
        snprintf(last_error, sizeof last_error, "find record: %s", mdb_strerror(MDB_NOTFOUND));
        return SPOOL_NOTFOUND;
    }
    return rc;
}

int spool_txn_remove_run(struct spool_txn *t, uint32_t dest, const uint64_t *seqs, size_t n,
                         size_t *removed)
{
    size_t done = 0;
    if (removed)
        *removed = 0;
    if (n == 0)
        return SPOOL_OK;
    if (!dest_ready(t->s, dest))
        return SPOOL_INVAL;
    int rc = flush_all(t);
    if (rc)
        return rc;
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(t->txn, t->s->dest[dest].dbi, &c)) != 0)
        return map_rc(rc, "cursor");
    int64_t bytes = 0, records = 0;
    bool at_next = false;     /* the cursor rests on the value seqs[i] is likely in */
    size_t i = 0;
    while (i < n) {
        struct qval q;
        rc = locate(c, dest, seqs[i], at_next, &q);
        if (rc == MDB_NOTFOUND) {   /* removed meanwhile: nothing to do */
            rc = 0;
            at_next = false;
            i++;
            continue;
        }
        if (rc)
            break;
        /* every seq from i on that this value covers, while they ascend */
        uint64_t last = qval_seq(&q, q.n - 1);
        bool drop[QVAL_MAX_RECS] = { false };
        unsigned m = 0, e = 0;
        int64_t b = 0;
        size_t j = i;
        while (j < n && seqs[j] <= last && (j == i || seqs[j] > seqs[j - 1])) {
            while (e < q.n && qval_seq(&q, e) < seqs[j])
                e++;
            if (e < q.n && qval_seq(&q, e) == seqs[j] && !drop[e]) {
                drop[e] = true;
                m++;
                b += qval_row_bytes(&q, e);
            }
            j++;
        }
        if (j == i)
            j = i + 1;
        at_next = true;
        if (m) {
            int64_t r = m == q.n ? qval_count(&q) : m;
            if ((rc = remove_marked(c, dest, &q, drop, m)) != 0)
                break;
            done += m;
            records += r;
            bytes += b;
        }
        i = j;
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND)
        return map_rc(rc, "remove");
    if (removed)
        *removed = done;
    return done ? add_delta(t, dest, -bytes, -records) : SPOOL_OK;
}

int spool_txn_dead_letter(struct spool_txn *t, uint32_t dest, uint64_t seq,
                          const char *reason, const char *detail)
{
    struct spool_dl_info info = { .reason = reason, .detail = detail };
    return spool_txn_dead_letter_info(t, dest, seq, &info);
}

int spool_txn_dead_letter_info(struct spool_txn *t, uint32_t dest, uint64_t seq,
                               const struct spool_dl_info *info)
{
    if (!dest_ready(t->s, dest))
        return SPOOL_INVAL;
    int rc = flush_all(t);
    if (rc)
        return rc;
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(t->txn, t->s->dest[dest].dbi, &c)) != 0)
        return map_rc(rc, "cursor");
    struct qval q;
    int idx = -1;
    if ((rc = locate(c, dest, seq, false, &q)) == 0 && (idx = qval_find(&q, seq)) < 0)
        rc = MDB_NOTFOUND;
    if (rc) {
        mdb_cursor_close(c);
        return map_rc(rc, "find record");
    }
    struct spool_record r;
    qval_record(dest, &q, (unsigned)idx, &r);
    struct dlq_entry e = { .seq = seq, .dest = dest };
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    e.dead_ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000;
    e.http_status = info->http_status;
    e.attempts = info->attempts;
    e.first_attempt_ms = info->first_attempt_ms;
    e.last_attempt_ms = info->last_attempt_ms;
    e.reason = info->reason;
    e.reason_len = strlen(info->reason);
    e.detail = info->detail ? info->detail : "";
    e.detail_len = strlen(e.detail);
    e.enqueued_ms = r.time_ms;
    e.row = r.row;            /* a corrupt record: every byte there is */
    e.row_len = r.len;
    int64_t bytes = qval_row_bytes(&q, (unsigned)idx);
    int64_t records = q.n == 1 ? qval_count(&q) : 1;

    /* The value lives in LMDB's page: copy it before the tree changes. */
    size_t need = dlq_encoded_size(&e);
    unsigned char *buf = malloc(need);
    if (!buf) {
        mdb_cursor_close(c);
        return SPOOL_NOMEM;
    }
    dlq_encode(&e, buf);
    bool drop[QVAL_MAX_RECS] = { false };
    drop[idx] = true;
    int mrc = remove_marked(c, dest, &q, drop, 1);
    mdb_cursor_close(c);
    if (mrc == 0) {
        unsigned char kb[8];
        qval_put_be64(kb, seq);
        MDB_val k = { 8, kb }, dv = { need, buf };
        mrc = mdb_put(t->txn, t->s->dlq, &k, &dv, MDB_NOOVERWRITE);
    }
    free(buf);
    if (mrc)
        return map_rc(mrc, "dead-letter");
    t->dlq_delta += (int64_t)need;
    return add_delta(t, dest, -bytes, -records);
}

/* Finds dead letter seq; on success *c is positioned on it (caller closes). */
static int dlq_seek(struct spool_txn *t, uint64_t seq, MDB_cursor **c, unsigned char kb[8],
                    MDB_val *v)
{
    return seek_dbi(t, t->s->dlq, seq, c, kb, v, "find dead letter");
}

int spool_txn_dlq_delete(struct spool_txn *t, uint64_t seq)
{
    MDB_cursor *c;
    unsigned char kb[8];
    MDB_val v;
    int rc = dlq_seek(t, seq, &c, kb, &v);
    if (rc)
        return rc;
    size_t size = v.mv_size;
    int mrc = mdb_cursor_del(c, 0);
    mdb_cursor_close(c);
    if (mrc)
        return map_rc(mrc, "delete dead letter");
    t->dlq_delta -= (int64_t)size;
    return SPOOL_OK;
}

int spool_txn_dlq_replay(struct spool_txn *t, uint64_t seq, uint32_t dest, const char *row,
                         size_t len, uint64_t *new_seq)
{
    MDB_cursor *c;
    unsigned char kb[8];
    MDB_val v;
    int rc = dlq_seek(t, seq, &c, kb, &v);
    if (rc)
        return rc;
    struct dlq_entry e;
    if (dlq_decode(v.mv_data, v.mv_size, seq, &e) != 0 && !row) {
        mdb_cursor_close(c);
        snprintf(last_error, sizeof last_error, "dead letter %llu is damaged: give its row",
                 (unsigned long long)seq);
        return SPOOL_CORRUPT;
    }
    if (!dest)
        dest = e.dest;
    /* copy the row out of LMDB's page before the tree changes */
    const char *src = row ? row : e.row;
    size_t n = row ? len : e.row_len;
    char *copy = malloc(n ? n : 1);
    if (!copy) {
        mdb_cursor_close(c);
        return SPOOL_NOMEM;
    }
    memcpy(copy, src, n);
    size_t size = v.mv_size;
    int mrc = mdb_cursor_del(c, 0);
    mdb_cursor_close(c);
    if (mrc) {
        free(copy);
        return map_rc(mrc, "delete dead letter");
    }
    t->dlq_delta -= (int64_t)size;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    rc = spool_txn_append(t, dest, copy, n,
                          (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000, new_seq);
    free(copy);
    return rc;
}

int spool_txn_put_meta(struct spool_txn *t, const char *key, const void *val, size_t len)
{
    char k[128];
    int n = snprintf(k, sizeof k, "x.%s", key);   /* "x." keeps them apart from ours */
    if (n <= 2 || (size_t)n >= sizeof k)
        return SPOOL_INVAL;
    MDB_val mk = { (size_t)n, k }, mv = { len, (void *)val };
    return map_rc(mdb_put(t->txn, t->s->meta, &mk, &mv, 0), "write meta");
}

int spool_get_meta(struct spool *s, const char *key, void *val, size_t cap, size_t *len)
{
    char k[128];
    int n = snprintf(k, sizeof k, "x.%s", key);
    if (n <= 2 || (size_t)n >= sizeof k)
        return SPOOL_INVAL;
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return map_rc(rc, "begin read");
    MDB_val mk = { (size_t)n, k }, mv;
    rc = mdb_get(txn, s->meta, &mk, &mv);
    if (rc == 0) {
        memcpy(val, mv.mv_data, mv.mv_size < cap ? mv.mv_size : cap);
        *len = mv.mv_size;
    }
    mdb_txn_abort(txn);
    return map_rc(rc, "read meta");
}

int spool_txn_del_meta(struct spool_txn *t, const char *key)
{
    char k[128];
    int n = snprintf(k, sizeof k, "x.%s", key);
    if (n <= 2 || (size_t)n >= sizeof k)
        return SPOOL_INVAL;
    MDB_val mk = { (size_t)n, k };
    int rc = mdb_del(t->txn, t->s->meta, &mk, NULL);
    return rc == MDB_NOTFOUND ? SPOOL_NOTFOUND : map_rc(rc, "delete meta");
}

int spool_meta_scan(struct spool *s, const char *prefix, spool_meta_cb cb, void *arg)
{
    char k[128];
    int n = snprintf(k, sizeof k, "x.%s", prefix);
    if (n < 2 || (size_t)n >= sizeof k)
        return SPOOL_INVAL;
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return map_rc(rc, "begin read");
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(txn, s->meta, &c)) != 0) {
        mdb_txn_abort(txn);
        return map_rc(rc, "cursor");
    }
    MDB_val mk = { (size_t)n, k }, mv;
    int op = MDB_SET_RANGE;
    while ((rc = mdb_cursor_get(c, &mk, &mv, op)) == 0) {
        op = MDB_NEXT;
        if (mk.mv_size < (size_t)n || memcmp(mk.mv_data, k, (size_t)n) != 0)
            break;   /* past the prefix (keys are sorted) */
        char key[128];
        size_t kl = mk.mv_size - 2;
        if (kl >= sizeof key)
            continue;
        memcpy(key, (const char *)mk.mv_data + 2, kl);
        key[kl] = 0;
        if (cb(key, mv.mv_data, mv.mv_size, arg))
            break;
    }
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    return rc && rc != MDB_NOTFOUND ? map_rc(rc, "scan meta") : SPOOL_OK;
}

uint64_t spool_dlq_bytes(struct spool *s)
{
    MDB_txn *txn;
    uint64_t v = 0;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn))
        return 0;
    MDB_val k = { 9, "dlq_bytes" }, d;
    if (mdb_get(txn, s->meta, &k, &d) == 0 && d.mv_size == 8)
        memcpy(&v, d.mv_data, 8);
    mdb_txn_abort(txn);
    return v;
}

static int apply_deltas(struct spool_txn *t)
{
    for (size_t i = 0; i < t->n_deltas; i++) {
        if (t->delta[i].bytes == 0 && t->delta[i].records == 0)
            continue;
        const char *name = t->s->dest[t->delta[i].dest].name;
        MDB_val k = { strlen(name), (void *)name }, v;
        int rc = mdb_get(t->txn, t->s->dests, &k, &v);
        struct dest_rec dr = { 0 };
        if (rc || (v.mv_size != sizeof dr && v.mv_size != DEST_REC_V1))
            return rc ? map_rc(rc, "read destination") : SPOOL_CORRUPT;
        memcpy(&dr, v.mv_data, v.mv_size);
        int64_t nb = (int64_t)dr.bytes + t->delta[i].bytes;
        dr.bytes = nb < 0 ? 0 : (uint64_t)nb;
        int64_t nr = (int64_t)dr.records + t->delta[i].records;
        dr.records = nr < 0 ? 0 : (uint64_t)nr;
        v.mv_data = &dr;
        v.mv_size = sizeof dr;
        if ((rc = mdb_put(t->txn, t->s->dests, &k, &v, 0)) != 0)
            return map_rc(rc, "update destination");
    }
    return SPOOL_OK;
}

static int apply_dlq_delta(struct spool_txn *t)
{
    if (t->dlq_delta == 0)
        return SPOOL_OK;
    MDB_val k = { 9, "dlq_bytes" }, v;
    int64_t cur = 0;
    if (mdb_get(t->txn, t->s->meta, &k, &v) == 0 && v.mv_size == 8)
        memcpy(&cur, v.mv_data, 8);
    cur += t->dlq_delta;
    if (cur < 0)
        cur = 0;
    v.mv_size = 8;
    v.mv_data = &cur;
    int rc = mdb_put(t->txn, t->s->meta, &k, &v, 0);
    return rc ? map_rc(rc, "write dlq_bytes") : SPOOL_OK;
}

int spool_txn_commit(struct spool_txn *t)
{
    int rc = flush_all(t);
    if (rc == SPOOL_OK)
        rc = apply_deltas(t);
    if (rc == SPOOL_OK)
        rc = apply_dlq_delta(t);
    if (rc == SPOOL_OK && t->seq_dirty) {
        MDB_val k = { 8, "next_seq" }, v = { 8, &t->next_seq };
        int mrc = mdb_put(t->txn, t->s->meta, &k, &v, 0);
        if (mrc)
            rc = map_rc(mrc, "write next_seq");
    }
    if (rc != SPOOL_OK) {
        spool_txn_abort(t);
        return rc;
    }
    int mrc = mdb_txn_commit(t->txn);   /* frees the txn, success or not */
    pend_free(t);
    free(t);
    return map_rc(mrc, "commit");
}

/* ---- space ---- */

static uint64_t count_free_pages(struct spool *s)
{
    MDB_txn *txn;
    MDB_cursor *c;
    uint64_t total = 0;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn))
        return 0;
    if (mdb_cursor_open(txn, 0, &c) == 0) {   /* database 0 is LMDB's free list */
        MDB_val k, v;
        int op = MDB_FIRST;
        while (mdb_cursor_get(c, &k, &v, op) == 0) {
            op = MDB_NEXT;
            size_t n;
            if (v.mv_size >= sizeof n) {
                memcpy(&n, v.mv_data, sizeof n);   /* an IDL starts with its length */
                total += n;
            }
        }
        mdb_cursor_close(c);
    }
    mdb_txn_abort(txn);
    return total;
}

static uint64_t reserve_bytes(uint64_t max)
{
    uint64_t r = max / 32;
    if (r < RESERVE_MIN)
        r = RESERVE_MIN;
    if (r > RESERVE_MAX)
        r = RESERVE_MAX;
    if (r > max / 4)         /* tiny bounds: never reserve the whole map */
        r = max / 4;
    return r;
}

static uint64_t used_pages(struct spool *s, MDB_envinfo *info)
{
    uint64_t high = info->me_last_pgno + 1;
    uint64_t fr = count_free_pages(s);
    return fr < high ? high - fr : 0;
}

/* Bytes the filesystem holding the spool can still give us. */
static uint64_t disk_avail(struct spool *s)
{
    struct statvfs vs;
    if (statvfs(s->dir, &vs) != 0)
        return UINT64_MAX;   /* cannot tell: let the commit find out */
    return (uint64_t)vs.f_bavail * vs.f_frsize;
}

uint64_t spool_footprint(size_t row_len)
{
    /* LMDB keeps a value in its leaf page when the node (8-byte header,
     * 8-byte key, value) fits in about half a page (nodemax = (4096-16)/2 for
     * 4 KiB pages); a larger value gets whole overflow pages of its own plus
     * a small node. Leaves filled by MDB_APPEND are nearly full, so a small
     * record costs its node plus its 2-byte slot. */
    uint64_t v = SPOOL_HDR + row_len;
    if (v + 16 <= 2040)
        return v + 16 + 2;
    return (v + 16 + 4095) / 4096 * 4096 + 16 + 2;
}

bool spool_has_room(struct spool *s, uint64_t footprint)
{
    MDB_envinfo info;
    if (mdb_env_info(s->env, &info))
        return false;
    uint64_t ps = s->psize;
    /* pages for the rows, a tenth more for branch pages and the pages the
     * commit copies, and a few for meta and the destination entries */
    uint64_t need = footprint / ps + footprint / ps / 10 + 8;
    uint64_t limit = (s->max_bytes - reserve_bytes(s->max_bytes)) / ps;
    /* The disk must hold what the file may grow by, plus a small reserve
     * so that removals can still commit on a full disk. */
    uint64_t disk = disk_avail(s), keep = RESERVE_MIN;
    if (info.me_last_pgno + 1 + need <= limit && disk >= (need * ps) + keep)
        return true;                       /* room above the high-water mark */
    uint64_t used = used_pages(s, &info), high = info.me_last_pgno + 1;
    if (used + need > limit) {
        snprintf(last_error, sizeof last_error, "the spool reached max_spool_bytes "
                 "(%llu bytes, %llu in use)", (unsigned long long)s->max_bytes,
                 (unsigned long long)(used * ps));
        return false;
    }
    uint64_t free_in_file = high - used;
    uint64_t grow = need > free_in_file ? (need - free_in_file) * ps : 0;
    if (grow == 0 || disk >= grow + keep)
        return true;
    snprintf(last_error, sizeof last_error, "the disk holding %s is full (%llu bytes free)",
             s->dir, (unsigned long long)disk);
    return false;
}

/* ---- reading ---- */

/* A read transaction for spool_read: a kept one renewed, else a new one. */
static int read_txn_begin(struct spool *s, MDB_txn **txn)
{
    MDB_txn *t = NULL;
    pthread_mutex_lock(&s->rtxn_lock);
    if (s->n_rtxn)
        t = s->rtxn[--s->n_rtxn];
    pthread_mutex_unlock(&s->rtxn_lock);
    if (t) {
        if (mdb_txn_renew(t) == 0) {
            *txn = t;
            return 0;
        }
        mdb_txn_abort(t);
    }
    return mdb_txn_begin(s->env, NULL, MDB_RDONLY, txn);
}

/* Ends it: reset and kept for the next read, or aborted when enough are kept. */
static void read_txn_end(struct spool *s, MDB_txn *txn)
{
    mdb_txn_reset(txn);
    pthread_mutex_lock(&s->rtxn_lock);
    if (s->n_rtxn < sizeof s->rtxn / sizeof s->rtxn[0]) {
        s->rtxn[s->n_rtxn++] = txn;
        txn = NULL;
    }
    pthread_mutex_unlock(&s->rtxn_lock);
    if (txn)
        mdb_txn_abort(txn);
}

/* The cursor runs up to READ_AHEAD values (and READ_AHEAD_BYTES) ahead of
 * the callback and asks the CPU to fetch each value's bytes as it passes
 * them, so that by the time a record is checked and handed over its bytes
 * are in the cache. A backlog is read once, straight from the page cache:
 * without this, each record's checksum waits on its cache misses one after
 * the other (docs/benchmarks.md, "read-ahead"). Stopping early (max_bytes,
 * the callback) wastes at most READ_AHEAD cursor steps. */
#define READ_AHEAD 16
#ifndef READ_AHEAD_BYTES
#define READ_AHEAD_BYTES (16u << 10)
#endif

static void fetch_ahead(const MDB_val *v)
{
    uintptr_t p = (uintptr_t)v->mv_data & ~(uintptr_t)63, end = (uintptr_t)v->mv_data + v->mv_size;
    for (; p < end; p += 64)
        __builtin_prefetch((const void *)p);
}

/* Positions c on the first value holding a record with seq >= from: the
 * one that covers from (locate), else the first after it. MDB_NOTFOUND:
 * there is none. */
static int read_position(MDB_cursor *c, uint32_t dest, uint64_t from)
{
    struct qval q;
    int rc = locate(c, dest, from, false, &q);
    if (rc != MDB_NOTFOUND)
        return rc;
    unsigned char kb[8];
    qval_put_be64(kb, from);
    MDB_val k = { 8, kb }, v;
    return mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
}

int spool_read(struct spool *s, uint32_t dest, uint64_t from_seq, size_t max_records,
               size_t max_bytes, spool_record_cb cb, void *arg)
{
    if (!dest_ready(s, dest))
        return SPOOL_INVAL;
    if (max_records == 0)
        return SPOOL_OK;
    MDB_txn *txn;
    int rc = read_txn_begin(s, &txn);
    if (rc)
        return map_rc(rc, "begin read");
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(txn, s->dest[dest].dbi, &c)) != 0) {
        read_txn_end(s, txn);
        return map_rc(rc, "cursor");
    }
    MDB_val ks[READ_AHEAD], vs[READ_AHEAD];
    size_t head = 0, tail = 0;   /* values handed over, values fetched */
    size_t ahead = 0;            /* bytes of the values fetched, not yet handed over */
    size_t bytes = 0, passed = 0;
    bool end = false;            /* the cursor is past the last record, or failed */
    bool stopped = false;        /* by a limit or the callback, before the end */
    rc = read_position(c, dest, from_seq);
    int op = MDB_GET_CURRENT;
    if (rc)
        end = true;
    while (!stopped) {
        while (!end && tail - head < READ_AHEAD && tail - head < max_records - passed &&
               (tail - head < 2 || ahead < READ_AHEAD_BYTES)) {
            size_t i = tail % READ_AHEAD;
            if ((rc = mdb_cursor_get(c, &ks[i], &vs[i], op)) != 0) {
                end = true;
                break;
            }
            op = MDB_NEXT;
            fetch_ahead(&vs[i]);
            ahead += vs[i].mv_size;
            tail++;
        }
        if (head == tail)
            break;
        size_t i = head % READ_AHEAD;
        struct qval q;
        parse_kv(dest, &ks[i], &vs[i], &q);
        for (unsigned j = 0; j < q.n; j++) {
            if (qval_seq(&q, j) < from_seq && !q.bad_key)
                continue;
            struct spool_record r;
            qval_record(dest, &q, j, &r);
            if (passed > 0 && bytes + r.len > max_bytes) {
                stopped = true;
                break;
            }
            passed++;
            bytes += r.len;
            if (cb(&r, arg) || passed == max_records) {
                stopped = true;
                break;
            }
        }
        ahead -= vs[i].mv_size;
        head++;
    }
    mdb_cursor_close(c);
    read_txn_end(s, txn);
    uint64_t was = atomic_fetch_add_explicit(&s->read_unreleased, bytes, memory_order_relaxed);
    if (was < RELEASE_READ_BYTES && was + bytes >= RELEASE_READ_BYTES) {
        atomic_store_explicit(&s->read_unreleased, 0, memory_order_relaxed);
        spool_release_pages(s);
    }
    /* an error is reported once every record before it was handed over */
    if (!stopped && rc && rc != MDB_NOTFOUND)
        return map_rc(rc, "read");
    return SPOOL_OK;
}

int spool_dlq_read(struct spool *s, uint64_t from_seq, size_t max, spool_dlq_cb cb, void *arg)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return map_rc(rc, "begin read");
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(txn, s->dlq, &c)) != 0) {
        mdb_txn_abort(txn);
        return map_rc(rc, "cursor");
    }
    unsigned char kb[8];
    qval_put_be64(kb, from_seq);
    MDB_val k = { 8, kb }, v;
    size_t n = 0;
    int op = MDB_SET_RANGE;
    while (n < max && (rc = mdb_cursor_get(c, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        n++;
        uint64_t seq = k.mv_size == 8 ? qval_get_be64(k.mv_data) : 0;
        struct dlq_entry e;
        if (dlq_decode(v.mv_data, v.mv_size, seq, &e) != 0) {
            memset(&e, 0, sizeof e);
            e.seq = seq;
            e.reason = "damaged-entry";
            e.reason_len = strlen(e.reason);
            e.detail = "";
            e.row = v.mv_data;
            e.row_len = v.mv_size;
        }
        if (cb(&e, arg))
            break;
    }
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    if (rc && rc != MDB_NOTFOUND)
        return map_rc(rc, "read dead letters");
    return SPOOL_OK;
}

/* ---- statistics and upkeep ---- */

int spool_stats(struct spool *s, struct spool_stats *st)
{
    memset(st, 0, sizeof *st);
    st->max_bytes = s->max_bytes;
    struct stat fs;
    if (stat(s->datafile, &fs) == 0)
        st->file_bytes = (uint64_t)fs.st_size;
    MDB_envinfo info;
    if (mdb_env_info(s->env, &info) == 0)
        st->used_bytes = used_pages(s, &info) * s->psize;

    int rc = spool_refresh_dests(s);
    if (rc)
        return rc;
    MDB_txn *txn;
    if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)) != 0)
        return map_rc(rc, "begin read");
    MDB_val k = { 8, "next_seq" }, v;
    st->next_seq = 1;
    if (mdb_get(txn, s->meta, &k, &v) == 0 && v.mv_size == 8)
        memcpy(&st->next_seq, v.mv_data, 8);
    MDB_stat ms;
    if (mdb_stat(txn, s->dlq, &ms) == 0)
        st->dlq_records = ms.ms_entries;
    k.mv_size = 9;
    k.mv_data = "dlq_bytes";
    if (mdb_get(txn, s->meta, &k, &v) == 0 && v.mv_size == 8)
        memcpy(&st->dlq_bytes, v.mv_data, 8);
    k.mv_size = 8;
    for (uint32_t id = 1; id <= SPOOL_MAX_DESTS; id++) {
        if (!dest_ready(s, id))
            continue;
        struct spool_dest_stats *d = &st->dests[st->n_dests++];
        d->id = id;
        snprintf(d->name, sizeof d->name, "%s", s->dest[id].name);
        k.mv_size = strlen(d->name);
        k.mv_data = d->name;
        struct dest_rec dr;
        int got = mdb_get(txn, s->dests, &k, &v);
        if (got == 0 && v.mv_size == sizeof dr) {
            memcpy(&dr, v.mv_data, sizeof dr);
            d->bytes = dr.bytes;
            d->records = dr.records;
        } else if (got == 0 && v.mv_size == DEST_REC_V1) {   /* version 1, opened read-only */
            memcpy(&dr, v.mv_data, DEST_REC_V1);
            d->bytes = dr.bytes;
            if (mdb_stat(txn, s->dest[id].dbi, &ms) == 0)
                d->records = ms.ms_entries;
        }
        MDB_cursor *c;
        if (d->records && mdb_cursor_open(txn, s->dest[id].dbi, &c) == 0) {
            if (mdb_cursor_get(c, &k, &v, MDB_FIRST) == 0) {
                struct qval q;
                parse_kv(id, &k, &v, &q);
                struct qval_bytes r = qval_rec(&q, 0);
                if (!q.problem && r.len >= SPOOL_HDR)
                    d->oldest_ms = qval_get_le64(r.p + 8);
            }
            mdb_cursor_close(c);
        }
        st->records += d->records;
        st->bytes += d->bytes;
    }
    mdb_txn_abort(txn);
    return SPOOL_OK;
}

int spool_reader_check(struct spool *s, int *cleared)
{
    int dead = 0;
    int rc = mdb_reader_check(s->env, &dead);
    if (cleared)
        *cleared = dead;
    return map_rc(rc, "reader check");
}

/* LMDB does not say where it mapped the file (me_mapaddr is only set with
 * MDB_FIXEDMAP), so find the mapping of our data file in /proc/self/maps. */
static void find_map(struct spool *s)
{
    struct stat st;
    if (stat(s->datafile, &st) != 0)
        return;
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        return;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi, ino;
        if (sscanf(line, "%lx-%lx %*s %*s %*s %lu", &lo, &hi, &ino) == 3 &&
            ino == (unsigned long)st.st_ino && strstr(line, "data.mdb")) {
            s->map_addr = (void *)lo;
            s->map_len = hi - lo;
            break;
        }
    }
    fclose(f);
}

int spool_compact(const char *dir, uint64_t *before, uint64_t *after, char *err, size_t errlen)
{
    char data[4096], tmpdir[4096], tmpdata[4200];
    snprintf(data, sizeof data, "%s/data.mdb", dir);
    snprintf(tmpdir, sizeof tmpdir, "%s/compact.tmp", dir);
    snprintf(tmpdata, sizeof tmpdata, "%s/data.mdb", tmpdir);
    struct stat st;
    if (stat(data, &st) != 0) {
        snprintf(err, errlen, "%s: no spool here: %s", dir, strerror(errno));
        return SPOOL_NOTFOUND;
    }
    *before = (uint64_t)st.st_size;
    MDB_env *env;
    int rc = mdb_env_create(&env);
    if (!rc)
        rc = mdb_env_set_maxdbs(env, SPOOL_MAX_DESTS + 8);
    if (!rc)
        rc = mdb_env_set_mapsize(env, (size_t)st.st_size + (1u << 20));
    if (!rc)
        rc = mdb_env_open(env, dir, MDB_RDONLY, 0600);
    if (rc) {
        snprintf(err, errlen, "cannot open %s: %s", dir, mdb_strerror(rc));
        mdb_env_close(env);
        return map_rc(rc, "open");
    }
    if (mkdir(tmpdir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create %s: %s", tmpdir, strerror(errno));
        mdb_env_close(env);
        return SPOOL_IO;
    }
    unlink(tmpdata);
    rc = mdb_env_copy2(env, tmpdir, MDB_CP_COMPACT);
    mdb_env_close(env);
    int fd = open(tmpdata, O_RDONLY);
    if (rc == 0 && (fd < 0 || fsync(fd) != 0))
        rc = errno ? errno : EIO;
    if (fd >= 0)
        close(fd);
    if (rc) {
        snprintf(err, errlen, "compacting copy failed: %s (the spool is untouched)", mdb_strerror(rc));
        unlink(tmpdata);
        rmdir(tmpdir);
        return map_rc(rc, "copy");
    }
    /* the copy is complete and durable: put it in place atomically */
    if (rename(tmpdata, data) != 0) {
        snprintf(err, errlen, "cannot replace %s: %s (the compacted copy is in %s)", data,
                 strerror(errno), tmpdata);
        return SPOOL_IO;
    }
    rmdir(tmpdir);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    *after = stat(data, &st) == 0 ? (uint64_t)st.st_size : 0;
    return SPOOL_OK;
}

int spool_release_pages(struct spool *s)
{
    if (!s->map_addr)
        return SPOOL_NOTFOUND;
    /* Safe on LMDB's read-only shared file mapping: the pages stay in the
     * page cache and fault back in (a minor fault) on the next access. */
    if (madvise(s->map_addr, s->map_len, MADV_DONTNEED) != 0)
        return map_rc(errno, "madvise");
    return SPOOL_OK;
}

int spool_sync(struct spool *s)
{
    return map_rc(mdb_env_sync(s->env, 1), "sync");
}
