# Thread-count policy of the core, in one place.

cdef int available_threads() noexcept nogil
cdef int threads_for(int workers) noexcept nogil
cdef int chunks_for(double work, double grain, int workers) noexcept nogil
cdef int dynamic_workers(double work, double grain) noexcept nogil
cdef int pieces_for(int workers, Py_ssize_t units, double work) noexcept nogil
