/*
 * bench_forward -- Fluent forward producers -> relayd -> durable acks, measured.
 *
 *   bench_forward SOCKET [PRODUCERS=8] [RECORDS_PER_PRODUCER=250000]
 *                 [CHUNK_RECORDS=256] [CHUNKS_IN_FLIGHT=2] [RELAYD_PID]
 *
 * Forks PRODUCERS processes. Each connects to relayd's forward socket and
 * sends PackedForward messages (what Fluent Bit's forward output sends) of
 * CHUNK_RECORDS records each, with the chunk option, keeping up to
 * CHUNKS_IN_FLIGHT unacknowledged. The records carry the same fields as
 * bench_ingest's NDJSON rows, packed with msgpack-c, with an EventTime. A
 * chunk's ack latency counts for each record in it. Prints records/s, ack
 * latency percentiles and, given relayd's pid, its CPU per record and peak
 * RSS. Prints figures only; asserts nothing about speed.
 */
#include <msgpack.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ACK_LEN 14   /* {"ack": "%08x"}: 0x81 0xa3 "ack" 0xa8 + 8 bytes */

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_record(msgpack_packer *pk, int producer, uint64_t seq)
{
    static const char *const levels[] = { "info", "warn", "error", "debug" };
    char ts[40], host[40], msg[64];
    snprintf(ts, sizeof ts, "2026-11-22T10:%02u:%02u.%06uZ", (unsigned)(seq / 60 % 60),
             (unsigned)(seq % 60), (unsigned)(seq * 7 % 1000000));
    snprintf(host, sizeof host, "web-%02d.example.internal", producer);
    snprintf(msg, sizeof msg, "request finished for user %llu",
             (unsigned long long)(seq * 2654435761u % 100000));
    msgpack_pack_array(pk, 2);
    char et[8];
    uint32_t sec = 1795000000u + (uint32_t)(seq / 1000), nsec = (uint32_t)(seq % 1000) * 1000;
    for (int i = 0; i < 4; i++) {
        et[i] = (char)(sec >> (24 - 8 * i));
        et[4 + i] = (char)(nsec >> (24 - 8 * i));
    }
    msgpack_pack_ext(pk, 8, 0);
    msgpack_pack_ext_body(pk, et, 8);
    msgpack_pack_map(pk, 9);
    pack_str(pk, "ts");         pack_str(pk, ts);
    pack_str(pk, "host");       pack_str(pk, host);
    pack_str(pk, "service");    pack_str(pk, "checkout");
    pack_str(pk, "level");      pack_str(pk, levels[seq % 4]);
    pack_str(pk, "seq");        msgpack_pack_uint64(pk, seq);
    pack_str(pk, "latency_ms"); msgpack_pack_double(pk, (double)(seq % 900) + (double)(seq % 10) / 10);
    pack_str(pk, "status");     msgpack_pack_uint32(pk, 200 + (unsigned)(seq % 5) * 100);
    pack_str(pk, "ok");         if (seq % 3) msgpack_pack_true(pk); else msgpack_pack_false(pk);
    pack_str(pk, "msg");        pack_str(pk, msg);
}

/* One PackedForward message of records [first, first+n) with chunk id c. */
static void pack_chunk(msgpack_sbuffer *out, msgpack_sbuffer *ent, int producer, uint64_t first,
                       uint64_t n, uint32_t c)
{
    msgpack_packer pe, pk;
    msgpack_sbuffer_clear(ent);
    msgpack_packer_init(&pe, ent, msgpack_sbuffer_write);
    for (uint64_t i = 0; i < n; i++)
        pack_record(&pe, producer, first + i);
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    pack_str(&pk, "bench.events");
    msgpack_pack_bin(&pk, ent->size);
    msgpack_pack_bin_body(&pk, ent->data, ent->size);
    msgpack_pack_map(&pk, 2);
    char id[9];
    snprintf(id, sizeof id, "%08x", c);
    pack_str(&pk, "chunk");
    pack_str(&pk, id);
    pack_str(&pk, "size");
    msgpack_pack_uint64(&pk, n);
}

