/*
 * test_batchstate.c -- unit tests for batchstate.h: the spool record of a
 * batch-mode pending stream and the rule that cuts a batch. Expected texts
 * are written out by hand from the header.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "batchstate.h"

#define STREAM "projects/p/datasets/d/tables/t/streams/Ab3x_-"

static void test_encode_each_phase(void **st)
{
    (void)st;
    char out[2000];
    struct batch_state s = { .phase = BATCH_APPENDING, .first_seq = 17 };
    snprintf(s.stream, sizeof s.stream, "%s", STREAM);
    int n = batch_state_encode(&s, out, sizeof out);
    assert_string_equal(out, "b1 appending 17 0 0 " STREAM);
    assert_int_equal(n, (int)strlen(out));
    s.phase = BATCH_FINALIZING;
    s.last_seq = 1016;
    s.rows = 998;
    batch_state_encode(&s, out, sizeof out);
    assert_string_equal(out, "b1 finalizing 17 1016 998 " STREAM);
    s.phase = BATCH_COMMITTING;
    batch_state_encode(&s, out, sizeof out);
    assert_string_equal(out, "b1 committing 17 1016 998 " STREAM);
    /* too small a buffer is an error, never a truncated state */
    assert_int_equal(batch_state_encode(&s, out, 20), -1);
}

static void test_encode_refuses_invalid_states(void **st)
{
    (void)st;
    char out[2000];
    struct batch_state s = { .phase = BATCH_NONE, .first_seq = 1 };
    snprintf(s.stream, sizeof s.stream, "%s", STREAM);
    assert_int_equal(batch_state_encode(&s, out, sizeof out), -1);   /* no phase */
    s.phase = BATCH_FINALIZING;                                       /* cut with no rows */
    assert_int_equal(batch_state_encode(&s, out, sizeof out), -1);
    s.rows = 3;
    s.first_seq = 10;
    s.last_seq = 9;                                                  /* last before first */
    assert_int_equal(batch_state_encode(&s, out, sizeof out), -1);
    s.last_seq = 12;
    s.stream[0] = 0;                                                 /* no stream */
    assert_int_equal(batch_state_encode(&s, out, sizeof out), -1);
    snprintf(s.stream, sizeof s.stream, "a b");                      /* a space in the name */
    assert_int_equal(batch_state_encode(&s, out, sizeof out), -1);
}

static void test_round_trip(void **st)
{
    (void)st;
    for (int ph = BATCH_APPENDING; ph <= BATCH_COMMITTING; ph++) {
        struct batch_state s = { .phase = (enum batch_phase)ph, .first_seq = UINT64_MAX - 5,
                                 .last_seq = UINT64_MAX, .rows = 6 };
        snprintf(s.stream, sizeof s.stream, "%s", STREAM);
        char out[2000];
        int n = batch_state_encode(&s, out, sizeof out);
        assert_true(n > 0);
        struct batch_state d;
        assert_int_equal(batch_state_decode(out, (size_t)n, &d), 0);
        assert_int_equal(d.phase, ph);
        assert_true(d.first_seq == s.first_seq);
        assert_true(d.last_seq == s.last_seq);
        assert_int_equal(d.rows, 6);
        assert_string_equal(d.stream, STREAM);
    }
}

static void test_decode_rejects_malformed(void **st)
{
    (void)st;
    const char *bad[] = {
        "", "b1", "b2 appending 1 0 0 s", "b1 pending 1 0 0 s", "b1 appending 1 0 0 ",
        "b1 appending 1 0 s", "b1 appending x 0 0 s", "b1 appending 1 0 0 s t",
        "b1 finalizing 5 4 1 s", "b1 committing 5 6 0 s", "b1 appending -1 0 0 s",
        "b1 appending 99999999999999999999 0 0 s", "b1 appending  1 0 0 s",
        "b1 appending 1 0 0 s\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct batch_state d;
        d.phase = BATCH_COMMITTING;
        if (batch_state_decode(bad[i], strlen(bad[i]), &d) != -1)
            fail_msg("accepted '%s'", bad[i]);
        assert_int_equal(d.phase, BATCH_NONE);
    }
    /* the length is honoured: no NUL needed, bytes past it ignored */
    const char *t = "b1 appending 3 0 0 abcXYZ";
    struct batch_state d;
    assert_int_equal(batch_state_decode(t, strlen(t) - 3, &d), 0);
    assert_string_equal(d.stream, "abc");
    assert_string_equal(batch_phase_name(BATCH_COMMITTING), "committing");
    assert_string_equal(batch_phase_name(BATCH_NONE), "none");
}

static void test_cut_rule(void **st)
{
    (void)st;
    struct batch_limits l = { .commit_rows = 1000, .commit_interval_ms = 60000, .commit_idle_ms = 2000 };
    /* nothing appended: never cut */
    assert_int_equal(batch_should_cut(&l, 0, 1000000, 1000000, 1), BATCH_KEEP);
    assert_int_equal(batch_should_cut(&l, 999, 59999, 1999, 1), BATCH_KEEP);
    assert_int_equal(batch_should_cut(&l, 1000, 0, 0, 0), BATCH_CUT_ROWS);
    assert_int_equal(batch_should_cut(&l, 1, 60000, 0, 0), BATCH_CUT_INTERVAL);
    assert_int_equal(batch_should_cut(&l, 1, 10, 2000, 1), BATCH_CUT_IDLE);
    /* idle counts only when the queue has nothing more for the batch */
    assert_int_equal(batch_should_cut(&l, 1, 10, 5000, 0), BATCH_KEEP);
    /* 0 turns a limit off */
    l.commit_idle_ms = 0;
    assert_int_equal(batch_should_cut(&l, 1, 10, 5000, 1), BATCH_KEEP);
    l.commit_rows = 0;
    assert_int_equal(batch_should_cut(&l, 5000000, 10, 5000, 1), BATCH_KEEP);
    assert_string_equal(batch_cut_name(BATCH_CUT_IDLE), "idle");
    assert_string_equal(batch_cut_name(BATCH_CUT_ROWS), "rows");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_each_phase),
        cmocka_unit_test(test_encode_refuses_invalid_states),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_decode_rejects_malformed),
        cmocka_unit_test(test_cut_rule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
