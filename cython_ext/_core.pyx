# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
# distutils: language = c++
"""Bindings to the pyfragnn C++ kernel (symmetry functions, atomic networks, forces).

Everything here works in the potential's own units; :mod:`pyfragnn.potential` converts
to Å and eV.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcpy
from libcpp cimport bool as cbool
from libcpp.string cimport string
from libcpp.vector cimport vector

cnp.import_array()

cdef extern from "symmetry_function.h" namespace "pyfragnn":
    cdef cppclass AtomEnvironment:
        int n
        const double* d
        const double* r
        const int* element
    cdef cppclass SymmetryFunctionParams:
        int type, ec, e1, e2, cutoff_type, line
        double eta, rs, rc, cutoff_alpha
    cdef cppclass DescriptorWorkspace:
        pass
    cdef cppclass Descriptor:
        int size()
        double cutoff()
        const vector[SymmetryFunctionParams]& params()
        void compute(const AtomEnvironment& env, double* G, DescriptorWorkspace& ws) except +
        void contract(const AtomEnvironment& env, const double* dEdG, double* dEdd,
                      DescriptorWorkspace& ws) except +
        void jacobian(const AtomEnvironment& env, double* G, double* dGdd,
                      DescriptorWorkspace& ws) except +
    string format_symmetry_function(const SymmetryFunctionParams& p,
                                    const vector[string]& elements) except +

cdef extern from "atomic_network.h" namespace "pyfragnn":
    cdef cppclass NetworkWorkspace:
        pass
    cdef cppclass AtomicNetwork:
        int n_inputs()
        int n_parameters()
        const vector[int]& layers()
        const vector[double]& parameters()
        void set_parameters(const vector[double]& w) except +
        double evaluate(const double* x, double* dEdx, NetworkWorkspace& ws) except +

cdef extern from "model.h" namespace "pyfragnn":
    cdef enum class ScalingType(int):
        NONE
    cdef cppclass ExtrapolationWarning:
        int64_t atom
        int element
        int sf
        double value, gmin, gmax
    cdef cppclass NeighborListView:
        int64_t n_centres
        const int64_t* offsets
        const int32_t* index
        const double* d
    cdef cppclass ComputeOutput:
        double* energies
        double* forces
        double* virial
        double* atom_virial
        vector[ExtrapolationWarning]* warnings
        int64_t max_warnings
        int64_t n_warnings
    cdef cppclass NeighborList:
        vector[int64_t] offsets
        vector[int32_t] index
        vector[double] d
        NeighborListView view()
    NeighborList build_neighbor_list(const double* positions, int64_t n, const double* cell,
                                     const cbool* pbc, double rc, double min_distance,
                                     int threads) except + nogil
    cdef cppclass CellList:
        CellList(const double* positions, int64_t n, const double* cell, const cbool* pbc,
                 double rc, double min_distance) except + nogil
        int64_t size()
    cdef cppclass Model:
        Model()
        Model(const Model&)
        @staticmethod
        Model load(const string& path) except +
        @staticmethod
        Model read_n2p2(const string& input_nn, const string& scaling,
                        const string& weights_format) except +
        @staticmethod
        Model read_native(const string& path) except +
        @staticmethod
        Model from_text(const string& input_nn, const string& scaling,
                        const vector[vector[double]]& parameters, const string& source) except +
        void write_n2p2(const string& directory) except +
        void write_native(const string& path) except +
        string input_nn_text() except +
        string scaling_text() except +
        int n_elements()
        const vector[string]& elements()
        const vector[int]& atomic_numbers()
        int element_index(const string& symbol)
        double cutoff()
        double length_unit()
        double energy_unit()
        void set_units(double length_unit, double energy_unit) except +
        double compute(const NeighborListView& nl, const int* element, int64_t n_total,
                       ComputeOutput& out) except + nogil
        double compute(const NeighborListView& nl, const int* element, int64_t n_total,
                       ComputeOutput& out, int threads) except + nogil
        double compute(const CellList& cells, const int* element, ComputeOutput& out,
                       int threads) except + nogil
        const Descriptor& descriptor(int e) except +
        AtomicNetwork& network(int e) except +
        ScalingType scaling_type()
        void scale(int e, const double* G, double* x)
        const vector[double]& scaling_slope(int e) except +
        void set_scaling(int e, const vector[double]& gmin, const vector[double]& gmax,
                         const vector[double]& gmean, const vector[double]& gsigma) except +
        const vector[double]& gmin(int e) except +
        const vector[double]& gmax(int e) except +
        const vector[double]& gmean(int e) except +
        const vector[double]& gsigma(int e) except +
        cbool normalised()
        double mean_energy()
        double conv_energy()
        double conv_length()
        void set_normalisation(cbool on, double mean_energy, double conv_energy,
                               double conv_length) except +
        double atom_energy(int e) except +
        void set_atom_energy(int e, double value) except +


cdef bytes _b(s):
    return str(s).encode()


def neighbor_list(positions, cell, pbc, double cutoff, double min_distance=1e-8,
                  int threads=1):
    """Full neighbour list within ``cutoff``.

    positions: (n, 3); cell: (3, 3) rows = cell vectors; pbc: (3,) bool.
    Returns (offsets (n+1,) int64, index (m,) int32, d (m, 3)) with d = r_j - r_i,
    periodic images included. threads: OpenMP threads of the search (<= 0: all); the list
    is the same for every thread count.
    """
    cdef cnp.ndarray[double, ndim=2, mode="c"] pos = np.ascontiguousarray(positions, dtype=np.float64).reshape(-1, 3)
    cdef cnp.ndarray[double, ndim=2, mode="c"] c = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
    cdef cnp.ndarray[cnp.npy_bool, ndim=1, mode="c"] p = np.ascontiguousarray(pbc, dtype=np.bool_).reshape(3)
    cdef NeighborList nl
    cdef int64_t n = pos.shape[0]
    cdef double* pp = &pos[0, 0] if n > 0 else NULL
    with nogil:
        nl = build_neighbor_list(pp, n, &c[0, 0], <cbool*>&p[0], cutoff, min_distance, threads)
    return _nl_arrays(nl)


cdef tuple _nl_arrays(NeighborList& nl):
    """Copy a C++ neighbour list into numpy arrays (offsets, index, d)."""
    cdef cnp.ndarray[int64_t, ndim=1, mode="c"] offsets = np.empty(nl.offsets.size(), dtype=np.int64)
    cdef cnp.ndarray[int32_t, ndim=1, mode="c"] index = np.empty(nl.index.size(), dtype=np.int32)
    cdef cnp.ndarray[double, ndim=2, mode="c"] d = np.empty((nl.index.size(), 3))
    if nl.offsets.size():
        memcpy(&offsets[0], nl.offsets.data(), nl.offsets.size() * sizeof(int64_t))
    if nl.index.size():
        memcpy(&index[0], nl.index.data(), nl.index.size() * sizeof(int32_t))
        memcpy(&d[0, 0], nl.d.data(), nl.d.size() * sizeof(double))
    return offsets, index, d


cdef class CoreModel:
    """A loaded HDNNP (C++ ``pyfragnn::Model``), in the potential's own units."""
    cdef Model* m

    def __cinit__(self):
        self.m = new Model()

    def __dealloc__(self):
        del self.m

    @staticmethod
    def load(path):
        """Load a native file, an n2p2 directory or an input.nn path."""
        cdef CoreModel o = CoreModel()
        o.m[0] = Model.load(_b(path))
        return o

    @staticmethod
    def read_n2p2(input_nn, scaling, weights_format):
        cdef CoreModel o = CoreModel()
        o.m[0] = Model.read_n2p2(_b(input_nn), _b(scaling), _b(weights_format))
        return o

    @staticmethod
    def from_text(input_nn, scaling="", parameters=None, source="<text>"):
        """Build from input.nn text, scaling.data text and per-element parameter arrays."""
        cdef vector[vector[double]] params
        if parameters is not None:
            for w in parameters:
                params.push_back(np.ascontiguousarray(w, dtype=np.float64).tolist())
        cdef CoreModel o = CoreModel()
        o.m[0] = Model.from_text(_b(input_nn), _b(scaling), params, _b(source))
        return o

    def copy(self):
        cdef CoreModel o = CoreModel()
        o.m[0] = self.m[0]
        return o

    def write_n2p2(self, directory):
        self.m.write_n2p2(_b(directory))

    def write_native(self, path):
        self.m.write_native(_b(path))

    def input_nn_text(self):
        return self.m.input_nn_text().decode()

    def scaling_text(self):
        return self.m.scaling_text().decode()

    @property
    def elements(self):
        cdef const vector[string]* els = &self.m.elements()
        return [els[0][k].decode() for k in range(els.size())]

    @property
    def atomic_numbers(self):
        return list(self.m.atomic_numbers())

    @property
    def cutoff(self):
        return self.m.cutoff()

    @property
    def length_unit(self):
        return self.m.length_unit()

    @property
    def energy_unit(self):
        return self.m.energy_unit()

    def set_units(self, double length_unit, double energy_unit):
        self.m.set_units(length_unit, energy_unit)

    # --- evaluation -------------------------------------------------------------------
    def compute_neighbors(self, offsets, index, d, element, bint forces=True,
                          bint virial=True, bint atom_virial=False, int64_t max_warnings=-1,
                          int threads=1):
        """Energies/forces for a given CSR neighbour list (potential units).
        threads: OpenMP threads (<= 0: OMP_NUM_THREADS or all cores); results do not depend
        on it.

        offsets: (n_centres+1,) int64; index: (m,) int32 targets; d: (m, 3);
        element: (n_total,) int32 element indices (-1 = ignore). Returns a dict with
        energy, energies (n_centres,), forces (n_total, 3), virial (6,) xx yy zz xy xz yz,
        atom_virial (n_total, 6), n_warnings, warnings [(atom, element, sf, value, gmin, gmax)].
        """
        cdef cnp.ndarray[int64_t, ndim=1, mode="c"] off = np.ascontiguousarray(offsets, dtype=np.int64)
        cdef cnp.ndarray[int32_t, ndim=1, mode="c"] idx = np.ascontiguousarray(index, dtype=np.int32)
        cdef cnp.ndarray[double, ndim=2, mode="c"] dd = np.ascontiguousarray(d, dtype=np.float64).reshape(-1, 3)
        cdef cnp.ndarray[int, ndim=1, mode="c"] el = np.ascontiguousarray(element, dtype=np.intc)
        cdef int64_t nc = off.shape[0] - 1
        cdef int64_t nt = el.shape[0]
        if nc < 0 or nc > nt:
            raise ValueError("offsets must have n_centres+1 <= len(element)+1 entries")
        if idx.shape[0] != dd.shape[0] or off[nc] != idx.shape[0]:
            raise ValueError("neighbour arrays have inconsistent lengths")
        cdef NeighborListView view
        view.n_centres = nc
        view.offsets = &off[0]
        view.index = &idx[0] if idx.shape[0] > 0 else NULL
        view.d = &dd[0, 0] if dd.shape[0] > 0 else NULL
        return self._compute(view, el, forces, virial, atom_virial, max_warnings, threads)

    def compute_structure(self, positions, element, cell, pbc, bint forces=True,
                          bint virial=True, bint atom_virial=False, int64_t max_warnings=-1,
                          double min_distance=1e-8, int threads=1):
        """Energies/forces of a structure (potential units): neighbour search and evaluation
        in one C++ pass. positions (n, 3); element (n,) indices; cell (3, 3); pbc (3,)."""
        cdef cnp.ndarray[double, ndim=2, mode="c"] pos = np.ascontiguousarray(positions, dtype=np.float64).reshape(-1, 3)
        cdef cnp.ndarray[double, ndim=2, mode="c"] c = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
        cdef cnp.ndarray[cnp.npy_bool, ndim=1, mode="c"] p = np.ascontiguousarray(pbc, dtype=np.bool_).reshape(3)
        cdef cnp.ndarray[int, ndim=1, mode="c"] el = np.ascontiguousarray(element, dtype=np.intc)
        if el.shape[0] != pos.shape[0]:
            raise ValueError(f"{pos.shape[0]} positions but {el.shape[0]} element indices")
        cdef int64_t n = pos.shape[0]
        cdef double* pp = &pos[0, 0] if n > 0 else NULL
        cdef double rc = self.m.cutoff()
        cdef CellList* cells = NULL
        cdef NeighborListView none
        with nogil:
            cells = new CellList(pp, n, &c[0, 0], <cbool*>&p[0], rc, min_distance)
        try:
            return self._compute(none, el, forces, virial, atom_virial, max_warnings, threads,
                                 cells)
        finally:
            del cells

    cdef dict _compute(self, NeighborListView view, cnp.ndarray[int, ndim=1, mode="c"] el,
                       bint forces, bint virial, bint atom_virial, int64_t max_warnings,
                       int threads=1, CellList* cells=NULL):
        """Evaluate the centres of view, or with cells every atom (neighbours searched in
        the cells where each centre is evaluated)."""
        cdef int64_t nc = cells.size() if cells != NULL else view.n_centres
        cdef int64_t nt = el.shape[0]
        cdef cnp.ndarray[double, ndim=1, mode="c"] en = np.zeros(max(nc, 1))
        cdef cnp.ndarray[double, ndim=2, mode="c"] f = np.zeros((max(nt, 1), 3))
        cdef cnp.ndarray[double, ndim=1, mode="c"] v = np.zeros(6)
        cdef cnp.ndarray[double, ndim=2, mode="c"] av = np.zeros((max(nt, 1), 6))
        cdef ComputeOutput out
        cdef vector[ExtrapolationWarning] warns
        out.energies = &en[0]
        out.forces = &f[0, 0] if forces else NULL
        out.virial = &v[0] if virial else NULL
        out.atom_virial = &av[0, 0] if atom_virial else NULL
        out.warnings = &warns
        out.max_warnings = max_warnings
        cdef double e
        cdef int* elp = &el[0] if nt > 0 else NULL
        with nogil:
            if cells != NULL:
                e = self.m.compute(cells[0], elp, out, threads)
            else:
                e = self.m.compute(view, elp, nt, out, threads)
        res = {"energy": e, "energies": en[:nc].copy(), "n_warnings": out.n_warnings,
               "warnings": [(w.atom, w.element, w.sf, w.value, w.gmin, w.gmax) for w in warns]}
        if forces:
            res["forces"] = f[:nt].copy()
        if virial:
            res["virial"] = v
        if atom_virial:
            res["atom_virial"] = av[:nt].copy()
        return res

    def element_indices(self, symbols):
        """Element index of each symbol; raises ValueError naming an unknown one."""
        out = np.empty(len(symbols), dtype=np.intc)
        lookup = {s: i for i, s in enumerate(self.elements)}
        for k, s in enumerate(symbols):
            try:
                out[k] = lookup[s]
            except KeyError:
                raise ValueError(
                    f"atom {k} is {s}, which the potential does not have "
                    f"(elements: {' '.join(self.elements)})") from None
        return out

    # --- pieces, for trainers and tests --------------------------------------------------
    def n_symmetry_functions(self, int e):
        return self.m.descriptor(e).size()

    def symmetry_function_lines(self, int e):
        cdef const vector[SymmetryFunctionParams]* ps = &self.m.descriptor(e).params()
        cdef vector[string] els = self.m.elements()
        return [format_symmetry_function(ps[0][k], els).decode() for k in range(ps.size())]

    def symmetry_function_source_lines(self, int e):
        """1-based line in the input.nn text of each of element e's functions (n2p2 sorted
        order, as symmetry_function_lines); 0 where not read from text."""
        cdef const vector[SymmetryFunctionParams]* ps = &self.m.descriptor(e).params()
        return [ps[0][k].line for k in range(ps.size())]

    cdef AtomEnvironment _env(self, cnp.ndarray[double, ndim=2, mode="c"] d,
                              cnp.ndarray[double, ndim=1, mode="c"] r,
                              cnp.ndarray[int, ndim=1, mode="c"] el):
        cdef AtomEnvironment env
        env.n = d.shape[0]
        env.d = &d[0, 0] if env.n > 0 else NULL
        env.r = &r[0] if env.n > 0 else NULL
        env.element = &el[0] if env.n > 0 else NULL
        return env

    def symmetry_functions(self, int e, d, neighbor_elements, jacobian=False):
        """Raw G (n_sf,) of a central atom of element e with neighbour vectors d (n, 3);
        with jacobian=True also dG/dd (n_sf, n, 3)."""
        cdef cnp.ndarray[double, ndim=2, mode="c"] dd = np.ascontiguousarray(d, dtype=np.float64).reshape(-1, 3)
        cdef cnp.ndarray[double, ndim=1, mode="c"] r = np.ascontiguousarray(np.sqrt((dd * dd).sum(axis=1)))
        cdef cnp.ndarray[int, ndim=1, mode="c"] el = np.ascontiguousarray(neighbor_elements, dtype=np.intc)
        if el.shape[0] != dd.shape[0]:
            raise ValueError("one element per neighbour vector needed")
        cdef const Descriptor* desc = &self.m.descriptor(e)
        cdef AtomEnvironment env = self._env(dd, r, el)
        cdef DescriptorWorkspace ws
        cdef cnp.ndarray[double, ndim=1, mode="c"] G = np.zeros(desc.size())
        cdef cnp.ndarray[double, ndim=3, mode="c"] J
        if not jacobian:
            desc.compute(env, &G[0], ws)
            return G
        J = np.zeros((desc.size(), max(env.n, 1), 3))
        desc.jacobian(env, &G[0], &J[0, 0, 0], ws)
        return G, J[:, :env.n].copy()

    def contract(self, int e, d, neighbor_elements, dEdG):
        """dE/dd (n, 3) = sum_s dEdG[s] dG_s/dd for one central atom (kernel's force path)."""
        cdef cnp.ndarray[double, ndim=2, mode="c"] dd = np.ascontiguousarray(d, dtype=np.float64).reshape(-1, 3)
        cdef cnp.ndarray[double, ndim=1, mode="c"] r = np.ascontiguousarray(np.sqrt((dd * dd).sum(axis=1)))
        cdef cnp.ndarray[int, ndim=1, mode="c"] el = np.ascontiguousarray(neighbor_elements, dtype=np.intc)
        cdef cnp.ndarray[double, ndim=1, mode="c"] g = np.ascontiguousarray(dEdG, dtype=np.float64)
        cdef const Descriptor* desc = &self.m.descriptor(e)
        if g.shape[0] != desc.size():
            raise ValueError(f"dEdG needs {desc.size()} entries")
        cdef AtomEnvironment env = self._env(dd, r, el)
        cdef DescriptorWorkspace ws
        cdef cnp.ndarray[double, ndim=1, mode="c"] G = np.zeros(desc.size())
        cdef cnp.ndarray[double, ndim=2, mode="c"] out = np.zeros((max(env.n, 1), 3))
        desc.compute(env, &G[0], ws)
        desc.contract(env, &g[0], &out[0, 0], ws)
        return out[:env.n].copy()

    def scale(self, int e, G):
        """Scaled network inputs x (n_sf,) from raw G."""
        cdef cnp.ndarray[double, ndim=1, mode="c"] g = np.ascontiguousarray(G, dtype=np.float64)
        if g.shape[0] != self.m.descriptor(e).size():
            raise ValueError("wrong number of symmetry functions")
        cdef cnp.ndarray[double, ndim=1, mode="c"] x = np.zeros(g.shape[0])
        self.m.scale(e, &g[0], &x[0])
        return x

    def scaling_slope(self, int e):
        return np.array(self.m.scaling_slope(e))

    def get_scaling(self, int e):
        """(gmin, gmax, gmean, gsigma), each (n_sf,)."""
        return (np.array(self.m.gmin(e)), np.array(self.m.gmax(e)),
                np.array(self.m.gmean(e)), np.array(self.m.gsigma(e)))

    def set_scaling(self, int e, gmin, gmax, gmean, gsigma):
        self.m.set_scaling(e, np.asarray(gmin, float).tolist(), np.asarray(gmax, float).tolist(),
                           np.asarray(gmean, float).tolist(), np.asarray(gsigma, float).tolist())

    @property
    def scaling_type(self):
        return ("none", "scale", "center", "scalecenter", "sigma")[<int>self.m.scaling_type()]

    def network_layers(self, int e):
        return list(self.m.network(e).layers())

    def get_parameters(self, int e):
        return np.array(self.m.network(e).parameters())

    def set_parameters(self, int e, w):
        self.m.network(e).set_parameters(np.ascontiguousarray(w, dtype=np.float64).tolist())

    def network_energy(self, int e, x):
        """Network output and dE/dx for scaled inputs x (n_sf,)."""
        cdef cnp.ndarray[double, ndim=1, mode="c"] xx = np.ascontiguousarray(x, dtype=np.float64)
        cdef AtomicNetwork* net = &self.m.network(e)
        if xx.shape[0] != net.n_inputs():
            raise ValueError("wrong number of network inputs")
        cdef cnp.ndarray[double, ndim=1, mode="c"] g = np.zeros(xx.shape[0])
        cdef NetworkWorkspace ws
        cdef double E = net.evaluate(&xx[0], &g[0], ws)
        return E, g

    @property
    def normalisation(self):
        """(on, mean_energy, conv_energy, conv_length)."""
        return (bool(self.m.normalised()), self.m.mean_energy(), self.m.conv_energy(),
                self.m.conv_length())

    def set_normalisation(self, bint on, double mean_energy=0.0, double conv_energy=1.0,
                          double conv_length=1.0):
        self.m.set_normalisation(on, mean_energy, conv_energy, conv_length)

    def atom_energy(self, int e):
        return self.m.atom_energy(e)

    def set_atom_energy(self, int e, double value):
        self.m.set_atom_energy(e, value)
include "training.pxi"
