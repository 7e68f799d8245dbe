/*
 * bench_ingest -- producers -> relayd -> durable acks, measured.
 *
 *   bench_ingest SOCKET [PRODUCERS=8] [RECORDS_PER_PRODUCER=250000] [WINDOW=4096]
 *                [RELAYD_PID]
 *
 * Forks PRODUCERS processes. Each connects to relayd's ingest socket and
 * streams ~200-byte JSON rows, keeping up to WINDOW lines in flight, and
 * timestamps every line so that when "ok N" arrives the ack latency of each
 * line it covers is known. Prints records/s and MB/s acknowledged, ack latency
 * percentiles, and, given relayd's pid, relayd's CPU time per record and peak
 * RSS. Prints figures only; asserts nothing about speed.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
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

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static int make_row(char *buf, int producer, uint64_t seq)
{
    static const char *const levels[] = { "info", "warn", "error", "debug" };
    return sprintf(buf,
        "{\"ts\":\"2026-11-22T10:%02u:%02u.%06uZ\",\"host\":\"web-%02d.example.internal\","
        "\"service\":\"checkout\",\"level\":\"%s\",\"seq\":%llu,\"latency_ms\":%u.%u,"
        "\"status\":%u,\"ok\":%s,\"msg\":\"request finished for user %llu\"}\n",
        (unsigned)(seq / 60 % 60), (unsigned)(seq % 60), (unsigned)(seq * 7 % 1000000), producer,
        levels[seq % 4], (unsigned long long)seq, (unsigned)(seq % 900), (unsigned)(seq % 10),
        200 + (unsigned)(seq % 5) * 100, seq % 3 ? "true" : "false",
        (unsigned long long)(seq * 2654435761u % 100000));
}

/* One producer: returns 0 when every line is acknowledged. */
static int produce(const char *path, int id, uint64_t n, uint64_t window, uint32_t *lat,
                   uint64_t *bytes_out)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        perror("connect");
        return 1;
    }
    uint64_t *sent_at = malloc(n * sizeof *sent_at);
    char *out = malloc(1 << 20), rbuf[65536];
    size_t olen = 0, ooff = 0, rlen = 0;
    uint64_t next = 0, acked = 0, bytes = 0;
    while (acked < n) {
        /* fill the output buffer up to the window */
        if (ooff == olen) {
            olen = ooff = 0;
            uint64_t t = now_us();
            while (next < n && next - acked < window && olen < (1 << 20) - 512) {
                olen += (size_t)make_row(out + olen, id, next);
                sent_at[next++] = t;
            }
        }
        struct pollfd p = { fd, POLLIN | (ooff < olen ? POLLOUT : 0), 0 };
        if (poll(&p, 1, 10000) <= 0) {
            fprintf(stderr, "producer %d: stalled at ack %llu\n", id, (unsigned long long)acked);
            return 1;
        }
        if (p.revents & POLLOUT) {
            ssize_t w = send(fd, out + ooff, olen - ooff, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w > 0) {
                ooff += (size_t)w;
                bytes += (uint64_t)w;
            }
        }
        if (p.revents & (POLLIN | POLLHUP)) {
            ssize_t r = recv(fd, rbuf + rlen, sizeof rbuf - rlen, MSG_DONTWAIT);
            if (r <= 0) {
                fprintf(stderr, "producer %d: connection lost\n", id);
                return 1;
            }
            rlen += (size_t)r;
            char *s = rbuf, *nl;
            uint64_t t = now_us();
            while ((nl = memchr(s, '\n', rlen - (size_t)(s - rbuf)))) {
                if (strncmp(s, "ok ", 3) == 0) {
                    uint64_t a = strtoull(s + 3, NULL, 10);
                    for (; acked < a && acked < n; acked++)
                        lat[acked] = (uint32_t)(t - sent_at[acked]);
                } else {
                    fprintf(stderr, "producer %d: %.*s\n", id, (int)(nl - s), s);
                    return 1;
                }
                s = nl + 1;
            }
            rlen -= (size_t)(s - rbuf);
            memmove(rbuf, s, rlen);
        }
    }
    *bytes_out = bytes;
    close(fd);
    return 0;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int proc_cpu_ticks(int pid, unsigned long long *ticks)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(buf, sizeof buf, f)) {
        if (f)
            fclose(f);
        return -1;
    }
    fclose(f);
    char *p = strrchr(buf, ')');
    unsigned long long ut, st;
    /* fields after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    *ticks = ut + st;
    return 0;
}

static long proc_status_kb(int pid, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    long v = -1;
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
        fprintf(stderr, "usage: bench_ingest SOCKET [PRODUCERS] [RECORDS_PER_PRODUCER] [WINDOW] [RELAYD_PID]\n");
        return 2;
    }
    const char *path = argv[1];
    int np = argc > 2 ? atoi(argv[2]) : 8;
    uint64_t n = argc > 3 ? strtoull(argv[3], NULL, 10) : 250000;
    uint64_t window = argc > 4 ? strtoull(argv[4], NULL, 10) : 4096;
    int rpid = argc > 5 ? atoi(argv[5]) : 0;

    size_t latbytes = (size_t)np * n * sizeof(uint32_t);
    uint32_t *lat = mmap(NULL, latbytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    uint64_t *bytes = mmap(NULL, (size_t)np * sizeof *bytes, PROT_READ | PROT_WRITE,
                           MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (lat == MAP_FAILED || bytes == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    unsigned long long cpu0 = 0, cpu1 = 0;
    if (rpid)
        proc_cpu_ticks(rpid, &cpu0);
    uint64_t t0 = now_us();
    for (int i = 0; i < np; i++) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(produce(path, i, n, window, lat + (size_t)i * n, &bytes[i]));
    }
    int failed = 0, status;
    while (wait(&status) > 0)
        if (!WIFEXITED(status) || WEXITSTATUS(status))
            failed++;
    uint64_t dt = now_us() - t0;
    if (rpid)
        proc_cpu_ticks(rpid, &cpu1);
    if (failed) {
        fprintf(stderr, "bench_ingest: %d producer(s) failed\n", failed);
        return 1;
    }
    uint64_t total = (uint64_t)np * n, tb = 0;
    for (int i = 0; i < np; i++)
        tb += bytes[i];
    qsort(lat, total, sizeof *lat, cmp_u32);
    double secs = (double)dt / 1e6;
    printf("records %llu  bytes/row %.0f  time %.2f s\n", (unsigned long long)total,
           (double)tb / (double)total, secs);
    printf("throughput %.0f records/s  %.1f MB/s acknowledged\n", (double)total / secs,
           (double)tb / secs / 1e6);
    printf("ack latency p50 %.2f ms  p99 %.2f ms  p99.9 %.2f ms  max %.2f ms\n",
           lat[total / 2] / 1000.0, lat[total * 99 / 100] / 1000.0,
           lat[total * 999 / 1000] / 1000.0, lat[total - 1] / 1000.0);
    if (rpid) {
        double cpu_us = (double)(cpu1 - cpu0) * 1e6 / (double)sysconf(_SC_CLK_TCK);
        printf("relayd cpu %.2f us/record (%.0f%% of one core)  peak RSS %ld KiB  RSS now %ld KiB\n",
               cpu_us / (double)total, cpu_us / (double)dt * 100,
               proc_status_kb(rpid, "VmHWM:"), proc_status_kb(rpid, "VmRSS:"));
    }
    return 0;
}
