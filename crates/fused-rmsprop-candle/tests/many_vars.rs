//! Models of many variables and gradients that alias variables: the step
//! neither overflows a small stack nor waits on a lock it holds itself.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use fused_rmsprop_candle::{ParamsRmsProp, RmsProp, TensorOpsRmsProp};

/// `count` variables of `len` elements each, with distinct values, and a
/// gradient for each.
fn model(count: usize, len: usize) -> candle_core::Result<(Vec<Var>, GradStore)> {
    let (vars, grads, _) = model_of_sizes(&vec![len; count], &[])?;
    Ok((vars, grads))
}

/// `sizes` as variables with distinct values and a gradient each (also
/// returned as values, for the bare kernel); a variable whose index is in
/// `poisoned` gets a NaN in its gradient.
fn model_of_sizes(
    sizes: &[usize],
    poisoned: &[usize],
) -> candle_core::Result<(Vec<Var>, GradStore, Vec<Vec<f32>>)> {
    let mut vars = Vec::with_capacity(sizes.len());
    let mut grads = GradStore::default();
    let mut grad_values = Vec::with_capacity(sizes.len());
    let mut start = 0;
    for (v, &len) in sizes.iter().enumerate() {
        let values: Vec<f32> = (0..len)
            .map(|i| ((start + i) as f32 * 0.37).sin())
            .collect();
        start += len;
        let var = Var::from_vec(values, len, &Device::Cpu)?;
        let mut grad: Vec<f32> = (0..len)
            .map(|i| ((v * 3 + i) as f32 * 0.11).cos())
            .collect();
        if poisoned.contains(&v) {
            grad[len / 2] = f32::NAN;
        }
        grads.insert(
            var.as_tensor(),
            Tensor::from_vec(grad.clone(), len, &Device::Cpu)?,
        );
        grad_values.push(grad);
        vars.push(var);
    }
    Ok((vars, grads, grad_values))
}

fn values(vars: &[Var]) -> Vec<Vec<f32>> {
    vars.iter().map(|v| v.to_vec1().unwrap()).collect()
}

/// Two steps of 100,000 variables with the fused optimizer on a thread with
/// `stack` bytes of stack, against the tensor-op formulation on a copy.
fn many_vars_on_a_small_stack(stack: usize) {
    let params = ParamsRmsProp {
        lr: 0.01,
        momentum: Some(0.9),
        ..Default::default()
    };
    let (vars, grads) = model(100_000, 4).unwrap();
    let (reference, reference_grads) = model(100_000, 4).unwrap();
    let fused = std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            let mut opt = RmsProp::new(vars.clone(), params).unwrap();
            opt.step(&grads).unwrap();
            opt.step(&grads).unwrap();
            values(&vars)
        })
        .unwrap()
        .join()
        .expect("the step ran on the small stack");
    let mut opt = TensorOpsRmsProp::new(reference.clone(), params).unwrap();
    let reference_grads: GradStore = {
        let mut g = GradStore::default();
        for var in &reference {
            g.insert(var.as_tensor(), reference_grads.get(var).unwrap().clone());
        }
        g
    };
    opt.step(&reference_grads).unwrap();
    opt.step(&reference_grads).unwrap();
    for (v, (got, want)) in fused.iter().zip(values(&reference)).enumerate() {
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "variable {v}: fused {g}, tensor ops {w}"
            );
        }
    }
}

#[test]
fn steps_100_000_vars_on_a_2_mib_stack() {
    many_vars_on_a_small_stack(2 << 20);
}

#[test]
fn steps_100_000_vars_on_a_256_kib_stack() {
    many_vars_on_a_small_stack(256 << 10);
}

