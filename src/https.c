/*
 * https.c -- one blocking authenticated HTTPS request. See https.h.
 */
#include "https.h"
#include "version.h"

#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    return buf_append(arg, p, size * n) == 0 ? size * n : 0;
}

int https_call(const char *method, const char *url, const char *token, const char *ca_file,
               const char *json_body, long timeout_ms, struct buf *resp, long *status,
               char *err, size_t errlen)
{
    char auth[4200];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    struct curl_slist *h = curl_slist_append(NULL, auth);
    memset(auth, 0, sizeof auth);
    if (json_body)
        h = curl_slist_append(h, "Content-Type: application/json");
    CURL *e = curl_easy_init();
    if (!e || !h) {
        curl_slist_free_all(h);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    if (json_body)
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, json_body);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, resp);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);   /* always */
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "relayd/" RELAY_VERSION);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    if (ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, ca_file);
    CURLcode res = curl_easy_perform(e);
    *status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, status);
    curl_easy_cleanup(e);
    curl_slist_free_all(h);
    if (res != CURLE_OK) {
        snprintf(err, errlen, "%s %s: %s%s%s", method, url, curl_easy_strerror(res),
                 errbuf[0] ? ": " : "", errbuf);
        return -1;
    }
    return 0;
}

int https_check_ca_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    int n = 0;
    X509 *x;
    while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
        X509_free(x);
        n++;
    }
    ERR_clear_error();    /* the read that ends the loop leaves "no start line" */
    fclose(f);
    if (n == 0) {
        snprintf(err, errlen, "%s holds no PEM certificate (expected -----BEGIN CERTIFICATE----- "
                 "blocks: the CA that signs the endpoint's certificate)", path);
        return -1;
    }
    return 0;
}
