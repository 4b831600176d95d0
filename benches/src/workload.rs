//! The benchmark variants and their buffers.

use fused_rmsprop::{Hyper, Param, RmsProp, State, WeightDecay};

/// The three variants every benchmark reports: they differ in how many
/// buffers a step streams (20, 28 and 36 bytes per `f32` element).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// RMSprop without momentum or centering.
    Plain,
    /// Momentum 0.9.
    Momentum,
    /// Centered, momentum 0.9, coupled weight decay 0.01.
    CenteredMomentumWd,
}

impl Variant {
    /// All variants, cheapest first.
    pub const ALL: [Variant; 3] = [
        Variant::Plain,
        Variant::Momentum,
        Variant::CenteredMomentumWd,
    ];

    /// The name used in tables, JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Momentum => "momentum",
            Variant::CenteredMomentumWd => "centered+momentum+wd",
        }
    }

    /// Parses [`Variant::name`].
    pub fn parse(name: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == name)
    }

    /// The hyper-parameters (PyTorch defaults otherwise).
    pub fn hyper(self) -> Hyper {
        let h = Hyper::default();
        match self {
            Variant::Plain => h,
            Variant::Momentum => h.with_momentum(0.9),
            Variant::CenteredMomentumWd => h
                .with_momentum(0.9)
                .with_centered(true)
                .with_weight_decay(Some(WeightDecay::Coupled(0.01))),
        }
    }

    /// Bytes one `f32` step streams per element.
    pub fn bytes_per_element(self) -> usize {
        self.hyper().bytes_per_element(4)
    }
}

/// Parameters, gradients and state of one tensor, filled with deterministic
/// values of realistic magnitude.
#[derive(Clone, Debug)]
pub struct Buffers {
    /// The parameters.
    pub params: Vec<f32>,
    /// The gradients.
    pub grads: Vec<f32>,
    /// The optimizer state.
    pub state: State<f32>,
}

impl Buffers {
    /// `len` elements for `variant`; every page is written, so the timing
    /// never includes first-touch page faults.
    pub fn new(len: usize, variant: Variant) -> Self {
        let value = |i: usize, salt: u32| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt);
            (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let mut state = State::new(len, &variant.hyper());
        for (i, v) in state.square_avg.iter_mut().enumerate() {
            *v = value(i, 3).abs() * 0.01;
        }
        Self {
            params: (0..len).map(|i| value(i, 1)).collect(),
            grads: (0..len).map(|i| value(i, 2) * 0.1).collect(),
            state,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// One fused step of `opt` on these buffers, at its configured lr.
    pub fn step(&mut self, opt: &RmsProp) {
        opt.step(&mut self.params, &self.grads, &mut self.state)
            .expect("benchmark buffers are valid for their variant");
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
}

/// A size as the tables print it: `4K`, `16M` (powers of two), else digits.
pub fn size_label(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}M", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}K", n >> 10),
        n => n.to_string(),
    }
}

/// The cases of the framework criterion benches: one 1M and one 16M tensor
/// and the 150-tensor model, or, when `FUSED_RMSPROP_BENCH_SIZES` is set
/// (e.g. `4096,65536`, for a short smoke run), single tensors of those sizes.
pub fn bench_cases() -> Vec<(String, Vec<usize>)> {
    match std::env::var("FUSED_RMSPROP_BENCH_SIZES") {
        Ok(sizes) => sizes
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .map(|n| (size_label(n), vec![n]))
            .collect(),
        Err(_) => {
            let model = transformer_sizes();
            vec![
                (size_label(1 << 20), vec![1 << 20]),
                (size_label(1 << 24), vec![1 << 24]),
                (format!("model-{}", model.len()), model),
            ]
        }
    }
}

/// How a 16-bit step rounds: the three options of the kernel, as the
/// benchmark rows name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalfMode {
    /// Round to nearest even.
    Nearest,
    /// Stochastic rounding (bf16; f16 rounds to nearest).
    Stochastic,
    /// f32 master weights, rounded to nearest.
    Master,
}

impl HalfMode {
    /// All modes.
    pub const ALL: [HalfMode; 3] = [HalfMode::Nearest, HalfMode::Stochastic, HalfMode::Master];

