//! The image hash, the xxh3-128 of a snapshot's image, computed in the
//! same pass that copies the image's pages.
//!
//! Copying a chunk and then hashing it while it was in cache read every
//! byte twice, and xxh3 as a portable build has it (SSE2) cost nearly as
//! much as the copy: a capture ran at half the speed of a memcpy. Where the
//! CPU has AVX2 (checked at run time), each 32 bytes of a page are loaded
//! once, stored to the image and folded into xxh3's accumulators from the
//! same register, so a capture reads and writes every stored byte once,
//! like a memcpy. Large images are written with non-temporal stores, as a
//! large memcpy is: they would not stay in cache anyway.
//!
//! The value is exactly `xxh3_128` of the bytes fed (tests compare it with
//! the `xxhash-rust` crate's), so the snapshot format is unchanged and a
//! file's image verifies the same whichever way it was hashed. The fused
//! path takes pieces of whole 1 KiB blocks (xxh3's block with its default
//! secret), which every image is made of (runs are whole pages; compressed
//! ones are padded to whole pages); any other piece makes [`ImageHash::digest`]
//! answer `None`, and the image is hashed again from its bytes.

use std::mem::MaybeUninit;

use xxhash_rust::xxh3::{xxh3_128, Xxh3};

/// xxh3's stripe: 64 bytes folded into the eight accumulators at once.
const STRIPE: usize = 64;
/// xxh3's block with the default secret: 16 stripes, then a scramble.
const BLOCK: usize = 1024;
const STRIPES_PER_BLOCK: usize = BLOCK / STRIPE;
/// Without AVX2, pages are copied this many bytes at a time and hashed
/// right after, while they are in cache.
const PORTABLE_CHUNK: usize = 32 << 10;

/// xxh3's default secret (`kSecret` of the reference implementation).
const SECRET: [u8; 192] = [
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
];
/// Where, in the secret, the key of the scramble after each block starts.
#[cfg(target_arch = "x86_64")]
const SCRAMBLE_KEY: usize = SECRET.len() - STRIPE;
/// Where the key of the input's last stripe starts.
const LAST_STRIPE_KEY: usize = SECRET.len() - STRIPE - 7;
/// Where the keys of the two final merges start (low and high half).
const MERGE_LO_KEY: usize = 11;
const MERGE_HI_KEY: usize = SECRET.len() - STRIPE - 11;

const PRIME32_1: u64 = 0x9E37_79B1;
const PRIME32_2: u64 = 0x85EB_CA77;
const PRIME32_3: u64 = 0xC2B2_AE3D;
const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;
const PRIME64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const PRIME64_3: u64 = 0x1656_67B1_9E37_79F9;
const PRIME64_4: u64 = 0x85EB_CA77_C2B2_AE63;
const PRIME64_5: u64 = 0x27D4_EB2F_1656_67C5;
const INITIAL_ACC: [u64; 8] = [
    PRIME32_3, PRIME64_1, PRIME64_2, PRIME64_3, PRIME64_4, PRIME32_2, PRIME64_5, PRIME32_1,
];

/// The xxh3-128 of `bytes`: the fused path's hashing alone where it
/// applies (AVX2, whole blocks), `xxhash-rust`'s otherwise. What an image
/// is checked with when a snapshot is read.
pub(crate) fn image_hash(bytes: &[u8]) -> u128 {
    let mut h = ImageHash::new();
    h.update(bytes);
    h.digest().unwrap_or_else(|| xxh3_128(bytes))
}

/// The running xxh3-128 of an image.
pub(crate) enum ImageHash {
    /// AVX2: copied and hashed in one pass.
    Fused(Fused),
    /// Anywhere else: `xxhash-rust`'s streaming hasher after each chunk.
    Portable(Box<Xxh3>),
}

/// xxh3's state for a long input fed in whole blocks. Each block's last
/// stripe is held back until the next block comes: if none does, it is the
/// input's last stripe, which xxh3 hashes with another key and no scramble.
pub(crate) struct Fused {
    acc: [u64; 8],
    /// The last stripe of the last block fed (its other 15 stripes are in
    /// `acc` already); `None` before the first block.
    held: Option<[u8; STRIPE]>,
    len: u64,
    /// A piece that was not whole blocks came: `acc` is no longer xxh3's
    /// state, and the image must be hashed again from its bytes.
    spoilt: bool,
    /// Non-temporal stores were issued since the last [`ImageHash::fence`].
    streamed: bool,
}