static int produce(const char *path, int id, uint64_t n, uint64_t per, uint64_t inflight,
                   uint32_t *lat, uint64_t *bytes_out)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        perror("connect");
        return 1;
    }
    uint64_t nchunks = (n + per - 1) / per;
    uint64_t *sent_at = malloc(nchunks * sizeof *sent_at);
    msgpack_sbuffer out, ent;
    msgpack_sbuffer_init(&out);
    msgpack_sbuffer_init(&ent);
    size_t ooff = 0, rlen = 0;
    char rbuf[ACK_LEN * 256];
    uint64_t next = 0, acked = 0, bytes = 0, rec_acked = 0;
    while (acked < nchunks) {
        if (ooff == out.size) {
            msgpack_sbuffer_clear(&out);
            ooff = 0;
            uint64_t t = now_us();
            while (next < nchunks && next - acked < inflight) {
                uint64_t first = next * per, cnt = first + per > n ? n - first : per;
                pack_chunk(&out, &ent, id, first, cnt, (uint32_t)next);
                sent_at[next++] = t;
            }
        }
        struct pollfd p = { fd, POLLIN | (ooff < out.size ? POLLOUT : 0), 0 };
        if (poll(&p, 1, 10000) <= 0) {
            fprintf(stderr, "producer %d: stalled at chunk %llu\n", id, (unsigned long long)acked);
            return 1;
        }
        if (p.revents & POLLOUT) {
            ssize_t w = send(fd, out.data + ooff, out.size - ooff, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w > 0) {
                ooff += (size_t)w;
                bytes += (uint64_t)w;
            }
        }
        if (p.revents & (POLLIN | POLLHUP)) {
            ssize_t r = recv(fd, rbuf + rlen, sizeof rbuf - rlen, MSG_DONTWAIT);
            if (r <= 0) {
                fprintf(stderr, "producer %d: connection lost at chunk %llu\n", id,
                        (unsigned long long)acked);
                return 1;
            }
            rlen += (size_t)r;
            uint64_t t = now_us();
            size_t k = 0;
            for (; k + ACK_LEN <= rlen; k += ACK_LEN, acked++) {
                uint64_t first = acked * per, cnt = first + per > n ? n - first : per;
                for (uint64_t i = 0; i < cnt; i++)
                    lat[rec_acked++] = (uint32_t)(t - sent_at[acked]);
            }
            memmove(rbuf, rbuf + k, rlen - k);
            rlen -= k;
        }
    }
    *bytes_out = bytes;
    msgpack_sbuffer_destroy(&out);
    msgpack_sbuffer_destroy(&ent);
    free(sent_at);
    close(fd);
    return 0;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static unsigned long long cpu_ticks(int pid)
{
    char path[64], buf[1024];
    unsigned long long ut = 0, st = 0;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f && fgets(buf, sizeof buf, f)) {
        char *p = strrchr(buf, ')');
        if (p)
            sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st);
    }
    if (f)
        fclose(f);
    return ut + st;
}

static long status_kb(int pid, const char *key)
{
    char path[64], line[256];
    long v = -1;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, strlen(key)) == 0)
            v = strtol(line + strlen(key) + 1, NULL, 10);
    fclose(f);
    return v;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_forward SOCKET [PRODUCERS] [RECORDS_PER_PRODUCER] "
                "[CHUNK_RECORDS] [CHUNKS_IN_FLIGHT] [RELAYD_PID]\n");
        return 2;
    }
    const char *path = argv[1];
    int np = argc > 2 ? atoi(argv[2]) : 8;
    uint64_t n = argc > 3 ? strtoull(argv[3], NULL, 10) : 250000;
    uint64_t per = argc > 4 ? strtoull(argv[4], NULL, 10) : 256;
    uint64_t inflight = argc > 5 ? strtoull(argv[5], NULL, 10) : 2;
    int rpid = argc > 6 ? atoi(argv[6]) : 0;
    if (np < 1 || n < 1 || per < 1 || inflight < 1)
        return 2;
    size_t latbytes = (size_t)np * n * sizeof(uint32_t);
    uint32_t *lat = mmap(NULL, latbytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    uint64_t *bytes = mmap(NULL, (size_t)np * sizeof *bytes, PROT_READ | PROT_WRITE,
                           MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (lat == MAP_FAILED || bytes == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    unsigned long long cpu0 = rpid ? cpu_ticks(rpid) : 0;
    uint64_t t0 = now_us();
    for (int i = 0; i < np; i++) {
        if (fork() == 0)
            _exit(produce(path, i, n, per, inflight, lat + (size_t)i * n, &bytes[i]));
    }
    int failed = 0, status;
    while (wait(&status) > 0)
        if (!WIFEXITED(status) || WEXITSTATUS(status))
            failed++;
    uint64_t dt = now_us() - t0;
    unsigned long long cpu1 = rpid ? cpu_ticks(rpid) : 0;
    if (failed) {
        fprintf(stderr, "bench_forward: %d producer(s) failed\n", failed);
        return 1;
    }
    uint64_t total = (uint64_t)np * n, tb = 0;
    for (int i = 0; i < np; i++)
        tb += bytes[i];
    qsort(lat, total, sizeof *lat, cmp_u32);
    double secs = (double)dt / 1e6;
    printf("records %llu  msgpack bytes/record %.0f  chunks of %llu, %llu in flight  time %.2f s\n",
           (unsigned long long)total, (double)tb / (double)total, (unsigned long long)per,
           (unsigned long long)inflight, secs);
    printf("throughput %.0f records/s  %.1f MB/s acknowledged\n", (double)total / secs,
           (double)tb / secs / 1e6);
    printf("ack latency p50 %.2f ms  p99 %.2f ms  p99.9 %.2f ms  max %.2f ms\n",
           lat[total / 2] / 1000.0, lat[total * 99 / 100] / 1000.0,
           lat[total * 999 / 1000] / 1000.0, lat[total - 1] / 1000.0);
    if (rpid) {
        double cpu_us = (double)(cpu1 - cpu0) * 1e6 / (double)sysconf(_SC_CLK_TCK);
        printf("relayd cpu %.2f us/record (%.0f%% of one core)  peak RSS %ld KiB  RSS now %ld KiB\n",
               cpu_us / (double)total, cpu_us / (double)dt * 100, status_kb(rpid, "VmHWM:"),
               status_kb(rpid, "VmRSS:"));
    }
    return 0;
}
