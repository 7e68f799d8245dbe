/*
 * spool_corrupt -- test tool: damages one stored record with the raw LMDB
 * API, as a failing disk would, so tests can check that relayd notices.
 *
 *   spool_corrupt SPOOL_DIR DEST_ID SEQ flip|truncate|directory
 * flip: inverts one bit in the middle of the record; truncate: cuts the
 * record shorter than its header; directory: inverts one bit of the
 * directory of the chunk holding the record (all of the chunk's records are
 * then unreadable). relayd must not be running.
 *
 * A record is either a value of its own under its seq, or one of the
 * records of a chunk (spool.h has both layouts). This tool reads the layout
 * itself, with zlib's crc32, rather than through relayd's spool code, so a
 * mistake in one is not repeated in the other. When it cuts a record inside
 * a chunk it rewrites the directory and its checksum to match, as if the
 * disk had lost just those bytes: only that record is damaged.
 */
#include <lmdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void wr32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void be64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (56 - 8 * i));
}

static uint64_t rd_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* crc32 of { be32 dest, be64 key, p[4..len) }: how a chunk header is bound */
static uint32_t bound_crc(uint32_t dest, uint64_t key, const unsigned char *p, size_t len)
{
    unsigned char id[12];
    for (int i = 0; i < 4; i++)
        id[i] = (unsigned char)(dest >> (24 - 8 * i));
    be64(id + 4, key);
    uLong c = crc32(0L, id, sizeof id);
    return (uint32_t)crc32(c, p + 4, (uInt)(len - 4));
}

static int die(const char *what, int rc)
{
    fprintf(stderr, "spool_corrupt: %s: %s\n", what, mdb_strerror(rc));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: spool_corrupt SPOOL_DIR DEST_ID SEQ flip|truncate|directory\n");
        return 2;
    }
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_cursor *c;
    char name[32];
    snprintf(name, sizeof name, "q.%s", argv[2]);
    uint32_t dest = (uint32_t)strtoul(argv[2], NULL, 10);
    unsigned long long seq = strtoull(argv[3], NULL, 10);
    const char *how = argv[4];
    unsigned char key[8];
    be64(key, seq);
    int rc = mdb_env_create(&env);
    mdb_env_set_maxdbs(env, 1100);
    mdb_env_set_mapsize(env, 1ull << 34);
    if (rc || (rc = mdb_env_open(env, argv[1], 0, 0600)) ||
        (rc = mdb_txn_begin(env, NULL, 0, &txn)) || (rc = mdb_dbi_open(txn, name, 0, &dbi)) ||
        (rc = mdb_cursor_open(txn, dbi, &c)))
        return die("open", rc);
    /* the value under seq, or the chunk before it */
    MDB_val k = { 8, key }, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    if (rc == 0 && rd_be64(k.mv_data) != seq)
        rc = mdb_cursor_get(c, &k, &v, MDB_PREV);
    else if (rc == MDB_NOTFOUND)
        rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
    if (rc)
        return die("find", rc);
    uint64_t vkey = rd_be64(k.mv_data);
    unsigned char *val = malloc(v.mv_size);
    memcpy(val, v.mv_data, v.mv_size);
    size_t size = v.mv_size;
    size_t start = 0, len = size;     /* the record's bytes within the value */
    unsigned n = 0, idx = 0;
    const int chunk = size >= 16 && val[4] == 2;
    if (chunk) {
        n = val[6] | (unsigned)val[7] << 8;
        for (idx = 0; idx < n; idx++)
            if (vkey + rd32(val + 16 + 8 * idx) == seq)
                break;
        if (idx == n) {
            fprintf(stderr, "spool_corrupt: seq %llu is not in chunk %llu\n", seq,
                    (unsigned long long)vkey);
            return 1;
        }
        size_t data = 16 + 8 * (size_t)n;
        size_t from = idx ? rd32(val + 16 + 8 * (idx - 1) + 4) : 0;
        start = data + from;
        len = rd32(val + 16 + 8 * idx + 4) - from;
    } else if (vkey != seq) {
        fprintf(stderr, "spool_corrupt: no record %llu\n", seq);
        return 1;
    }
    if (strcmp(how, "flip") == 0) {
        val[start + len / 2 + 8] ^= 0x10;
    } else if (strcmp(how, "directory") == 0) {
        if (!chunk) {
            fprintf(stderr, "spool_corrupt: record %llu is not in a chunk\n", seq);
            return 1;
        }
        val[16 + 8 * idx] ^= 0x01;     /* its seq delta; the header checksum no longer holds */
    } else if (!chunk) {
        size = 10;
    } else {
        /* cut the record to 10 bytes; the records after it move up */
        size_t cut = len - 10;
        memmove(val + start + 10, val + start + len, size - start - len);
        size -= cut;
        for (unsigned i = idx; i < n; i++)
            wr32(val + 16 + 8 * i + 4, rd32(val + 16 + 8 * i + 4) - (uint32_t)cut);
        wr32(val, bound_crc(dest, vkey, val, 16 + 8 * (size_t)n));
    }
    unsigned char vk[8];              /* k points into the page the put rewrites */
    be64(vk, vkey);
    MDB_val nk = { 8, vk }, nv = { size, val };
    if ((rc = mdb_cursor_put(c, &nk, &nv, MDB_CURRENT)) || (rc = mdb_txn_commit(txn)))
        return die("write", rc);
    free(val);
    mdb_env_close(env);
    return 0;
}
