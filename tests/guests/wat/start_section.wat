;; A module with a start function: it must run once on a fresh start and
;; never again on a restore (the rewrite moves it out of the start section).
(module
  (memory 1)
  (global $starts (mut i32) (i32.const 0))
  (func $start
    (global.set $starts (i32.add (global.get $starts) (i32.const 1)))
    ;; the start function also writes memory that the app later changes
    (i32.store (i32.const 128) (i32.const 1000)))
  (start $start)
  (func (export "starts") (result i32) (global.get $starts))
  (func (export "bump") (result i32)
    (i32.store (i32.const 128) (i32.add (i32.load (i32.const 128)) (i32.const 1)))
    (i32.load (i32.const 128))))
