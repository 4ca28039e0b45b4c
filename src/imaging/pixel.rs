//! Pixel arithmetic, pure and unit-tested: stored values → modality values →
//! VOI window → 8-bit display values; palette and YBR colour; downscaling.
//!
//! Everything works on plain slices so the same code serves thumbnails,
//! previews, on-demand renders and the benchmarks.

/// How stored sample bits are laid out (PS3.5 §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleFormat {
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub high_bit: u16,
    pub signed: bool,
}

/// Unpack little-endian stored samples into i32, masking to Bits Stored at
/// High Bit and sign-extending when Pixel Representation is 1. Returns None
/// when the buffer is shorter than `count` samples.
pub fn unpack(bytes: &[u8], f: SampleFormat, count: usize) -> Option<Vec<i32>> {
    let stored = f.bits_stored.clamp(1, 32) as u32;
    let shift = (u32::from(f.high_bit) + 1).saturating_sub(stored);
    let mask: u64 = if stored >= 32 {
        u32::MAX as u64
    } else {
        (1u64 << stored) - 1
    };
    let extend = |raw: u64| -> i32 {
        let v = (raw >> shift) & mask;
        if f.signed && stored < 64 && (v >> (stored - 1)) & 1 == 1 {
            (v as i64 - (1i64 << stored)) as i32
        } else {
            v as i64 as i32
        }
    };
    match f.bits_allocated {
        8 => bytes
            .get(..count)
            .map(|b| b.iter().map(|&x| extend(u64::from(x))).collect()),
        16 => bytes.get(..count * 2).map(|b| {
            b.chunks_exact(2)
                .map(|c| extend(u64::from(u16::from_le_bytes([c[0], c[1]]))))
                .collect()
        }),
        32 => bytes.get(..count * 4).map(|b| {
            b.chunks_exact(4)
                .map(|c| extend(u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))))
                .collect()
        }),
        _ => None,
    }
}

/// Modality LUT as a linear rescale (PS3.3 C.11.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rescale {
    pub slope: f64,
    pub intercept: f64,
}

impl Default for Rescale {
    fn default() -> Self {
        Rescale {
            slope: 1.0,
            intercept: 0.0,
        }
    }
}

impl Rescale {
    #[inline]
    pub fn apply(&self, v: i32) -> f64 {
        f64::from(v) * self.slope + self.intercept
    }
}

/// A Modality LUT from the Modality LUT Sequence (PS3.3 C.11.1): stored
/// values to modality values by table, for data whose modality values are not
/// a linear rescale of the stored ones.
#[derive(Debug, Clone, PartialEq)]
pub struct ModalityLut {
    /// First stored value mapped (descriptor value 2, signed when the pixel
    /// data is).
    pub first: i32,
    pub data: Vec<u16>,
}

impl ModalityLut {
    /// Stored values below the first mapped value take the first entry, above
    /// the last mapped value the last entry (C.11.1.1.1).
    pub fn apply(&self, stored: &[i32]) -> Vec<i32> {
        let Some(last) = self.data.len().checked_sub(1) else {
            return stored.to_vec();
        };
        stored
            .iter()
            .map(|&s| {
                let i = (i64::from(s) - i64::from(self.first)).clamp(0, last as i64) as usize;
                i32::from(self.data[i])
            })
            .collect()
    }
}

/// A VOI window: centre and width, with the standard's function.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub center: f64,
    pub width: f64,
    pub function: VoiFunction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoiFunction {
    /// PS3.3 C.11.2.1.2.1 (the default).
    Linear,
    /// C.11.2.1.3.2.
    LinearExact,
    /// C.11.2.1.3.1.
    Sigmoid,
}

impl Window {
    pub fn linear(center: f64, width: f64) -> Window {
        Window {
            center,
            width,
            function: VoiFunction::Linear,
        }
    }

