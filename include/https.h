/*
 * https.h -- one blocking HTTPS request with an OAuth bearer token, for the
 * occasional management calls (tables.get, tables.insert). Bulk delivery
 * uses libcurl's multi interface in sender.c instead.
 *
 * TLS is always verified: against ca_file when given (it replaces the
 * system roots), else the system's. The token is never logged.
 * Thread safety: reentrant (libcurl's global init is done by the callers'
 * modules before threads start).
 */
#ifndef RELAY_HTTPS_H
#define RELAY_HTTPS_H

#include "util.h"

/* Sends method url (with json_body as application/json when not NULL) and
 * appends the response body to resp; *status gets the HTTP status. Returns 0
 * when an answer came back (whatever its status), -1 on a transport error
 * (err says which, e.g. a certificate problem). */
/* Checks that path is a readable PEM file holding at least one certificate
 * (what libcurl's CAINFO needs). 0, or -1 with err saying what is wrong. */
int https_check_ca_file(const char *path, char *err, size_t errlen);

int https_call(const char *method, const char *url, const char *token, const char *ca_file,
               const char *json_body, long timeout_ms, struct buf *resp, long *status,
               char *err, size_t errlen);

#endif
