//! Steps the 2,000-tensor model (or the 150-tensor one, with `MODEL=150` in
//! the environment) in a loop, for a profiler to look at: through burn's
//! `ModuleOptimizer` with the fused optimizer (`burn`), its batched route
//! (`burn-batched`: one kernel dispatch per step), the same on one
//! thread (`burn-single`), burn's floor (`floor`: an optimizer that returns
//! its inputs), burn's floor with the kernel's memory traffic
//! (`floor-traffic`: an optimizer that returns its inputs after stepping
//! buffers of the same size outside burn with the bare kernel; it also
//! prints how much of a step was spent in the kernel), candle
//! (`candle`), candle's floor (`candle-floor`: for each `Var`, what any
//! in-place optimizer must do in candle, its gradient looked up and
//! read-locked and the `Var`'s storage taken through an in-place op that
//! writes nothing, and nothing else), or the bare kernel (`kernel-many`:
//! one `step_many`; `kernel-each`: one call per tensor). A suffix `-16xN`
//! (`candle-16x100000`, `kernel-many-16x1000`) replaces the model by `N`
//! tensors of 16 elements. `candle-growth` times candle's step on 1,000
//! and on 100,000 16-element `Var`s in alternation in one process (a
//! round: 200 steps of the one, 3 of the other, `STEPS` rounds) and prints
//! each round's cost per `Var` and their ratio, so that the host's
//! changing load weighs on both sides alike, and the same for candle's
//! floor in the same rounds. burn's parameters are `f32`,
//! or `bf16`/`f16` with `DTYPE=bf16`/`DTYPE=f16` in the environment;
//! `THREADS=1` runs the bare kernel (`kernel-*`, `floor-traffic`) on one
//! thread; `LEARNER=1` has burn's modes hold a clone of the module while
//! the optimizer steps it, as burn-train's `Learner` does (every parameter
//! buffer shared during the step); `MODEL=16M` is one tensor of 16M
//! elements. Prints the time per step after one warm-up step (and burn's step
//! statistics).
//!
//! ```text
//! cargo build --release -p fused-rmsprop-benches --example many_tensors
//! perf record -g target/release/examples/many_tensors burn 200
//! perf report
//! ```

use candle_nn::Optimizer;
use fused_rmsprop_benches::workload::{Buffers, Variant, many_tensor_sizes, transformer_sizes};
use fused_rmsprop_benches::{burn_case, candle_case};

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "burn".into());
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100);
    // `candle-16x1000`, `kernel-many-16x100000`: that many 16-element tensors.
    let (framework, sizes) = match name.split_once("-16x") {
        Some((mode, count)) => (
            mode.to_string(),
            vec![16; count.parse().expect("a count of tensors")],
        ),
        None => (name.clone(), model_sizes()),
    };
    let variant = Variant::Plain;
    let lr = variant.hyper().lr;
    let start;
    // `floor-traffic`: of a step, the time in the kernel.
    let mut in_kernel = None;
    // One warm-up step, then `steps` timed ones.
    let run_burn = |optim: burn_case::Stepper| {
        let mut case = burn_case::Case::new_in(burn_dtype(), &sizes, optim, lr);
        let learner = std::env::var("LEARNER").as_deref() == Ok("1");
        let mut step = || {
            if learner {
                case.step_holding_the_module()
            } else {
                case.step()
            }
        };
        step();
        let start = std::time::Instant::now();
        for _ in 0..steps {
            step();
        }
        start
    };
    match framework.as_str() {
        "burn" => {
            let optim = burn_case::fused_rmsprop(variant).build();
            let handle = optim.clone();
            start = run_burn(burn::optim::ModuleOptimizer::from(optim).into());
            println!("{:?}", handle.stats());
        }
        "burn-batched" => {
            start = run_burn(burn_case::fused_rmsprop(variant).init_batched().into());
        }
        "burn-single" => {
            let single = fused_rmsprop::Execution {
                threads: fused_rmsprop::Threads::Single,
                ..Default::default()
            };
            let optim = burn_case::fused_rmsprop(variant)
                .build()
                .with_execution(single)
                .expect("valid");
            start = run_burn(burn::optim::ModuleOptimizer::from(optim).into());
        }
        "floor" => start = run_burn(burn_case::floor().into()),
        "floor-traffic" => {
            let kernel = bare_kernel(variant);
            let traffic = burn_case::Traffic::new(&sizes, kernel);
            let clock = traffic.clone();
            start = run_burn(burn::optim::ModuleOptimizer::from(traffic).into());
            // The warm-up step is in the clock too.
            in_kernel = Some(clock.kernel_time() / (steps as u32 + 1));
        }
        "kernel-many" | "kernel-each" => {
            let kernel = bare_kernel(variant);
            let mut buffers: Vec<Buffers> =
                sizes.iter().map(|&k| Buffers::new(k, variant)).collect();
            let mut step = || {
                if framework == "kernel-each" {
                    buffers.iter_mut().for_each(|b| b.step(&kernel));
                } else {
                    let groups = buffers.iter_mut().map(|b| {
                        fused_rmsprop::Group::new(&mut b.params, &b.grads, b.state.slices_mut())
                    });
                    kernel.step_many(lr, groups).expect("a step");
                }
            };
            step();
            start = std::time::Instant::now();
            (0..steps).for_each(|_| step());
        }
        "candle-floor" => {
            let (vars, grads) = candle_case::vars_and_grads(&sizes);
            candle_floor_step(&vars, &grads);
            start = std::time::Instant::now();
            (0..steps).for_each(|_| candle_floor_step(&vars, &grads));
        }
        "candle-growth" => {
            candle_growth(variant, steps.max(1));
            return;
        }
        "candle" => {
            let (vars, grads) = candle_case::vars_and_grads(&sizes);
            let mut opt = candle_case::fused(vars, variant);
            opt.step(&grads).expect("a step");
            start = std::time::Instant::now();
            for _ in 0..steps {
                opt.step(&grads).expect("a step");
            }
        }
        other => {
            eprintln!(
                "many_tensors: unknown mode {other:?}; burn, burn-batched, burn-single, floor, floor-traffic, candle, candle-floor, candle-growth, kernel-many or kernel-each (with an optional -16xN suffix)"
            );
            std::process::exit(2);
        }
    }
    let per_step = start.elapsed() / steps as u32;
    println!("{name}: {} tensors, {per_step:?} per step", sizes.len());
    if let Some(in_kernel) = in_kernel {
        println!("  of which in the kernel {in_kernel:?}, the rest burn's bookkeeping");
    }
}