/// `steps` steps of one optimizer over `vars`, each with the gradients
/// `step_grads` builds from the variables when the step comes (step 0
/// first), run on a thread so that a deadlock fails the test (after 20 s)
/// instead of hanging it.
fn steps_or_hang(
    vars: Vec<Var>,
    steps: usize,
    mut step_grads: impl FnMut(&[Var], usize) -> GradStore + Send + 'static,
) -> candle_core::Result<()> {
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut opt = RmsProp::new(vars.clone(), ParamsRmsProp::default()).unwrap();
        let result = (0..steps).try_for_each(|step| opt.step(&step_grads(&vars, step)));
        let _ = done.send(result);
    });
    wait.recv_timeout(std::time::Duration::from_secs(20))
        .expect("the steps finished instead of waiting on their own lock")
}

/// One step of `vars` with `grads`: [`steps_or_hang`] for one step.
fn step_or_hang(vars: Vec<Var>, grads: GradStore) -> candle_core::Result<()> {
    let mut grads = Some(grads);
    steps_or_hang(vars, 1, move |_, _| grads.take().expect("one step"))
}

#[test]
fn a_gradient_that_is_its_own_variable_is_copied_first() {
    let w = Var::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
    let mut grads = GradStore::default();
    grads.insert(w.as_tensor(), w.as_tensor().clone());
    step_or_hang(vec![w.clone()], grads).unwrap();

    // The same step with the gradient as a separate copy of the values.
    let reference = Var::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
    let mut grads = GradStore::default();
    grads.insert(reference.as_tensor(), reference.as_tensor().copy().unwrap());
    step_or_hang(vec![reference.clone()], grads).unwrap();
    assert_eq!(
        w.to_vec1::<f32>().unwrap(),
        reference.to_vec1::<f32>().unwrap()
    );
    assert_ne!(w.to_vec1::<f32>().unwrap(), [1.0, -2.0, 3.0]);
}

#[test]
fn a_gradient_that_is_another_variable_is_copied_first() {
    let a = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
    let b = Var::new(&[0.5f32, -0.5], &Device::Cpu).unwrap();
    let mut grads = GradStore::default();
    // a's gradient is b, and b's gradient is a narrowed view of a.
    grads.insert(a.as_tensor(), b.as_tensor().clone());
    grads.insert(b.as_tensor(), a.as_tensor().narrow(0, 0, 2).unwrap());
    step_or_hang(vec![a.clone(), b.clone()], grads).unwrap();

    let (ra, rb) = (
        Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap(),
        Var::new(&[0.5f32, -0.5], &Device::Cpu).unwrap(),
    );
    let mut grads = GradStore::default();
    grads.insert(
        ra.as_tensor(),
        Tensor::new(&[0.5f32, -0.5], &Device::Cpu).unwrap(),
    );
    grads.insert(
        rb.as_tensor(),
        Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap(),
    );
    step_or_hang(vec![ra.clone(), rb.clone()], grads).unwrap();
    assert_eq!(a.to_vec1::<f32>().unwrap(), ra.to_vec1::<f32>().unwrap());
    assert_eq!(b.to_vec1::<f32>().unwrap(), rb.to_vec1::<f32>().unwrap());
}

#[test]
fn many_vars_of_both_dtypes_and_an_empty_one_step_together() {
    let (mut vars, mut grads) = model(200, 3).unwrap();
    let wide = Var::from_vec(vec![1.0f64; 5], 5, &Device::Cpu).unwrap();
    grads.insert(
        wide.as_tensor(),
        Tensor::ones(5, DType::F64, &Device::Cpu).unwrap(),
    );
    let empty = Var::from_vec(Vec::<f32>::new(), 0, &Device::Cpu).unwrap();
    grads.insert(empty.as_tensor(), empty.as_tensor().clone());
    vars.extend([wide.clone(), empty]);
    let before = values(&vars[..200]);
    step_or_hang(vars.clone(), grads).unwrap();
    assert!(wide.to_vec1::<f64>().unwrap().iter().all(|&x| x < 1.0));
    for (v, b) in vars[..200].iter().zip(before) {
        assert_ne!(v.to_vec1::<f32>().unwrap(), b);
    }
}

