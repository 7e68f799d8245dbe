/*
 * test_route.c -- unit tests for route.h (a row's table and connection),
 * budget.h (the bytes-in-flight bound) and tcache.h (a connection's open
 * tables). Expectations are written out by hand from the headers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "budget.h"
#include "route.h"
#include "tcache.h"

/* 2026-11-22T10:00:00Z */
#define T1122 1795341600ull

static void test_unsharded_table_is_the_pattern(void **st)
{
    (void)st;
    struct route r;
    route_init(&r, "events", NULL);
    assert_false(r.sharded);
    char out[ROUTE_TABLE_MAX];
    assert_int_equal(route_table(&r, "{}", 2, 0, out, sizeof out), 0);
    assert_string_equal(out, "events");
    /* a time field does not matter without escapes, even when missing */
    route_init(&r, "events", "ts");
    assert_int_equal(route_table(&r, "{\"x\":1}", 7, 0, out, sizeof out), 0);
    assert_string_equal(out, "events");
    /* too small a buffer is an error, never a truncated id */
    assert_int_equal(route_table(&r, "{}", 2, 0, out, 4), -1);
}

static void test_sharded_by_spool_time(void **st)
{
    (void)st;
    struct route r;
    route_init(&r, "ev_%Y%m%d", NULL);
    assert_true(r.sharded);
    char out[ROUTE_TABLE_MAX];
    /* the row's content is not read: the spool time (ms) decides */
    assert_int_equal(route_table(&r, "not json", 8, T1122 * 1000 + 999, out, sizeof out), 0);
    assert_string_equal(out, "ev_20261122");
    assert_int_equal(route_table(&r, "{}", 2, (T1122 - 36001) * 1000, out, sizeof out), 0);
    assert_string_equal(out, "ev_20261121");
    route_init(&r, "ev_%Y%m%d%H", NULL);
    assert_int_equal(route_table(&r, "{}", 2, T1122 * 1000, out, sizeof out), 0);
    assert_string_equal(out, "ev_2026112210");
}

static void test_sharded_by_a_field(void **st)
{
    (void)st;
    struct route r;
    route_init(&r, "ev_%Y%m%d", "ts");
    char out[ROUTE_TABLE_MAX];
    static const struct { const char *row, *want; } ok[] = {
        { "{\"ts\":\"2026-11-20T23:59:59Z\"}", "ev_20261120" },
        { "{\"ts\":\"2026-11-20T23:59:59.999999+05:00\"}", "ev_20261120" },   /* offsets: UTC */
        { "{\"ts\":\"2026-11-21 00:00:00\"}", "ev_20261121" },
        { "{\"ts\":\"2026-11-22\"}", "ev_20261122" },
        { "{\"ts\":1795341600}", "ev_20261122" },
        { "{\"ts\":1795341600.75,\"other\":1}", "ev_20261122" },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        /* the spool time is ignored when a field is named */
        assert_int_equal(route_table(&r, ok[i].row, strlen(ok[i].row), 0, out, sizeof out), 0);
        assert_string_equal(out, ok[i].want);
    }
    static const char *const bad[] = { "{\"ts\":\"not a time\"}", "{\"x\":1}", "{\"ts\":null}",
                                       "{\"ts\":true}", "[1]", "{" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(route_table(&r, bad[i], strlen(bad[i]), T1122 * 1000, out, sizeof out), -1);
}

static void test_lanes_are_even_and_stable(void **st)
{
    (void)st;
    assert_int_equal(route_lane(12345, 0), 0);
    assert_int_equal(route_lane(12345, 1), 0);
    /* every other seq (a destination fed alternately with another) still
     * spreads over all lanes: a plain seq % n would give lanes 0 and 2 only */
    unsigned count[4] = { 0 };
    for (uint64_t s = 0; s < 40000; s += 2)
        count[route_lane(s, 4)]++;
    for (int k = 0; k < 4; k++) {
        assert_true(count[k] > 4500);
        assert_true(count[k] < 5500);
    }
    /* a pure function of (seq, n) */
    for (uint64_t s = 1; s < 1000; s++) {
        assert_int_equal(route_lane(s, 3), route_lane(s, 3));
        assert_true(route_lane(s, 7) < 7);
    }
}

/* ---- budget ---- */

static void test_budget_bounds_and_always_allows_one(void **st)
{
    (void)st;
    struct budget b;
    budget_init(&b, 1000);
    assert_int_equal(budget_room(&b, 600), 600);
    assert_true(budget_take(&b, 600));
    assert_int_equal(budget_room(&b, 600), 400);     /* what is left */
    assert_false(budget_take(&b, 401));
    assert_true(budget_take(&b, 400));               /* exactly up to the bound */
    assert_int_equal(budget_room(&b, 600), 0);
    assert_false(budget_take(&b, 1));
    assert_int_equal(budget_used(&b), 1000);
    budget_give(&b, 1000);
    assert_int_equal(budget_used(&b), 0);
    /* a batch larger than the bound goes alone */
    assert_int_equal(budget_room(&b, 5000), 5000);
    assert_true(budget_take(&b, 5000));
    assert_false(budget_take(&b, 1));
    assert_int_equal(budget_room(&b, 10), 0);
    /* parts of held batches are charged whatever the bound */
    budget_force(&b, 100);
    assert_int_equal(budget_used(&b), 5100);
    assert_int_equal(budget_peak(&b), 5100);
    budget_give(&b, 5100);
    assert_int_equal(budget_peak(&b), 5100);         /* the peak stays */
    budget_give(&b, 7);                              /* never below zero */
    assert_int_equal(budget_used(&b), 0);
    /* a lower bound after a reload: held bytes stay, nothing new fits */
    assert_true(budget_take(&b, 800));
    budget_set_max(&b, 500);
    assert_int_equal(budget_room(&b, 100), 0);
    assert_false(budget_take(&b, 1));
    budget_give(&b, 800);
    assert_true(budget_take(&b, 1));
    budget_destroy(&b);
}

static void test_budget_zero_is_unbounded(void **st)
{
    (void)st;
    struct budget b;
    budget_init(&b, 0);
    for (int i = 0; i < 100; i++)
        assert_true(budget_take(&b, 1u << 30));
    assert_int_equal(budget_room(&b, 77), 77);
    budget_destroy(&b);
}

struct worker { struct budget *b; uint64_t max_seen; int over; };

static void *hammer(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < 20000; i++) {
        uint64_t n = 1 + (uint64_t)(i * 7919 % 300);
        if (budget_take(w->b, n)) {
            uint64_t u = budget_used(w->b);
            if (u > 1000 && u != n)
                w->over++;
            budget_give(w->b, n);
        }
    }
    return NULL;
}