/// The bare kernel of `kernel-many`, `kernel-each` and `floor-traffic`: on
/// the pool's threads, or on the calling thread alone with `THREADS=1` in the
/// environment (as `burn-single` steps burn's parameters).
fn bare_kernel(variant: Variant) -> fused_rmsprop::RmsProp {
    let kernel = fused_rmsprop::RmsProp::new(variant.hyper()).expect("valid");
    if std::env::var("THREADS").as_deref() != Ok("1") {
        return kernel;
    }
    let single = fused_rmsprop::Execution {
        threads: fused_rmsprop::Threads::Single,
        ..Default::default()
    };
    kernel.with_execution(single).expect("valid")
}

/// The dtype of burn's parameters: `f32`, or `DTYPE=bf16` / `DTYPE=f16` in
/// the environment.
fn burn_dtype() -> burn::tensor::DType {
    match std::env::var("DTYPE").as_deref() {
        Ok("bf16") => burn::tensor::DType::BF16,
        Ok("f16") => burn::tensor::DType::F16,
        _ => burn::tensor::DType::F32,
    }
}

/// The 2,000-tensor model's sizes, or the 150-tensor one's with `MODEL=150`.
fn model_sizes() -> Vec<usize> {
    match std::env::var("MODEL").as_deref() {
        Ok("150") => transformer_sizes(),
        Ok("16M") => vec![1 << 24],
        _ => many_tensor_sizes(),
    }
}

/// `candle-growth`: `rounds` rounds, each timing 200 steps over 1,000
/// 16-element `Var`s and 3 steps over 100,000 (about the same time), back
/// to back, each after one untimed step, of candle's optimizer and then of
/// candle's floor (`candle-floor`'s loop); prints µs per `Var` for both
/// sizes and the ratio per round, of the optimizer and of the floor, then
/// the median ratios: how much of the growth candle's own per-`Var` path
/// has on its own.
fn candle_growth(variant: Variant, rounds: usize) {
    // A timer of `steps` steps of one case, in µs per `Var`.
    fn timer(count: usize, mut step: impl FnMut()) -> impl FnMut(usize) -> f64 {
        step();
        move |steps: usize| {
            // One untimed step first: each side's data back in cache after
            // the other side's steps, as in a run of its own.
            step();
            let start = std::time::Instant::now();
            for _ in 0..steps {
                step();
            }
            start.elapsed().as_secs_f64() * 1e6 / (steps * count) as f64
        }
    }
    let optimizer = |count: usize| {
        let (vars, grads) = candle_case::vars_and_grads(&vec![16; count]);
        let mut opt = candle_case::fused(vars, variant);
        timer(count, move || opt.step(&grads).expect("a step"))
    };
    let floor = |count: usize| {
        let (vars, grads) = candle_case::vars_and_grads(&vec![16; count]);
        timer(count, move || candle_floor_step(&vars, &grads))
    };
    let (mut small, mut large) = (optimizer(1_000), optimizer(100_000));
    let (mut small_floor, mut large_floor) = (floor(1_000), floor(100_000));
    let (mut ratios, mut floor_ratios) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (a, b) = (small(200), large(3));
        let (fa, fb) = (small_floor(200), large_floor(3));
        ratios.push(b / a);
        floor_ratios.push(fb / fa);
        println!(
            "round {round}: {a:.3} µs per Var at 1,000, {b:.3} at 100,000, ratio {:.2}; \
             candle's floor {fa:.3} and {fb:.3}, ratio {:.2}",
            b / a,
            fb / fa
        );
    }
    ratios.sort_by(f64::total_cmp);
    floor_ratios.sort_by(f64::total_cmp);
    println!(
        "candle-growth: median ratio {:.2} over {rounds} rounds; candle's floor {:.2}",
        ratios[rounds / 2],
        floor_ratios[rounds / 2]
    );
}

/// One step of candle's floor: for each `Var`, its gradient looked up and
/// read-locked and the `Var`'s storage taken through an in-place op that
/// writes nothing (`Touch`); what any in-place optimizer must do in candle.
fn candle_floor_step(vars: &[candle_core::Var], grads: &candle_core::backprop::GradStore) {
    let mut touched = 0;
    for var in vars {
        let Some(grad) = grads.get(var) else { continue };
        let (storage, layout) = grad.storage_and_layout();
        touched += layout.start_offset();
        // The only public way to write a `Var`'s storage.
        var.inplace_op1(&Touch).expect("an in-place op");
        drop(storage);
    }
    std::hint::black_box(touched);
}

/// The in-place op of `candle-floor`: holds the storage and writes nothing.
struct Touch;

impl candle_core::InplaceOp1 for Touch {
    fn name(&self) -> &'static str {
        "touch"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        _layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        std::hint::black_box(storage);
        Ok(())
    }
}
