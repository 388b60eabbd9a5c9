# Every C declaration the bindings use, in one place: the job core (csrc/phase_core.h, for _core.pyx), the
# sandbox (csrc/sandbox.h and sandbox_proto.h, for _sandbox.pyx), the spec-test support (csrc/phase_spec.h, for
# _spec.pyx); and the few helpers they share (result tuple, buffers, argv arrays, limits, return-code checks).
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport malloc
from libc.string cimport memcpy, memset

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

    enum:
        PHASE_WASM_PAGE

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
        uint32_t max_nesting_depth

    ctypedef struct phase_module:
        uint8_t *bytes
        size_t len
        uint8_t hash[32]
        phase_wasm_info info
        uint64_t wasi_imports

    phase_module *phase_module_new(const uint8_t *bytes, size_t len, char *err, size_t errlen)
    void phase_module_free(phase_module *module)
    enum:
        PHASE_MODULE_FACTS
    void phase_module_facts(const phase_module *module, uint64_t *facts)
    phase_module *phase_module_new_validated(const uint8_t *bytes, size_t len, const uint8_t *hash,
                                             const uint64_t *facts, char *err, size_t errlen)
    const char *PHASE_VALIDATOR_ID

    ctypedef struct phase_preopen:
        int fd
        const char *guest
        int readonly

    enum:
        PHASE_MAX_PREOPENS
        PHASE_MAX_FDS
        PHASE_FS_QUOTA_BLOCK
        PHASE_FS_LIMIT_BYTES
        PHASE_FS_LIMIT_FILES

    ctypedef struct phase_fs_quota:
        int enabled
        uint64_t max_bytes, max_files
        uint64_t used_bytes, used_files

    ctypedef int (*phase_output_sink)(void *ctx, int stream, const uint8_t *data, size_t n)
    ctypedef enum phase_engine:
        PHASE_ENGINE_WASM3
        PHASE_ENGINE_WASMTIME

    int phase_wasmtime_load(const char *path, char *err, size_t errlen)
    int phase_wasmtime_available()
    void phase_wasmtime_set_pooling(unsigned slots)
    int phase_wasmtime_compile(phase_module *pm, const phase_limits *limits, int deterministic, uint64_t *compile_us,
                               char *err, size_t errlen)
    int phase_wasmtime_is_compiled(phase_module *pm, const phase_limits *limits, int deterministic)
    int phase_wasmtime_serialize(phase_module *pm, const phase_limits *limits, int deterministic, uint8_t **out,
                                 size_t *out_len, char *err, size_t errlen)
    int phase_wasmtime_deserialize(phase_module *pm, const phase_limits *limits, int deterministic,
                                   const uint8_t *bytes, size_t len, char *err, size_t errlen)

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
        phase_output_sink output_sink
        void *output_ctx
        phase_engine engine
        phase_fs_quota quota

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
        uint64_t compile_us
        int fs_limit

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

cdef extern from "phase_wasmtime_api.h":
    const char *PHASE_WASMTIME_VERSION

cdef extern from "phase_wasmtime.h":
    unsigned PHASE_WASMTIME_POOL_SLOTS

cdef extern from "phase_crypto.h" nogil:
    int phase_crypto_init()
    void phase_sha256(const void *buf, size_t len, uint8_t *out)
    int phase_sha256_accelerated()
    int phase_ed25519_verify(const uint8_t *sig, const uint8_t *msg, size_t msg_len, const uint8_t *pk)

cdef extern from "phase_splice.h" nogil:
    ctypedef enum phase_splice_end:
        PHASE_SPLICE_CLOSED
        PHASE_SPLICE_BYTES
        PHASE_SPLICE_TIME
        PHASE_SPLICE_ERROR

    phase_splice_end phase_splice(int a, int b, uint64_t max_bytes, int64_t timeout_ms, uint64_t *carried)

