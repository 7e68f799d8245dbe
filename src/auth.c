/*
 * auth.c -- OAuth2 access tokens for Google APIs. See auth.h.
 *
 * Three kinds of credentials feed one token cache:
 *
 *   service_account  a JWT (RS256, RFC 7523) signed with the key file's
 *                    private key and exchanged at the file's token_uri
 *                    (grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer);
 *   authorized_user  gcloud's user credentials: a refresh-token grant;
 *   metadata         GET .../instance/service-accounts/default/token on the
 *                    GCE/GKE metadata server (plain HTTP, never via a proxy).
 *
 * auth_create reads and checks everything it can without the network, so a
 * broken key file is reported at start-up with what to fix. auth_token hands
 * out the cached token and refreshes it when less than REFRESH_MARGIN_US of
 * its life remains; if a refresh fails while the cached token still has some
 * life in it, that token is used (with a warning) rather than failing the
 * caller's request.
 *
 * Secrets (private key, refresh token, client secret, JWT, access token) are
 * never put in messages, and the copies this file owns are wiped before they
 * are freed. Errors from the key file never quote its contents: jansson's
 * "near '...'" excerpt is cut off, since it could be a secret.
 */
#include "auth.h"

#include "log.h"
#include "util.h"
#include "version.h"

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT_MS   10000L
#define REFRESH_MARGIN_US    (300ull * 1000000)  /* refresh when less life remains */
#define STALE_MIN_US         (30ull * 1000000)   /* after a failed refresh, reuse a token only with this much life */
#define JWT_LIFETIME_S       3600
#define DEFAULT_EXPIRES_S    3600                /* when an answer has no expires_in */
#define MAX_EXPIRES_S        (7LL * 24 * 3600)
#define MAX_CRED_FILE        (1 << 20)
#define MAX_ANSWER           (1 << 20)
#define MAX_TOKEN_LEN        16384
#define GOOGLE_TOKEN_URI     "https://oauth2.googleapis.com/token"
#define METADATA_HOST        "metadata.google.internal"
#define METADATA_TOKEN_PATH  "/computeMetadata/v1/instance/service-accounts/default/token"
#define METADATA_PROJECT_PATH "/computeMetadata/v1/project/project-id"
#define JWT_BEARER_GRANT     "urn:ietf:params:oauth:grant-type:jwt-bearer"
#define ENV_ADC              "GOOGLE_APPLICATION_CREDENTIALS"
#define NO_CREDENTIALS_MSG   "no credentials found: set " ENV_ADC ", run gcloud auth " \
                             "application-default login, or run on GCP"

enum auth_kind { AUTH_SERVICE_ACCOUNT, AUTH_USER, AUTH_METADATA };

struct auth {
    enum auth_kind kind;
    char *scope;           /* space-separated scopes */
    bool scope_given;      /* named by the caller (sent with refresh-token grants) */
    char *ca_file;
    long timeout_ms;
    char *desc;
    char *project;         /* NULL if unknown */
    char *quota_project;   /* billed for user credentials (x-goog-user-project), or NULL */
    char *token_uri;       /* service_account, authorized_user */

    /* service_account */
    char *client_email;
    char *key_id;          /* private_key_id, or NULL */
    EVP_PKEY *pkey;

    /* authorized_user (client_secret and refresh_token are secrets) */
    char *client_id;
    char *client_secret;
    char *refresh_token;

    /* metadata */
    char *md_host;         /* host[:port] */
    bool md_adc;           /* last step of ADC: unreachable means "no credentials found" */
    bool md_answered;      /* the server has answered once */

    /* the cache; token, expires_us and refreshes are under mu */
    char *token;
    uint64_t expires_us;   /* monotonic */
    uint64_t lifetime_us;  /* of the current token, as answered */
    uint64_t refreshes;

    CURL *curl;            /* kept for connection reuse; used by one thread at a time */

    /* The refresher (started by the first auth_token_nowait): a thread of its
     * own that fetches tokens ahead of expiry, so no delivery thread ever
     * waits on the token endpoint. */
    pthread_mutex_t mu;
    pthread_cond_t cv;     /* CLOCK_MONOTONIC */
    pthread_t thread;
    bool started;
    bool stop;             /* auth_free: end the thread (and abort its transfer) */
    bool want;             /* refresh now (no token, or after auth_invalidate) */
    bool fetching;         /* the refresher has a fetch in flight */
    unsigned fails;        /* failed refreshes in a row */
    uint64_t next_try_us;  /* after a failure: not before this */
    char last_err[512];    /* why the last refresh failed ("" after a success) */
};

/* ---- small helpers ---- */


