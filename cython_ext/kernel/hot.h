#pragma once
// PYFRAGNN_HOT: the kernel's hot loops (Descriptor::compute/contract, the network passes) are
// also compiled for x86-64-v3 (AVX2+FMA; GCC < 12: AVX2), chosen at load time through a glibc
// ifunc, so binaries stay portable (water box: 1.4-1.6x faster). `flatten` inlines the helpers
// so that their loops are compiled for the clone's target too.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__) && \
    !defined(PYFRAGNN_NO_MULTIVERSION)
#if __GNUC__ >= 12
#define PYFRAGNN_HOT __attribute__((target_clones("arch=x86-64-v3", "default"), flatten))
#else
#define PYFRAGNN_HOT __attribute__((target_clones("avx2", "default"), flatten))
#endif
#else
#define PYFRAGNN_HOT
#endif
