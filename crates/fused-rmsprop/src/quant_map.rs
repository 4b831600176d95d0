//! The 256-value maps of 8-bit optimizer state, and the one rule that turns
//! a value into a code.
//!
//! A code is an index into a sorted map of 256 `f32` values in `[-1, 1]`;
//! an element's value is `map[code] * scale`, with one scale per block of
//! elements (module `blockwise8`). The maps are bitsandbytes' "dynamic"
//! maps (`bitsandbytes.functional.create_dynamic_map`): seven decades from
//! about `1e-7` to `1`, each split linearly, finer near zero; the unsigned
//! map spends all 256 codes on `[0, 1]`, the signed one 127 on each side of
//! zero plus `0` and `1`.
//!
//! **The rounding rule** ([`QuantMap::quantize`]): the code of the map
//! value nearest to `x` in exact arithmetic; a value exactly halfway
//! between two map values takes the lower one (as `argmin` over the sorted
//! map does in bitsandbytes' PyTorch reference, which returns the first of
//! equal distances). Every path uses these thresholds, so every path
//! writes the same codes: the specification finds the code by binary
//! search over them, the fast path by a table indexed with the top bits of
//! `x` and one comparison, and a test checks the two agree on both sides
//! of every threshold.

use std::sync::OnceLock;

use crate::quant_guess::Guess;

/// Which of the 256-value maps a quantized buffer uses.
///
/// ```
/// use fused_rmsprop::QuantMap;
/// let unsigned = QuantMap::DynamicUnsigned.values();
/// assert_eq!((unsigned[0], unsigned[255]), (0.0, 1.0));
/// let signed = QuantMap::DynamicSigned.values();
/// assert_eq!(signed.iter().filter(|v| **v >= 0.0).count(), 129);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum QuantMap {
    /// bitsandbytes' `create_dynamic_map(signed=False)`: 256 values in
    /// `[0, 1]`, for a buffer that is never negative (the square average).
    DynamicUnsigned,
    /// bitsandbytes' `create_dynamic_map(signed=True)`: 256 values in
    /// `[-1, 1]`, for the gradient average and the momentum buffer (and
    /// the square average in bitsandbytes' own `RMSprop8bit`).
    DynamicSigned,
}

/// A map with what quantizing to it needs, built once per process.
pub(crate) struct Table {
    /// The map, sorted ascending.
    pub values: [f32; 256],
    /// `upper[k]`: the smallest `f32` that quantizes to a code above `k`
    /// (just above the midpoint of `values[k]` and `values[k + 1]`);
    /// `upper[255]` is `+Inf`, which no finite input reaches.
    pub upper: [f32; 256],
    /// Per bucket ([`bucket_and_key`]): the code of its lowest value in
    /// the low 8 bits, and above them the key of its threshold (`2^15`, above
    /// every key, when it holds none): `x` takes the code, or the next one
    /// when its key is at or above the threshold's.
    pub buckets: Vec<u32>,
    /// The code of `0.0`.
    pub zero_code: u8,
    /// `values` as byte planes: `value_planes[p][k]` is byte `p`
    /// (little-endian) of `values[k]`'s bits, for lookups by byte permutes.
    pub value_planes: [[u8; 256]; 4],
    /// `upper` as byte planes, as `planes`.
    pub upper_planes: [[u8; 256]; 4],
    /// The first guess at a code that quantizing without a gather starts
    /// from (module `quant_guess`).
    pub guess: Guess,
}

/// The byte planes of 256 `f32`s: `planes[p][k]` is byte `p`
/// (little-endian) of `values[k]`'s bits.
fn byte_planes(values: &[f32; 256]) -> [[u8; 256]; 4] {
    core::array::from_fn(|p| core::array::from_fn(|k| values[k].to_bits().to_le_bytes()[p]))
}