impl ImageHash {
    /// The fused hash where the CPU allows it, the portable one otherwise.
    pub(crate) fn new() -> ImageHash {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return ImageHash::Fused(Fused {
                acc: INITIAL_ACC,
                held: None,
                len: 0,
                spoilt: false,
                streamed: false,
            });
        }
        Self::portable()
    }

    /// `xxhash-rust`'s streaming hasher, whatever the CPU.
    pub(crate) fn portable() -> ImageHash {
        ImageHash::Portable(Box::new(Xxh3::new()))
    }

    /// Copies `src` into `dst` (of the same length) and hashes it.
    /// `stream`: write with non-temporal stores, past the cache (for large
    /// images, which would not stay in it); call [`ImageHash::fence`] after
    /// the last copy, before the buffer is handed to anyone.
    pub(crate) fn copy(&mut self, src: &[u8], dst: &mut [MaybeUninit<u8>], stream: bool) {
        assert_eq!(src.len(), dst.len(), "a copy between pieces of one length");
        match self {
            #[cfg(target_arch = "x86_64")]
            ImageHash::Fused(f) if !f.spoilt && src.len().is_multiple_of(BLOCK) => {
                // Non-temporal stores of 16 bytes need 16-byte alignment
                // (which the allocator gives every large buffer).
                let dst_ptr: *mut u8 = dst.as_mut_ptr().cast();
                let stream = stream && (dst_ptr as usize).is_multiple_of(16);
                f.streamed |= stream;
                // SAFETY: `Fused` is only made where AVX2 was detected;
                // `src` and `dst` are `src.len()` bytes each (checked
                // above), `dst` is borrowed exclusively so they cannot
                // overlap, and `dst_ptr` is 16-aligned when `stream`.
                unsafe {
                    if stream {
                        f.blocks_avx2::<true>(src.as_ptr(), dst_ptr, src.len())
                    } else {
                        f.blocks_avx2::<false>(src.as_ptr(), dst_ptr, src.len())
                    }
                }
            }
            _ => {
                for (s, d) in src
                    .chunks(PORTABLE_CHUNK)
                    .zip(dst.chunks_mut(PORTABLE_CHUNK))
                {
                    // SAFETY: `s` and `d` are the same length (the same
                    // chunks of two slices of one length), and `d` is
                    // borrowed exclusively, so they cannot overlap.
                    unsafe {
                        std::ptr::copy_nonoverlapping(s.as_ptr(), d.as_mut_ptr().cast(), s.len())
                    };
                    self.update(s);
                }
            }
        }
    }

    /// Orders the non-temporal stores of the copies so far before every
    /// later store (they are weakly ordered: without it another thread
    /// handed the buffer could read stale bytes). Once per image, not per
    /// copy: a fence per page of a sparse memory would cost more than the
    /// stores save.
    pub(crate) fn fence(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if let ImageHash::Fused(f) = self {
            if std::mem::take(&mut f.streamed) {
                // SAFETY: `sfence` has no preconditions (SSE, which every
                // x86_64 CPU has).
                unsafe { std::arch::x86_64::_mm_sfence() };
            }
        }
    }

    /// Hashes `bytes` (already in place).
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            ImageHash::Fused(f) if !f.spoilt && bytes.len().is_multiple_of(BLOCK) => {
                // SAFETY: as in `copy`, with nothing to write.
                unsafe {
                    f.blocks_avx2::<false>(bytes.as_ptr(), std::ptr::null_mut(), bytes.len())
                };
            }
            ImageHash::Fused(f) => f.spoilt = true,
            ImageHash::Portable(h) => h.update(bytes),
        }
    }

    /// The xxh3-128 of everything fed, or `None` when it must be computed
    /// again from the bytes (a piece was not whole blocks).
    pub(crate) fn digest(&self) -> Option<u128> {
        match self {
            ImageHash::Fused(f) if f.spoilt => None,
            ImageHash::Fused(f) => Some(f.digest()),
            ImageHash::Portable(h) => Some(h.digest128()),
        }
    }
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// xxh3's accumulation of one stripe, portably (for the last one).
fn accumulate(acc: &mut [u64; 8], stripe: &[u8], key: &[u8]) {
    for i in 0..8 {
        let data = read_u64(stripe, 8 * i);
        let dk = data ^ read_u64(key, 8 * i);
        acc[i ^ 1] = acc[i ^ 1].wrapping_add(data);
        acc[i] = acc[i].wrapping_add((dk & 0xFFFF_FFFF).wrapping_mul(dk >> 32));
    }
}

fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 37;
    h = h.wrapping_mul(0x1656_6791_9E37_79F9);
    h ^ (h >> 32)
}

