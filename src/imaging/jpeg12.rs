//! A small decoder for 12-bit extended sequential JPEG (ITU T.81 process 4,
//! DICOM transfer syntax 1.2.840.10008.1.2.4.51), which the Rust JPEG crates
//! refuse. Huffman, one or more components without subsampling, restart
//! intervals; pure: bytes in, samples out.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("12-bit JPEG: {0}")]
pub struct JpegError(String);

fn err<T>(m: impl Into<String>) -> Result<T, JpegError> {
    Err(JpegError(m.into()))
}

const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54,
    47, 55, 62, 63,
];

#[derive(Clone, Default)]
struct Huffman {
    /// (code length, code) -> symbol, looked up by length.
    maxcode: [i32; 18],
    valptr: [i32; 17],
    mincode: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], values: Vec<u8>) -> Huffman {
        let mut h = Huffman {
            values,
            ..Default::default()
        };
        let (mut code, mut k) = (0i32, 0i32);
        for len in 1..=16 {
            let n = i32::from(counts[len - 1]);
            h.valptr[len] = k;
            h.mincode[len] = code;
            code += n;
            k += n;
            h.maxcode[len] = if n > 0 { code - 1 } else { -1 };
            code <<= 1;
        }
        h.maxcode[17] = i32::MAX;
        h
    }
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u32,
    n: u32,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<u32, JpegError> {
        if self.n == 0 {
            let b = *self
                .data
                .get(self.pos)
                .ok_or(JpegError("entropy data ends early".into()))?;
            self.pos += 1;
            if b == 0xFF {
                match self.data.get(self.pos) {
                    Some(0x00) => self.pos += 1,
                    _ => return err("marker inside entropy-coded data"),
                }
            }
            self.acc = u32::from(b);
            self.n = 8;
        }
        self.n -= 1;
        Ok((self.acc >> self.n) & 1)
    }

    fn bits(&mut self, k: u32) -> Result<i32, JpegError> {
        let mut v = 0i32;
        for _ in 0..k {
            v = (v << 1) | self.bit()? as i32;
        }
        Ok(v)
    }

    fn decode(&mut self, h: &Huffman) -> Result<u8, JpegError> {
        let mut code = 0i32;
        for len in 1..=16 {
            code = (code << 1) | self.bit()? as i32;
            if h.maxcode[len] >= 0 && code <= h.maxcode[len] && code >= h.mincode[len] {
                let idx = (h.valptr[len] + code - h.mincode[len]) as usize;
                return h.values.get(idx).copied().ok_or(JpegError("bad Huffman table".into()));
            }
        }
        err("invalid Huffman code")
    }

    /// Skip to the byte after an RSTn marker.
    fn restart(&mut self) -> Result<(), JpegError> {
        self.n = 0;
        while self.pos + 1 < self.data.len() {
            if self.data[self.pos] == 0xFF && (0xD0..=0xD7).contains(&self.data[self.pos + 1]) {
                self.pos += 2;
                return Ok(());
            }
            self.pos += 1;
        }
        err("restart marker missing")
    }
}

fn extend(v: i32, t: u32) -> i32 {
    if t == 0 {
        0
    } else if v < (1 << (t - 1)) {
        v - (1 << t) + 1
    } else {
        v
    }
}

fn idct(block: &[f32; 64], out: &mut [f32; 64]) {
    // Separable float IDCT; 12-bit precision needs no fixed-point tricks here.
    let c = |u: usize| if u == 0 { std::f32::consts::FRAC_1_SQRT_2 } else { 1.0 };
    let mut cos = [[0f32; 8]; 8];
    for (x, row) in cos.iter_mut().enumerate() {
        for (u, v) in row.iter_mut().enumerate() {
            *v = c(u) * (((2 * x + 1) as f32 * u as f32 * std::f32::consts::PI) / 16.0).cos();
        }
    }
    let mut tmp = [0f32; 64];
    for y in 0..8 {
        for x in 0..8 {
            tmp[y * 8 + x] = (0..8).map(|u| cos[x][u] * block[y * 8 + u]).sum::<f32>() / 2.0;
        }
    }
    for x in 0..8 {
        for y in 0..8 {
            out[y * 8 + x] = (0..8).map(|v| cos[y][v] * tmp[v * 8 + x]).sum::<f32>() / 2.0;
        }
    }
}

