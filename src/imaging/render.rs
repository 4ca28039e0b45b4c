//! Putting it together: a stored file and render parameters in, display
//! pixels and encoded JPEG/PNG out. Blocking and CPU-bound: callers run it on
//! the render workers or `spawn_blocking`, never on the async runtime.

use super::decode::{self, DecodeError, Frame, Input, Source};
use super::pixel::{self, Voi, Window};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Jpeg,
    Png,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RenderParams {
    /// Explicit window (centre, width) in modality units; None = the dataset's.
    pub window: Option<(f64, f64)>,
    pub frame: u32,
    /// Long side in pixels; 0 = full size.
    pub max_side: u32,
}

/// An 8-bit display image, 1 (gray) or 3 (RGB) channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image8 {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub data: Vec<u8>,
}

/// Values used to pick a robust window: at most this many, evenly sampled.
/// 262 144 is a whole 512x512 CT slice; on a larger frame an even sample
/// of that size puts each 0.5 % percentile on ~1 300 values, while the
/// sample costs 2 MiB instead of 8 (1 << 20 made a 1024x1024 frame's
/// window estimate the largest allocation of rendering it).
const ROBUST_SAMPLE: usize = 1 << 18;

/// The display pipeline for one decoded frame (pure apart from `src`'s
/// already-parsed attributes).
pub fn display(src: &Source, frame: Frame, frame_index: u32, window: Option<(f64, f64)>) -> Image8 {
    match frame {
        Frame::Rgb { width, height, rgb } => Image8 {
            width,
            height,
            channels: 3,
            data: rgb,
        },
        Frame::Stored { width, height, values } => {
            if let Some(p) = &src.info.palette {
                return Image8 {
                    width,
                    height,
                    channels: 3,
                    data: p.apply(&values),
                };
            }
            let rescale = src.rescale(frame_index);
            let voi = match window {
                Some((c, w)) => Voi::Window(Window::linear(c, w.max(1.0))),
                None => match (src.window(frame_index), src.voi_lut()) {
                    (Some(w), _) => Voi::Window(w),
                    (None, Some(lut)) => Voi::Lut(lut),
                    (None, None) => {
                        let step = values.len().div_ceil(ROBUST_SAMPLE).max(1);
                        let pad = src.info.padding;
                        let mut sample = Vec::with_capacity(values.len().div_ceil(step));
                        sample.extend(
                            values
                                .iter()
                                .step_by(step)
                                .filter(|&&v| pad.is_none_or(|(lo, hi)| f64::from(v) < lo || f64::from(v) > hi))
                                .map(|&v| rescale.apply(v)),
                        );
                        Voi::Window(pixel::robust_window(sample, None))
                    }
                },
            };
            let mono1 = src.info.photometric == "MONOCHROME1";
            Image8 {
                width,
                height,
                channels: 1,
                data: pixel::grayscale(&values, rescale, &voi, mono1),
            }
        }
    }
}

/// Any renderable instance: an image frame, or an ECG waveform on ECG paper.
pub fn render_any(path: &dyn Input, p: &RenderParams) -> Result<Image8, DecodeError> {
    match render(path, p) {
        Err(DecodeError::NotAnImage(what)) if what == "waveform" => Ok(scale(render_ecg(path)?, p.max_side)),
        other => other,
    }
}

/// ECG waveforms are small (a few hundred KB), so the whole object is read,
/// with a size limit against hostile files.
pub fn render_ecg(path: &dyn Input) -> Result<Image8, DecodeError> {
    let size = path.size().map_err(|e| DecodeError::Io(e.to_string()))?;
    if size > 64 << 20 {
        return Err(DecodeError::Unsupported("waveform object larger than 64 MB".into()));
    }
    let obj = decode::read_object(path, None)?;
    let ecg = super::ecg::parse_ecg(&obj).map_err(|e| DecodeError::Unsupported(format!("waveform: {e}")))?;
    let img = super::ecg::render_ecg(&ecg, ECG_PX_PER_MM);
    Ok(Image8 {
        width: img.width(),
        height: img.height(),
        channels: 3,
        data: img.into_raw(),
    })
}