/// xxh3's merge of the accumulators into one half of the result.
fn merge(acc: &[u64; 8], key: &[u8], start: u64) -> u64 {
    let mut r = start;
    for i in 0..4 {
        let a = acc[2 * i] ^ read_u64(key, 16 * i);
        let b = acc[2 * i + 1] ^ read_u64(key, 16 * i + 8);
        let p = a as u128 * b as u128;
        r = r.wrapping_add(p as u64 ^ (p >> 64) as u64);
    }
    avalanche(r)
}

impl Fused {
    fn digest(&self) -> u128 {
        let Some(last) = &self.held else {
            return xxh3_128(&[]);
        };
        let mut acc = self.acc;
        accumulate(&mut acc, last, &SECRET[LAST_STRIPE_KEY..]);
        let lo = merge(
            &acc,
            &SECRET[MERGE_LO_KEY..],
            self.len.wrapping_mul(PRIME64_1),
        );
        let hi = merge(
            &acc,
            &SECRET[MERGE_HI_KEY..],
            !self.len.wrapping_mul(PRIME64_2),
        );
        (hi as u128) << 64 | lo as u128
    }

    /// Hashes `len` bytes (whole blocks) from `src`, and copies them to
    /// `dst` on the way unless it is null; `STREAM`: with non-temporal
    /// stores.
    ///
    /// # Safety
    /// The CPU has AVX2; `src` is readable and `dst`, unless null, writable
    /// for `len` bytes; they do not overlap; `dst` is 16-aligned if
    /// `STREAM`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn blocks_avx2<const STREAM: bool>(&mut self, src: *const u8, dst: *mut u8, len: usize) {
        use std::arch::x86_64::*;
        debug_assert!(len.is_multiple_of(BLOCK));
        let key = SECRET.as_ptr();
        // SAFETY (every pointer access below): the secret is 192 bytes and
        // every key read ends inside it (a stripe's key starts at most at
        // byte 120, the scramble's at 128); `src` and `dst` accesses stay
        // below `len`, as the caller promised.
        unsafe {
            let mut a0 = _mm256_loadu_si256(self.acc.as_ptr().cast());
            let mut a1 = _mm256_loadu_si256(self.acc.as_ptr().add(4).cast());
            // One half-stripe into its accumulators (xxh3's accumulate_512).
            macro_rules! accumulate {
                ($a:ident, $data:expr, $key:expr) => {{
                    let data = $data;
                    let dk = _mm256_xor_si256(data, _mm256_loadu_si256($key.cast()));
                    let product = _mm256_mul_epu32(dk, _mm256_srli_epi64(dk, 32));
                    let swapped = _mm256_shuffle_epi32(data, 0b01_00_11_10);
                    $a = _mm256_add_epi64($a, _mm256_add_epi64(product, swapped));
                }};
            }
            // xxh3's scramble_acc.
            macro_rules! scramble {
                ($a:ident, $key:expr) => {{
                    let prime = _mm256_set1_epi32(PRIME32_1 as i32);
                    let x = _mm256_xor_si256($a, _mm256_srli_epi64($a, 47));
                    let dk = _mm256_xor_si256(x, _mm256_loadu_si256($key.cast()));
                    let lo = _mm256_mul_epu32(dk, prime);
                    let hi = _mm256_mul_epu32(_mm256_srli_epi64(dk, 32), prime);
                    $a = _mm256_add_epi64(lo, _mm256_slli_epi64(hi, 32));
                }};
            }
            let mut held = self.held.map(|h| {
                (
                    _mm256_loadu_si256(h.as_ptr().cast()),
                    _mm256_loadu_si256(h.as_ptr().add(32).cast()),
                )
            });
            let mut at = 0;
            while at < len {
                // The block before this one was not the last: its held
                // stripe is an ordinary one, and the block ends with a
                // scramble.
                if let Some((h0, h1)) = held {
                    let k = key.add((STRIPES_PER_BLOCK - 1) * 8);
                    accumulate!(a0, h0, k);
                    accumulate!(a1, h1, k.add(32));
                    scramble!(a0, key.add(SCRAMBLE_KEY));
                    scramble!(a1, key.add(SCRAMBLE_KEY + 32));
                }
                let s = src.add(at);
                for i in 0..STRIPES_PER_BLOCK {
                    let x0 = _mm256_loadu_si256(s.add(i * STRIPE).cast());
                    let x1 = _mm256_loadu_si256(s.add(i * STRIPE + 32).cast());
                    if !dst.is_null() {
                        let d = dst.add(at + i * STRIPE);
                        if STREAM {
                            _mm_stream_si128(d.cast(), _mm256_castsi256_si128(x0));
                            _mm_stream_si128(d.add(16).cast(), _mm256_extracti128_si256::<1>(x0));
                            _mm_stream_si128(d.add(32).cast(), _mm256_castsi256_si128(x1));
                            _mm_stream_si128(d.add(48).cast(), _mm256_extracti128_si256::<1>(x1));
                        } else {
                            _mm256_storeu_si256(d.cast(), x0);
                            _mm256_storeu_si256(d.add(32).cast(), x1);
                        }
                    }
                    if i + 1 < STRIPES_PER_BLOCK {
                        accumulate!(a0, x0, key.add(i * 8));
                        accumulate!(a1, x1, key.add(i * 8 + 32));
                    } else {
                        held = Some((x0, x1));
                    }
                }
                at += BLOCK;
            }
            _mm256_storeu_si256(self.acc.as_mut_ptr().cast(), a0);
            _mm256_storeu_si256(self.acc.as_mut_ptr().add(4).cast(), a1);
            if let Some((h0, h1)) = held {
                let mut h = [0u8; STRIPE];
                _mm256_storeu_si256(h.as_mut_ptr().cast(), h0);
                _mm256_storeu_si256(h.as_mut_ptr().add(32).cast(), h1);
                self.held = Some(h);
            }
        }
        self.len += len as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Feeds `data` in pieces ending at `cuts`, copying each into a buffer
    /// `skew` bytes past a 16-byte boundary; returns the digest and the copy.
    fn copy_in_pieces(
        mut h: ImageHash,
        data: &[u8],
        cuts: &[usize],
        stream: bool,
        skew: usize,
    ) -> (Option<u128>, Vec<u8>) {
        let mut buf = vec![MaybeUninit::<u8>::uninit(); data.len() + 32];
        let off = (16 - buf.as_ptr() as usize % 16) % 16 + skew;
        let out = &mut buf[off..off + data.len()];
        let mut at = 0;
        for &end in cuts.iter().chain([&data.len()]) {
            h.copy(&data[at..end], &mut out[at..end], stream);
            at = end;
        }
        h.fence();
        // SAFETY: every byte of `out` was written by the copies above.
        let copied = out.iter().map(|b| unsafe { b.assume_init() }).collect();
        (h.digest(), copied)
    }