static void free_secret(char *s)
{
    if (s) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

static void buf_free_secret(struct buf *b)
{
    if (b->data)
        OPENSSL_cleanse(b->data, b->cap);
    buf_free(b);
}

/* Copies s for a message: printable ASCII only, at most n-1 bytes. */
static const char *printable(const char *s, char *out, size_t n)
{
    size_t j = 0;
    for (; *s && j + 1 < n; s++)
        out[j++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    out[j] = 0;
    return out;
}

/* Does text contain word as a whole word (bounded by anything but ASCII letters)? */
static bool has_word(const char *text, const char *word)
{
    size_t wl = strlen(word);
    for (const char *p = text; (p = strcasestr(p, word)) != NULL; p++) {
        bool left = p == text || !((p[-1] >= 'a' && p[-1] <= 'z') || (p[-1] >= 'A' && p[-1] <= 'Z'));
        char r = p[wl];
        bool right = !((r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z'));
        if (left && right)
            return true;
    }
    return false;
}

/* ---- libcurl setup ---- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- credential files ---- */

/* Reads a credentials file whole. label names it in messages. Warns when
 * group or others have any access. Returns a malloc'd NUL-terminated buffer. */
static char *read_cred_file(const char *path, const char *label, size_t *len,
                            char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        util_set_err(err, errlen, "%s: cannot open: %s", label, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        util_set_err(err, errlen, "%s: cannot stat: %s", label, strerror(errno));
        close(fd);
        return NULL;
    }
    if (S_ISDIR(st.st_mode)) {
        util_set_err(err, errlen, "%s: is a directory, not a credentials file", label);
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        util_set_err(err, errlen, "%s: not a regular file", label);
        close(fd);
        return NULL;
    }
    if (st.st_size > MAX_CRED_FILE) {
        util_set_err(err, errlen, "%s: %lld bytes is too large for a credentials file",
                label, (long long)st.st_size);
        close(fd);
        return NULL;
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO))
        log_warn("%s: the credentials file is accessible by group or others (mode %04o) "
                 "and holds a secret: chmod 600 it", label, (unsigned)(st.st_mode & 07777));

    size_t size = (size_t)st.st_size, n = 0;
    char *data = malloc(size + 1);
    if (!data) {
        util_set_err(err, errlen, "%s: out of memory", label);
        close(fd);
        return NULL;
    }
    for (;;) {
        char extra;   /* one byte past the size fstat gave tells a file that grew */
        ssize_t r = n < size ? read(fd, data + n, size - n) : read(fd, &extra, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            util_set_err(err, errlen, "%s: cannot read: %s", label, strerror(errno));
            break;
        }
        if (r == 0) {
            data[n] = 0;
            *len = n;
            close(fd);
            return data;
        }
        if (n == size) {
            util_set_err(err, errlen, "%s: the file changed while it was read; try again", label);
            break;
        }
        n += (size_t)r;
    }
    close(fd);
    OPENSSL_cleanse(data, size + 1);
    free(data);
    return NULL;
}

/* Parses the file's JSON. The error never quotes the file (it could be the key). */
static json_t *parse_cred_json(const char *data, size_t len, const char *label,
                               char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        char *near = strstr(je.text, " near ");
        if (near)
            *near = 0;
        util_set_err(err, errlen, "%s: not valid JSON at line %d column %d: %s",
                label, je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        util_set_err(err, errlen, "%s: not a JSON object (a credentials file is one object with a \"type\")",
                label);
        json_decref(root);
        return NULL;
    }
    return root;
}

/* A string member. required: its absence is an error. Returns 0 (with *out
 * NULL when optional and absent), or -1. */
static int get_member(json_t *root, const char *name, bool required, const char *label,
                      const char **out, char *err, size_t errlen)
{
    json_t *v = json_object_get(root, name);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (!required)
            return 0;
        util_set_err(err, errlen, "%s: no %s", label, name);
        return -1;
    }
    if (!json_is_string(v)) {
        util_set_err(err, errlen, "%s: %s is not a string", label, name);
        return -1;
    }
    if (strlen(json_string_value(v)) != json_string_length(v)) {
        util_set_err(err, errlen, "%s: %s holds a NUL character", label, name);
        return -1;
    }
    if (json_string_length(v) == 0) {
        if (!required)
            return 0;
        util_set_err(err, errlen, "%s: %s is empty", label, name);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

static int dup_member(json_t *root, const char *name, bool required, const char *label,
                      char **out, char *err, size_t errlen)
{
    const char *s;
    if (get_member(root, name, required, label, &s, err, errlen))
        return -1;
    *out = NULL;
    if (s && !(*out = strdup(s))) {
        util_set_err(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static bool is_http_url(const char *u)
{
    return strncasecmp(u, "https://", 8) == 0 || strncasecmp(u, "http://", 7) == 0;
}

static int no_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf; (void)size; (void)rwflag; (void)u;
    return -1;   /* never prompt on a terminal for an encrypted key */
}

static EVP_PKEY *load_private_key(const char *pem, const char *label, char *err, size_t errlen)
{
    ERR_clear_error();
    BIO *bio = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *k = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_password, NULL) : NULL;
    BIO_free(bio);
    if (!k) {
        const char *why = ERR_reason_error_string(ERR_peek_last_error());
        const char *hint = "the data between its BEGIN and END lines is damaged";
        if (!strstr(pem, "-----BEGIN"))
            hint = "it has no -----BEGIN PRIVATE KEY----- line";
        else if (strstr(pem, "ENCRYPTED"))
            hint = "encrypted keys are not supported";
        else if (strstr(pem, "\\n") && !strchr(pem, '\n'))
            hint = "it holds literal \\n sequences instead of line breaks";
        util_set_err(err, errlen, "%s: private_key is not a valid PEM private key: %s (OpenSSL: %s)",
                label, hint, why ? why : "unknown error");
        ERR_clear_error();
        return NULL;
    }
    if (EVP_PKEY_get_base_id(k) != EVP_PKEY_RSA) {
        util_set_err(err, errlen, "%s: private_key is not an RSA key (RS256 needs one)", label);
        EVP_PKEY_free(k);
        return NULL;
    }
    return k;
}

static int load_service_account(struct auth *a, json_t *root, const char *label,
                                 const char *path, const char *via, char *err, size_t errlen)
{
    const char *pem;
    if (dup_member(root, "client_email", true, label, &a->client_email, err, errlen) ||
        get_member(root, "private_key", true, label, &pem, err, errlen) ||
        dup_member(root, "token_uri", true, label, &a->token_uri, err, errlen) ||
        dup_member(root, "private_key_id", false, label, &a->key_id, err, errlen) ||
        dup_member(root, "project_id", false, label, &a->project, err, errlen))
        return -1;
    if (!is_http_url(a->token_uri)) {
        char shown[128];
        util_set_err(err, errlen, "%s: token_uri \"%s\" is not an http(s) URL", label,
                printable(a->token_uri, shown, sizeof shown));
        return -1;
    }
    if (!(a->pkey = load_private_key(pem, label, err, errlen)))
        return -1;
    a->kind = AUTH_SERVICE_ACCOUNT;
    char shown[256];
    struct buf d = { 0 };
    if (buf_printf(&d, "service account %s (from %s%s%s)",
                   printable(a->client_email, shown, sizeof shown), path,
                   via ? ", " : "", via ? via : "")) {
        util_set_err(err, errlen, "out of memory");
        return -1;
    }
    a->desc = d.data;
    return 0;
}

static int load_authorized_user(struct auth *a, json_t *root, const char *label,
                                const char *path, const char *via, char *err, size_t errlen)
{
    const char *account;
    if (dup_member(root, "client_id", true, label, &a->client_id, err, errlen) ||
        dup_member(root, "client_secret", true, label, &a->client_secret, err, errlen) ||
        dup_member(root, "refresh_token", true, label, &a->refresh_token, err, errlen) ||
        dup_member(root, "token_uri", false, label, &a->token_uri, err, errlen) ||
        dup_member(root, "quota_project_id", false, label, &a->quota_project, err, errlen) ||
        get_member(root, "account", false, label, &account, err, errlen))
        return -1;
    if (!a->token_uri && !(a->token_uri = strdup(GOOGLE_TOKEN_URI))) {
        util_set_err(err, errlen, "out of memory");
        return -1;
    }
    if (!is_http_url(a->token_uri)) {
        char shown[128];
        util_set_err(err, errlen, "%s: token_uri \"%s\" is not an http(s) URL", label,
                printable(a->token_uri, shown, sizeof shown));
        return -1;
    }
    a->kind = AUTH_USER;
    char shown[256];
    struct buf d = { 0 };
    if (buf_printf(&d, "user credentials%s%s (from %s%s%s)",
                   account ? " " : "", account ? printable(account, shown, sizeof shown) : "",
                   path, via ? ", " : "", via ? via : "")) {
        util_set_err(err, errlen, "out of memory");
        return -1;
    }
    a->desc = d.data;
    return 0;
}

/* Loads a credentials file. via says how it was found (for messages), or NULL. */
static int load_cred_file(struct auth *a, const char *path, const char *via,
                          char *err, size_t errlen)
{
    struct buf label = { 0 };
    if (buf_printf(&label, "%s%s%s%s", path, via ? " (" : "", via ? via : "", via ? ")" : "")) {
        util_set_err(err, errlen, "out of memory");
        return -1;
    }
    int rc = -1;
    size_t len = 0;
    json_t *root = NULL;
    char *data = read_cred_file(path, label.data, &len, err, errlen);
    if (!data)
        goto out;
    root = parse_cred_json(data, len, label.data, err, errlen);
    OPENSSL_cleanse(data, len);
    free(data);
    if (!root)
        goto out;

    const char *type;
    if (get_member(root, "type", false, label.data, &type, err, errlen))
        goto out;
    if (!type) {
        util_set_err(err, errlen, "%s: no \"type\" member (expected \"service_account\" or "
                "\"authorized_user\")", label.data);
        goto out;
    }
    if (strcmp(type, "service_account") == 0) {
        rc = load_service_account(a, root, label.data, path, via, err, errlen);
    } else if (strcmp(type, "authorized_user") == 0) {
        rc = load_authorized_user(a, root, label.data, path, via, err, errlen);
    } else {
        char shown[64];
        util_set_err(err, errlen, "%s: credentials of type \"%s\" are not supported (expected "
                "\"service_account\" or \"authorized_user\")", label.data,
                printable(type, shown, sizeof shown));
    }
out:
    json_decref(root);
    buf_free(&label);
    return rc;
}

/* ---- the metadata server ---- */

static bool valid_host(const char *h)
{
    if (!*h || strlen(h) > 255)
        return false;
    for (const char *p = h; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == ':' || c == '[' || c == ']' || c == '_'))
            return false;
    }
    return true;
}

static int setup_metadata(struct auth *a, bool adc, char *err, size_t errlen)
{
    const char *env = getenv("GCE_METADATA_HOST");
    const char *host = env && *env ? env : METADATA_HOST;
    if (!valid_host(host)) {
        char shown[128];
        util_set_err(err, errlen, "GCE_METADATA_HOST=%s is not a host[:port]",
                printable(host, shown, sizeof shown));
        return -1;
    }
    if (!(a->md_host = strdup(host))) {
        util_set_err(err, errlen, "out of memory");
        return -1;
    }
    a->kind = AUTH_METADATA;
    a->md_adc = adc;
    struct buf d = { 0 };
    if (buf_printf(&d, "metadata server %s%s", host,
                   adc ? " (application default credentials: no key file found)" : "")) {
        util_set_err(err, errlen, "out of memory");
        return -1;
    }
    a->desc = d.data;
    return 0;
}

/* ---- Application Default Credentials ---- */

/* The gcloud well-known file, malloc'd, or NULL when there is no home directory. */
static char *gcloud_adc_path(void)
{
    const char *cfg = getenv("CLOUDSDK_CONFIG");
    struct buf p = { 0 };
    int rc;
    if (cfg && *cfg) {
        rc = buf_printf(&p, "%s/application_default_credentials.json", cfg);
    } else {
        const char *home = getenv("HOME");
        if (!home || !*home) {
            struct passwd pw, *res = NULL;
            char pwbuf[4096];
            if (getpwuid_r(getuid(), &pw, pwbuf, sizeof pwbuf, &res) != 0 || !res)
                return NULL;
            home = res->pw_dir;
        }
        rc = buf_printf(&p, "%s/.config/gcloud/application_default_credentials.json", home);
    }
    if (rc) {
        buf_free(&p);
        return NULL;
    }
    return p.data;
}

static int resolve_adc(struct auth *a, char *err, size_t errlen)
{
    const char *env = getenv(ENV_ADC);
    if (env && *env)   /* set: it is used, or it is the error; no fall-through */
        return load_cred_file(a, env, ENV_ADC, err, errlen);

    char *well = gcloud_adc_path();
    if (well) {
        struct stat st;
        if (stat(well, &st) == 0 || (errno != ENOENT && errno != ENOTDIR)) {
            int rc = load_cred_file(a, well, "gcloud application-default credentials", err, errlen);
            free(well);
            return rc;
        }
        free(well);
    }
    /* No probe here: the first auth_token says whether a metadata server answers. */
    return setup_metadata(a, true, err, errlen);
}

/* ---- HTTP ---- */

static int ensure_curl(struct auth *a, char *err, size_t errlen)
{
    if (!a->curl && !(a->curl = curl_easy_init())) {
        util_set_err(err, errlen, "cannot initialise libcurl");
        return -1;
    }
    return 0;
}

static int add_header(struct curl_slist **list, const char *h)
{
    struct curl_slist *l = curl_slist_append(*list, h);
    if (!l)
        return -1;
    *list = l;
    return 0;
}

struct answer {
    struct buf body;
    bool too_big;
    bool md_flavor;     /* "Metadata-Flavor: Google" was in the headers */
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct answer *ans = arg;
    size_t len = size * n;
    if (ans->body.len + len > MAX_ANSWER) {
        ans->too_big = true;
        return 0;
    }
    if (buf_append(&ans->body, p, len))
        return 0;
    return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct answer *ans = arg;
    size_t len = size * n;
    static const char name[] = "Metadata-Flavor:";
    if (len > sizeof name - 1 && strncasecmp(p, name, sizeof name - 1) == 0) {
        const char *v = p + sizeof name - 1, *end = p + len;
        while (v < end && (*v == ' ' || *v == '\t'))
            v++;
        while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if (end - v == 6 && strncmp(v, "Google", 6) == 0)
            ans->md_flavor = true;
    }
    return len;
}

/* One HTTP exchange: GET, or POST of a form body when form is not NULL.
 * Returns 0 with *status once an answer came, or -1 with err (transport failure). */
/* Aborts a token fetch in flight when auth_free asks the refresher to stop. */
static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    struct auth *a = arg;
    return __atomic_load_n(&a->stop, __ATOMIC_RELAXED) ? 1 : 0;
}

static int http_exchange(struct auth *a, const char *url, const char *form, bool metadata,
                         long *status, struct answer *ans, char *err, size_t errlen)
{
    if (ensure_curl(a, err, errlen))
        return -1;
    curl_easy_reset(a->curl);   /* keeps the connection cache */
    CURL *c = a->curl;
    char ebuf[CURL_ERROR_SIZE];
    ebuf[0] = 0;
    struct curl_slist *hdrs = NULL;
    if (add_header(&hdrs, "Accept: application/json") ||
        (metadata && add_header(&hdrs, "Metadata-Flavor: Google")) ||
        (form && add_header(&hdrs, "Content-Type: application/x-www-form-urlencoded")) ||
        (form && add_header(&hdrs, "Expect:"))) {
        curl_slist_free_all(hdrs);
        util_set_err(err, errlen, "out of memory");
        return -1;
    }

    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, a->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, a->timeout_ms);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(c, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    if (a->ca_file)
        curl_easy_setopt(c, CURLOPT_CAINFO, a->ca_file);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "relayd/" RELAY_VERSION);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, ans);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, ans);
    if (metadata)
        curl_easy_setopt(c, CURLOPT_PROXY, "");   /* the metadata server refuses proxied requests */
    if (form) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, form);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(form));
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, a);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    }

    CURLcode rc = curl_easy_perform(c);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
    curl_slist_free_all(hdrs);
    if (rc != CURLE_OK) {
        const char *what = ans->too_big ? "the answer is larger than 1 MiB"
                         : ebuf[0] ? ebuf : curl_easy_strerror(rc);
        const char *hint = "";
        if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE)
            hint = a->ca_file ? " (is ca_file the CA that signed the server's certificate?)"
                              : " (the system CA bundle does not trust it; set ca_file?)";
        util_set_err(err, errlen, "%s%s", what, hint);
        return -1;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    return 0;
}

