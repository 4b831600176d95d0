//! The process default linger time: read once from `FUSED_RMSPROP_LINGER_US`,
//! overridden by `set_default_linger`. One test in its own binary, so that
//! nothing else in this process reads the default (or the environment)
//! before it is set here.

use std::time::Duration;

use fused_rmsprop::{DEFAULT_LINGER, LINGER_ENV, Linger, default_linger, set_default_linger};

#[test]
fn the_environment_sets_the_default_and_code_overrides_it() {
    // SAFETY: this binary holds this one test, and nothing before it reads
    // or writes the environment from another thread: the harness's main
    // thread only waits for the test.
    unsafe { std::env::set_var(LINGER_ENV, "250") };
    assert_eq!(default_linger(), Duration::from_micros(250));
    // Read once: a later change of the environment does not count.
    // SAFETY: as above.
    unsafe { std::env::set_var(LINGER_ENV, "not a number") };
    assert_eq!(
        Linger::ProcessDefault.duration(),
        Duration::from_micros(250)
    );

    set_default_linger(Duration::ZERO);
    assert_eq!(Linger::ProcessDefault.duration(), Duration::ZERO);
    assert_eq!(Linger::For(DEFAULT_LINGER).duration(), DEFAULT_LINGER);
    assert_eq!(Linger::Off.duration(), Duration::ZERO);

    // A threaded step with lingering off still steps every element.
    let opt = fused_rmsprop::RmsProp::new(fused_rmsprop::Hyper::default()).unwrap();
    let mut params = vec![1.0f32; 1 << 16];
    let mut state = fused_rmsprop::State::new(params.len(), opt.hyper());
    opt.step(&mut params, &vec![0.5; 1 << 16], &mut state)
        .unwrap();
    assert!(params.iter().all(|&p| p < 1.0));
}
