//! The five C math functions the binary calls, defined here from the `libm`
//! crate (Rust's port of musl's libm) instead of taken from glibc's
//! `libm.so.6`: `exp`, `log`, `log10` and `pow` for the bench's statistics
//! and workload estimates (`f64::exp`, `ln`, `log10`, `powf`), `hypotf` for
//! plotters. With no symbol left to import, the link drops `libm.so.6`
//! (`--as-needed`), whose loading (mapping, relocating, IFUNC resolvers,
//! each touched page with its fault-around window) cost every `kvmkit run`
//! ~300 KiB of peak RSS (docs/architecture.md, "Where the peak RSS goes").
//! musl's functions are correctly rounded or within 1 ulp, as glibc's are.

/// `exp(3)`.
#[no_mangle]
pub extern "C" fn exp(x: f64) -> f64 {
    libm::exp(x)
}

/// `log(3)`: the natural logarithm.
#[no_mangle]
pub extern "C" fn log(x: f64) -> f64 {
    libm::log(x)
}

/// `log10(3)`.
#[no_mangle]
pub extern "C" fn log10(x: f64) -> f64 {
    libm::log10(x)
}

/// `pow(3)`.
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

/// `hypotf(3)`.
#[no_mangle]
pub extern "C" fn hypotf(x: f32, y: f32) -> f32 {
    libm::hypotf(x, y)
}

#[cfg(test)]
mod tests {
    /// The std methods that lower to these symbols give musl's answers.
    #[test]
    fn std_math_calls_the_shim() {
        let x = std::hint::black_box(2.5f64);
        assert_eq!(x.exp(), libm::exp(2.5));
        assert_eq!(x.ln(), libm::log(2.5));
        assert_eq!(x.log10(), libm::log10(2.5));
        assert_eq!(x.powf(1.5), libm::pow(2.5, 1.5));
        assert_eq!(1000f64.log10(), 3.0);
        let y = std::hint::black_box(3.0f32);
        assert_eq!(y.hypot(4.0), 5.0);
    }
}
