//! Against PyTorch: `clip_grad_norm_` (and `clip_grad_value_`) followed by
//! `torch.optim.RMSprop`, twelve steps of three tensors, from trajectories
//! computed by `tests/data/pytorch_clip_rmsprop.py` (a numpy port of
//! PyTorch's CPU code, operation by operation, in float32) and checked in
//! as `tests/data/pytorch_clip_rmsprop.txt`.
//!
//! Tolerance: 2e-6 relative (at least 1e-7 absolute) per parameter per step,
//! 1e-6 relative on the norm. The step is not bit for bit PyTorch's:
//! PyTorch's `addcmul` computes `(1 - alpha) * g * g` left to right where
//! the kernel squares first, and its total norm is the norm of the
//! tensors' `f32` norms where the kernel sums every square in `f64`; each
//! differs by an ulp now and then.

use std::collections::HashMap;

use fused_rmsprop::{GradClip, Group, Hyper, RmsProp, State};

struct Reference {
    sizes: Vec<usize>,
    steps: usize,
    numbers: Vec<f64>,
    arrays: HashMap<String, Vec<f32>>,
}

fn reference() -> Reference {
    let text = include_str!("data/pytorch_clip_rmsprop.txt");
    let mut sizes = Vec::new();
    let mut steps = 0;
    let mut numbers = Vec::new();
    let mut arrays = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, values) = line.split_once(": ").expect("name: values");
        let values = values.split_whitespace();
        match name {
            "sizes" => sizes = values.map(|v| v.parse().unwrap()).collect(),
            "steps" => steps = values.map(|v| v.parse().unwrap()).next().unwrap(),
            "lr alpha eps max_norm clip_value" => {
                numbers = values.map(|v| v.parse().unwrap()).collect();
            }
            _ => {
                let bits = values.map(|v| f32::from_bits(u32::from_str_radix(v, 16).unwrap()));
                arrays.insert(name.to_string(), bits.collect());
            }
        }
    }
    Reference {
        sizes,
        steps,
        numbers,
        arrays,
    }
}

fn assert_close(actual: f32, expected: f32, relative: f32, what: &str) {
    let tolerance = (relative * expected.abs()).max(1e-7);
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: {actual} against PyTorch's {expected}"
    );
}

fn trajectory_matches(mode: &str, clip: GradClip) {
    let r = reference();
    let [lr, alpha, eps, ..] = r.numbers[..] else {
        panic!("missing numbers")
    };
    let hyper = Hyper::default()
        .with_lr(lr)
        .with_alpha(alpha)
        .with_eps(eps)
        .with_grad_clip(Some(clip));
    let opt = RmsProp::new(hyper).unwrap();
    let mut params: Vec<Vec<f32>> = (0..r.sizes.len())
        .map(|t| r.arrays[&format!("start {t}")].clone())
        .collect();
    let mut states: Vec<State<f32>> = r.sizes.iter().map(|&n| State::new(n, &hyper)).collect();
    let mut clipped_steps = 0;
    for s in 0..r.steps {
        let grads: Vec<&Vec<f32>> = (0..r.sizes.len())
            .map(|t| &r.arrays[&format!("grad {s} {t}")])
            .collect();
        let groups = params
            .iter_mut()
            .zip(&grads)
            .zip(&mut states)
            .map(|((p, g), st)| Group::new(p, g, st.slices_mut()));
        let report = opt.step_many(lr, groups).unwrap();
        if let Some(norm) = report.grad_norm() {
            let expected = r.arrays[&format!("{mode} total_norm {s}")][0];
            assert_close(norm as f32, expected, 1e-6, &format!("step {s}: norm"));
            if report.clip_coefficient() < Some(1.0) {
                clipped_steps += 1;
            }
        }
        for (t, p) in params.iter().enumerate() {
            let expected = &r.arrays[&format!("{mode} params {s} {t}")];
            for (i, (&a, &e)) in p.iter().zip(expected).enumerate() {
                assert_close(
                    a,
                    e,
                    2e-6,
                    &format!("{mode}: step {s}, tensor {t}, element {i}"),
                );
            }
        }
    }
    if mode == "norm" {
        assert!(
            (3..r.steps).contains(&clipped_steps),
            "the data clips in some steps, not all: {clipped_steps}"
        );
    }
}

#[test]
fn clip_grad_norm_then_rmsprop_follows_pytorch() {
    let max_norm = reference().numbers[3];
    trajectory_matches("norm", GradClip::NormGlobal(max_norm));
}

#[test]
fn clip_grad_value_then_rmsprop_follows_pytorch() {
    let clip_value = reference().numbers[4];
    trajectory_matches("value", GradClip::Value(clip_value));
}
