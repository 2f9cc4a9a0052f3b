// Atom-centred symmetry functions: input.nn parsing, n2p2 sort order, values and derivatives.
//
// Formulas (n2p2 v2.3.0; r_ij = |d_j|, cos = d_j.d_k / (r_ij r_ik), fc = cutoff function):
//   2   G = sum_{j in e1} exp(-eta (r_ij - rs)^2) fc(r_ij)
//   12  as 2 over all neighbours, each term weighted by Z_j
//   3   G = 2^(1-zeta) sum_{j<k, {e_j,e_k}={e1,e2}} (1 + lambda cos)^zeta
//           exp(-eta [(r_ij-rs)^2 + (r_ik-rs)^2 + (r_jk-rs)^2]) fc(r_ij) fc(r_ik) fc(r_jk)
//   9   as 3 without the r_jk Gaussian and fc(r_jk) (no r_jk < rc condition)
//   13  as 3 over all pairs, each term weighted by Z_j Z_k
//   20  G = sum_{j in e1, rl < r_ij < rc} C(r_ij; rl, rc)
//   21  G = sum_{j<k} C(r_ij) C(r_ik) C(r_jk) C(theta_ijk; theta_l, theta_r)   (theta in rad)
//   22  as 21 without C(r_jk)
// Angular terms with 1 + lambda cos <= 0 are 0. The pair sums run over unordered pairs of
// entries of the neighbour list, so periodic images of one atom are separate neighbours.
//
// Derivatives: an angular term T(r_ij, r_ik, r_jk, cos) has
//   dT/dd_j = (T_rij - T_cos cos/r_ij) u_j + (T_cos/r_ij) u_k - (T_rjk/r_jk) d_jk
//   dT/dd_k = (T_rik - T_cos cos/r_ik) u_k + (T_cos/r_ik) u_j + (T_rjk/r_jk) d_jk
// with u = d/r and d_jk = d_k - d_j; contract() sums the partial derivatives of all functions
// of a group weighted by dE/dG before forming these vectors once per triplet; where all of a
// group's (1 + lambda cos)^zeta are polynomials in cos (integer zeta <= kPolyMaxZeta, |lambda| <=
// 1: never clipped), those weighted sums are per-centre polynomials per Gaussian, evaluated by
// Horner's rule (water, type 3: contract() 4.7 -> 3.0 G instructions per two steps). For 21/22
// theta is atan2(|u_j x u_k|, cos) (dtheta/dcos = -1/sin theta); as in n2p2, triplets with
// cos = +-1 are skipped.
#include "symmetry_function.h"
#include "hot.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif


