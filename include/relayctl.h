/*
 * relayctl.h -- what relayctl's command modules share: the context built
 * from the global options, and the commands each module offers.
 * (relayctl.c has main and the send/status commands; relayctl_dlq.c the
 * dead-letter and spool maintenance commands; relayctl_doctor.c the setup
 * checks.)
 */
#ifndef RELAY_RELAYCTL_H
#define RELAY_RELAYCTL_H

#include <stdio.h>
#include <stdbool.h>

#include "conf.h"

/* Exit codes beyond version.h's */
#define EXIT_REFUSED 1   /* send: some records were refused; check: damage found */
#define EXIT_DOWN    3   /* status: relayd not running; send: connection lost */
#define EXIT_CONNECT 4   /* cannot connect or not allowed; spool busy */

struct ctx {
    const char *config;
    const char *socket;
    const char *control;
    const char *spool_dir;
    bool json;
    struct conf conf;
    bool have_conf;
};

/* relayctl dlq list|stats|show|export|replay|purge ... */
int ctl_dlq(struct ctx *x, int argc, char **argv);
/* The usage of `relayctl dlq` (its subcommands' own are in relayctl.c). */
void ctl_dlq_usage(FILE *f);
/* relayctl spool check|compact ... (dump stays in relayctl.c) */
int ctl_spool_check(struct ctx *x, int argc, char **argv);
int ctl_spool_compact(struct ctx *x, int argc, char **argv);
/* relayctl doctor [DEST] [--row JSON] [--write-test-row] (relayctl_doctor.c) */
int ctl_doctor(struct ctx *x, int argc, char **argv);
void ctl_doctor_usage(FILE *f);

#endif
