//! A small ray tracer in the spirit of C-Ray (John Tsiombikas's C-Ray; this is
//! kvmkit's own code, not a port): spheres, point lights, hard shadows, Phong
//! highlights and mirror reflections, one primary ray per pixel. Floating point
//! with `core` only: [`sqrt`] is a Newton iteration and powers are integer
//! powers, so the guest and the host run exactly the same instructions.
//!
//! Rows are split among threads (row `y` goes to thread `y % threads`) and
//! every pixel adds its own term to a wrapping checksum, so the sum of the
//! threads' checksums is the same whatever the thread count.

#[derive(Clone, Copy, Debug, PartialEq)]
struct V3 {
    x: f64,
    y: f64,
    z: f64,
}

const fn v(x: f64, y: f64, z: f64) -> V3 {
    V3 { x, y, z }
}

impl V3 {
    fn add(self, o: V3) -> V3 {
        v(self.x + o.x, self.y + o.y, self.z + o.z)
    }
    fn sub(self, o: V3) -> V3 {
        v(self.x - o.x, self.y - o.y, self.z - o.z)
    }
    fn scale(self, s: f64) -> V3 {
        v(self.x * s, self.y * s, self.z * s)
    }
    fn mul(self, o: V3) -> V3 {
        v(self.x * o.x, self.y * o.y, self.z * o.z)
    }
    fn dot(self, o: V3) -> f64 {
        self.x * o.x + self.y * o.y + self.z * o.z
    }
    fn norm(self) -> V3 {
        let l = sqrt(self.dot(self));
        if l > 0.0 {
            self.scale(1.0 / l)
        } else {
            self
        }
    }
}

/// Square root by Newton's iteration from an exponent-halving first guess
/// (`core` has no `f64::sqrt` on stable). Exact to within an ulp or two for
/// the positive, finite values the tracer uses; 0 for x <= 0.
#[inline]
pub fn sqrt(x: f64) -> f64 {
    if x <= 0.0 || x.is_nan() {
        return 0.0;
    }
    if x.is_infinite() {
        return x;
    }
    // Halve the exponent: a guess within a factor of ~1.5 of the root.
    let mut y = f64::from_bits((x.to_bits() >> 1) + (0x3ff_u64 << 51));
    for _ in 0..5 {
        y = 0.5 * (y + x / y);
    }
    y
}

/// `b` to the integer power `e` (square and multiply).
#[inline]
pub fn powi(mut b: f64, mut e: u32) -> f64 {
    let mut r = 1.0;
    while e > 0 {
        if e & 1 == 1 {
            r *= b;
        }
        b *= b;
        e >>= 1;
    }
    r
}

struct Sphere {
    center: V3,
    radius: f64,
    color: V3,
    /// Phong exponent.
    spec_pow: u32,
    /// Reflectivity, 0..1.
    refl: f64,
}

const SPHERES: [Sphere; 6] = [
    // The floor: a huge sphere, as C-Ray's scenes do.
    Sphere {
        center: v(0.0, -1000.0, 2.0),
        radius: 999.0,
        color: v(0.5, 0.5, 0.45),
        spec_pow: 16,
        refl: 0.2,
    },
    Sphere {
        center: v(-1.6, 0.0, 3.0),
        radius: 1.0,
        color: v(1.0, 0.3, 0.2),
        spec_pow: 40,
        refl: 0.4,
    },
    Sphere {
        center: v(0.6, -0.2, 4.0),
        radius: 0.8,
        color: v(0.2, 0.9, 0.3),
        spec_pow: 60,
        refl: 0.6,
    },
    Sphere {
        center: v(2.2, 0.3, 5.0),
        radius: 1.3,
        color: v(0.2, 0.4, 1.0),
        spec_pow: 30,
        refl: 0.5,
    },
    Sphere {
        center: v(-0.4, 1.4, 6.5),
        radius: 1.1,
        color: v(0.95, 0.9, 0.3),
        spec_pow: 80,
        refl: 0.7,
    },
    Sphere {
        center: v(0.0, 0.0, -3.0),
        radius: 1.5,
        color: v(0.8, 0.8, 0.8),
        spec_pow: 20,
        refl: 0.3,
    },
];

const LIGHTS: [V3; 3] = [v(-5.0, 6.0, -2.0), v(6.0, 4.0, 0.0), v(0.0, 10.0, 8.0)];
const MAX_DEPTH: u32 = 6;
const EPS: f64 = 1e-6;
const FOV_TAN: f64 = 0.75; // tan(~37 degrees)

