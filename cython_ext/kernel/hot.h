#pragma once
// PYFRAGNN_HOT: the kernel's hot loops (Descriptor::compute/contract, the network passes) are
// also compiled for x86-64-v3 (AVX2+FMA; GCC < 12: AVX2), chosen at load time through a glibc
// ifunc, so binaries stay portable (water box: 1.4-1.6x faster), and (GCC >= 12) for x86-64-v4
// (AVX-512: 32 vector registers, masked tails; on an AVX-512 Xeon the water box's kernel 4-6 %
// faster, IRMOF-1's 0-2 %, results bit-identical). PYFRAGNN_HOT_V3 stops at x86-64-v3: the
// network pass, whose v4 clone was ~20 % slower there (perf, IRMOF-1). `flatten` inlines the
// helpers so that their loops are compiled for the clone's target too.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__) && \
    !defined(PYFRAGNN_NO_MULTIVERSION)
#if __GNUC__ >= 12
#define PYFRAGNN_HOT \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#define PYFRAGNN_HOT_V3 __attribute__((target_clones("arch=x86-64-v3", "default"), flatten))
#else
#define PYFRAGNN_HOT __attribute__((target_clones("avx2", "default"), flatten))
#define PYFRAGNN_HOT_V3 PYFRAGNN_HOT
#endif
#else
#define PYFRAGNN_HOT
#define PYFRAGNN_HOT_V3
#endif
// PYFRAGNN_PART: a section of a PYFRAGNN_HOT function (Descriptor::compute/contract's parts):
// always inlined, so that each clone compiles it for its own target and no clone calls a
// separately compiled default-ISA copy.
// PYFRAGNN_LAMBDA, after a lambda's parameters, does the same for a lambda (flatten alone left
// a large one as a separate default-ISA function).
#if defined(__GNUC__)
#define PYFRAGNN_PART inline __attribute__((always_inline))
#define PYFRAGNN_LAMBDA __attribute__((always_inline))
#else
#define PYFRAGNN_PART inline
#define PYFRAGNN_LAMBDA
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace pyfragnn {
/// The explicit-SIMD paths' level (2 AVX-512, 1 AVX2, 0 generic): the CPU's ``best``, capped by
/// the environment variable PYFRAGNN_ISA ("avx2" or "generic"; tests compare the paths).
inline int isa_capped_by_env(int best) {
    const char* e = std::getenv("PYFRAGNN_ISA");
    if (e != nullptr && std::strcmp(e, "generic") == 0) return 0;
    if (e != nullptr && std::strcmp(e, "avx2") == 0) return std::min(best, 1);
    return best;
}

/// sum_i a[i] b[i] with two partial sums (vectorisable without reassociation flags).
inline double dot(int n, const double* a, const double* b) {
    double s0 = 0.0, s1 = 0.0;
    int i = 0;
    for (; i + 1 < n; i += 2) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
    }
    if (i < n) s0 += a[i] * b[i];
    return s0 + s1;
}

}  // namespace pyfragnn
