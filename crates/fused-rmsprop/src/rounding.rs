//! The random bits of stochastic rounding: a counter-based generator, a pure
//! function of (seed, step, stream, element index), so that which thread,
//! chunk or instruction set steps an element never changes its bits.
//!
//! Per tensor and step, [`key`] mixes the seed, the step number and the
//! tensor's stream into 64 bits (SplitMix64's finalizer); per block of
//! `2^32` elements, the key and the block number are mixed again into 32
//! bits. Per element, [`random_bits`] hashes the low 32 bits of the
//! element's index, xored with that block key, through one round of a
//! 32-bit integer hash (C. Wellons' `lowbias32`: a bijection whose output
//! bits each flip with probability within 0.2% of 1/2 when one input bit
//! flips), so the elements of one tensor and step get distinct bits, and
//! another seed, step or stream permutes them. [`random_lanes`] computes the
//! same on a register of lanes with `u32` operations only (two multiplies
//! per register).

use pulp::Simd;

/// SplitMix64's output function: a bijection of 64 bits.
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The key of one tensor's step.
pub(crate) fn key(seed: u64, step: u64, stream: u64) -> u64 {
    mix64(mix64(mix64(seed) ^ step) ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[inline(always)]
fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^ (x >> 16)
}

/// The key of the block of `2^32` elements number `block`.
#[inline(always)]
fn block_key(key: u64, block: u64) -> u32 {
    mix64(key ^ block.wrapping_mul(0xD1B5_4A32_D192_ED03)) as u32
}

/// The 32 random bits of element `index` of a tensor stepped with `key`.
#[inline(always)]
pub(crate) fn random_bits(key: u64, index: u64) -> u32 {
    lowbias32(index as u32 ^ block_key(key, index >> 32))
}

#[inline(always)]
fn lowbias32_lanes<S: Simd>(simd: S, x: S::u32s) -> S::u32s {
    let shr = |x, n: u32| simd.wrapping_dyn_shr_u32s(x, simd.splat_u32s(n));
    let x = simd.xor_u32s(x, shr(x, 16));
    let x = simd.mul_u32s(x, simd.splat_u32s(0x7FEB_352D));
    let x = simd.xor_u32s(x, shr(x, 15));
    let x = simd.mul_u32s(x, simd.splat_u32s(0x846C_A68B));
    simd.xor_u32s(x, shr(x, 16))
}

/// `0, 1, 2, …` in the lanes of a register.
#[inline(always)]
pub(crate) fn iota<S: Simd>() -> S::u32s {
    let mut lanes: S::u32s = bytemuck::Zeroable::zeroed();
    for (i, lane) in bytemuck::cast_slice_mut::<S::u32s, u32>(core::slice::from_mut(&mut lanes))
        .iter_mut()
        .enumerate()
    {
        *lane = i as u32;
    }
    lanes
}

/// The random bits of a chunk's registers: [`random_lanes`] with the
/// block key kept from one register to the next (it changes once every
/// `2^32` elements), so a register costs one hash round and no scalar work.
pub(crate) struct LaneRandom<S: Simd> {
    key: u64,
    iota: S::u32s,
    block: u64,
    block_keys: S::u32s,
}

impl<S: Simd> LaneRandom<S> {
    /// The generator of a tensor stepped with `key`.
    #[inline(always)]
    pub(crate) fn new(simd: S, key: u64) -> Self {
        Self {
            key,
            iota: iota::<S>(),
            block: 0,
            block_keys: simd.splat_u32s(block_key(key, 0)),
        }
    }

    /// [`random_bits`] of elements `first, first + 1, …`, one per lane.
    #[inline(always)]
    pub(crate) fn bits(&mut self, simd: S, first: u64) -> S::u32s {
        let lanes = core::mem::size_of::<S::u32s>() / 4;
        let block = first >> 32;
        if (first as u32).checked_add(lanes as u32 - 1).is_none() {
            return random_lanes(simd, self.key, first, self.iota);
        }
        if block != self.block {
            self.block = block;
            self.block_keys = simd.splat_u32s(block_key(self.key, block));
        }
        let low = simd.add_u32s(simd.splat_u32s(first as u32), self.iota);
        lowbias32_lanes(simd, simd.xor_u32s(low, self.block_keys))
    }
}

/// [`random_bits`] of elements `first, first + 1, …` in the lanes of a
/// register; `iota` is [`iota`]`::<S>()`, computed once per chunk.
#[inline(always)]
pub(crate) fn random_lanes<S: Simd>(simd: S, key: u64, first: u64, iota: S::u32s) -> S::u32s {
    let lanes = core::mem::size_of::<S::u32s>() / 4;
    let low = simd.add_u32s(simd.splat_u32s(first as u32), iota);
    let block = first >> 32;
    let keys = if (first as u32).checked_add(lanes as u32 - 1).is_some() {
        simd.splat_u32s(block_key(key, block))
    } else {
        // The low halves wrap inside this register: the lanes past the wrap
        // belong to the next block.
        let wrapped = simd.less_than_u32s(low, simd.splat_u32s(first as u32));
        simd.select_u32s(
            wrapped,
            simd.splat_u32s(block_key(key, block.wrapping_add(1))),
            simd.splat_u32s(block_key(key, block)),
        )
    };
    lowbias32_lanes(simd, simd.xor_u32s(low, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_match_the_scalar_bits_across_a_2_pow_32_boundary() {
        let simd = pulp::Scalar::new();
        for first in [0u64, 1, (1 << 32) - 1, 1 << 32, u64::MAX - 1] {
            let got: u32 = random_lanes(simd, 42, first, iota::<pulp::Scalar>());
            assert_eq!(got, random_bits(42, first));
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(v3) = pulp::x86::V3::try_new() {
            struct Check;
            impl pulp::WithSimd for Check {
                type Output = ();
                fn with_simd<S: Simd>(self, simd: S) {
                    let mut cached = LaneRandom::<S>::new(simd, 7);
                    for first in [0u64, 16, (1 << 32) - 3, (1 << 32) - 8, 77 << 32, 5] {
                        let got = random_lanes(simd, 7, first, iota::<S>());
                        let again = cached.bits(simd, first);
                        assert_eq!(
                            bytemuck::cast_slice::<S::u32s, u32>(core::slice::from_ref(&again)),
                            bytemuck::cast_slice::<S::u32s, u32>(core::slice::from_ref(&got)),
                        );
                        let got: &[u32] = bytemuck::cast_slice(core::slice::from_ref(&got));
                        for (i, bits) in got.iter().enumerate() {
                            assert_eq!(*bits, random_bits(7, first + i as u64), "{first} + {i}");
                        }
                    }
                }
            }
            pulp::Simd::vectorize(v3, Check);
        }
    }
}
