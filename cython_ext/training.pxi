# Training bindings, included into _core.pyx (uses CoreModel and the Model declaration there).
#
# TrainingStructure: one structure's neighbour environments, symmetry functions, scaled
# inputs and (optionally) descriptor Jacobians, and the weight derivatives of its energy and
# forces. All quantities in the potential's own units (the Python trainer converts Å/eV).

cdef extern from "training.h":
    vector[int64_t] c_weight_offsets "pyfragnn::weight_offsets"(const Model& model) except +
    void c_get_weights "pyfragnn::get_weights"(const Model& model, double* w) except +
    void c_set_weights "pyfragnn::set_weights"(Model& model, const double* w) except +
    cdef cppclass CTrainingStructure "pyfragnn::TrainingStructure":
        CTrainingStructure(const Model& model, const double* positions, int64_t n,
                           const double* cell, const cbool* pbc, const int* element,
                           cbool cache_jacobians) except +
        int64_t n_atoms()
        int64_t n_weights()
        const double* G(int64_t i)
        int n_sf(int64_t i)
        void rescale(const Model& model) except +
        cbool jacobians_cached()
        int64_t jacobian_bytes()
        int64_t base_bytes()
        void set_cache_jacobians(const Model& model, cbool on) except +
        double energy(const Model& model, double* atom_energies) except + nogil
        double energy_forces(const Model& model, double* forces) except + nogil
        double energy_gradient(const Model& model, double scale, double* dEdw) except + nogil
        double force_gradient(const Model& model, const double* c, double scale,
                              double* dw) except + nogil
        double force_component_gradient(const Model& model, int64_t k, int a, double scale,
                                        double* dw) except + nogil
        double force_component(const Model& model, int64_t k, int a) except + nogil


def model_weight_offsets(CoreModel model):
    """Offsets of each element's parameters in the global weight vector, [n_elements + 1]."""
    return np.array(c_weight_offsets(model.m[0]), dtype=np.int64)


def get_weights(CoreModel model):
    """All network parameters, concatenated in element order (n2p2 layout per element)."""
    cdef int64_t nw = c_weight_offsets(model.m[0]).back()
    cdef cnp.ndarray[double, ndim=1, mode="c"] w = np.zeros(max(nw, 1))
    c_get_weights(model.m[0], &w[0])
    return w[:nw].copy()


def set_weights(CoreModel model, w):
    """Set all network parameters from the concatenated vector."""
    cdef int64_t nw = c_weight_offsets(model.m[0]).back()
    cdef cnp.ndarray[double, ndim=1, mode="c"] ww = np.ascontiguousarray(w, dtype=np.float64)
    if ww.shape[0] != nw:
        raise ValueError(f"weight vector has {ww.shape[0]} entries, the model {nw}")
    if nw:
        c_set_weights(model.m[0], &ww[0])


