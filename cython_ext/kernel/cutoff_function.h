// n2p2 cutoff functions fc(r) (CutoffFunction.h enum order), zero for r >= rc.
//
// x = (r - alpha rc) / (rc - alpha rc); fc = 1 for r < alpha rc (all types but TANHU/TANH):
//   0 HARD 1;  1 COS (cos(pi x)+1)/2;  2 TANHU tanh^3(1 - r/rc);
//   3 TANH tanh^3(1 - r/rc) / tanh^3(1) (so that fc(0) = 1);  4 EXP e*exp(1/(x^2-1));
//   5-8 POLY1-4 (cores in compact_function.h). alpha must lie in [0, 1).
#pragma once

#include <cmath>
#include <stdexcept>
#include <string>

#include "compact_function.h"

namespace pyfragnn {

enum class CutoffType { HARD = 0, COS, TANHU, TANH, EXP, POLY1, POLY2, POLY3, POLY4 };

class CutoffFunction {
public:
    CutoffFunction() = default;
    /// type: n2p2 enum code 0-8; rc > 0 in length units; alpha: inner fraction in [0, 1).
    CutoffFunction(int type, double rc, double alpha = 0.0)
        : type_(static_cast<CutoffType>(type)), rc_(rc), alpha_(alpha) {
        if (type < 0 || type > 8)
            throw std::invalid_argument("unknown cutoff type " + std::to_string(type) +
                                        " (n2p2 cutoff types are 0-8)");
        if (!(alpha >= 0.0 && alpha < 1.0))
            throw std::invalid_argument("cutoff alpha " + std::to_string(alpha) +
                                        " outside [0, 1)");
        if (!(rc > 0.0) || !std::isfinite(rc))
            throw std::invalid_argument("cutoff radius must be positive and finite");
        inv_rc_ = 1.0 / rc;
        r_inner_ = alpha * rc;
        inv_width_ = 1.0 / (rc - r_inner_);
        if (type_ == CutoffType::TANH) {
            const double t1 = std::tanh(1.0);
            tanh_scale_ = 1.0 / (t1 * t1 * t1);
        }
        if (type >= 4) core_ = type == 4 ? CoreType::EXP : static_cast<CoreType>(type - 5);
    }

    int type() const { return static_cast<int>(type_); }
    double rc() const { return rc_; }
    double alpha() const { return alpha_; }

    /// f = fc(r), df = dfc/dr (1/length); r >= 0.
    void fdf(double r, double& f, double& df) const {
        if (r >= rc_) { f = 0.0; df = 0.0; return; }
        fdf(1, &r, &f, &df);
    }

    /// fc and dfc/dr for n distances, each 0 <= r[i] < rc. The loops vectorise (but COS's).
    void fdf(int n, const double* r, double* f, double* df) const {
        switch (type_) {
        case CutoffType::HARD:
            for (int i = 0; i < n; ++i) { f[i] = 1.0; df[i] = 0.0; }
            return;
        case CutoffType::TANHU:
        case CutoffType::TANH:
            // tanh(y) = (1 - e^-2y) / (1 + e^-2y), y = 1 - r/rc in (0, 1].
            for (int i = 0; i < n; ++i) {
                const double e = exp_approx(-2.0 * (1.0 - r[i] * inv_rc_));
                const double t = (1.0 - e) / (1.0 + e), t2 = t * t;
                f[i] = tanh_scale_ * t * t2;
                df[i] = 3.0 * tanh_scale_ * t2 * (t2 - 1.0) * inv_rc_;
            }
            return;
        case CutoffType::COS:
            // (cos(pi x) + 1)/2 = cos^2(pi x/2) (x clamped to [0, 1]: callers discard r >= rc),
            // without cancellation near rc; sin_cos_half_pi vectorises, std::cos/std::sin do
            // not (the triplet loops call this per r_jk).
            for (int i = 0; i < n; ++i) {
                constexpr double pi = 3.141592653589793;
                const double x = std::fmin(std::fmax((r[i] - r_inner_) * inv_width_, 0.0), 1.0);
                double s, c;
                sin_cos_half_pi(x, s, c);
                f[i] = c * c;
                df[i] = -pi * s * c * inv_width_;
            }
            return;
        default:  // EXP, POLY1-4: core of x = (r - alpha rc) / (rc - alpha rc)
            switch (core_) {  // one loop per core type (a switch per element kept it scalar)
            case CoreType::POLY1: core_loop<CoreType::POLY1>(n, r, f, df); return;
            case CoreType::POLY2: core_loop<CoreType::POLY2>(n, r, f, df); return;
            case CoreType::POLY3: core_loop<CoreType::POLY3>(n, r, f, df); return;
            case CoreType::POLY4: core_loop<CoreType::POLY4>(n, r, f, df); return;
            default: core_loop<CoreType::EXP>(n, r, f, df); return;
            }
        }
    }

private:
    template <CoreType T>
    void core_loop(int n, const double* r, double* f, double* df) const {
        const double r_inner = r_inner_, inv_width = inv_width_;
        for (int i = 0; i < n; ++i) {
            const double x = (r[i] - r_inner) * inv_width;
            double fi, dfi;
            core_fdf(T, x < 0.0 ? 0.0 : x, fi, dfi);
            f[i] = fi;
            df[i] = dfi * inv_width;
        }
    }

    CutoffType type_ = CutoffType::HARD;
    CoreType core_ = CoreType::POLY2;
    double rc_ = 0.0, alpha_ = 0.0;
    double inv_rc_ = 0.0, r_inner_ = 0.0, inv_width_ = 0.0;
    double tanh_scale_ = 1.0;  // 1 (TANHU) or 1/tanh^3(1) (TANH)
};

}  // namespace pyfragnn
