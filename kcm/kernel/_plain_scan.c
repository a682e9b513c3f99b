/* kcm.kernel._plain_scan: the structure of a plain request, read in one C call.
 *
 * kcm.kernel.plain_messages.read_request reads a plain request (a Request Message whose
 * batch items are Encrypt, Decrypt, Get or Create, nothing unusual) straight from its bytes.
 * This module does the part of that reading that walks the bytes: the header, each batch
 * item's Operation and Unique Batch Item ID, and each payload's fields in the table's
 * order, with every length, bound, padding and order check of the Python reader. What it
 * returns is made into typed request payloads by plain_messages, which also owns every
 * table used here (the field table is an argument): the decisions stay in one place, and a
 * property test holds this module to the Python reader it replaces, byte for byte
 * (tests/unit/test_plain_scan.py).
 *
 * It is *sure or silent*, like the reader: anything it does not expect raises the one
 * exception it is given (NOT_PLAIN), and the caller takes the general decoder. It reads
 * only within the bytes object it is given; every offset is checked against the end of
 * the enclosing item before it is read (offsets are 64-bit; TTLV lengths are 32-bit).
 *
 * configure(*heads) is called once, with the wire headers of the header items read (their
 * tags are plain_messages' to name).
 *
 * scan(wire: bytes, fields: dict[int, tuple[tuple[int, str, int], ...]],
 *      versions: frozenset[tuple[int, int]], create_operation: int, not_plain: Exception,
 *      max_items: int)
 *   -> ((major, minor), maximum_response_size | None,
 *       [(operation, batch_id | None, values)])
 *
 * A Batch Count over ``max_items`` (when it is not negative) is not plain, and no item is
 * read past the Batch Count: the work of one call is bounded by the header's count, and the
 * count by the caller's limit, however many items the bytes hold.
 *
 * ``fields``: per operation, the payload's fields in the specification's order, as
 * (wire header: tag << 8 | type, name, kind); kind 0: a Byte String (bytes), 1: a Text
 * String (str, strict UTF-8), 2: an Integer or Enumeration (int), 3: a Structure (its
 * (start, end) offsets, decoded by the caller). ``values`` is the dict of the fields
 * present, by name; for ``create_operation`` it is (payload_at, content_at, payload_end),
 * read by the caller.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* The wire headers (tag << 8 | type) of the items read here, given once by
 * plain_messages (configure), which defines them; zero until then (nothing matches). */
static uint32_t ITEM_REQUEST_MESSAGE, ITEM_REQUEST_HEADER, ITEM_PROTOCOL_VERSION,
    ITEM_VERSION_MAJOR, ITEM_VERSION_MINOR, ITEM_MAXIMUM_RESPONSE_SIZE, ITEM_BATCH_COUNT,
    ITEM_BATCH_ITEM, ITEM_OPERATION, ITEM_UNIQUE_BATCH_ITEM_ID, ITEM_REQUEST_PAYLOAD;

enum { KIND_BYTES = 0, KIND_TEXT = 1, KIND_INTEGER = 2, KIND_STRUCTURE = 3 };

typedef struct {
    const unsigned char *data;
    int64_t size;
    PyObject *not_plain;
} Wire;