cdef class TrainingStructure:
    """A structure prepared for training against ``model`` (a CoreModel).

    positions (n, 3), cell (3, 3), pbc (3,) in the potential's length unit; element (n,)
    element indices (-1 = ignored atom). The model's cutoff, descriptors and scaling at
    construction time are used (call :meth:`rescale` after changing the scaling). The model
    object is referenced, not copied: weight changes are seen by every method.
    """
    cdef CTrainingStructure* s
    cdef CoreModel model
    cdef readonly int64_t n_atoms
    cdef readonly int64_t n_weights

    def __cinit__(self, CoreModel model, positions, cell, pbc, element, bint cache_jacobians=False):
        cdef cnp.ndarray[double, ndim=2, mode="c"] pos = np.ascontiguousarray(positions, dtype=np.float64).reshape(-1, 3)
        cdef cnp.ndarray[double, ndim=2, mode="c"] c = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
        cdef cnp.ndarray[cnp.npy_bool, ndim=1, mode="c"] p = np.ascontiguousarray(pbc, dtype=np.bool_).reshape(3)
        cdef cnp.ndarray[int, ndim=1, mode="c"] el = np.ascontiguousarray(element, dtype=np.intc).reshape(-1)
        if el.shape[0] != pos.shape[0]:
            raise ValueError("element and positions differ in length")
        if pos.shape[0] == 0:
            raise ValueError("structure without atoms")
        self.model = model
        self.s = new CTrainingStructure(model.m[0], &pos[0, 0], pos.shape[0], &c[0, 0],
                                        <const cbool*>&p[0], &el[0], cache_jacobians)
        self.n_atoms = self.s.n_atoms()
        self.n_weights = self.s.n_weights()

    def __dealloc__(self):
        if self.s != NULL:
            del self.s

    def G(self, int64_t i):
        """Raw symmetry functions of atom i (None for ignored atoms)."""
        if i < 0 or i >= self.n_atoms:
            raise IndexError(i)
        cdef const double* g = self.s.G(i)
        if g == NULL:
            return None
        cdef int n = self.s.n_sf(i)
        return np.array([g[k] for k in range(n)])

    def rescale(self):
        self.s.rescale(self.model.m[0])

    @property
    def jacobians_cached(self):
        return bool(self.s.jacobians_cached())

    @property
    def jacobian_bytes(self):
        return int(self.s.jacobian_bytes())

    @property
    def base_bytes(self):
        return int(self.s.base_bytes())

    def set_cache_jacobians(self, bint on):
        self.s.set_cache_jacobians(self.model.m[0], on)

    def energy(self):
        """Total energy (potential units)."""
        cdef double e
        with nogil:
            e = self.s.energy(self.model.m[0], NULL)
        return e

    def atom_energies(self):
        cdef cnp.ndarray[double, ndim=1, mode="c"] out = np.zeros(self.n_atoms)
        self.s.energy(self.model.m[0], &out[0])
        return out

    def energy_forces(self):
        """(E, F[n, 3]) in potential units."""
        cdef cnp.ndarray[double, ndim=2, mode="c"] f = np.zeros((self.n_atoms, 3))
        cdef double e
        with nogil:
            e = self.s.energy_forces(self.model.m[0], &f[0, 0])
        return e, f

    def energy_gradient(self, double scale=1.0, out=None):
        """(E, dE/dw): out += scale * dE/dw (new array if out is None)."""
        cdef cnp.ndarray[double, ndim=1, mode="c"] g = self._out(out)
        cdef double e
        with nogil:
            e = self.s.energy_gradient(self.model.m[0], scale, &g[0])
        return e, g

    def force_gradient(self, c, double scale=1.0, out=None):
        """(S, dS/dw) for S = sum(c * F), c (n, 3): out += scale * dS/dw."""
        cdef cnp.ndarray[double, ndim=2, mode="c"] cc = np.ascontiguousarray(c, dtype=np.float64).reshape(-1, 3)
        if cc.shape[0] != self.n_atoms:
            raise ValueError(f"c has {cc.shape[0]} rows, the structure {self.n_atoms} atoms")
        cdef cnp.ndarray[double, ndim=1, mode="c"] g = self._out(out)
        cdef double v
        with nogil:
            v = self.s.force_gradient(self.model.m[0], &cc[0, 0], scale, &g[0])
        return v, g

    def force_component(self, int64_t k, int a):
        """F_ka alone (as energy_forces gives it), without its weight derivative."""
        cdef double v
        with nogil:
            v = self.s.force_component(self.model.m[0], k, a)
        return v

    def force_component_gradient(self, int64_t k, int a, double scale=1.0, out=None):
        """(F_ka, dF_ka/dw): out += scale * dF_ka/dw."""
        cdef cnp.ndarray[double, ndim=1, mode="c"] g = self._out(out)
        cdef double v
        with nogil:
            v = self.s.force_component_gradient(self.model.m[0], k, a, scale, &g[0])
        return v, g

    cdef cnp.ndarray _out(self, out):
        if out is None:
            return np.zeros(max(self.n_weights, 1))
        if (not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.ndim != 1
                or not out.flags.c_contiguous or out.shape[0] < self.n_weights):
            raise ValueError(f"out must be a contiguous float64 array of {self.n_weights}")
        return out


