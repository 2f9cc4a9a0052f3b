// Kalman-filter covariance row kernels (see training.h): P h and the deferred rank-m fold.
//
// Every output element is computed by one fixed sequence of IEEE operations that depends on
// neither the number of rows passed, nor their grouping into register tiles, nor the
// instruction set: the vector paths (AVX-512, AVX2, generic) use GCC vector types whose lanes
// perform exactly the scalar code's operations, and this file is compiled with
// -ffp-contract=off (CMakeLists.txt) so that no multiply-add is fused into an FMA. So a filter
// split by rows over MPI ranks gives bit-identical numbers to the serial one, also across
// machines with different instruction sets. PYFRAGNN_ISA=avx2 or generic caps the path at load
// time (tests compare them).
#include "training.h"
#include "hot.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"  // v8 passed only between always-inline helpers
#endif

namespace pyfragnn {

namespace {

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define PYFRAGNN_KF_X86 1
#define KF_INLINE inline __attribute__((always_inline))
#else
#define KF_INLINE inline
#endif

// Native vectors of W = 2, 4 or 8 doubles (SSE2 / NEON, AVX2, AVX-512); unaligned access.
typedef double v2 __attribute__((vector_size(16), aligned(8)));
typedef double v4 __attribute__((vector_size(32), aligned(8)));
typedef double v8 __attribute__((vector_size(64), aligned(8)));

template <typename V>
KF_INLINE V ld(const double* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
template <typename V>
KF_INLINE void st(double* p, const V& v) {
    std::memcpy(p, &v, sizeof v);
}

// ------------------------------------------------------------------ y = A h
// Row i: eight lane sums s_l of a[j] h[j] over j < n8 with j % 8 == l in ascending j (from
// +0), held in 8 / W native vectors; t sums the tail j >= n8 in ascending j;
// y = (((s0+s4)+(s1+s5)) + ((s2+s6)+(s3+s7))) + t. R rows at a time share the loads of h.
template <typename V, int R>
KF_INLINE void mv_rows(const double* A, int64_t n, int64_t n8, const double* h, double* y) {
    constexpr int W = sizeof(V) / sizeof(double), Q = 8 / W;
    V s[R][Q];
    for (int r = 0; r < R; ++r)
        for (int q = 0; q < Q; ++q) s[r][q] = V{};
    for (int64_t j = 0; j < n8; j += 8) {
        V hv[Q];
        for (int q = 0; q < Q; ++q) hv[q] = ld<V>(h + j + W * q);
        for (int r = 0; r < R; ++r)
            for (int q = 0; q < Q; ++q) s[r][q] += ld<V>(A + r * n + j + W * q) * hv[q];
    }
    for (int r = 0; r < R; ++r) {
        double t = 0.0;
        const double* a = A + r * n;
        for (int64_t j = n8; j < n; ++j) t += a[j] * h[j];
        double l[8];
        for (int q = 0; q < Q; ++q) st<V>(l + W * q, s[r][q]);
        y[r] = (((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))) + t;
    }
}

template <typename V, int R>
KF_INLINE void mv_body(const double* A, int64_t rows, int64_t n, const double* h, double* y) {
    const int64_t n8 = n - n % 8;
    int64_t i = 0;
    for (; i + R <= rows; i += R) mv_rows<V, R>(A + i * n, n, n8, h, y + i);
    for (; i < rows; ++i) mv_rows<V, 1>(A + i * n, n, n8, h, y + i);
}

// ------------------------------------------------------------------ A = s (A - U UT)
// Element (i, j): a = A[i][j]; for k = 0..m-1: a = a - Uloc[i][k] * UT[k][j]; A[i][j] = a * s.
// Register tile: R rows x C native vectors held across the k loop; column panels of JB columns
// keep their slice of UT (m x JB) in L2 while all row tiles pass over it.
template <typename V, int R, int C>
KF_INLINE void dd_tile(double* A, int64_t n, const double* Uloc, int64_t m, const double* UT,
                       double s) {
    constexpr int W = sizeof(V) / sizeof(double);
    V acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = ld<V>(A + r * n + W * c);
    for (int64_t k = 0; k < m; ++k) {
        V ut[C];
        for (int c = 0; c < C; ++c) ut[c] = ld<V>(UT + k * n + W * c);
        for (int r = 0; r < R; ++r) {
            const double u = Uloc[r * m + k];
            for (int c = 0; c < C; ++c) acc[r][c] -= u * ut[c];
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) st<V>(A + r * n + W * c, acc[r][c] * s);
}

// Rows [0, R) of A (and Uloc), columns [j0, j1).
template <typename V, int R, int C>
KF_INLINE void dd_rows(double* A, int64_t n, const double* Uloc, int64_t m, const double* UT,
                       double s, int64_t j0, int64_t j1) {
    constexpr int W = sizeof(V) / sizeof(double);
    int64_t j = j0;
    for (; j + W * C <= j1; j += W * C) dd_tile<V, R, C>(A + j, n, Uloc, m, UT + j, s);
    for (; j + W <= j1; j += W) dd_tile<V, R, 1>(A + j, n, Uloc, m, UT + j, s);
    for (; j < j1; ++j)
        for (int r = 0; r < R; ++r) {
            double a = A[r * n + j];
            for (int64_t k = 0; k < m; ++k) a -= Uloc[r * m + k] * UT[k * n + j];
            A[r * n + j] = a * s;
        }
}

template <typename V, int R, int C>
KF_INLINE void dd_body(double* A, int64_t rows, int64_t n, const double* Uloc, const double* UT,
                       int64_t m, double s) {
    constexpr int64_t JB = 512;
    for (int64_t j0 = 0; j0 < n; j0 += JB) {
        const int64_t j1 = std::min(n, j0 + JB);
        int64_t i = 0;
        for (; i + R <= rows; i += R)
            dd_rows<V, R, C>(A + i * n, n, Uloc + i * m, m, UT, s, j0, j1);
        for (; i < rows; ++i) dd_rows<V, 1, C>(A + i * n, n, Uloc + i * m, m, UT, s, j0, j1);
    }
}

// ------------------------------------------------------------------ one triangle of a block
// The block kernels take rows [r0, r1) of a symmetric P and use, of the diagonal block
// [r0, r1) x [r0, r1), only the lower triangle (its upper one is neither read nor written):
// row i holds columns [0, i] and [r1, n). Where P is bit-symmetric (the filter keeps it so: the
// fold computes element (j, i) by the same operations as (i, j), products commuting), every
// output is bit-identical to the full-row kernels', for any r0 and row count.

// y = P h: output i sums columns [0, i] from row i, columns (i, r1) from rows i' > i of the
// block (the column of P[i'][i] = P[i][i']), columns [r1, n) from row i, each into its lane
// (j % 8, or the tail j >= n8) in ascending j, as mv_rows. acc [9][rows]: lanes and tail.
// Rows i0 .. i0+R-1 of the block (global indices): the columns they all hold ([0, i0]) R rows
// at a time (R add chains), then each row's rest on its own.
template <typename V, int R>
KF_INLINE void mvb_rows(const double* A, int64_t i0, int64_t r0, int64_t b, int64_t n,
                        int64_t n8, int64_t cA, const double* h, double* acc) {
    constexpr int W = sizeof(V) / sizeof(double), Q = 8 / W;
    const double* a[R];
    double* col[R];  // col[r][j]: output j's lane of row i0 + r
    double hi[R];
    V sv[R][Q];
    for (int r = 0; r < R; ++r) {
        const int64_t i = i0 + r;
        a[r] = A + (i - r0) * n;
        col[r] = acc + (i < n8 ? i % 8 : 8) * b - r0;
        hi[r] = h[i];
        for (int q = 0; q < Q; ++q) sv[r][q] = V{};
    }
    // common part: lane vectors [0, jv0) of row i0; fused (row and column part) on [e0, e1)
    const int64_t jv0 = std::min(i0 + 1, n8) / 8 * 8;
    const int64_t e0 = std::min(cA, jv0), e1 = std::max(e0, i0 / 8 * 8);
    int64_t j = 0;
    for (; j < e0; j += 8)
        for (int q = 0; q < Q; ++q) {
            const V hv = ld<V>(h + j + W * q);
            for (int r = 0; r < R; ++r) sv[r][q] += ld<V>(a[r] + j + W * q) * hv;
        }
    for (; j < e1; j += 8)
        for (int q = 0; q < Q; ++q) {
            const V hv = ld<V>(h + j + W * q);
            for (int r = 0; r < R; ++r) {
                const V av = ld<V>(a[r] + j + W * q);
                sv[r][q] += av * hv;
                st<V>(col[r] + j + W * q, ld<V>(col[r] + j + W * q) + av * hi[r]);
            }
        }
    for (int r = 0; r < R; ++r) {
        const int64_t i = i0 + r;
        const double* ar = a[r];
        double* cr = col[r];
        // fused vectors: [cA, cB) where cA <= cB (then cA <= jv); else none (cB <= jv < cA)
        const int64_t jv = std::min(i + 1, n8) / 8 * 8, cB = i / 8 * 8;
        V s1[Q];
        for (int q = 0; q < Q; ++q) s1[q] = sv[r][q];
        int64_t jr = e1;
        for (const int64_t l1 = std::max(jr, std::min(cA, jv)); jr < l1; jr += 8)
            for (int q = 0; q < Q; ++q) s1[q] += ld<V>(ar + jr + W * q) * ld<V>(h + jr + W * q);
        for (; jr < cB; jr += 8)
            for (int q = 0; q < Q; ++q) {
                const V av = ld<V>(ar + jr + W * q);
                s1[q] += av * ld<V>(h + jr + W * q);
                st<V>(cr + jr + W * q, ld<V>(cr + jr + W * q) + av * hi[r]);
            }
        for (; jr < jv; jr += 8)
            for (int q = 0; q < Q; ++q) s1[q] += ld<V>(ar + jr + W * q) * ld<V>(h + jr + W * q);
        double l[8];
        for (int q = 0; q < Q; ++q) st<V>(l + W * q, s1[q]);
        const int64_t ie = std::min(i + 1, n8);
        for (jr = jv; jr < ie; ++jr) l[jr % 8] += ar[jr] * h[jr];
        double t = 0.0;
        for (jr = n8; jr <= i; ++jr) t += ar[jr] * h[jr];
        const int64_t ii = i - r0;
        for (int q = 0; q < 8; ++q) acc[q * b + ii] = l[q];
        acc[8 * b + ii] = t;
        // the block's columns outside the vector range [cA, cB) of the fused loops
        for (jr = r0; jr < std::min(i, cA); ++jr) cr[jr] += ar[jr] * hi[r];
        for (jr = std::max(cA, cB); jr < i; ++jr) cr[jr] += ar[jr] * hi[r];
    }
}

// y = P h: output i sums columns [0, i] from row i, columns (i, r1) from rows i' > i of the
// block (the column of P[i'][i] = P[i][i']), columns [r1, n) from row i, each into its lane
// (j % 8, or the tail j >= n8) in ascending j, as mv_rows. acc [9][rows]: lanes and tail.
template <typename V, int R>
KF_INLINE void mvb_body(const double* A, int64_t r0, int64_t rows, int64_t n, const double* h,
                        double* y, double* acc) {
    constexpr int W = sizeof(V) / sizeof(double), Q = 8 / W;
    const int64_t n8 = n - n % 8, b = rows, r1 = r0 + rows;
    const int64_t cA = (r0 + 7) / 8 * 8;  // first lane-aligned column >= r0
    int64_t i = r0;
    for (; i + R <= r1; i += R) mvb_rows<V, R>(A, i, r0, b, n, n8, cA, h, acc);
    for (; i < r1; ++i) mvb_rows<V, 1>(A, i, r0, b, n, n8, cA, h, acc);
    const int64_t ra = std::min(std::max((r1 + 7) / 8 * 8, r1), n8);
    for (int64_t ii = 0; ii < b; ++ii) {
        double l[8];
        for (int q = 0; q < 8; ++q) l[q] = acc[q * b + ii];
        double t = acc[8 * b + ii];
        if (r1 < n) {
            const double* a = A + ii * n;
            int64_t j = r1;
            for (; j < ra; ++j) l[j % 8] += a[j] * h[j];
            if (j < n8) {
                V sv[Q];
                for (int q = 0; q < Q; ++q) sv[q] = ld<V>(l + W * q);
                for (; j < n8; j += 8)
                    for (int q = 0; q < Q; ++q) sv[q] += ld<V>(a + j + W * q) * ld<V>(h + j + W * q);
                for (int q = 0; q < Q; ++q) st<V>(l + W * q, sv[q]);
            }
            for (j = std::max(n8, r1); j < n; ++j) t += a[j] * h[j];
        }
        y[ii] = (((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))) + t;
    }
}

// A = s (A - Uloc UT) on row i's columns [0, i] and [r1, n), element by element as dd_body.
template <typename V, int R, int C>
KF_INLINE void ddb_body(double* A, int64_t r0, int64_t rows, int64_t n, const double* Uloc,
                        const double* UT, int64_t m, double s) {
    constexpr int64_t JB = 512;
    const int64_t r1 = r0 + rows;
    for (int64_t j0 = 0; j0 < n; j0 += JB) {
        const int64_t j1 = std::min(n, j0 + JB);
        const int64_t k0 = std::max(j0, r1);  // right part of the panel: [k0, j1)
        int64_t ii = 0;
        for (; ii + R <= rows; ii += R) {
            const int64_t i = r0 + ii;
            double* Ai = A + ii * n;
            const double* Ui = Uloc + ii * m;
            const int64_t lim = std::min(j1, i + 1);  // columns all R rows hold
            if (lim > j0) dd_rows<V, R, C>(Ai, n, Ui, m, UT, s, j0, lim);
            for (int r = 1; r < R; ++r) {
                const int64_t lo = std::max(j0, i + 1), hi = std::min(j1, i + r + 1);
                if (hi > lo) dd_rows<V, 1, C>(Ai + r * n, n, Ui + r * m, m, UT, s, lo, hi);
            }
            if (j1 > k0) dd_rows<V, R, C>(Ai, n, Ui, m, UT, s, k0, j1);
        }
        for (; ii < rows; ++ii) {
            const int64_t i = r0 + ii;
            double* Ai = A + ii * n;
            const double* Ui = Uloc + ii * m;
            const int64_t lim = std::min(j1, i + 1);
            if (lim > j0) dd_rows<V, 1, C>(Ai, n, Ui, m, UT, s, j0, lim);
            if (j1 > k0) dd_rows<V, 1, C>(Ai, n, Ui, m, UT, s, k0, j1);
        }
    }
}

// ------------------------------------------------------------------ instruction sets
void mv_generic(const double* A, int64_t rows, int64_t n, const double* h, double* y) {
    mv_body<v2, 2>(A, rows, n, h, y);
}
void dd_generic(double* A, int64_t rows, int64_t n, const double* Uloc, const double* UT,
                int64_t m, double s) {
    dd_body<v2, 4, 2>(A, rows, n, Uloc, UT, m, s);
}
void mvb_generic(const double* A, int64_t r0, int64_t rows, int64_t n, const double* h,
                 double* y, double* acc) {
    mvb_body<v2, 2>(A, r0, rows, n, h, y, acc);
}
void ddb_generic(double* A, int64_t r0, int64_t rows, int64_t n, const double* Uloc,
                 const double* UT, int64_t m, double s) {
    ddb_body<v2, 4, 2>(A, r0, rows, n, Uloc, UT, m, s);
}

#ifdef PYFRAGNN_KF_X86
__attribute__((target("avx2"), noinline)) void mv_avx2(const double* A, int64_t rows, int64_t n,
                                                       const double* h, double* y) {
    mv_body<v4, 4>(A, rows, n, h, y);
}
__attribute__((target("avx2"), noinline)) void dd_avx2(double* A, int64_t rows, int64_t n,
                                                       const double* Uloc, const double* UT,
                                                       int64_t m, double s) {
    dd_body<v4, 4, 2>(A, rows, n, Uloc, UT, m, s);
}
__attribute__((target("avx2"), noinline)) void mvb_avx2(const double* A, int64_t r0,
                                                        int64_t rows, int64_t n,
                                                        const double* h, double* y,
                                                        double* acc) {
    mvb_body<v4, 4>(A, r0, rows, n, h, y, acc);
}
__attribute__((target("avx2"), noinline)) void ddb_avx2(double* A, int64_t r0, int64_t rows,
                                                        int64_t n, const double* Uloc,
                                                        const double* UT, int64_t m,
                                                        double s) {
    ddb_body<v4, 4, 2>(A, r0, rows, n, Uloc, UT, m, s);
}
__attribute__((target("avx512f"), noinline)) void mv_avx512(const double* A, int64_t rows,
                                                            int64_t n, const double* h,
                                                            double* y) {
    mv_body<v8, 8>(A, rows, n, h, y);
}
__attribute__((target("avx512f"), noinline)) void dd_avx512(double* A, int64_t rows, int64_t n,
                                                            const double* Uloc, const double* UT,
                                                            int64_t m, double s) {
    dd_body<v8, 4, 4>(A, rows, n, Uloc, UT, m, s);
}
__attribute__((target("avx512f"), noinline)) void mvb_avx512(const double* A, int64_t r0,
                                                             int64_t rows, int64_t n,
                                                             const double* h, double* y,
                                                             double* acc) {
    mvb_body<v8, 4>(A, r0, rows, n, h, y, acc);
}
__attribute__((target("avx512f"), noinline)) void ddb_avx512(double* A, int64_t r0,
                                                             int64_t rows, int64_t n,
                                                             const double* Uloc,
                                                             const double* UT, int64_t m,
                                                             double s) {
    ddb_body<v8, 4, 4>(A, r0, rows, n, Uloc, UT, m, s);
}
#endif

/// 2 AVX-512, 1 AVX2, 0 generic: the CPU's best unless PYFRAGNN_ISA is "avx2" or "generic".
int kf_isa() {
#ifdef PYFRAGNN_KF_X86
    static const int isa = [] {
        int best = 0;
        if (__builtin_cpu_supports("avx2")) best = 1;
        if (best == 1 && __builtin_cpu_supports("avx512f")) best = 2;
        return isa_capped_by_env(best);
    }();
    return isa;
#else
    return 0;
#endif
}

}  // namespace

void kf_rows_times_vector(const double* A, int64_t rows, int64_t n, const double* h, double* y) {
#ifdef PYFRAGNN_KF_X86
    switch (kf_isa()) {
        case 2: return mv_avx512(A, rows, n, h, y);
        case 1: return mv_avx2(A, rows, n, h, y);
        default: break;
    }
#endif
    mv_generic(A, rows, n, h, y);
}

void kf_rows_downdate(double* A, int64_t rows, int64_t n, const double* Uloc, const double* UT,
                      int64_t m, double s) {
#ifdef PYFRAGNN_KF_X86
    switch (kf_isa()) {
        case 2: return dd_avx512(A, rows, n, Uloc, UT, m, s);
        case 1: return dd_avx2(A, rows, n, Uloc, UT, m, s);
        default: break;
    }
#endif
    dd_generic(A, rows, n, Uloc, UT, m, s);
}

void kf_block_times_vector(const double* A, int64_t r0, int64_t rows, int64_t n, const double* h,
                           double* y) {
    thread_local std::vector<double> acc;
    acc.assign(9 * static_cast<size_t>(rows), 0.0);
#ifdef PYFRAGNN_KF_X86
    switch (kf_isa()) {
        case 2: return mvb_avx512(A, r0, rows, n, h, y, acc.data());
        case 1: return mvb_avx2(A, r0, rows, n, h, y, acc.data());
        default: break;
    }
#endif
    mvb_generic(A, r0, rows, n, h, y, acc.data());
}

void kf_block_downdate(double* A, int64_t r0, int64_t rows, int64_t n, const double* Uloc,
                       const double* UT, int64_t m, double s) {
#ifdef PYFRAGNN_KF_X86
    switch (kf_isa()) {
        case 2: return ddb_avx512(A, r0, rows, n, Uloc, UT, m, s);
        case 1: return ddb_avx2(A, r0, rows, n, Uloc, UT, m, s);
        default: break;
    }
#endif
    ddb_generic(A, r0, rows, n, Uloc, UT, m, s);
}

}  // namespace pyfragnn
