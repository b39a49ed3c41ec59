fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let mut v = vec![];
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let d = std::fs::read(&p).unwrap();
        let t = std::time::Instant::now();
        let o = kvmkit_fuzz::virtio_blk_request::run(&d);
        v.push((t.elapsed(), p, d.len(), o.completed));
    }
    v.sort();
    let total: std::time::Duration = v.iter().map(|x| x.0).sum();
    println!("{} inputs, total {:?}", v.len(), total);
    for x in v.iter().rev().take(5) { println!("{:?} {:?} len {} completed {}", x.0, x.1, x.2, x.3); }
}
