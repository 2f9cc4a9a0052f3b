#include "model.h"
#include "hot.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>
#include <sys/stat.h>

#include "elements.h"

namespace pyfragnn {

namespace {

struct Line {
    int number;                       // 1-based
    std::vector<std::string> tokens;  // comment stripped
    std::string raw;
};

std::vector<Line> split_lines(const std::string& text) {
    std::vector<Line> lines;
    std::istringstream in(text);
    std::string raw;
    int n = 0;
    while (std::getline(in, raw)) {
        ++n;
        if (!raw.empty() && raw.back() == '\r') raw.pop_back();
        std::string s = raw.substr(0, raw.find('#'));
        std::istringstream ts(s);
        Line l{n, {}, raw};
        std::string t;
        while (ts >> t) l.tokens.push_back(t);
        lines.push_back(std::move(l));
    }
    return lines;
}

std::string read_file(const std::string& path, const std::string& what) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open " + what + " '" + path + "'");
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

std::string where(const std::string& source, int line) {
    return source + " line " + std::to_string(line) + ": ";
}

double to_double(const std::string& t, const std::string& source, int line,
                 const std::string& what) {
    const char* s = t.c_str();
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(s, &end);
    if (end == s || *end != '\0' || errno == ERANGE || !std::isfinite(v))
        throw std::invalid_argument(where(source, line) + "cannot parse '" + t +
                                    "' as a number for " + what);
    return v;
}

long to_int(const std::string& t, const std::string& source, int line, const std::string& what) {
    const char* s = t.c_str();
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(s, &end, 10);
    if (end == s || *end != '\0' || errno == ERANGE)
        throw std::invalid_argument(where(source, line) + "cannot parse '" + t +
                                    "' as an integer for " + what);
    return v;
}

std::string fmt(double v) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return buf;
}

/// A scaling.data value: a number, or INF/NaN (n2p2's mark of an absent element).
double scaling_value(const std::string& t, const std::string& source, int line,
                     const std::string& what) {
    const char* s = t.c_str();
    char* end = nullptr;
    const double v = std::strtod(s, &end);
    if (end == s || *end != '\0')
        throw std::invalid_argument(where(source, line) + "cannot parse '" + t +
                                    "' as a number for " + what);
    return v;
}

/// A number for `what` that must lie in [lo, hi] (finite); the error names source and line.
double to_bounded(const std::string& t, const std::string& source, int line,
                  const std::string& what, double lo, double hi) {
    const double v = to_double(t, source, line, what);
    if (!(v >= lo && v <= hi))
        throw std::invalid_argument(where(source, line) + what + " " + t +
                                    " is out of range [" + fmt(lo) + ", " + fmt(hi) + "]");
    return v;
}

/// Largest magnitude accepted for energies (mean_energy, atom_energy) and scaling bounds.
constexpr double kMaxMagnitude = 1e12;
/// Accepted range of unit factors and normalisation factors (Å or eV per potential unit).
constexpr double kMinFactor = 1e-8, kMaxFactor = 1e8;
/// Most weights and biases an atomic network may have (checked before allocating).
constexpr int64_t kMaxWeights = 50000000;
/// A scaling.data value at or beyond this magnitude (or INF/NaN) marks an element absent from
/// the data that n2p2's nnp-scaling saw (it writes +-DBL_MAX or INF for such elements).
constexpr double kAbsentMagnitude = 1e300;

/// Byte offset of the first invalid UTF-8 sequence in s, or npos (strict, as Python decodes:
/// no overlong forms, no surrogates, nothing above U+10FFFF).
size_t invalid_utf8_at(const std::string& s) {
    const size_t n = s.size();
    auto byte = [&s](size_t k) { return static_cast<unsigned char>(s[k]); };
    size_t i = 0;
    while (i < n) {
        const unsigned char c = byte(i);
        if (c < 0x80) { ++i; continue; }
        size_t len = 0;
        unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
        if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return i;
        }
        if (i + len > n || byte(i + 1) < lo || byte(i + 1) > hi) return i;
        for (size_t k = 2; k < len; ++k)
            if ((byte(i + k) & 0xC0) != 0x80) return i;
        i += len;
    }
    return std::string::npos;
}

/// s with every byte of an invalid UTF-8 sequence written as \xNN (valid text unchanged).
std::string printable(const std::string& s) {
    std::string out;
    size_t i = 0;
    while (i < s.size()) {
        const size_t bad = invalid_utf8_at(s.substr(i));
        if (bad == std::string::npos) { out += s.substr(i); break; }
        out += s.substr(i, bad);
        char b[8];
        std::snprintf(b, sizeof b, "\\x%02X", static_cast<unsigned char>(s[i + bad]));
        out += b;
        i += bad + 1;
    }
    return out;
}

/// f(), with the message of a std::invalid_argument / std::runtime_error made valid UTF-8
/// (a token of a damaged file may be echoed in it; Python decodes messages as UTF-8).
template <class F>
auto utf8_errors(F&& f) -> decltype(f()) {
    try {
        return f();
    } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(printable(e.what()));
    } catch (const std::runtime_error& e) {
        throw std::runtime_error(printable(e.what()));
    }
}

/// Throws naming source and line when text is not UTF-8 (n2p2 files are ASCII).
void require_utf8(const std::string& text, const std::string& source) {
    const size_t bad = invalid_utf8_at(text);
    if (bad == std::string::npos) return;
    const int line = 1 + static_cast<int>(std::count(text.begin(), text.begin() + bad, '\n'));
    char b[8];
    std::snprintf(b, sizeof b, "0x%02X", static_cast<unsigned char>(text[bad]));
    throw std::invalid_argument(where(source, line) + "not a text file (byte " + b +
                                " is not UTF-8)");
}

void write_file_atomic(const std::string& path, const std::string& content) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) throw std::runtime_error("cannot write '" + tmp + "'");
        f << content;
        f.flush();
        if (!f) throw std::runtime_error("error while writing '" + tmp + "'");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
        throw std::runtime_error("cannot rename '" + tmp + "' to '" + path + "'");
}