static inline uint32_t u32_at(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Raise ``not_plain``; returns -1 for the caller to return. */
static int refuse(const Wire *w) {
    PyErr_SetObject((PyObject *)Py_TYPE(w->not_plain), w->not_plain);
    return -1;
}

/* The Structure ``expected`` at *pos (within end): *pos moves to its content, *item_end
 * is where it ends. */
static int structure_at(const Wire *w, int64_t *pos, int64_t end, uint32_t expected,
                        int64_t *item_end) {
    if (*pos + 8 > end)
        return refuse(w);
    uint32_t head = u32_at(w->data + *pos), length = u32_at(w->data + *pos + 4);
    if (head != expected || (length & 7) || *pos + 8 + (int64_t)length > end)
        return refuse(w);
    *item_end = *pos + 8 + (int64_t)length;
    *pos += 8;
    return 0;
}

/* The Integer or Enumeration ``expected`` at *pos (within end), zero padding checked. */
static int integer_at(const Wire *w, int64_t *pos, int64_t end, uint32_t expected,
                      int64_t *value) {
    if (*pos + 16 > end)
        return refuse(w);
    const unsigned char *p = w->data + *pos;
    uint32_t head = u32_at(p), length = u32_at(p + 4), raw = u32_at(p + 8);
    uint32_t padding = u32_at(p + 12);
    if (head != expected || length != 4 || padding)
        return refuse(w);
    *value = (head & 0xFF) == 0x05 ? (int64_t)raw : (int64_t)(int32_t)raw;
    *pos += 16;
    return 0;
}

/* A Text or Byte String's content at *pos (within end), zero padding checked: *start and
 * *length say where; *pos moves past its padding. The caller has checked *pos + 8 <= end. */
static int string_at(const Wire *w, int64_t *pos, int64_t end, int64_t *start,
                     int64_t *length) {
    int64_t n = u32_at(w->data + *pos + 4);
    int64_t after = *pos + 8 + ((n + 7) & ~(int64_t)7);
    if (after > end)
        return refuse(w);
    for (int64_t i = *pos + 8 + n; i < after; i++)
        if (w->data[i])
            return refuse(w);
    *start = *pos + 8;
    *length = n;
    *pos = after;
    return 0;
}

/* The payload's fields from pos to end, in the order of ``fields``, into a new dict. */
static PyObject *payload_values(const Wire *w, int64_t pos, int64_t end, PyObject *fields) {
    Py_ssize_t count = PyTuple_GET_SIZE(fields), index = 0;
    PyObject *values = PyDict_New();
    if (values == NULL)
        return NULL;
    while (pos < end) {
        int has_head = pos + 8 <= end;
        uint32_t head = has_head ? u32_at(w->data + pos) : 0;
        PyObject *field = NULL;
        long field_head = 0;
        while (index < count) {
            field = PyTuple_GET_ITEM(fields, index);
            field_head = PyLong_AsLong(PyTuple_GET_ITEM(field, 0));
            if (field_head == -1 && PyErr_Occurred())
                goto failed;
            if (has_head && (uint32_t)field_head == head)
                break;
            index++;
        }
        if (index == count) {
            refuse(w);  /* unexpected, repeated or out of order */
            goto failed;
        }
        index++;
        PyObject *name = PyTuple_GET_ITEM(field, 1);
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(field, 2));
        PyObject *value = NULL;
        int64_t start, length, number;
        if (kind == KIND_INTEGER) {
            if (integer_at(w, &pos, end, head, &number) < 0)
                goto failed;
            value = PyLong_FromLongLong(number);
        } else if (kind == KIND_STRUCTURE) {
            int64_t after = pos + 8 + (int64_t)u32_at(w->data + pos + 4);
            if (after > end) {
                refuse(w);
                goto failed;
            }
            value = Py_BuildValue("(LL)", (long long)pos, (long long)after);
            pos = after;
        } else {
            if (string_at(w, &pos, end, &start, &length) < 0)
                goto failed;
            value = kind == KIND_TEXT
                ? PyUnicode_DecodeUTF8((const char *)w->data + start, length, "strict")
                : PyBytes_FromStringAndSize((const char *)w->data + start, length);
        }
        if (value == NULL)
            goto failed;
        int stored = PyDict_SetItem(values, name, value);
        Py_DECREF(value);
        if (stored < 0)
            goto failed;
    }
    return values;
failed:
    Py_DECREF(values);
    return NULL;
}

