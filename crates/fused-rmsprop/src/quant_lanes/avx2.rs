//! The codec on AVX2: eight `f32` lanes, masks as all-ones lanes (AVX2 has
//! no mask registers, no unsigned compare and no masked add: a lane's mask
//! is `-1`, so subtracting it adds one, and `max(a, b) == a` is `a >= b`
//! unsigned).

use core::arch::x86_64::{__m256, __m256i, _CMP_LT_OQ, _CMP_UNORD_Q};

use pulp::x86::V3;

use crate::quant_map::{BUCKET_SHIFT, BUCKETS_PER_SIGN, KEY_MASK, SMALLEST_BITS, Table};

const LANES: usize = 8;

/// One register's worth of `x` (exactly [`LANES`] elements).
#[inline(always)]
fn load(x: &[f32]) -> __m256 {
    let array: [f32; LANES] = x.try_into().expect("one register");
    bytemuck::cast(array)
}

/// `codes` (at most one block) as values: `map[code] * scale`.
#[inline(always)]
pub(super) fn dequantize(v3: V3, table: &Table, codes: &[u8], scale: f32, out: &mut [f32]) {
    let whole = codes.len() / LANES * LANES;
    let scale_lanes = v3.avx._mm256_set1_ps(scale);
    for (codes, out) in codes[..whole]
        .chunks_exact(LANES)
        .zip(out[..whole].chunks_exact_mut(LANES))
    {
        let mut bytes = [0u8; 16];
        bytes[..LANES].copy_from_slice(codes);
        let indices = v3.avx2._mm256_cvtepu8_epi32(bytemuck::cast(bytes));
        // SAFETY: `v3` proves AVX2. Every index is a `u8`, below the 256
        // entries of `table.values`, whose 4-byte elements the gather reads
        // (scale 4).
        let values = unsafe {
            v3.avx2
                ._mm256_i32gather_ps::<4>(table.values.as_ptr(), indices)
        };
        let scaled = v3.avx._mm256_mul_ps(values, scale_lanes);
        out.copy_from_slice(&bytemuck::cast::<_, [f32; LANES]>(scaled));
    }
    super::dequantize_tail(table, &codes[whole..], scale, &mut out[whole..]);
}

/// The largest finite magnitude of `values` (0 when there is none).
#[inline(always)]
pub(super) fn largest_finite(v3: V3, values: &[f32]) -> f32 {
    let whole = values.len() / LANES * LANES;
    let infinity = v3.avx._mm256_set1_ps(f32::INFINITY);
    let magnitude_bits = v3
        .avx
        ._mm256_castsi256_ps(v3.avx._mm256_set1_epi32(0x7FFF_FFFF));
    let mut largest = v3.avx._mm256_setzero_ps();
    for x in values[..whole].chunks_exact(LANES) {
        let magnitude = v3.avx._mm256_and_ps(load(x), magnitude_bits);
        // Below +Inf: finite (a NaN compares false).
        let finite = v3.avx._mm256_cmp_ps::<_CMP_LT_OQ>(magnitude, infinity);
        let larger = v3.avx._mm256_max_ps(largest, magnitude);
        largest = v3.avx._mm256_blendv_ps(largest, larger, finite);
    }
    let lanes: [f32; LANES] = bytemuck::cast(largest);
    let largest = lanes.into_iter().fold(0.0f32, f32::max);
    super::largest_finite_tail(&values[whole..], largest)
}

/// The codes of `values / scale` into `codes`.
#[inline(always)]
pub(super) fn quantize(v3: V3, table: &Table, values: &[f32], scale: f32, codes: &mut [u8]) {
    let (avx, avx2) = (v3.avx, v3.avx2);
    let whole = values.len() / LANES * LANES;
    let scale_lanes = avx._mm256_set1_ps(scale);
    let (zero, one, minus_one) = (
        avx._mm256_setzero_ps(),
        avx._mm256_set1_ps(1.0),
        avx._mm256_set1_ps(-1.0),
    );
    let magnitude_bits = avx._mm256_set1_epi32(0x7FFF_FFFF);
    let smallest = avx._mm256_set1_epi32(SMALLEST_BITS as i32);
    let key_mask = avx._mm256_set1_epi32(KEY_MASK as i32);
    let negative_offset = avx._mm256_set1_epi32(BUCKETS_PER_SIGN as i32);
    let byte = avx._mm256_set1_epi32(0xFF);
    let zero_bits: __m256i = avx._mm256_setzero_si256();
    for (x, codes) in values[..whole]
        .chunks_exact(LANES)
        .zip(codes[..whole].chunks_exact_mut(LANES))
    {
        let ratio = avx._mm256_div_ps(load(x), scale_lanes);
        let nan = avx._mm256_cmp_ps::<_CMP_UNORD_Q>(ratio, ratio);
        let ratio = avx._mm256_blendv_ps(ratio, zero, nan);
        let ratio = avx._mm256_min_ps(avx._mm256_max_ps(ratio, minus_one), one);
        // `quant_map::bucket_and_key`, lane by lane.
        let bits = avx._mm256_castps_si256(ratio);
        let magnitude =
            avx2._mm256_max_epu32(avx2._mm256_and_si256(bits, magnitude_bits), smallest);
        let bucket = avx2._mm256_srli_epi32::<{ BUCKET_SHIFT as i32 }>(
            avx2._mm256_sub_epi32(magnitude, smallest),
        );
        let key = avx2._mm256_and_si256(magnitude, key_mask);
        let negative = avx2._mm256_cmpgt_epi32(zero_bits, bits);
        let bucket =
            avx2._mm256_add_epi32(bucket, avx2._mm256_and_si256(negative, negative_offset));
        let key = avx2._mm256_xor_si256(key, avx2._mm256_and_si256(negative, key_mask));
        // SAFETY: `v3` proves AVX2. `bucket` is below
        // `2 * BUCKETS_PER_SIGN`, the length of `table.buckets`, whose
        // 4-byte elements the gather reads (scale 4).
        let entry = unsafe {
            avx2._mm256_i32gather_epi32::<4>(table.buckets.as_ptr().cast::<i32>(), bucket)
        };
        let threshold = avx2._mm256_srli_epi32::<8>(entry);
        // All ones where `key >= threshold` (unsigned).
        let above = avx2._mm256_cmpeq_epi32(avx2._mm256_max_epu32(key, threshold), key);
        let code = avx2._mm256_sub_epi32(avx2._mm256_and_si256(entry, byte), above);
        let lanes: [u32; LANES] = bytemuck::cast(code);
        for (out, lane) in codes.iter_mut().zip(lanes) {
            *out = lane as u8;
        }
    }
    super::quantize_tail(table, &values[whole..], scale, &mut codes[whole..]);
}
