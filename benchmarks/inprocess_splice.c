/* The C relay's splice (benchmarks/native_relay.c), run by a thread inside a Python process.
 *
 * benchmarks/forward_floor_bench.py's "in-process" path: a Python relay (Twisted, the
 * gateway's TLS transport) accepts the client, makes the TLS connection to the core, relays
 * the first request itself, and then hands both connections to kcm_splice_start, which
 * copies every later byte between them on a thread of its own: the same loop as the C
 * relay's (poll on the two sockets, SSL_read what one holds, SSL_write it to the other),
 * with no Python on the way. It answers one question: does a forward path in native code
 * cost what the separate C relay costs, when it runs inside the Python process?
 *
 * No OpenSSL headers and no libssl: the three OpenSSL functions are those of the binding
 * pyOpenSSL uses (cryptography's, whose OpenSSL exports no symbols), given once as
 * addresses (kcm_splice_configure). The SSL objects must read and write their sockets
 * themselves (SSL_set_fd, done by the caller on a blocking socket) and hold nothing
 * unread. The thread ends when either connection does; the caller keeps the SSL objects
 * and the sockets alive for the life of the process. A benchmark's tool, not a product's.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

typedef int (*ssl_io_fn)(void *, void *, int);
typedef int (*ssl_pending_fn)(void *);

static ssl_io_fn ssl_read, ssl_write;
static ssl_pending_fn ssl_pending;

struct pair {
    int fd[2];
    void *ssl[2];
};

int kcm_splice_configure(void *read, void *write, void *pending) {
    if (read == NULL || write == NULL || pending == NULL)
        return -1;
    ssl_read = (ssl_io_fn)read;
    ssl_write = (ssl_io_fn)write;
    ssl_pending = (ssl_pending_fn)pending;
    return 0;
}

/* Everything `from` has decrypted now (at least one read), written whole to `to`; 0 when
 * the connection it reads from is done. As native_relay.c's copy. */
static int copy(void *from, void *to) {
    char buffer[16384];
    do {
        int got = ssl_read(from, buffer, sizeof buffer);
        if (got <= 0) {
            fprintf(stderr, "splice: SSL_read gave %d (errno %d)\n", got, errno);
            return 0;
        }
        for (int sent = 0; sent < got;) {
            int n = ssl_write(to, buffer + sent, got - sent);
            if (n <= 0)
                return 0;
            sent += n;
        }
    } while (ssl_pending(from) > 0);
    return 1;
}

static void *splice(void *argument) {
    struct pair *pair = argument;
    struct pollfd fds[2] = {{.fd = pair->fd[0], .events = POLLIN},
                            {.fd = pair->fd[1], .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) && !copy(pair->ssl[0], pair->ssl[1]))
            break;
        if ((fds[1].revents & (POLLIN | POLLHUP | POLLERR)) && !copy(pair->ssl[1], pair->ssl[0]))
            break;
    }
    free(pair);
    return NULL;
}

/* Start the thread that splices (fd_a, ssl_a) and (fd_b, ssl_b); 0, or -1 when it could
 * not be started (nothing changed then). */
int kcm_splice_start(int fd_a, void *ssl_a, int fd_b, void *ssl_b) {
    if (ssl_read == NULL)
        return -1;
    struct pair *pair = malloc(sizeof *pair);
    if (pair == NULL)
        return -1;
    *pair = (struct pair){{fd_a, fd_b}, {ssl_a, ssl_b}};
    pthread_t thread;
    if (pthread_create(&thread, NULL, splice, pair) != 0) {
        free(pair);
        return -1;
    }
    pthread_detach(thread);
    return 0;
}
