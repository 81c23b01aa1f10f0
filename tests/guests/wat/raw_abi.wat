;; A tern app that follows guest ABI v1 (sdk/ABI.md) by hand, without the
;; Rust SDK: the proof that ABI.md is enough to write one.
;;
;; Every request is answered `200` with body `hello from wat <path>` and two
;; headers: `content-type: text/plain` and `x-count: <n>`, where n counts the
;; requests handled so far (kept in a mutable global that is not exported, so
;; it survives a move only if the snapshot carries non-exported globals).
;; A request too short to hold a method and a path gets `400` and is not counted.
;;
;; Memory map: constant strings below 64, a scratch area for digits at 64..80,
;; and a bump heap from 1024 up. tern_alloc hands out 8-byte-aligned blocks,
;; growing memory when needed (0 when it cannot). The host frees the response
;; with tern_free before it allocates the next request, so by then nothing on
;; the heap is live any more and tern_free simply resets the bump pointer.
(module
  (memory (export "memory") 1)

  (data (i32.const 0) "hello from wat ")     ;; 15 bytes
  (data (i32.const 16) "x-count")            ;; 7 bytes
  (data (i32.const 32) "content-type")       ;; 12 bytes
  (data (i32.const 48) "text/plain")         ;; 10 bytes

  (global $heap_base i32 (i32.const 1024))
  (global $bump (mut i32) (i32.const 1024))
  (global $count (mut i32) (i32.const 0))

  (func (export "tern_abi_version") (result i32) (i32.const 1))

  (func $alloc (export "tern_alloc") (param $len i32) (result i32)
    (local $ptr i32) (local $end i64) (local $pages i64)
    (local.set $ptr (global.get $bump))
    ;; In 64 bits, so that a length near 4 GiB cannot wrap around.
    (local.set $end
      (i64.and
        (i64.add (i64.add (i64.extend_i32_u (local.get $ptr)) (i64.extend_i32_u (local.get $len)))
                 (i64.const 7))
        (i64.const -8)))
    (if (i64.gt_u (local.get $end) (i64.const 0x100000000))
      (then (return (i32.const 0))))
    (local.set $pages
      (i64.sub (i64.shr_u (i64.add (local.get $end) (i64.const 0xffff)) (i64.const 16))
               (i64.extend_i32_u (memory.size))))
    (if (i64.gt_s (local.get $pages) (i64.const 0))
      (then
        (if (i32.eq (memory.grow (i32.wrap_i64 (local.get $pages))) (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $bump (i32.wrap_i64 (local.get $end)))
    (local.get $ptr))

  (func (export "tern_free") (param $ptr i32) (param $len i32)
    (global.set $bump (global.get $heap_base)))

  ;; Writes the decimal digits of $n at $dst; returns how many.
  (func $itoa (param $n i32) (param $dst i32) (result i32)
    (local $len i32) (local $t i32) (local $i i32)
    (local.set $t (local.get $n))
    (loop $count
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
      (br_if $count (i32.ne (local.get $t) (i32.const 0))))
    (local.set $i (local.get $len))
    (loop $write
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $dst) (local.get $i))
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $write (i32.ne (local.get $i) (i32.const 0))))
    (local.get $len))

  ;; Writes a length-prefixed field at $at from ($src, $len); returns the next offset.
  (func $field (param $at i32) (param $src i32) (param $len i32) (result i32)
    (i32.store (local.get $at) (local.get $len))
    (memory.copy (i32.add (local.get $at) (i32.const 4)) (local.get $src) (local.get $len))
    (i32.add (i32.add (local.get $at) (i32.const 4)) (local.get $len)))

  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))

  (func (export "tern_handle") (param $req i32) (param $len i32) (result i64)
    (local $end i64) (local $p i64) (local $path i32) (local $path_len i32)
    (local $digits i32) (local $body_len i32) (local $size i32) (local $resp i32) (local $at i32)
    ;; Bounds are checked in 64 bits: the lengths come from outside.
    (local.set $end (i64.add (i64.extend_i32_u (local.get $req)) (i64.extend_i32_u (local.get $len))))
    (local.set $p (i64.extend_i32_u (local.get $req)))
    ;; method: u32 length, then bytes (skipped)
    (if (i64.gt_u (i64.add (local.get $p) (i64.const 4)) (local.get $end))
      (then (return (call $bad_request))))
    (local.set $p (i64.add (i64.add (local.get $p) (i64.const 4))
                           (i64.load32_u (i32.wrap_i64 (local.get $p)))))
    ;; path: u32 length, then bytes
    (if (i64.gt_u (i64.add (local.get $p) (i64.const 4)) (local.get $end))
      (then (return (call $bad_request))))
    (local.set $path_len (i32.load (i32.wrap_i64 (local.get $p))))
    (local.set $path (i32.wrap_i64 (i64.add (local.get $p) (i64.const 4))))
    (if (i64.gt_u (i64.add (i64.extend_i32_u (local.get $path)) (i64.extend_i32_u (local.get $path_len)))
                  (local.get $end))
      (then (return (call $bad_request))))

    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (local.set $digits (call $itoa (global.get $count) (i32.const 64)))
    (local.set $body_len (i32.add (i32.const 15) (local.get $path_len)))
    ;; status (4) + header count (4) + content-type header (4+12 + 4+10)
    ;; + x-count header (4+7 + 4+digits) + body (4+body_len) = 57 + digits + body_len
    (local.set $size
      (i32.add (i32.add (i32.const 57) (local.get $digits)) (local.get $body_len)))
    ;; The request buffer is not freed: it is below the response on the bump
    ;; heap and tern_free releases both.
    (local.set $resp (call $alloc (local.get $size)))
    (if (i32.eqz (local.get $resp)) (then (return (i64.const 0))))

    (i32.store (local.get $resp) (i32.const 200))
    (i32.store offset=4 (local.get $resp) (i32.const 2))
    (local.set $at (i32.add (local.get $resp) (i32.const 8)))
    (local.set $at (call $field (local.get $at) (i32.const 32) (i32.const 12)))
    (local.set $at (call $field (local.get $at) (i32.const 48) (i32.const 10)))
    (local.set $at (call $field (local.get $at) (i32.const 16) (i32.const 7)))
    (local.set $at (call $field (local.get $at) (i32.const 64) (local.get $digits)))
    (i32.store (local.get $at) (local.get $body_len))
    (memory.copy (i32.add (local.get $at) (i32.const 4)) (i32.const 0) (i32.const 15))
    (memory.copy (i32.add (local.get $at) (i32.const 19)) (local.get $path) (local.get $path_len))
    (call $pack (local.get $resp) (local.get $size)))

  ;; 400 with no headers and an empty body: 12 bytes.
  (func $bad_request (result i64)
    (local $resp i32)
    (local.set $resp (call $alloc (i32.const 12)))
    (if (i32.eqz (local.get $resp)) (then (return (i64.const 0))))
    (i32.store (local.get $resp) (i32.const 400))
    (i32.store offset=4 (local.get $resp) (i32.const 0))
    (i32.store offset=8 (local.get $resp) (i32.const 0))
    (call $pack (local.get $resp) (i32.const 12)))
)
