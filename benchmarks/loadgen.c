/* A lean KMIP load generator: C and OpenSSL, so that the clients' own CPU takes as little of
 * the machine as possible when a benchmark's server shares it with them.
 *
 * Each of CONNECTIONS mutual-TLS connections (TLS 1.2 or later, the server's certificate
 * verified against CA) sends WARMUP copies of the request untimed, waits for the others,
 * then sends REQUESTS copies back to back, one at a time, reading each whole answer (framed
 * by its 8-byte TTLV header) and timing it. With --echo an answer is good when it is the
 * request byte for byte. Otherwise the main thread first sends the request once on a
 * connection of its own and checks that answer in full: a well-formed TTLV Response Message
 * with as many Batch Items as the request, each with the request's Operation and Result
 * Status Success (else it exits with status 2 before any load). That answer is the
 * reference: every later answer must be the same TTLV tree, item by item (tags, types,
 * lengths, and the values of every item but those that vary from answer to answer: Byte
 * Strings and Date-Times (IV, ciphertext, tag, time stamps) and the header's Client and
 * Server Correlation Values). So each answer's Operation and Result
 * Status are checked at their places, its identifiers and counts too, for one compare of a
 * few hundred bytes. (A request whose answers differ in a Text String or an Integer, a
 * Create's new identifier, would fail: this is for repeated requests on one object.)
 * Bad answers are counted, the first one's offset of difference told on standard error, and
 * the exit status is then 3.
 *
 * By default each connection has a thread of its own, blocked in its reads. With
 * --event-threads T, T threads share the connections and wait for answers with epoll, as
 * wrk does: a thread that finds several answers ready handles them in one wake-up, so the
 * clients cost less CPU per request (and context switches) under load. Either way each
 * connection has one request in flight. Reads use OpenSSL's read-ahead: one read() takes a
 * whole TLS record (header and body) rather than one read() for each.
 *
 *   loadgen HOST PORT CERT KEY CA REQUEST_FILE CONNECTIONS REQUESTS WARMUP OUT_FILE
 *           [--echo] [--event-threads T]
 *
 * HOST is an IPv4 address, or the path of a Unix stream socket (beginning with '/': PORT is
 * then ignored).
 *
 * It prints "ready" once every connection is warm and waits for a line on its standard input
 * before the timed part, then prints "done" and waits for another before closing: so the
 * caller can read the server's CPU over the timed part alone.
 *
 * OUT_FILE receives, little-endian: u64 timed wall nanoseconds (first start to last end),
 * u64 CPU nanoseconds of this process during the timed part, u64 failures, u64 count, then
 * count u64 latencies in nanoseconds (failures: bad answers and requests a broken
 * connection did not answer). The exit status is 0 when every connection worked and every
 * answer was good, 1 when a connection broke, 3 when an answer was bad, 2 on a usage error
 * or a bad reference answer.
 * Built and run by benchmarks/native_client.py.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
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

/* The first answer, checked in full (check_reference); every later one is compared to it. */
static unsigned char *reference;
static size_t reference_len;

#define TTLV_STRUCTURE 0x01
#define TTLV_ENUMERATION 0x05
#define TTLV_BYTES 0x08
#define TTLV_DATETIME 0x09
#define TAG_BATCH_ITEM 0x42000F
#define TAG_CLIENT_CORRELATION_VALUE 0x420105
#define TAG_SERVER_CORRELATION_VALUE 0x420106
#define TAG_OPERATION 0x42005C
#define TAG_REQUEST_MESSAGE 0x420078
#define TAG_RESPONSE_MESSAGE 0x42007B
#define TAG_RESULT_STATUS 0x42007F
#define MAX_ITEMS 4096

struct worker {
    pthread_t thread;
    uint64_t *latencies;
    uint64_t failures;
    uint64_t bad;      /* answers that were not good (within failures) */
    long first_bad;    /* where the first bad one differed from the reference (-1: none) */
    int ok;
    /* --event-threads: the connection's state between wake-ups. */
    SSL *ssl;
    unsigned char *answer;
    size_t got, need;
    uint64_t sent_ns;
    int done, broken;
};

