;; Traps in the start function, before the entry is ever called.
(module
  (func $start unreachable)
  (start $start)
  (func (export "_start")))
