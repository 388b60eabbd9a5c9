;; memory.grow one page at a time until it returns -1, then a huge grow; handles -1 and exits normally.
(module
  (memory 1)
  (func (export "_start")
    (loop $l
      (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    (drop (memory.grow (i32.const 65536)))
    (drop (memory.grow (i32.const -1)))))
