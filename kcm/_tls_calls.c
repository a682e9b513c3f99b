/* kcm._tls_calls: the OpenSSL calls of a request's path through kcm.eager_tls, one C call
 * for each direction.
 *
 * kcm.eager_tls, once a connection's handshake is done, makes the calls that every request
 * and answer take itself instead of through pyOpenSSL's methods: into the receive memory
 * BIO, SSL_read, SSL_write, out of the send memory BIO. Made through cffi they are four to
 * six calls, each with its own argument conversion, buffer allocation and copy. Here they
 * are two: receive (BIO_write, then one SSL_read, then whether more is waiting) and send
 * (SSL_write a record at a time, then everything the send BIO holds, sent on the socket
 * when kcm.eager_tls says nothing is queued before it). What the calls are is unchanged, and so is everything around them: anything that does not succeed at once is
 * reported back as OpenSSL's return value, and kcm.eager_tls hands it to pyOpenSSL and
 * Twisted exactly as before (tests/unit/test_eager_tls.py runs its cases with and without
 * this module).
 *
 * The OpenSSL functions are those of the binding pyOpenSSL uses (cryptography's, whose
 * OpenSSL is linked into it and exports no symbols): their addresses are given once by
 * kcm.eager_tls (configure), from that binding's cffi objects. The SSL and BIO pointers are
 * given per call, as integers, by kcm.eager_tls, which holds the pyOpenSSL Connection that
 * owns them for as long as it passes them, and the socket's descriptor, read from the
 * open socket just before the call. The GIL is held throughout: the calls work on memory,
 * and the one system call, a non-blocking send, does not wait.
 *
 * configure(bio_write, bio_read, bio_get_mem_data, ssl_read, ssl_write, ssl_pending)
 * receive(ssl, into, data: bytes) -> (plaintext: bytes, code: int)
 * send(ssl, out, data: bytes, fd: int) -> (written: int, records: bytes)
 * take(out) -> bytes
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <sys/socket.h>

typedef int (*bio_io_fn)(void *, void *, int);
typedef long (*bio_mem_fn)(void *, char **);
typedef int (*ssl_io_fn)(void *, void *, int);
typedef int (*ssl_pending_fn)(void *);

static bio_io_fn BIO_write_, BIO_read_;
static bio_mem_fn BIO_get_mem_data_;
static ssl_io_fn SSL_read_, SSL_write_;
static ssl_pending_fn SSL_pending_;

/* Plaintext taken out of OpenSSL by one SSL_read (a TLS record holds at most 16 KiB). */
#define RECEIVE_CHUNK 32768
/* Plaintext handed to OpenSSL by one SSL_write: one TLS record. */
#define RECORD 16384

static int configured(void) {
    if (BIO_write_ && BIO_read_ && BIO_get_mem_data_ && SSL_read_ && SSL_write_ && SSL_pending_)
        return 1;
    PyErr_SetString(PyExc_RuntimeError, "kcm._tls_calls is not configured");
    return 0;
}

static int pointer(PyObject *value, void **out) {
    uintptr_t address = (uintptr_t)PyLong_AsUnsignedLongLong(value);
    if (PyErr_Occurred())
        return 0;
    if (!address) {
        PyErr_SetString(PyExc_ValueError, "null pointer");
        return 0;
    }
    *out = (void *)address;
    return 1;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *values[6];
    void *addresses[6];
    if (!PyArg_ParseTuple(args, "OOOOOO", &values[0], &values[1], &values[2], &values[3],
                          &values[4], &values[5]))
        return NULL;
    for (int i = 0; i < 6; i++)
        if (!pointer(values[i], &addresses[i]))
            return NULL;
    BIO_write_ = (bio_io_fn)addresses[0];
    BIO_read_ = (bio_io_fn)addresses[1];
    BIO_get_mem_data_ = (bio_mem_fn)addresses[2];
    SSL_read_ = (ssl_io_fn)addresses[3];
    SSL_write_ = (ssl_io_fn)addresses[4];
    SSL_pending_ = (ssl_pending_fn)addresses[5];
    Py_RETURN_NONE;
}

/* The bytes the memory BIO `bio` holds. */
static long buffered(void *bio) {
    char *unused;
    return BIO_get_mem_data_(bio, &unused);
}

/* receive(ssl, into, data): `data` (received from the peer; may be empty) into the memory
 * BIO `into`, then one SSL_read. Returns (plaintext, 1) when nothing more can be read now
 * (SSL holds no decrypted bytes and `into` none unread), (plaintext, 2) when more may be,
 * and (b"", r) with SSL_read's return value r <= 0 when it read nothing: the caller asks
 * OpenSSL why (SSL_get_error) at once, as pyOpenSSL's recv would. MemoryError when the
 * memory BIO cannot take `data` (it takes everything or fails). */