/// How many low bits of an `f32` a bucket of the fast lookup spans: a
/// bucket is 1/256 of an octave, narrower than the gap between any two
/// thresholds of either map (checked when the table is built), so it holds
/// one threshold at most.
pub(crate) const BUCKET_SHIFT: u32 = 15;
/// The bits of `2^-24`: magnitudes below it are looked up as it (they all
/// take the code of zero, far below the maps' smallest threshold; checked
/// when the table is built), which keeps the table to the 24 octaves above.
pub(crate) const SMALLEST_BITS: u32 = 0x3380_0000;
/// Buckets per sign, from `2^-24` to `1`.
pub(crate) const BUCKETS_PER_SIGN: usize =
    ((0x3F80_0000 - SMALLEST_BITS) >> BUCKET_SHIFT) as usize + 1;
/// The low bits of an `f32` within its bucket.
pub(crate) const KEY_MASK: u32 = (1 << BUCKET_SHIFT) - 1;

/// The table entry of `x` in `[-1, 1]` (not NaN), and `x`'s key within its
/// bucket: keys grow with `x`, for negative `x` too (their bits are
/// complemented), so `x` is at or above a threshold of the same bucket
/// exactly when its key is at or above the threshold's.
#[inline(always)]
pub(crate) fn bucket_and_key(x: f32) -> (usize, u32) {
    let bits = x.to_bits();
    let magnitude = (bits & 0x7FFF_FFFF).max(SMALLEST_BITS);
    let offset = ((magnitude - SMALLEST_BITS) >> BUCKET_SHIFT) as usize;
    let low = magnitude & KEY_MASK;
    if bits >> 31 == 0 {
        (offset, low)
    } else {
        (BUCKETS_PER_SIGN + offset, low ^ KEY_MASK)
    }
}

impl QuantMap {
    /// The 256 values, sorted ascending.
    ///
    /// ```
    /// use fused_rmsprop::QuantMap;
    /// let v = QuantMap::DynamicUnsigned.values();
    /// assert!(v.windows(2).all(|w| w[0] < w[1]));
    /// ```
    pub fn values(self) -> &'static [f32; 256] {
        &self.table().values
    }

    /// The code of `x`: the nearest map value, an exact midpoint going to
    /// the lower code. `x` outside `[-1, 1]` takes the end code; NaN takes
    /// the code of zero.
    ///
    /// ```
    /// use fused_rmsprop::QuantMap;
    /// let map = QuantMap::DynamicUnsigned;
    /// assert_eq!(map.quantize(1.0), 255);
    /// assert_eq!(map.quantize(0.0), 0);
    /// let (a, b) = (map.values()[200], map.values()[201]);
    /// let midpoint = ((a as f64 + b as f64) / 2.0) as f32;
    /// assert_eq!(map.quantize(midpoint), if (midpoint as f64) > (a as f64 + b as f64) / 2.0 { 201 } else { 200 });
    /// assert_eq!(map.quantize(f32::NAN), 0);
    /// ```
    pub fn quantize(self, x: f32) -> u8 {
        let table = self.table();
        quantize_spec(table, clamp_input(x))
    }

    /// The value of `code`: `values()[code]`.
    ///
    /// ```
    /// use fused_rmsprop::QuantMap;
    /// let map = QuantMap::DynamicSigned;
    /// assert_eq!(map.dequantize(map.quantize(1.0)), 1.0);
    /// assert_eq!(map.quantize(-1.0), 0); // the lowest value, -0.993
    /// ```
    pub fn dequantize(self, code: u8) -> f32 {
        self.table().values[code as usize]
    }

    pub(crate) fn table(self) -> &'static Table {
        static UNSIGNED: OnceLock<Table> = OnceLock::new();
        static SIGNED: OnceLock<Table> = OnceLock::new();
        match self {
            QuantMap::DynamicUnsigned => {
                UNSIGNED.get_or_init(|| Table::new(dynamic_map(false), false))
            }
            QuantMap::DynamicSigned => SIGNED.get_or_init(|| Table::new(dynamic_map(true), true)),
        }
    }
}

