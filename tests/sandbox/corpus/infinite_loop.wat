;; A loop without calls: only the metered back-edge (and, failing that, the hard timeout) can stop it.
(module
  (func (export "_start")
    (loop $l (br $l))))
