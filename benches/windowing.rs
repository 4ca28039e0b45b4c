//! Windowing kernel throughput in Mpixel/s against a plain memcpy of the same
//! buffer (the physical limit: the kernel must at least read every pixel).
//!
//!     cargo bench --bench windowing
//!
//! Prints criterion's figures for both, then one side-by-side ratio line.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput};
use medrelay::imaging::pixel::{self, Rescale, Voi, Window};

const W: usize = 4096;
const H: usize = 4096;

fn frame() -> Vec<i32> {
    // A 12-bit CT-like frame: smooth gradient plus noise.
    let mut x: u32 = 7;
    (0..W * H)
        .map(|i| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((i % W) as i32 * 3 + (i / W) as i32) % 4096 + (x >> 28) as i32 - 1024
        })
        .collect()
}

fn main() {
    let values = frame();
    let voi = Voi::Window(Window::linear(40.0, 400.0));
    let rescale = Rescale {
        slope: 1.0,
        intercept: -1024.0,
    };
    let mut c = Criterion::default().configure_from_args().sample_size(20);
    let mut g = c.benchmark_group("windowing_4096x4096");
    g.throughput(Throughput::Elements((W * H) as u64));
    g.bench_function("window (rescale+VOI+LUT)", |b| {
        b.iter(|| pixel::grayscale(black_box(&values), rescale, &voi, false))
    });
    g.bench_function("memcpy of the same buffer", |b| b.iter(|| black_box(&values).to_vec()));
    g.finish();
    c.final_summary();

    // Side by side, same run: best of 10 each.
    let best = |f: &dyn Fn()| {
        (0..10)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    let tw = best(&|| {
        black_box(pixel::grayscale(black_box(&values), rescale, &voi, false));
    });
    let tm = best(&|| {
        black_box(black_box(&values).to_vec());
    });
    let mpx = |t: f64| (W * H) as f64 / t / 1e6;
    println!(
        "windowing {:.0} Mpixel/s, memcpy {:.0} Mpixel/s ({:.0} MB/s): ratio windowing/memcpy = {:.2}",
        mpx(tw),
        mpx(tm),
        (W * H * 4) as f64 / tm / 1e6,
        tm / tw
    );
}
