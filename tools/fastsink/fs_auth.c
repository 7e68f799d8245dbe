/*
 * fs_auth.c -- the one service account the fast sink trusts, and the access
 * tokens it mints.
 *
 * At start the sink generates an RSA 2048 key and writes a service-account
 * key file (private key, key id, client_email, token_uri = the sink's own
 * /token). The token endpoint takes the JWT-bearer grant as Google's does:
 * header alg RS256 (kid, if given, our key id), claims iss = the account's
 * email, aud = the token URI, a non-empty scope, numeric iat and exp with
 * exp - iat <= 3600, not expired, iat at most 60 s ahead, and an RS256
 * signature that verifies against the public half of the key it generated.
 * Segments must be unpadded base64url. Errors are 400
 * {"error": "invalid_grant" | "invalid_request" | "unsupported_grant_type", ...}.
 *
 * Tokens: "ya29.fs-" + 32 random hex bytes, kept in an append-only table so
 * that request threads look them up without a lock (a slot is written, then
 * the count is published with release order).
 */
#include "fastsink.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/rsa.h>

#define JWT_BEARER "urn:ietf:params:oauth:grant-type:jwt-bearer"
#define MAX_TOKENS 4096
#define TOKEN_LEN 72

struct token {
    char value[TOKEN_LEN + 1];
    size_t len;
    double expires;            /* fs_mono() seconds */
    unsigned scopes;
};

static struct {
    EVP_PKEY *pub;
    char key_id[41];
    char email[256];
    char token_uri[200];
    struct token tokens[MAX_TOKENS];
    _Atomic size_t n_tokens;
    pthread_mutex_t lock;
} A = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void hex(char *out, const unsigned char *in, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = 0;
}

static int random_bytes(unsigned char *b, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(b + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t)r;
    }
    return 0;
}

int fs_auth_init(const char *key_out, const char *project, const char *email,
                 const char *token_uri, char *err, size_t errlen)
{
    EVP_PKEY *key = EVP_RSA_gen(2048);
    if (!key) {
        snprintf(err, errlen, "cannot generate an RSA key");
        return -1;
    }
    unsigned char kid[20];
    if (random_bytes(kid, sizeof kid)) {
        snprintf(err, errlen, "getrandom: %s", strerror(errno));
        EVP_PKEY_free(key);
        return -1;
    }
    hex(A.key_id, kid, sizeof kid);
    snprintf(A.email, sizeof A.email, "%s", email);
    snprintf(A.token_uri, sizeof A.token_uri, "%s", token_uri);

    BIO *bio = BIO_new(BIO_s_mem());
    char *pem = NULL;
    long pem_len = 0;
    if (!bio || PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) != 1 ||
        (pem_len = BIO_get_mem_data(bio, &pem)) <= 0) {
        snprintf(err, errlen, "cannot write the private key");
        BIO_free(bio);
        EVP_PKEY_free(key);
        return -1;
    }
    json_t *o = json_pack("{s:s, s:s, s:s#, s:s, s:s, s:s, s:s, s:s}",
                          "type", "service_account", "project_id", project,
                          "private_key", pem, (size_t)pem_len, "private_key_id", A.key_id,
                          "client_email", email, "client_id", "100000000000000000001",
                          "auth_uri", "https://accounts.google.com/o/oauth2/auth",
                          "token_uri", token_uri);
    BIO_free(bio);
    char *text = o ? json_dumps(o, JSON_INDENT(2)) : NULL;
    json_decref(o);
    if (!text) {
        snprintf(err, errlen, "out of memory");
        EVP_PKEY_free(key);
        return -1;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", key_out);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    size_t tl = strlen(text);
    bool ok = fd >= 0 && write(fd, text, tl) == (ssize_t)tl && write(fd, "\n", 1) == 1;
    if (fd >= 0 && close(fd) != 0)
        ok = false;
    OPENSSL_cleanse(text, tl);
    free(text);
    if (!ok || rename(tmp, key_out) != 0) {
        snprintf(err, errlen, "cannot write %s: %s", key_out, strerror(errno));
        unlink(tmp);
        EVP_PKEY_free(key);
        return -1;
    }
    /* keep only the public half */
    unsigned char *der = NULL;
    int dl = i2d_PUBKEY(key, &der);
    const unsigned char *dp = der;
    A.pub = dl > 0 ? d2i_PUBKEY(NULL, &dp, dl) : NULL;
    OPENSSL_free(der);
    EVP_PKEY_free(key);
    if (!A.pub) {
        snprintf(err, errlen, "cannot extract the public key");
        return -1;
    }
    return 0;
}

