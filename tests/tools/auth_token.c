/*
 * auth_token -- test tool: gets OAuth2 access tokens through src/auth.c, as
 * relayd will, and says how it went without showing the token.
 *
 *   auth_token CREDENTIALS [--ca FILE] [--scope S] [--count N] [--invalidate]
 *              [--timeout MS] [--probe URL]
 *
 * CREDENTIALS is "adc", "metadata" or a key file. The tool calls auth_token
 * N times (default 1), with auth_invalidate between calls when --invalidate
 * is given. --probe URL then sends one GET with the token as a Bearer
 * credential (verified against --ca) and reports the HTTP status: proof that
 * the service accepts the token. On stdout, one line:
 *   token-ok <length> refreshes=<n> project=<id or -> desc=<auth_describe> [probe=<status>]
 * or "error: <message>" with exit status 1 (2 for a bad command line).
 * Warnings from the auth module go to stderr.
 */
#include "auth.h"
#include "log.h"

#include <curl/curl.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void)
{
    fprintf(stderr, "usage: auth_token CREDENTIALS [--ca FILE] [--scope S] [--count N] "
                    "[--invalidate] [--timeout MS] [--probe URL]\n");
    exit(2);
}

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

/* GET url with the token; returns the HTTP status, or -1 with a message in err. */
static long probe(const char *url, const char *token, const char *ca, char *err, size_t errlen)
{
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(err, errlen, "cannot initialise libcurl");
        return -1;
    }
    char hdr[16384 + 32];
    snprintf(hdr, sizeof hdr, "Authorization: Bearer %s", token);
    struct curl_slist *h = curl_slist_append(NULL, hdr);
    char ebuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    if (ca)
        curl_easy_setopt(c, CURLOPT_CAINFO, ca);
    long status = -1;
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    else
        snprintf(err, errlen, "probe %s: %s", url, ebuf[0] ? ebuf : curl_easy_strerror(rc));
    explicit_bzero(hdr, sizeof hdr);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return status;
}

int main(int argc, char **argv)
{
    struct auth_opts o = { 0 };
    long count = 1;
    int invalidate = 0;
    const char *probe_url = NULL;

    log_init("auth_token", LOG_INFO);
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(arg, "--invalidate") == 0) {
            invalidate = 1;
        } else if (strcmp(arg, "--ca") == 0 && val) {
            o.ca_file = val, i++;
        } else if (strcmp(arg, "--scope") == 0 && val) {
            o.scope = val, i++;
        } else if (strcmp(arg, "--count") == 0 && val) {
            count = strtol(val, NULL, 10), i++;
            if (count < 1)
                usage();
        } else if (strcmp(arg, "--timeout") == 0 && val) {
            o.timeout_ms = strtol(val, NULL, 10), i++;
        } else if (strcmp(arg, "--probe") == 0 && val) {
            probe_url = val, i++;
        } else if (arg[0] == '-' || o.credentials) {
            usage();
        } else {
            o.credentials = arg;
        }
    }
    if (!o.credentials)
        usage();

    char err[1024];
    struct auth *a;
    if (auth_create(&o, &a, err, sizeof err) != 0) {
        printf("error: %s\n", err);
        return 1;
    }
    char token[16384];
    int rc = 0;
    for (long i = 0; i < count && rc == 0; i++) {
        if (i > 0 && invalidate)
            auth_invalidate(a);
        if (auth_token(a, token, sizeof token, err, sizeof err) != 0) {
            printf("error: %s\n", err);
            rc = 1;
        }
    }
    if (rc == 0) {
        char pr[32] = "";
        if (probe_url) {
            long st = probe(probe_url, token, o.ca_file, err, sizeof err);
            if (st < 0) {
                printf("error: %s\n", err);
                rc = 1;
            }
            snprintf(pr, sizeof pr, " probe=%ld", st);
        }
        if (rc == 0) {
            const char *project = auth_project(a);
            printf("token-ok %zu refreshes=%llu project=%s desc=%s%s\n", strlen(token),
                   (unsigned long long)auth_refreshes(a), project ? project : "-",
                   auth_describe(a), pr);
        }
    }
    explicit_bzero(token, sizeof token);
    auth_free(a);
    return rc;
}
