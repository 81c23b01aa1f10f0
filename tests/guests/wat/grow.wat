;; A memory grown at run time, with data segments and a maximum, for
;; snapshot tests: a restore must recreate the grown size (not the initial
;; one), keep the segments' bytes as the program left them, and keep the max.
;;
;; Memory: 1 page initially, at most 8. Data segments: "tern grow.wat data
;; segment" (27 bytes) at 16 and the bytes 1..8 at 0x8000.
;;
;; Exports:
;;   grow(pages: i32) -> i32      memory.grow: old size in pages, or -1 past the max
;;   size() -> i32                memory.size in pages
;;   write(page: i32, v: i64)     stores v at page * 65536 + 64 (traps past the end)
;;   read(page: i32) -> i64
;;   sum() -> i64                 sum of the word at offset 64 of every page
;;   data_checksum() -> i64       FNV-1a over both data segments' current bytes
;;   poke_data(i: i32, b: i32)    overwrites byte i of the first segment
;;   grows() -> i32               successful grow() calls so far (a mutable global)
(module
  (memory (export "memory") 1 8)
  (data (i32.const 16) "tern grow.wat data segment")
  (data (i32.const 0x8000) "\01\02\03\04\05\06\07\08")
  (global $grows (mut i32) (i32.const 0))

  (func (export "grow") (param $pages i32) (result i32)
    (local $old i32)
    (local.set $old (memory.grow (local.get $pages)))
    (if (i32.ne (local.get $old) (i32.const -1))
      (then (global.set $grows (i32.add (global.get $grows) (i32.const 1)))))
    (local.get $old))

  (func (export "size") (result i32) (memory.size))

  (func (export "write") (param $page i32) (param $v i64)
    (i64.store offset=64 (i32.shl (local.get $page) (i32.const 16)) (local.get $v)))

  (func (export "read") (param $page i32) (result i64)
    (i64.load offset=64 (i32.shl (local.get $page) (i32.const 16))))

  (func (export "sum") (result i64)
    (local $page i32) (local $s i64)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $page) (memory.size)))
        (local.set $s (i64.add (local.get $s)
          (i64.load offset=64 (i32.shl (local.get $page) (i32.const 16)))))
        (local.set $page (i32.add (local.get $page) (i32.const 1)))
        (br $next)))
    (local.get $s))

  (func $fnv (param $h i64) (param $at i32) (param $len i32) (result i64)
    (local $end i32)
    (local.set $end (i32.add (local.get $at) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
        (local.set $h (i64.mul
          (i64.xor (local.get $h) (i64.load8_u (local.get $at)))
          (i64.const 0x100000001b3)))
        (local.set $at (i32.add (local.get $at) (i32.const 1)))
        (br $next)))
    (local.get $h))

  (func (export "data_checksum") (result i64)
    (call $fnv
      (call $fnv (i64.const 0xcbf29ce484222325) (i32.const 16) (i32.const 27))
      (i32.const 0x8000) (i32.const 8)))

  (func (export "poke_data") (param $i i32) (param $b i32)
    (i32.store8 offset=16 (local.get $i) (local.get $b)))

  (func (export "grows") (result i32) (global.get $grows))
)