    /// Map a modality value to 0..=255 exactly as PS3.3 C.11.2.1.2 states it
    /// (output range ymin = 0, ymax = 255).
    #[inline]
    pub fn apply(&self, x: f64) -> u8 {
        let (c, w) = (self.center, self.width);
        let y = match self.function {
            VoiFunction::Linear => {
                let w = w.max(1.0);
                if x <= c - 0.5 - (w - 1.0) / 2.0 {
                    0.0
                } else if x > c - 0.5 + (w - 1.0) / 2.0 {
                    255.0
                } else {
                    ((x - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0
                }
            }
            VoiFunction::LinearExact => {
                let w = w.max(f64::MIN_POSITIVE);
                if x <= c - w / 2.0 {
                    0.0
                } else if x > c + w / 2.0 {
                    255.0
                } else {
                    (x - c) / w * 255.0 + 127.5
                }
            }
            VoiFunction::Sigmoid => 255.0 / (1.0 + (-4.0 * (x - c) / w.max(f64::MIN_POSITIVE)).exp()),
        };
        y.round().clamp(0.0, 255.0) as u8
    }
}

/// A VOI LUT from the VOI LUT Sequence (C.11.2.1.1): descriptor and data.
#[derive(Debug, Clone, PartialEq)]
pub struct VoiLut {
    /// First input value mapped (descriptor value 2, may be signed).
    pub first: i32,
    /// Bits per entry (descriptor value 3).
    pub bits: u16,
    pub data: Vec<u16>,
}

impl VoiLut {
    #[inline]
    pub fn apply(&self, x: f64) -> u8 {
        if self.data.is_empty() {
            return 0;
        }
        let idx = (x.round() as i64 - i64::from(self.first)).clamp(0, self.data.len() as i64 - 1) as usize;
        let max = ((1u32 << self.bits.clamp(1, 16)) - 1) as f64;
        (f64::from(self.data[idx]) / max * 255.0).round().clamp(0.0, 255.0) as u8
    }
}

/// Robust display range when the dataset has no window: the 0.5th and
/// 99.5th percentiles of the modality values, ignoring pixel padding, so a
/// few hot pixels or the padding around a CT do not flatten the image.
/// Takes the sample by value and selects in place: a copy doubled the
/// memory of rendering a large frame.
pub fn robust_window(mut v: Vec<f64>, padding: Option<(f64, f64)>) -> Window {
    v.retain(|x| x.is_finite() && padding.is_none_or(|(lo, hi)| *x < lo || *x > hi));
    if v.is_empty() {
        return Window::linear(0.0, 1.0);
    }
    let n = v.len();
    let lo_i = ((n - 1) as f64 * 0.005) as usize;
    let hi_i = ((n - 1) as f64 * 0.995).ceil() as usize;
    let (_, lo, _) = v.select_nth_unstable_by(lo_i, f64::total_cmp);
    let lo = *lo;
    let (_, hi, _) = v.select_nth_unstable_by(hi_i.min(n - 1), f64::total_cmp);
    let hi = *hi;
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 0.5, lo + 0.5) };
    // Linear window covering [lo, hi] exactly: width-1 spans the range.
    Window::linear((lo + hi) / 2.0 + 0.5, hi - lo + 1.0)
}

/// Which VOI transform to use, in the standard's precedence.
#[derive(Debug, Clone, PartialEq)]
pub enum Voi {
    Window(Window),
    Lut(VoiLut),
}

impl Voi {
    #[inline]
    pub fn apply(&self, x: f64) -> u8 {
        match self {
            Voi::Window(w) => w.apply(x),
            Voi::Lut(l) => l.apply(x),
        }
    }
}