static void test_budget_holds_across_threads(void **st)
{
    (void)st;
    struct budget b;
    budget_init(&b, 1000);
    pthread_t t[4];
    struct worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){ &b, 0, 0 };
        assert_int_equal(pthread_create(&t[i], NULL, hammer, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].over, 0);
    }
    assert_true(budget_peak(&b) <= 1000);
    assert_int_equal(budget_used(&b), 0);
    budget_destroy(&b);
}

/* ---- tcache ---- */

static bool busy_if_odd(void *val, void *arg)
{
    (void)arg;
    return ((intptr_t)val & 1) != 0;
}

static void test_tcache_lru_idle_and_busy(void **st)
{
    (void)st;
    struct tcache c;
    assert_int_equal(tcache_init(&c, 3), 0);
    assert_null(tcache_get(&c, "a", 0));
    assert_int_equal(tcache_put(&c, "a", (void *)(intptr_t)2, 100), 0);
    assert_int_equal(tcache_put(&c, "b", (void *)(intptr_t)4, 200), 0);
    assert_int_equal(tcache_put(&c, "c", (void *)(intptr_t)5, 300), 0);
    assert_int_equal(tcache_put(&c, "d", (void *)(intptr_t)6, 400), -1);   /* full */
    assert_int_equal(tcache_count(&c), 3);
    assert_ptr_equal(tcache_get(&c, "a", 500), (void *)(intptr_t)2);      /* a used at 500 */
    /* nothing idle for 1000 us yet */
    assert_null(tcache_evict(&c, 600, 1000, busy_if_odd, NULL));
    /* b is the least recently used idle one; c (odd) is busy, whatever its age */
    assert_ptr_equal(tcache_evict(&c, 5000, 1000, busy_if_odd, NULL), (void *)(intptr_t)4);
    assert_ptr_equal(tcache_evict(&c, 5000, 1000, busy_if_odd, NULL), (void *)(intptr_t)2);
    assert_null(tcache_evict(&c, 5000, 1000, busy_if_odd, NULL));
    assert_int_equal(tcache_count(&c), 1);
    assert_null(tcache_get(&c, "a", 5000));
    assert_ptr_equal(tcache_get(&c, "c", 5000), (void *)(intptr_t)5);
    assert_int_equal(tcache_put(&c, "d", (void *)(intptr_t)6, 5000), 0);
    tcache_remove(&c, (void *)(intptr_t)5);
    assert_null(tcache_get(&c, "c", 5000));
    assert_int_equal(tcache_count(&c), 1);
    assert_ptr_equal(tcache_at(&c, 0), (void *)(intptr_t)6);
    /* idle_us 0: any age, the oldest first */
    assert_ptr_equal(tcache_evict(&c, 5000, 0, NULL, NULL), (void *)(intptr_t)6);
    tcache_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unsharded_table_is_the_pattern),
        cmocka_unit_test(test_sharded_by_spool_time),
        cmocka_unit_test(test_sharded_by_a_field),
        cmocka_unit_test(test_lanes_are_even_and_stable),
        cmocka_unit_test(test_budget_bounds_and_always_allows_one),
        cmocka_unit_test(test_budget_zero_is_unbounded),
        cmocka_unit_test(test_budget_holds_across_threads),
        cmocka_unit_test(test_tcache_lru_idle_and_busy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
