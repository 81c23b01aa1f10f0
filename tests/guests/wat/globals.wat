;; Non-exported mutable globals of every numeric type, for snapshot tests:
;; a snapshot must carry i32, i64, f32 and f64 globals bit for bit, including
;; ones the module does not export.
;;
;; Exports:
;;   step(x: i64) -> i64   updates every mutable global from x and returns peek()
;;   peek() -> i64         a checksum of the bits of every global (no change)
;;   get_i32() -> i32, get_i64() -> i64, get_f32() -> f32, get_f64() -> f64, steps() -> i64
;;   set_nan()             puts NaNs with non-canonical payloads in the float
;;                         globals (f32 0x7fc01234, f64 0x7ff80000deadbeef);
;;                         peek() then shows whether the payload bits survived
;;   exported_counter      an exported mutable i32 global, bumped by step
(module
  (memory (export "memory") 1)

  (global $g_i32 (mut i32) (i32.const 7))
  (global $g_i64 (mut i64) (i64.const -3))
  (global $g_f32 (mut f32) (f32.const 1.5))
  (global $g_f64 (mut f64) (f64.const 0.1))
  (global $steps (mut i64) (i64.const 0))
  (global $exported (export "exported_counter") (mut i32) (i32.const 0))
  (global $mix i64 (i64.const 0x9e3779b97f4a7c15))

  ;; h = (h ^ v) * mix, rotated: order-dependent mixing of 64-bit words.
  (func $fold (param $h i64) (param $v i64) (result i64)
    (i64.rotl
      (i64.mul (i64.xor (local.get $h) (local.get $v)) (global.get $mix))
      (i64.const 29)))

  (func $peek (export "peek") (result i64)
    (local $h i64)
    (local.set $h (i64.const 0x12345678))
    (local.set $h (call $fold (local.get $h) (i64.extend_i32_u (global.get $g_i32))))
    (local.set $h (call $fold (local.get $h) (global.get $g_i64)))
    (local.set $h (call $fold (local.get $h) (i64.extend_i32_u (i32.reinterpret_f32 (global.get $g_f32)))))
    (local.set $h (call $fold (local.get $h) (i64.reinterpret_f64 (global.get $g_f64))))
    (local.set $h (call $fold (local.get $h) (global.get $steps)))
    (local.set $h (call $fold (local.get $h) (i64.extend_i32_u (global.get $exported))))
    (local.get $h))

  (func (export "step") (param $x i64) (result i64)
    ;; A NaN left by set_nan is reset first: arithmetic on NaN may change its
    ;; payload, and step must stay deterministic.
    (if (f32.ne (global.get $g_f32) (global.get $g_f32))
      (then (global.set $g_f32 (f32.const 0))))
    (if (f64.ne (global.get $g_f64) (global.get $g_f64))
      (then (global.set $g_f64 (f64.const 0))))
    (global.set $g_i32
      (i32.add (i32.mul (global.get $g_i32) (i32.const 31)) (i32.wrap_i64 (local.get $x))))
    (global.set $g_i64
      (i64.rotl (i64.xor (global.get $g_i64) (i64.mul (local.get $x) (global.get $mix))) (i64.const 7)))
    ;; Bounded: |f32| stays below 4 * 255, |f64| below 10 * |x| / 3.
    (global.set $g_f32
      (f32.add (f32.mul (global.get $g_f32) (f32.const 0.75))
               (f32.convert_i64_u (i64.and (local.get $x) (i64.const 255)))))
    (global.set $g_f64
      (f64.add (f64.mul (global.get $g_f64) (f64.const 0.9))
               (f64.div (f64.convert_i64_s (local.get $x)) (f64.const 3))))
    (global.set $steps (i64.add (global.get $steps) (i64.const 1)))
    (global.set $exported (i32.add (global.get $exported) (i32.const 1)))
    (call $peek))

  (func (export "set_nan")
    (global.set $g_f32 (f32.reinterpret_i32 (i32.const 0x7fc01234)))
    (global.set $g_f64 (f64.reinterpret_i64 (i64.const 0x7ff80000deadbeef))))

  (func (export "get_i32") (result i32) (global.get $g_i32))
  (func (export "get_i64") (result i64) (global.get $g_i64))
  (func (export "get_f32") (result f32) (global.get $g_f32))
  (func (export "get_f64") (result f64) (global.get $g_f64))
  (func (export "steps") (result i64) (global.get $steps))
)
