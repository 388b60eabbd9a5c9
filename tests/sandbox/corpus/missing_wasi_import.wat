;; Imports a WASI function the host does not have.
(module
  (import "wasi_snapshot_preview1" "no_such_function" (func $f (param i32) (result i32)))
  (func (export "_start") (drop (call $f (i32.const 0)))))
