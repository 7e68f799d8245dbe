/*
 * auth.h -- OAuth2 access tokens for Google APIs, without a Google client
 * library: OpenSSL signs, libcurl talks HTTP.
 *
 * Credentials (auth_opts.credentials):
 *   "adc"       Application Default Credentials, in the documented order:
 *               1. $GOOGLE_APPLICATION_CREDENTIALS (a JSON file; if set but
 *                  unreadable or invalid: an error, no fall-through),
 *               2. the gcloud file $CLOUDSDK_CONFIG/application_default_credentials.json
 *                  or ~/.config/gcloud/application_default_credentials.json,
 *               3. the metadata server.
 *   "metadata"  the GCE/GKE metadata server only.
 *   a path      a JSON file: "service_account" (RS256 JWT signed with the
 *               key, exchanged at its token_uri) or "authorized_user"
 *               (refresh-token exchange).
 * The metadata server is $GCE_METADATA_HOST (host[:port]) or
 * metadata.google.internal, plain HTTP, with "Metadata-Flavor: Google".
 *
 * Tokens are cached and refreshed when less than 5 minutes of life remain
 * (or after auth_invalidate, which a 401 calls for). Two ways to get one:
 *  - auth_token_nowait, for delivery threads: never blocks. The first call
 *    starts a refresher thread owned by this auth, which fetches tokens ahead
 *    of expiry (5 min before, or at half life for short-lived tokens; and at
 *    once after auth_invalidate), retrying failures with
 *    full jitter from 1 s to 60 s. A slow or hanging token endpoint so delays
 *    only the destinations that use these credentials.
 *  - auth_token, for one-shot callers (relayctl, a Storage Write writer's
 *    own thread): refreshes in the caller, a blocking HTTP call bounded by
 *    timeout_ms.
 * Secrets (private keys, refresh tokens, access tokens) are never logged or
 * put in error messages.
 *
 * Thread safety: the token cache is locked, so auth_token_nowait,
 * auth_invalidate and auth_refreshes may be called from any thread; an auth
 * that uses auth_token must not also use auth_token_nowait.
 */
#ifndef RELAY_AUTH_H
#define RELAY_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define AUTH_SCOPE_BIGQUERY "https://www.googleapis.com/auth/bigquery"

struct auth_opts {
    const char *credentials;   /* "adc", "metadata" or a file path */
    const char *scope;         /* NULL: AUTH_SCOPE_BIGQUERY */
    const char *ca_file;       /* extra CA bundle for HTTPS (token endpoint), or NULL */
    long timeout_ms;           /* per HTTP exchange; 0: 10000 */
};

struct auth;

/* Resolves the credentials and loads the key (no network yet). Errors say
 * what to fix, e.g. "key.json: not valid JSON at line 3" or "key.json: no
 * private_key". Warns (log) when a key file is readable by group or others. */
int auth_create(const struct auth_opts *o, struct auth **out, char *err, size_t errlen);

/* A description for logs, without secrets: "service account x@p.iam.gserviceaccount.com
 * (from /etc/relayd/key.json)", "metadata server 169.254.169.254", ... */
const char *auth_describe(const struct auth *a);

/* The project id the credentials name (key file's project_id, or the
 * metadata server's), or NULL. */
const char *auth_project(const struct auth *a);

/* The quota project to bill (sent as x-goog-user-project): the user
 * credentials' quota_project_id, or $GOOGLE_CLOUD_QUOTA_PROJECT; else NULL. */
const char *auth_quota_project(const struct auth *a);

/* Copies a valid access token into out (NUL-terminated), refreshing it when
 * needed. Returns 0, or -1 with a message in err: the token endpoint's error
 * and error_description, an HTTP status, a connection error, or a hint such as
 * "check the system clock" for an invalid_grant about iat/exp. */
int auth_token(struct auth *a, char *out, size_t outlen, char *err, size_t errlen);

#define AUTH_PENDING 1

/* Copies a token that has at least 30 s (or a tenth of its life) to live into out and returns 0, at
 * once. Otherwise asks the refresher for one and returns AUTH_PENDING ("no
 * token yet", err says so) or, when the last fetch failed, -1 with its error
 * in err. Never waits on the network. */
int auth_token_nowait(struct auth *a, char *out, size_t outlen, char *err, size_t errlen);

/* Forgets the cached token: the next auth_token refreshes, or the refresher
 * fetches a new one at once. */
void auth_invalidate(struct auth *a);

/* Number of successful token fetches so far (for metrics and tests). */
uint64_t auth_refreshes(const struct auth *a);

void auth_free(struct auth *a);

#endif
