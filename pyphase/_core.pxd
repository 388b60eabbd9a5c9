# C declarations of Phase's job core (csrc/phase_core.h), for the binding in _core.pyx.
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t
from libc.stdlib cimport malloc

cdef extern from "phase_core.h" nogil:
    ctypedef enum phase_status:
        PHASE_OK
        PHASE_STATUS_COUNT

    const char *phase_status_name(phase_status status)

    ctypedef struct phase_limits:
        uint64_t memory_bytes
        uint64_t fuel
        uint64_t timeout_ms
        uint64_t output_bytes
        uint32_t stack_bytes

    void phase_limits_default(phase_limits *limits)

    ctypedef struct phase_wasm_info:
        int has_memory
        uint32_t mem_initial_pages
        int mem_has_max
        uint32_t mem_max_pages
        uint32_t num_imported_functions
        uint32_t num_defined_functions
        uint32_t num_types
        uint32_t num_exports
        int has_start

    ctypedef struct phase_module:
        uint8_t *bytes
        size_t len
        uint8_t hash[32]
        phase_wasm_info info
        uint64_t wasi_imports

    phase_module *phase_module_new(const uint8_t *bytes, size_t len, char *err, size_t errlen)
    void phase_module_free(phase_module *module)

    ctypedef struct phase_preopen:
        int fd
        const char *guest
        int readonly

    enum:
        PHASE_MAX_PREOPENS
        PHASE_MAX_FDS

    ctypedef struct phase_job_spec:
        const phase_module *module
        const char *entry
        const char *const *argv
        uint32_t argc
        const char *const *envp
        uint32_t envc
        const uint8_t *input
        size_t input_len
        phase_limits limits
        int deterministic
        uint8_t seed[32]
        const phase_preopen *preopens
        uint32_t npreopens

    ctypedef struct phase_result:
        phase_status status
        int32_t exit_code
        char message[256]
        uint8_t *out
        size_t out_len
        uint8_t *err
        size_t err_len
        uint64_t fuel_used
        uint64_t wall_us
        uint64_t memory_peak_bytes
        uint8_t module_hash[32]
        uint8_t input_hash[32]
        uint8_t stdout_hash[32]
        uint8_t stderr_hash[32]
        int fs_unavailable

    int phase_job_run(const phase_job_spec *spec, phase_result *result)
    void phase_result_clear(phase_result *result)

    ctypedef struct phase_wasi_function:
        const char *name
        const char *signature
        int implemented
    uint32_t phase_wasi_count()
    const phase_wasi_function *phase_wasi_function_at(uint32_t index)

    const char *PHASE_RUNTIME_NAME
    const char *PHASE_RUNTIME_VERSION

cdef extern from "phase_crypto.h" nogil:
    int phase_crypto_init()
    void phase_sha256(const void *buf, size_t len, uint8_t *out)
    int phase_ed25519_verify(const uint8_t *sig, const uint8_t *msg, size_t msg_len, const uint8_t *pk)


cdef inline tuple result_tuple(phase_result *res, tuple status_names):
    """A job's result as the bindings hand it to Python (pyphase.runtime / pyphase.sandbox build Result from it):
    (status, exit_code, message, stdout, stderr, fuel_used, wall_us, memory_peak,
     module_sha256, input_sha256, stdout_sha256, stderr_sha256, fs_unavailable)."""
    return (
        status_names[<int> res.status],
        res.exit_code,
        res.message.decode("utf-8", "replace"),
        PyBytes_FromStringAndSize(<char *> res.out, res.out_len) if res.out_len else b"",
        PyBytes_FromStringAndSize(<char *> res.err, res.err_len) if res.err_len else b"",
        res.fuel_used,
        res.wall_us,
        res.memory_peak_bytes,
        PyBytes_FromStringAndSize(<char *> res.module_hash, 32),
        PyBytes_FromStringAndSize(<char *> res.input_hash, 32),
        PyBytes_FromStringAndSize(<char *> res.stdout_hash, 32),
        PyBytes_FromStringAndSize(<char *> res.stderr_hash, 32),
        bool(res.fs_unavailable),
    )


cdef inline const uint8_t *view_ptr(const uint8_t[::1] view):
    """The first byte of a buffer, or NULL for an empty one (indexing an empty view raises)."""
    return &view[0] if view.shape[0] else NULL


cdef inline char **cstring_array(list items, list keep) except? NULL:
    """A malloc'd array of the bytes objects in ``items`` (kept alive in ``keep``) for argv/envp; NULL if empty."""
    cdef Py_ssize_t n = len(items), k
    if n == 0:
        return NULL
    cdef char **arr = <char **> malloc(n * sizeof(char *))
    if arr is NULL:
        raise MemoryError()
    for k in range(n):
        b = items[k]
        keep.append(b)
        arr[k] = <char *> b
    return arr


cdef inline phase_preopen *preopen_array(list preopens) except? NULL:
    """A malloc'd array of (fd, guest name bytes, readonly) tuples for phase_job_spec; NULL if empty. The names
    must stay alive (they are the tuples' bytes)."""
    cdef Py_ssize_t n = len(preopens), k
    if n == 0:
        return NULL
    if n > PHASE_MAX_PREOPENS:
        raise ValueError(f"at most {PHASE_MAX_PREOPENS} preopened directories")
    cdef phase_preopen *arr = <phase_preopen *> malloc(n * sizeof(phase_preopen))
    if arr is NULL:
        raise MemoryError()
    for k in range(n):
        fd, guest, readonly = preopens[k]
        arr[k].fd = fd
        arr[k].guest = <const char *> (<bytes> guest)
        arr[k].readonly = 1 if readonly else 0
    return arr