/* The first line of a non-JSON answer, printable characters only, for messages. */
static void body_excerpt(const struct answer *ans, char *out, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; i < ans->body.len && j + 1 < n && j < 160; i++) {
        char ch = ans->body.data[i];
        if (ch == '\n' || ch == '\r') {
            if (j)
                break;
            continue;
        }
        out[j++] = (ch >= 0x20 && ch < 0x7f) ? ch : '?';
    }
    out[j] = 0;
}

/* A failed token answer (status other than 200) as an error message. */
static void describe_failure(const struct auth *a, const char *who, long status,
                             const struct answer *ans, char *err, size_t errlen)
{
    json_t *root = ans->body.len ? json_loadb(ans->body.data, ans->body.len, 0, NULL) : NULL;
    json_t *e = root ? json_object_get(root, "error") : NULL;
    const char *code = NULL, *desc = NULL;
    if (json_is_string(e)) {                 /* OAuth: {"error", "error_description"} */
        code = json_string_value(e);
        json_t *d = json_object_get(root, "error_description");
        desc = json_is_string(d) ? json_string_value(d) : NULL;
    } else if (json_is_object(e)) {          /* Google API: {"error": {"status", "message"}} */
        json_t *s = json_object_get(e, "status"), *m = json_object_get(e, "message");
        code = json_is_string(s) ? json_string_value(s) : NULL;
        desc = json_is_string(m) ? json_string_value(m) : NULL;
    }
    if (code || desc) {
        const char *hint = "";
        if (code && strcmp(code, "invalid_grant") == 0 && desc) {
            if (has_word(desc, "iat") || has_word(desc, "exp") || has_word(desc, "timeframe") ||
                has_word(desc, "clock") || has_word(desc, "skew"))
                hint = " (check the system clock (NTP): the JWT's iat and exp come from it)";
            else if (a->kind == AUTH_SERVICE_ACCOUNT && strcasestr(desc, "signature"))
                hint = " (was the key deleted or disabled, or does private_key not belong to "
                       "private_key_id?)";
        }
        if (code && strcmp(code, "invalid_grant") == 0 && a->kind == AUTH_USER)
            hint = " (the refresh token is expired or revoked: run gcloud auth "
                   "application-default login again)";
        char c1[64], d1[300];
        util_set_err(err, errlen, "%s: %ld %s%s%s%s", who, status,
                code ? printable(code, c1, sizeof c1) : "error",
                desc ? ": " : "", desc ? printable(desc, d1, sizeof d1) : "", hint);
    } else {
        char ex[200];
        body_excerpt(ans, ex, sizeof ex);
        util_set_err(err, errlen, "%s: HTTP %ld%s%s", who, status, ex[0] ? ": " : "", ex);
    }
    json_decref(root);
}

