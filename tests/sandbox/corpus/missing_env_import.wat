;; Imports from a module the host does not provide at all.
(module
  (import "env" "launch_missiles" (func $f))
  (func (export "_start") (call $f)))