/// Grayscale: stored → modality → VOI → 8-bit, MONOCHROME1 inverted.
///
/// Stored values of a frame span at most 2^16 (2^32 for 32-bit dose grids)
/// distinct values, so the transform is computed once per distinct value in
/// a lookup table and the per-pixel work is one load: this is what lets
/// windowing run near memory speed.
pub fn grayscale(stored: &[i32], rescale: Rescale, voi: &Voi, monochrome1: bool) -> Vec<u8> {
    let direct = |s: i32| {
        let y = voi.apply(rescale.apply(s));
        if monochrome1 { 255 - y } else { y }
    };
    let (Some(&min), Some(&max)) = (stored.iter().min(), stored.iter().max()) else {
        return Vec::new();
    };
    let span = i64::from(max) - i64::from(min) + 1;
    if span > (1 << 20) || (span as usize) > stored.len() {
        return stored.iter().map(|&s| direct(s)).collect();
    }
    let lut: Vec<u8> = (0..span).map(|i| direct((i64::from(min) + i) as i32)).collect();
    window_lut(stored, min, &lut)
}

/// The per-pixel kernel: index a precomputed table (benchmarked against memcpy).
#[inline]
pub fn window_lut(stored: &[i32], min: i32, lut: &[u8]) -> Vec<u8> {
    stored
        .iter()
        .map(|&s| lut.get((s.wrapping_sub(min)) as u32 as usize).copied().unwrap_or(0))
        .collect()
}

/// A palette colour LUT (C.7.6.3.1.5): descriptor and entries per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Palette {
    pub first: i32,
    pub bits: u16,
    pub red: Vec<u16>,
    pub green: Vec<u16>,
    pub blue: Vec<u16>,
}

impl Palette {
    /// Index values below the first mapped value take the first entry, above
    /// the last take the last (C.7.6.3.1.5).
    pub fn apply(&self, stored: &[i32]) -> Vec<u8> {
        let n = self.red.len().min(self.green.len()).min(self.blue.len());
        let mut out = Vec::with_capacity(stored.len() * 3);
        if n == 0 {
            out.resize(stored.len() * 3, 0);
            return out;
        }
        // 16-bit entries keep their high byte; 8-bit entries are used as-is
        // (some writers store 8-bit values in 16-bit words, detected below).
        let eight_in_sixteen = self.bits == 16
            && [&self.red, &self.green, &self.blue]
                .iter()
                .all(|c| c.iter().all(|&v| v <= 0xFF));
        let to8 = |v: u16| -> u8 {
            if self.bits == 8 || eight_in_sixteen {
                v.min(255) as u8
            } else {
                (v >> 8) as u8
            }
        };
        for &s in stored {
            let i = (i64::from(s) - i64::from(self.first)).clamp(0, n as i64 - 1) as usize;
            out.extend_from_slice(&[to8(self.red[i]), to8(self.green[i]), to8(self.blue[i])]);
        }
        out
    }
}

/// YCbCr (full range, as in YBR_FULL) to RGB, PS3.3 C.7.6.3.1.2.
#[inline]
pub fn ybr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (f32::from(y), f32::from(cb) - 128.0, f32::from(cr) - 128.0);
    let c = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    [
        c(y + 1.402 * cr),
        c(y - 0.344_136 * cb - 0.714_136 * cr),
        c(y + 1.772 * cb),
    ]
}

/// Interleave planar (RRR..GGG..BBB) colour to RGBRGB.
pub fn interleave_planar(planar: &[u8], pixels: usize) -> Option<Vec<u8>> {
    let p = planar.get(..pixels * 3)?;
    let (r, rest) = p.split_at(pixels);
    let (g, b) = rest.split_at(pixels);
    let mut out = Vec::with_capacity(pixels * 3);
    for i in 0..pixels {
        out.extend_from_slice(&[r[i], g[i], b[i]]);
    }
    Some(out)
}

/// YBR_FULL_422 native layout (Y Y Cb Cr per pixel pair) to YBR_FULL triplets.
pub fn expand_422(data: &[u8], width: usize, height: usize) -> Option<Vec<u8>> {
    let row_bytes = width.div_ceil(2) * 4;
    let mut out = Vec::with_capacity(width * height * 3);
    for r in 0..height {
        let row = data.get(r * row_bytes..(r + 1) * row_bytes)?;
        for (pair, c) in row.chunks_exact(4).enumerate() {
            let (y0, y1, cb, cr) = (c[0], c[1], c[2], c[3]);
            out.extend_from_slice(&[y0, cb, cr]);
            if pair * 2 + 1 < width {
                out.extend_from_slice(&[y1, cb, cr]);
            }
        }
    }
    Some(out)
}