/// Decoded image: interleaved samples (0..4095), width, height, components.
pub fn decode(data: &[u8]) -> Result<(Vec<u16>, usize, usize, usize), JpegError> {
    if data.get(..2) != Some(&[0xFF, 0xD8]) {
        return err("no SOI marker");
    }
    let mut qt = [[0u16; 64]; 4];
    let mut dc: [Option<Huffman>; 4] = Default::default();
    let mut ac: [Option<Huffman>; 4] = Default::default();
    let mut restart_interval = 0usize;
    // (id, h, v, quant table)
    let mut comps: Vec<(u8, u8, u8, usize)> = Vec::new();
    let (mut width, mut height, mut precision) = (0usize, 0usize, 0u8);
    let mut pos = 2;
    let seg = |pos: usize| -> Result<&[u8], JpegError> {
        let len = usize::from(u16::from_be_bytes([
            *data.get(pos + 2).ok_or(JpegError("truncated".into()))?,
            *data.get(pos + 3).ok_or(JpegError("truncated".into()))?,
        ]));
        data.get(pos + 4..pos + 2 + len)
            .ok_or(JpegError("segment past the end".into()))
    };
    loop {
        if data.get(pos) != Some(&0xFF) {
            return err("expected a marker");
        }
        let marker = *data.get(pos + 1).ok_or(JpegError("truncated".into()))?;
        match marker {
            0xFF => {
                pos += 1;
                continue;
            }
            0xD9 => return err("EOI before scan"),
            0xDB => {
                let s = seg(pos)?;
                let mut i = 0;
                while i < s.len() {
                    let (pq, tq) = (s[i] >> 4, usize::from(s[i] & 15));
                    i += 1;
                    let t = qt.get_mut(tq).ok_or(JpegError("bad DQT table id".into()))?;
                    for z in ZIGZAG {
                        t[z] = if pq == 1 {
                            let v = u16::from_be_bytes([*s.get(i).unwrap_or(&0), *s.get(i + 1).unwrap_or(&0)]);
                            i += 2;
                            v
                        } else {
                            let v = u16::from(*s.get(i).unwrap_or(&0));
                            i += 1;
                            v
                        };
                    }
                }
            }
            0xC4 => {
                let s = seg(pos)?;
                let mut i = 0;
                while i + 17 <= s.len() {
                    let (class, id) = (s[i] >> 4, usize::from(s[i] & 15));
                    let mut counts = [0u8; 16];
                    counts.copy_from_slice(&s[i + 1..i + 17]);
                    let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
                    let values = s
                        .get(i + 17..i + 17 + total)
                        .ok_or(JpegError("DHT past the end".into()))?
                        .to_vec();
                    let h = Huffman::new(&counts, values);
                    let slot = if class == 0 { dc.get_mut(id) } else { ac.get_mut(id) };
                    *slot.ok_or(JpegError("bad DHT table id".into()))? = Some(h);
                    i += 17 + total;
                }
            }
            0xDD => {
                let s = seg(pos)?;
                restart_interval = usize::from(u16::from_be_bytes([s[0], *s.get(1).unwrap_or(&0)]));
            }
            0xC1 | 0xC0 => {
                let s = seg(pos)?;
                if s.len() < 6 {
                    return err("short SOF");
                }
                precision = s[0];
                height = usize::from(u16::from_be_bytes([s[1], s[2]]));
                width = usize::from(u16::from_be_bytes([s[3], s[4]]));
                for k in 0..usize::from(s[5]) {
                    let c = s.get(6 + k * 3..9 + k * 3).ok_or(JpegError("short SOF".into()))?;
                    comps.push((c[0], c[1] >> 4, c[1] & 15, usize::from(c[2] & 3)));
                }
            }
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return err(format!("unsupported JPEG process (SOF{})", marker - 0xC0));
            }
            0xDA => {
                let s = seg(pos)?;
                let len = usize::from(u16::from_be_bytes([data[pos + 2], data[pos + 3]]));
                let ns = usize::from(*s.first().ok_or(JpegError("short SOS".into()))?);
                let mut tables = Vec::new();
                for k in 0..ns {
                    let c = s.get(1 + k * 2..3 + k * 2).ok_or(JpegError("short SOS".into()))?;
                    let idx = comps
                        .iter()
                        .position(|x| x.0 == c[0])
                        .ok_or(JpegError("SOS names no component".into()))?;
                    tables.push((idx, usize::from(c[1] >> 4), usize::from(c[1] & 15)));
                }
                return scan(
                    &data[pos + 2 + len..],
                    &comps,
                    &tables,
                    &qt,
                    &dc,
                    &ac,
                    restart_interval,
                    width,
                    height,
                    precision,
                );
            }
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([
            *data.get(pos + 2).ok_or(JpegError("truncated".into()))?,
            *data.get(pos + 3).ok_or(JpegError("truncated".into()))?,
        ]));
        pos += 2 + len;
    }
}

