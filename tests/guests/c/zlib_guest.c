/*
 * tern test guest: zlib (vendored, unmodified, in ./zlib) driven through
 * numeric exports. This harness is the only tern-specific part: zlib itself
 * was not written for tern.
 *
 * Built as a wasm32-wasi reactor (clang -mexec-model=reactor) by
 * tests/artifacts/build.rs. All state lives in linear memory between calls:
 *
 *   - a deflate stream (its internal state, window and hash chains, which
 *     zlib allocates with malloc) that every `feed` continues;
 *   - an inflate stream that `drain` continues over the compressed output,
 *     checking what it gets back against what was fed;
 *   - malloc'd, realloc-grown buffers holding everything fed and everything
 *     compressed so far;
 *   - the generator that makes the input, which carries on across calls.
 *
 * So a snapshot taken between any two calls must carry the heap exactly
 * for the next call to give the same answer as a run that never stopped.
 *
 * Exports (all i32 arguments):
 *   init(level)     start a new stream at `level` (-1..9); frees the old one.
 *                   Returns a zlib code (0 = Z_OK).
 *   feed(n, seed)   deflate n generated, compressible bytes (Z_NO_FLUSH).
 *                   Returns out_len(), or a negative zlib code.
 *   flush()         deflate with Z_SYNC_FLUSH. Returns out_len() or < 0.
 *   finish()        deflate with Z_FINISH: the stream is complete and takes
 *                   no more input. Returns out_len() or < 0.
 *   in_len()        bytes fed so far.
 *   out_len()       compressed bytes produced so far.
 *   out_crc()       crc32 of all compressed bytes so far (i64, unsigned).
 *   in_adler()      deflate's running adler32 of its input (i64, unsigned).
 *   drain()         continue the persistent inflate stream over the
 *                   compressed bytes not yet given to it, comparing its
 *                   output with the fed bytes. Returns the number of bytes
 *                   inflated and checked so far, or -1 after a mismatch.
 *   roundtrip_ok()  inflate all compressed output so far with a fresh
 *                   stream: 1 if it is a prefix of what was fed, covers at
 *                   least everything before the last flush, and (after
 *                   finish) is all of it with a valid trailer; else 0.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "zlib.h"

#define EXPORT(name) __attribute__((export_name(name)))

#define CHUNK 16384
#define MAX_FEED (1 << 24)

static z_stream def;
static int def_live;
static int finished;

static unsigned char *in_buf;
static size_t in_used, in_cap;
static size_t flushed_in; /* in_used at the last flush or finish */

static unsigned char *out_buf;
static size_t out_used, out_cap;
static uint32_t out_crc32;

static z_stream inf;
static int inf_live;
static size_t inf_fed;     /* compressed bytes given to `inf` so far */
static size_t inf_checked; /* bytes `inf` produced, all equal to the input */
static int inf_bad;
static unsigned char *inf_chunk;

static uint32_t rng = 0x2545F491u;