/// Area-average downscale of an 8-bit image with `channels` interleaved
/// channels so the long side is at most `max_side` (never upscales).
pub fn downscale(src: &[u8], width: usize, height: usize, channels: usize, max_side: usize) -> (Vec<u8>, usize, usize) {
    let long = width.max(height);
    if long <= max_side || max_side == 0 || width == 0 || height == 0 {
        return (src.to_vec(), width, height);
    }
    let scale = max_side as f64 / long as f64;
    let (dw, dh) = (
        ((width as f64 * scale).round() as usize).max(1),
        ((height as f64 * scale).round() as usize).max(1),
    );
    let mut out = vec![0u8; dw * dh * channels];
    // Integer box: each destination pixel averages the source rectangle it covers.
    let xs: Vec<(usize, usize)> = (0..dw)
        .map(|x| (x * width / dw, ((x + 1) * width / dw).max(x * width / dw + 1)))
        .collect();
    let mut acc = vec![0u32; dw * channels];
    for y in 0..dh {
        let (y0, y1) = (y * height / dh, ((y + 1) * height / dh).max(y * height / dh + 1));
        acc.iter_mut().for_each(|a| *a = 0);
        for sy in y0..y1.min(height) {
            let row = &src[sy * width * channels..(sy + 1) * width * channels];
            for (x, &(x0, x1)) in xs.iter().enumerate() {
                for sx in x0..x1.min(width) {
                    for c in 0..channels {
                        acc[x * channels + c] += u32::from(row[sx * channels + c]);
                    }
                }
            }
        }
        for (x, &(x0, x1)) in xs.iter().enumerate() {
            let n = ((x1.min(width) - x0) * (y1.min(height) - y0)) as u32;
            for c in 0..channels {
                out[(y * dw + x) * channels + c] = ((acc[x * channels + c] + n / 2) / n.max(1)) as u8;
            }
        }
    }
    (out, dw, dh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_masks_high_bits_and_sign_extends() {
        // 12 bits stored in 16, high bit 11: the top nibble is overlay garbage
        let f = SampleFormat {
            bits_allocated: 16,
            bits_stored: 12,
            high_bit: 11,
            signed: true,
        };
        let bytes = [0xFF, 0xFF, 0x00, 0xF8, 0xFF, 0x07];
        assert_eq!(unpack(&bytes, f, 3), Some(vec![-1, -2048, 2047]));
        let u = SampleFormat { signed: false, ..f };
        assert_eq!(unpack(&bytes, u, 3), Some(vec![4095, 2048, 2047]));
        // bits stored not at the bottom (high bit 15, 12 stored)
        let shifted = SampleFormat {
            bits_allocated: 16,
            bits_stored: 12,
            high_bit: 15,
            signed: false,
        };
        assert_eq!(unpack(&[0x10, 0x00], shifted, 1), Some(vec![1]));
        assert_eq!(unpack(&[1, 2], f, 3), None);
        let b8 = SampleFormat {
            bits_allocated: 8,
            bits_stored: 8,
            high_bit: 7,
            signed: true,
        };
        assert_eq!(unpack(&[0x80, 0x7F], b8, 2), Some(vec![-128, 127]));
    }

    #[test]
    fn rescale_is_exact() {
        let r = Rescale {
            slope: 1.0,
            intercept: -1024.0,
        };
        assert_eq!(r.apply(1024), 0.0);
        assert_eq!(r.apply(0), -1024.0);
        let r = Rescale {
            slope: 0.5,
            intercept: 10.0,
        };
        assert_eq!(r.apply(7), 13.5);
    }

    #[test]
    fn modality_lut_maps_and_clamps_like_the_standard() {
        // mlut_18.dcm's shape: 4096 entries from -2048, 16-bit output
        let lut = ModalityLut {
            first: -2048,
            data: (0..4096u32).map(|i| (i * 16) as u16).collect(),
        };
        assert_eq!(lut.apply(&[-2048, -2047, 0, 2047]), vec![0, 16, 32768, 65520]);
        // outside the mapped range: the first and the last entry
        assert_eq!(lut.apply(&[-30000, 2048, i32::MAX]), vec![0, 65520, 65520]);
        let empty = ModalityLut { first: 0, data: vec![] };
        assert_eq!(empty.apply(&[5]), vec![5]);
    }

    #[test]
    fn linear_window_matches_the_standard_formula() {
        // C.11.2.1.2.1 example values: c = 40, w = 400 (CT soft tissue)
        let w = Window::linear(40.0, 400.0);
        assert_eq!(w.apply(-160.0), 0); // x <= c - 0.5 - (w-1)/2 = -160
        assert_eq!(w.apply(-159.0), 1); // ((-159-39.5)/399+0.5)*255 = 0.64
        assert_eq!(w.apply(240.0), 255); // x > c - 0.5 + (w-1)/2 = 239
        assert_eq!(w.apply(239.0), 255); // ((239-39.5)/399+0.5)*255 = 255.0
        assert_eq!(w.apply(39.5), 128); // 0.5*255 = 127.5 rounds to 128
        assert_eq!(w.apply(0.0), 102); // ((0-39.5)/399+0.5)*255 = 102.26
        // width 1 is a threshold at c - 0.5
        let t = Window::linear(100.0, 1.0);
        assert_eq!((t.apply(99.4), t.apply(99.6)), (0, 255));
    }

    #[test]
    fn linear_exact_and_sigmoid() {
        let w = Window {
            center: 100.0,
            width: 200.0,
            function: VoiFunction::LinearExact,
        };
        assert_eq!((w.apply(0.0), w.apply(100.0), w.apply(200.1)), (0, 128, 255));
        let s = Window {
            center: 100.0,
            width: 200.0,
            function: VoiFunction::Sigmoid,
        };
        assert_eq!(s.apply(100.0), 128);
        // 255 / (1 + e^2) = 30.4 at c - w/2, and 224.6 at c + w/2
        assert_eq!((s.apply(0.0), s.apply(200.0)), (30, 225));
    }

    #[test]
    fn monochrome1_inverts_after_voi() {
        let voi = Voi::Window(Window::linear(128.0, 256.0));
        let m2 = grayscale(&[0, 255], Rescale::default(), &voi, false);
        let m1 = grayscale(&[0, 255], Rescale::default(), &voi, true);
        assert_eq!(m2, vec![0, 255]);
        assert_eq!(m1, vec![255, 0]);
    }

    #[test]
    fn lookup_table_path_equals_the_direct_formula() {
        let mut x: u32 = 12345;
        let values: Vec<i32> = (0..20_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 8) as i32 % 4096 - 1024
            })
            .collect();
        let r = Rescale {
            slope: 1.5,
            intercept: -100.0,
        };
        for voi in [
            Voi::Window(Window::linear(40.0, 400.0)),
            Voi::Window(Window::linear(-600.0, 1500.0)),
        ] {
            for m1 in [false, true] {
                let fast = grayscale(&values, r, &voi, m1);
                let slow: Vec<u8> = values
                    .iter()
                    .map(|&v| {
                        let y = voi.apply(r.apply(v));
                        if m1 { 255 - y } else { y }
                    })
                    .collect();
                assert_eq!(fast, slow);
            }
        }
        // a sparse range (few pixels, huge span) takes the direct path
        assert_eq!(
            grayscale(
                &[i32::MIN, i32::MAX],
                Rescale::default(),
                &Voi::Window(Window::linear(0.0, 2.0)),
                false
            ),
            vec![0, 255]
        );
    }

    #[test]
    fn voi_lut_lookup_clamps_and_scales() {
        let lut = VoiLut {
            first: -10,
            bits: 12,
            data: vec![0, 2048, 4095],
        };
        let voi = Voi::Lut(lut);
        assert_eq!(voi.apply(-100.0), 0);
        assert_eq!(voi.apply(-9.0), 128);
        assert_eq!(voi.apply(500.0), 255);
    }

    #[test]
    fn robust_window_ignores_padding_and_outliers() {
        let mut v: Vec<f64> = (0..1000).map(|i| f64::from(i % 100)).collect();
        v.extend(std::iter::repeat_n(-2000.0, 5000)); // CT padding
        v.push(30000.0); // a hot pixel
        let w = robust_window(v, Some((-2000.0, -2000.0)));
        assert!(w.apply(0.0) <= 1 && w.apply(99.0) >= 254, "{w:?}");
        assert_eq!(w.apply(-2000.0), 0);
    }

    #[test]
    fn palette_lookup_8_and_16_bit() {
        let p = Palette {
            first: 10,
            bits: 16,
            red: vec![0xFF00, 0x0000],
            green: vec![0, 0x8000],
            blue: vec![0, 0xFFFF],
        };
        assert_eq!(
            p.apply(&[5, 10, 11, 99]),
            vec![255, 0, 0, 255, 0, 0, 0, 128, 255, 0, 128, 255]
        );
        let p8 = Palette {
            first: 0,
            bits: 8,
            red: vec![1, 2],
            green: vec![3, 4],
            blue: vec![5, 6],
        };
        assert_eq!(p8.apply(&[1]), vec![2, 4, 6]);
        // 8-bit values stored in 16-bit entries are not shifted away
        let p = Palette {
            first: 0,
            bits: 16,
            red: vec![200],
            green: vec![100],
            blue: vec![50],
        };
        assert_eq!(p.apply(&[0]), vec![200, 100, 50]);
    }

    #[test]
    fn ybr_full_and_422() {
        assert_eq!(ybr_to_rgb(128, 128, 128), [128, 128, 128]);
        assert_eq!(ybr_to_rgb(76, 85, 255), [254, 0, 0]);
        let ybr = expand_422(&[10, 20, 128, 128, 30, 40, 128, 128], 2, 2).expect("422");
        assert_eq!(ybr, vec![10, 128, 128, 20, 128, 128, 30, 128, 128, 40, 128, 128]);
        assert_eq!(interleave_planar(&[1, 2, 3, 4, 5, 6], 2), Some(vec![1, 3, 5, 2, 4, 6]));
    }

    #[test]
    fn downscale_averages_areas() {
        let src = [0u8, 100, 200, 255, 0, 100, 200, 255];
        let (d, w, h) = downscale(&src, 4, 2, 1, 2);
        assert_eq!((w, h), (2, 1));
        assert_eq!(d, vec![50, 228]);
        let (d, w, h) = downscale(&src, 4, 2, 1, 16);
        assert_eq!((d.len(), w, h), (8, 4, 2));
    }
}