namespace pyfragnn {

namespace {

std::string where(const std::string& source, int line) {
    return line > 0 ? source + " line " + std::to_string(line) + ": " : source + ": ";
}

double parse_number(const std::string& token, const std::string& prefix) {
    const char* s = token.c_str();
    char* end = nullptr;
    const double v = std::strtod(s, &end);
    if (end == s || *end != '\0' || !std::isfinite(v))
        throw std::invalid_argument(prefix + "cannot parse '" + token + "' as a number");
    return v;
}

int parse_element(const std::string& token, const std::vector<std::string>& elements,
                  const std::string& prefix) {
    const auto it = std::find(elements.begin(), elements.end(), token);
    if (it == elements.end()) throw std::invalid_argument(prefix + "unknown element '" + token + "'");
    return static_cast<int>(it - elements.begin());
}

/// Integer value of zeta if it is one (n2p2 uses integer powers then), else -1.
int integer_zeta(double zeta) {
    const double z = std::round(zeta);
    return (z == zeta && z >= 0.0 && z < 1e6) ? static_cast<int>(z) : -1;
}

/// Adds the derivative of one angular triplet term (see file comment) to dEdd.
/// t_rjk_over_rjk = T_rjk / r_jk (0 for types without r_jk dependence).
inline void add_triplet_gradient(double* dEdd, int j, int k, const double* uj, const double* uk,
                                 const double* djk, double rij, double rik, double cos_t,
                                 double t_rij, double t_rik, double t_rjk_over_rjk,
                                 double t_cos) {
    const double aj = t_rij - t_cos * cos_t / rij, bj = t_cos / rij;
    const double ak = t_rik - t_cos * cos_t / rik, bk = t_cos / rik;
    double* gj = dEdd + 3 * j;
    double* gk = dEdd + 3 * k;
    for (int a = 0; a < 3; ++a) {
        gj[a] += aj * uj[a] + bj * uk[a] - t_rjk_over_rjk * djk[a];
        gk[a] += ak * uk[a] + bk * uj[a] + t_rjk_over_rjk * djk[a];
    }
}

/// Compact function for an n2p2 sub-type on (left, right); the angular part is never
/// asymmetric (n2p2 applies the `a` suffix to the radial part only).
CompactFunction make_compact(const std::string& subtype, bool radial, double left, double right) {
    CoreType core = CoreType::POLY2;
    bool asymmetric = false;
    if (!CompactFunction::parse_subtype(subtype, core, asymmetric))
        throw std::invalid_argument("unknown compact function sub-type '" + subtype + "'");
    return CompactFunction(core, radial && asymmetric, left, right);
}

/// sin of the angle between unit vectors, |u x v| (accurate near 0 and pi, unlike acos).
inline double sine(const double* u, const double* v) {
    const double x = u[1] * v[2] - u[2] * v[1], y = u[2] * v[0] - u[0] * v[2],
                 z = u[0] * v[1] - u[1] * v[0];
    return std::sqrt(x * x + y * y + z * z);
}

constexpr double kDegree = 3.141592653589793 / 180.0;
constexpr int kMomentMaxZeta = 8;  // type 9 with integer zeta up to this: Cartesian moments
constexpr int kPolyMaxZeta = 8;    // contract(): angular factors as polynomials up to this zeta
constexpr int kFingerprint = 4;  // buf[0..3]: descriptor address, n, d[0], d[3n-1]
constexpr int kMaxMaskedMembers = 4;  // compute_radial: merged groups of up to 4 elements

/// Whether (1 + lambda cos)^zeta is a polynomial in cos of degree zeta_int <= max_zeta: integer
/// zeta >= 1 and |lambda| <= 1, so that the base is never negative and never clipped.
inline bool unclipped_polynomial(int zeta_int, double lambda, int max_zeta) {
    return zeta_int >= 1 && zeta_int <= max_zeta && std::fabs(lambda) <= 1.0;
}

/// out[m] = scale C(zeta, m) lambda^m, m = 0..zeta: the coefficients of scale (1 + lambda c)^zeta
/// in powers of c.
inline void power_polynomial(int zeta, double lambda, double scale, double* out) {
    double binom = 1.0, lp = 1.0;
    for (int m = 0; m <= zeta; ++m) {
        out[m] = scale * binom * lp;
        binom = binom * (zeta - m) / (m + 1);
        lp *= lambda;
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Parameters

SymmetryFunctionParams parse_symmetry_function(const std::vector<std::string>& tokens,
                                               const std::vector<std::string>& elements,
                                               int cutoff_type, double cutoff_alpha,
                                               const std::string& source, int line) {
    const std::string prefix = where(source, line);
    if (tokens.size() < 2)
        throw std::invalid_argument(prefix + "symmetry function needs an element and a type");
    SymmetryFunctionParams p;
    p.line = line;
    p.cutoff_type = cutoff_type;
    p.cutoff_alpha = cutoff_alpha;
    {
        const char* s = tokens[1].c_str();
        char* end = nullptr;
        const long t = std::strtol(s, &end, 10);
        if (end == s || *end != '\0')
            throw std::invalid_argument(prefix + "unknown symmetry function type '" + tokens[1] + "'");
        p.type = static_cast<int>(t);
    }
    const std::size_t got = tokens.size();
    auto expect = [&](std::size_t lo, std::size_t hi) {
        if (got < lo || got > hi) {
            const std::string want = lo == hi ? std::to_string(lo)
                                              : std::to_string(lo) + " or " + std::to_string(hi);
            throw std::invalid_argument(prefix + "expected " + want + " values for type " +
                                        std::to_string(p.type) + ", got " + std::to_string(got));
        }
    };
    auto num = [&](std::size_t i) { return parse_number(tokens[i], prefix); };
    auto elem = [&](std::size_t i) { return parse_element(tokens[i], elements, prefix); };
    switch (p.type) {
    case 2:  // ec 2 e1 eta rs rc
        expect(6, 6);
        p.e1 = elem(2); p.eta = num(3); p.rs = num(4); p.rc = num(5);
        break;
    case 3:
    case 9:  // ec t e1 e2 eta lambda zeta rc [rs]
        expect(8, 9);
        p.e1 = elem(2); p.e2 = elem(3); p.eta = num(4); p.lambda = num(5); p.zeta = num(6);
        p.rc = num(7);
        if (got == 9) p.rs = num(8);
        break;
    case 12:  // ec 12 eta rs rc
        expect(5, 5);
        p.eta = num(2); p.rs = num(3); p.rc = num(4);
        break;
    case 13:  // ec 13 eta rs lambda zeta rc
        expect(7, 7);
        p.eta = num(2); p.rs = num(3); p.lambda = num(4); p.zeta = num(5); p.rc = num(6);
        break;
    case 20:  // ec 20 e1 rl rc subtype
        expect(6, 6);
        p.e1 = elem(2); p.rl = num(3); p.rc = num(4); p.subtype = tokens[5];
        break;
    case 21:
    case 22:  // ec t e1 e2 rl rc theta_l theta_r subtype
        expect(9, 9);
        p.e1 = elem(2); p.e2 = elem(3); p.rl = num(4); p.rc = num(5);
        p.theta_l = num(6); p.theta_r = num(7); p.subtype = tokens[8];
        break;
    default:
        throw std::invalid_argument(prefix + "unknown symmetry function type " +
                                    std::to_string(p.type));
    }
    p.ec = elem(0);
    if (p.e2 >= 0 && p.e1 > p.e2) std::swap(p.e1, p.e2);
    if (!(p.rc > 0.0)) throw std::invalid_argument(prefix + "cutoff radius must be positive");
    if (p.type <= 13) {
        if (p.eta < 0.0) throw std::invalid_argument(prefix + "eta must not be negative");
        try {
            CutoffFunction(cutoff_type, p.rc, cutoff_alpha);
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument(prefix + e.what());
        }
        if ((p.type == 3 || p.type == 9 || p.type == 13) && !(p.zeta >= 1.0))
            throw std::invalid_argument(prefix + "zeta must be >= 1");
    } else {
        CoreType core;
        bool asymmetric;
        if (!CompactFunction::parse_subtype(p.subtype, core, asymmetric))
            throw std::invalid_argument(prefix + "unknown compact function sub-type '" +
                                        p.subtype + "' (p1-p4, p1a-p4a or e)");
        if (!(p.rl < p.rc))
            throw std::invalid_argument(prefix + "compact radial bounds need rl < rc");
        if (p.type != 20) {
            const double centre = 0.5 * (p.theta_l + p.theta_r);
            if (!(p.theta_l < p.theta_r) || p.theta_r - p.theta_l > 360.0 ||
                (p.theta_l < 0.0 && centre != 0.0) || (p.theta_r > 180.0 && centre != 180.0))
                throw std::invalid_argument(
                    prefix + "angle bounds need theta_l < theta_r within [0, 180] degrees "
                             "unless centred on 0 or 180");
        }
    }
    return p;
}

std::string format_symmetry_function(const SymmetryFunctionParams& p,
                                     const std::vector<std::string>& elements) {
    auto el = [&](int e) { return elements.at(static_cast<std::size_t>(e)); };
    std::string s = el(p.ec) + " " + std::to_string(p.type);
    auto add = [&](double v) {
        char b[32];
        std::snprintf(b, sizeof b, " %.17g", v);
        s += b;
    };
    switch (p.type) {
    case 2: s += " " + el(p.e1); add(p.eta); add(p.rs); add(p.rc); break;
    case 3:
    case 9:
        s += " " + el(p.e1) + " " + el(p.e2);
        add(p.eta); add(p.lambda); add(p.zeta); add(p.rc); add(p.rs);
        break;
    case 12: add(p.eta); add(p.rs); add(p.rc); break;
    case 13: add(p.eta); add(p.rs); add(p.lambda); add(p.zeta); add(p.rc); break;
    case 20: s += " " + el(p.e1); add(p.rl); add(p.rc); s += " " + p.subtype; break;
    case 21:
    case 22:
        s += " " + el(p.e1) + " " + el(p.e2);
        add(p.rl); add(p.rc); add(p.theta_l); add(p.theta_r);
        s += " " + p.subtype;
        break;
    default: throw std::invalid_argument("unknown symmetry function type " + std::to_string(p.type));
    }
    return s;
}

bool symmetry_function_less(const SymmetryFunctionParams& a, const SymmetryFunctionParams& b) {
    // Keys as n2p2's operator< of each class (see reference notes section 3).
    if (a.ec != b.ec) return a.ec < b.ec;
    if (a.type != b.type) return a.type < b.type;
    if (a.type >= 20) {
        if (a.subtype != b.subtype) return a.subtype < b.subtype;
        if (a.e1 != b.e1) return a.e1 < b.e1;
        if (a.type != 20 && a.e2 != b.e2) return a.e2 < b.e2;
        if (a.rc != b.rc) return a.rc < b.rc;
        if (a.rl != b.rl) return a.rl < b.rl;
        if (a.type == 20) return false;
        if (a.theta_l != b.theta_l) return a.theta_l < b.theta_l;
        return a.theta_r < b.theta_r;
    }
    if (a.cutoff_type != b.cutoff_type) return a.cutoff_type < b.cutoff_type;
    if (a.cutoff_alpha != b.cutoff_alpha) return a.cutoff_alpha < b.cutoff_alpha;
    if (a.rc != b.rc) return a.rc < b.rc;
    if (a.eta != b.eta) return a.eta < b.eta;
    if (a.rs != b.rs) return a.rs < b.rs;
    if (a.type == 2) return a.e1 < b.e1;
    if (a.type == 12) return false;
    if (a.zeta != b.zeta) return a.zeta < b.zeta;
    if (a.lambda != b.lambda) return a.lambda < b.lambda;
    if (a.type == 13) return false;
    if (a.e1 != b.e1) return a.e1 < b.e1;
    return a.e2 < b.e2;
}

// ---------------------------------------------------------------------------------------------
// Descriptor set-up: group functions that share neighbour selection and cutoff.

Descriptor::Descriptor(std::vector<SymmetryFunctionParams> sfs, std::vector<int> atomic_numbers)
    : sfs_(std::move(sfs)), z_(std::move(atomic_numbers)) {
    n_elements_ = static_cast<int>(z_.size());
    for (std::size_t i = 0; i < sfs_.size(); ++i) {
        const SymmetryFunctionParams& p = sfs_[i];
        const int s = static_cast<int>(i);
        if (p.ec != sfs_[0].ec)
            throw std::invalid_argument("Descriptor: functions of different central elements");
        if (i > 0 && symmetry_function_less(p, sfs_[i - 1]))
            throw std::invalid_argument("Descriptor: functions not in n2p2 sorted order");
        if (p.e1 >= n_elements_ || p.e2 >= n_elements_)
            throw std::invalid_argument("Descriptor: neighbour element index out of range");
        cutoff_ = std::max(cutoff_, p.rc);
        switch (p.type) {
        case 2:
        case 12: {
            const int e1 = p.type == 2 ? p.e1 : -1;
            auto it = std::find_if(radial_.begin(), radial_.end(), [&](const RadialGroup& g) {
                return g.e1 == e1 && g.fc.type() == p.cutoff_type &&
                       g.fc.alpha() == p.cutoff_alpha && g.fc.rc() == p.rc;
            });
            if (it == radial_.end())
                it = radial_.insert(radial_.end(),
                                    RadialGroup{e1, CutoffFunction(p.cutoff_type, p.rc, p.cutoff_alpha),
                                                {}, true});
            it->terms.push_back({s, p.eta, p.rs});
            break;
        }
        case 3:
        case 9:
        case 13: {
            const int zi = integer_zeta(p.zeta);
            if (p.type == 9 && unclipped_polynomial(zi, p.lambda, kMomentMaxZeta)) {
                // (1 + lambda cos)^zeta >= 0 needs no clipping: moment expansion (see below).
                auto find_set = [&](int e) {
                    for (std::size_t k = 0; k < msets_.size(); ++k) {
                        const MomentSet& m = msets_[k];
                        if (m.e1 == e && m.fc.type() == p.cutoff_type &&
                            m.fc.alpha() == p.cutoff_alpha && m.fc.rc() == p.rc &&
                            m.eta == p.eta && m.rs == p.rs)
                            return static_cast<int>(k);
                    }
                    msets_.push_back({e, CutoffFunction(p.cutoff_type, p.rc, p.cutoff_alpha),
                                      p.eta, p.rs, 0, true});
                    return static_cast<int>(msets_.size()) - 1;
                };
                const int s1 = find_set(p.e1), s2 = find_set(p.e2);
                auto it = std::find_if(mpairs_.begin(), mpairs_.end(), [&](const MomentPair& q) {
                    return q.s1 == s1 && q.s2 == s2;
                });
                if (it == mpairs_.end()) it = mpairs_.insert(mpairs_.end(), MomentPair{s1, s2, 0, {}});
                it->degree = std::max(it->degree, zi);
                msets_[s1].degree = std::max(msets_[s1].degree, zi);
                msets_[s2].degree = std::max(msets_[s2].degree, zi);
                // G = 2^(1-zeta) sum_{pairs} (1 + lambda cos)^zeta A_j A_k with
                // (1 + lambda cos)^zeta = sum_m C(zeta, m) lambda^m cos^m; over unordered pairs
                // of one set: half the double sum less its diagonal (cos = 1).
                const double norm = std::pow(2.0, 1.0 - p.zeta), half = s1 == s2 ? 0.5 : 1.0;
                MomentTerm t{s, std::vector<double>(zi + 1), 0.0};
                power_polynomial(zi, p.lambda, half * norm, t.coef.data());
                if (s1 == s2) t.diag = half * norm * std::pow(1.0 + p.lambda, zi);
                it->terms.push_back(std::move(t));
                break;
            }
            const int e1 = p.type == 13 ? -1 : p.e1, e2 = p.type == 13 ? -1 : p.e2;
            auto it = std::find_if(angular_.begin(), angular_.end(), [&](const AngularGroup& g) {
                return g.type == p.type && g.e1 == e1 && g.e2 == e2 &&
                       g.fc.type() == p.cutoff_type && g.fc.alpha() == p.cutoff_alpha &&
                       g.fc.rc() == p.rc;
            });
            if (it == angular_.end())
                it = angular_.insert(angular_.end(),
                                     AngularGroup{p.type, e1, e2,
                                                  CutoffFunction(p.cutoff_type, p.rc, p.cutoff_alpha),
                                                  {}, {}, {}, true});
            if (!(p.zeta >= 1.0))
                throw std::invalid_argument("Descriptor: zeta must be >= 1");
            AngularGroup& g = *it;
            int q = 0;
            while (q < static_cast<int>(g.gauss.size()) &&
                   !(g.gauss[q].eta == p.eta && g.gauss[q].rs == p.rs)) ++q;
            if (q == static_cast<int>(g.gauss.size())) g.gauss.push_back({p.eta, p.rs, q, 0});
            int w = 0;
            while (w < static_cast<int>(g.powers.size()) &&
                   !(g.powers[w].lambda == p.lambda && g.powers[w].zeta == p.zeta)) ++w;
            if (w == static_cast<int>(g.powers.size()))
                g.powers.push_back({p.lambda, p.zeta, integer_zeta(p.zeta)});
            g.terms.push_back({s, q, w, std::pow(2.0, 1.0 - p.zeta)});
            break;
        }
        case 20:
            compact_radial_.push_back({s, p.e1, p.rl, p.rc, make_compact(p.subtype, true, p.rl, p.rc)});
            break;
        case 21:
        case 22: {
            auto it = std::find_if(compact_angular_.begin(), compact_angular_.end(),
                                   [&](const CompactAngularGroup& g) {
                                       return g.type == p.type && g.e1 == p.e1 && g.e2 == p.e2 &&
                                              g.rl == p.rl && g.rc == p.rc &&
                                              sfs_[g.terms[0].sf].subtype == p.subtype;
                                   });
            if (it == compact_angular_.end())
                it = compact_angular_.insert(
                    compact_angular_.end(),
                    CompactAngularGroup{p.type, p.e1, p.e2, p.rl, p.rc,
                                        make_compact(p.subtype, true, p.rl, p.rc), {}});
            it->terms.push_back(
                {s, make_compact(p.subtype, false, p.theta_l * kDegree, p.theta_r * kDegree)});
            break;
        }
        default:
            throw std::invalid_argument("Descriptor: unsupported symmetry function type " +
                                        std::to_string(p.type));
        }
    }
    // Radial groups of consecutive neighbour elements with one cutoff and the same Gaussians
    // (n2p2-style sets repeat them for every element) become one group over the joint list of
    // those elements: one pass of longer loops (fc, exp) instead of one pass per element.
    {
        std::vector<RadialGroup> merged;
        for (RadialGroup& g : radial_) {
            g.e_last = g.e1;
            g.sf.clear();
            for (const RadialTerm& t : g.terms) g.sf.push_back(t.sf);
            if (!merged.empty()) {
                RadialGroup& h = merged.back();
                bool same = h.e1 >= 0 && g.e1 == h.e_last + 1 && g.fc.type() == h.fc.type() &&
                            g.fc.alpha() == h.fc.alpha() && g.fc.rc() == h.fc.rc() &&
                            g.terms.size() == h.terms.size();
                for (std::size_t t = 0; same && t < g.terms.size(); ++t)
                    same = g.terms[t].eta == h.terms[t].eta && g.terms[t].rs == h.terms[t].rs;
                if (same) {
                    const std::size_t members = h.e_last - h.e1 + 1;
                    std::vector<int> sf;
                    for (std::size_t t = 0; t < h.terms.size(); ++t) {
                        sf.insert(sf.end(), h.sf.begin() + t * members, h.sf.begin() + (t + 1) * members);
                        sf.push_back(g.terms[t].sf);
                    }
                    h.sf = std::move(sf);
                    h.e_last = g.e1;
                    continue;
                }
            }
            merged.push_back(std::move(g));
        }
        radial_ = std::move(merged);
    }
    // r_jk Gaussians exp(-eta (r_jk - rs)^2) of a group: when eta is an integer multiple m of a
    // smaller eta with the same rs, use base^m (m <= 64) instead of another exp per triplet.
    for (AngularGroup& g : angular_) {  // terms by Gaussian (in term order) for contract()
        const int ng = static_cast<int>(g.gauss.size());
        g.gauss_start.assign(ng + 1, 0);
        g.by_gauss.clear();
        for (int q = 0; q < ng; ++q) {
            for (int t = 0; t < static_cast<int>(g.terms.size()); ++t)
                if (g.terms[t].gauss == q) g.by_gauss.push_back(t);
            g.gauss_start[q + 1] = static_cast<int>(g.by_gauss.size());
        }
        g.power_by_gauss.clear();
        for (int t : g.by_gauss) g.power_by_gauss.push_back(g.terms[t].power);
        // contract()'s polynomial path when every power of the group is one.
        int degree = 0;
        for (const AngularPower& p : g.powers)
            degree = unclipped_polynomial(p.zeta_int, p.lambda, kPolyMaxZeta) && degree >= 0
                         ? std::max(degree, p.zeta_int)
                         : -1;
        g.poly_degree = std::max(degree, 0);
        g.poly_coef.assign(g.by_gauss.size() * (g.poly_degree + 1), 0.0);
        for (std::size_t a = 0; a < g.by_gauss.size() && g.poly_degree > 0; ++a) {
            const AngularPower& p = g.powers[g.power_by_gauss[a]];
            power_polynomial(p.zeta_int, p.lambda, 1.0, &g.poly_coef[a * (g.poly_degree + 1)]);
        }
    }
    for (AngularGroup& g : angular_) {
        for (Gaussian& a : g.gauss) {
            double best_eta = a.eta;
            for (int b = 0; b < static_cast<int>(g.gauss.size()); ++b) {
                const Gaussian& c = g.gauss[b];
                if (c.rs != a.rs || !(c.eta > 0.0) || !(c.eta < best_eta)) continue;
                const double m = std::round(a.eta / c.eta);
                if (m >= 2.0 && m <= 64.0 && std::fabs(a.eta - m * c.eta) <= 1e-14 * a.eta) {
                    best_eta = c.eta;
                    a.base = b;
                    a.power = static_cast<int>(m);
                }
            }
        }
        // A base is itself computed with exp (power 0): chains have length one.
        for (Gaussian& a : g.gauss)
            if (a.power > 0 && g.gauss[a.base].power > 0) { a.base = -1; a.power = 0; }
        for (int q = 0; q < static_cast<int>(g.gauss.size()); ++q)
            if (g.gauss[q].power == 0) g.gauss[q].base = q;
    }
    // exp_approx needs exponents >= -708; distances are below cutoff_.
    auto in_range = [&](double eta, double rs) {
        return eta * std::max(rs * rs, (cutoff_ - rs) * (cutoff_ - rs)) <= 700.0;
    };
    for (RadialGroup& g : radial_)
        for (const RadialTerm& t : g.terms) g.fast_exp = g.fast_exp && in_range(t.eta, t.rs);
    for (AngularGroup& g : angular_)
        for (const Gaussian& q : g.gauss)  // types 3, 13: one exp of the three-distance sum
            g.fast_exp = g.fast_exp && in_range(g.type == 9 ? q.eta : 3.0 * q.eta, q.rs);
    // Lane groups: consecutive sets of one degree, up to four (n2p2-style potentials give one set
    // per element and Gaussian, all of one degree); a product per (g1, g2, lane offset).
    for (int si = 0; si < static_cast<int>(msets_.size()); ++si) {
        if (mgroups_.empty() || mgroups_.back().count == 4 ||
            mgroups_.back().degree != msets_[si].degree)
            mgroups_.push_back({si, 0, msets_[si].degree});
        mset_group_.push_back(static_cast<int>(mgroups_.size()) - 1);
        mset_lane_.push_back(mgroups_.back().count++);
    }
    for (int pi = 0; pi < static_cast<int>(mpairs_.size()); ++pi) {
        const MomentPair& mp = mpairs_[pi];
        const int g1 = mset_group_[mp.s1], g2 = mset_group_[mp.s2], l1 = mset_lane_[mp.s1];
        const int d = (mset_lane_[mp.s2] - l1 + 4) % 4;
        auto it = std::find_if(mproducts_.begin(), mproducts_.end(), [&](const MomentProduct& q) {
            return q.g1 == g1 && q.g2 == g2 && q.d == d;
        });
        if (it == mproducts_.end()) {
            MomentProduct pd;
            pd.g1 = g1; pd.g2 = g2; pd.d = d; pd.degree = 0;
            std::fill(pd.pair, pd.pair + 4, -1);
            it = mproducts_.insert(mproducts_.end(), std::move(pd));
        }
        it->pair[l1] = pi;  // one pair per (s1, s2): s1 fixes the lane, d then s2
        it->degree = std::max(it->degree, mp.degree);
    }
    for (MomentProduct& pd : mproducts_) {  // slots: lane l's u-th function of pair[l]
        const int nq = pd.degree + 1;
        for (int l = 0; l < 4; ++l)
            if (pd.pair[l] >= 0)
                pd.nslot = std::max(pd.nslot, static_cast<int>(mpairs_[pd.pair[l]].terms.size()));
        pd.sf.assign(4 * static_cast<std::size_t>(pd.nslot), -1);
        pd.sf0.assign(4 * static_cast<std::size_t>(pd.nslot), 0);
        pd.live.assign(4 * static_cast<std::size_t>(pd.nslot), 0);
        pd.diag.assign(4 * static_cast<std::size_t>(pd.nslot), 0.0);
        pd.coef.assign(4 * static_cast<std::size_t>(pd.nslot) * nq, 0.0);
        for (int l = 0; l < 4; ++l) {
            if (pd.pair[l] < 0) continue;
            const MomentPair& mp = mpairs_[pd.pair[l]];
            if (mp.s1 == mp.s2) pd.dset[l] = mp.s1;
            for (std::size_t u = 0; u < mp.terms.size(); ++u) {
                const MomentTerm& t = mp.terms[u];
                pd.sf[4 * u + l] = t.sf;
                pd.sf0[4 * u + l] = t.sf;
                pd.live[4 * u + l] = -1;
                pd.diag[4 * u + l] = t.diag;
                for (int q = 0; q < nq && q < static_cast<int>(t.coef.size()); ++q)
                    pd.coef[(u * nq + q) * 4 + l] = t.coef[q];
            }
        }
    }
    for (MomentSet& m : msets_) m.fast_exp = in_range(m.eta, m.rs);
}

double Descriptor::cutoff() const { return cutoff_; }

// ---------------------------------------------------------------------------------------------
// Evaluation.
//
// compute() leaves in the workspace what contract() needs, so that contract() evaluates no
// transcendental functions for the Gaussian types:
//   ibuf: [0, ne+1)     start of the neighbour list of element e; lists hold the neighbours
//                       with r < cutoff() in input order, the list of all elements is their
//                       concatenation [start[0], start[ne]) ("list positions");
//         [ne+1, 2ne+2) fill cursors;  [2ne+2] buf offset of the scratch section;
//         per radial group: buf offset of its values;
//         per angular group: buf offsets of neighbour values and triplet arrays, triplet
//                       capacity, triplet count, ibuf offset of the triplet (j, k) arrays;
//         the lists; the triplet arrays.
//   buf:  fingerprint, unit vectors u (3n), by list position: d, u, r (7 arrays of size M);
//         radial group (m list entries): r[m], fc[m], dfc[m], then per term w_j exp(-eta (r-rs)^2);
//         angular group: records (fc, dfc, r, 1/r) [n][4], for type 9 per Gaussian
//         exp(-eta (r_ij-rs)^2) [n] (indexed by neighbour), fc by position in the e2 list
//         [m2 + 8], and per triplet (capacity c, 8 more than the candidates) cos[c], r_jk[c]
//         (r_jk^2 from the selection, 1/r_jk once compute() is done with it), fc(r_jk)[c],
//         dfc(r_jk)/r_jk [c] (contract() needs r_jk only divided by it), per Gaussian (types
//         3, 13) the product
//         w_j w_k exp(-eta [(r_ij-rs)^2 + (r_ik-rs)^2 + (r_jk-rs)^2]) [c] (one exp of the sum),
//         then r_ij[c], r_ik[c], fc(r_ij) fc(r_ik) [c] (written by the selection, so that the
//         blocked loops gather nothing);
//         moment set (m list entries, m4 = m rounded up to a multiple of 4): A[m4], dA/dr[m4],
//         u_x, u_y, u_z, 1/r [m4] (A, dA zero past m, the others 0, 0, 0, 1), monomials in
//         blocks of four neighbours, one per vector lane ([m4/4][nm][4]), moments M[nm], D,
//         then W[nm] (unused), dE/dD; per lane group of sets: M and contract()'s W and
//         Wu[3][nm_low] (see contract) by lane, [nm][4] each;
//         scratch section (block scratch).
// Functions of a group share neighbour lists, per-neighbour factors and per-triplet geometry.
// Triplets are selected first (branch-free; with AVX-512 eight candidates at a time compressed
// by vcompresspd, with AVX2 four by a permutation table; see select_isa()), then processed in
// blocks of kBlock with loops over
// arrays that the compiler vectorises (exp_approx instead of std::exp). Gaussians whose eta is
// an integer multiple of another one's are integer powers of it (one exp per triplet).

namespace {

constexpr int kBlock = 128;  // a multiple of 4 (the angular contraction reads 4-lane groups)

// Four doubles (AVX2 registers in the x86-64-v3 clones; two SSE2 registers otherwise). The
// helpers are inlined (flatten), so GCC's note that such values change the calling convention
// without AVX does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef double v4d __attribute__((vector_size(32)));
// Unaligned loads and stores through a vector type of 8-byte alignment, not memcpy: a memcpy
// store may alias any object, so GCC reloaded std::vector members' data pointers after each
// st4 in a loop; a store of doubles may alias doubles only.
typedef double v4d_u __attribute__((vector_size(32), aligned(8)));
inline v4d ld4(const double* p) { return *reinterpret_cast<const v4d_u*>(p); }
inline void st4(double* p, const v4d& x) { *reinterpret_cast<v4d_u*>(p) = x; }
typedef long long v4i __attribute__((vector_size(32)));

/// Number of monomials in 3 variables of degree <= d, (d + 1)(d + 2)(d + 3)/6 (0 for d = -1).
constexpr int mono_count(int d) { return (d + 1) * (d + 2) * (d + 3) / 6; }

/// For NB blocks of four neighbours' monomials of degree <= DEG (mo: [nm][4] per block,
/// `stride` apart), per lane p = sum_{k<nm} W[4 k] u^k and p_ax = sum_{k<nm_low} Wu[4 (ax nm_low
/// + k)] u^k (W and Wu: one lane of a group's [.][4] arrays; nm_low the count of degree < DEG),
/// each summed in k order as for one neighbour alone; the 4 NB chains of adds overlap. DEG is
/// a template parameter so that the loops over the monomials unroll.
template <int NB, int DEG>
inline void mono_dots(const double* W, const double* Wu, const double* mo, std::size_t stride,
                      v4d* p, v4d* px, v4d* py, v4d* pz) {
    constexpr int nm = mono_count(DEG), nm_low = mono_count(DEG - 1);
    v4d s[NB], sx[NB], sy[NB], sz[NB];
    for (int h = 0; h < NB; ++h) s[h] = sx[h] = sy[h] = sz[h] = v4d{0.0, 0.0, 0.0, 0.0};
#pragma GCC unroll 128
    for (int k = 0; k < nm_low; ++k) {
        const double w = W[4 * k], wx = Wu[4 * k], wy = Wu[4 * (nm_low + k)],
                     wz = Wu[4 * (2 * nm_low + k)];
        for (int h = 0; h < NB; ++h) {
            const v4d v = ld4(mo + h * stride + 4 * k);
            s[h] += w * v;
            sx[h] += wx * v;
            sy[h] += wy * v;
            sz[h] += wz * v;
        }
    }
#pragma GCC unroll 48
    for (int k = nm_low; k < nm; ++k)
        for (int h = 0; h < NB; ++h) s[h] += W[4 * k] * ld4(mo + h * stride + 4 * k);
    for (int h = 0; h < NB; ++h) { p[h] = s[h]; px[h] = sx[h]; py[h] = sy[h]; pz[h] = sz[h]; }
}

/// Columns of the 4x4 matrix with rows a, b, c, d.
inline void transpose4(const v4d& a, const v4d& b, const v4d& c, const v4d& d, v4d& w, v4d& x,
                       v4d& y, v4d& z) {
    const v4d ab0 = __builtin_shuffle(a, b, v4i{0, 4, 2, 6}), ab1 = __builtin_shuffle(a, b, v4i{1, 5, 3, 7});
    const v4d cd0 = __builtin_shuffle(c, d, v4i{0, 4, 2, 6}), cd1 = __builtin_shuffle(c, d, v4i{1, 5, 3, 7});
    w = __builtin_shuffle(ab0, cd0, v4i{0, 1, 4, 5});
    x = __builtin_shuffle(ab1, cd1, v4i{0, 1, 4, 5});
    y = __builtin_shuffle(ab0, cd0, v4i{2, 3, 6, 7});
    z = __builtin_shuffle(ab1, cd1, v4i{2, 3, 6, 7});
}

/// mono_count(d) for a degree d known at run time, 0 <= d <= kMomentMaxZeta. A table: the
/// formula's division was ~2 % of an IRMOF-1 step's instructions (the moment loops ask for it
/// per degree).
struct MonoCounts {
    int n[kMomentMaxZeta + 1];
    constexpr MonoCounts() : n() {
        for (int d = 0; d <= kMomentMaxZeta; ++d) n[d] = mono_count(d);
    }
};
constexpr MonoCounts kNMono{};
inline int n_mono(int d) { return kNMono.n[d]; }

/// The monomials u^a = u_x^a_x u_y^a_y u_z^a_z of degree |a| <= kMomentMaxZeta in the order of
/// lane_monomials: by degree m, within a degree a_x from m down, then a_y from m - a_x down
/// (index n_mono(m - 1) + (m - a_x)(m - a_x + 1)/2 + a_z). Per monomial k: the multinomial
/// weight m!/a! of (u.v)^m = sum_{|a|=m} m!/a! u^a v^a, and per axis the index of a + e_axis
/// (-1 past the highest degree) and a_axis + 1 (d u^(a + e_axis) / d u_axis = (a_axis + 1) u^a).
/// Compile-time tables, so that the unrolled moment loops read constants.
struct MonoTable {
    static constexpr int kCount = mono_count(kMomentMaxZeta);
    double weight[kCount];
    int up[kCount][3];
    double up_fac[kCount][3];
    static constexpr int index(int a, int b, int c) {
        const int m = a + b + c;
        return mono_count(m - 1) + (m - a) * (m - a + 1) / 2 + c;
    }
    constexpr MonoTable() : weight(), up(), up_fac() {
        double fact[kMomentMaxZeta + 1] = {1.0};
        for (int k = 1; k <= kMomentMaxZeta; ++k) fact[k] = fact[k - 1] * k;
        for (int m = 0; m <= kMomentMaxZeta; ++m)
            for (int a = m; a >= 0; --a)
                for (int b = m - a; b >= 0; --b) {
                    const int c = m - a - b, k = index(a, b, c);
                    weight[k] = fact[m] / (fact[a] * fact[b] * fact[c]);
                    const int e[3] = {a, b, c};
                    for (int ax = 0; ax < 3; ++ax) {
                        up[k][ax] = m == kMomentMaxZeta ? -1
                                    : index(a + (ax == 0), b + (ax == 1), c + (ax == 2));
                        up_fac[k][ax] = e[ax] + 1;
                    }
                }
    }
};
constexpr MonoTable kMono{};

/// Monomials u^a (degree <= D) of four neighbours, one per lane ([nm][4] at mo), in the order of
/// the tables: degree block d = x * block d-1, then y * its a = 0 tail (d entries), then z * its
/// last entry. D is a template parameter so that the short loops unroll (they were ~3 % of an
/// IRMOF-1 step's instructions as loops).
template <int D>
inline void lane_monomials(double* mo, const v4d& ux, const v4d& uy, const v4d& uz) {
    st4(mo, v4d{1.0, 1.0, 1.0, 1.0});
#pragma GCC unroll 9
    for (int d = 1, prev = 0; d <= D; ++d) {
        const int len = d * (d + 1) / 2, out = prev + len;  // block d-1: [prev, out)
#pragma GCC unroll 36
        for (int i = 0; i < len; ++i) st4(mo + 4 * (out + i), ux * ld4(mo + 4 * (prev + i)));
#pragma GCC unroll 9
        for (int i = 0; i < d; ++i) st4(mo + 4 * (out + len + i), uy * ld4(mo + 4 * (out - d + i)));
        st4(mo + 4 * (out + len + d), uz * ld4(mo + 4 * (out - 1)));
        prev = out;
    }
}

/// n rounded up to a multiple of 4 (whole 4-lane groups).
inline int round_up4(int n) { return (n + 3) & ~3; }

/// Lanes rotated by D: lane l holds v's lane (l + D) mod 4.
template <int D>
inline v4d rotate(const v4d& v) {
    return __builtin_shuffle(v, v4i{D % 4, (D + 1) % 4, (D + 2) % 4, (D + 3) % 4});
}

/// f(std::integral_constant<int, m>()) for 0 <= m <= 8, else f(std::integral_constant<int,
/// Other>()): loops inside f then have m as a constant (with_power, with_degree).
template <int Other, class F>
inline void with_small_constant(int m, F&& f) {
    switch (m) {
    case 0: f(std::integral_constant<int, 0>{}); break;
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    default: f(std::integral_constant<int, Other>{}); break;
    }
}

/// f(std::integral_constant<int, degree>()) for 0 <= degree <= kMomentMaxZeta: the moment
/// products' loops with the degree known at compile time unroll completely (their loop control
/// per degree block of 1, 3, 6, ... monomials cost as much as the arithmetic).
template <class F>
inline void with_degree(int degree, F&& f) {
    static_assert(kMomentMaxZeta == 8, "one case per degree");
    with_small_constant<kMomentMaxZeta>(degree, f);
}

/// S[m] = sum_{|a|=m} w_a M1[a] rotate<D>(M2[a]) for m <= DEG (M1, M2: [nm][4], monomials by
/// degree; two partial sums per degree, in monomial order).
template <int D, int DEG>
inline void lane_product_sums(const double* w, const double* M1, const double* M2, v4d* S) {
#pragma GCC unroll 9
    for (int deg = 0; deg <= DEG; ++deg) {
        v4d s0 = {0.0, 0.0, 0.0, 0.0}, s1 = s0;
        const int end = mono_count(deg);
        int k = mono_count(deg - 1);
#pragma GCC unroll 32
        for (; k + 1 < end; k += 2) {
            s0 += w[k] * ld4(M1 + 4 * k) * rotate<D>(ld4(M2 + 4 * k));
            s1 += w[k + 1] * ld4(M1 + 4 * k + 4) * rotate<D>(ld4(M2 + 4 * k + 4));
        }
        if (k < end) s0 += w[k] * ld4(M1 + 4 * k) * rotate<D>(ld4(M2 + 4 * k));
        S[deg] = s0 + s1;
    }
}

/// dE/dM of a product's pairs up to degree DEG: W1 += C rotate<D>(M2) (lane l: dE/dM of the
/// pair's first set), then W2 += rotate<-D>(C M1) (its second set's lane), with
/// C_k = dS[deg k] w_k (w: m!/a!); W1 may be W2.
template <int D, int DEG>
inline void lane_product_grad(const v4d* dS, const double* w, const double* M1, const double* M2,
                              double* W1, double* W2) {
    const bool same = W1 == W2;  // one group: both updates of a monomial in registers, in order
#pragma GCC unroll 9
    for (int deg = 0; deg <= DEG; ++deg) {
        const v4d dSd = dS[deg];
        const int k0 = mono_count(deg - 1), k1 = mono_count(deg);
        if (same)
#pragma GCC unroll 64
            for (int k = k0; k < k1; ++k) {
                const v4d c = dSd * w[k];
                const v4d x = ld4(W1 + 4 * k) + c * rotate<D>(ld4(M2 + 4 * k));
                st4(W1 + 4 * k, x + rotate<(4 - D) % 4>(c * ld4(M1 + 4 * k)));
            }
        else
#pragma GCC unroll 64
            for (int k = k0; k < k1; ++k) {
                const v4d c = dSd * w[k];
                st4(W1 + 4 * k, ld4(W1 + 4 * k) + c * rotate<D>(ld4(M2 + 4 * k)));
                st4(W2 + 4 * k, ld4(W2 + 4 * k) + rotate<(4 - D) % 4>(c * ld4(M1 + 4 * k)));
            }
    }
}

/// Monomials of four neighbours at once, one per lane (lane_monomials; mono: [m4/4][nm][4]),
/// and the moments Mo[k] = sum_j A_j u_j^a (k < nm) summed over the neighbours in order: per
/// lane, four monomials at a time (transposed from the lanes). DEG: the degree, so that the
/// loops over the monomials unroll.
template <int DEG>
inline void lane_moments(int m4, const double* A, const double* ux4, const double* uy4,
                         const double* uz4, double* mono, double* Mo) {
    constexpr int nm = mono_count(DEG), nm_4 = nm & ~3;
    std::fill(Mo, Mo + nm, 0.0);
    for (int b = 0; b < m4; b += 4) {
        double* mo = mono + static_cast<std::size_t>(b) * nm;  // [nm][4]
        lane_monomials<DEG>(mo, ld4(ux4 + b), ld4(uy4 + b), ld4(uz4 + b));
#pragma GCC unroll 48
        for (int k = 0; k < nm_4; k += 4) {
            v4d row[4];
            transpose4(ld4(mo + 4 * k), ld4(mo + 4 * k + 4), ld4(mo + 4 * k + 8),
                       ld4(mo + 4 * k + 12), row[0], row[1], row[2], row[3]);
            // Branch-free over all four lanes: A is 0 beyond rc and past m, and adding a zero
            // product leaves a sum unchanged (it starts at +0 and is never -0), so the moments
            // are those of the neighbours inside rc alone, bit for bit.
            v4d acc = ld4(Mo + k);
            acc += A[b] * row[0];
            acc += A[b + 1] * row[1];
            acc += A[b + 2] * row[2];
            acc += A[b + 3] * row[3];
            st4(Mo + k, acc);
        }
#pragma GCC unroll 4
        for (int k = nm_4; k < nm; ++k) {
            double t = Mo[k];
            for (int l = 0; l < 4; ++l) t += A[b + l] * mo[4 * k + l];
            Mo[k] = t;
        }
    }
}

/// Wu[ax][k] = (a_ax + 1) W[a + e_ax] for the monomials a = k of degree < DEG, by lane (Wt:
/// [nm][4], Wut: [3][nm_low][4]): d/du_ax sum_a W_a u^a = sum_k Wu[ax][k] u^k.
template <int DEG>
inline void lane_wu(const double* Wt, double* Wut) {
    constexpr int nm_low = mono_count(DEG - 1);
#pragma GCC unroll 3
    for (int ax = 0; ax < 3; ++ax)
#pragma GCC unroll 128
        for (int k = 0; k < nm_low; ++k)
            st4(Wut + 4 * (ax * nm_low + k), kMono.up_fac[k][ax] * ld4(Wt + 4 * kMono.up[k][ax]));
}

/// b^m (m >= 0) per lane: a product chain for m <= 4, else left-to-right binary powering; top:
/// the highest set bit of m.
inline v4d pow4(const v4d& b, int m, int top) {
    switch (m) {
    case 0: return v4d{1.0, 1.0, 1.0, 1.0};
    case 1: return b;
    case 2: return b * b;
    case 3: return b * b * b;
    case 4: { const v4d b2 = b * b; return b2 * b2; }
    default: break;
    }
    v4d o = b;
    for (int bit = top - 1; bit >= 0; --bit) {
        o *= o;
        if ((m >> bit) & 1) o *= b;
    }
    return o;
}

inline int top_bit(int m) { return m > 0 ? 31 - __builtin_clz(static_cast<unsigned>(m)) : 0; }

/// f(std::integral_constant<int, m>) for 0 <= m <= 8, else f(std::integral_constant<int, -1>):
/// a loop over pow4(.., m, ..) then has a constant power (no switch and powering loop per four
/// lanes; those were ~40 % of such loops' instructions).
template <class F>
inline void with_power(int m, F&& f) {
    with_small_constant<-1>(m, f);
}

/// pow4(b, m, top_bit(m)) with the power M of with_power (M < 0: m at run time).
template <int M>
inline v4d pow_m(const v4d& b, int m) {
    return M >= 0 ? pow4(b, M, top_bit(M)) : pow4(b, m, top_bit(m));
}

/// out[i] = in[i]^m (pow4's products), m >= 0, for whole 4-lane groups (n rounded up: in and
/// out must have room), in registers in one pass.
inline void pow_array4(int n, const double* in, int m, double* out) {
    with_power(m, [&](auto M) {
        for (int i = 0; i < n; i += 4) st4(out + i, pow_m<M()>(ld4(in + i), m));
    });
}

/// pow_array4, also writing out[i] f[i] to outf (one pass instead of two).
inline void pow_array4_times(int n, const double* in, int m, double* out, const double* f,
                             double* outf) {
    with_power(m, [&](auto M) {
        for (int i = 0; i < n; i += 4) {
            const v4d o = pow_m<M()>(ld4(in + i), m);
            st4(out + i, o);
            st4(outf + i, o * ld4(f + i));
        }
    });
}

/// angular_base of four lanes: max(0, 1 + lambda cos) as (P + |P|)/2 (lam: lambda in each lane).
inline v4d angular_base4(const v4d& lam, const double* cos_t) {
    const v4d one = {1.0, 1.0, 1.0, 1.0}, half = {0.5, 0.5, 0.5, 0.5};
    const v4i no_sign = {~(1LL << 63), ~(1LL << 63), ~(1LL << 63), ~(1LL << 63)};
    const v4d P = one + lam * ld4(cos_t);
    return half * (P + (v4d)((v4i)P & no_sign));
}

/// pw[i] = max(0, 1 + lambda cos[i])^m (m >= 1) for whole 4-lane groups (n rounded up: cos and
/// pw must have room): angular_base's bases and pow4's products per element, in registers in
/// one pass.
inline void angular_power4(int n, const double* cos_t, double lambda, int m, double* pw) {
    const v4d lam = {lambda, lambda, lambda, lambda};
    with_power(m, [&](auto M) {
        for (int i = 0; i < n; i += 4) st4(pw + i, pow_m<M()>(angular_base4(lam, cos_t + i), m));
    });
}

/// sum_i a[i] b[i] for n a multiple of 4, in four 4-lane sums (a single chain of adds would
/// wait on the add latency).
inline double dot4(int n, const double* a, const double* b) {
    v4d s0 = {0, 0, 0, 0}, s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 += ld4(a + i) * ld4(b + i);
        s1 += ld4(a + i + 4) * ld4(b + i + 4);
        s2 += ld4(a + i + 8) * ld4(b + i + 8);
        s3 += ld4(a + i + 12) * ld4(b + i + 12);
    }
    for (; i < n; i += 4) s0 += ld4(a + i) * ld4(b + i);
    const v4d s = (s0 + s1) + (s2 + s3);
    return (s[0] + s[1]) + (s[2] + s[3]);
}

/// out[s] = sum_a gt[a] fcm[s m4 + a] for s < NM (m4 a multiple of 4): the per-element sums
/// of a merged radial group's term, from fc copies masked to each member element's part of
/// the joint list (fcm [NM][m4], zero elsewhere). Branch-free over whole 4-lane groups: with
/// IRMOF-1's ~5 neighbours per element, one short dot per element spent most of its time in
/// loop control.
template <int NM>
inline void member_dots(int m4, const double* gt, const double* fcm, double* out) {
    v4d acc[NM];
    for (int s = 0; s < NM; ++s) acc[s] = v4d{0.0, 0.0, 0.0, 0.0};
    for (int b = 0; b < m4; b += 4) {
        const v4d g4 = ld4(gt + b);
        for (int s = 0; s < NM; ++s) acc[s] += g4 * ld4(fcm + s * m4 + b);
    }
    for (int s = 0; s < NM; ++s) out[s] = (acc[s][0] + acc[s][1]) + (acc[s][2] + acc[s][3]);
}

/// out[i] = w exp(-eta (r[i] - rs)^2).
inline void gaussian_array(int n, const double* r, double eta, double rs, bool fast, double* out) {
    if (fast)
        for (int i = 0; i < n; ++i) out[i] = exp_approx(-eta * (r[i] - rs) * (r[i] - rs));
    else
        for (int i = 0; i < n; ++i) out[i] = std::exp(-eta * (r[i] - rs) * (r[i] - rs));
}

/// s[b] = |x_b - x_j|^2 and c[b] = u_j . u_b for list positions b < m (arrays by position).
inline void pair_geometry(int m, const double* __restrict x, const double* __restrict y,
                          const double* __restrict z, const double* __restrict ux,
                          const double* __restrict uy, const double* __restrict uz,
                          const double* xj, const double* uj, double* __restrict s,
                          double* __restrict c) {
    const double xj0 = xj[0], xj1 = xj[1], xj2 = xj[2], uj0 = uj[0], uj1 = uj[1], uj2 = uj[2];
    for (int b = 0; b < m; ++b) {
        const double dx = x[b] - xj0, dy = y[b] - xj1, dz = z[b] - xj2;
        s[b] = dx * dx + dy * dy + dz * dz;
        c[b] = uj0 * ux[b] + uj1 * uy[b] + uj2 * uz[b];
    }
}

/// Per-triplet output of the selection (arrays at the first free entry).
struct TripletOut {
    int* j; int* k;
    double* cos; double* s;  // r_jk^2
    double* rj; double* rk;  // r_ij, r_ik
    double* f;               // fc(r_ij) fc(r_ik)
};

/// Triplet selection for one j: appends (j, k, cos, r_jk^2, r_ij, r_ik, fc_j fc_k) for the list
/// positions b0 <= b < m with r_ik < rc (and r_jk^2 < rc2 if with_jk) to out; returns their
/// number. Arrays x..fk (fk: fc(r_ik), 0 beyond rc) and lk are by list position of the k side.
/// The scalar form computes the geometry (vectorised) first, then compacts branch-free; it may
/// write one entry past the result.
inline int select_pairs_scalar(int b0, int m, const double* x, const double* y, const double* z,
                               const double* ux, const double* uy, const double* uz,
                               const double* r, const double* fk, const int* lk,
                               const double* xj, const double* uj, double rj, double fj,
                               double rc, double rc2, bool with_jk, int j, double* s_k,
                               double* cos_k, const TripletOut& out) {
    pair_geometry(m - b0, x + b0, y + b0, z + b0, ux + b0, uy + b0, uz + b0, xj, uj, s_k + b0,
                  cos_k + b0);
    int count = 0;
    for (int b = b0; b < m; ++b) {
        out.j[count] = j;
        out.k[count] = lk[b];
        out.cos[count] = cos_k[b];
        out.s[count] = s_k[b];
        out.rj[count] = rj;
        out.rk[count] = r[b];
        out.f[count] = fj * fk[b];
        count += (r[b] < rc) & (!with_jk || s_k[b] < rc2);
    }
    return count;
}

/// An angular group's two sides for the vector selections: x, y, z, ux, uy, uz, r by position
/// in each side's list (the structure-of-arrays copies from the list's start) and, for the k
/// side, fc(r_ik); each side's length and neighbour indices; fc(r_ij) in the per-neighbour
/// records.
struct SelectSides {
    const double* j[7];
    const double* k[8];
    int m1, m2;
    const int* l1;
    const int* l2;
    const double* nb_rec;  // fc(r_ij) at 4 j
    bool same, with_jk;
    double rc, rc2;
};

/// Doubles per packed block of eight k: x, y, z, ux, uy, uz, r, fc(r_ik) (8 each), then the
/// eight neighbour indices (int32) and padding to a whole cache line.
constexpr int kPack = 72;

/// Doubles of scratch pack_k_side needs for an e2 list of m (64-byte aligned).
inline std::size_t select_scratch(int m) {
    return static_cast<std::size_t>(kPack) * ((m + 7) / 8) + 8;
}

/// The k side packed into blocks of kPack doubles at the first 64-byte boundary of scratch
/// (select_scratch(m2) doubles); padding lanes get r = inf, so they never pass. Returns the
/// first block.
inline double* pack_k_side(const SelectSides& sd, double* scratch) {
    double* packed = reinterpret_cast<double*>(
        (reinterpret_cast<std::uintptr_t>(scratch) + 63) & ~static_cast<std::uintptr_t>(63));
    const int m2 = sd.m2, nblk = (m2 + 7) / 8;
    const double* const* src = sd.k;
    const int* const l2 = sd.l2;
    for (int blk = 0; blk < nblk; ++blk) {
        double* P = packed + kPack * blk;
        for (int l = 0; l < 8; ++l) {
            const int b = 8 * blk + l;
            const bool ok = b < m2;
            for (int q = 0; q < 8; ++q) P[8 * q + l] = ok ? src[q][b] : 0.0;
            if (!ok) P[48 + l] = INFINITY;  // r
            // Each index stored where it is loaded from (a 32-byte copy of eight 4-byte
            // stores made the loop's loads wait on store forwarding).
            const int k = ok ? l2[b] : 0;
            std::memcpy(reinterpret_cast<char*>(P + 64) + sizeof(int) * l, &k, sizeof k);
        }
    }
    return packed;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define PYFRAGNN_SELECT_AVX2 1
/// Lane permutations that move the lanes set in a 4-bit mask to the front, in order: for
/// doubles as pairs of 32-bit lanes (vpermd), and for 32-bit indices.
struct CompressTables {
    alignas(32) int d[16][8];
    alignas(16) int i[16][4];
    constexpr CompressTables() : d(), i() {
        for (int mask = 0; mask < 16; ++mask) {
            int n = 0;
            for (int l = 0; l < 4; ++l)
                if ((mask >> l) & 1) {
                    d[mask][2 * n] = 2 * l;
                    d[mask][2 * n + 1] = 2 * l + 1;
                    i[mask][n] = l;
                    ++n;
                }
        }
    }
};
constexpr CompressTables kCompress{};

/// The lanes of v permuted by pd (a kCompress.d row).
__attribute__((target("avx2"))) inline __m256d compress(__m256d v, __m256i pd) {
    return _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(v), pd));
}

/// All triplets of an angular group (AVX2): select_pairs_scalar's arithmetic on four k per
/// vector over the packed k side (pack_k_side; as select_triplets_avx512, one call per group),
/// the selected lanes compressed by table (the scalar compaction cost ~15 instructions per
/// candidate). Same results as the scalar form; writes up to three entries past the result.
__attribute__((target("avx2,fma,popcnt"))) __attribute__((noinline)) int
select_triplets_avx2(const SelectSides& sd, double* scratch, const TripletOut& out) {
    const double* packed = pack_k_side(sd, scratch);
    const double* pend = packed + kPack * ((sd.m2 + 7) / 8);
    const __m256d rc4 = _mm256_set1_pd(sd.rc),
                  rc24 = _mm256_set1_pd(sd.with_jk ? sd.rc2 : INFINITY);
    const double *px = sd.j[0], *py = sd.j[1], *pz = sd.j[2], *pux = sd.j[3], *puy = sd.j[4],
                 *puz = sd.j[5], *pr = sd.j[6];
    // Local output pointers: the intrinsics' stores may alias anything, out's members included.
    double *o_cos = out.cos, *o_s = out.s, *o_rk = out.rk, *o_f = out.f, *o_rj = out.rj;
    int *o_k = out.k, *o_j = out.j;
    int count = 0;
    for (int a = 0; a < sd.m1; ++a) {
        if (!(pr[a] < sd.rc)) continue;
        const int j = sd.l1[a], b0 = sd.same ? a + 1 : 0;
        const v4d xj0 = (v4d)_mm256_set1_pd(px[a]), xj1 = (v4d)_mm256_set1_pd(py[a]),
                  xj2 = (v4d)_mm256_set1_pd(pz[a]);
        const v4d uj0 = (v4d)_mm256_set1_pd(pux[a]), uj1 = (v4d)_mm256_set1_pd(puy[a]),
                  uj2 = (v4d)_mm256_set1_pd(puz[a]);
        const v4d fj4 = (v4d)_mm256_set1_pd(sd.nb_rec[4 * j]);
        const __m256d rj4 = _mm256_set1_pd(pr[a]);
        const __m128i j4 = _mm_set1_epi32(j);
        int lanes = 15 << (b0 & 3);
        int h = (b0 >> 2) & 1;  // the half-block of b0
        for (const double* P = packed + kPack * (b0 >> 3); P < pend; P += kPack, h = 0)
            for (; h < 2; ++h) {
                const double* Q = P + 4 * h;
                const v4d dx = (v4d)_mm256_load_pd(Q) - xj0,
                          dy = (v4d)_mm256_load_pd(Q + 8) - xj1,
                          dz = (v4d)_mm256_load_pd(Q + 16) - xj2;
                const v4d s4 = dx * dx + dy * dy + dz * dz;
                const v4d c4 = uj0 * (v4d)_mm256_load_pd(Q + 24) +
                               uj1 * (v4d)_mm256_load_pd(Q + 32) +
                               uj2 * (v4d)_mm256_load_pd(Q + 40);
                const __m256d r4 = _mm256_load_pd(Q + 48);
                const v4d f4 = fj4 * (v4d)_mm256_load_pd(Q + 56);
                const __m256d in = _mm256_and_pd(_mm256_cmp_pd(r4, rc4, _CMP_LT_OQ),
                                                 _mm256_cmp_pd((__m256d)s4, rc24, _CMP_LT_OQ));
                const int bits = _mm256_movemask_pd(in) & lanes;
                lanes = 15;
                const __m256i pd =
                    _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompress.d[bits]));
                const __m128i pi =
                    _mm_load_si128(reinterpret_cast<const __m128i*>(kCompress.i[bits]));
                _mm256_storeu_pd(o_cos + count, compress((__m256d)c4, pd));
                _mm256_storeu_pd(o_s + count, compress((__m256d)s4, pd));
                _mm256_storeu_pd(o_rk + count, compress(r4, pd));
                _mm256_storeu_pd(o_f + count, compress((__m256d)f4, pd));
                _mm256_storeu_pd(o_rj + count, rj4);
                const __m128i k4 =
                    _mm_load_si128(reinterpret_cast<const __m128i*>(P + 64) + h);
                _mm_storeu_si128(reinterpret_cast<__m128i*>(o_k + count),
                                 _mm_castps_si128(_mm_permutevar_ps(_mm_castsi128_ps(k4), pi)));
                _mm_storeu_si128(reinterpret_cast<__m128i*>(o_j + count), j4);
                count += __builtin_popcount(bits);
            }
    }
    return count;
}
#endif

#ifdef PYFRAGNN_SELECT_AVX2
typedef double v8d __attribute__((vector_size(64)));

/// All triplets of an angular group (select_triplets_avx2's arithmetic, eight k per vector,
/// vcompresspd; AVX-512). The k side is first packed into blocks of eight, read through one
/// pointer with constant offsets; a call per j with nine input streams spilled pointers and
/// paid a call and a short loop's exit per j (water LAMMPS run -6.7 %, same results).
/// Padding lanes have r = inf, so never pass. Writes up to seven entries past the result;
/// returns the number of triplets.
__attribute__((target("avx512f,avx512vl,fma,popcnt"))) __attribute__((noinline)) int
select_triplets_avx512(const SelectSides& sd, double* scratch, const TripletOut& out) {
    const double* packed = pack_k_side(sd, scratch);
    const int nblk = (sd.m2 + 7) / 8;
    const double* pend = packed + kPack * nblk;
    const __m512d rc8 = _mm512_set1_pd(sd.rc),
                  rc28 = _mm512_set1_pd(sd.with_jk ? sd.rc2 : INFINITY);
    const double *px = sd.j[0], *py = sd.j[1], *pz = sd.j[2], *pux = sd.j[3], *puy = sd.j[4],
                 *puz = sd.j[5], *pr = sd.j[6];
    // Local output pointers: the intrinsics' stores may alias anything, out's members included.
    double *o_cos = out.cos, *o_s = out.s, *o_rk = out.rk, *o_f = out.f, *o_rj = out.rj;
    int *o_k = out.k, *o_j = out.j;
    int count = 0;
    for (int a = 0; a < sd.m1; ++a) {
        if (!(pr[a] < sd.rc)) continue;
        const int j = sd.l1[a], b0 = sd.same ? a + 1 : 0;
        const v8d xj0 = (v8d)_mm512_set1_pd(px[a]), xj1 = (v8d)_mm512_set1_pd(py[a]),
                  xj2 = (v8d)_mm512_set1_pd(pz[a]);
        const v8d uj0 = (v8d)_mm512_set1_pd(pux[a]), uj1 = (v8d)_mm512_set1_pd(puy[a]),
                  uj2 = (v8d)_mm512_set1_pd(puz[a]);
        const v8d fj8 = (v8d)_mm512_set1_pd(sd.nb_rec[4 * j]);
        const __m512d rj8 = _mm512_set1_pd(pr[a]);
        const __m256i j8 = _mm256_set1_epi32(j);
        __mmask8 lanes = static_cast<__mmask8>(0xFF << (b0 & 7));
        for (const double* P = packed + kPack * (b0 >> 3); P < pend; P += kPack) {
            const v8d dx = (v8d)_mm512_load_pd(P) - xj0, dy = (v8d)_mm512_load_pd(P + 8) - xj1,
                      dz = (v8d)_mm512_load_pd(P + 16) - xj2;
            const v8d s8 = dx * dx + dy * dy + dz * dz;
            const v8d c8 = uj0 * (v8d)_mm512_load_pd(P + 24) + uj1 * (v8d)_mm512_load_pd(P + 32) +
                           uj2 * (v8d)_mm512_load_pd(P + 40);
            const __m512d r8 = _mm512_load_pd(P + 48);
            const v8d f8 = fj8 * (v8d)_mm512_load_pd(P + 56);
            const __mmask8 in = lanes & _mm512_cmp_pd_mask(r8, rc8, _CMP_LT_OQ) &
                                _mm512_cmp_pd_mask((__m512d)s8, rc28, _CMP_LT_OQ);
            lanes = 0xFF;
            _mm512_storeu_pd(o_cos + count, _mm512_maskz_compress_pd(in, (__m512d)c8));
            _mm512_storeu_pd(o_s + count, _mm512_maskz_compress_pd(in, (__m512d)s8));
            _mm512_storeu_pd(o_rk + count, _mm512_maskz_compress_pd(in, r8));
            _mm512_storeu_pd(o_f + count, _mm512_maskz_compress_pd(in, (__m512d)f8));
            _mm512_storeu_pd(o_rj + count, rj8);
            const __m256i k8 = _mm256_load_si256(reinterpret_cast<const __m256i*>(P + 64));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(o_k + count),
                                _mm256_maskz_compress_epi32(in, k8));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(o_j + count), j8);
            count += __builtin_popcount(in);
        }
    }
    return count;
}