/// ECG paper resolution: 5 px/mm keeps the 1 mm grid visible at full size.
pub const ECG_PX_PER_MM: f32 = 5.0;

/// Decode, window and scale one frame of a stored file.
pub fn render(path: &dyn Input, p: &RenderParams) -> Result<Image8, DecodeError> {
    let src = decode::open(path)?;
    render_source(&src, path, p)
}

pub fn render_source(src: &Source, path: &dyn Input, p: &RenderParams) -> Result<Image8, DecodeError> {
    let frame = src.frame(path, p.frame)?;
    let img = display(src, frame, p.frame, p.window);
    Ok(scale(img, p.max_side))
}

pub fn scale(img: Image8, max_side: u32) -> Image8 {
    if max_side == 0 || img.width.max(img.height) <= max_side {
        return img;
    }
    let (data, w, h) = pixel::downscale(
        &img.data,
        img.width as usize,
        img.height as usize,
        img.channels as usize,
        max_side as usize,
    );
    Image8 {
        width: w as u32,
        height: h as u32,
        channels: img.channels,
        data,
    }
}

pub fn encode(img: &Image8, format: Format, quality: u8) -> Result<Vec<u8>, DecodeError> {
    use image::ImageEncoder;
    let color = if img.channels == 3 {
        image::ExtendedColorType::Rgb8
    } else {
        image::ExtendedColorType::L8
    };
    let mut out = Vec::new();
    let r = match format {
        Format::Jpeg => {
            // jpeg-encoder has SIMD paths; the image crate's encoder is about
            // twice as slow, and JPEG encoding is most of a preview's cost.
            let (w, h) = (
                u16::try_from(img.width).map_err(|_| DecodeError::Unsupported("JPEG wider than 65535".into()))?,
                u16::try_from(img.height).map_err(|_| DecodeError::Unsupported("JPEG taller than 65535".into()))?,
            );
            let ct = if img.channels == 3 {
                jpeg_encoder::ColorType::Rgb
            } else {
                jpeg_encoder::ColorType::Luma
            };
            return jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100))
                .encode(&img.data, w, h, ct)
                .map(|()| out)
                .map_err(|e| DecodeError::Io(format!("encoding: {e}")));
        }
        Format::Png => image::codecs::png::PngEncoder::new_with_quality(
            &mut out,
            image::codecs::png::CompressionType::Fast,
            image::codecs::png::FilterType::Adaptive,
        )
        .write_image(&img.data, img.width, img.height, color),
    };
    r.map_err(|e| DecodeError::Io(format!("encoding: {e}")))?;
    Ok(out)
}

/// Side by side, scaled to a common height: a cine strip or a key-image strip.
pub fn strip(images: &[Image8], height: u32) -> Option<Image8> {
    if images.is_empty() || height == 0 {
        return None;
    }
    let scaled: Vec<Image8> = images
        .iter()
        .map(|i| {
            let target_w = ((i.width as f64) * (height as f64) / (i.height.max(1) as f64))
                .round()
                .max(1.0) as u32;
            scale(i.clone(), target_w.max(height).min(i.width.max(i.height)))
        })
        .map(to_rgb)
        .collect();
    let h = scaled.iter().map(|i| i.height).max()?;
    let w: u32 = scaled.iter().map(|i| i.width).sum();
    let mut data = vec![0u8; (w * h * 3) as usize];
    let mut x0 = 0u32;
    for i in &scaled {
        for y in 0..i.height {
            let src = &i.data[(y * i.width * 3) as usize..((y + 1) * i.width * 3) as usize];
            let dst = ((y * w + x0) * 3) as usize;
            data[dst..dst + src.len()].copy_from_slice(src);
        }
        x0 += i.width;
    }
    Some(Image8 {
        width: w,
        height: h,
        channels: 3,
        data,
    })
}

pub fn to_rgb(i: Image8) -> Image8 {
    if i.channels == 3 {
        return i;
    }
    let data = i.data.iter().flat_map(|&v| [v, v, v]).collect();
    Image8 { channels: 3, data, ..i }
}