/// RLE Lossless (PS3.5 Annex G) for one frame: a 64-byte header of segment
/// offsets, one PackBits segment per byte plane (most significant byte of
/// each sample first). Returns interleaved little-endian samples.
pub fn rle_decode(frame: &[u8], pixels: usize, samples: usize, bytes_per_sample: usize) -> Result<Vec<u8>, String> {
    let header = frame.get(..64).ok_or("RLE frame shorter than its 64-byte header")?;
    let word = |i: usize| u32::from_le_bytes([header[i * 4], header[i * 4 + 1], header[i * 4 + 2], header[i * 4 + 3]]);
    let n = word(0) as usize;
    let expected = samples * bytes_per_sample;
    if n != expected || n > 15 {
        return Err(format!("RLE header has {n} segments, {expected} expected"));
    }
    let mut out = vec![0u8; pixels * expected];
    for seg in 0..n {
        let start = word(seg + 1) as usize;
        let end = if seg + 1 < n {
            word(seg + 2) as usize
        } else {
            frame.len()
        };
        if start < 64 || start > end || end > frame.len() {
            return Err(format!("RLE segment {seg} offsets {start}..{end} outside the frame"));
        }
        let plane = packbits(&frame[start..end], pixels).ok_or_else(|| format!("RLE segment {seg} decodes short"))?;
        let (sample, byte_from_msb) = (seg / bytes_per_sample, seg % bytes_per_sample);
        let byte = bytes_per_sample - 1 - byte_from_msb;
        for (i, &b) in plane.iter().enumerate() {
            out[(i * samples + sample) * bytes_per_sample + byte] = b;
        }
    }
    Ok(out)
}