cdef extern from "sandbox.h" nogil:
    int phase_sandbox_server_main(int argc, char **argv)
    int phase_sandbox_landlock_abi()

    enum:
        PHASE_SANDBOX_MAX_DEPTH

    ctypedef struct phase_sandbox_spare:
        int32_t pid
        uint32_t gen

    ctypedef struct phase_sandbox_slot:
        int sock
        uint32_t depth
        size_t shm_bytes
        phase_sandbox_spare spares[8]
        uint32_t nspares
        uint32_t gen
        int32_t pid
        uint64_t cache_seq
        uint64_t compile_seq
        int reuse
        int32_t last_wait_status
        int64_t last_maxrss_kb
        int64_t last_cpu_us
        uint64_t t_go_ns, t_ready_ns, t_woke_ns, t_confined_ns, t_ran_ns, t_done_ns

    ctypedef struct phase_sandbox_stop:
        int stopped
        uint32_t gen

    uint32_t phase_sandbox_stop_request(phase_sandbox_stop *stop)

    ctypedef struct phase_sandbox_job:
        const uint8_t *module_hash
        const uint8_t *module
        size_t module_len
        const uint8_t *input
        size_t input_len
        const char *entry
        const char *const *argv
        uint32_t argc
        const char *const *envp
        uint32_t envc
        phase_limits limits
        int deterministic
        uint8_t seed[32]
        const phase_preopen *preopens
        uint32_t npreopens
        phase_fs_quota quota
        uint32_t test_action
        uint64_t hard_timeout_ms
        uint32_t spin_us
        phase_output_sink output_sink
        void *output_ctx
        phase_sandbox_stop *stop
        phase_engine engine

    uint64_t phase_sandbox_job_shm_bytes(const phase_sandbox_job *job)
    int phase_sandbox_slot_open(phase_sandbox_slot *slot, int sock, const int *shm_fds, uint32_t depth, char *err,
                                size_t errlen)
    void phase_sandbox_slot_close(phase_sandbox_slot *slot)
    int phase_sandbox_slot_ready(phase_sandbox_slot *slot, int timeout_ms, char *err, size_t errlen)
    int phase_sandbox_slot_poll(phase_sandbox_slot *slot)
    int phase_sandbox_slot_renew(phase_sandbox_slot *slot, uint64_t compile_seq, int timeout_ms, char *err,
                                 size_t errlen)
    int phase_sandbox_slot_run(phase_sandbox_slot *slot, const phase_sandbox_job *job, phase_result *result,
                               char *err, size_t errlen)

cdef extern from "sandbox_proto.h" nogil:
    enum:
        SANDBOX_HEADER_BYTES
        SANDBOX_MIN_SHM_BYTES
        SANDBOX_TEST_NONE
        SANDBOX_TEST_FORBIDDEN_SYSCALL
        SANDBOX_TEST_SEGFAULT
        SANDBOX_TEST_SPIN
        SANDBOX_TEST_EXEC_MMAP
        SANDBOX_TEST_ALLOCATE
        SANDBOX_TEST_FORGE
        SANDBOX_TEST_SNOOP
        SANDBOX_TEST_OPEN_OUTSIDE
        SANDBOX_TEST_STREAM_FORGE
        SANDBOX_TEST_WRITE_PAST
        SANDBOX_TEST_TIMER
        SANDBOX_MSG_ADD
        SANDBOX_MSG_KILL
        SANDBOX_MSG_COMPILED
        SANDBOX_COMPILE_OK
        SANDBOX_COMPILE_FAILED
        SANDBOX_COMPILE_REFUSED
        SANDBOX_CODE_MAGIC

    ctypedef struct sandbox_msg:
        uint32_t type
        uint32_t gen
        int32_t pid
        int32_t wait_status
        uint64_t cache_seq
        int64_t maxrss_kb
        int64_t cpu_us
        uint32_t compile
        uint64_t compile_seq
        uint64_t code_len

    ctypedef struct sandbox_event:
        uint32_t type
        uint32_t compile
        uint8_t hash[32]
        int32_t status
        uint32_t has_code
        uint64_t compile_seq
        uint64_t compile_us
        char message[160]

    ctypedef struct sandbox_code_header:
        uint32_t magic
        uint32_t ok
        uint64_t len
        uint64_t compile_us