/// r = sqrt(s) in place and ir = 1/r for n values (AVX-512): vrsqrt14pd's 14-bit 1/sqrt(s),
/// two Newton steps (~1e-16), then r = s y corrected by one Newton step for sqrt and 1/r by
/// one for the reciprocal (on 4 M random s in [1e-4, 300]: r equal to std::sqrt(s), 1/r to
/// 1.0 / r, every one); about 14 vector operations per eight values against vsqrtpd + vdivpd's
/// ~32 cycles of one port (water LAMMPS run -4.7 % on an AVX-512 Xeon). A vector
/// with a value outside [DBL_MIN, inf) (0, subnormal, inf, NaN) takes std::sqrt and 1.0 / r.
__attribute__((target("avx512f"))) __attribute__((noinline)) void root_and_inverse_avx512(
    int n, double* s, double* ir) {
    const __m512d half = _mm512_set1_pd(0.5), three_half = _mm512_set1_pd(1.5),
                  one = _mm512_set1_pd(1.0), lo = _mm512_set1_pd(DBL_MIN),
                  hi = _mm512_set1_pd(INFINITY);
    for (int i = 0; i < n; i += 8) {
        const __mmask8 tail = n - i >= 8 ? 0xFF : static_cast<__mmask8>((1u << (n - i)) - 1);
        const __m512d x = _mm512_maskz_loadu_pd(tail, s + i);
        const __mmask8 ok = _mm512_cmp_pd_mask(x, lo, _CMP_GE_OQ) &
                            _mm512_cmp_pd_mask(x, hi, _CMP_LT_OQ);
        if ((ok & tail) != tail) {
            for (int l = i; l < n && l < i + 8; ++l) {
                s[l] = std::sqrt(s[l]);
                ir[l] = 1.0 / s[l];
            }
            continue;
        }
        const __m512d h = _mm512_mul_pd(half, x);
        __m512d y = _mm512_rsqrt14_pd(x);
        y = _mm512_mul_pd(y, _mm512_fnmadd_pd(h, _mm512_mul_pd(y, y), three_half));
        y = _mm512_mul_pd(y, _mm512_fnmadd_pd(h, _mm512_mul_pd(y, y), three_half));
        __m512d r = _mm512_mul_pd(x, y);
        r = _mm512_fmadd_pd(_mm512_fnmadd_pd(r, r, x), _mm512_mul_pd(half, y), r);
        y = _mm512_fmadd_pd(y, _mm512_fnmadd_pd(r, y, one), y);
        _mm512_mask_storeu_pd(s + i, tail, r);
        _mm512_mask_storeu_pd(ir + i, tail, y);
    }
}
#endif