/// PackBits (as in RLE Lossless); None if the data ends before `len` bytes.
fn packbits(src: &[u8], len: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    let mut i = 0;
    while out.len() < len && i < src.len() {
        let h = src[i] as i8;
        i += 1;
        match h {
            0..=127 => {
                let n = h as usize + 1;
                out.extend_from_slice(src.get(i..i + n)?);
                i += n;
            }
            -127..=-1 => {
                let b = *src.get(i)?;
                i += 1;
                out.extend(std::iter::repeat_n(b, (1 - i32::from(h)) as usize));
            }
            -128 => {}
        }
    }
    (out.len() >= len).then(|| {
        out.truncate(len);
        out
    })
}

/// Expand a segmented palette LUT (PS3.3 C.7.9.2): discrete and linear
/// segments; indirect segments are refused.
pub fn expand_segmented(words: &[u16], entries: usize) -> Result<Vec<u16>, String> {
    let mut out: Vec<u16> = Vec::with_capacity(entries);
    let mut i = 0;
    while i + 1 < words.len() && out.len() < entries {
        let (op, n) = (words[i], words[i + 1] as usize);
        i += 2;
        match op {
            0 => {
                out.extend_from_slice(words.get(i..i + n).ok_or("discrete segment past the data")?);
                i += n;
            }
            1 => {
                let y1 = f64::from(*words.get(i).ok_or("linear segment without an end value")?);
                i += 1;
                let y0 = f64::from(*out.last().ok_or("linear segment first")?);
                for k in 1..=n {
                    out.push((y0 + (y1 - y0) * k as f64 / n as f64).round() as u16);
                }
            }
            2 => return Err("indirect palette segments are not supported".into()),
            other => return Err(format!("unknown palette segment type {other}")),
        }
    }
    if out.len() < entries {
        return Err(format!("segmented LUT expands to {} of {entries} entries", out.len()));
    }
    out.truncate(entries);
    Ok(out)
}