/* --event-threads: the connections one thread drives. */
struct event_thread {
    pthread_t thread;
    struct worker *connections;
    int count;
};

static uint64_t now_ns(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint32_t tag_at(const unsigned char *m, size_t at) {
    return ((uint32_t)m[at] << 16) | ((uint32_t)m[at + 1] << 8) | m[at + 2];
}

/* The bytes an item's value takes: a structure's length (its items are whole), any other
 * value's padded to 8. */
static size_t value_size(const unsigned char *m, size_t at) {
    uint32_t length = be32(m + at + 4);
    return m[at + 3] == TTLV_STRUCTURE ? length : ((size_t)length + 7) / 8 * 8;
}

/* Whether [start, end) of m is a sequence of whole TTLV items, structures recursively. */
static int well_formed(const unsigned char *m, size_t start, size_t end, int depth) {
    if (depth > 64)
        return 0;
    for (size_t at = start; at < end;) {
        if (end - at < 8)
            return 0;
        size_t size = value_size(m, at);
        if (size > end - at - 8 || (m[at + 3] == TTLV_STRUCTURE && size % 8) ||
            (m[at + 3] == TTLV_STRUCTURE && !well_formed(m, at + 8, at + 8 + size, depth + 1)))
            return 0;
        at += 8 + size;
    }
    return 1;
}

/* The offsets of the items tagged tag directly inside the structure at `at` of a
 * well-formed m: up to max of them into found; how many there are. */
static int children(const unsigned char *m, size_t at, uint32_t tag, size_t *found, int max) {
    int count = 0;
    for (size_t child = at + 8, end = at + 8 + value_size(m, at); child < end;
         child += 8 + value_size(m, child))
        if (tag_at(m, child) == tag) {
            if (count < max)
                found[count] = child;
            count++;
        }
    return count;
}

/* The value of the one enumeration tagged tag directly inside the structure at `at`, or -1. */
static long enumeration(const unsigned char *m, size_t at, uint32_t tag) {
    size_t found;
    if (children(m, at, tag, &found, 1) != 1 || m[found + 3] != TTLV_ENUMERATION ||
        be32(m + found + 4) != 4)
        return -1;
    return (long)be32(m + found + 8);
}

/* Why the answer m (len bytes) to the request is not a good reference answer; NULL if it is. */
static const char *check_reference(const unsigned char *m, size_t len) {
    static size_t asked[MAX_ITEMS], answered[MAX_ITEMS];
    if (len < 8 || tag_at(m, 0) != TAG_RESPONSE_MESSAGE || m[3] != TTLV_STRUCTURE ||
        (size_t)be32(m + 4) + 8 != len || !well_formed(m, 0, len, 0))
        return "not a well-formed TTLV Response Message";
    if (request_len < 8 || tag_at(request, 0) != TAG_REQUEST_MESSAGE ||
        !well_formed(request, 0, request_len, 0))
        return "the request is not a well-formed TTLV Request Message";
    int items = children(request, 0, TAG_BATCH_ITEM, asked, MAX_ITEMS);
    if (items < 1 || items > MAX_ITEMS)
        return "the request has no Batch Item (or too many)";
    if (children(m, 0, TAG_BATCH_ITEM, answered, MAX_ITEMS) != items)
        return "not as many Batch Items as the request";
    for (int i = 0; i < items; i++) {
        long operation = enumeration(request, asked[i], TAG_OPERATION);
        if (operation < 0 || enumeration(m, answered[i], TAG_OPERATION) != operation)
            return "a Batch Item's Operation is not the request's";
        if (enumeration(m, answered[i], TAG_RESULT_STATUS) != 0)
            return "a Batch Item's Result Status is not Success";
    }
    return NULL;
}

/* Whether an item's value may differ from answer to answer (the tag and type at m + at). */
static int varies(const unsigned char *m, size_t at) {
    uint32_t tag = tag_at(m, at);
    return m[at + 3] == TTLV_BYTES || m[at + 3] == TTLV_DATETIME ||
           tag == TAG_CLIENT_CORRELATION_VALUE || tag == TAG_SERVER_CORRELATION_VALUE;
}

/* Where, in [start, end), the answer a differs from the reference r: the offset of the first
 * item whose tag, type or length differ, or (unless it varies) whose value does; -1 when none
 * does. r is well-formed, so its lengths bound the walk. */
static long differs(const unsigned char *a, const unsigned char *r, size_t start, size_t end) {
    for (size_t at = start; at < end;) {
        if (memcmp(a + at, r + at, 8) != 0)
            return (long)at;
        size_t size = value_size(r, at);
        unsigned type = r[at + 3];
        if (type == TTLV_STRUCTURE) {
            long d = differs(a, r, at + 8, at + 8 + size);
            if (d >= 0)
                return d;
        } else if (!varies(r, at) && memcmp(a + at + 8, r + at + 8, size) != 0) {
            return (long)at;
        }
        at += 8 + size;
    }
    return -1;
}

/* 0 when the whole answer (total bytes) is good, else 1 and *where the offset it differs at. */
static int judge_answer(const unsigned char *answer, size_t total, long *where) {
    if (echo) {
        *where = 0;
        return total == request_len && memcmp(answer, request, total) == 0 ? 0 : 1;
    }
    *where = total == reference_len ? differs(answer, reference, 0, total) : 0;
    return *where < 0 ? 0 : 1;
}

static void count_bad(struct worker *w, long where) {
    if (w->bad++ == 0)
        w->first_bad = where;
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

/* One round trip: the answer's size, or -1 when the connection failed. */
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
    return (int)(length + 8);
}

/* One round trip; 0: a good answer, 1: a bad one (counted in w), -1: the connection failed. */
static int exchange_checked(struct worker *w, SSL *ssl, unsigned char *answer) {
    int total = exchange(ssl, answer);
    if (total < 0)
        return -1;
    long where;
    if (judge_answer(answer, (size_t)total, &where) == 0)
        return 0;
    count_bad(w, where);
    return 1;
}

/* A connected socket to HOST:PORT, or to the Unix stream socket HOST names when it begins
 * with '/' (PORT is then ignored); -1 on failure. */
static int connect_socket(void) {
    if (host[0] == '/') {
        struct sockaddr_un address = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (strlen(host) >= sizeof address.sun_path || fd < 0)
            return -1;
        strcpy(address.sun_path, host);
        if (connect(fd, (struct sockaddr *)&address, sizeof address) < 0) {
            close(fd);
            return -1;
        }
        return fd;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1;
    if (fd < 0 || inet_pton(AF_INET, host, &address.sin_addr) != 1 ||
        connect(fd, (struct sockaddr *)&address, sizeof address) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static SSL *connect_tls(void) {
    int fd = connect_socket();
    if (fd < 0) {
        perror("connect");
        return NULL;
    }
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
        broken = exchange_checked(w, ssl, answer) < 0;
    pthread_barrier_wait(&barrier); /* all warmed up */
    pthread_barrier_wait(&barrier); /* go */
    if (!broken) {
        for (int i = 0; i < requests; i++) {
            uint64_t sent = now_ns(CLOCK_MONOTONIC);
            int outcome = exchange_checked(w, ssl, answer);
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

/* --event-threads: send the request on w's connection (non-blocking; a write that would
 * block waits for the socket, which on loopback with one request in flight it never does). */
static int send_nonblocking(struct worker *w) {
    w->sent_ns = now_ns(CLOCK_MONOTONIC);
    for (;;) {
        int n = SSL_write(w->ssl, request, (int)request_len);
        if (n == (int)request_len)
            return 0;
        int e = SSL_get_error(w->ssl, n);
        if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ)
            return -1;
        struct pollfd p = {.fd = SSL_get_fd(w->ssl),
                           .events = e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN};
        if (poll(&p, 1, 10000) <= 0)
            return -1;
    }
}

/* The answer in w->answer is whole: 0 good, 1 bad (counted). */
static int judge(struct worker *w) {
    long where;
    if (judge_answer(w->answer, w->need, &where) == 0)
        return 0;
    count_bad(w, where);
    return 1;
}

static void give_up(struct worker *w, int count, int record) {
    w->broken = 1;
    if (record)
        w->failures += (uint64_t)(count - w->done);
}

/* Reads what w's connection has; 1 when the connection is finished with (its count done,
 * or broken), 0 when it waits for more. */
static int on_readable(struct worker *w, int count, int record) {
    for (;;) {
        int n = SSL_read(w->ssl, w->answer + w->got, (int)(w->need - w->got));
        if (n <= 0) {
            if (SSL_get_error(w->ssl, n) == SSL_ERROR_WANT_READ)
                return 0;
            give_up(w, count, record);
            return 1;
        }
        w->got += (size_t)n;
        if (w->got < w->need)
            continue;
        if (w->need == 8) { /* the header: now the length is known */
            uint32_t length = ((uint32_t)w->answer[4] << 24) | ((uint32_t)w->answer[5] << 16) |
                              ((uint32_t)w->answer[6] << 8) | w->answer[7];
            if (w->answer[3] != 0x01 || length % 8 || length == 0 || length + 8 > MAX_ANSWER) {
                give_up(w, count, record);
                return 1;
            }
            w->need = length + 8;
            continue;
        }
        int outcome = judge(w);
        if (record) {
            w->latencies[w->done] = now_ns(CLOCK_MONOTONIC) - w->sent_ns;
            w->failures += (uint64_t)outcome;
        }
        w->done++;
        w->got = 0;
        w->need = 8;
        if (w->done == count)
            return 1;
        if (send_nonblocking(w) < 0) {
            give_up(w, count, record);
            return 1;
        }
        if (!SSL_has_pending(w->ssl))
            return 0;
    }
}

/* Every connection of t sends count requests, one at a time; their latencies are kept
 * when record is set. A connection silent for 10 s is given up. */
static void drive(struct event_thread *t, int count, int record) {
    int ep = epoll_create1(0), active = 0;
    for (int i = 0; i < t->count; i++) {
        struct worker *w = &t->connections[i];
        w->done = 0, w->got = 0, w->need = 8;
        if (w->broken) {
            if (record)
                w->failures += (uint64_t)count;
            continue;
        }
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = w};
        if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, SSL_get_fd(w->ssl), &e) < 0 ||
            send_nonblocking(w) < 0) {
            give_up(w, count, record);
            continue;
        }
        active++;
    }
    struct epoll_event ready[64];
    while (active > 0) {
        int n = epoll_wait(ep, ready, 64, 10000);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) { /* nothing for 10 s: whatever is still waiting is broken */
            for (int i = 0; i < t->count; i++) {
                struct worker *w = &t->connections[i];
                if (!w->broken && w->done < count)
                    give_up(w, count, record);
            }
            break;
        }
        for (int i = 0; i < n; i++) {
            struct worker *w = ready[i].data.ptr;
            if (on_readable(w, count, record)) {
                epoll_ctl(ep, EPOLL_CTL_DEL, SSL_get_fd(w->ssl), NULL);
                active--;
            }
        }
    }
    if (ep >= 0)
        close(ep);
}

static void *run_events(void *arg) {
    struct event_thread *t = arg;
    for (int i = 0; i < t->count; i++) {
        struct worker *w = &t->connections[i];
        w->answer = malloc(MAX_ANSWER);
        w->ssl = w->answer != NULL ? connect_tls() : NULL;
        w->broken = w->ssl == NULL;
        if (!w->broken) {
            int fd = SSL_get_fd(w->ssl);
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        }
    }
    drive(t, warmup, 0);
    pthread_barrier_wait(&barrier); /* all warmed up */
    pthread_barrier_wait(&barrier); /* go */
    drive(t, requests, 1);
    for (int i = 0; i < t->count; i++)
        t->connections[i].ok = !t->connections[i].broken;
    pthread_barrier_wait(&barrier); /* all done */
    pthread_barrier_wait(&barrier); /* close */
    for (int i = 0; i < t->count; i++) {
        struct worker *w = &t->connections[i];
        if (w->ssl != NULL) {
            int fd = SSL_get_fd(w->ssl);
            SSL_shutdown(w->ssl);
            SSL_free(w->ssl);
            close(fd);
        }
        free(w->answer);
    }
    return NULL;
}

static int write_u64(FILE *out, uint64_t value) {
    return fwrite(&value, sizeof value, 1, out) == 1 ? 0 : -1;
}

int main(int argc, char **argv) {
    if (argc < 11) {
        fprintf(stderr, "usage: loadgen HOST PORT CERT KEY CA REQUEST_FILE CONNECTIONS "
                        "REQUESTS WARMUP OUT_FILE [--echo] [--event-threads T]\n");
        return 2;
    }
    host = argv[1], port = atoi(argv[2]), cert = argv[3], key = argv[4], ca = argv[5];
    int connections = atoi(argv[7]);
    requests = atoi(argv[8]), warmup = atoi(argv[9]);
    int event_threads = 0;
    for (int a = 11; a < argc; a++) {
        if (strcmp(argv[a], "--echo") == 0)
            echo = 1;
        else if (strcmp(argv[a], "--event-threads") == 0 && a + 1 < argc)
            event_threads = atoi(argv[++a]);
        else {
            fprintf(stderr, "loadgen: unknown argument %s\n", argv[a]);
            return 2;
        }
    }
    if (event_threads > connections)
        event_threads = connections;
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
    SSL_CTX_set_read_ahead(ctx, 1);
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1 ||
        SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 2;
    }

    if (!echo) { /* the reference answer, untimed, on a connection of its own */
        reference = malloc(MAX_ANSWER);
        SSL *ssl = connect_tls();
        int total = ssl != NULL && reference != NULL ? exchange(ssl, reference) : -1;
        const char *why = total < 0 ? "no answer" : check_reference(reference, (size_t)total);
        if (why != NULL) {
            fprintf(stderr, "loadgen: the first answer is not good: %s\n", why);
            return 2;
        }
        reference_len = (size_t)total;
        int fd = SSL_get_fd(ssl);
        SSL_shutdown(ssl);
        SSL_free(ssl);
        close(fd);
    }

    struct worker *workers = calloc((size_t)connections, sizeof *workers);
    for (int c = 0; c < connections; c++)
        workers[c].latencies = calloc((size_t)requests, sizeof(uint64_t));
    struct event_thread *threads = NULL;
    if (event_threads > 0) {
        threads = calloc((size_t)event_threads, sizeof *threads);
        pthread_barrier_init(&barrier, NULL, (unsigned)event_threads + 1);
        for (int t = 0; t < event_threads; t++) { /* connections split as evenly as can be */
            int first = t * connections / event_threads;
            threads[t].connections = &workers[first];
            threads[t].count = (t + 1) * connections / event_threads - first;
            pthread_create(&threads[t].thread, NULL, run_events, &threads[t]);
        }
    } else {
        pthread_barrier_init(&barrier, NULL, (unsigned)connections + 1);
        for (int c = 0; c < connections; c++)
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
    uint64_t failures = 0, bad = 0;
    long first_bad = -1;
    for (int t = 0; t < event_threads; t++)
        pthread_join(threads[t].thread, NULL);
    for (int c = 0; c < connections; c++) {
        if (event_threads == 0)
            pthread_join(workers[c].thread, NULL);
        all_ok &= workers[c].ok;
        failures += workers[c].failures;
        if (workers[c].bad && bad == 0)
            first_bad = workers[c].first_bad;
        bad += workers[c].bad;
    }
    if (bad)
        fprintf(stderr, "loadgen: FAILED: %llu bad answers (warm-up included); the first differs "
                        "from the %s at byte %ld\n", (unsigned long long)bad,
                echo ? "request" : "reference answer", first_bad);

    FILE *out = fopen(argv[10], "wb");
    if (out == NULL)
        return 2;
    uint64_t count = (uint64_t)connections * (uint64_t)requests;
    int write_failed = write_u64(out, finished_ns - started_ns) |
              write_u64(out, cpu_after_ns - cpu_before_ns) | write_u64(out, failures) |
              write_u64(out, count);
    for (int c = 0; c < connections; c++)
        write_failed |= fwrite(workers[c].latencies, sizeof(uint64_t), (size_t)requests, out) !=
               (size_t)requests;
    write_failed |= fclose(out);
    return write_failed ? 2 : !all_ok ? 1 : bad ? 3 : 0;
}