/* Takes access_token / expires_in / token_type from a 200 answer into the cache. */
static int take_token(struct auth *a, const char *who, const struct answer *ans, uint64_t t0_us,
                      char *err, size_t errlen)
{
    int rc = -1;
    json_t *root = json_loadb(ans->body.data ? ans->body.data : "", ans->body.len, 0, NULL);
    if (!json_is_object(root)) {
        util_set_err(err, errlen, "%s: the answer is not a JSON object", who);
        goto out;
    }
    json_t *at = json_object_get(root, "access_token");
    if (!json_is_string(at) || json_string_length(at) == 0) {
        util_set_err(err, errlen, "%s: the answer has no access_token", who);
        goto out;
    }
    const char *tok = json_string_value(at);
    size_t tlen = json_string_length(at);
    if (tlen > MAX_TOKEN_LEN || strlen(tok) != tlen) {
        util_set_err(err, errlen, "%s: the access_token is malformed (%zu bytes)", who, tlen);
        goto out;
    }
    for (size_t i = 0; i < tlen; i++) {
        if (tok[i] <= 0x20 || tok[i] >= 0x7f) {   /* it goes into an HTTP header */
            util_set_err(err, errlen, "%s: the access_token holds characters a header cannot carry", who);
            goto out;
        }
    }
    json_t *tt = json_object_get(root, "token_type");
    if (tt && !json_is_null(tt) &&
        (!json_is_string(tt) || strcasecmp(json_string_value(tt), "Bearer") != 0)) {
        char shown[40];
        util_set_err(err, errlen, "%s: token_type \"%s\" is not Bearer", who,
                json_is_string(tt) ? printable(json_string_value(tt), shown, sizeof shown) : "?");
        goto out;
    }
    json_t *ei = json_object_get(root, "expires_in");
    long long secs = DEFAULT_EXPIRES_S;
    bool ok = true;
    if (json_is_integer(ei)) {
        secs = (long long)json_integer_value(ei);
    } else if (json_is_real(ei)) {
        double d = json_real_value(ei);
        ok = d > 0 && d <= (double)MAX_EXPIRES_S;
        secs = ok ? (long long)d : 0;
    } else if (json_is_string(ei)) {
        const char *s = json_string_value(ei);
        char *end;
        errno = 0;
        secs = strtoll(s, &end, 10);
        ok = end != s && *end == 0 && errno == 0;
    } else if (ei && !json_is_null(ei)) {
        ok = false;
    }
    if (!ok || secs <= 0 || secs > MAX_EXPIRES_S) {
        util_set_err(err, errlen, "%s: expires_in is not a plausible number of seconds", who);
        goto out;
    }
    char *copy = strdup(tok);
    if (!copy) {
        util_set_err(err, errlen, "out of memory");
        goto out;
    }
    pthread_mutex_lock(&a->mu);
    free_secret(a->token);
    a->token = copy;
    a->expires_us = t0_us + (uint64_t)secs * 1000000;
    a->lifetime_us = (uint64_t)secs * 1000000;
    a->refreshes++;
    pthread_mutex_unlock(&a->mu);
    rc = 0;
out:
    json_decref(root);
    return rc;
}