#[cfg(test)]
mod codec_tests {
    use super::*;

    #[test]
    fn rle_two_byte_samples_msb_segment_first() {
        // 2 pixels of 16-bit: 0x0102, 0x0304 -> segment 0 = [01, 03], segment 1 = [02, 04]
        let mut f = vec![0u8; 64];
        f[0] = 2;
        f[4] = 64;
        f[8] = 67;
        f.extend_from_slice(&[1, 0x01, 0x03]); // literal run of 2
        f.extend_from_slice(&[0xFF, 0x02, 0x00]); // replicate 0x02 twice... then padding
        let out = rle_decode(&f, 2, 1, 2).expect("rle");
        assert_eq!(out, vec![0x02, 0x01, 0x02, 0x03]);
        assert!(rle_decode(&f[..60], 2, 1, 2).is_err());
        assert!(rle_decode(&f, 2, 3, 1).is_err(), "segment count mismatch");
    }

    #[test]
    fn segmented_lut_discrete_and_linear() {
        let words = [0, 2, 10, 20, 1, 4, 60];
        assert_eq!(expand_segmented(&words, 6), Ok(vec![10, 20, 30, 40, 50, 60]));
        assert!(expand_segmented(&[2, 1, 0, 0], 1).is_err());
        assert!(expand_segmented(&[0, 1, 5], 4).is_err());
    }
}
