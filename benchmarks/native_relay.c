/* A bare TLS relay in C and OpenSSL: the floor of forwarding without an interpreter.
 *
 * benchmarks/gateway_bench.py measures what kcm-gateway adds to a forwarded request against a
 * bare relay on the gateway's own Python transport. This one does the same splicing with no
 * Python at all, so that benchmarks/forward_floor_bench.py can say what a forward path
 * outside the interpreter could cost on the machine: it terminates each client's mutual TLS
 * (the server's certificate and key, clients verified against CA), opens a mutual-TLS
 * connection of its own to the upstream (kcm-core's KMIP port, as the application: CLIENT
 * certificate and key, the upstream verified against CA and NAME), and copies plaintext both
 * ways as it arrives. No KMIP, no framing, no multiplexing: one upstream connection and one
 * thread per client connection, blocking reads behind poll(), TCP_NODELAY both ways.
 *
 *   native_relay PORT CERT KEY CA UPSTREAM_PORT CLIENT_CERT CLIENT_KEY NAME
 *
 * It listens on 127.0.0.1:PORT and runs until killed. Built and run by
 * benchmarks/forward_floor_bench.py (OpenSSL's headers: Debian's libssl-dev).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static SSL_CTX *server_ctx, *client_ctx;
static int upstream_port;
static const char *upstream_name;

static void die(const char *what) {
    fprintf(stderr, "native_relay: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static void no_delay(int fd) {
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
}

/* Everything `ssl` has decrypted now (at least one read), written whole to `to`; 0 when
 * the connection it reads from is done. */
static int copy(SSL *from, SSL *to) {
    char buffer[16384];
    do {
        int got = SSL_read(from, buffer, sizeof buffer);
        if (got <= 0)
            return 0;
        for (int sent = 0; sent < got;) {
            int n = SSL_write(to, buffer + sent, got - sent);
            if (n <= 0)
                return 0;
            sent += n;
        }
    } while (SSL_pending(from) > 0);
    return 1;
}

static SSL *upstream(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(upstream_port)};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    no_delay(fd);
    SSL *ssl = SSL_new(client_ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, upstream_name);
    SSL_set1_host(ssl, upstream_name);
    if (SSL_connect(ssl) != 1) {
        SSL_free(ssl);
        close(fd);
        return NULL;
    }
    return ssl;
}

static void *serve(void *argument) {
    int fd = (int)(intptr_t)argument;
    no_delay(fd);
    SSL *client = SSL_new(server_ctx), *core = NULL;
    SSL_set_fd(client, fd);
    if (SSL_accept(client) == 1 && (core = upstream()) != NULL) {
        struct pollfd fds[2] = {{.fd = fd, .events = POLLIN},
                                {.fd = SSL_get_fd(core), .events = POLLIN}};
        for (;;) {
            if (poll(fds, 2, -1) < 0) {
                if (errno == EINTR)
                    continue;
                break;
            }
            if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) && !copy(client, core))
                break;
            if ((fds[1].revents & (POLLIN | POLLHUP | POLLERR)) && !copy(core, client))
                break;
        }
    }
    if (core != NULL) {
        int core_fd = SSL_get_fd(core);
        SSL_free(core);
        close(core_fd);
    }
    SSL_free(client);
    close(fd);
    return NULL;
}

static SSL_CTX *context(const SSL_METHOD *method, const char *cert, const char *key,
                        const char *ca) {
    SSL_CTX *ctx = SSL_CTX_new(method);
    if (ctx == NULL)
        die("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1 ||
        SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        die("certificates");
    return ctx;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: native_relay PORT CERT KEY CA UPSTREAM_PORT CLIENT_CERT "
                        "CLIENT_KEY NAME\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    server_ctx = context(TLS_server_method(), argv[2], argv[3], argv[4]);
    client_ctx = context(TLS_client_method(), argv[6], argv[7], argv[4]);
    upstream_port = atoi(argv[5]);
    upstream_name = argv[8];
    int listener = socket(AF_INET, SOCK_STREAM, 0), on = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 ||
        listen(listener, 64) != 0)
        die("listen");
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0)
            continue;
        pthread_t thread;
        if (pthread_create(&thread, NULL, serve, (void *)(intptr_t)fd) != 0) {
            close(fd);
            continue;
        }
        pthread_detach(thread);
    }
}
