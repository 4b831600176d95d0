//! The command line: sizes, variants, threads and which row kinds to run.

use fused_rmsprop_benches::workload::Variant;

pub(crate) struct Options {
    pub(crate) sizes: Vec<usize>,
    pub(crate) variants: Vec<Variant>,
    /// The variants of the many-tensor model rows: plain unless `--variant`
    /// names one.
    pub(crate) model_variants: Vec<Variant>,
    pub(crate) threads: usize,
    pub(crate) json: bool,
    pub(crate) model: bool,
    pub(crate) training: bool,
    /// Rows with gradient clipping (by value and by norm, both frameworks).
    pub(crate) clipping: bool,
    /// Rows with 8-bit optimizer state (the kernel).
    pub(crate) blockwise8: bool,
    pub(crate) peers: Option<String>,
    pub(crate) plot: Option<String>,
    pub(crate) half: Vec<candle_core::DType>,
}

pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        _ => (s, 0),
    };
    digits
        .parse::<usize>()
        .map(|n| n << shift)
        .map_err(|_| format!("--sizes: cannot read {s:?} as a size (examples: 4096, 64K, 16M)"))
}

pub(crate) fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        sizes: vec![1 << 20, 1 << 24],
        variants: Variant::ALL.to_vec(),
        model_variants: vec![Variant::Plain],
        threads: rayon::current_num_threads(),
        json: false,
        model: true,
        training: true,
        clipping: true,
        blockwise8: true,
        peers: None,
        plot: None,
        half: vec![candle_core::DType::BF16],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => {
                options.sizes = vec![1 << 20];
                options.variants = vec![Variant::Plain];
                options.model = false;
                options.training = false;
                options.half = Vec::new();
            }
            "--no-model" => options.model = false,
            "--no-train" => options.training = false,
            "--no-clip" => options.clipping = false,
            "--no-8bit" => options.blockwise8 = false,
            "--sizes" => {
                options.sizes = value("--sizes")?
                    .split(',')
                    .map(parse_size)
                    .collect::<Result<_, _>>()?
            }
            "--threads" => {
                options.threads = value("--threads")?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--threads needs a whole number >= 1")?
            }
            "--variant" => {
                let name = value("--variant")?;
                options.variants = vec![Variant::parse(&name).ok_or(format!(
                    "--variant: unknown {name:?}; one of plain, momentum, centered+momentum+wd"
                ))?];
                options.model_variants = options.variants.clone();
            }
            "--half" => {
                let list = value("--half")?;
                options.half = if list == "none" {
                    Vec::new()
                } else {
                    list.split(',')
                        .map(|t| match t {
                            "bf16" => Ok(candle_core::DType::BF16),
                            "f16" => Ok(candle_core::DType::F16),
                            other => Err(format!("--half: unknown {other:?}; bf16, f16 or none")),
                        })
                        .collect::<Result<_, _>>()?
                };
            }
            "--json" => options.json = true,
            "--peers" => options.peers = Some(value("--peers")?),
            "--plot" => options.plot = Some(value("--plot")?),
            "--help" | "-h" => {
                println!(
                    "{}",
                    include_str!("main.rs")
                        .lines()
                        .take_while(|l| l.starts_with("//!"))
                        .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    Ok(options)
}
