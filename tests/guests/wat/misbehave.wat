;; A guest that misbehaves on request: traps, loops, recurses, hogs memory.
(module
  (memory 1 65536)
  (global $calls (mut i64) (i64.const 0))
  (func (export "ok") (result i64)
    (global.set $calls (i64.add (global.get $calls) (i64.const 1)))
    (global.get $calls))
  (func (export "trap") (unreachable))
  (func (export "div") (param i32 i32) (result i32) (i32.div_s (local.get 0) (local.get 1)))
  (func (export "oob") (result i32) (i32.load (i32.const -4)))
  (func (export "spin") (loop $l (br $l)))
  (func $rec (export "recurse") (param i64) (result i64)
    (call $rec (i64.add (local.get 0) (i64.const 1))))
  ;; grows by n wasm pages; returns the old size or -1
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "pages") (result i32) (memory.size))
  ;; writes one byte in each of n 4 KiB pages starting at page `first`
  (func (export "touch") (param $first i32) (param $n i32) (param $v i32)
    (local $i i32)
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (i32.store8 (i32.mul (i32.add (local.get $first) (local.get $i)) (i32.const 4096)) (local.get $v))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l))))
  (func (export "sum") (param $first i32) (param $n i32) (result i64)
    (local $i i32) (local $s i64)
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $s (i64.add (local.get $s)
        (i64.load8_u (i32.mul (i32.add (local.get $first) (local.get $i)) (i32.const 4096)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (local.get $s)))