#[allow(clippy::too_many_arguments)]
fn scan(
    entropy: &[u8],
    comps: &[(u8, u8, u8, usize)],
    tables: &[(usize, usize, usize)],
    qt: &[[u16; 64]; 4],
    dc: &[Option<Huffman>; 4],
    ac: &[Option<Huffman>; 4],
    restart_interval: usize,
    width: usize,
    height: usize,
    precision: u8,
) -> Result<(Vec<u16>, usize, usize, usize), JpegError> {
    if comps.iter().any(|c| c.1 != 1 || c.2 != 1) {
        return err("subsampled components are not supported");
    }
    if tables.len() != comps.len() {
        return err("non-interleaved multi-scan images are not supported");
    }
    if width == 0 || height == 0 || width * height > 100_000_000 {
        return err("invalid image size");
    }
    let nc = comps.len();
    let (bw, bh) = (width.div_ceil(8), height.div_ceil(8));
    let mut out = vec![0u16; width * height * nc];
    let mut pred = vec![0i32; nc];
    let mut bits = Bits {
        data: entropy,
        pos: 0,
        acc: 0,
        n: 0,
    };
    let max = (1i32 << precision) - 1;
    let shift = 1i32 << (precision - 1);
    let mut coef = [0f32; 64];
    let mut pix = [0f32; 64];
    for mcu in 0..bw * bh {
        if restart_interval > 0 && mcu > 0 && mcu % restart_interval == 0 {
            bits.restart()?;
            pred.iter_mut().for_each(|p| *p = 0);
        }
        let (bx, by) = (mcu % bw, mcu / bw);
        for &(ci, td, ta) in tables {
            let dct = dc
                .get(td)
                .and_then(Option::as_ref)
                .ok_or(JpegError("missing DC table".into()))?;
            let act = ac
                .get(ta)
                .and_then(Option::as_ref)
                .ok_or(JpegError("missing AC table".into()))?;
            let q = &qt[comps[ci].3];
            coef.iter_mut().for_each(|c| *c = 0.0);
            let t = u32::from(bits.decode(dct)?);
            if t > 16 {
                return err("bad DC magnitude");
            }
            pred[ci] += extend(bits.bits(t)?, t);
            coef[0] = pred[ci] as f32 * f32::from(q[0]);
            let mut k = 1;
            while k < 64 {
                let rs = bits.decode(act)?;
                let (r, sz) = (usize::from(rs >> 4), u32::from(rs & 15));
                if sz == 0 {
                    if r == 15 {
                        k += 16;
                        continue;
                    }
                    break;
                }
                k += r;
                if k > 63 {
                    return err("AC coefficient index past 63");
                }
                coef[ZIGZAG[k]] = extend(bits.bits(sz)?, sz) as f32 * f32::from(q[ZIGZAG[k]]);
                k += 1;
            }
            idct(&coef, &mut pix);
            for y in 0..8 {
                let py = by * 8 + y;
                if py >= height {
                    break;
                }
                for x in 0..8 {
                    let px = bx * 8 + x;
                    if px < width {
                        let v = (pix[y * 8 + x].round() as i32 + shift).clamp(0, max);
                        out[(py * width + px) * nc + ci] = v as u16;
                    }
                }
            }
        }
    }
    Ok((out, width, height, nc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huffman_canonical_codes() {
        // two 2-bit codes and one 3-bit code: 00, 01, 100
        let mut counts = [0u8; 16];
        counts[1] = 2;
        counts[2] = 1;
        let h = Huffman::new(&counts, vec![5, 6, 7]);
        let data = [0b0001_1000u8, 0];
        let mut b = Bits {
            data: &data,
            pos: 0,
            acc: 0,
            n: 0,
        };
        assert_eq!((b.decode(&h), b.decode(&h), b.decode(&h)), (Ok(5), Ok(6), Ok(7)));
    }

    #[test]
    fn idct_of_dc_only_is_flat() {
        let mut c = [0f32; 64];
        c[0] = 80.0;
        let mut p = [0f32; 64];
        idct(&c, &mut p);
        assert!(p.iter().all(|v| (v - 10.0).abs() < 1e-3), "{p:?}");
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(decode(b"not a jpeg").is_err());
        assert!(decode(&[0xFF, 0xD8, 0xFF, 0xC1, 0x00]).is_err());
        assert!(decode(&[0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02]).is_err());
    }

    #[test]
    fn corpus_12_bit_file_decodes_to_plausible_values() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".cache/dicom-samples/pydicom/data/test_files/JPEG-lossy.dcm");
        let obj = dicom_object::open_file(&p).expect("corpus file");
        let pd = obj.element(dicom_dictionary_std::tags::PIXEL_DATA).expect("pixel data");
        let frags = pd.value().fragments().expect("encapsulated");
        let (px, w, h, nc) = decode(&frags.concat()).expect("decode");
        assert_eq!((w, h, nc), (256, 1024, 1));
        let max = px.iter().copied().max().unwrap_or(0);
        assert!(max > 0 && max < 4096, "{max}");
    }
}