/* One token request: form is the POST body, or NULL for a metadata GET. */
static int token_request(struct auth *a, const char *who, const char *url, const char *form,
                         char *err, size_t errlen)
{
    struct answer ans = { 0 };
    long status = 0;
    uint64_t t0 = util_mono_us();
    char terr[CURL_ERROR_SIZE + 128];
    int rc = -1;
    bool md = form == NULL;

    if (http_exchange(a, url, form, md, &status, &ans, terr, sizeof terr) != 0) {
        if (md && a->md_adc && !a->md_answered)
            util_set_err(err, errlen, NO_CREDENTIALS_MSG " (metadata server at %s: %s)", a->md_host, terr);
        else
            util_set_err(err, errlen, "%s: %s", who, terr);
        goto out;
    }
    if (md && !ans.md_flavor) {
        if (a->md_adc && !a->md_answered)
            util_set_err(err, errlen, NO_CREDENTIALS_MSG " (metadata server at %s: HTTP %ld without "
                    "Metadata-Flavor: Google, so not a metadata server)", a->md_host, status);
        else
            util_set_err(err, errlen, "%s: HTTP %ld without Metadata-Flavor: Google (a proxy or "
                    "another service answered)", who, status);
        goto out;
    }
    if (md)
        a->md_answered = true;
    if (status != 200) {
        describe_failure(a, who, status, &ans, err, errlen);
        goto out;
    }
    rc = take_token(a, who, &ans, t0, err, errlen);
out:
    buf_free_secret(&ans.body);
    return rc;
}

/* ---- the three ways to a token ---- */

static int b64url(struct buf *b, const void *data, size_t n)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = data;
    if (buf_reserve(b, (n + 2) / 3 * 4 + 1))
        return -1;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        b->data[b->len++] = al[(v >> 18) & 63];
        b->data[b->len++] = al[(v >> 12) & 63];
        if (i + 1 < n)
            b->data[b->len++] = al[(v >> 6) & 63];
        if (i + 2 < n)
            b->data[b->len++] = al[v & 63];
    }
    b->data[b->len] = 0;
    return 0;
}