/// `x` brought into `[-1, 1]` (NaN to zero): what a block's values divided
/// by its scale may hold besides `[-1, 1]` (an infinite value saturates).
#[inline(always)]
pub(crate) fn clamp_input(x: f32) -> f32 {
    if x.is_nan() { 0.0 } else { x.clamp(-1.0, 1.0) }
}

/// The specification: the number of thresholds at or below `x` (in
/// `[-1, 1]`), by binary search.
pub(crate) fn quantize_spec(table: &Table, x: f32) -> u8 {
    // The first k whose threshold is above x.
    table.upper[..255].partition_point(|&t| t <= x) as u8
}

/// The fast path: a table lookup by `x`'s top bits and one comparison;
/// the same code as [`quantize_spec`] for every `x` in `[-1, 1]`.
#[inline(always)]
pub(crate) fn quantize_fast(table: &Table, x: f32) -> u8 {
    let (bucket, key) = bucket_and_key(x);
    let entry = table.buckets[bucket];
    entry as u8 + u8::from(key >= entry >> 8)
}

impl Table {
    fn new(values: [f32; 256], signed: bool) -> Self {
        assert!(values.windows(2).all(|w| w[0] < w[1]), "map not sorted");
        let mut upper = [f32::INFINITY; 256];
        for k in 0..255 {
            // Exact in f64: adjacent values are within a few octaves.
            let midpoint = (f64::from(values[k]) + f64::from(values[k + 1])) / 2.0;
            let nearest = midpoint as f32;
            upper[k] = if f64::from(nearest) > midpoint {
                nearest
            } else {
                nearest.next_up()
            };
        }
        let mut table = Self {
            values,
            upper,
            buckets: Vec::new(),
            zero_code: 0,
            value_planes: byte_planes(&values),
            upper_planes: byte_planes(&upper),
            guess: Guess::default(),
        };
        table.zero_code = quantize_spec(&table, 0.0);
        for tiny in [
            f32::from_bits(SMALLEST_BITS),
            -f32::from_bits(SMALLEST_BITS),
        ] {
            assert_eq!(
                quantize_spec(&table, tiny),
                table.zero_code,
                "2^-24 is not zero's"
            );
        }
        let buckets = (0..2 * BUCKETS_PER_SIGN)
            .map(|b| {
                let (sign, offset) = if b < BUCKETS_PER_SIGN {
                    (0, b)
                } else {
                    (1u32 << 31, b - BUCKETS_PER_SIGN)
                };
                let first = SMALLEST_BITS + ((offset as u32) << BUCKET_SHIFT);
                // The value of key `k` in this bucket (beyond 1: 1).
                let value = |k: u32| {
                    let low = if sign == 0 { k } else { k ^ KEY_MASK };
                    f32::from_bits(sign | first | low).clamp(-1.0, 1.0)
                };
                let code = |k: u32| quantize_spec(&table, value(k));
                let (lowest, highest) = (code(0), code(KEY_MASK));
                assert!(
                    u16::from(highest) <= u16::from(lowest) + 1,
                    "two thresholds in bucket {b}"
                );
                // The first key of the next code (keys are sorted by value).
                let (mut low, mut high) = (0, KEY_MASK + 1);
                while low < high {
                    let mid = (low + high) / 2;
                    if code(mid) == lowest {
                        low = mid + 1;
                    } else {
                        high = mid;
                    }
                }
                u32::from(lowest) | low << 8
            })
            .collect();
        table.buckets = buckets;
        table.guess = Guess::new(&table.upper, table.zero_code, signed);
        table
    }
}

