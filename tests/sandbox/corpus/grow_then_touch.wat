;; Ignores memory.grow's -1 and stores past the end: a memory_limit, not a plain trap.
(module
  (memory 1)
  (func (export "_start")
    (drop (memory.grow (i32.const 1000)))
    (i32.store (i32.const 1048576) (i32.const 1))))