#[test]
fn a_transposed_view_of_its_own_variable_as_gradient_is_read_as_it_was() {
    let values = [1.0f32, 2.0, 3.0, 4.0];
    let w = Var::from_vec(values.to_vec(), (2, 2), &Device::Cpu).unwrap();
    let mut grads = GradStore::default();
    // Not contiguous and over w's own storage.
    let view = w.as_tensor().t().unwrap();
    assert!(!view.is_contiguous());
    grads.insert(w.as_tensor(), view);
    step_or_hang(vec![w.clone()], grads).unwrap();

    let reference = Var::from_vec(values.to_vec(), (2, 2), &Device::Cpu).unwrap();
    let mut grads = GradStore::default();
    let copy = reference.as_tensor().t().unwrap().contiguous().unwrap();
    grads.insert(reference.as_tensor(), copy);
    step_or_hang(vec![reference.clone()], grads).unwrap();
    let flat = |v: &Var| v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(&w), flat(&reference));
    assert_ne!(flat(&w), values);
}

#[test]
fn aliased_gradients_of_every_dtype_in_one_optimizer_are_copied_first() {
    let dtypes = [DType::F32, DType::F64, DType::BF16, DType::F16];
    let var = |values: &[f32], dtype| {
        let t = Tensor::new(values, &Device::Cpu).unwrap();
        Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()
    };
    // Two variables per dtype, `a` and `b`.
    let make = || -> Vec<Var> {
        dtypes
            .iter()
            .flat_map(|&d| [var(&[1.0, -2.0, 0.5], d), var(&[0.25, 4.0, -1.0], d)])
            .collect()
    };
    // a's gradient is a itself and b's gradient is a too, or copies of a.
    let gradients = |vars: &[Var], copied: bool| {
        let mut grads = GradStore::default();
        for pair in vars.chunks(2) {
            let a = || match copied {
                true => pair[0].as_tensor().copy().unwrap(),
                false => pair[0].as_tensor().clone(),
            };
            grads.insert(pair[0].as_tensor(), a());
            grads.insert(pair[1].as_tensor(), a());
        }
        grads
    };
    let as_f64 = |v: &Var| v.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();

    let vars = make();
    let before: Vec<_> = vars.iter().map(as_f64).collect();
    step_or_hang(vars.clone(), gradients(&vars, false)).unwrap();
    let reference = make();
    step_or_hang(reference.clone(), gradients(&reference, true)).unwrap();
    for ((v, r), b) in vars.iter().zip(&reference).zip(before) {
        assert_eq!(as_f64(v), as_f64(r), "{:?}", v.dtype());
        assert_ne!(as_f64(v), b, "{:?} stepped", v.dtype());
    }
}

#[test]
fn a_gradient_that_aliases_only_in_a_later_step_is_copied_first() {
    // One optimizer over several steps: a gradient that aliases a variable
    // after a step that had none is still seen (a check that remembered the
    // first step's storages wrongly would hang here), and one that aliases a
    // variable without a gradient of its own is no error.
    let make = || -> Vec<Var> {
        (0..4)
            .map(|i| Var::new(&[1.0f32 + i as f32, -2.0, 0.5], &Device::Cpu).unwrap())
            .collect()
    };
    fn grads(vars: &[Var], step: usize, copied: bool) -> GradStore {
        let as_grad = |v: &Var| match copied {
            true => v.as_tensor().copy().unwrap(),
            false => v.as_tensor().clone(),
        };
        let mut grads = GradStore::default();
        for (i, var) in vars.iter().enumerate() {
            let grad = match (step, i) {
                // Step 1: variable 1's gradient is variable 2, and
                // variable 2's gradient is itself.
                (1, 1) => as_grad(&vars[2]),
                (1, 2) => as_grad(&vars[2]),
                // Step 2: variable 0 has no gradient, 3's gradient is 0.
                (2, 0) => continue,
                (2, 3) => as_grad(&vars[0]),
                _ => Tensor::new(&[0.5f32, -1.0, 2.0], &Device::Cpu).unwrap(),
            };
            grads.insert(var.as_tensor(), grad);
        }
        grads
    }
    let vars = make();
    steps_or_hang(vars.clone(), 3, |vars, step| grads(vars, step, false)).unwrap();
    let reference = make();
    steps_or_hang(reference.clone(), 3, |vars, step| grads(vars, step, true)).unwrap();
    let bits = |v: &Var| -> Vec<u32> {
        let values = v.to_vec1::<f32>().unwrap();
        values.into_iter().map(f32::to_bits).collect()
    };
    for (v, r) in vars.iter().zip(&reference) {
        assert_eq!(bits(v), bits(r));
    }
}