/// bitsandbytes' `create_dynamic_map(signed, max_exponent_bits=7,
/// total_bits=8)`, value for value: for decade `i` in `0..7`, the means of
/// adjacent points of `linspace(0.1, 1, n)` (`n = 2^i + 1` signed,
/// `2^(i+1) + 1` unsigned) times `10^(i - 6)`, with their negatives when
/// signed, then `0` and `1`, sorted. The arithmetic is PyTorch's on the
/// CPU in `f32`: `linspace` computes `start + step * i` (the upper half
/// `end - step * (n - 1 - i)`) as one fused multiply-add, and the decade
/// factor is rounded to `f32` before the multiply. A test checks the
/// result against the maps bitsandbytes 0.50.2 prints.
fn dynamic_map(signed: bool) -> [f32; 256] {
    let mut data = Vec::with_capacity(256);
    for i in 0..7 {
        let points = if signed {
            (1 << i) + 1
        } else {
            (1 << (i + 1)) + 1
        };
        let boundaries = linspace(0.1, 1.0, points);
        let factor = 10f64.powi(i - 6) as f32;
        for pair in boundaries.windows(2) {
            let mean = (pair[0] + pair[1]) / 2.0;
            data.push(factor * mean);
            if signed {
                data.push(-factor * mean);
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    data.try_into().expect("256 values")
}

/// PyTorch's CPU `linspace` in `f32` (see [`dynamic_map`]).
fn linspace(start: f32, end: f32, points: usize) -> Vec<f32> {
    let step = (end - start) / (points - 1) as f32;
    let halfway = points / 2;
    (0..points)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((points - 1 - i) as f32, end)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: [QuantMap; 2] = [QuantMap::DynamicUnsigned, QuantMap::DynamicSigned];

    #[test]
    fn every_code_comes_back_from_its_value() {
        for map in MAPS {
            for code in 0..=255u8 {
                assert_eq!(map.quantize(map.dequantize(code)), code, "{map:?} {code}");
            }
        }
    }

    #[test]
    fn both_sides_of_every_midpoint_go_to_the_nearest_code() {
        for map in MAPS {
            let table = map.table();
            for k in 0..255 {
                let (a, b) = (table.values[k], table.values[k + 1]);
                let midpoint = (f64::from(a) + f64::from(b)) / 2.0;
                let t = table.upper[k];
                assert!(f64::from(t) > midpoint && f64::from(t.next_down()) <= midpoint);
                for x in [t.next_down().next_down(), t.next_down(), t, t.next_up()] {
                    let x64 = f64::from(x);
                    let nearest = if (x64 - f64::from(a)).abs() <= (f64::from(b) - x64).abs() {
                        k
                    } else {
                        k + 1
                    };
                    assert_eq!(quantize_spec(table, x) as usize, nearest, "{map:?} {k} {x}");
                    assert_eq!(quantize_fast(table, x) as usize, nearest, "{map:?} {k} {x}");
                }
            }
        }
    }

    #[test]
    fn the_fast_path_is_the_spec_across_the_range() {
        for map in MAPS {
            let table = map.table();
            // Every 97th f32 in [0, 1], and its negative.
            for bits in (0..=0x3F80_0000u32).step_by(97) {
                for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                    assert_eq!(
                        quantize_fast(table, x),
                        quantize_spec(table, x),
                        "{map:?} {x}"
                    );
                }
            }
        }
    }

    /// The first guess (module `quant_guess`) and one comparison give the
    /// spec's code across the range, for both maps (the guess's build-time
    /// check covers the ends of every code's interval; this samples their
    /// insides).
    #[test]
    fn the_guess_and_one_comparison_give_the_code() {
        for map in MAPS {
            let table = map.table();
            for bits in (0..=0x3F80_0000u32).step_by(997) {
                for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                    let guess = table.guess.code(x);
                    let code = guess + i32::from(x >= table.upper[guess as usize]);
                    assert_eq!(code, i32::from(quantize_spec(table, x)), "{map:?} {x}");
                }
            }
        }
    }

    #[test]
    fn outside_values_saturate_and_nan_is_zero() {
        for map in MAPS {
            let low = if map == QuantMap::DynamicSigned {
                0
            } else {
                map.quantize(0.0)
            };
            assert_eq!(map.quantize(f32::INFINITY), 255);
            assert_eq!(map.quantize(2.0), 255);
            assert_eq!(map.quantize(f32::NEG_INFINITY), low);
            assert_eq!(map.dequantize(map.quantize(f32::NAN)), 0.0);
            assert_eq!(map.quantize(-0.0), map.quantize(0.0));
        }
    }
}