/// Nearest hit of the ray (o, d) (d normalised): (distance, sphere index).
fn nearest(o: V3, d: V3) -> Option<(f64, usize)> {
    let mut best: Option<(f64, usize)> = None;
    for (i, s) in SPHERES.iter().enumerate() {
        let oc = o.sub(s.center);
        let b = oc.dot(d);
        let c = oc.dot(oc) - s.radius * s.radius;
        let disc = b * b - c;
        if disc < 0.0 {
            continue;
        }
        let r = sqrt(disc);
        let t = if -b - r > EPS { -b - r } else { -b + r };
        if t > EPS && best.is_none_or(|(bt, _)| t < bt) {
            best = Some((t, i));
        }
    }
    best
}

fn shadowed(p: V3, to_light: V3, dist: f64) -> bool {
    nearest(p, to_light).is_some_and(|(t, _)| t < dist)
}

fn trace(o: V3, d: V3, depth: u32) -> V3 {
    let Some((t, i)) = nearest(o, d) else {
        // Sky: a vertical gradient.
        let k = 0.5 * (d.y + 1.0);
        return v(0.1, 0.12, 0.2).add(v(0.3, 0.4, 0.6).scale(k));
    };
    let s = &SPHERES[i];
    let p = o.add(d.scale(t));
    let n = p.sub(s.center).scale(1.0 / s.radius);
    let p = p.add(n.scale(1e-7));
    let mut col = s.color.scale(0.08);
    for &l in &LIGHTS {
        let to = l.sub(p);
        let dist = sqrt(to.dot(to));
        let ld = to.scale(1.0 / dist);
        let diff = n.dot(ld);
        if diff <= 0.0 || shadowed(p, ld, dist) {
            continue;
        }
        col = col.add(s.color.scale(diff * 0.6));
        let h = ld.sub(d).norm();
        let spec = n.dot(h);
        if spec > 0.0 {
            col = col.add(v(1.0, 1.0, 1.0).scale(0.5 * powi(spec, s.spec_pow)));
        }
    }
    if depth < MAX_DEPTH && s.refl > 0.0 {
        let r = d.sub(n.scale(2.0 * d.dot(n))).norm();
        let rc = trace(p, r, depth + 1);
        col = col.scale(1.0 - s.refl).add(rc.mul(v(s.refl, s.refl, s.refl)));
    }
    col
}

fn byte(c: f64) -> u64 {
    (c.clamp(0.0, 1.0) * 255.0 + 0.5) as u64
}

/// The picture's height for width `w` (4:3).
pub fn raytrace_height(w: u64) -> u64 {
    (w / 4 * 3).max(1)
}

/// Renders the rows `y` with `y % threads == thread` of a `w` x `w/4*3`
/// picture; returns their checksum. Summing (wrapping) the checksums of all
/// threads gives the picture's checksum.
#[inline(never)]
pub fn raytrace(w: u64, thread: u64, threads: u64) -> u64 {
    let h = raytrace_height(w);
    let eye = v(0.0, 0.6, -6.5);
    let aspect = w as f64 / h as f64;
    let mut sum = 0u64;
    let mut y = thread;
    while y < h {
        for x in 0..w {
            let px = (2.0 * (x as f64 + 0.5) / w as f64 - 1.0) * FOV_TAN * aspect;
            let py = (1.0 - 2.0 * (y as f64 + 0.5) / h as f64) * FOV_TAN;
            let d = v(px, py, 1.0).norm();
            let c = trace(eye, d, 0);
            let rgb = (byte(c.x) << 16) | (byte(c.y) << 8) | byte(c.z);
            let index = y * w + x;
            sum = sum.wrapping_add(rgb.wrapping_mul(2 * index + 1));
        }
        y += threads.max(1);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqrt_and_powers() {
        for x in [1e-9, 0.25, 2.0, 9.0, 1e6, 12345.678] {
            let r = sqrt(x);
            assert!((r * r - x).abs() <= x * 1e-14, "{x}: {r}");
        }
        assert_eq!(sqrt(0.0), 0.0);
        assert_eq!(powi(2.0, 10), 1024.0);
        assert_eq!(powi(3.0, 0), 1.0);
    }

    #[test]
    fn threads_split_the_same_picture() {
        let one = raytrace(64, 0, 1);
        let three = (0..3).fold(0u64, |a, t| a.wrapping_add(raytrace(64, t, 3)));
        assert_eq!(one, three);
        assert_ne!(one, 0);
    }
}