/// Sizes that reach every kind of dispatch: variables large enough to be
/// spread over the pool (one of exactly the bound), dispatches filled by
/// their element count, dispatches filled by their variable count, and an
/// odd one at the end.
fn sizes_of_every_dispatch_kind() -> Vec<usize> {
    let bound = fused_rmsprop_candle::ONE_THREAD_DISPATCH_ELEMENTS;
    let mut sizes = vec![bound + 5, 3, bound];
    sizes.extend([bound / 3 + 1; 5]);
    sizes.extend((0..200).map(|i| 1 + (i * 37) % 500));
    sizes.push(bound - 1);
    sizes.extend([16; 70]);
    sizes
}

#[test]
fn vars_of_every_dispatch_kind_step_as_the_bare_kernel() {
    let sizes = sizes_of_every_dispatch_kind();
    let params = ParamsRmsProp {
        momentum: Some(0.9),
        centered: true,
        ..Default::default()
    };
    let (vars, grads, grad_values) = model_of_sizes(&sizes, &[]).unwrap();
    let mut expected = values(&vars);
    let mut fused = RmsProp::new(vars.clone(), params).unwrap();
    let kernel = fused_rmsprop::RmsProp::new(params.hyper()).unwrap();
    let mut states: Vec<fused_rmsprop::State<f32>> = sizes
        .iter()
        .map(|&n| fused_rmsprop::State::new(n, &params.hyper()))
        .collect();
    for _ in 0..3 {
        fused.step(&grads).unwrap();
        let groups = expected
            .iter_mut()
            .zip(&grad_values)
            .zip(&mut states)
            .map(|((p, g), s)| fused_rmsprop::Group::new(p, g, s.slices_mut()));
        kernel.step_many(params.lr, groups).unwrap();
    }
    for (v, (var, want)) in vars.iter().zip(&expected).enumerate() {
        let got: Vec<f32> = var.to_vec1().unwrap();
        let same = got
            .iter()
            .zip(want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "variable {v} ({} elements) differs", sizes[v]);
    }
}

#[test]
fn skip_names_the_poisoned_vars_of_every_dispatch_kind() {
    let sizes = sizes_of_every_dispatch_kind();
    let poisoned = [0, 4, 9, 100, 208, sizes.len() - 1];
    let (vars, grads, _) = model_of_sizes(&sizes, &poisoned).unwrap();
    let before = values(&vars);
    let params = ParamsRmsProp {
        non_finite: fused_rmsprop::NonFinite::Skip,
        ..Default::default()
    };
    let mut opt = RmsProp::new(vars.clone(), params).unwrap();
    opt.step(&grads).unwrap();
    let skipped: Vec<_> = opt.last_skipped().iter().map(|v| v.id()).collect();
    let expected: Vec<_> = poisoned.iter().map(|&v| vars[v].id()).collect();
    assert_eq!(skipped, expected);
    for (v, (var, was)) in vars.iter().zip(&before).enumerate() {
        let moved = var.to_vec1::<f32>().unwrap() != *was;
        assert_eq!(moved, !poisoned.contains(&v), "variable {v}");
    }
}
