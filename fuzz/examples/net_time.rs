fn main() {
    let mut inputs = vec![vec![], vec![0], vec![0xff; 64], vec![0; 200], (0..=255u8).collect(), (0..=255u8).rev().cycle().take(1000).collect()];
    inputs.extend(kvmkit_fuzz::pseudo_random_inputs(0x6b76_6d6b_6974_0005, 400, 600));
    for (i, inp) in inputs.iter().enumerate() {
        let t = std::time::Instant::now();
        let o = kvmkit_fuzz::virtio_net_chains::run(inp);
        let e = t.elapsed();
        if e.as_millis() > 50 { eprintln!("input {i}: {e:?} {o:?}"); }
    }
}