bool is_directory(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

/// The weights file of atomic number z: the last "%03d" in pattern replaced by z, zero-padded
/// to three digits. Plain text substitution, never printf: the rest of the pattern is a user
/// path and may hold '%' itself.
std::string weights_path(const std::string& pattern, int z) {
    static const std::string kSlot = "%03d";
    const size_t at = pattern.rfind(kSlot);
    if (at == std::string::npos)
        throw std::invalid_argument("weights file pattern '" + pattern +
                                    "' has no %03d slot for the atomic number");
    std::string digits = std::to_string(z);
    if (digits.size() < 3) digits.insert(0, 3 - digits.size(), '0');
    return pattern.substr(0, at) + digits + pattern.substr(at + kSlot.size());
}

/// Parse the values of a weights file (first column of each non-comment line).
std::vector<double> parse_weights(const std::string& text, const std::string& source) {
    std::vector<double> w;
    for (const Line& l : split_lines(text)) {
        if (l.tokens.empty()) continue;
        w.push_back(to_double(l.tokens[0], source, l.number, "a weight"));
    }
    return w;
}

// Keywords of input.nn that the model interprets (everything else is kept verbatim).
const char* const kModelKeywords[] = {
    "number_of_elements", "elements", "atom_energy", "cutoff_type", "symfunction_short",
    "symfunction", "scale_symmetry_functions", "center_symmetry_functions",
    "scale_symmetry_functions_sigma", "scale_min_short", "scale_max_short",
    "global_hidden_layers_short", "global_nodes_short", "global_activation_short",
    "element_hidden_layers_short", "element_nodes_short", "element_activation_short",
    "normalize_nodes", "mean_energy", "conv_energy", "conv_length", "nnp_type",
    "nnp_generation", "nnp_gen", "nnp_type_gen"};

bool is_model_keyword(const std::string& k) {
    for (const char* m : kModelKeywords)
        if (k == m) return true;
    return false;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Construction from text

Model Model::from_text(const std::string& input_nn, const std::string& scaling,
                       const std::vector<std::vector<double>>& parameters,
                       const std::string& source) {
    return utf8_errors([&]() -> Model {
    require_utf8(input_nn, source);
    Model m;
    const std::vector<Line> lines = split_lines(input_nn);
    std::map<std::string, const Line*> single;  // last occurrence of single-valued keywords
    std::vector<const Line*> sf_lines, atom_energy_lines, el_layers, el_nodes, el_act;

    for (const Line& l : lines) {
        // pyfragnn unit annotation, kept in a comment so that n2p2 ignores it.
        if (l.raw.rfind("# pyfragnn units", 0) == 0) {
            std::istringstream ts(l.raw.substr(16));
            std::string k1, k2;
            double v1 = 0, v2 = 0;
            if (!(ts >> k1 >> v1 >> k2 >> v2 && k1 == "length_unit" && k2 == "energy_unit"))
                throw std::invalid_argument(where(source, l.number) +
                                            "garbled '# pyfragnn units' line");
            for (const auto& [key, v] : {std::pair{k1, v1}, std::pair{k2, v2}})
                if (!(v >= kMinFactor && v <= kMaxFactor))
                    throw std::invalid_argument(where(source, l.number) + key + " " + fmt(v) +
                                                " is out of range [" + fmt(kMinFactor) + ", " +
                                                fmt(kMaxFactor) + "]");
            m.length_unit_ = v1;
            m.energy_unit_ = v2;
            continue;
        }
        if (l.tokens.empty()) continue;
        const std::string& k = l.tokens[0];
        if (k == "symfunction_short" || k == "symfunction") sf_lines.push_back(&l);
        else if (k == "atom_energy") atom_energy_lines.push_back(&l);
        else if (k == "element_hidden_layers_short") el_layers.push_back(&l);
        else if (k == "element_nodes_short") el_nodes.push_back(&l);
        else if (k == "element_activation_short") el_act.push_back(&l);
        else if (is_model_keyword(k)) single[k == "nnp_generation" || k == "nnp_gen" ||
                                             k == "nnp_type_gen" ? "nnp_type" : k] = &l;
        else m.extra_lines_.push_back(l.raw);
    }
    auto need = [&](const std::string& k) -> const Line& {
        auto it = single.find(k);
        if (it == single.end())
            throw std::invalid_argument(source + ": missing keyword '" + k + "'");
        return *it->second;
    };
    auto nargs = [&](const Line& l, size_t n) {
        if (l.tokens.size() < n + 1)
            throw std::invalid_argument(where(source, l.number) + "keyword '" + l.tokens[0] +
                                        "' needs " + std::to_string(n) + " value(s)");
    };

    if (single.count("nnp_type")) {
        const Line& l = *single["nnp_type"];
        nargs(l, 1);
        const long g = to_int(l.tokens[1], source, l.number, "nnp_type");
        if (g != 2)
            throw std::invalid_argument(where(source, l.number) + "nnp_type " +
                                        std::to_string(g) +
                                        " is not supported (only 2G short-range HDNNPs)");
    }

    // Elements, sorted by atomic number as n2p2 does.
    const Line& ln = need("number_of_elements");
    nargs(ln, 1);
    const long nel = to_int(ln.tokens[1], source, ln.number, "number_of_elements");
    const Line& le = need("elements");
    std::vector<std::string> syms(le.tokens.begin() + 1, le.tokens.end());
    if (nel < 1 || static_cast<size_t>(nel) != syms.size())
        throw std::invalid_argument(where(source, le.number) + "number_of_elements is " +
                                    std::to_string(nel) + " but " +
                                    std::to_string(syms.size()) + " elements are listed");
    for (const std::string& s : syms) {
        if (atomic_number(s) == 0)
            throw std::invalid_argument(where(source, le.number) + "unknown element '" + s + "'");
        if (std::count(syms.begin(), syms.end(), s) > 1)
            throw std::invalid_argument(where(source, le.number) + "element '" + s +
                                        "' listed twice");
    }
    std::sort(syms.begin(), syms.end(), [](const std::string& a, const std::string& b) {
        return atomic_number(a) < atomic_number(b);
    });
    m.symbols_ = syms;
    for (const std::string& s : syms) m.z_.push_back(atomic_number(s));
    const int ne = static_cast<int>(syms.size());
    auto elem_index = [&](const Line& l, const std::string& s) {
        for (int e = 0; e < ne; ++e)
            if (syms[e] == s) return e;
        throw std::invalid_argument(where(source, l.number) + "element '" + s +
                                    "' is not in the 'elements' list");
    };

    // Cutoff function of all symmetry functions.
    const Line& lc = need("cutoff_type");
    nargs(lc, 1);
    m.cutoff_type_ = static_cast<int>(to_int(lc.tokens[1], source, lc.number, "cutoff_type"));
    if (m.cutoff_type_ < 0 || m.cutoff_type_ > 8)
        throw std::invalid_argument(where(source, lc.number) + "unknown cutoff type " +
                                    lc.tokens[1] + " (known: 0-8)");
    if (lc.tokens.size() > 2)
        m.cutoff_alpha_ = to_double(lc.tokens[2], source, lc.number, "cutoff_type alpha");
    if (!(m.cutoff_alpha_ >= 0.0 && m.cutoff_alpha_ < 1.0))
        throw std::invalid_argument(where(source, lc.number) + "cutoff alpha " + lc.tokens[2] +
                                    " must lie in [0, 1)");

    // Scaling type.
    const bool sc = single.count("scale_symmetry_functions");
    const bool ce = single.count("center_symmetry_functions");
    const bool sg = single.count("scale_symmetry_functions_sigma");
    if (sg) m.scaling_ = ScalingType::SIGMA;
    else if (sc && ce) m.scaling_ = ScalingType::SCALECENTER;
    else if (sc) m.scaling_ = ScalingType::SCALE;
    else if (ce) m.scaling_ = ScalingType::CENTER;
    else m.scaling_ = ScalingType::NONE;
    if (single.count("scale_min_short")) {
        const Line& l = *single["scale_min_short"];
        nargs(l, 1);
        m.smin_ = to_bounded(l.tokens[1], source, l.number, "scale_min_short", -kMaxMagnitude,
                             kMaxMagnitude);
    }
    if (single.count("scale_max_short")) {
        const Line& l = *single["scale_max_short"];
        nargs(l, 1);
        m.smax_ = to_bounded(l.tokens[1], source, l.number, "scale_max_short", -kMaxMagnitude,
                             kMaxMagnitude);
    }

    // Normalisation (all three keywords switch it on).
    const int nnorm = static_cast<int>(single.count("mean_energy") + single.count("conv_energy") +
                                       single.count("conv_length"));
    if (nnorm == 3) {
        m.normalised_ = true;
        for (const char* k : {"mean_energy", "conv_energy", "conv_length"}) {
            const Line& l = *single[k];
            nargs(l, 1);
            const bool mean = std::string(k) == "mean_energy";
            const double v = to_bounded(l.tokens[1], source, l.number, k,
                                        mean ? -kMaxMagnitude : kMinFactor,
                                        mean ? kMaxMagnitude : kMaxFactor);
            if (mean) m.mean_energy_ = v;
            else if (std::string(k) == "conv_energy") m.conv_energy_ = v;
            else m.conv_length_ = v;
        }
    } else if (nnorm != 0) {
        throw std::invalid_argument(source +
                                    ": normalisation needs all of mean_energy, conv_energy and "
                                    "conv_length");
    }

    // Networks.
    const Line& lh = need("global_hidden_layers_short");
    nargs(lh, 1);
    const long nh = to_int(lh.tokens[1], source, lh.number, "global_hidden_layers_short");
    if (nh < 0) throw std::invalid_argument(where(source, lh.number) + "negative layer count");
    const Line& lnodes = need("global_nodes_short");
    const Line& lact = need("global_activation_short");
    std::vector<std::vector<int>> nodes(ne);
    std::vector<std::vector<Activation>> acts(ne);
    auto parse_nodes = [&](const Line& l, size_t first, long nhid) {
        if (l.tokens.size() - first != static_cast<size_t>(nhid))
            throw std::invalid_argument(where(source, l.number) + "expected " +
                                        std::to_string(nhid) + " node counts, got " +
                                        std::to_string(l.tokens.size() - first));
        std::vector<int> v;
        for (size_t t = first; t < l.tokens.size(); ++t) {
            const long n = to_int(l.tokens[t], source, l.number, "a node count");
            if (n < 1 || n > kMaxWeights)
                throw std::invalid_argument(where(source, l.number) + "node count " + l.tokens[t] +
                                            " must lie in [1, " + std::to_string(kMaxWeights) + "]");
            v.push_back(static_cast<int>(n));
        }
        return v;
    };
    auto parse_acts = [&](const Line& l, size_t first, long nhid) {
        if (l.tokens.size() - first != static_cast<size_t>(nhid + 1))
            throw std::invalid_argument(where(source, l.number) + "expected " +
                                        std::to_string(nhid + 1) + " activation letters, got " +
                                        std::to_string(l.tokens.size() - first));
        std::vector<Activation> v;
        for (size_t t = first; t < l.tokens.size(); ++t) {
            if (l.tokens[t].size() != 1)
                throw std::invalid_argument(where(source, l.number) +
                                            "unknown activation function '" + l.tokens[t] + "'");
            try {
                v.push_back(activation_from_letter(l.tokens[t][0]));
            } catch (const std::invalid_argument& err) {
                throw std::invalid_argument(where(source, l.number) + err.what());
            }
        }
        return v;
    };
    std::vector<long> nhid(ne, nh);
    for (const Line* l : el_layers) {
        nargs(*l, 2);
        nhid[elem_index(*l, l->tokens[1])] =
            to_int(l->tokens[2], source, l->number, "element_hidden_layers_short");
    }
    for (int e = 0; e < ne; ++e) {
        if (nhid[e] == nh) {
            nodes[e] = parse_nodes(lnodes, 1, nh);
            acts[e] = parse_acts(lact, 1, nh);
        }
    }
    for (const Line* l : el_nodes) {
        nargs(*l, 1);
        const int e = elem_index(*l, l->tokens[1]);
        nodes[e] = parse_nodes(*l, 2, nhid[e]);
    }
    for (const Line* l : el_act) {
        nargs(*l, 1);
        const int e = elem_index(*l, l->tokens[1]);
        acts[e] = parse_acts(*l, 2, nhid[e]);
    }
    for (int e = 0; e < ne; ++e)
        if (nodes[e].size() != static_cast<size_t>(nhid[e]) ||
            acts[e].size() != static_cast<size_t>(nhid[e] + 1))
            throw std::invalid_argument(source + ": element " + syms[e] +
                                        " has a hidden layer count without matching "
                                        "element_nodes_short/element_activation_short");

    std::vector<int> nodes_line(ne, lnodes.number);
    for (const Line* l : el_nodes) nodes_line[elem_index(*l, l->tokens[1])] = l->number;

    // Symmetry functions, sorted per element.
    std::vector<std::vector<SymmetryFunctionParams>> sfs(ne);
    for (const Line* l : sf_lines) {
        std::vector<std::string> toks(l->tokens.begin() + 1, l->tokens.end());
        SymmetryFunctionParams p = parse_symmetry_function(toks, syms, m.cutoff_type_,
                                                           m.cutoff_alpha_, source, l->number);
        sfs[p.ec].push_back(p);
    }
    m.el_.resize(ne);
    for (int e = 0; e < ne; ++e) {
        if (sfs[e].empty())
            throw std::invalid_argument(source + ": element " + syms[e] +
                                        " has no symmetry functions");
        std::stable_sort(sfs[e].begin(), sfs[e].end(), symmetry_function_less);
        ElementData& d = m.el_[e];
        d.symbol = syms[e];
        d.z = m.z_[e];
        d.descriptor = Descriptor(sfs[e], m.z_);
        m.cutoff_ = std::max(m.cutoff_, d.descriptor.cutoff());
        std::vector<int> layers{d.descriptor.size()};
        layers.insert(layers.end(), nodes[e].begin(), nodes[e].end());
        layers.push_back(1);
        int64_t nweights = 0;  // checked before the network allocates them
        for (size_t k = 1; k < layers.size(); ++k)
            nweights += (static_cast<int64_t>(layers[k - 1]) + 1) * layers[k];
        if (nweights > kMaxWeights)
            throw std::invalid_argument(
                where(source, nodes_line[e]) + "the network of element " + syms[e] + " would have " +
                std::to_string(nweights) + " weights and biases, more than the limit of " +
                std::to_string(kMaxWeights));
        d.network = AtomicNetwork(layers, acts[e], single.count("normalize_nodes") > 0);
        const size_t n = d.descriptor.size();
        d.gmin.assign(n, -std::numeric_limits<double>::infinity());
        d.gmax.assign(n, std::numeric_limits<double>::infinity());
        d.gmean.assign(n, 0.0);
        d.gsigma.assign(n, 1.0);
    }
    for (const Line* l : atom_energy_lines) {
        nargs(*l, 2);
        m.el_[elem_index(*l, l->tokens[1])].atom_energy = to_bounded(
            l->tokens[2], source, l->number, "atom_energy", -kMaxMagnitude, kMaxMagnitude);
    }

    // Scaling data: lines consumed in order, element by element.
    if (!scaling.empty()) {
        const std::string ssrc = source == "<text>" ? "scaling.data" : source + " (scaling.data)";
        std::vector<const Line*> data;
        const std::vector<Line> slines = split_lines(scaling);
        for (const Line& l : slines)
            if (!l.tokens.empty()) data.push_back(&l);
        size_t needed = 0;
        for (int e = 0; e < ne; ++e) needed += m.el_[e].descriptor.size();
        if (data.size() != needed)
            throw std::invalid_argument(ssrc + ": found " + std::to_string(data.size()) +
                                        " data lines, the potential needs " +
                                        std::to_string(needed) + " (one per symmetry function)");
        size_t k = 0;
        for (int e = 0; e < ne; ++e) {
            ElementData& d = m.el_[e];
            for (int s = 0; s < d.descriptor.size(); ++s, ++k) {
                const Line& l = *data[k];
                if (l.tokens.size() < 5)
                    throw std::invalid_argument(where(ssrc, l.number) +
                                                "expected 'element sf min max mean [sigma]'");
                const long ei = to_int(l.tokens[0], ssrc, l.number, "element index");
                const long si = to_int(l.tokens[1], ssrc, l.number, "function index");
                if (ei != e + 1 || si != s + 1)
                    throw std::invalid_argument(
                        where(ssrc, l.number) + "expected element " + std::to_string(e + 1) +
                        " function " + std::to_string(s + 1) + ", found " + l.tokens[0] + " " +
                        l.tokens[1]);
                static const char* const kCols[] = {"Gmin", "Gmax", "Gmean", "Gsigma"};
                double v[4] = {0.0, 0.0, 0.0, 0.0};
                bool absent = false;
                for (size_t c = 0; c < 4 && c + 2 < l.tokens.size(); ++c) {
                    v[c] = scaling_value(l.tokens[c + 2], ssrc, l.number, kCols[c]);
                    absent = absent || !(std::fabs(v[c]) < kAbsentMagnitude);
                }
                if (s == 0) d.scaling_absent = absent;
                if (absent != d.scaling_absent)
                    throw std::invalid_argument(
                        where(ssrc, l.number) + "element " + d.symbol +
                        (absent ? ": INF or +-1.8e308 here but not in the element's other rows"
                                : ": finite values here but INF or +-1.8e308 in the element's "
                                  "other rows (n2p2's mark of an element absent from the data)"));
                if (!absent)
                    for (size_t c = 0; c < 4; ++c)
                        if (!(std::fabs(v[c]) <= kMaxMagnitude))
                            throw std::invalid_argument(where(ssrc, l.number) + kCols[c] + " " +
                                                        l.tokens[c + 2] + " is out of range [" +
                                                        fmt(-kMaxMagnitude) + ", " +
                                                        fmt(kMaxMagnitude) + "]");
                d.gmin[s] = v[0];
                d.gmax[s] = v[1];
                d.gmean[s] = v[2];
                d.gsigma[s] = v[3];
            }
        }
        m.scaling_source_ = ssrc;
        m.has_scaling_data_ = true;
    }
    for (int e = 0; e < ne; ++e) {
        try {
            m.update_scaling(e);
        } catch (const std::invalid_argument& err) {
            throw std::invalid_argument(m.scaling_source_ + ": " + err.what());
        }
    }

    // Weights.
    if (!parameters.empty()) {
        if (parameters.size() != static_cast<size_t>(ne))
            throw std::invalid_argument(source + ": expected weights for " + std::to_string(ne) +
                                        " elements, got " + std::to_string(parameters.size()));
        for (int e = 0; e < ne; ++e) m.el_[e].network.set_parameters(parameters[e]);
    }
    return m;
    });
}

void Model::update_scaling(int e) {
    ElementData& d = el_[e];
    const size_t n = d.gmin.size();
    d.slope.assign(n, 1.0);
    d.shift.assign(n, 0.0);
    d.smin_eff = 0.0;
    if (scaling_ == ScalingType::NONE) return;
    // identity until statistics are set (for this element)
    if (!has_scaling_data_ || n == 0 || d.scaling_absent || !std::isfinite(d.gmin[0])) return;
    for (size_t s = 0; s < n; ++s) {
        const std::string who = "element " + d.symbol + " symmetry function " +
                                std::to_string(s + 1) + ": ";
        switch (scaling_) {
            case ScalingType::CENTER:
                d.shift[s] = d.gmean[s];
                break;
            case ScalingType::SCALE:
            case ScalingType::SCALECENTER:
                if (d.gmax[s] == d.gmin[s])
                    throw std::invalid_argument(
                        who + "Gmin == Gmax (" + fmt(d.gmin[s]) +
                        "): the function is constant over the training data and cannot be scaled");
                if (!(d.gmax[s] > d.gmin[s]))
                    throw std::invalid_argument(who + "Gmin " + fmt(d.gmin[s]) + " > Gmax " +
                                                fmt(d.gmax[s]) + ": not a valid scaling range");
                d.slope[s] = (smax_ - smin_) / (d.gmax[s] - d.gmin[s]);
                d.shift[s] = scaling_ == ScalingType::SCALE ? d.gmin[s] : d.gmean[s];
                d.smin_eff = smin_;
                break;
            case ScalingType::SIGMA:
                if (!(d.gsigma[s] > 0.0))
                    throw std::invalid_argument(
                        who + "Gsigma " + fmt(d.gsigma[s]) + " is not positive: the function is "
                              "constant over the training data "
                              "and cannot be scaled");
                d.slope[s] = (smax_ - smin_) / d.gsigma[s];
                d.shift[s] = d.gmean[s];
                d.smin_eff = smin_;
                break;
            default:
                break;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// File I/O

Model Model::read_n2p2(const std::string& input_nn, const std::string& scaling,
                       const std::string& weights_format) {
    return utf8_errors([&]() -> Model {
    const std::string settings = read_file(input_nn, "n2p2 settings file");
    // Elements are needed to find the weight files: parse once without weights.
    Model probe = from_text(settings, "", {}, input_nn);
    std::string scal;
    if (probe.scaling_ != ScalingType::NONE || !scaling.empty()) {
        std::ifstream f(scaling);
        if (f) scal = read_file(scaling, "scaling data file");
        else if (probe.scaling_ != ScalingType::NONE)
            throw std::runtime_error("cannot open scaling data file '" + scaling + "'");
        bool has_data = false;
        for (const Line& l : split_lines(scal)) has_data = has_data || !l.tokens.empty();
        if (!has_data && probe.scaling_ != ScalingType::NONE)
            throw std::invalid_argument(scaling + ": no data lines, but " + input_nn +
                                        " asks for symmetry-function scaling");
        if (!has_data) scal.clear();
    }
    std::vector<std::vector<double>> params;
    for (int e = 0; e < probe.n_elements(); ++e) {
        const std::string wp = weights_path(weights_format, probe.z_[e]);
        std::vector<double> w = parse_weights(read_file(wp, "weights file"), wp);
        const int need = probe.el_[e].network.n_parameters();
        if (static_cast<int>(w.size()) != need)
            throw std::invalid_argument(wp + ": found " + std::to_string(w.size()) +
                                        " weights, the network of " + probe.symbols_[e] +
                                        " needs " + std::to_string(need));
        params.push_back(std::move(w));
    }
    try {
        Model m = from_text(settings, scal, params, input_nn);
        if (m.has_scaling_data_) m.scaling_source_ = scaling;
        return m;
    } catch (const std::invalid_argument& err) {
        std::string msg = err.what();
        const std::string tag = input_nn + " (scaling.data)";
        if (msg.rfind(tag, 0) == 0) msg = scaling + msg.substr(tag.size());
        throw std::invalid_argument(msg);
    }
    });
}

Model Model::load(const std::string& path) {
    if (is_directory(path)) {
        std::string dir = path;
        if (dir.back() != '/') dir += '/';
        return read_n2p2(dir + "input.nn", dir + "scaling.data", dir + "weights.%03d.data");
    }
    std::ifstream f(path);
    if (!f) throw std::runtime_error("cannot open potential '" + path + "'");
    std::string first;
    std::getline(f, first);
    if (first.rfind("# pyfragnn potential", 0) == 0) return read_native(path);
    // An input.nn path: take scaling and weights from its directory.
    const size_t slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
    return read_n2p2(path, dir + "scaling.data", dir + "weights.%03d.data");
}

static const char* const kNativeHeader = "# pyfragnn potential";

Model Model::read_native(const std::string& path) {
    return utf8_errors([&]() -> Model {
    const std::string text = read_file(path, "potential");
    std::istringstream in(text);
    std::string raw;
    int n = 0;
    std::string section;
    std::string settings, scaling;
    std::map<std::string, std::string> weights;
    std::string wsym;
    int section_line = 0;
    bool ended = false;
    std::getline(in, raw);
    ++n;
    if (raw.rfind(kNativeHeader, 0) != 0)
        throw std::invalid_argument(path + " line 1: not a pyfragnn potential (expected '" +
                                    kNativeHeader + "')");
    std::map<std::string, int> settings_offset;
    while (std::getline(in, raw)) {
        ++n;
        if (!raw.empty() && raw.back() == '\r') raw.pop_back();
        if (raw.size() > 1 && raw.front() == '[' && raw.back() == ']') {
            const std::string name = raw.substr(1, raw.size() - 2);
            section_line = n;
            if (name == "input.nn" || name == "scaling.data") section = name;
            else if (name.rfind("weights ", 0) == 0) {
                section = "weights";
                wsym = name.substr(8);
                if (weights.count(wsym))
                    throw std::invalid_argument(path + " line " + std::to_string(n) +
                                                ": duplicate section [" + name + "]");
                weights[wsym] = "";
            } else if (name == "end") { ended = true; break; }
            else
                throw std::invalid_argument(path + " line " + std::to_string(n) +
                                            ": unknown section [" + name + "]");
            settings_offset[section == "weights" ? "weights " + wsym : section] = n;
            continue;
        }
        if (section == "input.nn") settings += raw + "\n";
        else if (section == "scaling.data") scaling += raw + "\n";
        else if (section == "weights") weights[wsym] += raw + "\n";
        else if (!raw.empty() && raw[0] != '#')
            throw std::invalid_argument(path + " line " + std::to_string(n) +
                                        ": text outside a section");
    }
    (void)section_line;
    if (!ended)
        throw std::invalid_argument(path + ": truncated file (no [end] line)");
    if (settings.empty()) throw std::invalid_argument(path + ": missing [input.nn] section");
    const int off = settings_offset["input.nn"];
    // Parse settings with line numbers relative to the file.
    std::string padded(static_cast<size_t>(off), '\n');
    Model probe = from_text(padded + settings, "", {}, path);
    std::vector<std::vector<double>> params;
    for (int e = 0; e < probe.n_elements(); ++e) {
        const std::string& s = probe.symbols_[e];
        auto it = weights.find(s);
        if (it == weights.end())
            throw std::invalid_argument(path + ": missing section [weights " + s + "]");
        const int woff = settings_offset["weights " + s];
        std::vector<double> w =
            parse_weights(std::string(static_cast<size_t>(woff), '\n') + it->second, path);
        const int need = probe.el_[e].network.n_parameters();
        if (static_cast<int>(w.size()) != need)
            throw std::invalid_argument(path + " [weights " + s + "]: found " +
                                        std::to_string(w.size()) + " weights, the network needs " +
                                        std::to_string(need));
        params.push_back(std::move(w));
    }
    if (weights.size() != params.size())
        throw std::invalid_argument(path + ": weights for an element not in the potential");
    const int soff = settings_offset.count("scaling.data") ? settings_offset["scaling.data"] : 0;
    if (scaling.empty() && probe.scaling_ != ScalingType::NONE)
        throw std::invalid_argument(path + ": symmetry-function scaling is on but there is no "
                                           "[scaling.data] section");
    std::string scal = scaling.empty() ? "" : std::string(static_cast<size_t>(soff), '\n') + scaling;
    return from_text(padded + settings, scal, params, path);
    });
}

std::string Model::input_nn_text() const {
    std::ostringstream o;
    o << "# n2p2 settings written by pyfragnn\n";
    o << "# pyfragnn units length_unit " << fmt(length_unit_) << " energy_unit "
      << fmt(energy_unit_) << "\n";
    o << "number_of_elements " << symbols_.size() << "\n";
    o << "elements";
    for (const std::string& s : symbols_) o << " " << s;
    o << "\n";
    for (const ElementData& d : el_)
        if (d.atom_energy != 0.0) o << "atom_energy " << d.symbol << " " << fmt(d.atom_energy) << "\n";
    if (normalised_) {
        o << "mean_energy " << fmt(mean_energy_) << "\n";
        o << "conv_energy " << fmt(conv_energy_) << "\n";
        o << "conv_length " << fmt(conv_length_) << "\n";
    }
    o << "cutoff_type " << cutoff_type_ << " " << fmt(cutoff_alpha_) << "\n";
    switch (scaling_) {
        case ScalingType::SCALE: o << "scale_symmetry_functions\n"; break;
        case ScalingType::CENTER: o << "center_symmetry_functions\n"; break;
        case ScalingType::SCALECENTER:
            o << "scale_symmetry_functions\ncenter_symmetry_functions\n"; break;
        case ScalingType::SIGMA: o << "scale_symmetry_functions_sigma\n"; break;
        default: break;
    }
    o << "scale_min_short " << fmt(smin_) << "\n";
    o << "scale_max_short " << fmt(smax_) << "\n";
    const AtomicNetwork& n0 = el_[0].network;
    auto layer_line = [&](const AtomicNetwork& n, const std::string& prefix) {
        const std::vector<int>& L = n.layers();
        o << prefix << "hidden_layers_short " << (L.size() >= 2 ? L.size() - 2 : 0) << "\n";
        o << prefix << "nodes_short";
        for (size_t l = 1; l + 1 < L.size(); ++l) o << " " << L[l];
        o << "\n" << prefix << "activation_short";
        for (Activation a : n.activations()) o << " " << static_cast<char>(a);
        o << "\n";
    };
    layer_line(n0, "global_");
    for (const ElementData& d : el_) {
        const AtomicNetwork& n = d.network;
        std::vector<int> a(n.layers().begin() + 1, n.layers().end());
        std::vector<int> b(n0.layers().begin() + 1, n0.layers().end());
        if (a != b || n.activations() != n0.activations()) {
            std::ostringstream save;
            const std::vector<int>& L = n.layers();
            o << "element_hidden_layers_short " << d.symbol << " " << L.size() - 2 << "\n";
            o << "element_nodes_short " << d.symbol;
            for (size_t l = 1; l + 1 < L.size(); ++l) o << " " << L[l];
            o << "\nelement_activation_short " << d.symbol;
            for (Activation ac : n.activations()) o << " " << static_cast<char>(ac);
            o << "\n";
        }
    }
    if (n0.normalize_nodes()) o << "normalize_nodes\n";
    for (const ElementData& d : el_)
        for (const SymmetryFunctionParams& p : d.descriptor.params())
            o << "symfunction_short " << format_symmetry_function(p, symbols_) << "\n";
    if (!extra_lines_.empty()) {
        o << "# settings not used for prediction, kept from the original file\n";
        for (const std::string& l : extra_lines_) o << l << "\n";
    }
    return o.str();
}

std::string Model::scaling_text() const {
    for (const ElementData& d : el_)
        if (!d.gmin.empty() && !d.scaling_absent && !std::isfinite(d.gmin[0]))
            throw std::runtime_error("scaling statistics of element " + d.symbol +
                                     " have not been set");
    std::ostringstream o;
    o << "# element sf Gmin Gmax Gmean Gsigma (written by pyfragnn)\n";
    for (size_t e = 0; e < el_.size(); ++e) {
        const ElementData& d = el_[e];
        for (size_t s = 0; s < d.gmin.size(); ++s)
            o << e + 1 << " " << s + 1 << " " << fmt(d.gmin[s]) << " " << fmt(d.gmax[s]) << " "
              << fmt(d.gmean[s]) << " " << fmt(d.gsigma[s]) << "\n";
    }
    return o.str();
}

namespace {
std::string weights_text(const AtomicNetwork& n) {
    std::ostringstream o;
    o << "# weights and biases in n2p2 order (written by pyfragnn)\n";
    for (double w : n.parameters()) o << fmt(w) << "\n";
    return o.str();
}
}  // namespace

void Model::write_n2p2(const std::string& directory) const {
    std::string dir = directory;
    if (!dir.empty() && dir.back() != '/') dir += '/';
    if (!is_directory(directory)) throw std::runtime_error("'" + directory + "' is not a directory");
    write_file_atomic(dir + "input.nn", input_nn_text());
    if (has_scaling_data_) write_file_atomic(dir + "scaling.data", scaling_text());
    for (const ElementData& d : el_)
        write_file_atomic(weights_path(dir + "weights.%03d.data", d.z), weights_text(d.network));
}

void Model::write_native(const std::string& path) const {
    std::ostringstream o;
    o << kNativeHeader << " (format 1; sections hold n2p2 input.nn, scaling.data and weights)\n";
    o << "[input.nn]\n" << input_nn_text();
    if (has_scaling_data_) o << "[scaling.data]\n" << scaling_text();
    for (const ElementData& d : el_) o << "[weights " << d.symbol << "]\n" << weights_text(d.network);
    o << "[end]\n";
    write_file_atomic(path, o.str());
}

// ---------------------------------------------------------------------------------------------
// Accessors

int Model::n_elements() const { return static_cast<int>(el_.size()); }
const std::vector<std::string>& Model::elements() const { return symbols_; }
const std::vector<int>& Model::atomic_numbers() const { return z_; }
int Model::element_index(const std::string& symbol) const {
    for (size_t e = 0; e < symbols_.size(); ++e)
        if (symbols_[e] == symbol) return static_cast<int>(e);
    return -1;
}
double Model::cutoff() const { return cutoff_; }
double Model::length_unit() const { return length_unit_; }
double Model::energy_unit() const { return energy_unit_; }
void Model::set_units(double length_unit, double energy_unit) {
    for (const auto& [key, v] : {std::pair{"length_unit", length_unit},
                                 std::pair{"energy_unit", energy_unit}})
        if (!(v >= kMinFactor && v <= kMaxFactor))
            throw std::invalid_argument(std::string(key) + " " + fmt(v) + " is out of range [" +
                                        fmt(kMinFactor) + ", " + fmt(kMaxFactor) +
                                        "] (Å or eV per potential unit)");
    length_unit_ = length_unit;
    energy_unit_ = energy_unit;
}
void Model::check_element(int e) const {
    if (e < 0 || e >= n_elements())
        throw std::invalid_argument("element index " + std::to_string(e) + " out of range");
}
const Descriptor& Model::descriptor(int e) const { check_element(e); return el_[e].descriptor; }
AtomicNetwork& Model::network(int e) { check_element(e); return el_[e].network; }
const AtomicNetwork& Model::network(int e) const { check_element(e); return el_[e].network; }
ScalingType Model::scaling_type() const { return scaling_; }
PYFRAGNN_HOT
int64_t count_outside(int n, const double* G, const double* lo, const double* hi, double eps) {
    int64_t out = 0;  // 64-bit counts: the lanes of the double comparisons
    for (int s = 0; s < n; ++s) out += outside(G[s], lo[s], hi[s], eps);
    return out;
}

PYFRAGNN_HOT
void Model::scale(int e, const double* G, double* x) const {
    const ElementData& d = el_[e];
    const size_t n = d.slope.size();
    if (scaling_ == ScalingType::CENTER || scaling_ == ScalingType::NONE || !has_scaling_data_)
        for (size_t s = 0; s < n; ++s) x[s] = G[s] - d.shift[s];
    else
        for (size_t s = 0; s < n; ++s) x[s] = d.smin_eff + d.slope[s] * (G[s] - d.shift[s]);
}
const std::vector<double>& Model::scaling_slope(int e) const { check_element(e); return el_[e].slope; }
void Model::set_scaling(int e, const std::vector<double>& gmin, const std::vector<double>& gmax,
                        const std::vector<double>& gmean, const std::vector<double>& gsigma) {
    check_element(e);
    ElementData& d = el_[e];
    const size_t n = d.gmin.size();
    if (gmin.size() != n || gmax.size() != n || gmean.size() != n || gsigma.size() != n)
        throw std::invalid_argument("scaling data for element " + d.symbol + " needs " +
                                    std::to_string(n) + " values per statistic");
    ElementData old = d;
    const bool had = has_scaling_data_;
    d.gmin = gmin; d.gmax = gmax; d.gmean = gmean; d.gsigma = gsigma;
    d.scaling_absent = false;
    has_scaling_data_ = true;
    try {
        for (int k = 0; k < n_elements(); ++k) update_scaling(k);
    } catch (...) {
        d = old;
        has_scaling_data_ = had;
        throw;
    }
}
const std::vector<double>& Model::gmin(int e) const { check_element(e); return el_[e].gmin; }
const std::vector<double>& Model::gmax(int e) const { check_element(e); return el_[e].gmax; }
const std::vector<double>& Model::gmean(int e) const { check_element(e); return el_[e].gmean; }
const std::vector<double>& Model::gsigma(int e) const { check_element(e); return el_[e].gsigma; }
bool Model::normalised() const { return normalised_; }
double Model::mean_energy() const { return mean_energy_; }
double Model::conv_energy() const { return conv_energy_; }
double Model::conv_length() const { return conv_length_; }
void Model::set_normalisation(bool on, double mean_energy, double conv_energy, double conv_length) {
    if (on && (!(conv_energy > 0.0) || !(conv_length > 0.0)))
        throw std::invalid_argument("conv_energy and conv_length must be positive");
    normalised_ = on;
    mean_energy_ = on ? mean_energy : 0.0;
    conv_energy_ = on ? conv_energy : 1.0;
    conv_length_ = on ? conv_length : 1.0;
}
double Model::atom_energy(int e) const { check_element(e); return el_[e].atom_energy; }
void Model::set_atom_energy(int e, double value) { check_element(e); el_[e].atom_energy = value; }

// ---------------------------------------------------------------------------------------------
// Energies and forces

// ---------------------------------------------------------------------------------------------
// Evaluation. One per-centre pass (centre_pass) serves the serial and the threaded loop of
// drive(); the threaded one evaluates the centres of a chunk in parallel, keeps each centre's
// results apart and adds them to the outputs in centre order, exactly as the serial loop does,
// so that the results do not depend on the number of threads (bit for bit).

}  // namespace pyfragnn

#include <exception>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace pyfragnn {

/// A centre's neighbour row when it is searched where it is evaluated (SearchedRows).
struct NeighborRowScratch {
    std::vector<int32_t> index;
    std::vector<double> d;
    int64_t offsets[2] = {0, 0};
};

struct Model::CentreScratch {
    DescriptorWorkspace dws;
    NetworkWorkspace nws;
    std::vector<double> d, r, G, x, dEdx, dEdd;
    std::vector<int> ej, tj;
    int n = 0;  // neighbours kept by gather_neighbours (d, r, ej, tj, dEdd hold n of them)
    NeighborRowScratch row;
    // threaded driver: kept targets, vectors and dE/dd of this thread's centres of a chunk
    // (two sets: chunk parity)
    std::vector<int> out_t[2];
    std::vector<double> out_d[2], out_g[2];
};

namespace {

/// Adds one centre's dE/dd_j (g[3j..]) of its neighbours j < n (vectors d, force targets t)
/// to forces and virials (see ComputeOutput). The centre's own force and the virial are summed
/// in locals and added once: through the output pointers, which may alias each other, every
/// neighbour's update was a load and a store of each.
inline void scatter_centre(int64_t i, int n, const double* d, const int* t, const double* g,
                           ComputeOutput& out) {
    if (out.forces) {
        double* f = out.forces;
        double s0 = 0.0, s1 = 0.0, s2 = 0.0;
        for (int j = 0; j < n; ++j) {
            const double* gj = g + 3 * j;
            double* ft = f + 3 * static_cast<int64_t>(t[j]);
            ft[0] -= gj[0];
            ft[1] -= gj[1];
            ft[2] -= gj[2];
            s0 += gj[0];
            s1 += gj[1];
            s2 += gj[2];
        }
        f[3 * i] += s0;
        f[3 * i + 1] += s1;
        f[3 * i + 2] += s2;
    }
    if (!out.virial && !out.atom_virial) return;
    double v[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    for (int j = 0; j < n; ++j) {
        const double* gj = g + 3 * j;
        const double* dj = d + 3 * j;
        const double w[6] = {-dj[0] * gj[0], -dj[1] * gj[1], -dj[2] * gj[2],
                             -dj[0] * gj[1], -dj[0] * gj[2], -dj[1] * gj[2]};
        for (int a = 0; a < 6; ++a) v[a] += w[a];
        if (out.atom_virial)
            for (int a = 0; a < 6; ++a) out.atom_virial[6 * static_cast<int64_t>(t[j]) + a] += w[a];
    }
    if (out.virial)
        for (int a = 0; a < 6; ++a) out.virial[a] += v[a];
}

}  // namespace

void Model::check_centres(const NeighborListView& nl, const int* element, int64_t n_total) const {
    const int ne = n_elements();
    for (int64_t c = 0; c < nl.n_centres; ++c) {
        const int64_t i = nl.centre ? nl.centre[c] : nl.first + c;
        if (i < 0 || i >= n_total)
            throw std::invalid_argument("centre " + std::to_string(c) + " is atom " +
                                        std::to_string(i) + ", outside the " +
                                        std::to_string(n_total) + " atoms");
        if (element[i] < -1 || element[i] >= ne)
            throw std::invalid_argument("atom " + std::to_string(i) + " has element index " +
                                        std::to_string(element[i]) + ", the potential has " +
                                        std::to_string(ne) + " elements");
        if (element[i] >= 0 && el_[element[i]].scaling_absent && scaling_ != ScalingType::NONE)
            throw std::invalid_argument(
                "atom " + std::to_string(i) + " is " + el_[element[i]].symbol + ", but " +
                scaling_source_ + " has no scaling data for " + el_[element[i]].symbol +
                " (INF rows: the element was absent from the data the scaling was computed on)");
    }
}

double Model::atomic_energy(int e, const double* x, double* dEdG, NetworkWorkspace& ws) const {
    const ElementData& ed = el_[e];
    const double inv_ce = 1.0 / conv_energy_;
    const double nn = ed.network.evaluate(x, dEdG, ws);
    if (dEdG)
        for (int sf = 0; sf < ed.descriptor.size(); ++sf) dEdG[sf] *= ed.slope[sf] * inv_ce;
    return nn * inv_ce + mean_energy_ + ed.atom_energy;
}

int gather_neighbours(const NeighborListView& nl, int64_t c, int64_t i, const int* element,
                      int64_t n_total, int ne, double rc2, std::vector<double>& d,
                      std::vector<double>& r, std::vector<int>& ej, std::vector<int>& tj) {
    // Room for the whole row, written through pointers (the push_backs' size updates and
    // capacity tests were a third of this pass); the kept count is returned.
    const size_t row = static_cast<size_t>(nl.offsets[c + 1] - nl.offsets[c]);
    double* dk = room(d, 3 * row);
    double* rk = room(r, row);
    int* ek = room(ej, row);
    int* tk = room(tj, row);
    size_t kept = 0;
    for (int64_t k = nl.offsets[c]; k < nl.offsets[c + 1]; ++k) {
        const int32_t t = nl.index[k];
        if (t < 0 || t >= n_total)
            throw std::invalid_argument("neighbour index " + std::to_string(t) +
                                        " of atom " + std::to_string(i) + " out of range");
        const int en = element[t];
        if (en < 0) continue;
        if (en >= ne)
            throw std::invalid_argument("atom " + std::to_string(t) + " has element index " +
                                        std::to_string(en) + ", the potential has " +
                                        std::to_string(ne) + " elements");
        const double* v = nl.d + 3 * k;
        const double r2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
        if (!(r2 < rc2)) {
            if (!std::isfinite(r2))
                throw std::invalid_argument("non-finite position for atom " +
                                            std::to_string(i) + " or " + std::to_string(t));
            continue;
        }
        if (r2 == 0.0)
            throw std::invalid_argument("atoms " + std::to_string(i) + " and " +
                                        std::to_string(t) + " are at the same position");
        dk[3 * kept] = v[0];
        dk[3 * kept + 1] = v[1];
        dk[3 * kept + 2] = v[2];
        rk[kept] = std::sqrt(r2);
        ek[kept] = en;
        tk[kept] = t;
        ++kept;
    }
    return static_cast<int>(kept);
}

bool Model::centre_pass(const NeighborListView& nl, int64_t c, const int* element,
                        int64_t n_total, bool need_grad, CentreScratch& s, double& ei,
                        int64_t& n_warnings, std::vector<ExtrapolationWarning>* warnings,
                        int64_t max_warnings) const {
    const int ne = n_elements();
    const int64_t i = nl.centre ? nl.centre[c] : nl.first + c;
    const int e = element[i];
    if (e < 0) return false;
    const ElementData& ed = el_[e];
    const double rc = ed.descriptor.cutoff();
    const double rc2 = rc * rc;
    s.n = gather_neighbours(nl, c, i, element, n_total, ne, rc2, s.d, s.r, s.ej, s.tj);
    AtomEnvironment env;
    env.n = s.n;
    env.d = s.d.data();
    env.r = s.r.data();
    env.element = s.ej.data();
    const int nsf = ed.descriptor.size();
    room(s.G, nsf); room(s.x, nsf); room(s.dEdx, nsf);
    ed.descriptor.compute(env, s.G.data(), s.dws);
    n_warnings += for_each_extrapolation(e, s.G.data(), [&](int sf) {
        if (warnings && (max_warnings < 0 ||
                         static_cast<int64_t>(warnings->size()) < max_warnings))
            warnings->push_back({i, e, sf, s.G[sf], ed.gmin[sf], ed.gmax[sf]});
    });
    scale(e, s.G.data(), s.x.data());
    ei = atomic_energy(e, s.x.data(), need_grad ? s.dEdx.data() : nullptr, s.nws);  // dEdx: dE/dG
    if (!std::isfinite(ei))
        throw std::runtime_error("non-finite energy for atom " + std::to_string(i) +
                                 " (element " + ed.symbol + ")");
    room(s.dEdd, 3 * static_cast<size_t>(env.n));
    if (!need_grad || env.n == 0) return true;
    ed.descriptor.contract(env, s.dEdx.data(), s.dEdd.data(), s.dws);
    return true;
}

namespace {

/// Rows of a stored neighbour list: centre c's row is a view of the list itself.
struct StoredRows {
    const NeighborListView& nl;
    const NeighborListView& operator()(int64_t c, NeighborListView& row,
                                       NeighborRowScratch&) const {
        row.n_centres = 1;
        row.centre = nullptr;
        row.first = nl.centre ? nl.centre[c] : nl.first + c;
        row.offsets = nl.offsets + c;  // offsets are absolute: the row reads its own entries
        row.index = nl.index;
        row.d = nl.d;
        return row;
    }
};

/// Rows searched in cells where the centre is evaluated (the row build_neighbor_list would
/// store, entry for entry).
struct SearchedRows {
    const CellList& cells;
    const NeighborListView& operator()(int64_t c, NeighborListView& row,
                                       NeighborRowScratch& s) const {
        s.offsets[0] = 0;
        s.offsets[1] = static_cast<int64_t>(cells.search_into(c, s.index, s.d, 0));
        row.n_centres = 1;
        row.centre = nullptr;
        row.first = c;
        row.offsets = s.offsets;
        row.index = s.index.data();
        row.d = s.d.data();
        return row;
    }
};

}  // namespace

double Model::compute(const NeighborListView& nl, const int* element, int64_t n_total,
                      ComputeOutput& out) const {
    return drive(nl, StoredRows{nl}, element, n_total, out, 1);
}

double Model::compute(const NeighborListView& nl, const int* element, int64_t n_total,
                      ComputeOutput& out, int threads) const {
    return drive(nl, StoredRows{nl}, element, n_total, out, threads);
}

double Model::compute(const CellList& cells, const int* element, ComputeOutput& out,
                      int threads) const {
    NeighborListView all;  // the centres: every atom, in order
    all.n_centres = cells.size();
    return drive(all, SearchedRows{cells}, element, cells.size(), out, threads);
}

template <class Rows>
double Model::drive(const NeighborListView& centres, const Rows& rows, const int* element,
                    int64_t n_total, ComputeOutput& out, int threads) const {
#ifdef _OPENMP
    if (threads <= 0) threads = omp_get_max_threads();
#else
    threads = 1;
#endif
    check_centres(centres, element, n_total);
    const bool need_grad = out.forces || out.virial || out.atom_virial;
    const int64_t n_centres = centres.n_centres;
    NeighborListView row;
    double etot = 0.0;
    if (threads <= 1 || n_centres < 2) {
        CentreScratch s;
        for (int64_t c = 0; c < n_centres; ++c) {
            const NeighborListView& r = rows(c, row, s.row);
            const int64_t i = r.first;
            double ei = 0.0;
            if (!centre_pass(r, 0, element, n_total, need_grad, s, ei, out.n_warnings,
                             out.warnings, out.max_warnings)) {
                if (out.energies) out.energies[i] = 0.0;
                continue;
            }
            if (out.energies) out.energies[i] = ei;
            etot += ei;
            if (need_grad)
                scatter_centre(i, s.n, s.d.data(), s.tj.data(),
                               s.dEdd.data(), out);
        }
        return etot;
    }
    // Threaded: per chunk of centres, each thread appends the kept neighbours' targets, vectors
    // and dE/dd of the centres it evaluates to its own buffers (reused from chunk to chunk);
    // one thread then adds the chunk's contributions in centre order, as the serial loop does,
    // while the others go on with the next chunk (state and buffers alternate between two
    // sets by chunk parity), so that the additions are not a serial step of their own.
    std::vector<CentreScratch> scratch(static_cast<size_t>(threads));
    // Chunks of a quarter of the centres (64..2048): the last chunk's additions are the only
    // ones nobody overlaps, and each chunk ends in a barrier, where on a shared machine a
    // thread waits for a preempted one (IRMOF-1 2862 atoms, 2 threads on two busy cores:
    // 12.2-12.5 µs/atom with 8 chunks, 8.0-8.3 with 4, 7.6-8.1 with 1).
    const int64_t chunk = std::max<int64_t>(64, std::min<int64_t>(2048, (n_centres + 3) / 4));
    const int64_t nchunks = (n_centres + chunk - 1) / chunk;
    std::vector<double> ce(2 * chunk);
    std::vector<int> kept(2 * chunk), owner(2 * chunk);
    std::vector<int64_t> at(2 * chunk), nwarn(2 * chunk), atom(2 * chunk);
    std::vector<char> has(2 * chunk), failed(nchunks, 0);
    std::vector<std::vector<ExtrapolationWarning>> cwarn(2 * chunk);
    std::exception_ptr error;
    int64_t error_centre = n_centres;
    auto add_chunk = [&](int64_t q) {
        const int p = static_cast<int>(q & 1);
        const int64_t nc = std::min(chunk, n_centres - q * chunk);
        for (int64_t k = p * chunk; k < p * chunk + nc; ++k) {
            const int64_t i = atom[k];
            out.n_warnings += nwarn[k];
            if (out.warnings)
                for (const ExtrapolationWarning& w : cwarn[k])
                    if (out.max_warnings < 0 ||
                        static_cast<int64_t>(out.warnings->size()) < out.max_warnings)
                        out.warnings->push_back(w);
            if (!has[k]) {
                if (out.energies) out.energies[i] = 0.0;
                continue;
            }
            if (out.energies) out.energies[i] = ce[k];
            etot += ce[k];
            if (need_grad) {
                const CentreScratch& s = scratch[owner[k]];
                scatter_centre(i, kept[k], s.out_d[p].data() + 3 * at[k],
                               s.out_t[p].data() + at[k], s.out_g[p].data() + 3 * at[k], out);
            }
        }
    };
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        const int t = omp_get_thread_num();
#else
        const int t = 0;
#endif
        CentreScratch& s = scratch[t];
        for (int64_t q = 0; q < nchunks; ++q) {
            // The additions of chunk q - 2 (same parity) ended before the barrier of q - 1.
            const int p = static_cast<int>(q & 1);
            const int64_t c0 = q * chunk, nc = std::min(chunk, n_centres - c0);
            s.out_t[p].clear(); s.out_d[p].clear(); s.out_g[p].clear();
#pragma omp for schedule(dynamic, 4)
            for (int64_t kc = 0; kc < nc; ++kc) {
                const int64_t c = c0 + kc, k = p * chunk + kc;
                try {
                    NeighborListView one;
                    const NeighborListView& r = rows(c, one, s.row);
                    atom[k] = r.first;
                    cwarn[k].clear();
                    nwarn[k] = 0;
                    has[k] = centre_pass(r, 0, element, n_total, need_grad, s, ce[k], nwarn[k],
                                         out.warnings ? &cwarn[k] : nullptr, out.max_warnings);
                    kept[k] = 0;
                    if (has[k] && need_grad) {
                        owner[k] = t;
                        at[k] = static_cast<int64_t>(s.out_t[p].size());
                        kept[k] = s.n;
                        s.out_t[p].insert(s.out_t[p].end(), s.tj.begin(), s.tj.begin() + s.n);
                        s.out_d[p].insert(s.out_d[p].end(), s.d.begin(), s.d.begin() + 3 * s.n);
                        s.out_g[p].insert(s.out_g[p].end(), s.dEdd.begin(),
                                          s.dEdd.begin() + 3 * s.n);
                    }
                } catch (...) {
#pragma omp critical(pyfragnn_compute_error)
                    {
                        failed[q] = 1;
                        if (c < error_centre) { error_centre = c; error = std::current_exception(); }
                    }
                }
            }
            // Barrier: chunk q is evaluated. failed[q] is only written before it, so every
            // thread takes the same branch here.
            if (failed[q]) break;
#pragma omp single nowait
            add_chunk(q);
        }
    }
    if (error) std::rethrow_exception(error);  // the first failing centre's exception
    return etot;
}

NeighborListView NeighborList::view() const {
    NeighborListView v;
    v.n_centres = static_cast<int64_t>(offsets.size()) - 1;
    v.offsets = offsets.data();
    v.index = index.data();
    v.d = d.data();
    return v;
}

}  // namespace pyfragnn