/* ---- helpers ---- */

/* Strict unpadded base64url; returns the decoded length or -1. */
static long b64url_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
    if (n % 4 == 1)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)in[i], v;
        if (c >= 'A' && c <= 'Z')
            v = c - 'A';
        else if (c >= 'a' && c <= 'z')
            v = c - 'a' + 26;
        else if (c >= '0' && c <= '9')
            v = c - '0' + 52;
        else if (c == '-')
            v = 62;
        else if (c == '_')
            v = 63;
        else
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == cap)
                return -1;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    return (long)o;
}

/* Form value of name in an x-www-form-urlencoded body, decoded into out. */
static bool form_get(const char *body, size_t len, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(e - p));
        if (eq && (size_t)(eq - p) == nl && memcmp(p, name, nl) == 0) {
            size_t o = 0;
            for (const char *q = eq + 1; q < e; q++) {
                int c = (unsigned char)*q;
                if (c == '+') {
                    c = ' ';
                } else if (c == '%' && e - q >= 3) {
                    char h[3] = { q[1], q[2], 0 };
                    char *stop;
                    long v = strtol(h, &stop, 16);
                    if (*stop)
                        return false;
                    c = (int)v;
                    q += 2;
                }
                if (o + 1 >= cap)
                    return false;
                out[o++] = (char)c;
            }
            out[o] = 0;
            return true;
        }
        p = e + 1;
    }
    return false;
}

static int oauth_error(char *out, size_t outlen, const char *error, const char *desc)
{
    json_t *o = json_pack("{s:s, s:s}", "error", error, "error_description", desc);
    char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
    snprintf(out, outlen, "%s", t ? t : "{\"error\":\"internal_failure\"}");
    free(t);
    json_decref(o);
    fs_add(&FS.st.token_failures, 1);
    return 400;
}

static unsigned scope_bits(const char *scope)
{
    unsigned bits = 0;
    const char *p = scope;
    while (*p) {
        while (*p == ' ')
            p++;
        size_t n = strcspn(p, " ");
        if (n == 40 && memcmp(p, "https://www.googleapis.com/auth/bigquery", 40) == 0)
            bits |= FS_SCOPE_BIGQUERY;
        else if (n == 51 && memcmp(p, "https://www.googleapis.com/auth/bigquery.insertdata", 51) == 0)
            bits |= FS_SCOPE_INSERTDATA;
        else if (n == 46 && memcmp(p, "https://www.googleapis.com/auth/cloud-platform", 46) == 0)
            bits |= FS_SCOPE_CLOUD;
        p += n;
    }
    return bits;
}

#define TIMEFRAME "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable " \
                  "timeframe. Check your iat and exp values in the JWT claim."

