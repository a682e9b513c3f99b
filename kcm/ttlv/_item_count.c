/* kcm.ttlv._item_count: how many TTLV items a message holds, counted in C.
 *
 * count(data: bytes, most: int, max_depth: int) -> int
 *
 * Walks the one item that begins ``data`` and everything inside its Structures, by the
 * lengths in their headers, and returns how many items it holds (itself included), counting
 * no further than ``most + 1``. It reads only headers: a value is skipped by its padded
 * length. -1: the bytes cannot be walked that far (a header cut short, a length that
 * overruns its container, Structures nested deeper than ``max_depth``); the decoder that
 * reads them next says what is wrong. kcm.ttlv.item_count holds the Python reference it
 * must agree with (tests/unit/test_item_count.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* The deepest max_depth taken (kcm.ttlv.item_count.MAX_DEPTH_LIMIT). */
#define MAX_DEPTH_LIMIT 256

static inline uint32_t u32_at(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Count the items from pos to end (siblings, and what their Structures hold) into *count,
 * stopping once it is over most. 0, or -1 when the bytes cannot be walked. */
static int walk(const unsigned char *data, int64_t pos, int64_t end, int depth,
                long long most, long long *count) {
    while (pos < end) {
        if (pos + 8 > end)
            return -1;
        uint32_t head = u32_at(data + pos), length = u32_at(data + pos + 4);
        int64_t value = pos + 8;
        if (++*count > most)
            return 0;
        if ((head & 0xFF) == 0x01) {  /* a Structure: its content is items */
            int64_t stop = value + (int64_t)length;
            if (stop > end || depth <= 0)
                return -1;
            if (walk(data, value, stop, depth - 1, most, count) < 0)
                return -1;
            if (*count > most)
                return 0;
            pos = stop;
        } else {
            int64_t stop = value + (((int64_t)length + 7) & ~(int64_t)7);
            if (stop > end)
                return -1;
            pos = stop;
        }
    }
    return 0;
}

static PyObject *count(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_CheckExact(args[0]) || !PyLong_Check(args[1])
            || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "count(data: bytes, most: int, max_depth: int)");
        return NULL;
    }
    long long most = PyLong_AsLongLong(args[1]);
    if (most == -1 && PyErr_Occurred())
        return NULL;
    long depth = PyLong_AsLong(args[2]);
    if (depth == -1 && PyErr_Occurred())
        return NULL;
    /* The walk recurses once a level: bounded here (and as the Python walk bounds it). */
    if (depth < 0 || depth > MAX_DEPTH_LIMIT) {
        PyErr_SetString(PyExc_ValueError, "max_depth must be from 0 to 256");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    int64_t size = PyBytes_GET_SIZE(args[0]);
    long long found = 0;
    if (size < 8)
        return PyLong_FromLong(-1);
    /* One item: the message; what follows it is the decoder's to refuse. */
    uint32_t length = u32_at(data + 4);
    int64_t end = 8 + (int64_t)(((u32_at(data) & 0xFF) == 0x01) ? length
                                : (((int64_t)length + 7) & ~(int64_t)7));
    if (end > size)
        return PyLong_FromLong(-1);
    if (walk(data, 0, end, (int)depth + 1, most, &found) < 0)
        return PyLong_FromLong(-1);
    return PyLong_FromLongLong(found);
}

static PyMethodDef methods[] = {
    {"count", (PyCFunction)(void (*)(void))count, METH_FASTCALL,
     "count(data, most, max_depth): the items the message holds, up to most + 1; -1 if the "
     "bytes cannot be walked (see kcm.ttlv.item_count)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kcm.ttlv._item_count",
    "How many TTLV items a message holds, counted in C (kcm.ttlv.item_count).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__item_count(void) { return PyModule_Create(&module); }
