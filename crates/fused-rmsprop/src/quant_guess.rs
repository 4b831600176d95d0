//! A first guess at a value's code from the dynamic maps' structure, for
//! quantizing without a gather: the guess is the code or the one below it,
//! and one comparison with the guess's threshold settles which.
//!
//! The dynamic maps (module `quant_map`) are, on each side of zero, seven
//! decades of values spaced evenly: decade `i` holds `n_i` values
//! `10^(i-6) * (0.1 + step_i * (j + 1/2))`, `step_i = 0.9 / n_i`, so the
//! thresholds between them sit near `u = 1, 2, ...` of
//! `u = (y / 10^(i-6) - 0.1) / step_i` for a magnitude `y`. The guess:
//!
//! 1. the magnitude's decade: a table by its octave (each octave holds at
//!    most one decade boundary, checked when the table is built) and one
//!    comparison with that boundary, the map's exact threshold;
//! 2. within the decade, `first_code + floor(y * a + b)` with `b` lowered
//!    by 0.01 (raised for a negative value, whose code counts down from the
//!    mirror), so the guess never lands above the code, and at most the
//!    decade's last code;
//! 3. a negative value's guess mirrored (`254 - guess` on the signed map;
//!    the unsigned map has no negative codes: 0), then kept in `0..=255`.
//!
//! The guess only has to be the code or the one below; the final code is
//! `guess + (x >= upper[guess])` with the map's exact thresholds, so every
//! path still writes the codes of the rounding rule. [`Guess::new`] checks
//! the guess against the rule at both ends of every code's interval (it is
//! monotone in `x`, so that covers every `x`) and panics if it misses.

/// The bits of `2^-24`: the guess looks up smaller magnitudes as it (the
/// first octave of its table); the maps' smallest threshold is far above.
pub(crate) const FLOOR_BITS: u32 = 0x3380_0000;

/// Decade indices: 0 below the smallest nonzero magnitude, 1..=7 the
/// map's decades, 8 from the threshold below `1.0`.
const DECADES: usize = 9;

/// What the guess needs, laid out for a table lookup per lane.
#[derive(Debug, Default)]
pub(crate) struct Guess {
    /// By octave above `2^-24` (`0..=24`, padded to 32): the decade index
    /// of the octave's smallest magnitude.
    pub decade_of_octave: [i32; 32],
    /// By decade index (padded to 16): the magnitude from which the next
    /// decade index holds (the map's threshold), `+Inf` for the last.
    pub next: [f32; 16],
    /// [`Guess::next`] for negative values: their thresholds are the
    /// negatives' (an exact midpoint goes to the lower code, the larger
    /// magnitude), which can sit an `f32` step from the positives'.
    pub next_negative: [f32; 16],
    /// By decade index (padded to 16): the slope and intercept of the code
    /// guess within the decade (`b` with the first code and the 0.01 bias).
    pub a: [f32; 16],
    /// See [`Guess::a`].
    pub b: [f32; 16],
    /// By decade index (padded to 16): the decade's last code plus 1/2,
    /// the most the guess within it may reach (between a decade's last
    /// value and the next decade, `y * a + b` runs on past it).
    pub cap: [f32; 16],
    /// A negative value's guess is `mirror - guess` of its magnitude: 254
    /// on the signed map (whose codes count down from zero's, 127, as
    /// magnitudes grow), 0 on the unsigned one.
    pub mirror: i32,
}

/// How far below the code's threshold the guess is pushed (in codes).
const BIAS: f32 = 0.01;

/// What a negative value's guess adds back before it is mirrored: the
/// bias, twice (the magnitude's guess must land at or above its code).
pub(crate) const NEGATIVE_BIAS: f32 = 2.0 * BIAS;