static PyObject *scan(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyBytes_CheckExact(args[0]) || !PyDict_Check(args[1])
            || !PyAnySet_Check(args[2]) || !PyLong_Check(args[3]) || !PyLong_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "scan(wire: bytes, fields: dict, versions: frozenset, "
                        "create_operation: int, not_plain: Exception, max_items: int)");
        return NULL;
    }
    long long max_items = PyLong_AsLongLong(args[5]);  /* < 0: no limit */
    if (max_items == -1 && PyErr_Occurred())
        return NULL;
    Wire w = {(const unsigned char *)PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]),
              args[4]};
    PyObject *fields_by_operation = args[1], *versions = args[2];
    long create_operation = PyLong_AsLong(args[3]);
    if (create_operation == -1 && PyErr_Occurred())
        return NULL;
    int64_t size = w.size, pos = 0, header_end, version_end, major, minor, batch_count;
    if (size < 8)
        return refuse(&w), NULL;
    if (u32_at(w.data) != ITEM_REQUEST_MESSAGE || 8 + (int64_t)u32_at(w.data + 4) != size)
        return refuse(&w), NULL;
    pos = 8;
    if (structure_at(&w, &pos, size, ITEM_REQUEST_HEADER, &header_end) < 0
            || structure_at(&w, &pos, header_end, ITEM_PROTOCOL_VERSION, &version_end) < 0
            || integer_at(&w, &pos, version_end, ITEM_VERSION_MAJOR, &major) < 0
            || integer_at(&w, &pos, version_end, ITEM_VERSION_MINOR, &minor) < 0)
        return NULL;
    if (pos != version_end)
        return refuse(&w), NULL;
    PyObject *version = Py_BuildValue("(LL)", (long long)major, (long long)minor);
    if (version == NULL)
        return NULL;
    PyObject *maximum_response_size = NULL, *items = NULL;
    int known = PySet_Contains(versions, version);
    if (known <= 0) {
        if (known == 0)
            refuse(&w);
        goto failed;
    }
    if (pos + 8 <= size && u32_at(w.data + pos) == ITEM_MAXIMUM_RESPONSE_SIZE) {
        int64_t maximum;
        if (integer_at(&w, &pos, header_end, ITEM_MAXIMUM_RESPONSE_SIZE, &maximum) < 0)
            goto failed;
        maximum_response_size = PyLong_FromLongLong(maximum);
        if (maximum_response_size == NULL)
            goto failed;
    }
    if (integer_at(&w, &pos, header_end, ITEM_BATCH_COUNT, &batch_count) < 0)
        goto failed;
    if (pos != header_end || (max_items >= 0 && batch_count > max_items)) {
        refuse(&w);
        goto failed;
    }
    items = PyList_New(0);
    if (items == NULL)
        goto failed;
    while (pos < size) {
        int64_t item_end, operation, payload_end;
        if (PyList_GET_SIZE(items) >= batch_count) {  /* never read past the Batch Count */
            refuse(&w);
            goto failed;
        }
        if (structure_at(&w, &pos, size, ITEM_BATCH_ITEM, &item_end) < 0
                || integer_at(&w, &pos, item_end, ITEM_OPERATION, &operation) < 0)
            goto failed;
        PyObject *key = PyLong_FromLongLong(operation);
        if (key == NULL)
            goto failed;
        PyObject *fields = PyDict_GetItemWithError(fields_by_operation, key);  /* borrowed */
        Py_DECREF(key);
        if (fields == NULL) {
            if (!PyErr_Occurred())
                refuse(&w);
            goto failed;
        }
        if (!PyTuple_Check(fields)) {
            PyErr_SetString(PyExc_TypeError, "a field table is a tuple");
            goto failed;
        }
        PyObject *batch_id = Py_None;
        Py_INCREF(batch_id);
        if (pos + 8 <= item_end && u32_at(w.data + pos) == ITEM_UNIQUE_BATCH_ITEM_ID) {
            int64_t start, length;
            Py_DECREF(batch_id);
            if (string_at(&w, &pos, item_end, &start, &length) < 0)
                goto failed;
            batch_id = PyBytes_FromStringAndSize((const char *)w.data + start, length);
            if (batch_id == NULL)
                goto failed;
        }
        int64_t payload_at = pos;
        PyObject *values;
        if (structure_at(&w, &pos, item_end, ITEM_REQUEST_PAYLOAD, &payload_end) < 0
                || (payload_end != item_end && refuse(&w) < 0)) {
            Py_DECREF(batch_id);
            goto failed;
        }
        if (operation == create_operation)
            values = Py_BuildValue("(LLL)", (long long)payload_at, (long long)pos,
                                   (long long)payload_end);
        else
            values = payload_values(&w, pos, payload_end, fields);
        if (values == NULL) {
            Py_DECREF(batch_id);
            goto failed;
        }
        PyObject *entry = Py_BuildValue("(LNN)", (long long)operation, batch_id, values);
        if (entry == NULL)
            goto failed;
        int appended = PyList_Append(items, entry);
        Py_DECREF(entry);
        if (appended < 0)
            goto failed;
        pos = item_end;
    }
    if (PyList_GET_SIZE(items) == 0 || batch_count != PyList_GET_SIZE(items)) {
        refuse(&w);
        goto failed;
    }
    if (maximum_response_size == NULL) {
        maximum_response_size = Py_None;
        Py_INCREF(Py_None);
    }
    return Py_BuildValue("(NNN)", version, maximum_response_size, items);
failed:
    Py_DECREF(version);
    Py_XDECREF(maximum_response_size);
    Py_XDECREF(items);
    return NULL;
}

static PyObject *configure(PyObject *Py_UNUSED(module), PyObject *args) {
    unsigned int h[11];
    if (!PyArg_ParseTuple(args, "IIIIIIIIIII", &h[0], &h[1], &h[2], &h[3], &h[4], &h[5],
                          &h[6], &h[7], &h[8], &h[9], &h[10]))
        return NULL;
    ITEM_REQUEST_MESSAGE = h[0];
    ITEM_REQUEST_HEADER = h[1];
    ITEM_PROTOCOL_VERSION = h[2];
    ITEM_VERSION_MAJOR = h[3];
    ITEM_VERSION_MINOR = h[4];
    ITEM_MAXIMUM_RESPONSE_SIZE = h[5];
    ITEM_BATCH_COUNT = h[6];
    ITEM_BATCH_ITEM = h[7];
    ITEM_OPERATION = h[8];
    ITEM_UNIQUE_BATCH_ITEM_ID = h[9];
    ITEM_REQUEST_PAYLOAD = h[10];
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(request_message, request_header, protocol_version, version_major, "
     "version_minor, maximum_response_size, batch_count, batch_item, operation, "
     "unique_batch_item_id, request_payload): the wire headers of the items read."},
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "The structure of a plain request (see kcm.kernel.plain_messages.read_request)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kcm.kernel._plain_scan",
    "The structure of a plain request, read in one C call (kcm.kernel.plain_messages).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__plain_scan(void) { return PyModule_Create(&module); }