cdef extern from "training.h":
    void c_kf_rows_times_vector "pyfragnn::kf_rows_times_vector"(
        const double* A, int64_t rows, int64_t n, const double* h, double* y) nogil
    void c_kf_rows_downdate "pyfragnn::kf_rows_downdate"(
        double* A, int64_t rows, int64_t n, const double* Uloc, const double* UT, int64_t m,
        double s) nogil
    void c_kf_block_times_vector "pyfragnn::kf_block_times_vector"(
        const double* A, int64_t r0, int64_t rows, int64_t n, const double* h, double* y) nogil
    void c_kf_block_downdate "pyfragnn::kf_block_downdate"(
        double* A, int64_t r0, int64_t rows, int64_t n, const double* Uloc, const double* UT,
        int64_t m, double s) nogil


def kf_rows_times_vector(cnp.ndarray[double, ndim=2, mode="c"] A,
                         cnp.ndarray[double, ndim=1, mode="c"] h,
                         cnp.ndarray[double, ndim=1, mode="c"] y):
    """y[:rows] = A @ h with a fixed summation order per row (independent of the row count)."""
    cdef int64_t rows = A.shape[0], n = A.shape[1]
    if h.shape[0] != n or y.shape[0] < rows:
        raise ValueError("kf_rows_times_vector: shape mismatch")
    if rows == 0 or n == 0:
        return
    with nogil:
        c_kf_rows_times_vector(&A[0, 0], rows, n, &h[0], &y[0])


def kf_rows_downdate(cnp.ndarray[double, ndim=2, mode="c"] A,
                     cnp.ndarray[double, ndim=2, mode="c"] Uloc,
                     cnp.ndarray[double, ndim=2, mode="c"] UT, double s=1.0):
    """A = s * (A - Uloc @ UT), summed over k in ascending order per element."""
    cdef int64_t rows = A.shape[0], n = A.shape[1], m = UT.shape[0]
    if Uloc.shape[0] != rows or Uloc.shape[1] != m or UT.shape[1] != n:
        raise ValueError("kf_rows_downdate: shape mismatch")
    if rows == 0 or n == 0:
        return
    with nogil:
        c_kf_rows_downdate(&A[0, 0], rows, n, &Uloc[0, 0], &UT[0, 0], m, s)


def kf_block_times_vector(cnp.ndarray[double, ndim=2, mode="c"] A, int64_t r0,
                          cnp.ndarray[double, ndim=1, mode="c"] h,
                          cnp.ndarray[double, ndim=1, mode="c"] y):
    """y[:rows] = P[r0:r0+rows] @ h, A = those rows of a symmetric P of which only the lower
    triangle of the diagonal block A[:, r0:r0+rows] is read; bit-identical to
    kf_rows_times_vector where P is bit-symmetric."""
    cdef int64_t rows = A.shape[0], n = A.shape[1]
    if h.shape[0] != n or y.shape[0] < rows or r0 < 0 or r0 + rows > n:
        raise ValueError("kf_block_times_vector: shape mismatch")
    if rows == 0 or n == 0:
        return
    with nogil:
        c_kf_block_times_vector(&A[0, 0], r0, rows, n, &h[0], &y[0])


def kf_block_downdate(cnp.ndarray[double, ndim=2, mode="c"] A, int64_t r0,
                      cnp.ndarray[double, ndim=2, mode="c"] Uloc,
                      cnp.ndarray[double, ndim=2, mode="c"] UT, double s=1.0):
    """kf_rows_downdate on rows [r0, r0+rows) of a symmetric P, the diagonal block's upper
    triangle left as it is (neither read nor written)."""
    cdef int64_t rows = A.shape[0], n = A.shape[1], m = UT.shape[0]
    if (Uloc.shape[0] != rows or Uloc.shape[1] != m or UT.shape[1] != n or r0 < 0
            or r0 + rows > n):
        raise ValueError("kf_block_downdate: shape mismatch")
    if rows == 0 or n == 0:
        return
    with nogil:
        c_kf_block_downdate(&A[0, 0], r0, rows, n, &Uloc[0, 0], &UT[0, 0], m, s)
