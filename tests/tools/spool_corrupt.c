/*
 * spool_corrupt -- test tool: damages one stored record with the raw LMDB
 * API, as a failing disk would, so tests can check that relayd notices.
 *
 *   spool_corrupt SPOOL_DIR DEST_ID SEQ flip|truncate
 * flip: inverts one bit in the middle of the record; truncate: rewrites it
 * shorter than its header. relayd must not be running.
 */
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: spool_corrupt SPOOL_DIR DEST_ID SEQ flip|truncate\n");
        return 2;
    }
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    char name[32];
    snprintf(name, sizeof name, "q.%s", argv[2]);
    unsigned long long seq = strtoull(argv[3], NULL, 10);
    unsigned char key[8];
    for (int i = 0; i < 8; i++)
        key[i] = (unsigned char)(seq >> (56 - 8 * i));
    int rc = mdb_env_create(&env);
    mdb_env_set_maxdbs(env, 1100);
    mdb_env_set_mapsize(env, 1ull << 34);
    if (rc || (rc = mdb_env_open(env, argv[1], 0, 0600)) ||
        (rc = mdb_txn_begin(env, NULL, 0, &txn)) || (rc = mdb_dbi_open(txn, name, 0, &dbi))) {
        fprintf(stderr, "spool_corrupt: %s\n", mdb_strerror(rc));
        return 1;
    }
    MDB_val k = { 8, key }, v;
    if ((rc = mdb_get(txn, dbi, &k, &v))) {
        fprintf(stderr, "spool_corrupt: seq %llu: %s\n", seq, mdb_strerror(rc));
        return 1;
    }
    unsigned char *copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    if (strcmp(argv[4], "flip") == 0) {
        copy[v.mv_size / 2 + 8] ^= 0x10;
    } else {
        v.mv_size = 10;
    }
    v.mv_data = copy;
    if ((rc = mdb_put(txn, dbi, &k, &v, 0)) || (rc = mdb_txn_commit(txn))) {
        fprintf(stderr, "spool_corrupt: %s\n", mdb_strerror(rc));
        return 1;
    }
    free(copy);
    mdb_env_close(env);
    return 0;
}