int fs_auth_token(const char *body, size_t len, const char *content_type, char *out, size_t outlen)
{
    fs_add(&FS.st.token_requests, 1);
    if (!content_type || strncasecmp(content_type, "application/x-www-form-urlencoded", 33) != 0)
        return oauth_error(out, outlen, "invalid_request",
                           "Content-Type must be application/x-www-form-urlencoded.");
    char grant[128], assertion[16384];
    if (!form_get(body, len, "grant_type", grant, sizeof grant))
        return oauth_error(out, outlen, "unsupported_grant_type", "Invalid grant_type: ");
    if (strcmp(grant, JWT_BEARER) != 0) {
        char d[200];
        snprintf(d, sizeof d, "Invalid grant_type: %s (the fast sink takes only the JWT bearer grant)",
                 grant);
        return oauth_error(out, outlen, "unsupported_grant_type", d);
    }
    if (!form_get(body, len, "assertion", assertion, sizeof assertion) || !assertion[0])
        return oauth_error(out, outlen, "invalid_request", "Missing required parameter: assertion");
    char *d1 = strchr(assertion, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    if (!d1 || !d2 || strchr(d2 + 1, '.'))
        return oauth_error(out, outlen, "invalid_grant", "Invalid JWT: it must have three segments.");
    unsigned char hdr[2048], cl[8192], sig[1024];
    long hl = b64url_decode(assertion, (size_t)(d1 - assertion), hdr, sizeof hdr - 1);
    long cll = b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), cl, sizeof cl - 1);
    long sl = b64url_decode(d2 + 1, strlen(d2 + 1), sig, sizeof sig);
    if (hl < 0 || cll < 0 || sl < 0)
        return oauth_error(out, outlen, "invalid_grant",
                           "Invalid JWT: a segment is not unpadded base64url.");
    json_t *h = json_loadb((const char *)hdr, (size_t)hl, JSON_REJECT_DUPLICATES, NULL);
    json_t *c = json_loadb((const char *)cl, (size_t)cll, JSON_REJECT_DUPLICATES, NULL);
    int status = 0;
    const char *why = NULL;
    const char *alg = json_string_value(json_object_get(h, "alg"));
    json_t *kid = json_object_get(h, "kid");
    const char *iss = json_string_value(json_object_get(c, "iss"));
    const char *aud = json_string_value(json_object_get(c, "aud"));
    const char *scope = json_string_value(json_object_get(c, "scope"));
    json_t *iat = json_object_get(c, "iat"), *exp = json_object_get(c, "exp");
    double now = (double)time(NULL);
    if (!json_is_object(h) || !json_is_object(c))
        why = "Invalid JWT: the header or the claims are not a JSON object.";
    else if (!alg || strcmp(alg, "RS256") != 0)
        why = "Invalid JWT: alg must be RS256.";
    else if (kid && (!json_is_string(kid) || strcmp(json_string_value(kid), A.key_id) != 0))
        why = "Invalid JWT Signature.";   /* Google's text for an unknown key id */
    else if (!iss || strcmp(iss, A.email) != 0)
        why = "Invalid JWT: iss is not the service account this sink trusts.";
    else if (!aud || strcmp(aud, A.token_uri) != 0)
        why = "Invalid JWT: aud must be this token endpoint's URI.";
    else if (!scope || !scope[0])
        why = "Invalid JWT: the scope claim is missing or empty.";
    else if (!json_is_number(iat) || !json_is_number(exp))
        why = "Invalid JWT: iat and exp must be numbers.";
    else if (json_number_value(exp) - json_number_value(iat) > 3600 ||
             json_number_value(exp) <= now || json_number_value(iat) > now + 60)
        why = TIMEFRAME;
    if (!why) {
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        EVP_PKEY_CTX *pctx = NULL;
        int ok = md && EVP_DigestVerifyInit(md, &pctx, EVP_sha256(), NULL, A.pub) == 1 &&
                 EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1 &&
                 EVP_DigestVerify(md, sig, (size_t)sl, (const unsigned char *)assertion,
                                  (size_t)(d2 - assertion)) == 1;
        EVP_MD_CTX_free(md);
        if (!ok)
            why = "Invalid JWT Signature.";
    }
    unsigned scopes = why ? 0 : scope_bits(scope);
    json_decref(h);
    json_decref(c);
    OPENSSL_cleanse(assertion, sizeof assertion);
    if (why)
        return oauth_error(out, outlen, "invalid_grant", why);

    pthread_mutex_lock(&A.lock);
    size_t n = atomic_load_explicit(&A.n_tokens, memory_order_relaxed);
    if (n == MAX_TOKENS) {
        pthread_mutex_unlock(&A.lock);
        snprintf(out, outlen, "{\"error\":\"internal_failure\",\"error_description\":"
                 "\"the fast sink's token table is full (%d)\"}", MAX_TOKENS);
        fs_add(&FS.st.token_failures, 1);
        return 503;
    }
    struct token *t = &A.tokens[n];
    unsigned char rnd[32];
    char hx[65];
    if (random_bytes(rnd, sizeof rnd)) {
        pthread_mutex_unlock(&A.lock);
        snprintf(out, outlen, "{\"error\":\"internal_failure\"}");
        return 500;
    }
    hex(hx, rnd, sizeof rnd);
    t->len = (size_t)snprintf(t->value, sizeof t->value, "ya29.fs-%s", hx);
    t->expires = fs_mono() + FS.cfg.token_lifetime;
    t->scopes = scopes;
    atomic_store_explicit(&A.n_tokens, n + 1, memory_order_release);
    pthread_mutex_unlock(&A.lock);
    fs_add(&FS.st.tokens_minted, 1);
    (void)status;
    snprintf(out, outlen, "{\"access_token\":\"%s\",\"expires_in\":%d,\"token_type\":\"Bearer\"}",
             t->value, FS.cfg.token_lifetime);
    return 200;
}

int fs_auth_check(const char *tok, size_t len)
{
    size_t n = atomic_load_explicit(&A.n_tokens, memory_order_acquire);
    for (size_t i = n; i-- > 0;) {
        const struct token *t = &A.tokens[i];
        if (t->len == len && memcmp(t->value, tok, len) == 0)
            return t->expires <= fs_mono() ? -2 : (int)t->scopes;
    }
    return -1;
}