static int b64url_json(struct buf *b, json_t *obj)
{
    char *s = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!s)
        return -1;
    int rc = b64url(b, s, strlen(s));
    free(s);
    return rc;
}

/* The signed assertion: base64url(header) "." base64url(claims) "." base64url(signature). */
static int make_jwt(struct auth *a, struct buf *jwt, char *err, size_t errlen)
{
    time_t now = time(NULL);
    json_t *hdr = json_pack("{s:s, s:s}", "alg", "RS256", "typ", "JWT");
    json_t *claims = json_pack("{s:s, s:s, s:s, s:I, s:I}", "iss", a->client_email,
                               "scope", a->scope, "aud", a->token_uri,
                               "iat", (json_int_t)now, "exp", (json_int_t)now + JWT_LIFETIME_S);
    EVP_MD_CTX *md = NULL;
    unsigned char *sig = NULL;
    int rc = -1;

    if (!hdr || !claims ||
        (a->key_id && json_object_set_new(hdr, "kid", json_string(a->key_id)) != 0)) {
        util_set_err(err, errlen, "cannot build the JWT (is the scope valid UTF-8?)");
        goto out;
    }
    if (b64url_json(jwt, hdr) || buf_append(jwt, ".", 1) || b64url_json(jwt, claims)) {
        util_set_err(err, errlen, "out of memory");
        goto out;
    }
    size_t siglen = (size_t)EVP_PKEY_get_size(a->pkey);
    EVP_PKEY_CTX *pctx = NULL;
    if (!(sig = malloc(siglen)) || !(md = EVP_MD_CTX_new()) ||
        EVP_DigestSignInit(md, &pctx, EVP_sha256(), NULL, a->pkey) != 1 ||
        EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1 ||
        EVP_DigestSign(md, sig, &siglen, (const unsigned char *)jwt->data, jwt->len) != 1) {
        const char *why = ERR_reason_error_string(ERR_peek_last_error());
        util_set_err(err, errlen, "cannot sign the JWT: %s", why ? why : "out of memory");
        ERR_clear_error();
        goto out;
    }
    if (buf_append(jwt, ".", 1) || b64url(jwt, sig, siglen)) {
        util_set_err(err, errlen, "out of memory");
        goto out;
    }
    rc = 0;
out:
    EVP_MD_CTX_free(md);
    free(sig);
    json_decref(hdr);
    json_decref(claims);
    return rc;
}

/* Appends "&name=value" (no "&" first), value form-encoded. */
static int form_add(CURL *c, struct buf *b, const char *name, const char *value)
{
    char *esc = curl_easy_escape(c, value, 0);
    if (!esc)
        return -1;
    int rc = buf_printf(b, "%s%s=%s", b->len ? "&" : "", name, esc);
    OPENSSL_cleanse(esc, strlen(esc));
    curl_free(esc);
    return rc;
}

static int fetch_service_account(struct auth *a, char *err, size_t errlen)
{
    struct buf jwt = { 0 }, form = { 0 }, who = { 0 };
    int rc = -1;
    if (ensure_curl(a, err, errlen) || make_jwt(a, &jwt, err, errlen))
        goto out;
    if (form_add(a->curl, &form, "grant_type", JWT_BEARER_GRANT) ||
        form_add(a->curl, &form, "assertion", jwt.data) ||
        buf_printf(&who, "token endpoint %s", a->token_uri)) {
        util_set_err(err, errlen, "out of memory");
        goto out;
    }
    rc = token_request(a, who.data, a->token_uri, form.data, err, errlen);
out:
    buf_free_secret(&jwt);
    buf_free_secret(&form);
    buf_free(&who);
    return rc;
}

static int fetch_user(struct auth *a, char *err, size_t errlen)
{
    struct buf form = { 0 }, who = { 0 };
    int rc = -1;
    if (ensure_curl(a, err, errlen))
        goto out;
    /* A scope is sent only when the caller asked for one: the refresh token
     * carries the scopes the user consented to (gcloud: cloud-platform), and
     * asking for another one is refused with invalid_scope. */
    if (form_add(a->curl, &form, "grant_type", "refresh_token") ||
        form_add(a->curl, &form, "client_id", a->client_id) ||
        form_add(a->curl, &form, "client_secret", a->client_secret) ||
        form_add(a->curl, &form, "refresh_token", a->refresh_token) ||
        (a->scope_given && form_add(a->curl, &form, "scope", a->scope)) ||
        buf_printf(&who, "token endpoint %s", a->token_uri)) {
        util_set_err(err, errlen, "out of memory");
        goto out;
    }
    rc = token_request(a, who.data, a->token_uri, form.data, err, errlen);
out:
    buf_free_secret(&form);
    buf_free(&who);
    return rc;
}