/// A neutral placeholder for instances without a preview (the reason is in
/// the API and the X-Preview-Status header).
pub fn placeholder(side: u32) -> Image8 {
    let mut data = vec![48u8; (side * side) as usize];
    for i in 0..side {
        for d in 0..2u32 {
            let j = (i + d).min(side - 1);
            data[(i * side + j) as usize] = 110;
            data[(i * side + (side - 1 - j)) as usize] = 110;
        }
    }
    Image8 {
        width: side,
        height: side,
        channels: 1,
        data,
    }
}

pub const THUMB_SIDE: u32 = 192;
pub const PREVIEW_SIDE: u32 = 1024;
pub const CINE_FRAMES: u32 = 16;
pub const CINE_SIDE: u32 = 128;

/// Everything the worker stores for one instance.
pub struct Previews {
    pub thumbnail: Vec<u8>,
    pub preview: Vec<u8>,
    /// Middle frame, for multi-frame instances.
    pub middle: Option<Vec<u8>>,
    /// Evenly spaced frames side by side, and how many.
    pub cine: Option<(Vec<u8>, u32)>,
}

pub fn make_previews(path: &dyn Input) -> Result<Previews, DecodeError> {
    let src = match decode::open(path) {
        Err(DecodeError::NotAnImage(what)) if what == "waveform" => {
            let ecg = render_ecg(path)?;
            return Ok(Previews {
                thumbnail: encode(&scale(ecg.clone(), THUMB_SIDE), Format::Jpeg, 80)?,
                preview: encode(&scale(ecg, PREVIEW_SIDE), Format::Jpeg, 90)?,
                middle: None,
                cine: None,
            });
        }
        other => other?,
    };
    let frames = src.info.frames;
    let first = render_source(
        &src,
        path,
        &RenderParams {
            max_side: PREVIEW_SIDE,
            ..Default::default()
        },
    )?;
    let thumbnail = encode(&scale(first.clone(), THUMB_SIDE), Format::Jpeg, 80)?;
    let preview = encode(&first, Format::Jpeg, 85)?;
    let (middle, cine) = if frames > 1 {
        let mid = frames / 2;
        let m = render_source(
            &src,
            path,
            &RenderParams {
                frame: mid,
                max_side: PREVIEW_SIDE,
                ..Default::default()
            },
        )?;
        let n = frames.min(CINE_FRAMES);
        let mut shots = Vec::with_capacity(n as usize);
        for k in 0..n {
            let f = (u64::from(k) * u64::from(frames) / u64::from(n)) as u32;
            shots.push(render_source(
                &src,
                path,
                &RenderParams {
                    frame: f,
                    max_side: CINE_SIDE,
                    ..Default::default()
                },
            )?);
        }
        let cine = strip(&shots, shots.iter().map(|s| s.height).max().unwrap_or(CINE_SIDE))
            .map(|s| encode(&s, Format::Jpeg, 75).map(|b| (b, n)))
            .transpose()?;
        (Some(encode(&m, Format::Jpeg, 85)?), cine)
    } else {
        (None, None)
    };
    Ok(Previews {
        thumbnail,
        preview,
        middle,
        cine,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_and_placeholder_shapes() {
        let a = Image8 {
            width: 4,
            height: 2,
            channels: 1,
            data: vec![10; 8],
        };
        let b = Image8 {
            width: 2,
            height: 2,
            channels: 3,
            data: vec![20; 12],
        };
        let s = strip(&[a, b], 2).expect("strip");
        assert_eq!((s.width, s.height, s.channels), (6, 2, 3));
        assert_eq!(&s.data[..3], &[10, 10, 10]);
        assert_eq!(&s.data[12..15], &[20, 20, 20]);
        let p = placeholder(16);
        assert_eq!(p.data.len(), 256);
        let jpg = encode(&p, Format::Jpeg, 80).expect("jpeg");
        assert_eq!(&jpg[..2], &[0xFF, 0xD8]);
        let png = encode(&p, Format::Png, 80).expect("png");
        assert_eq!(&png[1..4], b"PNG");
    }
}
