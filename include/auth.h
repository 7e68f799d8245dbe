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
 * (or after auth_invalidate, which a 401 calls for). Refreshes are blocking
 * HTTP calls bounded by timeout_ms. Secrets (private keys, refresh tokens,
 * access tokens) are never logged or put in error messages.
 *
 * Thread safety: one struct auth is used by one thread at a time.
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

/* Forgets the cached token: the next auth_token refreshes. */
void auth_invalidate(struct auth *a);

/* Number of successful token fetches so far (for metrics and tests). */
uint64_t auth_refreshes(const struct auth *a);

void auth_free(struct auth *a);

#endif