/// The triplet loops' explicit-SIMD path (selection, root_and_inverse): 2 AVX-512, 1 AVX2,
/// 0 generic; the CPU's best unless PYFRAGNN_ISA is "avx2" or "generic" (tests compare them).
inline int select_isa() {
#ifdef PYFRAGNN_SELECT_AVX2
    static const int isa = [] {
        int best = 0;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = 1;
        if (best == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl"))
            best = 2;
        return isa_capped_by_env(best);
    }();
    return isa;
#else
    return 0;
#endif
}

/// r = sqrt(s) in place and ir = 1/r for n values (root_and_inverse_avx512 on AVX-512).
inline void root_and_inverse(int n, double* s, double* ir) {
#ifdef PYFRAGNN_SELECT_AVX2
    if (select_isa() == 2) return root_and_inverse_avx512(n, s, ir);
#endif
    for (int i = 0; i < n; ++i) s[i] = std::sqrt(s[i]);
    for (int i = 0; i < n; ++i) ir[i] = 1.0 / s[i];
}

/// Clipped bases max(0, 1 + lambda cos[i]) (exact: (P + |P|)/2).
inline void angular_base(int n, const double* cos_t, double lambda, double* out) {
    for (int i = 0; i < n; ++i) {
        const double p = 1.0 + lambda * cos_t[i];
        out[i] = 0.5 * (p + std::fabs(p));
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
/// The pairs (j, k) of a compact angular group (types 21, 22) with both neighbours inside
/// (rl, rc) and theta neither 0 nor pi (n2p2 skips those), in list order: C(r), dC/dr of the
/// group's neighbours into crad[2 j], crad[2 j + 1] first, then body(j, k, u_j, u_k, cos, sin)
/// (shared by compute() and contract()).
template <class Group, class Body>
PYFRAGNN_PART void for_each_compact_pair(const Group& g, const AtomEnvironment& env,
                                         const double* u, const int* l1, int m1, const int* l2,
                                         int m2, double* crad, Body&& body) {
    const bool same = g.e1 == g.e2;
    auto inside = [&](int j) { return env.r[j] > g.rl && env.r[j] < g.rc; };
    for (int side = 0; side < (same ? 1 : 2); ++side)
        for (int a = 0; a < (side ? m2 : m1); ++a) {
            const int j = (side ? l2 : l1)[a];
            if (inside(j)) g.radial.fdf(env.r[j], crad[2 * j], crad[2 * j + 1]);
        }
    for (int a = 0; a < m1; ++a) {
        const int j = l1[a];
        if (!inside(j)) continue;
        for (int b = same ? a + 1 : 0; b < m2; ++b) {
            const int k = l2[b];
            if (!inside(k)) continue;
            const double* uj = u + 3 * j;
            const double* uk = u + 3 * k;
            const double cos_t = uj[0] * uk[0] + uj[1] * uk[1] + uj[2] * uk[2];
            const double sin_t = sine(uj, uk);
            if (cos_t <= -1.0 || cos_t >= 1.0 || sin_t == 0.0) continue;
            body(j, k, uj, uk, cos_t, sin_t);
        }
    }
}

// compute() in sections: PYFRAGNN_PART functions (always inlined), so that each clone of
// compute() (PYFRAGNN_HOT) compiles them for its own target. Frame holds what the sections
// share: the environment, G, the workspace, and the offsets and pointers into it that the
// first sections set up.

struct Descriptor::Frame {
    const AtomEnvironment& env;
    double* G;
    DescriptorWorkspace& ws;
    const int n, ne, n_rad, n_ang;
    const int head, n_mset, mhead, n_mgroup, lists;  // ibuf offsets (see the layout above)
    int M = 0;                       // neighbours within cutoff()
    int* start = nullptr;            // ws.ibuf: list starts, offsets, lists, triplet indices
    double* buf = nullptr;           // ws.buf
    double* u = nullptr;             // unit vectors [n][3]
    const int* pos = nullptr;        // the lists: neighbour of list position p
    double* px = nullptr;            // by list position: d, u, r
    double* py = nullptr;
    double* pz = nullptr;
    double* pux = nullptr;
    double* puy = nullptr;
    double* puz = nullptr;
    double* pr = nullptr;
    double* scratch_mem = nullptr;   // the scratch section

    /// Neighbour list of element e (e < 0: all elements).
    void list(int e, const int*& first, int& count) const {
        first = ws.ibuf.data() + ws.ibuf[e < 0 ? 0 : e];
        count = ws.ibuf[e < 0 ? ne : e + 1] - ws.ibuf[e < 0 ? 0 : e];
    }
    /// Joint list of a radial group's elements e1..e_last.
    void radial_list(const RadialGroup& g, const int*& first, int& count) const {
        first = ws.ibuf.data() + ws.ibuf[g.e1 < 0 ? 0 : g.e1];
        count = ws.ibuf[g.e1 < 0 ? ne : g.e_last + 1] - ws.ibuf[g.e1 < 0 ? 0 : g.e1];
    }
};

/// One angular group's neighbour lists and its arrays in the workspace (compute()).
struct Descriptor::AngularArrays {
    const AngularGroup& g;
    int* h;                          // the group's ibuf entries (see the layout above)
    int ng, npow;
    bool with_jk, same;
    double rc, rc2;
    const int* l1;
    const int* l2;
    int m1, m2;
    double* nb_rec;                  // per neighbour (see compute_angular)
    double* nb_g;
    double* fc2;
    int cap;                         // per triplet
    int* pj;
    int* pk;
    double* cosv;
    double* rjk;
    double* fjk;
    double* dfjk;
    double* xjk;
    double* trj;
    double* trk;
    double* tf;
};

/// Neighbour lists by element: count, prefix sums, fill.
PYFRAGNN_PART void Descriptor::compute_neighbour_lists(Frame& fr) const {
    const AtomEnvironment& env = fr.env;
    DescriptorWorkspace& ws = fr.ws;
    const int n = fr.n, ne = fr.ne, lists = fr.lists;

    if (ws.ibuf.size() < static_cast<std::size_t>(lists) + n)
        ws.ibuf.resize(static_cast<std::size_t>(lists) + n);
    int* start = ws.ibuf.data();
    std::fill(start, start + ne + 1, 0);
    for (int j = 0; j < n; ++j) {
        const int e = env.element[j];
        if (e < 0 || e >= ne)
            throw std::invalid_argument("Descriptor: neighbour element index out of range");
        if (env.r[j] < cutoff_) ++start[e + 1];
    }
    start[0] = lists;
    for (int e = 0; e < ne; ++e) start[e + 1] += start[e];
    int* cursor = start + ne + 1;
    std::copy(start, start + ne + 1, cursor);
    for (int j = 0; j < n; ++j)
        if (env.r[j] < cutoff_) start[cursor[env.element[j]]++] = j;
    const int M = start[ne] - lists;  // neighbours within cutoff()
    fr.start = start;
    fr.M = M;
}

/// Section sizes and offsets (see the layout above); sizes the workspace.
PYFRAGNN_PART void Descriptor::compute_layout(Frame& fr) const {
    DescriptorWorkspace& ws = fr.ws;
    const int n = fr.n, n_rad = fr.n_rad, n_ang = fr.n_ang, head = fr.head, lists = fr.lists;
    const int n_mset = fr.n_mset, mhead = fr.mhead, n_mgroup = fr.n_mgroup, M = fr.M;
    int* start = fr.start;

    // Section sizes; triplet capacities are the numbers of candidate pairs.
    std::size_t total = kFingerprint + 3 * static_cast<std::size_t>(n) + 7 * static_cast<std::size_t>(M);
    std::size_t itotal = static_cast<std::size_t>(lists) + n;
    std::size_t scratch = 2 * static_cast<std::size_t>(n);
    for (int gi = 0; gi < n_rad; ++gi) {
        const int* f; int m;
        fr.radial_list(radial_[gi], f, m);
        start[head + 1 + gi] = static_cast<int>(total);
        // [m4] arrays; + 3: contract_radial reads whole 4-lane groups from each element's start
        const std::size_t m4 = static_cast<std::size_t>(round_up4(m));
        total += (3 + radial_[gi].terms.size()) * m4 + 3;
        scratch = std::max({scratch, radial_[gi].terms.size(),  // contract_radial's weights
                            kMaxMaskedMembers * m4});          // compute_radial's masked fc
    }
    for (int gi = 0; gi < n_ang; ++gi) {
        const AngularGroup& g = angular_[gi];
        int* h = start + head + 1 + n_rad + 5 * gi;
        const int* f; int m1, m2;
        fr.list(g.e1, f, m1);
        fr.list(g.e2, f, m2);
        // + 8: the selection may write up to seven entries past the last triplet.
        const std::size_t cap = (g.e1 == g.e2 ? static_cast<std::size_t>(m1) * (m1 - (m1 > 0)) / 2
                                              : static_cast<std::size_t>(m1) * m2) + 8;
        const std::size_t ng = g.gauss.size();
        h[0] = static_cast<int>(total);
        total += (4 + ng) * static_cast<std::size_t>(n) + m2 + 8;
        h[1] = static_cast<int>(total);
        total += (7 + ng) * cap;
        h[2] = static_cast<int>(cap);
        h[3] = 0;
        h[4] = static_cast<int>(itotal);
        itotal += 2 * cap;
        scratch = std::max({scratch, kBlock * (11 + 3 * ng + 2 * g.powers.size()) + g.terms.size(),
                            (2 + ng) * static_cast<std::size_t>(M), select_scratch(m2)});
    }
    for (int si = 0; si < n_mset; ++si) {  // A, dA/dr, u, 1/r [m4], monomials [m4][nm], M, D, W, dE/dD
        const int* f; int m;
        fr.list(msets_[si].e1, f, m);
        const std::size_t nm = n_mono(msets_[si].degree);
        start[mhead + si] = static_cast<int>(total);
        total += (6 + nm) * static_cast<std::size_t>(round_up4(m)) + 2 * nm + 2;
        scratch = std::max(scratch, 3 * static_cast<std::size_t>(M) + 4 * nm);
    }
    for (int g = 0; g < n_mgroup; ++g) {  // M, W [nm][4], Wu [3 nm_low][4] of the sets by lane
        start[mhead + n_mset + g] = static_cast<int>(total);
        const int deg = mgroups_[g].degree;
        total += 8 * static_cast<std::size_t>(n_mono(deg)) + 12 * static_cast<std::size_t>(deg > 0 ? n_mono(deg - 1) : 0);
    }
    start[head] = static_cast<int>(total);
    total += scratch;
    if (total > static_cast<std::size_t>(INT32_MAX) || itotal > static_cast<std::size_t>(INT32_MAX))
        throw std::length_error("Descriptor: neighbourhood too large");
    if (ws.buf.size() < total) ws.buf.resize(total);
    if (ws.ibuf.size() < itotal) ws.ibuf.resize(itotal);
    fr.start = ws.ibuf.data();
}

/// Fingerprint, unit vectors and structure-of-arrays copies by list position.
PYFRAGNN_PART void Descriptor::compute_soa(Frame& fr) const {
    const AtomEnvironment& env = fr.env;
    const int n = fr.n, M = fr.M, lists = fr.lists, head = fr.head;
    const int* start = fr.start;
    DescriptorWorkspace& ws = fr.ws;

    double* buf = ws.buf.data();
    const Descriptor* self = this;
    std::memcpy(buf, &self, sizeof self);
    buf[1] = n;
    buf[2] = n > 0 ? env.d[0] : 0.0;
    buf[3] = n > 0 ? env.d[3 * n - 1] : 0.0;
    double* u = buf + kFingerprint;
    for (int j = 0; j < n; ++j) {
        const double inv = 1.0 / env.r[j];
        for (int a = 0; a < 3; ++a) u[3 * j + a] = env.d[3 * j + a] * inv;
    }
    // Structure-of-arrays copies by list position p (neighbour start[lists + p]).
    const int* pos = start + lists;
    double* px = u + 3 * n;
    double* py = px + M;
    double* pz = py + M;
    double* pux = pz + M;
    double* puy = pux + M;
    double* puz = puy + M;
    double* pr = puz + M;
    for (int p = 0; p < M; ++p) {
        const int j = pos[p];
        px[p] = env.d[3 * j]; py[p] = env.d[3 * j + 1]; pz[p] = env.d[3 * j + 2];
        pux[p] = u[3 * j]; puy[p] = u[3 * j + 1]; puz[p] = u[3 * j + 2];
        pr[p] = env.r[j];
    }
    double* scratch_mem = buf + start[head];
    fr.buf = buf;
    fr.u = u;
    fr.pos = pos;
    fr.px = px;
    fr.py = py;
    fr.pz = pz;
    fr.pux = pux;
    fr.puy = puy;
    fr.puz = puz;
    fr.pr = pr;
    fr.scratch_mem = scratch_mem;
}

/// Radial Gaussians (2, 12).
PYFRAGNN_PART void Descriptor::compute_radial(Frame& fr) const {
    const AtomEnvironment& env = fr.env;
    double* G = fr.G;
    const int n_rad = fr.n_rad, head = fr.head;
    const int* start = fr.start;
    double* buf = fr.buf;
    const int* pos = fr.pos;
    const double* pr = fr.pr;

    for (int gi = 0; gi < n_rad; ++gi) {
        const RadialGroup& g = radial_[gi];
        const int* first; int m;
        fr.radial_list(g, first, m);
        // r, fc, dfc and each term's Gaussians [m4]; lanes m..m4: r = 0, fc = dfc = 0
        const int m4 = round_up4(m);
        double* r = buf + start[head + 1 + gi];
        double* fc = r + m4;
        double* dfc = fc + m4;
        std::copy(pr + (first - pos), pr + (first - pos) + m, r);
        std::fill(r + m, r + m4, 0.0);
        g.fc.fdf(m4, r, fc, dfc);  // values at r >= rc are discarded
        for (int a = 0; a < m4; ++a) {
            const bool in = a < m && r[a] < g.fc.rc();
            fc[a] = in ? fc[a] : 0.0;
            dfc[a] = in ? dfc[a] : 0.0;
        }
        const int members = g.e1 < 0 ? 1 : g.e_last - g.e1 + 1;
        // NM > 0: a merged group of NM <= kMaxMaskedMembers elements, summed against fc masked
        // to each element's part of the joint list (fcm [NM][m4]); 0: one dot per element.
        double* fcm = fr.scratch_mem;
        auto terms = [&](auto NM) PYFRAGNN_LAMBDA {
            static_assert(NM() <= kMaxMaskedMembers, "fcm's scratch holds kMaxMaskedMembers rows");
            for (int s = 0; s < NM(); ++s) {
                const long long a0 = start[g.e1 + s] - start[g.e1];
                const long long a1 = start[g.e1 + s + 1] - start[g.e1];
                for (int b = 0; b < m4; b += 4) {
                    const v4i lane = v4i{0, 1, 2, 3} + b;
                    const v4i in = (lane >= a0) & (lane < a1);
                    st4(fcm + s * m4 + b, in ? ld4(fc + b) : v4d{0.0, 0.0, 0.0, 0.0});
                }
            }
            for (std::size_t t = 0; t < g.terms.size(); ++t) {
                double* gt = dfc + (1 + t) * m4;
                gaussian_array(m4, r, g.terms[t].eta, g.terms[t].rs, g.fast_exp, gt);
                if (g.e1 < 0)
                    for (int a = 0; a < m; ++a) gt[a] *= z_[env.element[first[a]]];
                if constexpr (NM() > 0) {
                    double S[NM()];
                    member_dots<NM()>(m4, gt, fcm, S);
                    for (int s = 0; s < NM(); ++s) G[g.sf[t * NM() + s]] += S[s];
                } else if (members == 1) {
                    G[g.terms[t].sf] += dot4(m4, gt, fc);
                } else {
                    for (int e = g.e1; e <= g.e_last; ++e) {  // each element's part of the list
                        const int a0 = start[e] - start[g.e1], len = start[e + 1] - start[e];
                        G[g.sf[t * members + e - g.e1]] += dot(len, gt + a0, fc + a0);
                    }
                }
            }
        };
        switch (members) {
        case 2: terms(std::integral_constant<int, 2>{}); break;
        case 3: terms(std::integral_constant<int, 3>{}); break;
        case 4: terms(std::integral_constant<int, 4>{}); break;
        default: terms(std::integral_constant<int, 0>{}); break;
        }
    }
}

/// Angular group gi: per-neighbour records, triplet selection, then blocks of triplets.
PYFRAGNN_PART void Descriptor::compute_angular(Frame& fr, int gi) const {
    const int n = fr.n, head = fr.head, n_rad = fr.n_rad;
    int* start = fr.start;
    double* buf = fr.buf;
    double* G = fr.G;

    const AngularGroup& g = angular_[gi];
    int* h = start + head + 1 + n_rad + 5 * gi;
    const int ng = static_cast<int>(g.gauss.size()), npow = static_cast<int>(g.powers.size());
    const bool with_jk = g.type != 9;
    const double rc = g.fc.rc(), rc2 = rc * rc;
    const int* l1; const int* l2; int m1, m2;
    fr.list(g.e1, l1, m1);
    fr.list(g.e2, l2, m2);
    const bool same = g.e1 == g.e2;
    // Per neighbour (by index): records (fc, dfc, r, 1/r) (contract() loads four triplets'
    // with four loads and a transpose) and, for type 9, w_j exp(-eta (r_ij - rs)^2) (types
    // 3, 13 take the Gaussians of all three distances in one exp per triplet below).
    double* nb_rec = buf + h[0];
    double* nb_g = nb_rec + 4 * n;
    double* fc2 = nb_g + ng * n;  // [m2] fc(r_ik) by list position of e2 (0 beyond rc)
    const int cap = h[2];
    int* pj = start + h[4];
    int* pk = pj + cap;
    double* cosv = buf + h[1];
    double* rjk = cosv + cap;
    double* fjk = rjk + cap;
    double* dfjk = fjk + cap;
    double* xjk = dfjk + cap;  // [ng][cap]
    double* trj = xjk + ng * cap;  // r_ij, r_ik, fc(r_ij) fc(r_ik) [cap] (compute() only)
    double* trk = trj + cap;
    double* tf = trk + cap;
    const AngularArrays ag{g, h, ng, npow, with_jk, same, rc, rc2, l1, l2, m1, m2, nb_rec,
                           nb_g, fc2, cap, pj, pk, cosv, rjk, fjk, dfjk, xjk, trj, trk, tf};
    angular_neighbours(fr, ag);
    const int count = angular_select(fr, ag);
    angular_blocks(fr, ag, count);
    for (const AngularTerm& t : g.terms) G[t.sf] *= t.norm;
}

/// An angular group's per-neighbour records (and type 9 Gaussians) and fc by e2 list position.
PYFRAGNN_PART void Descriptor::angular_neighbours(Frame& fr, const AngularArrays& ag) const {
    const AngularGroup& g = ag.g;
    const int n = fr.n, ng = ag.ng, m1 = ag.m1, m2 = ag.m2;
    const bool same = ag.same, with_jk = ag.with_jk;
    const double rc = ag.rc;
    const int* l1 = ag.l1;
    const int* l2 = ag.l2;
    const int* pos = fr.pos;
    const double* pr = fr.pr;
    double* scratch_mem = fr.scratch_mem;
    double* nb_rec = ag.nb_rec;
    double* nb_g = ag.nb_g;
    double* fc2 = ag.fc2;

    for (int side = 0; side < (same ? 1 : 2); ++side) {
        const int* l = side ? l2 : l1;
        const int m = side ? m2 : m1;
        const double* r = pr + (l - pos);
        double* f = scratch_mem;
        double* df = f + m;
        double* gs = df + m;  // [ng][m]
        g.fc.fdf(m, r, f, df);  // values at r >= rc are discarded below
        for (int a = 0; a < m; ++a) {
            const int j = l[a];
            const bool in = r[a] < rc;
            double* rec = nb_rec + 4 * j;
            rec[0] = in ? f[a] : 0.0;
            rec[1] = in ? df[a] : 0.0;
            rec[2] = r[a];
            rec[3] = 1.0 / r[a];
        }
        if (same || side == 1)
            for (int a = 0; a < m; ++a) fc2[a] = r[a] < rc ? f[a] : 0.0;
        if (with_jk) continue;
        for (int q = 0; q < ng; ++q)
            gaussian_array(m, r, g.gauss[q].eta, g.gauss[q].rs, g.fast_exp, gs + q * m);
        for (int a = 0; a < m; ++a) {
            const int j = l[a];
            const double w = r[a] < rc ? 1.0 : 0.0;
            for (int q = 0; q < ng; ++q) nb_g[q * n + j] = w * gs[q * m + a];
        }
    }
}

/// An angular group's triplets into its triplet arrays; returns their number.
PYFRAGNN_PART int Descriptor::angular_select(Frame& fr, const AngularArrays& ag) const {
    const int m1 = ag.m1, m2 = ag.m2;
    const bool same = ag.same, with_jk = ag.with_jk;
    const double rc = ag.rc, rc2 = ag.rc2;
    const int* l1 = ag.l1;
    const int* l2 = ag.l2;
    int* h = ag.h;
    const int* pos = fr.pos;
    const double *px = fr.px, *py = fr.py, *pz = fr.pz, *pr = fr.pr;
    const double *pux = fr.pux, *puy = fr.puy, *puz = fr.puz;
    double* scratch_mem = fr.scratch_mem;
    const double* nb_rec = ag.nb_rec;
    const double* fc2 = ag.fc2;
    int* pj = ag.pj;
    int* pk = ag.pk;
    double *cosv = ag.cosv, *rjk = ag.rjk, *trj = ag.trj, *trk = ag.trk, *tf = ag.tf;

    // Triplet selection: pairs of list entries with r_ij, r_ik (, r_jk) < rc. The vector
    // forms take the whole group; the scalar one computes s = r_jk^2 and cos for one j against
    // all k first (vectorised), then compacts.
    const int p1 = static_cast<int>(l1 - pos), p2 = static_cast<int>(l2 - pos);
    double* s_k = scratch_mem;     // [m2]
    double* cos_k = s_k + m2;      // [m2]
    const int isa = select_isa();
#ifdef PYFRAGNN_SELECT_AVX2
    if (isa >= 1) {
        const SelectSides sd{{px + p1, py + p1, pz + p1, pux + p1, puy + p1, puz + p1, pr + p1},
                             {px + p2, py + p2, pz + p2, pux + p2, puy + p2, puz + p2, pr + p2,
                              fc2},
                             m1, m2, l1, l2, nb_rec, same, with_jk, rc, rc2};
        const TripletOut out{pj, pk, cosv, rjk, trj, trk, tf};
        const int count = isa == 2 ? select_triplets_avx512(sd, scratch_mem, out)
                                   : select_triplets_avx2(sd, scratch_mem, out);
        h[3] = count;
        return count;
    }
#endif
    int count = 0;
    for (int a = 0; a < m1; ++a) {
        const int pa = p1 + a;
        if (!(pr[pa] < rc)) continue;
        const double xj[3] = {px[pa], py[pa], pz[pa]}, uj[3] = {pux[pa], puy[pa], puz[pa]};
        const int b0 = same ? a + 1 : 0, j = l1[a];
        const int c = count;
        const TripletOut out{pj + c, pk + c, cosv + c, rjk + c, trj + c, trk + c, tf + c};
        const double rj_a = pr[pa], fj = nb_rec[4 * j];
        count += select_pairs_scalar(b0, m2, px + p2, py + p2, pz + p2, pux + p2, puy + p2,
                                     puz + p2, pr + p2, fc2, l2, xj, uj, rj_a, fj, rc, rc2,
                                     with_jk, j, s_k, cos_k, out);
    }
    h[3] = count;
    return count;
}

/// One block of triplets: F = fc(r_ij) fc(r_ik) fc(r_jk) and the Gaussian products times F.
PYFRAGNN_PART void Descriptor::angular_block_products(Frame& fr, const AngularArrays& ag,
                                                      int t0, int nb, double* F, double* tg,
                                                      double* wjk) const {
    const AtomEnvironment& env = fr.env;
    const AngularGroup& g = ag.g;
    const int n = fr.n, ng = ag.ng, cap = ag.cap;
    const bool with_jk = ag.with_jk;
    const int* pj = ag.pj;
    const int* pk = ag.pk;
    const double* nb_g = ag.nb_g;
    double *rjk = ag.rjk, *fjk = ag.fjk, *dfjk = ag.dfjk, *xjk = ag.xjk;
    const double *trj = ag.trj, *trk = ag.trk, *tf = ag.tf;

    const int* bj = pj + t0;
    const int* bk = pk + t0;
    double* br = rjk + t0;
    const double* rj = trj + t0;
    const double* rk = trk + t0;
    if (with_jk) {
        // br: r_jk^2 -> r_jk; 1/r_jk in F until the Gaussians below are done with r_jk, then
        // in br, and dfc(r_jk) divided by r_jk (contract() needs r_jk only as a divisor).
        root_and_inverse(nb, br, F);
        g.fc.fdf(nb, br, fjk + t0, dfjk + t0);
        // xjk keeps the whole Gaussian product exp(-eta [(r_ij-rs)^2 + (r_ik-rs)^2 +
        // (r_jk-rs)^2]) (times w_j w_k) for contract().
        for (int q = 0; q < ng; ++q) {
            const Gaussian& gq = g.gauss[q];
            if (gq.power > 0) continue;
            double* xq = xjk + q * cap + t0;
            const double eta = gq.eta, rs = gq.rs;
            if (g.fast_exp)
                for (int i = 0; i < nb; ++i)
                    xq[i] = exp_approx(-eta * ((rj[i] - rs) * (rj[i] - rs) +
                                               (rk[i] - rs) * (rk[i] - rs) +
                                               (br[i] - rs) * (br[i] - rs)));
            else
                for (int i = 0; i < nb; ++i)
                    xq[i] = std::exp(-eta * ((rj[i] - rs) * (rj[i] - rs) +
                                             (rk[i] - rs) * (rk[i] - rs) +
                                             (br[i] - rs) * (br[i] - rs)));
        }
        for (int i = 0; i < nb; ++i) {
            dfjk[t0 + i] *= F[i];
            br[i] = F[i];
            F[i] = tf[t0 + i] * fjk[t0 + i];
        }
        // Whole 4-lane groups: the arrays have room. Gaussian products times F (tg)
        // in the same pass, except for type 13 (weighted first).
        const bool fused = g.type != 13;
        for (int q = 0; q < ng; ++q) {
            const Gaussian& gq = g.gauss[q];
            if (gq.power == 0) continue;
            if (fused)
                pow_array4_times(nb, xjk + gq.base * cap + t0, gq.power,
                                 xjk + q * cap + t0, F, tg + q * kBlock);
            else
                pow_array4(nb, xjk + gq.base * cap + t0, gq.power, xjk + q * cap + t0);
        }
        if (g.type == 13) {
            for (int i = 0; i < nb; ++i)
                wjk[i] = z_[env.element[bj[i]]] * z_[env.element[bk[i]]];
            for (int q = 0; q < ng; ++q)
                for (int i = 0; i < nb; ++i) xjk[q * cap + t0 + i] *= wjk[i];
        }
        for (int q = 0; q < ng; ++q) {
            if (fused && g.gauss[q].power > 0) continue;
            const double* xq = xjk + q * cap + t0;
            double* tq = tg + q * kBlock;
            for (int i = 0; i < nb; ++i) tq[i] = xq[i] * F[i];
        }
    } else {
        std::copy(tf + t0, tf + t0 + nb, F);
        for (int q = 0; q < ng; ++q) {
            const double* gq = nb_g + q * n;
            double* tq = tg + q * kBlock;
            for (int i = 0; i < nb; ++i) tq[i] = gq[bj[i]] * gq[bk[i]] * F[i];
        }
    }
}

/// An angular group's triplets in blocks of kBlock: products, powers, sums into G.
PYFRAGNN_PART void Descriptor::angular_blocks(Frame& fr, const AngularArrays& ag,
                                              int count) const {
    const AngularGroup& g = ag.g;
    const int ng = ag.ng, npow = ag.npow;
    const double* cosv = ag.cosv;
    double* scratch_mem = fr.scratch_mem;
    double* G = fr.G;

    double* F = scratch_mem;       // [kBlock] fc(r_ij) fc(r_ik) fc(r_jk)
    double* tg = F + kBlock;       // [ng][kBlock] Gaussian products times F
    double* pw = tg + ng * kBlock; // [npow][kBlock] max(0, 1 + lambda cos)^zeta
    double* wjk = pw + npow * kBlock;  // [kBlock] w_j w_k (type 13)
    for (int t0 = 0; t0 < count; t0 += kBlock) {
        const int nb = std::min(kBlock, count - t0);
        angular_block_products(fr, ag, t0, nb, F, tg, wjk);
        double* base = F;  // F is no longer needed
        const int nb4 = (nb + 3) & ~3;  // zero-padded to whole 4-lane groups for dot4
        for (int w = 0; w < npow; ++w) {
            const AngularPower& p = g.powers[w];
            double* pww = pw + w * kBlock;
            if (p.zeta_int >= 1) {
                angular_power4(nb, cosv + t0, p.lambda, p.zeta_int, pww);
            } else {  // non-integer zeta
                angular_base(nb, cosv + t0, p.lambda, base);
                for (int i = 0; i < nb; ++i) pww[i] = std::pow(base[i], p.zeta);
            }
            std::fill(pww + nb, pww + nb4, 0.0);
        }
        for (int q = 0; q < ng; ++q) std::fill(tg + q * kBlock + nb, tg + q * kBlock + nb4, 0.0);
        for (const AngularTerm& t : g.terms)
            G[t.sf] += dot4(nb4, pw + t.power * kBlock, tg + t.gauss * kBlock);
    }
}

/// One set of wide angular functions: A_j, dA_j/dr, monomials u_j^a and moments.
PYFRAGNN_PART void Descriptor::compute_moment_set(Frame& fr, int si) const {
    const int mhead = fr.mhead;
    const int* start = fr.start;
    double* buf = fr.buf;
    const int* pos = fr.pos;
    const double *pr = fr.pr, *pux = fr.pux, *puy = fr.puy, *puz = fr.puz;
    double* scratch_mem = fr.scratch_mem;

    const MomentSet& ms = msets_[si];
    const int* first; int m;
    fr.list(ms.e1, first, m);
    const int nm = n_mono(ms.degree), m4 = round_up4(m);
    double* A = buf + start[mhead + si];
    double* dA = A + m4;
    double* ux4 = dA + m4;
    double* uy4 = ux4 + m4;
    double* uz4 = uy4 + m4;
    double* ir4 = uz4 + m4;
    double* mono = ir4 + m4;
    double* Mo = mono + static_cast<std::size_t>(nm) * m4;
    const int p0 = static_cast<int>(first - pos);
    const double* r = pr + p0;
    const double* ua[3] = {pux + p0, puy + p0, puz + p0};
    double* f = scratch_mem;
    double* df = f + m;
    double* gs = df + m;
    ms.fc.fdf(m, r, f, df);  // values at r >= rc are discarded below
    gaussian_array(m, r, ms.eta, ms.rs, ms.fast_exp, gs);
    const double rc = ms.fc.rc(), two_eta = 2.0 * ms.eta;
    for (int a = 0; a < m; ++a) {
        const bool in = r[a] < rc;
        A[a] = in ? f[a] * gs[a] : 0.0;
        dA[a] = in ? (df[a] - two_eta * (r[a] - ms.rs) * f[a]) * gs[a] : 0.0;
    }
    for (int a = 0; a < m; ++a) {
        ux4[a] = ua[0][a];
        uy4[a] = ua[1][a];
        uz4[a] = ua[2][a];
        ir4[a] = 1.0 / r[a];
    }
    for (int a = m; a < m4; ++a) {  // whole 4-lane groups for the loops below and contract()
        A[a] = dA[a] = 0.0;
        ux4[a] = uy4[a] = uz4[a] = 0.0;
        ir4[a] = 1.0;
    }
    with_degree(ms.degree, [&](auto G) PYFRAGNN_LAMBDA {
        lane_moments<G()>(m4, A, ux4, uy4, uz4, mono, Mo);
    });
    Mo[nm] = dot(m, A, A);
}

/// Moments by lane group, S_m of four pairs per product, and the functions' values.
PYFRAGNN_PART void Descriptor::compute_moment_products(Frame& fr) const {
    double* G = fr.G;
    const int mhead = fr.mhead, n_mset = fr.n_mset, n_mgroup = fr.n_mgroup;
    const int* start = fr.start;
    double* buf = fr.buf;

    auto moments_of = [&](int si) {  // M of set si (followed by D, W, dE/dD)
        const int* f; int m;
        fr.list(msets_[si].e1, f, m);
        return buf + start[mhead + si] + (6 + static_cast<std::size_t>(n_mono(msets_[si].degree))) * round_up4(m);
    };
    // Moments of each lane group with one set per lane (Mt[k][lane]); then S_m of four pairs at
    // once per product, each lane summing as for its pair alone (two partial sums per degree,
    // in monomial order): the ten pairs of IRMOF-1's four sets are three products.
    for (int g = 0; g < n_mgroup; ++g) {
        const MomentGroup& mg = mgroups_[g];
        const int nm = n_mono(mg.degree);
        double* Mt = buf + start[mhead + n_mset + g];
        static const double kZeros[mono_count(kMomentMaxZeta)] = {};  // an absent lane's moments
        const double* Ml[4];
        for (int l = 0; l < 4; ++l) Ml[l] = l < mg.count ? moments_of(mg.first + l) : kZeros;
        int k = 0;
        for (; k + 4 <= nm; k += 4) {  // four monomials of the four lanes per transpose
            v4d c[4];
            transpose4(ld4(Ml[0] + k), ld4(Ml[1] + k), ld4(Ml[2] + k), ld4(Ml[3] + k), c[0], c[1],
                       c[2], c[3]);
            for (int q = 0; q < 4; ++q) st4(Mt + 4 * (k + q), c[q]);
        }
        for (; k < nm; ++k)
            for (int l = 0; l < 4; ++l) Mt[4 * k + l] = Ml[l][k];
    }
    for (const MomentProduct& pd : mproducts_) {
        const double* M1 = buf + start[mhead + n_mset + pd.g1];
        const double* M2 = buf + start[mhead + n_mset + pd.g2];
        v4d S[kMomentMaxZeta + 1];
        const double* mw = kMono.weight;
        with_degree(pd.degree, [&](auto G) PYFRAGNN_LAMBDA {
            switch (pd.d) {
            case 0: lane_product_sums<0, G()>(mw, M1, M2, S); break;
            case 1: lane_product_sums<1, G()>(mw, M1, M2, S); break;
            case 2: lane_product_sums<2, G()>(mw, M1, M2, S); break;
            default: lane_product_sums<3, G()>(mw, M1, M2, S); break;
            }
        });
        // The functions of four lanes at once, each lane's sum in q order as for its pair alone.
        v4d Dv = {0.0, 0.0, 0.0, 0.0};
        for (int l = 0; l < 4; ++l)
            if (pd.dset[l] >= 0) Dv[l] = moments_of(pd.dset[l])[n_mono(msets_[pd.dset[l]].degree)];
        with_degree(pd.degree, [&](auto DEG) PYFRAGNN_LAMBDA {
            constexpr int nq = DEG() + 1;
            for (int u = 0; u < pd.nslot; ++u) {
                const double* cf = pd.coef.data() + static_cast<std::size_t>(u) * nq * 4;
                v4d V = {0.0, 0.0, 0.0, 0.0};
                for (int q = 0; q < nq; ++q) V += ld4(cf + 4 * q) * S[q];
                V -= ld4(pd.diag.data() + 4 * u) * Dv;
                const int* sf = pd.sf.data() + 4 * u;
                for (int l = 0; l < 4; ++l)
                    if (sf[l] >= 0) G[sf[l]] = V[l];
            }
        });
    }
}

/// Compact radial (20).
PYFRAGNN_PART void Descriptor::compute_compact_radial(Frame& fr) const {
    const AtomEnvironment& env = fr.env;
    double* G = fr.G;

    for (const CompactRadialTerm& t : compact_radial_) {
        const int* first; int m;
        fr.list(t.e1, first, m);
        for (int a = 0; a < m; ++a) {
            const double r = env.r[first[a]];
            if (!(r > t.rl && r < t.rc)) continue;
            double f, df;
            t.radial.fdf(r, f, df);
            G[t.sf] += f;
        }
    }
}

/// Compact angular (21, 22).
PYFRAGNN_PART void Descriptor::compute_compact_angular(Frame& fr) const {
    const AtomEnvironment& env = fr.env;
    double* G = fr.G;
    const double* u = fr.u;
    double* scratch_mem = fr.scratch_mem;

    double* crad = scratch_mem;  // [2n] C(r_ij), dC/dr
    for (const CompactAngularGroup& g : compact_angular_) {
        const int* l1; const int* l2; int m1, m2;
        fr.list(g.e1, l1, m1);
        fr.list(g.e2, l2, m2);
        const double rc2 = g.rc * g.rc, rl2 = g.rl > 0.0 ? g.rl * g.rl : 0.0;
        for_each_compact_pair(g, env, u, l1, m1, l2, m2, crad,
                              [&](int j, int k, const double*, const double*, double cos_t,
                                  double sin_t) {
            double rad = crad[2 * j] * crad[2 * k];
            if (g.type == 21) {
                const double* dj = env.d + 3 * j;
                const double* dk = env.d + 3 * k;
                const double dx = dk[0] - dj[0], dy = dk[1] - dj[1], dz = dk[2] - dj[2];
                const double s = dx * dx + dy * dy + dz * dz;
                if (!(s < rc2 && s > rl2)) return;
                double f, df;
                g.radial.fdf(std::sqrt(s), f, df);
                rad *= f;
            }
            const double theta = std::atan2(sin_t, cos_t);
            for (const CompactAngularTerm& t : g.terms) {
                double f, df;
                t.angular.fdf(theta, f, df);
                G[t.sf] += rad * f;
            }
        });
    }
}

PYFRAGNN_HOT
void Descriptor::compute(const AtomEnvironment& env, double* G, DescriptorWorkspace& ws) const {
    const int n = env.n, ne = n_elements_;
    const int n_rad = static_cast<int>(radial_.size()), n_ang = static_cast<int>(angular_.size());
    if (sfs_.empty()) return;
    std::fill(G, G + size(), 0.0);

    const int head = 2 * ne + 2;
    const int n_mset = static_cast<int>(msets_.size());
    const int mhead = head + 1 + n_rad + 5 * n_ang;  // per moment set: buf offset of its data
    const int n_mgroup = static_cast<int>(mgroups_.size());  // then per lane group
    const int lists = mhead + n_mset + n_mgroup;
    Frame fr{env, G, ws, n, ne, n_rad, n_ang, head, n_mset, mhead, n_mgroup, lists};
    compute_neighbour_lists(fr);
    compute_layout(fr);
    compute_soa(fr);
    compute_radial(fr);
    for (int gi = 0; gi < n_ang; ++gi) compute_angular(fr, gi);  // Gaussians (3, 9, 13)

    // Wide angular functions as Cartesian moments: per set, A_j, dA_j/dr, monomials u_j^a and
    // moments; per pair of sets S_m; per function sum_m coef[m] S_m - diag sum_j A_j^2.
    for (int si = 0; si < n_mset; ++si) compute_moment_set(fr, si);
    compute_moment_products(fr);
    compute_compact_radial(fr);
    compute_compact_angular(fr);
}

void Descriptor::contract(const AtomEnvironment& env, const double* dEdG, double* dEdd,
                          DescriptorWorkspace& ws) const {
    contract(env, 1, dEdG, dEdd, ws);
}

PYFRAGNN_HOT
void Descriptor::contract(const AtomEnvironment& env, int nv, const double* dEdG, double* dEdd,
                          DescriptorWorkspace& ws) const {
    const int n = env.n;
    std::fill(dEdd, dEdd + 3 * static_cast<std::size_t>(n) * nv, 0.0);
    if (sfs_.empty() || nv <= 0) return;
    {  // The API requires compute(env, ws) just before; the fingerprint only catches misuse.
        const Descriptor* self = this;
        const bool cached = ws.buf.size() >= kFingerprint &&
                            std::memcmp(ws.buf.data(), &self, sizeof self) == 0 && ws.buf[1] == n &&
                            (n == 0 || (ws.buf[2] == env.d[0] && ws.buf[3] == env.d[3 * n - 1]));
        if (!cached) {
            std::vector<double> G(sfs_.size());
            compute(env, G.data(), ws);
        }
    }
    // Vectors in pairs (one pass over the triplets for two), an odd one alone.
    const std::size_t nsf = sfs_.size(), nd = 3 * static_cast<std::size_t>(n);
    int v = 0;
    for (; v + 2 <= nv; v += 2) contract_nv<2>(env, dEdG + v * nsf, dEdd + v * nd, ws);
    if (v < nv) contract_nv<1>(env, dEdG + v * nsf, dEdd + v * nd, ws);
}

// ---------------------------------------------------------------------------------------------
// contract_nv() in sections, PYFRAGNN_PART as compute()'s. ContractFrame holds what they share:
// the environment, the NV vectors' dE/dG and dE/dd, compute()'s workspace and cbuf's sections.

struct Descriptor::ContractFrame {
    const AtomEnvironment& env;
    const double* dEdG_all;          // [NV][nsf]
    double* dEdd_all;                // [NV][3n]
    const int n, ne, n_rad, n_ang;
    const std::size_t nsf;
    const int head;
    const int* start;                // compute()'s ibuf
    double* buf;                     // compute()'s buf
    const double* u;                 // unit vectors [n][3]
    double* scratch_mem;
    const int n_mset, mhead, n_mgroup;  // moment sets' and lane groups' ibuf offsets
    std::size_t n4 = 0;              // 4n with angular groups, else 0
    double* along_all = nullptr;     // cbuf sections (see contract_workspace)
    double* u4 = nullptr;
    double* acc4_all = nullptr;
    double* vec_mem = nullptr;

    /// Neighbour list of element e (e < 0: all elements).
    void list(int e, const int*& first, int& count) const {
        first = start + start[e < 0 ? 0 : e];
        count = start[e < 0 ? ne : e + 1] - start[e < 0 ? 0 : e];
    }
    /// compute()'s Mt [nm][4] of lane group g, then Wt [nm][4].
    double* group_at(int g) const { return buf + start[mhead + n_mset + g]; }
};

/// One angular group's arrays from compute() and its block scratch (contract_nv()).
struct Descriptor::AngularContraction {
    const AngularGroup& g;
    int ng, npow, nt;
    bool with_jk;
    const double* nb_rec;
    const double* nb_g;
    int cap;
    const int* pj;
    const int* pk;
    const double* cosv;
    const double* rjk;               // 1/r_jk once compute() is done (see the layout)
    const double* fjk;
    const double* dfjk;
    const double* xjk;
    double* tmp;                     // block scratch (see contract_angular)
    double* cos_s;
    double* brs;
    double* fjs;
    double* dfjs;
    double* tg;
    double* pw;
    double* dpw;
    double* vbase;
    std::size_t per_vec;
    const int* gauss_start;
    const int* power_by_gauss;
    double* poly;                    // [NV][ng][2 D + 3][4] (contract_poly_coefficients)
};

/// One block of triplets (contract_nv()): its indices and the per-triplet inputs.
struct Descriptor::TripletBlock {
    int nb;
    const int* bj;
    const int* bk;
    const double* bc;
    const double* irb;   // 1/r_jk
    const double* fb;    // fc(r_jk)
    const double* dfb;   // dfc(r_jk)/r_jk
    const double* cb;
    const double* tgb;
    std::size_t tst;
};

/// M of moment set si, followed by D, W, dE/dD.
PYFRAGNN_PART double* Descriptor::set_moments(const ContractFrame& fr, int si) const {
    const int* f; int m;
    fr.list(msets_[si].e1, f, m);
    return fr.buf + fr.start[fr.mhead + si] +
           (6 + static_cast<std::size_t>(n_mono(msets_[si].degree))) * round_up4(m);
}

/// The cbuf sections of NV vectors; along_u and acc4 zeroed, u4 filled.
template <int NV>
PYFRAGNN_PART void Descriptor::contract_workspace(ContractFrame& fr,
                                                  DescriptorWorkspace& ws) const {
    const int n = fr.n;
    const double* u = fr.u;

    // cbuf: along_u [NV][n] (dE/dd_j components along u_j); for the angular groups u4 [n][4]
    // (u_j, 0) and acc4 [NV][n][4] (dE/dd_j off u_j, then along u_j), so that a triplet's update
    // of one neighbour is one 4-lane add; then the angular block scratch.
    std::size_t vec_size = 0;
    for (const AngularGroup& g : angular_) {
        const std::size_t ng = g.gauss.size(), npow = g.powers.size();
        vec_size = std::max(vec_size, kBlock * (5 + ng + 2 * npow) +
                                          NV * (4 * kBlock + g.terms.size() +
                                                4 * ng * (2 * g.poly_degree + 3)));
    }
    const std::size_t n4 = angular_.empty() ? 0 : 4 * static_cast<std::size_t>(n);
    const std::size_t head_size = NV * static_cast<std::size_t>(n) + (NV + 1) * n4;
    if (ws.cbuf.size() < head_size + vec_size) ws.cbuf.resize(head_size + vec_size);
    double* along_all = ws.cbuf.data();
    double* u4 = along_all + NV * static_cast<std::size_t>(n);
    double* acc4_all = u4 + n4;
    double* vec_mem = along_all + head_size;
    std::fill(along_all, along_all + NV * static_cast<std::size_t>(n), 0.0);
    if (n4 > 0) {
        std::fill(acc4_all, acc4_all + NV * n4, 0.0);
        for (int j = 0; j < n; ++j) {
            for (int a = 0; a < 3; ++a) u4[4 * j + a] = u[3 * j + a];
            u4[4 * j + 3] = 0.0;
        }
    }
    fr.n4 = n4;
    fr.along_all = along_all;
    fr.u4 = u4;
    fr.acc4_all = acc4_all;
    fr.vec_mem = vec_mem;
}

/// Radial Gaussians of one vector.
PYFRAGNN_PART void Descriptor::contract_radial(ContractFrame& fr, const double* dEdG,
                                               double* along_u) const {
    const int ne = fr.ne, n_rad = fr.n_rad, head = fr.head;
    const int* start = fr.start;
    double* buf = fr.buf;
    double* scratch_mem = fr.scratch_mem;

    for (int gi = 0; gi < n_rad; ++gi) {
        const RadialGroup& g = radial_[gi];
        const int* first = start + start[g.e1 < 0 ? 0 : g.e1];
        const int m = start[g.e1 < 0 ? ne : g.e_last + 1] - start[g.e1 < 0 ? 0 : g.e1];
        const int members = g.e1 < 0 ? 1 : g.e_last - g.e1 + 1;
        const int m4 = round_up4(m);
        const double* r = buf + start[head + 1 + gi];
        const double* fc = r + m4;
        const double* dfc = fc + m4;
        // Per neighbour, dE/dr_ij summed over the terms in order with its element's dE/dG (zero
        // weights add nothing), the element's weights gathered once, four neighbours per
        // vector. (A weight per neighbour
        // filled per term, then a loop over the whole list per term, cost more than the
        // arithmetic with IRMOF-1's ~14 neighbours.)
        const int nt = static_cast<int>(g.terms.size());
        double* wt = scratch_mem;  // [nt] weights of one element
        for (int e = 0; e < members; ++e) {
            const int ee = g.e1 < 0 ? 0 : g.e1 + e;
            const int a0 = members == 1 ? 0 : start[ee] - start[g.e1];
            const int a1 = members == 1 ? m : start[ee + 1] - start[g.e1];
            if (a0 == a1) continue;
            for (int t = 0; t < nt; ++t)
                wt[t] = dEdG[members == 1 ? g.terms[t].sf : g.sf[t * members + e]];
            for (int b = a0; b < a1; b += 4) {  // four neighbours per vector
                const v4d r4 = ld4(r + b), f4 = ld4(fc + b), df4 = ld4(dfc + b);
                v4d sa = {0.0, 0.0, 0.0, 0.0};
                for (int t = 0; t < nt; ++t) {
                    if (wt[t] == 0.0) continue;
                    const RadialTerm& term = g.terms[t];
                    sa += wt[t] * ld4(dfc + (1 + t) * m4 + b) *
                          (df4 - 2.0 * term.eta * (r4 - term.rs) * f4);
                }
                for (int l = 0; l < 4 && b + l < a1; ++l) along_u[first[b + l]] += sa[l];
            }
        }
    }
}

/// A block's inputs: compute()'s per-triplet arrays (copied for a partial block), type 9's
/// Gaussian products.
PYFRAGNN_PART Descriptor::TripletBlock Descriptor::contract_block_inputs(
    ContractFrame& fr, const AngularContraction& ac, int t0, int nb) const {
    const int n = fr.n, ng = ac.ng, cap = ac.cap;
    const bool with_jk = ac.with_jk;
    const int* pj = ac.pj;
    const int* pk = ac.pk;
    const double *cosv = ac.cosv, *rjk = ac.rjk, *fjk = ac.fjk, *dfjk = ac.dfjk, *xjk = ac.xjk;
    const double* nb_g = ac.nb_g;
    double *cos_s = ac.cos_s, *brs = ac.brs, *fjs = ac.fjs, *dfjs = ac.dfjs, *tg = ac.tg;

    const int* bj = pj + t0;
    const int* bk = pk + t0;
    const double* bc = cosv + t0;
    // Per-triplet arrays of compute() (1/r_jk, fc(r_jk), dfc(r_jk)/r_jk, cos, Gaussian
    // products of types 3, 13), copied for a partial block: the kernel below reads whole
    // 4-lane groups.
    const double* br = rjk + t0;
    const double* fb = fjk + t0;
    const double* dfb = dfjk + t0;
    const double* cb = bc;
    const double* tgb = with_jk ? xjk + t0 : tg;
    const std::size_t tstride = with_jk ? cap : kBlock;
    const bool partial = nb % 4 != 0;
    if (partial) {
        std::copy(bc, bc + nb, cos_s);
        cb = cos_s;
        if (with_jk) {
            std::copy(br, br + nb, brs);
            std::copy(fb, fb + nb, fjs);
            std::copy(dfb, dfb + nb, dfjs);
            br = brs;
            fb = fjs;
            dfb = dfjs;
            for (int q = 0; q < ng; ++q)
                std::copy(xjk + q * cap + t0, xjk + q * cap + t0 + nb, tg + q * kBlock);
            tgb = tg;
        }
    }
    if (!with_jk)
        for (int q = 0; q < ng; ++q) {
            const double* gq = nb_g + q * n;
            double* tq = tg + q * kBlock;
            for (int i = 0; i < nb; ++i) tq[i] = gq[bj[i]] * gq[bk[i]];
        }
    const std::size_t tst = (!with_jk || partial) ? kBlock : tstride;
    return TripletBlock{nb, bj, bk, bc, br, fb, dfb, cb, tgb, tst};
}

/// A block's angular powers P^zeta and their derivatives.
PYFRAGNN_PART void Descriptor::contract_block_powers(const AngularContraction& ac,
                                                     const TripletBlock& blk) const {
    const AngularGroup& g = ac.g;
    const int npow = ac.npow, nb = blk.nb;
    const double* bc = blk.bc;
    double *tmp = ac.tmp, *pw = ac.pw, *dpw = ac.dpw;

    for (int w = 0; w < npow; ++w) {  // pw = P^zeta, dpw = zeta lambda P^(zeta-1)
        const AngularPower& p = g.powers[w];
        double* pww = pw + w * kBlock;
        double* dpww = dpw + w * kBlock;
        const double zl = p.zeta * p.lambda;
        if (p.zeta_int >= 1) {  // the loops below in one pass in registers, whole
            const int m = p.zeta_int - 1;  // 4-lane groups
            const v4d lam = {p.lambda, p.lambda, p.lambda, p.lambda};
            const v4d zl4 = {zl, zl, zl, zl};
            with_power(m, [&](auto M) {
                for (int i = 0; i < nb; i += 4) {
                    const v4d base = angular_base4(lam, bc + i);
                    if (M() == 0) {  // P^0 = 1 needs the P > 0 mask explicitly
                        st4(pww + i, base);
                        st4(dpww + i, (v4d)((v4i)(base > 0.0) & (v4i)zl4));
                        continue;
                    }
                    const v4d d = pow_m<M()>(base, m);
                    st4(pww + i, d * base);
                    st4(dpww + i, d * zl4);
                }
            });
            continue;
        }
        angular_base(nb, bc, p.lambda, tmp);  // non-integer zeta (> 1)
        for (int i = 0; i < nb; ++i)
            dpww[i] = tmp[i] > 0.0 ? std::pow(tmp[i], p.zeta - 1.0) : 0.0;
        for (int i = 0; i < nb; ++i) {  // P^(zeta-1) is 0 where P is clipped
            pww[i] = dpww[i] * tmp[i];
            dpww[i] *= zl;
        }
    }
}

namespace {

/// alpha/beta of four triplets (from i) and NV vectors into vbase (see contract_block_terms):
/// from the sums s0, sc, se, ser and the triplets' geometry (lanes past the block repeat its
/// last triplet).
template <int NV, class Contraction, class Block>
inline void alpha_beta(const Contraction& ac, const Block& blk, int i, const v4d* s0,
                       const v4d* sc, const v4d* se, const v4d* ser) {
    const int nb = blk.nb;
    const bool with_jk = ac.with_jk;
    const double* nb_rec = ac.nb_rec;
    double* vbase = ac.vbase;
    const std::size_t per_vec = ac.per_vec;
    int jx[4], kx[4];
    if (i + 4 <= nb) {
        for (int l = 0; l < 4; ++l) {
            jx[l] = blk.bj[i + l];
            kx[l] = blk.bk[i + l];
        }
    } else {
        for (int l = 0; l < 4; ++l) {
            const int il = std::min(i + l, nb - 1);
            jx[l] = blk.bj[il];
            kx[l] = blk.bk[il];
        }
    }
    v4d fj, dfj, r_ij, cj, fk, dfk, r_ik, ck;
    transpose4(ld4(nb_rec + 4 * jx[0]), ld4(nb_rec + 4 * jx[1]),
               ld4(nb_rec + 4 * jx[2]), ld4(nb_rec + 4 * jx[3]), fj, dfj, r_ij, cj);
    transpose4(ld4(nb_rec + 4 * kx[0]), ld4(nb_rec + 4 * kx[1]),
               ld4(nb_rec + 4 * kx[2]), ld4(nb_rec + 4 * kx[3]), fk, dfk, r_ik, ck);
    const v4d f3 = with_jk ? ld4(blk.fb + i) : v4d{1.0, 1.0, 1.0, 1.0};
    const v4d F = fj * fk * f3;
    const v4d Dj = dfj * fk * f3;
    const v4d Dk = fj * dfk * f3;
    const v4d cos4 = ld4(blk.cb + i);
    const v4d ccj4 = cos4 * cj, cck4 = cos4 * ck;
    for (int v = 0; v < NV; ++v) {
        double* out = vbase + v * per_vec;
        const v4d t_rij = F * (ser[v] - r_ij * se[v]) + s0[v] * Dj;
        const v4d t_rik = F * (ser[v] - r_ik * se[v]) + s0[v] * Dk;
        const v4d t_cos = F * sc[v];
        v4d aj = t_rij - t_cos * ccj4, bj4 = t_cos * cj;
        v4d ak = t_rik - t_cos * cck4, bk4 = t_cos * ck;
        if (with_jk) {
            // T_rjk / r_jk from 1/r_jk and dfc(r_jk)/r_jk (stored so by compute())
            const v4d t_rjk_r =
                F * (ser[v] * ld4(blk.irb + i) - se[v]) + s0[v] * (fj * fk * ld4(blk.dfb + i));
            aj += t_rjk_r * r_ij;
            bj4 -= t_rjk_r * r_ik;
            ak += t_rjk_r * r_ik;
            bk4 -= t_rjk_r * r_ij;
        }
        st4(out + i, aj);
        st4(out + kBlock + i, bj4);
        st4(out + 2 * kBlock + i, ak);
        st4(out + 3 * kBlock + i, bk4);
    }
}

}  // namespace

/// A block's alpha/beta of the NV vectors (four triplets at a time).
template <int NV>
PYFRAGNN_PART void Descriptor::contract_block_terms(const AngularContraction& ac,
                                                    const TripletBlock& blk) const {
    const AngularGroup& g = ac.g;
    const int ng = ac.ng, nb = blk.nb;
    const int* gauss_start = ac.gauss_start;
    const int* power_by_gauss = ac.power_by_gauss;
    const double *pw = ac.pw, *dpw = ac.dpw;
    const double* vbase = ac.vbase;
    const std::size_t per_vec = ac.per_vec, tst = blk.tst;
    const double* tgb = blk.tgb;

    // Per triplet and vector: Q_q = sum_t w_t P^zeta_t, R_q = sum_t w_t dP^zeta_t/dcos over
    // the terms of Gaussian q; with x_q = Q_q tg_q: s0 = sum_q x_q, sc = sum_q R_q tg_q,
    // se = sum_q 2 eta_q x_q, ser = sum_q 2 eta_q rs_q x_q, so that the Gaussian parts
    // of dE/dr / F are ser - r se for r = r_ij, r_ik, r_jk. Then alpha/beta (dE/dd_j =
    // alpha_j u_j + beta_j u_k, dE/dd_k = alpha_k u_k + beta_k u_j, see the file comment,
    // d_jk = r_ik u_k - r_ij u_j).
    for (int i = 0; i < nb; i += 4) {
        v4d s0[NV], sc[NV], se[NV], ser[NV];
        for (int v = 0; v < NV; ++v) s0[v] = sc[v] = se[v] = ser[v] = v4d{0, 0, 0, 0};
        for (int q = 0; q < ng; ++q) {
            const v4d tq = ld4(tgb + q * tst + i);
            v4d Q[NV], R[NV];
            for (int v = 0; v < NV; ++v) Q[v] = R[v] = v4d{0, 0, 0, 0};
            for (int a = gauss_start[q]; a < gauss_start[q + 1]; ++a) {
                const int pt = power_by_gauss[a];
                const v4d p = ld4(pw + pt * kBlock + i), dp = ld4(dpw + pt * kBlock + i);
                for (int v = 0; v < NV; ++v) {
                    const double w = vbase[v * per_vec + 4 * kBlock + a];
                    Q[v] += w * p;
                    R[v] += w * dp;
                }
            }
            const double two_eta = 2.0 * g.gauss[q].eta, two_eta_rs = two_eta * g.gauss[q].rs;
            for (int v = 0; v < NV; ++v) {
                const v4d x = Q[v] * tq;
                s0[v] += x;
                sc[v] += R[v] * tq;
                se[v] += two_eta * x;
                ser[v] += two_eta_rs * x;
            }
        }
        alpha_beta<NV>(ac, blk, i, s0, sc, se, ser);
    }
}

/// A polynomial group's (poly_degree > 0) per-centre coefficients, broadcast to four lanes: per
/// vector v and Gaussian q, Q_q(c) = sum_t w_t P_t(c) = sum_m C_m c^m (terms t of q; w_t =
/// dE/dG_t 2^(1-zeta)), then R_q = dQ_q/dc = sum_m (m + 1) C_(m+1) c^m, then 2 eta_q and
/// 2 eta_q rs_q: [NV][ng][2 D + 3][4].
template <int NV>
PYFRAGNN_PART void Descriptor::contract_poly_coefficients(const AngularContraction& ac) const {
    const AngularGroup& g = ac.g;
    const int D = g.poly_degree, ng = ac.ng, nc = 2 * D + 3;
    const double* coef = g.poly_coef.data();
    for (int v = 0; v < NV; ++v) {
        const double* wt = ac.vbase + v * ac.per_vec + 4 * kBlock;
        for (int q = 0; q < ng; ++q) {
            double c[2 * kPolyMaxZeta + 3] = {};
            for (int a = ac.gauss_start[q]; a < ac.gauss_start[q + 1]; ++a)
                for (int m = 0; m <= D; ++m) c[m] += wt[a] * coef[a * (D + 1) + m];
            for (int m = 0; m < D; ++m) c[D + 1 + m] = (m + 1) * c[m + 1];
            c[2 * D + 1] = 2.0 * g.gauss[q].eta;
            c[2 * D + 2] = c[2 * D + 1] * g.gauss[q].rs;
            double* out = ac.poly + 4 * static_cast<std::size_t>(nc) * (v * ng + q);
            for (int m = 0; m < nc; ++m) st4(out + 4 * m, v4d{c[m], c[m], c[m], c[m]});
        }
    }
}

/// contract_block_terms() for a polynomial group of degree D: Q_q and R_q by Horner's rule in
/// registers from contract_poly_coefficients() (no powers, no per-term loop).
template <int NV, int D>
PYFRAGNN_PART void Descriptor::contract_block_terms_poly(const AngularContraction& ac,
                                                         const TripletBlock& blk) const {
    constexpr int NC = 2 * D + 3;
    const int ng = ac.ng, nb = blk.nb;
    const std::size_t tst = blk.tst;
    const double *tgb = blk.tgb, *cb = blk.cb, *poly = ac.poly;
    for (int i = 0; i < nb; i += 4) {
        const v4d c = ld4(cb + i);
        v4d s0[NV], sc[NV], se[NV], ser[NV];
        for (int v = 0; v < NV; ++v) s0[v] = sc[v] = se[v] = ser[v] = v4d{0, 0, 0, 0};
        for (int q = 0; q < ng; ++q) {
            const v4d tq = ld4(tgb + q * tst + i);
            for (int v = 0; v < NV; ++v) {
                const double* k = poly + 4 * NC * (v * ng + q);
                v4d Q = ld4(k + 4 * D), R = ld4(k + 4 * (2 * D));
                for (int m = D - 1; m >= 0; --m) Q = Q * c + ld4(k + 4 * m);
                for (int m = D - 2; m >= 0; --m) R = R * c + ld4(k + 4 * (D + 1 + m));
                const v4d x = Q * tq;
                s0[v] += x;
                sc[v] += R * tq;
                se[v] += ld4(k + 4 * (2 * D + 1)) * x;
                ser[v] += ld4(k + 4 * (2 * D + 2)) * x;
            }
        }
        alpha_beta<NV>(ac, blk, i, s0, sc, se, ser);
    }
}

/// contract_block_terms_poly() for the group's degree.
template <int NV>
PYFRAGNN_PART void Descriptor::contract_block_poly(const AngularContraction& ac,
                                                   const TripletBlock& blk) const {
    static_assert(kPolyMaxZeta == 8, "one case per degree");
    switch (ac.g.poly_degree) {
    case 1: contract_block_terms_poly<NV, 1>(ac, blk); break;
    case 2: contract_block_terms_poly<NV, 2>(ac, blk); break;
    case 3: contract_block_terms_poly<NV, 3>(ac, blk); break;
    case 4: contract_block_terms_poly<NV, 4>(ac, blk); break;
    case 5: contract_block_terms_poly<NV, 5>(ac, blk); break;
    case 6: contract_block_terms_poly<NV, 6>(ac, blk); break;
    case 7: contract_block_terms_poly<NV, 7>(ac, blk); break;
    default: contract_block_terms_poly<NV, 8>(ac, blk); break;
    }
}

/// A block's scatter of alpha/beta into acc4 of j and k.
template <int NV>
PYFRAGNN_PART void Descriptor::contract_block_scatter(ContractFrame& fr,
                                                      const AngularContraction& ac,
                                                      const TripletBlock& blk) const {
    const double* vbase = ac.vbase;
    const std::size_t per_vec = ac.per_vec, n4 = fr.n4;
    double* acc4_all = fr.acc4_all;
    const double* u4 = fr.u4;
    const int nb = blk.nb;
    const int* bj = blk.bj;
    const int* bk = blk.bk;

    // Triplets come grouped by j: keep j's sums in registers.
    const double* alpha_j[NV];
    const double* beta_j[NV];
    const double* alpha_k[NV];
    const double* beta_k[NV];
    double* acc4[NV];
    for (int v = 0; v < NV; ++v) {
        alpha_j[v] = vbase + v * per_vec;
        beta_j[v] = alpha_j[v] + kBlock;
        alpha_k[v] = alpha_j[v] + 2 * kBlock;
        beta_k[v] = alpha_j[v] + 3 * kBlock;
        acc4[v] = acc4_all + v * n4;
    }
    const v4d e3 = {0.0, 0.0, 0.0, 1.0};
    for (int i = 0; i < nb;) {
        const int j = bj[i];
        const v4d uj = ld4(u4 + 4 * j);
        v4d sj[NV];
        for (int v = 0; v < NV; ++v) sj[v] = v4d{0.0, 0.0, 0.0, 0.0};
        for (; i < nb && bj[i] == j; ++i) {
            const int k = bk[i];
            const v4d uk = ld4(u4 + 4 * k);
            for (int v = 0; v < NV; ++v) {
                sj[v] += beta_j[v][i] * uk + alpha_j[v][i] * e3;
                double* ak = acc4[v] + 4 * k;
                st4(ak, ld4(ak) + (beta_k[v][i] * uj + alpha_k[v][i] * e3));
            }
        }
        for (int v = 0; v < NV; ++v) {
            double* aj = acc4[v] + 4 * j;
            st4(aj, ld4(aj) + sj[v]);
        }
    }
}

/// Angular group gi for NV vectors: weights, then per block inputs, powers, terms, scatter.
template <int NV>
PYFRAGNN_PART void Descriptor::contract_angular(ContractFrame& fr, int gi) const {
    const int n = fr.n, head = fr.head, n_rad = fr.n_rad;
    const int* start = fr.start;
    double* buf = fr.buf;
    double* vec_mem = fr.vec_mem;
    const double* dEdG_all = fr.dEdG_all;
    const std::size_t nsf = fr.nsf;

    const AngularGroup& g = angular_[gi];
    const int* h = start + head + 1 + n_rad + 5 * gi;
    const int ng = static_cast<int>(g.gauss.size()), npow = static_cast<int>(g.powers.size());
    const int nt = static_cast<int>(g.terms.size());
    const bool with_jk = g.type != 9;
    const double* nb_rec = buf + h[0];  // (fc, dfc, r, 1/r) per neighbour
    const double* nb_g = nb_rec + 4 * n;
    const int cap = h[2], count = h[3];
    const int* pj = start + h[4];
    const int* pk = pj + cap;
    const double* cosv = buf + h[1];
    const double* rjk = cosv + cap;
    const double* fjk = rjk + cap;
    const double* dfjk = fjk + cap;
    const double* xjk = dfjk + cap;
    // Shared block scratch (in cbuf after the along_u arrays), [kBlock] each.
    double* tmp = vec_mem;
    double* cos_s = tmp + kBlock;         // cos, 1/r_jk, fc, dfc/r_jk of a partial block
    double* brs = cos_s + kBlock;
    double* fjs = brs + kBlock;
    double* dfjs = fjs + kBlock;
    double* tg = dfjs + kBlock;           // [ng][kBlock] Gaussian products
    double* pw = tg + ng * kBlock;        // [npow][kBlock] (1 + lambda cos)^zeta
    double* dpw = pw + npow * kBlock;     // [npow][kBlock] its d/dcos
    // Per vector v (stride per_vec): alpha_j, beta_j, alpha_k, beta_k [kBlock] each, then
    // wt [nt] (dE/dG_t 2^(1-zeta), terms in by_gauss order).
    double* vbase = dpw + npow * kBlock;
    const std::size_t per_vec = 4 * static_cast<std::size_t>(kBlock) + nt;
    bool any = false;
    for (int v = 0; v < NV; ++v) {  // in by_gauss order, the order of the sums below
        double* wt = vbase + v * per_vec + 4 * kBlock;
        for (int a = 0; a < nt; ++a) {
            const AngularTerm& term = g.terms[g.by_gauss[a]];
            wt[a] = dEdG_all[v * nsf + term.sf] * term.norm;
            any = any || wt[a] != 0.0;
        }
    }
    const int* gauss_start = g.gauss_start.data();
    const int* power_by_gauss = g.power_by_gauss.data();
    if (!any) return;
    double* poly = vbase + NV * per_vec;
    const AngularContraction ac{g, ng, npow, nt, with_jk, nb_rec, nb_g, cap, pj, pk, cosv, rjk,
                                fjk, dfjk, xjk, tmp, cos_s, brs, fjs, dfjs, tg, pw, dpw, vbase,
                                per_vec, gauss_start, power_by_gauss, poly};
    if (g.poly_degree > 0) contract_poly_coefficients<NV>(ac);
    for (int t0 = 0; t0 < count; t0 += kBlock) {
        const int nb = std::min(kBlock, count - t0);
        const TripletBlock blk = contract_block_inputs(fr, ac, t0, nb);
        if (g.poly_degree > 0) {
            contract_block_poly<NV>(ac, blk);
        } else {
            contract_block_powers(ac, blk);
            contract_block_terms<NV>(ac, blk);
        }
        contract_block_scatter<NV>(fr, ac, blk);
    }
}

/// Wide angular functions of one vector: dE/dD and, per product, dE/dM of its sets' lanes.
PYFRAGNN_PART void Descriptor::contract_moment_products(ContractFrame& fr,
                                                        const double* dEdG) const {
    const int n_mset = fr.n_mset, n_mgroup = fr.n_mgroup;

    for (int si = 0; si < n_mset; ++si) {  // dE/dD
        const int nm = n_mono(msets_[si].degree);
        set_moments(fr, si)[2 * nm + 1] = 0.0;
    }
    for (int g = 0; g < n_mgroup; ++g) {
        const int nm = n_mono(mgroups_[g].degree);
        std::fill(fr.group_at(g) + 4 * nm, fr.group_at(g) + 8 * nm, 0.0);
    }
    // Per product: dE/dS of its pairs by lane, then dE/dM += C M of the other set in each
    // pair's two lanes, C_k = dE/dS[deg k] m!/a! (lane_product_grad).
    for (const MomentProduct& pd : mproducts_) {
        // dE/dS by lane (four lanes at once, each summing its pair's terms in order) and dE/dD.
        const int nq = pd.degree + 1;
        v4d dS[kMomentMaxZeta + 1], dD = {0.0, 0.0, 0.0, 0.0};
        for (int q = 0; q < nq; ++q) dS[q] = v4d{0.0, 0.0, 0.0, 0.0};
        v4i nonzero = {0, 0, 0, 0};
        const int* sf0 = pd.sf0.data();
        const long long* live = pd.live.data();
        const double* coef = pd.coef.data();
        const double* diag = pd.diag.data();
        with_degree(pd.degree, [&](auto DEG) PYFRAGNN_LAMBDA {
            constexpr int nq = DEG() + 1;
            for (int u = 0; u < pd.nslot; ++u) {
                const int* sf = sf0 + 4 * u;
                v4i on;
                std::memcpy(&on, live + 4 * u, sizeof on);
                const v4d g = {dEdG[sf[0]], dEdG[sf[1]], dEdG[sf[2]], dEdG[sf[3]]};
                const v4d w = on ? g : v4d{0.0, 0.0, 0.0, 0.0};
                nonzero |= w != 0.0;
                const double* cf = coef + static_cast<std::size_t>(u) * nq * 4;
                for (int q = 0; q < nq; ++q) dS[q] += w * ld4(cf + 4 * q);
                dD -= w * ld4(diag + 4 * u);
            }
        });
        if (!(nonzero[0] | nonzero[1] | nonzero[2] | nonzero[3])) continue;
        for (int l = 0; l < 4; ++l)
            if (pd.dset[l] >= 0)
                set_moments(fr, pd.dset[l])[2 * n_mono(msets_[pd.dset[l]].degree) + 1] += dD[l];
        const double* mw = kMono.weight;
        const double* M1 = fr.group_at(pd.g1);
        const double* M2 = fr.group_at(pd.g2);
        double* W1 = fr.group_at(pd.g1) + 4 * n_mono(mgroups_[pd.g1].degree);
        double* W2 = fr.group_at(pd.g2) + 4 * n_mono(mgroups_[pd.g2].degree);
        with_degree(pd.degree, [&](auto G) PYFRAGNN_LAMBDA {
            switch (pd.d) {
            case 0: lane_product_grad<0, G()>(dS, mw, M1, M2, W1, W2); break;
            case 1: lane_product_grad<1, G()>(dS, mw, M1, M2, W1, W2); break;
            case 2: lane_product_grad<2, G()>(dS, mw, M1, M2, W1, W2); break;
            default: lane_product_grad<3, G()>(dS, mw, M1, M2, W1, W2); break;
            }
        });
    }
}

/// Wide angular functions of one vector: Wu, then dE/dd of each set's neighbours.
PYFRAGNN_PART void Descriptor::contract_moment_sets(ContractFrame& fr, double* dEdd,
                                                    double* along_u) const {
    const int n_mset = fr.n_mset, n_mgroup = fr.n_mgroup, mhead = fr.mhead;
    const int* start = fr.start;
    double* buf = fr.buf;

    for (int g = 0; g < n_mgroup; ++g) {  // Wu by lane (lane_wu)
        const int deg = mgroups_[g].degree, nm = n_mono(deg);
        const double* Wt = fr.group_at(g) + 4 * nm;
        double* Wut = fr.group_at(g) + 8 * nm;
        with_degree(deg, [&](auto DEG) PYFRAGNN_LAMBDA { lane_wu<DEG()>(Wt, Wut); });
    }
    for (int si = 0; si < n_mset; ++si) {
        const MomentSet& ms = msets_[si];
        const int* first; int m;
        fr.list(ms.e1, first, m);
        const int nm = n_mono(ms.degree);
        const int m4 = round_up4(m), lane = mset_lane_[si];
        const double* A = buf + start[mhead + si];
        const double* dA = A + m4;
        const double* ux4 = dA + m4;
        const double* uy4 = ux4 + m4;
        const double* uz4 = uy4 + m4;
        const double* ir4 = uz4 + m4;
        const double* mono = ir4 + m4;
        const double* W = fr.group_at(mset_group_[si]) + 4 * nm + lane;  // W[4 k]
        const double* Wu = fr.group_at(mset_group_[si]) + 8 * nm + lane;  // Wu[4 (ax nm_low + k)]
        const double dD = set_moments(fr, si)[2 * nm + 1];
        bool any = dD != 0.0;
        for (int k = 0; k < nm && !any; ++k) any = W[4 * k] != 0.0;
        if (!any) continue;
        // Four neighbours per vector (the monomials' lanes), two blocks at a time.
        const std::size_t stride = 4 * static_cast<std::size_t>(nm);
        for (int b = 0; b < m4; b += 8) {
            v4d p[2], px[2], py[2], pz[2];
            const int nb = m4 - b >= 8 ? 2 : 1;
            const double* mo = mono + b * static_cast<std::size_t>(nm);
            with_degree(ms.degree, [&](auto G) PYFRAGNN_LAMBDA {
                if (nb == 2) mono_dots<2, G()>(W, Wu, mo, stride, p, px, py, pz);
                else mono_dots<1, G()>(W, Wu, mo, stride, p, px, py, pz);
            });
            for (int h = 0; h < nb; ++h) {
                const int bh = b + 4 * h, valid = std::min(4, m - bh);
                const v4d A4 = ld4(A + bh), dA4 = ld4(dA + bh), inv_r = ld4(ir4 + bh);
                const v4d gx = A4 * px[h], gy = A4 * py[h], gz = A4 * pz[h];
                const v4d gu = gx * ld4(ux4 + bh) + gy * ld4(uy4 + bh) + gz * ld4(uz4 + bh);
                const v4d along = (p[h] + 2.0 * A4 * dD) * dA4 - gu * inv_r;
                const v4d hx = gx * inv_r, hy = gy * inv_r, hz = gz * inv_r;
                for (int l = 0; l < valid; ++l) {
                    if (A[bh + l] == 0.0 && dA[bh + l] == 0.0) continue;  // beyond rc
                    const int j = first[bh + l];
                    along_u[j] += along[l];
                    double* gj = dEdd + 3 * j;
                    gj[0] += hx[l];
                    gj[1] += hy[l];
                    gj[2] += hz[l];
                }
            }
        }
    }
}

/// Compact radial functions of one vector.
PYFRAGNN_PART void Descriptor::contract_compact_radial(ContractFrame& fr, const double* dEdG,
                                                       double* dEdd) const {
    const AtomEnvironment& env = fr.env;
    const double* u = fr.u;

    // Compact radial: dG/dr_ij = C'(r_ij) along u_j.
    for (const CompactRadialTerm& t : compact_radial_) {
        const double w = dEdG[t.sf];
        if (w == 0.0) continue;
        const int* first; int m;
        fr.list(t.e1, first, m);
        for (int a = 0; a < m; ++a) {
            const int j = first[a];
            const double r = env.r[j];
            if (!(r > t.rl && r < t.rc)) continue;
            double f, df;
            t.radial.fdf(r, f, df);
            for (int c = 0; c < 3; ++c) dEdd[3 * j + c] += w * df * u[3 * j + c];
        }
    }
}

/// Compact angular functions of one vector.
PYFRAGNN_PART void Descriptor::contract_compact_angular(ContractFrame& fr, const double* dEdG,
                                                        double* dEdd) const {
    const AtomEnvironment& env = fr.env;
    const double* u = fr.u;
    double* scratch_mem = fr.scratch_mem;

    // Compact angular: dtheta/dcos = -1/sin(theta).
    double* crad = scratch_mem;  // [2n] C(r_ij), dC/dr
    for (const CompactAngularGroup& g : compact_angular_) {
        bool any = false;
        for (const CompactAngularTerm& t : g.terms) any = any || dEdG[t.sf] != 0.0;
        if (!any) continue;
        const int* l1; const int* l2; int m1, m2;
        fr.list(g.e1, l1, m1);
        fr.list(g.e2, l2, m2);
        const double rc2 = g.rc * g.rc, rl2 = g.rl > 0.0 ? g.rl * g.rl : 0.0;
        for_each_compact_pair(g, env, u, l1, m1, l2, m2, crad,
                              [&](int j, int k, const double* uj, const double* uk,
                                  double cos_t, double sin_t) {
            const double* dj = env.d + 3 * j;
            const double* dk = env.d + 3 * k;
            const double djk[3] = {dk[0] - dj[0], dk[1] - dj[1], dk[2] - dj[2]};
            double cjk = 1.0, dcjk = 0.0, rjk = 1.0;
            if (g.type == 21) {
                const double s = djk[0] * djk[0] + djk[1] * djk[1] + djk[2] * djk[2];
                if (!(s < rc2 && s > rl2)) return;
                rjk = std::sqrt(s);
                g.radial.fdf(rjk, cjk, dcjk);
            }
            const double theta = std::atan2(sin_t, cos_t);
            double sa = 0.0, sda = 0.0;
            for (const CompactAngularTerm& t : g.terms) {
                double f, df;
                t.angular.fdf(theta, f, df);
                sa += dEdG[t.sf] * f;
                sda += dEdG[t.sf] * df;
            }
            const double cj = crad[2 * j], dcj = crad[2 * j + 1];
            const double ck = crad[2 * k], dck = crad[2 * k + 1];
            const double rad = cj * ck * cjk;
            add_triplet_gradient(dEdd, j, k, uj, uk, djk, env.r[j], env.r[k], cos_t,
                                 dcj * ck * cjk * sa, cj * dck * cjk * sa,
                                 cj * ck * dcjk * sa / rjk, -rad * sda / sin_t);
        });
    }
}

// A multiversioned function of its own, not a section of contract_nv(): the unrolled moment
// loops inlined there made GCC spill pointers in the narrow angular functions' triplet loops
// (water +2.5 % instructions).
PYFRAGNN_HOT
void Descriptor::contract_moments(ContractFrame& fr, const double* dEdG, double* dEdd,
                                  double* along_u) const {
    contract_moment_products(fr, dEdG);
    contract_moment_sets(fr, dEdd, along_u);
}

template <int NV>
void Descriptor::contract_nv(const AtomEnvironment& env, const double* dEdG_all, double* dEdd_all,
                             DescriptorWorkspace& ws) const {
    const int n = env.n, ne = n_elements_;
    const int n_rad = static_cast<int>(radial_.size()), n_ang = static_cast<int>(angular_.size());
    const std::size_t nsf = sfs_.size();
    const int head = 2 * ne + 2;
    const int* start = ws.ibuf.data();
    double* buf = ws.buf.data();
    const double* u = buf + kFingerprint;
    double* scratch_mem = buf + start[head];
    ContractFrame fr{env, dEdG_all, dEdd_all, n, ne, n_rad, n_ang, nsf, head, start, buf, u,
                     scratch_mem, static_cast<int>(msets_.size()),
                     head + 1 + n_rad + 5 * n_ang, static_cast<int>(mgroups_.size())};
    contract_workspace<NV>(fr, ws);
    double* along_all = fr.along_all;
    double* acc4_all = fr.acc4_all;
    const std::size_t n4 = fr.n4;

    for (int v = 0; v < NV; ++v) {
        const double* dEdG = dEdG_all + v * nsf;
        double* along_u = along_all + v * static_cast<std::size_t>(n);
        // Radial Gaussians: dG_t/dr = g_t (dfc - 2 eta (r - rs) fc), along u_j.
        contract_radial(fr, dEdG, along_u);
    }

    // Angular Gaussians: per triplet, the partial derivatives of all terms of the group are
    // summed with their weights dE/dG before forming the vectors, four triplets at a time in
    // registers. The NV vectors share the per-triplet geometry (distances, cutoff factors,
    // angular powers, Gaussian products) and one pass over the triplets to scatter.
    for (int gi = 0; gi < n_ang; ++gi) contract_angular<NV>(fr, gi);

    for (int v = 0; v < NV && n4 > 0; ++v) {
        const double* acc4 = acc4_all + v * n4;
        double* along_u = along_all + v * static_cast<std::size_t>(n);
        double* dEdd = dEdd_all + v * 3 * static_cast<std::size_t>(n);
        for (int j = 0; j < n; ++j) {
            along_u[j] += acc4[4 * j + 3];
            for (int a = 0; a < 3; ++a) dEdd[3 * j + a] += acc4[4 * j + a];
        }
    }

    for (int v = 0; v < NV; ++v) {
        const double* dEdG = dEdG_all + v * nsf;
        double* dEdd = dEdd_all + v * 3 * static_cast<std::size_t>(n);
        double* along_u = along_all + v * static_cast<std::size_t>(n);
        // Wide angular functions as Cartesian moments. dE/dM_a of each set (W), dE/dD, then per
        // neighbour j of a set: dE/dA_j = sum_a W_a u_j^a + 2 A_j dE/dD, dE/du_j = A_j sum_a W_a
        // du^a/du; dE/dd_j = dE/dr_j u_j + (dE/du_j - (dE/du_j . u_j) u_j) / r_j.
        if (fr.n_mset > 0) contract_moments(fr, dEdG, dEdd, along_u);
        contract_compact_radial(fr, dEdG, dEdd);
        contract_compact_angular(fr, dEdG, dEdd);
        for (int j = 0; j < n; ++j)
            for (int c = 0; c < 3; ++c) dEdd[3 * j + c] += along_u[j] * u[3 * j + c];
    }
}

void Descriptor::jacobian(const AtomEnvironment& env, double* G, double* dGdd,
                          DescriptorWorkspace& ws) const {
    // One contraction per function with a unit weight vector.
    compute(env, G, ws);
    const std::size_t nd = 3 * static_cast<std::size_t>(env.n);
    std::vector<double> w(sfs_.size(), 0.0);
    for (std::size_t s = 0; s < sfs_.size(); ++s) {
        w[s] = 1.0;
        contract(env, w.data(), dGdd + s * nd, ws);
        w[s] = 0.0;
    }
}

}  // namespace pyfragnn
