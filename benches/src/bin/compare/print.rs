//! The human-readable tables.

use fused_rmsprop_benches::report;

pub(crate) fn print_table(cpu: &str, rows: &[report::Row]) {
    println!(
        "CPU: {cpu}; rayon pool: {} threads",
        rayon::current_num_threads()
    );
    println!(
        "{:<9} {:<34} {:<18} {:<21} {:<30} {:>3} {:>11} {:>9} {:>8} {:>7} {:>9} {:>10}",
        "framework",
        "baseline",
        "case",
        "variant",
        "fused",
        "thr",
        "baseline ms",
        "fused ms",
        "speedup",
        "GB/s",
        "roofline",
        "max |diff|"
    );
    let or_dash = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or("-".to_string(), f);
    for r in rows {
        println!(
            "{:<9} {:<34} {:<18} {:<21} {:<30} {:>3} {:>11.3} {:>9} {:>8} {:>7} {:>9} {:>10}",
            r.framework,
            r.baseline,
            r.case,
            r.variant,
            r.fused,
            r.threads,
            r.baseline_ns / 1e6,
            or_dash(r.fused_ns, &|x| format!("{:.3}", x / 1e6)),
            or_dash(r.speedup, &|x| format!("{x:.2}x")),
            or_dash(r.gbps, &|x| format!("{x:.2}")),
            or_dash(r.roofline_fraction, &|x| format!("{x:.2}")),
            or_dash(r.max_abs_diff, &|x| format!("{x:.1e}")),
        );
    }
    println!(
        "roofline = fused GB/s / skeleton GB/s (same loads and stores, trivial arithmetic, same threads, same run)"
    );
}

/// The peers' rows against the fused kernel of this run at the same size,
/// variant and thread count.
pub(crate) fn print_peers(rows: &[report::Row], peers: &[report::Row]) {
    println!("\nPeers (their own run on this machine, read from --peers):");
    println!(
        "{:<9} {:<34} {:<6} {:<21} {:>3} {:>10} {:>15} {:>14}",
        "framework",
        "optimizer",
        "case",
        "variant",
        "thr",
        "their ms",
        "fused ms (run)",
        "fused speedup"
    );
    for p in peers {
        // An f32 peer meets the kernel's f32 row (case "16M"); a bf16 peer
        // (case "16M bf16") the kernel's bf16 row rounding to nearest.
        let fused = rows.iter().find(|r| {
            r.framework == "kernel"
                && (r.case == p.case || r.case == format!("{} nearest", p.case))
                && r.elements == p.elements
                && r.variant == p.variant
                && r.threads == p.threads.max(1)
                && r.threads > 1
        });
        let fused_ns = fused.and_then(|r| r.fused_ns);
        println!(
            "{:<9} {:<34} {:<6} {:<21} {:>3} {:>10.3} {:>15} {:>14}",
            p.framework,
            p.baseline,
            p.case,
            p.variant,
            p.threads,
            p.baseline_ns / 1e6,
            fused_ns.map_or("-".to_string(), |ns| format!("{:.3}", ns / 1e6)),
            fused_ns.map_or("-".to_string(), |ns| format!("{:.1}x", p.baseline_ns / ns)),
        );
    }
}
