/* A lean KMIP load generator: C and OpenSSL, so that the clients' own CPU takes as little of
 * the machine as possible when a benchmark's server shares it with them.
 *
 * Each of CONNECTIONS threads opens one mutual-TLS connection (TLS 1.2 or later, the server's
 * certificate verified against CA), sends WARMUP copies of the request untimed, waits for the
 * others, then sends REQUESTS copies back to back, one at a time, reading each whole answer
 * (framed by its 8-byte TTLV header) and timing it. An answer is good when it is a TTLV
 * structure and (unless the request is echoed: --echo) carries Result Status Success, or
 * (--echo) is the request byte for byte.
 *
 *   loadgen HOST PORT CERT KEY CA REQUEST_FILE CONNECTIONS REQUESTS WARMUP OUT_FILE [--echo]
 *
 * It prints "ready" once every connection is warm and waits for a line on its standard input
 * before the timed part, then prints "done" and waits for another before closing: so the
 * caller can read the server's CPU over the timed part alone.
 *
 * OUT_FILE receives, little-endian: u64 timed wall nanoseconds (first start to last end),
 * u64 CPU nanoseconds of this process during the timed part, u64 failures, u64 count, then
 * count u64 latencies in nanoseconds. The exit status is 0 when every connection worked.
 * Built and run by benchmarks/native_client.py.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_ANSWER (1 << 20)

static const char *host, *cert, *key, *ca;
static int port, requests, warmup, echo;
static unsigned char *request;
static size_t request_len;
static SSL_CTX *ctx;
static pthread_barrier_t barrier;
static uint64_t started_ns, finished_ns, cpu_before_ns, cpu_after_ns;

/* Result Status (0x42007F), Enumeration, length 4, value Success (0). */
static const unsigned char success[] = {0x42, 0x00, 0x7F, 0x05, 0, 0, 0, 4, 0, 0, 0, 0};

struct worker {
    pthread_t thread;
    uint64_t *latencies;
    uint64_t failures;
    int ok;
};