    #[test]
    fn fused_and_portable_hashes_are_xxh3_128() {
        let data = bytes(70 * BLOCK, 7);
        for blocks in [0, 1, 2, 3, 4, 15, 16, 17, 64, 70] {
            let d = &data[..blocks * BLOCK];
            let want = xxh3_128(d);
            let half = blocks / 2 * BLOCK;
            let cuts: &[&[usize]] = &[
                &[],
                &[half],
                &[BLOCK.min(d.len()), half.max(BLOCK.min(d.len()))],
            ];
            for cuts in cuts {
                for (stream, skew) in [(false, 0), (true, 0), (true, 8), (false, 1)] {
                    for h in [ImageHash::new(), ImageHash::portable()] {
                        let (got, copied) = copy_in_pieces(h, d, cuts, stream, skew);
                        assert_eq!(got, Some(want), "{blocks} blocks, cuts {cuts:?}");
                        assert!(copied == d, "{blocks} blocks: the copy differs");
                    }
                }
            }
            assert_eq!(image_hash(d), want, "{blocks} blocks");
        }
    }

    #[test]
    fn pieces_that_are_not_whole_blocks_are_hashed_again() {
        let data = bytes(5 * BLOCK + 100, 9);
        for len in [1, 64, 100, BLOCK + 1, 5 * BLOCK + 100] {
            let d = &data[..len];
            // One odd piece: the fused hash gives up rather than answer wrong.
            let (got, copied) = copy_in_pieces(ImageHash::new(), d, &[], false, 0);
            assert!(got.is_none() || got == Some(xxh3_128(d)), "{len} bytes");
            assert!(copied == d);
            assert_eq!(image_hash(d), xxh3_128(d), "{len} bytes");
        }
        // Whole blocks, then an odd piece, then whole blocks again.
        let d = &data[..5 * BLOCK + 100];
        let (got, _) = copy_in_pieces(ImageHash::new(), d, &[2 * BLOCK, 2 * BLOCK + 100], false, 0);
        assert!(got.is_none() || got == Some(xxh3_128(d)));
    }

    #[test]
    fn one_changed_byte_changes_the_hash() {
        let mut data = bytes(8 * BLOCK, 11);
        let before = image_hash(&data);
        for at in [0, 63, 64, BLOCK - 1, 7 * BLOCK + 960, 8 * BLOCK - 1] {
            data[at] ^= 0x10;
            assert_ne!(image_hash(&data), before, "byte {at}");
            data[at] ^= 0x10;
        }
        assert_eq!(image_hash(&data), before);
    }
}
