;; A funcref table whose contents change at run time, for snapshot tests: a
;; snapshot must carry which function sits in each slot (the element segment
;; only says how the table started).
;;
;; Functions, by number: 0 double, 1 square, 2 negate, 3 inc (all i64 -> i64).
;; The table starts as [double, square, null, null] (min 4, max 8).
;;
;; Exports:
;;   set(slot: i32, which: i32)     table.set slot to function `which` (any other number: null)
;;   call(slot: i32, x: i64) -> i64 call_indirect through the slot (traps on null)
;;   apply_all(x: i64) -> i64       x = f(x) for every non-null slot, in slot order
;;   is_null(slot: i32) -> i32
;;   rotate()                       every slot i takes what was in slot i+1 (the last takes slot 0's)
;;   grow(n: i32) -> i32            table.grow by n null slots: old size, or -1 past the max
;;   size() -> i32
(module
  (memory (export "memory") 1)
  (type $un (func (param i64) (result i64)))
  (table $t 4 8 funcref)
  (elem (table $t) (i32.const 0) func $double $square)
  (elem declare func $negate $inc)

  (func $double (type $un) (i64.mul (local.get 0) (i64.const 2)))
  (func $square (type $un) (i64.mul (local.get 0) (local.get 0)))
  (func $negate (type $un) (i64.sub (i64.const 0) (local.get 0)))
  (func $inc (type $un) (i64.add (local.get 0) (i64.const 1)))

  (func $ref (param $which i32) (result funcref)
    (block $null
      (block $3
        (block $2
          (block $1
            (block $0
              (br_table $0 $1 $2 $3 $null (local.get $which)))
            (return (ref.func $double)))
          (return (ref.func $square)))
        (return (ref.func $negate)))
      (return (ref.func $inc)))
    (ref.null func))

  (func (export "set") (param $slot i32) (param $which i32)
    (table.set $t (local.get $slot) (call $ref (local.get $which))))

  (func (export "call") (param $slot i32) (param $x i64) (result i64)
    (call_indirect $t (type $un) (local.get $x) (local.get $slot)))

  (func (export "apply_all") (param $x i64) (result i64)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (table.size $t)))
        (if (i32.eqz (ref.is_null (table.get $t (local.get $i))))
          (then (local.set $x
                  (call_indirect $t (type $un) (local.get $x) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $x))

  (func (export "is_null") (param $slot i32) (result i32)
    (ref.is_null (table.get $t (local.get $slot))))

  (func (export "rotate")
    (local $i i32) (local $first funcref) (local $last i32)
    (local.set $last (i32.sub (table.size $t) (i32.const 1)))
    (local.set $first (table.get $t (i32.const 0)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $last)))
        (table.set $t (local.get $i) (table.get $t (i32.add (local.get $i) (i32.const 1))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (table.set $t (local.get $last) (local.get $first)))

  (func (export "grow") (param $n i32) (result i32)
    (table.grow $t (ref.null func) (local.get $n)))

  (func (export "size") (result i32) (table.size $t))
)