cdef extern from "phase_spec.h" nogil:
    ctypedef struct phase_spec_instance:
        pass
    ctypedef enum phase_spec_status:
        PHASE_SPEC_OK
        PHASE_SPEC_INVALID
        PHASE_SPEC_UNSUPPORTED
        PHASE_SPEC_UNLINKABLE
        PHASE_SPEC_TRAP
        PHASE_SPEC_ERROR
    ctypedef struct phase_spec_registry:
        const char *const *names
        phase_spec_instance *const *instances
        uint32_t count
    phase_spec_status phase_spec_validate(const uint8_t *bytes, size_t len, char *err, size_t errlen)
    phase_spec_status phase_spec_instantiate(const uint8_t *bytes, size_t len, const phase_spec_registry *registry,
                                             uint32_t stack_bytes, phase_spec_instance **out, char *err,
                                             size_t errlen)
    void phase_spec_free(phase_spec_instance *inst)
    int phase_spec_invoke(phase_spec_instance *inst, const char *name, size_t name_len, const uint64_t *args,
                          const char *arg_types, uint32_t nargs, uint64_t *results, char *result_types,
                          uint32_t results_cap, uint32_t *nresults, char *err, size_t errlen)
    int phase_spec_get_global(phase_spec_instance *inst, const char *name, size_t name_len, uint64_t *bits,
                              char *type, char *err, size_t errlen)
    int phase_spec_export_signature(phase_spec_instance *inst, const char *name, size_t name_len, char *sig,
                                    size_t siglen)
    void phase_spec_set_call_timeout_ms(phase_spec_instance *inst, uint64_t ms)


cdef inline int check_rc(int rc, const char *err) except -1:
    """The one return-code check of the bindings: a non-zero ``rc`` from C raises PhaseError with C's message."""
    if rc != 0:
        from pyphase.errors import PhaseError

        raise PhaseError(err.decode("utf-8", "replace") or f"error {rc}")
    return 0


cdef inline int fill_job(object job, phase_limits *limits, uint8_t *seed, phase_fs_quota *quota) except -1:
    """Copy a pyphase.runtime.PreparedJob's limits, seed and quota into C (the parts _core.run and Slot.run share)."""
    cdef bytes s = job.seed
    if len(s) != 32:
        raise ValueError("seed must be 32 bytes")
    lim = job.limits
    limits.memory_bytes = lim.memory_bytes
    limits.fuel = lim.fuel
    limits.timeout_ms = lim.timeout_ms
    limits.output_bytes = lim.output_bytes
    limits.stack_bytes = lim.stack_bytes
    memcpy(seed, <const char *> s, 32)
    q = job.quota
    memset(quota, 0, sizeof(phase_fs_quota))
    if q is not None:
        quota.enabled = 1
        quota.max_bytes = q.max_bytes
        quota.max_files = q.max_files
        quota.used_bytes = q.used_bytes
        quota.used_files = q.used_files
    return 0


cdef inline int output_to_python(void *ctx, int stream, const uint8_t *data, size_t n) noexcept with gil:
    """A C output sink that hands each piece to ``ctx``, a Python callable ``(stream, bytes) -> bool`` that must not
    raise (pyphase.runtime.OutputSink catches); False stops the output (the job sees a closed pipe)."""
    try:
        return 0 if (<object> ctx)(stream, PyBytes_FromStringAndSize(<const char *> data, n)) else -1
    except BaseException:
        return -1


cdef inline tuple result_tuple(phase_result *res, tuple status_names):
    """A job's result as the bindings hand it to Python (pyphase.runtime / pyphase.sandbox build Result from it):
    (status, exit_code, message, stdout, stderr, fuel_used, wall_us, memory_peak,
     module_sha256, input_sha256, stdout_sha256, stderr_sha256, fs_unavailable, compile_us, fs_limit)."""
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
        res.compile_us,
        "disk_bytes" if res.fs_limit == PHASE_FS_LIMIT_BYTES else "files" if res.fs_limit == PHASE_FS_LIMIT_FILES else "",
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
