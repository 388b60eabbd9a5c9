;; Unbounded recursion with a large frame: must end in a "stack overflow" trap, never a native crash.
(module
  (func $f (param i64 i64 i64 i64) (result i64)
    (local i64 i64 i64 i64 i64 i64 i64 i64)
    (i64.add
      (call $f (local.get 0) (local.get 1) (local.get 2) (local.get 3))
      (local.get 4)))
  (func (export "_start")
    (drop (call $f (i64.const 1) (i64.const 2) (i64.const 3) (i64.const 4)))))