static uint32_t next_rand(void) {
    /* xorshift32 */
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static int reserve(unsigned char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t cap2 = *cap ? *cap : 4096;
    while (cap2 < need) cap2 *= 2;
    unsigned char *b = realloc(*buf, cap2);
    if (!b) return -1;
    *buf = b;
    *cap = cap2;
    return 0;
}

static void release(void) {
    if (def_live) deflateEnd(&def);
    if (inf_live) inflateEnd(&inf);
    def_live = inf_live = 0;
    free(in_buf);
    free(out_buf);
    free(inf_chunk);
    in_buf = out_buf = inf_chunk = NULL;
    in_used = in_cap = out_used = out_cap = flushed_in = 0;
    inf_fed = inf_checked = 0;
    inf_bad = finished = 0;
    out_crc32 = crc32(0L, Z_NULL, 0);
}

EXPORT("init")
int32_t tern_init(int32_t level) {
    release();
    memset(&def, 0, sizeof def);
    memset(&inf, 0, sizeof inf);
    int rc = deflateInit(&def, level);
    if (rc != Z_OK) return rc;
    def_live = 1;
    rc = inflateInit(&inf);
    if (rc != Z_OK) return rc;
    inf_live = 1;
    inf_chunk = malloc(CHUNK);
    return inf_chunk ? Z_OK : Z_MEM_ERROR;
}

/* Runs deflate over in_buf[from..from+n) with `flush`, appending to out_buf. */
static int run_deflate(size_t from, size_t n, int flush) {
    def.next_in = in_buf ? in_buf + from : Z_NULL;
    def.avail_in = (uInt)n;
    for (;;) {
        if (reserve(&out_buf, &out_cap, out_used + CHUNK)) return Z_MEM_ERROR;
        def.next_out = out_buf + out_used;
        def.avail_out = CHUNK;
        int rc = deflate(&def, flush);
        if (rc == Z_STREAM_ERROR) return rc;
        size_t got = CHUNK - def.avail_out;
        out_crc32 = crc32(out_crc32, out_buf + out_used, (uInt)got);
        out_used += got;
        if (rc == Z_STREAM_END) return Z_OK;
        /* Z_BUF_ERROR only means no progress was possible: not fatal. */
        if (def.avail_out != 0 && def.avail_in == 0 && flush != Z_FINISH) return Z_OK;
    }
}

/* Appends n compressible bytes: words from a small vocabulary, numbers,
   and the odd random byte. */
static void generate(unsigned char *dst, size_t n) {
    static const char *const words[] = {
        "tern ", "snapshot ", "restore ", "wasm ", "heap ", "stream ",
        "deflate ", "inflate ", "between two calls ", "linear memory ", "\n",
    };
    const size_t nwords = sizeof words / sizeof words[0];
    size_t i = 0;
    while (i < n) {
        uint32_t r = next_rand();
        char tmp[16];
        const char *s;
        size_t len;
        if ((r & 15) == 0) {
            tmp[0] = (char)(r >> 8);
            s = tmp;
            len = 1;
        } else if ((r & 15) == 1) {
            uint32_t v = (r >> 8) % 100000;
            size_t k = 0;
            do {
                tmp[k++] = (char)('0' + v % 10);
                v /= 10;
            } while (v);
            tmp[k++] = ' ';
            s = tmp;
            len = k;
        } else {
            s = words[(r >> 4) % nwords];
            len = strlen(s);
        }
        if (len > n - i) len = n - i;
        memcpy(dst + i, s, len);
        i += len;
    }
}

EXPORT("feed")
int32_t tern_feed(int32_t n, int32_t seed) {
    if (!def_live || finished) return Z_STREAM_ERROR;
    if (n < 0 || n > MAX_FEED) return Z_STREAM_ERROR;
    if (reserve(&in_buf, &in_cap, in_used + (size_t)n)) return Z_MEM_ERROR;
    rng ^= (uint32_t)seed * 0x9E3779B9u;
    if (rng == 0) rng = 1;
    generate(in_buf + in_used, (size_t)n);
    size_t from = in_used;
    in_used += (size_t)n;
    int rc = run_deflate(from, (size_t)n, Z_NO_FLUSH);
    return rc == Z_OK ? (int32_t)out_used : rc;
}

EXPORT("flush")
int32_t tern_flush(void) {
    if (!def_live || finished) return Z_STREAM_ERROR;
    int rc = run_deflate(in_used, 0, Z_SYNC_FLUSH);
    if (rc != Z_OK) return rc;
    flushed_in = in_used;
    return (int32_t)out_used;
}

EXPORT("finish")
int32_t tern_finish(void) {
    if (!def_live || finished) return Z_STREAM_ERROR;
    int rc = run_deflate(in_used, 0, Z_FINISH);
    if (rc != Z_OK) return rc;
    finished = 1;
    flushed_in = in_used;
    return (int32_t)out_used;
}

EXPORT("in_len")
int32_t tern_in_len(void) { return (int32_t)in_used; }

EXPORT("out_len")
int32_t tern_out_len(void) { return (int32_t)out_used; }

EXPORT("out_crc")
int64_t tern_out_crc(void) { return (int64_t)out_crc32; }

EXPORT("in_adler")
int64_t tern_in_adler(void) { return def_live ? (int64_t)(uint32_t)def.adler : -1; }

EXPORT("drain")
int32_t tern_drain(void) {
    if (!inf_live) return Z_STREAM_ERROR;
    if (inf_bad) return -1;
    inf.next_in = out_buf ? out_buf + inf_fed : Z_NULL;
    inf.avail_in = (uInt)(out_used - inf_fed);
    for (;;) {
        inf.next_out = inf_chunk;
        inf.avail_out = CHUNK;
        int rc = inflate(&inf, Z_NO_FLUSH);
        size_t got = CHUNK - inf.avail_out;
        if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) {
            inf_bad = 1;
            return -1;
        }
        if (inf_checked + got > in_used || memcmp(inf_chunk, in_buf + inf_checked, got) != 0) {
            inf_bad = 1;
            return -1;
        }
        inf_checked += got;
        if (rc == Z_STREAM_END || (inf.avail_in == 0 && inf.avail_out != 0)) break;
        if (rc == Z_BUF_ERROR) break;
    }
    inf_fed = out_used - inf.avail_in;
    return (int32_t)inf_checked;
}

EXPORT("roundtrip_ok")
int32_t tern_roundtrip_ok(void) {
    if (!def_live) return 0;
    z_stream s;
    memset(&s, 0, sizeof s);
    if (inflateInit(&s) != Z_OK) return 0;
    unsigned char *tmp = malloc(CHUNK);
    if (!tmp) {
        inflateEnd(&s);
        return 0;
    }
    s.next_in = out_buf;
    s.avail_in = (uInt)out_used;
    size_t produced = 0;
    int ok = 1, ended = 0;
    for (;;) {
        s.next_out = tmp;
        s.avail_out = CHUNK;
        int rc = inflate(&s, Z_NO_FLUSH);
        size_t got = CHUNK - s.avail_out;
        if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) {
            ok = 0;
            break;
        }
        if (produced + got > in_used || memcmp(tmp, in_buf + produced, got) != 0) {
            ok = 0;
            break;
        }
        produced += got;
        if (rc == Z_STREAM_END) {
            ended = 1;
            break;
        }
        if (s.avail_in == 0 && s.avail_out != 0) break;
        if (rc == Z_BUF_ERROR) break;
    }
    free(tmp);
    inflateEnd(&s);
    if (ok && produced < flushed_in) ok = 0;
    if (ok && finished && (!ended || produced != in_used || s.avail_in != 0)) ok = 0;
    return ok;
}