/* Reads the project id once the metadata server has answered; failures only warn. */
static void fetch_metadata_project(struct auth *a)
{
    struct buf url = { 0 };
    struct answer ans = { 0 };
    long status = 0;
    char err[CURL_ERROR_SIZE + 64];
    if (buf_printf(&url, "http://%s" METADATA_PROJECT_PATH, a->md_host))
        goto out;
    if (http_exchange(a, url.data, NULL, true, &status, &ans, err, sizeof err) != 0) {
        log_warn("metadata server %s: cannot read the project id: %s", a->md_host, err);
        goto out;
    }
    size_t n = ans.body.len;
    while (n && (ans.body.data[n - 1] == '\n' || ans.body.data[n - 1] == '\r' || ans.body.data[n - 1] == ' '))
        n--;
    bool ok = status == 200 && ans.md_flavor && n > 0 && n <= 128;
    for (size_t i = 0; ok && i < n; i++) {
        char c = ans.body.data[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '-' || c == '.' || c == ':' || c == '_';
    }
    if (!ok) {
        log_warn("metadata server %s: cannot read the project id (HTTP %ld)", a->md_host, status);
        goto out;
    }
    a->project = strndup(ans.body.data, n);
out:
    buf_free(&ans.body);
    buf_free(&url);
}

static int fetch_metadata(struct auth *a, char *err, size_t errlen)
{
    struct buf url = { 0 }, who = { 0 }, scopes = { 0 };
    char *esc = NULL;
    int rc = -1;
    if (ensure_curl(a, err, errlen))
        goto out;
    /* ?scopes= takes a comma-separated list; ours is space-separated. */
    for (const char *p = a->scope; *p; p++) {
        if (*p == ' ') {
            if (scopes.len && scopes.data[scopes.len - 1] != ',' && buf_append(&scopes, ",", 1))
                goto oom;
        } else if (buf_append(&scopes, p, 1)) {
            goto oom;
        }
    }
    if (scopes.len && scopes.data[scopes.len - 1] == ',')
        scopes.data[--scopes.len] = 0;
    if (scopes.len && !(esc = curl_easy_escape(a->curl, scopes.data, (int)scopes.len)))
        goto oom;
    if (buf_printf(&url, "http://%s" METADATA_TOKEN_PATH "%s%s", a->md_host,
                   esc ? "?scopes=" : "", esc ? esc : "") ||
        buf_printf(&who, "metadata server %s", a->md_host))
        goto oom;
    rc = token_request(a, who.data, url.data, NULL, err, errlen);
    if (rc == 0 && !a->project)
        fetch_metadata_project(a);
    goto out;
oom:
    util_set_err(err, errlen, "out of memory");
out:
    curl_free(esc);
    buf_free(&url);
    buf_free(&who);
    buf_free(&scopes);
    return rc;
}

static int refresh(struct auth *a, char *err, size_t errlen)
{
    switch (a->kind) {
    case AUTH_SERVICE_ACCOUNT: return fetch_service_account(a, err, errlen);
    case AUTH_USER:            return fetch_user(a, err, errlen);
    case AUTH_METADATA:        return fetch_metadata(a, err, errlen);
    }
    util_set_err(err, errlen, "internal error: unknown credentials kind");
    return -1;
}

/* ---- the API ---- */

int auth_create(const struct auth_opts *o, struct auth **out, char *err, size_t errlen)
{
    *out = NULL;
    if (err && errlen)
        err[0] = 0;
    if (!o || !o->credentials || !*o->credentials) {
        util_set_err(err, errlen, "no credentials configured (\"adc\", \"metadata\" or a key file path)");
        return -1;
    }
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK) {
        util_set_err(err, errlen, "cannot initialise libcurl: %s", curl_easy_strerror(curl_init_rc));
        return -1;
    }
    const char *scope = o->scope ? o->scope : AUTH_SCOPE_BIGQUERY;
    if (!*scope || strspn(scope, " ") == strlen(scope)) {
        util_set_err(err, errlen, "the OAuth scope is empty");
        return -1;
    }
    if (o->ca_file && access(o->ca_file, R_OK) != 0) {
        util_set_err(err, errlen, "CA file %s: %s", o->ca_file, strerror(errno));
        return -1;
    }

    struct auth *a = calloc(1, sizeof *a);
    if (!a || !(a->scope = strdup(scope)) || (o->ca_file && !(a->ca_file = strdup(o->ca_file)))) {
        util_set_err(err, errlen, "out of memory");
        auth_free(a);
        return -1;
    }
    pthread_mutex_init(&a->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->cv, &ca);
    pthread_condattr_destroy(&ca);
    a->scope_given = o->scope != NULL;
    a->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : DEFAULT_TIMEOUT_MS;

    int rc;
    if (strcmp(o->credentials, "adc") == 0)
        rc = resolve_adc(a, err, errlen);
    else if (strcmp(o->credentials, "metadata") == 0)
        rc = setup_metadata(a, false, err, errlen);
    else
        rc = load_cred_file(a, o->credentials, NULL, err, errlen);
    if (rc != 0) {
        auth_free(a);
        return -1;
    }
    *out = a;
    return 0;
}

const char *auth_describe(const struct auth *a)
{
    return a->desc;
}

const char *auth_project(const struct auth *a)
{
    return a->project;
}

const char *auth_quota_project(const struct auth *a)
{
    const char *env = getenv("GOOGLE_CLOUD_QUOTA_PROJECT");   /* ADC's override */
    if (env && *env)
        return env;
    return a->kind == AUTH_USER ? a->quota_project : NULL;
}

/* Copies the cached token if it has more than min_life_us to live; under mu. */
static int copy_token(struct auth *a, uint64_t now, uint64_t min_life_us, char *out, size_t outlen,
                      char *err, size_t errlen)
{
    if (!a->token || now + min_life_us >= a->expires_us)
        return 1;
    size_t n = strlen(a->token);
    if (!out || n + 1 > outlen) {
        util_set_err(err, errlen, "the access token (%zu bytes) does not fit a %zu-byte buffer", n, outlen);
        return -1;
    }
    memcpy(out, a->token, n + 1);
    return 0;
}

int auth_token(struct auth *a, char *out, size_t outlen, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = 0;
    uint64_t now = util_mono_us();
    pthread_mutex_lock(&a->mu);
    int rc = copy_token(a, now, REFRESH_MARGIN_US, out, outlen, err, errlen);
    pthread_mutex_unlock(&a->mu);
    if (rc <= 0)
        return rc;
    char ferr[1024];
    ferr[0] = 0;
    if (refresh(a, ferr, sizeof ferr) != 0) {
        pthread_mutex_lock(&a->mu);
        rc = copy_token(a, now, STALE_MIN_US, out, outlen, err, errlen);
        uint64_t left = a->token && a->expires_us > now ? (a->expires_us - now) / 1000000 : 0;
        pthread_mutex_unlock(&a->mu);
        if (rc > 0) {
            util_set_err(err, errlen, "%s", ferr);
            return -1;
        }
        if (rc == 0)
            log_warn("auth: cannot refresh the access token (%s); the current one is valid "
                     "for %llu s more", ferr, (unsigned long long)left);
        return rc;
    }
    pthread_mutex_lock(&a->mu);
    rc = copy_token(a, now, 0, out, outlen, err, errlen);
    pthread_mutex_unlock(&a->mu);
    if (rc > 0)
        util_set_err(err, errlen, "the token endpoint answered a token that has already expired");
    return rc ? -1 : 0;
}