impl Guess {
    /// The guess for a dynamic map, `signed` or not, given its thresholds
    /// (`upper[k]`: the smallest value whose code is above `k`; `upper[255]`
    /// is `+Inf`) and the code of zero; panics when it would not be the
    /// code or the one below for some value.
    pub(crate) fn new(upper: &[f32; 256], zero_code: u8, signed: bool) -> Self {
        let zero = zero_code as usize;
        let mut next = [f32::INFINITY; 16];
        let (mut a, mut b, mut cap) = ([0.0f32; 16], [0.0f32; 16], [255.5f32; 16]);
        // Below the first threshold above zero: zero's code.
        b[0] = zero as f32 + 0.5;
        cap[0] = zero as f32 + 0.5;
        next[0] = upper[zero];
        let mut first = zero + 1;
        let mut last_codes = [zero; DECADES - 1];
        for i in 0..7 {
            let n = if signed {
                1usize << i
            } else {
                1usize << (i + 1)
            };
            let factor = 10f64.powi(i as i32 - 6);
            let step = 0.9 / n as f64;
            a[i + 1] = (1.0 / (factor * step)) as f32;
            b[i + 1] = (first as f64 - 0.1 / step - f64::from(BIAS)) as f32;
            first += n;
            cap[i + 1] = (first - 1) as f32 + 0.5;
            last_codes[i + 1] = first - 1;
            next[i + 1] = upper[first - 1];
        }
        assert_eq!(first, 255, "the decades end below 1.0's code");
        // On the signed map the negative code below magnitude code `c`'s is
        // `253 - c`: a magnitude is past decade `d` (last code `c`) when the
        // value is below that code's threshold. The unsigned map's
        // negatives all take code 0.
        let mut next_negative = next;
        if signed {
            for (d, &last) in last_codes.iter().enumerate() {
                next_negative[d] = match 253usize.checked_sub(last) {
                    Some(below) => (-upper[below]).next_up(),
                    None => f32::INFINITY,
                };
            }
        }
        b[DECADES - 1] = 255.5;
        let mut guess = Self {
            decade_of_octave: [DECADES as i32 - 1; 32],
            next,
            next_negative,
            a,
            b,
            cap,
            mirror: if signed { 254 } else { 0 },
        };
        for octave in 0..=24u32 {
            let low = f32::from_bits(FLOOR_BITS + (octave << 23));
            let decade = next[..DECADES].iter().filter(|&&t| t <= low).count();
            guess.decade_of_octave[octave as usize] = decade as i32;
            if octave < 24 {
                let high = f32::from_bits(FLOOR_BITS + ((octave + 1) << 23)).next_down();
                let at_high = next[..DECADES].iter().filter(|&&t| t <= high).count();
                assert!(
                    at_high <= decade + 1,
                    "two decade boundaries in octave {octave}"
                );
            }
        }
        guess.check(upper);
        guess
    }

    /// The guess for `x` in `[-1, 1]` (not NaN): the code of `x`, or the
    /// one below.
    #[inline(always)]
    pub(crate) fn code(&self, x: f32) -> i32 {
        let y = x.abs();
        let octave = (y.to_bits().max(FLOOR_BITS) - FLOOR_BITS) >> 23;
        let mut decade = self.decade_of_octave[octave as usize] as usize;
        let negative = x.is_sign_negative();
        let next = if negative {
            self.next_negative[decade]
        } else {
            self.next[decade]
        };
        if y >= next {
            decade += 1;
        }
        let mut v = y
            .mul_add(self.a[decade], self.b[decade])
            .min(self.cap[decade]);
        if negative {
            v += NEGATIVE_BIAS;
        }
        let magnitude_code = v.floor() as i32;
        let code = if negative {
            self.mirror - magnitude_code
        } else {
            magnitude_code
        };
        code.clamp(0, 255)
    }

    /// Panics unless the guess is the code or the one below at both ends of
    /// every code's interval `[upper[k - 1], upper[k])` of `[-1, 1]`: the
    /// guess and the code both grow with `x`, so that holds for every `x`.
    fn check(&self, upper: &[f32; 256]) {
        for k in 0..256usize {
            let low = if k == 0 { -1.0 } else { upper[k - 1] };
            let high = if k == 255 { 1.0 } else { upper[k].next_down() };
            if low > 1.0 || high < -1.0 || low > high {
                continue;
            }
            for x in [low.max(-1.0), high.min(1.0)] {
                let guess = self.code(x);
                let k = k as i32;
                assert!(
                    guess == k || guess == k - 1,
                    "guess {guess} for {x}, whose code is {k}"
                );
            }
        }
    }
}
