// Compact core functions of n2p2 (CoreFunction.h) and the compact function
// C(a; l, r) = core(|a - (l+r)/2| / ((r-l)/2)) used by symmetry-function types 20-22.
//
// Cores on x in [0, 1): 1 at x = 0, 0 at x = 1:
//   POLY1-POLY4 (below) and EXP e*exp(1/(x^2-1)).
// Asymmetric variant (sub-type suffix `a`, radial part only): core((2-x)x).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

namespace pyfragnn {

/// Cody-Waite reduction of exp_approx/tanh_fast: x = n ln2 + r, |r| <= ln2/2; ``t`` carries
/// round(x/ln2) in its low bits for pow2_of. T: double, or a GCC vector of doubles (the same
/// operations lane by lane, as atomic_network.cpp's tanh of four nodes uses it).
template <class T>
inline T exp_reduce(T x, T& t, T& n) {
    constexpr double shifter = 6755399441055744.0;  // 1.5 * 2^52: t's low bits hold round(x/ln2)
    t = x * 1.4426950408889634 + shifter;
    n = t - shifter;
    return (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
}

/// (e^r - 1) / r by its degree-12 Taylor polynomial (|r| <= ln2/2); T as for exp_reduce.
template <class T>
inline T expm1_over_r(T r) {
    T p = r * (1.0 / 6227020800.0) + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    return p;
}

/// 2^n from the ``t`` of exp_reduce (exponent bits, no library call).
inline double pow2_of(double t) {
    constexpr double shifter = 6755399441055744.0;
    std::int64_t bits, shift_bits;
    std::memcpy(&bits, &t, sizeof bits);
    std::memcpy(&shift_bits, &shifter, sizeof shift_bits);
    bits = (bits - shift_bits + 1023) << 52;
    double scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return scale;
}

/// e^x to about 1 ulp; requires -708 <= x <= 709 (not checked). Plain arithmetic (Cody-Waite
/// reduction x = n ln2 + r, |r| <= ln2/2, degree-13 Taylor polynomial, 2^n from the exponent
/// bits) so that loops over arrays vectorise, which calls to std::exp do not.
inline double exp_approx(double x) {
    double t, n;
    const double r = exp_reduce(x, t, n);
    const double p = expm1_over_r(r) * r + 1.0;
    return p * pow2_of(t);
}

/// sin(pi x/2) and cos(pi x/2) for x in [0, 1]: Taylor polynomials (to degree 17 and 18,
/// remainder < 1e-19) of psi = pi t/2, t = min(x, 1 - x) in [0, 1/2], the two swapped for
/// x > 1/2, so that neither cancels near pi/2 (about 1 ulp, relative); plain arithmetic, so
/// loops over arrays vectorise (std::sin/std::cos do not).
inline void sin_cos_half_pi(double x, double& s, double& c) {
    const bool upper = x > 0.5;
    const double psi = 1.5707963267948966 * (upper ? 1.0 - x : x), p2 = psi * psi;
    double ps = 1.0 / 121645100408832000.0;  // 1/19!
    ps = ps * p2 - 1.0 / 355687428096000.0;
    ps = ps * p2 + 1.0 / 1307674368000.0;
    ps = ps * p2 - 1.0 / 6227020800.0;
    ps = ps * p2 + 1.0 / 39916800.0;
    ps = ps * p2 - 1.0 / 362880.0;
    ps = ps * p2 + 1.0 / 5040.0;
    ps = ps * p2 - 1.0 / 120.0;
    ps = ps * p2 + 1.0 / 6.0;
    const double sp = psi - psi * p2 * ps;
    double pc = 1.0 / 2432902008176640000.0;  // 1/20!
    pc = pc * p2 - 1.0 / 6402373705728000.0;
    pc = pc * p2 + 1.0 / 20922789888000.0;
    pc = pc * p2 - 1.0 / 87178291200.0;
    pc = pc * p2 + 1.0 / 479001600.0;
    pc = pc * p2 - 1.0 / 3628800.0;
    pc = pc * p2 + 1.0 / 40320.0;
    pc = pc * p2 - 1.0 / 720.0;
    pc = pc * p2 + 1.0 / 24.0;
    pc = pc * p2 - 0.5;
    const double cp = 1.0 + p2 * pc;
    s = upper ? cp : sp;
    c = upper ? sp : cp;
}

enum class CoreType { POLY1, POLY2, POLY3, POLY4, EXP };

/// core(x) and d core/dx for 0 <= x < 1. The polynomials are evaluated in the factorised form
/// (1-x)^(N+1) q(x), identical to n2p2's expanded form but free of cancellation near x = 1.
inline void core_fdf(CoreType type, double x, double& f, double& df) {
    const double y = 1.0 - x, y2 = y * y, x2 = x * x;
    switch (type) {
    case CoreType::POLY1:  // (2x-3)x^2+1 = (1-x)^2 (1+2x)
        f = y2 * (1.0 + 2.0 * x);
        df = -6.0 * x * y;
        return;
    case CoreType::POLY2:  // ((15-6x)x-10)x^3+1 = (1-x)^3 (1+3x+6x^2)
        f = y2 * y * (1.0 + x * (3.0 + 6.0 * x));
        df = -30.0 * x2 * y2;
        return;
    case CoreType::POLY3:  // (x(x(20x-70)+84)-35)x^4+1 = (1-x)^4 (1+4x+10x^2+20x^3)
        f = y2 * y2 * (1.0 + x * (4.0 + x * (10.0 + 20.0 * x)));
        df = -140.0 * x2 * x * y2 * y;
        return;
    case CoreType::POLY4:  // (x(x((315-70x)x-540)+420)-126)x^5+1 = (1-x)^5 (1+5x+15x^2+35x^3+70x^4)
        f = y2 * y2 * y * (1.0 + x * (5.0 + x * (15.0 + x * (35.0 + 70.0 * x))));
        df = -630.0 * x2 * x2 * y2 * y2;
        return;
    default: {  // EXP
        const double t = 1.0 / (x2 - 1.0);
        f = 2.718281828459045 * std::exp(t);  // e * exp(t)
        df = f > 0.0 ? -2.0 * x * t * t * f : 0.0;  // t = -inf at x == 1 in rounding
        return;
    }
    }
}

/// C(a) on the support (left, right), zero outside; left < right.
class CompactFunction {
public:
    CompactFunction() = default;
    CompactFunction(CoreType core, bool asymmetric, double left, double right)
        : core_(core), asymmetric_(asymmetric), center_(0.5 * (left + right)),
          inv_half_width_(2.0 / (right - left)) {}

    /// Parse an n2p2 sub-type: "p1".."p4" with optional "a" (asymmetric), or "e".
    static bool parse_subtype(const std::string& s, CoreType& core, bool& asymmetric) {
        asymmetric = false;
        if (s == "e") { core = CoreType::EXP; return true; }
        if (s.size() < 2 || s.size() > 3 || s[0] != 'p' || s[1] < '1' || s[1] > '4') return false;
        if (s.size() == 3) {
            if (s[2] != 'a') return false;
            asymmetric = true;
        }
        core = static_cast<CoreType>(s[1] - '1');
        return true;
    }

    /// f = C(a), df = dC/da.
    void fdf(double a, double& f, double& df) const {
        const double x = (a - center_) * inv_half_width_;
        double ax = std::fabs(x);
        if (ax >= 1.0) { f = 0.0; df = 0.0; return; }
        double dchain = inv_half_width_;  // d|x|/da up to sign
        if (asymmetric_) {
            dchain *= 2.0 - 2.0 * ax;
            ax = (2.0 - ax) * ax;
        }
        core_fdf(core_, ax, f, df);
        df *= x < 0.0 ? -dchain : dchain;
    }

private:
    CoreType core_ = CoreType::POLY2;
    bool asymmetric_ = false;
    double center_ = 0.0;
    double inv_half_width_ = 1.0;
};

}  // namespace pyfragnn