static uint64_t now_ns(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int read_exactly(SSL *ssl, unsigned char *into, size_t count) {
    size_t got = 0;
    while (got < count) {
        int n = SSL_read(ssl, into + got, (int)(count - got));
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return 0;
}

/* One round trip; 0: a good answer, 1: a bad one, -1: the connection failed. */
static int exchange(SSL *ssl, unsigned char *answer) {
    if (SSL_write(ssl, request, (int)request_len) != (int)request_len)
        return -1;
    if (read_exactly(ssl, answer, 8) < 0)
        return -1;
    uint32_t length = ((uint32_t)answer[4] << 24) | ((uint32_t)answer[5] << 16) |
                      ((uint32_t)answer[6] << 8) | answer[7];
    if (answer[3] != 0x01 || length % 8 || length + 8 > MAX_ANSWER)
        return -1;
    if (read_exactly(ssl, answer + 8, length) < 0)
        return -1;
    size_t total = length + 8;
    if (echo)
        return total == request_len && memcmp(answer, request, total) == 0 ? 0 : 1;
    return memmem(answer, total, success, sizeof success) ? 0 : 1;
}

static SSL *connect_tls(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1;
    if (fd < 0 || inet_pton(AF_INET, host, &address.sin_addr) != 1 ||
        connect(fd, (struct sockaddr *)&address, sizeof address) < 0) {
        perror("connect");
        return NULL;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        ERR_print_errors_fp(stderr);
        SSL_free(ssl);
        close(fd);
        return NULL;
    }
    return ssl;
}

static void *run(void *arg) {
    struct worker *w = arg;
    unsigned char *answer = malloc(MAX_ANSWER);
    SSL *ssl = connect_tls();
    int broken = ssl == NULL || answer == NULL;
    for (int i = 0; i < warmup && !broken; i++)
        broken = exchange(ssl, answer) < 0;
    pthread_barrier_wait(&barrier); /* all warmed up */
    pthread_barrier_wait(&barrier); /* go */
    if (!broken) {
        for (int i = 0; i < requests; i++) {
            uint64_t sent = now_ns(CLOCK_MONOTONIC);
            int outcome = exchange(ssl, answer);
            w->latencies[i] = now_ns(CLOCK_MONOTONIC) - sent;
            if (outcome < 0) {
                w->failures += (uint64_t)(requests - i);
                broken = 1;
                break;
            }
            w->failures += (uint64_t)outcome;
        }
    } else {
        w->failures = (uint64_t)requests; /* never got to send them */
    }
    w->ok = !broken;
    pthread_barrier_wait(&barrier); /* all done */
    pthread_barrier_wait(&barrier); /* close */
    if (ssl != NULL) {
        int fd = SSL_get_fd(ssl);
        SSL_shutdown(ssl);
        SSL_free(ssl);
        close(fd);
    }
    free(answer);
    return NULL;
}

static int write_u64(FILE *out, uint64_t value) {
    return fwrite(&value, sizeof value, 1, out) == 1 ? 0 : -1;
}

int main(int argc, char **argv) {
    if (argc < 11) {
        fprintf(stderr, "usage: loadgen HOST PORT CERT KEY CA REQUEST_FILE CONNECTIONS "
                        "REQUESTS WARMUP OUT_FILE [--echo]\n");
        return 2;
    }
    host = argv[1], port = atoi(argv[2]), cert = argv[3], key = argv[4], ca = argv[5];
    int connections = atoi(argv[7]);
    requests = atoi(argv[8]), warmup = atoi(argv[9]);
    echo = argc > 11 && strcmp(argv[11], "--echo") == 0;
    FILE *in = fopen(argv[6], "rb");
    if (in == NULL || connections < 1 || requests < 1) {
        fprintf(stderr, "loadgen: bad arguments\n");
        return 2;
    }
    request = malloc(MAX_ANSWER);
    request_len = fread(request, 1, MAX_ANSWER, in);
    fclose(in);

    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1 ||
        SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 2;
    }

    struct worker *workers = calloc((size_t)connections, sizeof *workers);
    pthread_barrier_init(&barrier, NULL, (unsigned)connections + 1);
    for (int c = 0; c < connections; c++) {
        workers[c].latencies = calloc((size_t)requests, sizeof(uint64_t));
        pthread_create(&workers[c].thread, NULL, run, &workers[c]);
    }
    char word[16];
    pthread_barrier_wait(&barrier); /* all warmed up */
    printf("ready\n");
    fflush(stdout);
    if (fgets(word, sizeof word, stdin) == NULL)
        return 2;
    started_ns = now_ns(CLOCK_MONOTONIC);
    cpu_before_ns = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    pthread_barrier_wait(&barrier); /* go */
    pthread_barrier_wait(&barrier); /* all done */
    finished_ns = now_ns(CLOCK_MONOTONIC);
    cpu_after_ns = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    printf("done\n");
    fflush(stdout);
    if (fgets(word, sizeof word, stdin) == NULL)
        return 2;
    pthread_barrier_wait(&barrier); /* close */
    int all_ok = 1;
    uint64_t failures = 0;
    for (int c = 0; c < connections; c++) {
        pthread_join(workers[c].thread, NULL);
        all_ok &= workers[c].ok;
        failures += workers[c].failures;
    }

    FILE *out = fopen(argv[10], "wb");
    if (out == NULL)
        return 2;
    uint64_t count = (uint64_t)connections * (uint64_t)requests;
    int bad = write_u64(out, finished_ns - started_ns) |
              write_u64(out, cpu_after_ns - cpu_before_ns) | write_u64(out, failures) |
              write_u64(out, count);
    for (int c = 0; c < connections; c++)
        bad |= fwrite(workers[c].latencies, sizeof(uint64_t), (size_t)requests, out) !=
               (size_t)requests;
    bad |= fclose(out);
    return bad ? 2 : all_ok ? 0 : 1;
}