    /// The name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            HalfMode::Nearest => "nearest",
            HalfMode::Stochastic => "stochastic",
            HalfMode::Master => "master",
        }
    }

    /// `hyper` with this mode's rounding options.
    pub fn apply(self, hyper: Hyper) -> Hyper {
        match self {
            HalfMode::Nearest => hyper,
            HalfMode::Stochastic => {
                hyper.with_rounding(fused_rmsprop::Rounding::Stochastic { seed: 1 })
            }
            HalfMode::Master => hyper.with_master_weights(true),
        }
    }

    /// Bytes a plain step streams per element: read 2 + 2 + 4 and write
    /// 2 + 4 (14), or with master weights read 2 + 4 + 4 and write 2 + 4 + 4
    /// (20: the parameter is written, not read).
    pub fn bytes_per_element(self, variant: Variant) -> usize {
        // The f32 buffers beyond the plain step's (grad_avg, momentum_buf):
        // read and written, 8 bytes each.
        let state = variant.hyper().bytes_per_element(4) - Variant::Plain.bytes_per_element();
        let base = match self {
            HalfMode::Master => 20,
            _ => 14,
        };
        base + state
    }
}

/// Parameters and gradients of a 16-bit type `H` with `f32` state.
#[derive(Clone, Debug)]
pub struct HalfBuffers<H: Param<State = f32>> {
    /// The parameters.
    pub params: Vec<H>,
    /// The gradients.
    pub grads: Vec<H>,
    /// The optimizer state (with the master copy when the mode keeps one).
    pub state: State<f32>,
}

impl<H: Param<State = f32> + From16> HalfBuffers<H> {
    /// `len` elements with the same values as [`Buffers::new`], rounded to
    /// `H`; every page written.
    pub fn new(len: usize, hyper: &Hyper) -> Self {
        let wide = Buffers::new(len, Variant::Plain);
        let params: Vec<H> = wide.params.iter().map(|&x| H::from_f32(x)).collect();
        let mut state = State::for_params(&params, hyper);
        state.square_avg = wide.state.square_avg;
        Self {
            grads: wide.grads.iter().map(|&x| H::from_f32(x)).collect(),
            params,
            state,
        }
    }

    /// One fused step of `opt` on these buffers.
    pub fn step(&mut self, opt: &RmsProp) {
        opt.step(&mut self.params, &self.grads, &mut self.state)
            .expect("benchmark buffers are valid for their mode");
    }
}

/// The 16-bit types the benchmarks build from `f32` values.
pub trait From16: Copy {
    /// `x` rounded to nearest.
    fn from_f32(x: f32) -> Self;
}

impl From16 for fused_rmsprop::bf16 {
    fn from_f32(x: f32) -> Self {
        fused_rmsprop::bf16::from_f32(x)
    }
}

impl From16 for fused_rmsprop::f16 {
    fn from_f32(x: f32) -> Self {
        fused_rmsprop::f16::from_f32(x)
    }
}

/// The parameter sizes of a transformer-sized model: a 384-wide encoder of
/// 9 blocks (attention q, k, v, o and a 4x MLP, each with its bias, and two
/// layer norms), token and position embeddings, a final layer norm and a
/// pooler: 150 tensors, 22.5M elements, most of them small.
pub fn transformer_sizes() -> Vec<usize> {
    let d = 384;
    let mut sizes = vec![16_000 * d, 512 * d];
    for _ in 0..9 {
        for _ in 0..4 {
            sizes.extend([d * d, d]);
        }
        sizes.extend([d * 4 * d, 4 * d, 4 * d * d, d]);
        sizes.extend([d, d, d, d]);
    }
    sizes.extend([d, d, d * d, d]);
    sizes
}

/// 2,000 tensors of 1K to 256K elements, drawn as a transformer's are: per
/// block of 10 tensors, one 32K-256K matrix, two 8K-32K projections and
/// seven 1K-4K biases and norm scales. The sizes come from a fixed
/// generator, so every run steps the same model (41M elements).
pub fn many_tensor_sizes() -> Vec<usize> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |lo: usize, hi: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        lo + (state % (hi - lo + 1) as u64) as usize
    };
    let mut sizes = Vec::with_capacity(2000);
    for _ in 0..200 {
        sizes.push(next(32, 256) << 10);
        for _ in 0..2 {
            sizes.push(next(8, 32) << 10);
        }
        for _ in 0..7 {
            sizes.push(next(1, 4) << 10);
        }
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_bytes_per_element_count_the_streams() {
        assert_eq!(HalfMode::Nearest.bytes_per_element(Variant::Plain), 14);
        assert_eq!(HalfMode::Stochastic.bytes_per_element(Variant::Plain), 14);
        assert_eq!(HalfMode::Master.bytes_per_element(Variant::Plain), 20);
        assert_eq!(HalfMode::Nearest.bytes_per_element(Variant::Momentum), 22);
        assert_eq!(
            HalfMode::Nearest.bytes_per_element(Variant::CenteredMomentumWd),
            30
        );
    }
}