/* For the refresher: renew when this much life remains (5 min, or half the
 * life of a short-lived token), and hand out a token only while it has more
 * than the stale margin (30 s, or a tenth of a short life). Under mu. */
static uint64_t renew_margin(const struct auth *a)
{
    return a->lifetime_us / 2 < REFRESH_MARGIN_US ? a->lifetime_us / 2 : REFRESH_MARGIN_US;
}

static uint64_t stale_margin(const struct auth *a)
{
    return a->lifetime_us / 10 < STALE_MIN_US ? a->lifetime_us / 10 : STALE_MIN_US;
}

/* The refresher: wakes when the token has less than REFRESH_MARGIN_US to
 * live, when there is none, or when auth_invalidate asks; fetches one (the
 * only thread that does, for this auth); after a failure waits with full
 * jitter (1 s doubling to 60 s) before the next try. */
static void *refresher(void *arg)
{
    struct auth *a = arg;
    pthread_mutex_lock(&a->mu);
    while (!a->stop) {
        uint64_t now = util_mono_us();
        bool due = a->want || !a->token || now + renew_margin(a) >= a->expires_us;
        if (due && now >= a->next_try_us) {
            a->want = false;
            a->fetching = true;
            pthread_mutex_unlock(&a->mu);
            char ferr[512];
            ferr[0] = 0;
            int rc = refresh(a, ferr, sizeof ferr);
            pthread_mutex_lock(&a->mu);
            a->fetching = false;
            if (rc == 0) {
                if (a->fails)
                    log_info("auth: access token refreshed after %u failed attempt(s)", a->fails);
                a->fails = 0;
                a->next_try_us = 0;
                a->last_err[0] = 0;
            } else {
                if (a->stop)
                    break;
                uint64_t delay = util_backoff_ms(1000, 60000, a->fails++, UTIL_JITTER_FULL);
                if (delay < 100)
                    delay = 100;
                a->next_try_us = util_mono_us() + delay * 1000;
                snprintf(a->last_err, sizeof a->last_err, "%s", ferr);
                if (a->token && a->expires_us > util_mono_us() + stale_margin(a) && a->fails == 1)
                    log_warn("auth: cannot refresh the access token ahead of expiry (%s); the "
                             "current one is valid for %llu s more", ferr,
                             (unsigned long long)((a->expires_us - util_mono_us()) / 1000000));
            }
            continue;
        }
        uint64_t wake = due ? a->next_try_us : a->expires_us - renew_margin(a);
        struct timespec ts = { .tv_sec = (time_t)(wake / 1000000),
                               .tv_nsec = (long)(wake % 1000000) * 1000 };
        pthread_cond_timedwait(&a->cv, &a->mu, &ts);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

int auth_token_nowait(struct auth *a, char *out, size_t outlen, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = 0;
    pthread_mutex_lock(&a->mu);
    if (!a->started) {
        if (pthread_create(&a->thread, NULL, refresher, a) != 0) {
            pthread_mutex_unlock(&a->mu);
            util_set_err(err, errlen, "cannot start the token refresher thread: %s", strerror(errno));
            return -1;
        }
        pthread_setname_np(a->thread, "relayd-auth");   /* for top -H and the journal */
        a->started = true;
    }
    int rc = copy_token(a, util_mono_us(), stale_margin(a), out, outlen, err, errlen);
    if (rc > 0) {
        /* no token yet: ask for one, unless the fetch that will bring it is
         * already in flight (asking then would fetch a second one at once) */
        if (!a->fetching) {
            a->want = true;
            pthread_cond_signal(&a->cv);
        }
        if (a->last_err[0]) {
            util_set_err(err, errlen, "%s", a->last_err);
            rc = -1;
        } else {
            util_set_err(err, errlen, "waiting for an access token");
            rc = AUTH_PENDING;
        }
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

void auth_invalidate(struct auth *a)
{
    pthread_mutex_lock(&a->mu);
    free_secret(a->token);
    a->token = NULL;
    a->expires_us = 0;
    a->want = true;
    a->next_try_us = 0;     /* a 401 is news: try at once */
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

uint64_t auth_refreshes(const struct auth *a)
{
    return __atomic_load_n(&a->refreshes, __ATOMIC_RELAXED);
}

void auth_free(struct auth *a)
{
    if (!a)
        return;
    if (a->started) {
        pthread_mutex_lock(&a->mu);
        __atomic_store_n(&a->stop, true, __ATOMIC_RELAXED);
        pthread_cond_signal(&a->cv);
        pthread_mutex_unlock(&a->mu);
        pthread_join(a->thread, NULL);
    }
    if (a->timeout_ms) {     /* set once the mutex and condvar exist */
        pthread_mutex_destroy(&a->mu);
        pthread_cond_destroy(&a->cv);
    }
    if (a->curl)
        curl_easy_cleanup(a->curl);
    EVP_PKEY_free(a->pkey);
    free_secret(a->token);
    free_secret(a->client_secret);
    free_secret(a->refresh_token);
    free(a->client_id);
    free(a->client_email);
    free(a->key_id);
    free(a->token_uri);
    free(a->md_host);
    free(a->project);
    free(a->quota_project);
    free(a->desc);
    free(a->ca_file);
    free(a->scope);
    free(a);
}
