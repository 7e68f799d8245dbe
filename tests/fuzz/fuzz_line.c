/*
 * fuzz_line -- libFuzzer target for the protocol line parser (line.c), which
 * calls the JSON validator. Splits the input into lines as ingest does and
 * checks the parser's promises on each: it never reads outside the line, a
 * record's JSON lies within the line and passes jcheck_object on its own,
 * errors carry a known reason token and a message, tables are valid names.
 */
#include "conf.h"
#include "json_check.h"
#include "line.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *const tokens[] = { "json", "utf8", "not-object", "nul", "depth",
                                      "size", "table" };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct line_limits lim = { .max_record_bytes = 2048, .max_depth = 8 };
    const char *p = (const char *)data, *end = p + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        /* an exact-size copy so that ASan catches any read past the line */
        char *line = malloc(len ? len : 1);
        memcpy(line, p, len);
        struct line_result r;
        line_parse(line, len, &lim, &r);
        switch (r.kind) {
        case LINE_EMPTY:
            break;
        case LINE_TABLE:
            if (!r.table || !conf_valid_name(r.table, r.table_len))
                abort();
            break;
        case LINE_RECORD: {
            if (!r.json || r.json < line || r.json + r.json_len > line + len)
                abort();
            if (r.json_len > lim.max_record_bytes)
                abort();
            struct jcheck_result jr;
            if (jcheck_object(r.json, r.json_len, lim.max_depth, &jr) != JC_OK)
                abort();
            if (r.table && !conf_valid_name(r.table, r.table_len))
                abort();
            break;
        }
        case LINE_ERROR: {
            int known = 0;
            for (size_t i = 0; i < sizeof tokens / sizeof tokens[0]; i++)
                known |= r.reason && strcmp(r.reason, tokens[i]) == 0;
            if (!known || !r.msg[0])
                abort();
            break;
        }
        }
        free(line);
        p += len + (nl != NULL);
    }
    return 0;
}