static PyObject *receive(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ssl_value, *into_value;
    Py_buffer data;
    void *ssl, *into;
    if (!PyArg_ParseTuple(args, "OOy*", &ssl_value, &into_value, &data))
        return NULL;
    PyObject *result = NULL;
    if (!configured() || !pointer(ssl_value, &ssl) || !pointer(into_value, &into))
        goto done;
    if (data.len > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "data too large");
        goto done;
    }
    if (data.len > 0 && BIO_write_(into, data.buf, (int)data.len) != (int)data.len) {
        PyErr_NoMemory();
        goto done;
    }
    /* (the GIL is held from here to the copy: nothing else uses the buffer meanwhile) */
    static char buffer[RECEIVE_CHUNK];
    int got = SSL_read_(ssl, buffer, RECEIVE_CHUNK);
    if (got <= 0) {
        result = Py_BuildValue("(y#i)", "", (Py_ssize_t)0, got);
        goto done;
    }
    int more = SSL_pending_(ssl) > 0 || buffered(into) > 0;
    result = Py_BuildValue("(y#i)", buffer, (Py_ssize_t)got, more ? 2 : 1);
done:
    PyBuffer_Release(&data);
    return result;
}

/* Records read out of the send BIO to be sent at once: one write's usual size. */
#define SEND_BUFFER 65536

/* The records the memory BIO `out` holds, sent on the socket `fd` (non-blocking, as
 * Twisted's are) as far as it takes them now when `fd` is not negative; what was not sent,
 * as bytes (empty when the socket took everything; all of them when `fd` is negative). A
 * send that fails (a full socket, a connection gone) leaves the rest to the caller, who
 * queues it in the TCP transport: Twisted's own send then meets the same condition and
 * deals with it. */
static PyObject *send_on(void *out, int fd) {
    long waiting = buffered(out);
    if (waiting <= 0)
        return PyBytes_FromStringAndSize(NULL, 0);
    if (waiting > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "send buffer too large");
        return NULL;
    }
    /* (the GIL is held from the read to the copy of the rest: nothing else uses the buffer) */
    static char small[SEND_BUFFER];
    PyObject *large = NULL;
    char *buffer = small;
    if (waiting > SEND_BUFFER) {
        large = PyBytes_FromStringAndSize(NULL, waiting);
        if (large == NULL)
            return NULL;
        buffer = PyBytes_AS_STRING(large);
    }
    int got = BIO_read_(out, buffer, (int)waiting);
    if (got != (int)waiting) { /* a memory BIO gives what it says it holds */
        Py_XDECREF(large);
        PyErr_Format(PyExc_RuntimeError, "BIO_read gave %d of %ld bytes", got, waiting);
        return NULL;
    }
    long sent = 0;
    while (fd >= 0 && sent < waiting) {
        ssize_t n = send(fd, buffer + sent, (size_t)(waiting - sent), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        sent += n;
    }
    if (large != NULL && sent == 0)
        return large; /* all of it, as read */
    PyObject *rest = PyBytes_FromStringAndSize(buffer + sent, waiting - sent);
    Py_XDECREF(large);
    return rest;
}

/* send(ssl, out, data, fd): `data` to SSL_write a record at a time, stopping at the first
 * call that does not succeed at once; then the records the memory BIO `out` holds: sent
 * on the socket `fd` when it is not negative (send_on), else all returned. Returns (bytes
 * of `data` written, records not sent): the caller hands what was not written to the
 * stock path, which repeats that SSL_write with the same bytes, as OpenSSL requires. */
static PyObject *send_(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ssl_value, *out_value;
    Py_buffer data;
    void *ssl, *out;
    int fd;
    if (!PyArg_ParseTuple(args, "OOy*i", &ssl_value, &out_value, &data, &fd))
        return NULL;
    PyObject *result = NULL;
    if (!configured() || !pointer(ssl_value, &ssl) || !pointer(out_value, &out))
        goto done;
    Py_ssize_t sent = 0;
    while (sent < data.len) {
        Py_ssize_t chunk = data.len - sent < RECORD ? data.len - sent : RECORD;
        int written = SSL_write_(ssl, (char *)data.buf + sent, (int)chunk);
        if (written <= 0)
            break;
        sent += written;
    }
    PyObject *records = send_on(out, fd);
    if (records != NULL)
        result = Py_BuildValue("(nN)", sent, records);
done:
    PyBuffer_Release(&data);
    return result;
}

/* take(out): everything the memory BIO `out` holds, as bytes. */
static PyObject *take(PyObject *self, PyObject *out_value) {
    (void)self;
    void *out;
    if (!configured() || !pointer(out_value, &out))
        return NULL;
    return send_on(out, -1);
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "Set the OpenSSL functions' addresses (once)."},
    {"receive", receive, METH_VARARGS, "Received bytes in, one SSL_read's plaintext out."},
    {"send", send_, METH_VARARGS, "Plaintext in (SSL_write), the records sent or out."},
    {"take", take, METH_O, "Everything a memory BIO holds."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kcm._tls_calls",
    "The OpenSSL calls of a request's path through kcm.eager_tls, one C call each way.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__tls_calls(void) { return PyModule_Create(&module); }
