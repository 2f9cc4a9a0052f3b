// Feed-forward atomic neural network of a 2G HDNNP (one per element).
//
// Layer l = 1..L: a_l = (W_l y_{l-1} + b_l) / c_l, y_l = f_l(a_l); y_0 = scaled symmetry
// functions, E = y_L[0]. c_l = n_{l-1} with normalize_nodes, else 1 (n2p2 NeuralNetwork.cpp).
// Parameter layout is n2p2's weights.NNN.data order: for each layer, W_l^T row-major
// (index i*n_l + j holds w_l[j][i], i over inputs) followed by the n_l biases.
#pragma once

#include <string>
#include <vector>

namespace pyfragnn {

/// n2p2 activation letters: l identity, t tanh, s logistic, p softplus, r ReLU, g gaussian,
/// c cos, S 1-logistic, e exp(-x), h x^2.
enum class Activation : char {
    IDENTITY = 'l', TANH = 't', LOGISTIC = 's', SOFTPLUS = 'p', RELU = 'r',
    GAUSSIAN = 'g', COS = 'c', REVLOGISTIC = 'S', EXP = 'e', HARMONIC = 'h'
};

/// Throws std::invalid_argument naming the letter if unknown.
Activation activation_from_letter(char letter);

/// f(x), f'(x), f''(x) of an activation.
void activate(Activation a, double x, double& f, double& df, double& d2f);

/// Scratch memory for one thread.
struct NetworkWorkspace {
    std::vector<double> a, y, dy, d2y, g, ra, ry, rg;
};

class AtomicNetwork {
public:
    AtomicNetwork() = default;
    /// layers = {n_0 (inputs), n_1, ..., n_L (=1)}; activations has L entries.
    AtomicNetwork(std::vector<int> layers, std::vector<Activation> activations,
                  bool normalize_nodes);

    int n_inputs() const { return layers_.front(); }
    int n_parameters() const { return static_cast<int>(w_.size()); }
    const std::vector<int>& layers() const { return layers_; }
    const std::vector<Activation>& activations() const { return act_; }
    bool normalize_nodes() const { return normalize_; }
    const std::vector<double>& parameters() const { return w_; }
    /// Throws std::invalid_argument if the count differs from n_parameters().
    void set_parameters(const std::vector<double>& w);
    /// The same from n_parameters() values at w.
    void set_parameters(const double* w);

    /// E(x); if dEdx != nullptr also dE/dx [n_inputs].
    double evaluate(const double* x, double* dEdx, NetworkWorkspace& ws) const;

    /// E(x) and dE/dw accumulated into dEdw [n_parameters] (+= scale * dE/dw).
    double gradient(const double* x, double scale, double* dEdw, NetworkWorkspace& ws) const;

    /// For s = sum_k dE/dx_k v_k (the directional input derivative), accumulate
    /// ds/dw into dsdw [n_parameters] (+= scale * ds/dw) and return s. (Pearlmutter R-operator
    /// with R{x} = v; used for force derivatives with respect to the weights.)
    double input_directional_gradient(const double* x, const double* v, double scale,
                                      double* dsdw, NetworkWorkspace& ws) const;

private:
    void forward(const double* x, NetworkWorkspace& ws, bool second) const;

    std::vector<int> layers_;
    std::vector<Activation> act_;
    bool normalize_ = false;
    void update_transposed();

    std::vector<int> offset_;   // start of layer l's block in w_ (index l-1)
    std::vector<double> w_;
    // W_l by output row, [n_l][n_{l-1} rounded up to 4] (zero padded), for evaluate()'s
    // backward pass: dE/dy_{l-1} four inputs at a time in the lanes of a vector (each lane
    // summing over the outputs in order, as a scalar loop over W_l^T's row would).
    std::vector<int> offset_t_;
    std::vector<double> wt_;
};

}  // namespace pyfragnn
