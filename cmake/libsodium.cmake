# libsodium built by CMake itself from the sources bundled in PyNaCl's pinned sdist (tools/fetch_libsodium.py):
# a static, position-independent library target `sodium`, with no configure, make or shell tools, so an sdist
# of ours builds with nothing but a C compiler (and the cmake/ninja that the build backend brings from PyPI).
#
# As libsodium's own build.zig does, every .c and .S file under src/libsodium is compiled (each guards itself; the
# assembly by HAVE_AMD64_ASM/HAVE_AVX_ASM). As its Makefile.am does, the files for SSE/AVX/AES-NI/RDRAND/ARM crypto
# get their instruction-set flags (-mavx2, ...) one by one: the library picks them at run time by CPU detection.
# (Their target pragmas alone are not enough for every clang: zig's refuses the AVX-512 file without -mavx512f.)
# The HAVE_* macros that configure would define are found by the same checks here, with the compiler in use, so
# a cross build or an older glibc target (the zig wheels) gets the right answers.
#
# In: SODIUM_SOURCE_DIR (the unpacked libsodium tree). Out: target `sodium`.

include(CheckCCompilerFlag)
include(CheckCSourceCompiles)
include(CheckIncludeFile)
include(CheckSymbolExists)
enable_language(ASM)

set(SODIUM_SRC ${SODIUM_SOURCE_DIR}/src/libsodium)
file(GLOB_RECURSE SODIUM_C_SOURCES CONFIGURE_DEPENDS ${SODIUM_SRC}/*.c)
file(GLOB_RECURSE SODIUM_ASM_SOURCES CONFIGURE_DEPENDS ${SODIUM_SRC}/*.S)
# sandy2x.S #includes these five; compiled on their own they would define the same symbols twice
list(FILTER SODIUM_ASM_SOURCES EXCLUDE REGEX "/sandy2x/(consts|fe51_mul|fe51_nsquare|fe51_pack|ladder)\\.S$")
if(NOT SODIUM_C_SOURCES)
    message(FATAL_ERROR "no libsodium sources in ${SODIUM_SRC}")
endif()

# The headers as an install would lay them out, in the build folder, with upstream's prebuilt version.h (as
# build.zig uses; configure would generate the same from version.h.in); the source tree stays untouched.
set(SODIUM_GENERATED_INCLUDE ${CMAKE_CURRENT_BINARY_DIR}/libsodium-include)
file(COPY ${SODIUM_SRC}/include/ DESTINATION ${SODIUM_GENERATED_INCLUDE} FILES_MATCHING PATTERN "*.h")
configure_file(${SODIUM_SOURCE_DIR}/builds/msvc/version.h ${SODIUM_GENERATED_INCLUDE}/sodium/version.h COPYONLY)

set(SODIUM_DEFINITIONS CONFIGURED=1 _GNU_SOURCE=1 HAVE_PTHREAD=1 HAVE_PTHREAD_PRIO_INHERIT=1 TLS=_Thread_local
    HAVE_INLINE_ASM=1 ASM_HIDE_SYMBOL=.hidden HAVE_WEAK_SYMBOLS=1 HAVE_ATOMIC_OPS=1 HAVE_C11_MEMORY_FENCES=1
    HAVE_GCC_MEMORY_FENCES=1 HAVE_CATCHABLE_SEGV=1 HAVE_CATCHABLE_ABRT=1)

if(CMAKE_C_BYTE_ORDER STREQUAL "BIG_ENDIAN")
    list(APPEND SODIUM_DEFINITIONS NATIVE_BIG_ENDIAN=1)
else()
    list(APPEND SODIUM_DEFINITIONS NATIVE_LITTLE_ENDIAN=1)
endif()

# headers and functions, checked with the compiler and C library in use (configure's own list)
set(CMAKE_REQUIRED_DEFINITIONS -D_GNU_SOURCE=1)
foreach(header sys/mman.h sys/param.h sys/random.h sys/auxv.h cet.h threads.h alloca.h)
    string(MAKE_C_IDENTIFIER "HAVE_${header}" variable)
    string(TOUPPER ${variable} variable)
    check_include_file(${header} ${variable})
    if(${variable})
        list(APPEND SODIUM_DEFINITIONS ${variable}=1)
    endif()
endforeach()
foreach(entry "arc4random:stdlib.h" "arc4random_buf:stdlib.h" "getrandom:sys/random.h" "getentropy:unistd.h"
              "getauxval:sys/auxv.h" "explicit_bzero:string.h" "posix_memalign:stdlib.h" "nanosleep:time.h"
              "clock_gettime:time.h" "mmap:sys/mman.h" "mlock:sys/mman.h" "madvise:sys/mman.h"
              "mprotect:sys/mman.h" "raise:signal.h" "sysconf:unistd.h" "getpid:unistd.h" "alloca:alloca.h")
    string(REPLACE ":" ";" entry ${entry})
    list(GET entry 0 function)
    list(GET entry 1 header)
    string(TOUPPER "HAVE_${function}" variable)
    check_symbol_exists(${function} ${header} ${variable})
    if(${variable})
        list(APPEND SODIUM_DEFINITIONS ${variable}=1)
    endif()
endforeach()
unset(CMAKE_REQUIRED_DEFINITIONS)
check_c_source_compiles("
    typedef unsigned uint128_t __attribute__((mode(TI)));
    int main(void) { uint128_t a = 1, b = 2; return (int) (a * b >> 64); }" SODIUM_HAVE_TI_MODE)
if(SODIUM_HAVE_TI_MODE)
    list(APPEND SODIUM_DEFINITIONS HAVE_TI_MODE=1)
endif()

if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
    list(APPEND SODIUM_DEFINITIONS HAVE_AMD64_ASM=1 HAVE_AVX_ASM=1 HAVE_CPUID=1 HAVE_RDRAND=1
         HAVE_MMINTRIN_H=1 HAVE_EMMINTRIN_H=1 HAVE_PMMINTRIN_H=1 HAVE_TMMINTRIN_H=1 HAVE_SMMINTRIN_H=1
         HAVE_AVXINTRIN_H=1 HAVE_AVX2INTRIN_H=1 HAVE_AVX512FINTRIN_H=1 HAVE_WMMINTRIN_H=1)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64)$")
    list(APPEND SODIUM_DEFINITIONS HAVE_ARMCRYPTO=1)
endif()

# Makefile.am's libsse2/libssse3/libsse41/libavx2/libavx512f/libaesni/librdrand/libarmcrypto: file -> flags
function(sodium_instruction_set flags)
    foreach(file ${ARGN})
        if(NOT EXISTS ${SODIUM_SRC}/${file})
            message(FATAL_ERROR "libsodium: ${file} is not in ${SODIUM_SRC} (a new libsodium moved it?)")
        endif()
        set_property(SOURCE ${SODIUM_SRC}/${file} APPEND PROPERTY COMPILE_OPTIONS ${flags})
    endforeach()
endfunction()
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
    set(SSSE3 -msse2 -mssse3)
    set(AVX2 ${SSSE3} -msse4.1 -mavx -mavx2)
    sodium_instruction_set("-msse2" crypto_onetimeauth/poly1305/sse2/poly1305_sse2.c
        crypto_pwhash/scryptsalsa208sha256/sse/pwhash_scryptsalsa208sha256_sse.c
        crypto_stream/salsa20/xmm6int/salsa20_xmm6int-sse2.c)
    sodium_instruction_set("${SSSE3}" crypto_generichash/blake2b/ref/blake2b-compress-ssse3.c
        crypto_pwhash/argon2/argon2-fill-block-ssse3.c crypto_stream/chacha20/dolbeau/chacha20_dolbeau-ssse3.c)
    sodium_instruction_set("${SSSE3};-msse4.1" crypto_generichash/blake2b/ref/blake2b-compress-sse41.c)
    sodium_instruction_set("${AVX2}" crypto_generichash/blake2b/ref/blake2b-compress-avx2.c
        crypto_pwhash/argon2/argon2-fill-block-avx2.c crypto_stream/chacha20/dolbeau/chacha20_dolbeau-avx2.c
        crypto_stream/salsa20/xmm6int/salsa20_xmm6int-avx2.c)
    sodium_instruction_set("${AVX2};-mavx512f" crypto_pwhash/argon2/argon2-fill-block-avx512f.c)
    sodium_instruction_set("${SSSE3};-mavx;-maes;-mpclmul" crypto_aead/aegis128l/aegis128l_aesni.c
        crypto_aead/aegis256/aegis256_aesni.c crypto_aead/aes256gcm/aesni/aead_aes256gcm_aesni.c)
    sodium_instruction_set("-mrdrnd" randombytes/internal/randombytes_internal_random.c)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64)$")
    # gcc takes configure's flag; zig's clang knows no "armv8" -march and relies on the files' target pragmas
    check_c_compiler_flag(-march=armv8-a+crypto+aes SODIUM_MARCH_ARMCRYPTO)
    if(SODIUM_MARCH_ARMCRYPTO)
        sodium_instruction_set("-march=armv8-a+crypto+aes" crypto_aead/aegis128l/aegis128l_armcrypto.c
            crypto_aead/aegis256/aegis256_armcrypto.c crypto_aead/aes256gcm/armcrypto/aead_aes256gcm_armcrypto.c)
    endif()
endif()

add_library(sodium STATIC ${SODIUM_C_SOURCES} ${SODIUM_ASM_SOURCES})
target_compile_definitions(sodium PRIVATE ${SODIUM_DEFINITIONS})
target_include_directories(sodium PRIVATE ${SODIUM_GENERATED_INCLUDE}/sodium)
target_include_directories(sodium SYSTEM PUBLIC ${SODIUM_GENERATED_INCLUDE})
# configure's flags for it (no warnings: third-party code, built as its authors build it)
target_compile_options(sodium PRIVATE $<$<COMPILE_LANGUAGE:C>:-O2 -fvisibility=hidden -fno-strict-aliasing
                       -fno-strict-overflow -ftls-model=local-dynamic -w>)
if(CMAKE_C_COMPILER_ID MATCHES "Clang")
    target_compile_options(sodium PRIVATE $<$<COMPILE_LANGUAGE:C>:-flax-vector-conversions>)
endif()
set_target_properties(sodium PROPERTIES POSITION_INDEPENDENT_CODE ON INTERPROCEDURAL_OPTIMIZATION OFF)
find_package(Threads REQUIRED)
target_link_libraries(sodium PUBLIC Threads::Threads)
