//! ECG waveforms (DICOM Waveform IOD, PS3.3 C.10.9) rendered as ECG paper.
//!
//! [`parse_ecg`] reads one multiplex group of the WaveformSequence and
//! calibrates every voltage channel to microvolts; [`render_ecg`] draws the
//! result the way an electrocardiograph prints it: 25 mm/s, 10 mm/mV, a pink
//! 1 mm / 5 mm grid, a 1 mV calibration pulse at the start of every row, lead
//! labels and a footer with the recording parameters (never patient data).
//!
//! A 12-lead recording is laid out as 3 rows × 4 columns of 2.5 s
//! (I aVR V1 V4 / II aVL V2 V5 / III aVF V3 V6) plus a 10 s rhythm strip of
//! lead II; any other recording gets one full-width row per channel. Both
//! functions are pure (no I/O) and never panic on malformed input.

use std::borrow::Cow;

use dicom_core::Tag;
use dicom_core::value::{PrimitiveValue, Value};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use image::{Rgb, RgbImage};

/// Why a data set could not be read as an ECG. Group and channel numbers in
/// the messages are 1-based, as a user would count them.
#[derive(Debug, thiserror::Error)]
pub enum EcgError {
    #[error("no WaveformSequence (5400,0100) in the data set")]
    NoWaveformSequence,
    #[error("WaveformSequence (5400,0100) has no items")]
    EmptyWaveformSequence,
    #[error("waveform group {group}: missing {name}")]
    MissingAttribute { group: usize, name: &'static str },
    #[error("waveform group {group}: invalid {name} {value:?}")]
    InvalidAttribute {
        group: usize,
        name: &'static str,
        value: String,
    },
    #[error("unsupported WaveformBitsAllocated {0} (only 8 and 16 are supported)")]
    UnsupportedBitsAllocated(u64),
    #[error("unsupported WaveformSampleInterpretation {0:?} (only SS, US, SB and UB are supported)")]
    UnsupportedSampleInterpretation(String),
    #[error("WaveformSampleInterpretation {interpretation} does not match WaveformBitsAllocated {bits}")]
    BitsInterpretationMismatch { bits: u64, interpretation: String },
    #[error("NumberOfWaveformChannels is {declared} but ChannelDefinitionSequence has {defined} items")]
    ChannelCountMismatch { declared: u64, defined: usize },
    #[error(
        "WaveformData shorter than channels × samples: {channels} × {samples} samples need {expected} bytes, \
         found {actual}"
    )]
    TruncatedData {
        channels: u64,
        samples: u64,
        expected: u64,
        actual: usize,
    },
    #[error("channel {channel}: invalid {name} {value:?}")]
    InvalidChannelAttribute {
        channel: usize,
        name: &'static str,
        value: String,
    },
    #[error("no channel is calibrated in volts ({reason})")]
    NoVoltageChannels { reason: String },
}

/// One lead, calibrated. `microvolts[i]` is the value at `i / sampling_hz`
/// seconds; samples equal to WaveformPaddingValue are `NaN` (not drawn).
#[derive(Debug, Clone, PartialEq)]
pub struct EcgChannel {
    /// Short lead name ("I", "aVR", "V1", ...) when the lead is recognised,
    /// otherwise the code meaning / value / channel label as recorded.
    pub label: String,
    pub microvolts: Vec<f32>,
}

/// One multiplex group: all channels share the sampling rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Ecg {
    pub sampling_hz: f64,
    pub channels: Vec<EcgChannel>,
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Parse the first waveform multiplex group that looks like an ECG (most channels / 'RHYTHM' preferred).
///
/// Groups whose channels are calibrated in volts are preferred over others,
/// 'MEDIAN'/'AVERAGE' beats are only used when nothing else is present, then
/// the most channels, a 'RHYTHM' label and the most samples win; ties go to
/// the first group. Channels that are not voltages (or not calibrated) are
/// skipped; if none is left the group is rejected.
pub fn parse_ecg(obj: &InMemDicomObject) -> Result<Ecg, EcgError> {
    let groups = obj.get(tags::WAVEFORM_SEQUENCE).ok_or(EcgError::NoWaveformSequence)?;
    let groups = groups.items().ok_or(EcgError::NoWaveformSequence)?;
    let mut best: Option<(usize, &InMemDicomObject, GroupRank)> = None;
    for (i, g) in groups.iter().enumerate() {
        let rank = group_rank(g);
        if best.as_ref().is_none_or(|(_, _, b)| rank > *b) {
            best = Some((i, g, rank));
        }
    }
    let (index, group, _) = best.ok_or(EcgError::EmptyWaveformSequence)?;
    parse_group(index + 1, group)
}

/// Ordering key for choosing a multiplex group; larger is better.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct GroupRank {
    has_voltage: bool,
    not_average: bool,
    channels: u64,
    rhythm: bool,
    samples: u64,
}

fn group_rank(g: &InMemDicomObject) -> GroupRank {
    let label = text(g, tags::MULTIPLEX_GROUP_LABEL)
        .unwrap_or_default()
        .to_ascii_uppercase();
    let has_voltage = items(g, tags::CHANNEL_DEFINITION_SEQUENCE)
        .is_some_and(|defs| defs.iter().any(|d| channel_units_to_uv(d).is_some()));
    GroupRank {
        has_voltage,
        not_average: !(label.contains("MEDIAN") || label.contains("AVERAGE")),
        channels: uint(g, tags::NUMBER_OF_WAVEFORM_CHANNELS).unwrap_or(0),
        rhythm: label.contains("RHYTHM"),
        samples: uint(g, tags::NUMBER_OF_WAVEFORM_SAMPLES).unwrap_or(0),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SampleKind {
    S8,
    U8,
    S16,
    U16,
}

impl SampleKind {
    fn new(bits: u64, interpretation: &str) -> Result<Self, EcgError> {
        match (bits, interpretation) {
            (8, "SB") => Ok(Self::S8),
            (8, "UB") => Ok(Self::U8),
            (16, "SS") => Ok(Self::S16),
            (16, "US") => Ok(Self::U16),
            (8 | 16, "SB" | "UB" | "SS" | "US") => Err(EcgError::BitsInterpretationMismatch {
                bits,
                interpretation: interpretation.to_string(),
            }),
            (8 | 16, other) => Err(EcgError::UnsupportedSampleInterpretation(other.to_string())),
            (other, _) => Err(EcgError::UnsupportedBitsAllocated(other)),
        }
    }

    fn bytes(self) -> usize {
        match self {
            Self::S8 | Self::U8 => 1,
            Self::S16 | Self::U16 => 2,
        }
    }

    /// Decode one little-endian sample; `None` if `b` is too short.
    fn decode(self, b: &[u8]) -> Option<i32> {
        Some(match self {
            Self::S8 => i32::from(*b.first()? as i8),
            Self::U8 => i32::from(*b.first()?),
            Self::S16 => i32::from(i16::from_le_bytes([*b.first()?, *b.get(1)?])),
            Self::U16 => i32::from(u16::from_le_bytes([*b.first()?, *b.get(1)?])),
        })
    }
}

fn parse_group(group: usize, g: &InMemDicomObject) -> Result<Ecg, EcgError> {
    let missing = |name| EcgError::MissingAttribute { group, name };
    let invalid = |name, value: &str| EcgError::InvalidAttribute {
        group,
        name,
        value: value.to_string(),
    };
    let required_uint = |tag, name| -> Result<u64, EcgError> {
        let t = text(g, tag).ok_or(missing(name))?;
        first_value(&t).parse::<u64>().map_err(|_| invalid(name, &t))
    };

    let n_channels = required_uint(tags::NUMBER_OF_WAVEFORM_CHANNELS, "NumberOfWaveformChannels")?;
    let n_samples = required_uint(tags::NUMBER_OF_WAVEFORM_SAMPLES, "NumberOfWaveformSamples")?;
    if n_channels == 0 {
        return Err(invalid("NumberOfWaveformChannels", "0"));
    }
    if n_samples == 0 {
        return Err(invalid("NumberOfWaveformSamples", "0"));
    }
    let fs_text = text(g, tags::SAMPLING_FREQUENCY).ok_or(missing("SamplingFrequency"))?;
    let sampling_hz = first_value(&fs_text)
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && *f > 0.0)
        .ok_or_else(|| invalid("SamplingFrequency", &fs_text))?;
    let bits = required_uint(tags::WAVEFORM_BITS_ALLOCATED, "WaveformBitsAllocated")?;
    let interpretation =
        text(g, tags::WAVEFORM_SAMPLE_INTERPRETATION).ok_or(missing("WaveformSampleInterpretation"))?;
    let kind = SampleKind::new(bits, &interpretation)?;

    let defs = items(g, tags::CHANNEL_DEFINITION_SEQUENCE).ok_or(missing("ChannelDefinitionSequence"))?;
    if defs.len() as u64 != n_channels {
        return Err(EcgError::ChannelCountMismatch {
            declared: n_channels,
            defined: defs.len(),
        });
    }

    let data_elem = g.get(tags::WAVEFORM_DATA).ok_or(missing("WaveformData"))?;
    let data = le_bytes(data_elem.value()).ok_or_else(|| invalid("WaveformData", "not a binary value"))?;
    let expected = n_channels
        .checked_mul(n_samples)
        .and_then(|n| n.checked_mul(kind.bytes() as u64));
    if expected.is_none_or(|e| (data.len() as u64) < e) {
        return Err(EcgError::TruncatedData {
            channels: n_channels,
            samples: n_samples,
            expected: expected.unwrap_or(u64::MAX),
            actual: data.len(),
        });
    }
    // Both fit in usize now: their product is at most data.len().
    let (n_channels, n_samples) = (n_channels as usize, n_samples as usize);

    let padding = g
        .get(tags::WAVEFORM_PADDING_VALUE)
        .and_then(|e| le_bytes(e.value()))
        .and_then(|b| kind.decode(&b));

    let mut channels = Vec::with_capacity(n_channels);
    let mut skipped: Option<String> = None;
    for (c, def) in defs.iter().enumerate() {
        let Some(cal) = channel_calibration(c + 1, def)? else {
            if skipped.is_none() {
                let units = units_code(def).unwrap_or_else(|| "none".to_string());
                skipped = Some(format!("channel {}: sensitivity units {units}", c + 1));
            }
            continue;
        };
        let step = n_channels * kind.bytes();
        let mut microvolts = Vec::with_capacity(n_samples);
        for s in 0..n_samples {
            let offset = s * step + c * kind.bytes();
            let stored = data.get(offset..).and_then(|b| kind.decode(b));
            microvolts.push(match stored {
                Some(v) if Some(v) != padding => ((f64::from(v) + cal.baseline) * cal.uv_per_unit) as f32,
                _ => f32::NAN,
            });
        }
        channels.push(EcgChannel {
            label: channel_label(c + 1, def),
            microvolts,
        });
    }
    if channels.is_empty() {
        return Err(EcgError::NoVoltageChannels {
            reason: skipped.unwrap_or_default(),
        });
    }
    Ok(Ecg { sampling_hz, channels })
}

struct Calibration {
    baseline: f64,
    /// sensitivity × correction factor × unit conversion to µV.
    uv_per_unit: f64,
}

/// `Ok(None)` when the channel is not a calibrated voltage.
fn channel_calibration(channel: usize, def: &InMemDicomObject) -> Result<Option<Calibration>, EcgError> {
    let number =
        |tag, name: &'static str, default: f64| -> Result<f64, EcgError> {
            match text(def, tag) {
                None => Ok(default),
                Some(t) => first_value(&t).parse::<f64>().ok().filter(|v| v.is_finite()).ok_or(
                    EcgError::InvalidChannelAttribute {
                        channel,
                        name,
                        value: t,
                    },
                ),
            }
        };
    let Some(to_uv) = channel_units_to_uv(def) else {
        return Ok(None);
    };
    if text(def, tags::CHANNEL_SENSITIVITY).is_none() {
        return Ok(None);
    }
    let sensitivity = number(tags::CHANNEL_SENSITIVITY, "ChannelSensitivity", 1.0)?;
    let correction = number(
        tags::CHANNEL_SENSITIVITY_CORRECTION_FACTOR,
        "ChannelSensitivityCorrectionFactor",
        1.0,
    )?;
    let baseline = number(tags::CHANNEL_BASELINE, "ChannelBaseline", 0.0)?;
    Ok(Some(Calibration {
        baseline,
        uv_per_unit: sensitivity * correction * to_uv,
    }))
}

fn units_code(def: &InMemDicomObject) -> Option<String> {
    let unit = items(def, tags::CHANNEL_SENSITIVITY_UNITS_SEQUENCE)?.first()?;
    text(unit, tags::CODE_VALUE).or_else(|| text(unit, tags::CODE_MEANING))
}

/// Microvolts per unit of the channel's sensitivity units, if they are volts.
fn channel_units_to_uv(def: &InMemDicomObject) -> Option<f64> {
    let unit = items(def, tags::CHANNEL_SENSITIVITY_UNITS_SEQUENCE)?.first()?;
    let code = text(unit, tags::CODE_VALUE).unwrap_or_default();
    let by_code = match code.as_str() {
        "uV" | "µV" | "μV" | "UV" => Some(1.0),
        "mV" | "MV" => Some(1e3),
        "V" => Some(1e6),
        "nV" => Some(1e-3),
        _ => None,
    };
    by_code.or_else(|| {
        let meaning = text(unit, tags::CODE_MEANING)?.to_ascii_lowercase();
        match meaning.as_str() {
            "microvolt" | "microvolts" => Some(1.0),
            "millivolt" | "millivolts" => Some(1e3),
            "volt" | "volts" => Some(1e6),
            "nanovolt" | "nanovolts" => Some(1e-3),
            _ => None,
        }
    })
}

const STANDARD_LEADS: [&str; 12] = [
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
];

/// The standard lead name for a code meaning ("Lead I (Einthoven)"), an
/// SCP-ECG / MDC code value ("5.6.3-9-1", "2:1", "131073",
/// "MDC_ECG_LEAD_I") or a bare name ("avr").
fn canonical_lead(text: &str) -> Option<&'static str> {
    let t = text.trim();
    let by_number = |n: u32| match n {
        1 => Some("I"),
        2 => Some("II"),
        61 => Some("III"),
        62 => Some("aVR"),
        63 => Some("aVL"),
        64 => Some("aVF"),
        3..=8 => STANDARD_LEADS.get(n as usize + 3).copied(),
        _ => None,
    };
    if let Some(n) = t.strip_prefix("5.6.3-9-").or_else(|| t.strip_prefix("2:")) {
        return by_number(n.trim().parse().ok()?);
    }
    if let Ok(n) = t.parse::<u32>() {
        return if (131_072..196_608).contains(&n) {
            by_number(n - 131_072)
        } else {
            None
        };
    }
    let name = short_name(t);
    let name = strip_prefix_ci(&name, "MDC_ECG_LEAD_").unwrap_or(&name);
    STANDARD_LEADS
        .iter()
        .find(|l| l.eq_ignore_ascii_case(name.trim()))
        .copied()
}

/// "Lead V4R (something)" -> "V4R".
fn short_name(meaning: &str) -> String {
    let t = meaning.trim();
    let t = strip_prefix_ci(t, "lead ").unwrap_or(t);
    let t = t.split('(').next().unwrap_or(t);
    t.trim().to_string()
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

fn channel_label(channel: usize, def: &InMemDicomObject) -> String {
    let source = items(def, tags::CHANNEL_SOURCE_SEQUENCE).and_then(|s| s.first());
    let meaning = source.and_then(|s| text(s, tags::CODE_MEANING));
    let value = source.and_then(|s| text(s, tags::CODE_VALUE));
    let label = text(def, tags::CHANNEL_LABEL);
    let candidates = [&meaning, &value, &label];
    if let Some(lead) = candidates.iter().filter_map(|c| c.as_deref()).find_map(canonical_lead) {
        return lead.to_string();
    }
    meaning
        .map(|m| short_name(&m))
        .filter(|m| !m.is_empty())
        .or(value)
        .or(label)
        .unwrap_or_else(|| format!("Ch{channel}"))
}

fn items(obj: &InMemDicomObject, tag: Tag) -> Option<&[InMemDicomObject]> {
    obj.get(tag)?.items()
}

/// The element's value as trimmed text (numbers included); `None` if absent or empty.
fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_string())
}

fn uint(obj: &InMemDicomObject, tag: Tag) -> Option<u64> {
    first_value(&text(obj, tag)?).parse().ok()
}

/// First value of a multi-valued string ("1.25\2.5" -> "1.25").
fn first_value(s: &str) -> &str {
    s.split('\\').next().unwrap_or(s).trim()
}

/// The raw little-endian bytes of a binary value. OW values arrive as 16-bit
/// words in host order; re-serialise them as little-endian explicitly.
fn le_bytes(value: &Value<InMemDicomObject, dicom_object::mem::InMemFragment>) -> Option<Cow<'_, [u8]>> {
    match value {
        Value::Primitive(PrimitiveValue::U8(b)) => Some(Cow::Borrowed(&b[..])),
        Value::Primitive(PrimitiveValue::U16(w)) => Some(Cow::Owned(w.iter().flat_map(|w| w.to_le_bytes()).collect())),
        Value::Primitive(PrimitiveValue::I16(w)) => Some(Cow::Owned(w.iter().flat_map(|w| w.to_le_bytes()).collect())),
        Value::Primitive(PrimitiveValue::Empty) => Some(Cow::Borrowed(&[])),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------

const DEFAULT_PX_PER_MM: f32 = 5.0;
const MIN_PX_PER_MM: f32 = 1.0;
const MAX_PX_PER_MM: f32 = 10.0;

const MM_PER_S: f64 = 25.0;
const MM_PER_MV: f32 = 10.0;
const STRIP_S: f64 = 10.0;
const COLUMN_S: f64 = 2.5;

/// Left margin holding the calibration pulse; traces start here.
const TRACE_X_MM: f32 = 15.0;
const RIGHT_MARGIN_MM: f32 = 5.0;
const PAPER_WIDTH_MM: f32 = TRACE_X_MM + (STRIP_S * MM_PER_S) as f32 + RIGHT_MARGIN_MM;
const HEADER_MM: f32 = 5.0;
const FOOTER_MM: f32 = 10.0;
const ROW_MM: f32 = 40.0;
/// Baseline position inside a row: 2.5 mV of room above, 1.5 mV below.
const BASELINE_MM: f32 = 25.0;
const MAX_ROWS: usize = 16;

const PAPER: Rgb<u8> = Rgb([255, 250, 250]);
const GRID_MINOR: Rgb<u8> = Rgb([248, 196, 196]);
const GRID_MAJOR: Rgb<u8> = Rgb([228, 112, 112]);
const INK: Rgb<u8> = Rgb([0, 0, 0]);

/// 12-lead grid: rows × columns of lead names.
const TWELVE_LEAD_GRID: [[&str; 4]; 3] = [
    ["I", "aVR", "V1", "V4"],
    ["II", "aVL", "V2", "V5"],
    ["III", "aVF", "V3", "V6"],
];

/// Render on ECG paper at 25 mm/s and 10 mm/mV, `px_per_mm` pixels per millimetre (default use 5.0).
///
/// `px_per_mm` is clamped to 1–10 (non-finite values use 5.0) so the image
/// stays bounded: 270 mm wide, 175 mm tall for a 12-lead. At most 10 s and
/// 16 rows are drawn; the footer says when something was left out.
pub fn render_ecg(ecg: &Ecg, px_per_mm: f32) -> RgbImage {
    let ppm = if px_per_mm.is_finite() {
        px_per_mm.clamp(MIN_PX_PER_MM, MAX_PX_PER_MM)
    } else {
        DEFAULT_PX_PER_MM
    };
    let plan = plan_layout(ecg);
    let rows = plan.rows.len().max(1);
    let height_mm = HEADER_MM + rows as f32 * ROW_MM + FOOTER_MM;
    let (w, h) = (px(PAPER_WIDTH_MM, ppm), px(height_mm, ppm));
    let mut canvas = Canvas {
        img: RgbImage::from_pixel(w.max(1) as u32, h.max(1) as u32, PAPER),
        ppm,
        pen: (ppm * 0.4).round().max(1.0) as i64,
        text_scale: (ppm * 0.4).round().max(1.0) as i64,
    };
    canvas.grid();

    for (r, row) in plan.rows.iter().enumerate() {
        let top = HEADER_MM + r as f32 * ROW_MM;
        let baseline = top + BASELINE_MM;
        let band = Clip {
            x0: 0,
            x1: w - 1,
            y0: px(top, ppm),
            y1: px(top + ROW_MM, ppm) - 1,
        };
        canvas.calibration_pulse(baseline, band);
        for seg in row {
            let Some(channel) = ecg.channels.get(seg.channel) else {
                continue;
            };
            let x_end = seg.x_mm + (seg.duration_s * MM_PER_S) as f32;
            let clip = Clip {
                x0: px(seg.x_mm, ppm),
                x1: px(x_end, ppm),
                ..band
            };
            canvas.trace(&channel.microvolts, ecg.sampling_hz, seg, baseline, clip);
            if seg.marker {
                let half = 2.5;
                canvas.polyline(&[(seg.x_mm, baseline - half), (seg.x_mm, baseline + half)], band);
            }
            let label = canonical_lead(&channel.label).map_or_else(|| channel.label.clone(), str::to_string);
            let label: String = label.chars().take(16).collect();
            canvas.text(px(seg.x_mm + 1.5, ppm), px(top + 2.0, ppm), &label);
        }
    }

    let footer = footer_text(ecg, &plan);
    canvas.text(px(5.0, ppm), px(height_mm - FOOTER_MM + 3.0, ppm), &footer);
    canvas.img
}

/// Millimetres to the nearest pixel.
fn px(mm: f32, ppm: f32) -> i64 {
    (mm * ppm).round() as i64
}

#[derive(Debug, Clone, PartialEq)]
struct Segment {
    channel: usize,
    start_s: f64,
    duration_s: f64,
    x_mm: f32,
    /// Draw a lead-change tick at the start (columns after the first).
    marker: bool,
}

#[derive(Debug, Default)]
struct Plan {
    rows: Vec<Vec<Segment>>,
    /// Recording duration in seconds (0 when unknown).
    duration_s: f64,
    omitted_channels: usize,
}

fn find_lead(ecg: &Ecg, lead: &str) -> Option<usize> {
    ecg.channels
        .iter()
        .position(|c| c.label == lead || canonical_lead(&c.label) == Some(lead))
}

fn plan_layout(ecg: &Ecg) -> Plan {
    let longest = ecg.channels.iter().map(|c| c.microvolts.len()).max().unwrap_or(0);
    let duration_s = if ecg.sampling_hz.is_finite() && ecg.sampling_hz > 0.0 {
        longest as f64 / ecg.sampling_hz
    } else {
        0.0
    };
    let strip_s = duration_s.min(STRIP_S);
    let full_row = |channel| {
        vec![Segment {
            channel,
            start_s: 0.0,
            duration_s: strip_s,
            x_mm: TRACE_X_MM,
            marker: false,
        }]
    };

    // 12-lead: by label when all twelve are present, else by the standard
    // channel order (I II III aVR aVL aVF V1..V6) for 12 to 16 channels.
    let by_label: Option<Vec<usize>> = STANDARD_LEADS.iter().map(|l| find_lead(ecg, l)).collect();
    let slots = by_label.or_else(|| (12..=MAX_ROWS).contains(&ecg.channels.len()).then(|| (0..12).collect()));
    let mut rows = Vec::new();
    let mut used = vec![false; ecg.channels.len()];
    if let Some(slots) = slots {
        // slots[i] is the channel of STANDARD_LEADS[i].
        let slot_of = |lead: &str| {
            STANDARD_LEADS
                .iter()
                .position(|l| *l == lead)
                .and_then(|i| slots.get(i).copied())
        };
        // Staggered 2.5 s windows need a full 10 s recording; shorter ones
        // (median beats) show the same window in every column.
        let staggered = longest as f64 + 1.0 >= STRIP_S * ecg.sampling_hz;
        for grid_row in TWELVE_LEAD_GRID {
            let mut row = Vec::new();
            for (c, lead) in grid_row.iter().enumerate() {
                let Some(channel) = slot_of(lead) else { continue };
                if let Some(u) = used.get_mut(channel) {
                    *u = true;
                }
                row.push(Segment {
                    channel,
                    start_s: if staggered { c as f64 * COLUMN_S } else { 0.0 },
                    duration_s: COLUMN_S.min(duration_s),
                    x_mm: TRACE_X_MM + (c as f64 * COLUMN_S * MM_PER_S) as f32,
                    marker: c > 0,
                });
            }
            rows.push(row);
        }
        if let Some(ii) = slot_of("II") {
            rows.push(full_row(ii));
        }
        // Leads beyond the standard twelve (V4R, V7, ...) get their own strips.
        for (c, u) in used.iter().enumerate() {
            if !u {
                rows.push(full_row(c));
            }
        }
    } else {
        rows = (0..ecg.channels.len()).map(full_row).collect();
    }
    let omitted_channels = rows.len().saturating_sub(MAX_ROWS);
    rows.truncate(MAX_ROWS);
    Plan {
        rows,
        duration_s,
        omitted_channels,
    }
}

fn footer_text(ecg: &Ecg, plan: &Plan) -> String {
    let mut s = format!("{MM_PER_S} mm/s  {MM_PER_MV} mm/mV  ");
    let fs = ecg.sampling_hz;
    if fs.is_finite() && fs > 0.0 {
        if fs.fract() == 0.0 {
            s += &format!("{fs:.0} Hz");
        } else {
            s += &format!("{fs:.1} Hz");
        }
    } else {
        s += "? Hz";
    }
    if ecg.channels.is_empty() {
        s += "  no channels";
    }
    if plan.duration_s > 0.0 && plan.duration_s < STRIP_S {
        s += &format!("  {:.1} s recorded", plan.duration_s);
    }
    if plan.duration_s > STRIP_S {
        s += &format!("  first {STRIP_S} s of {:.1} s", plan.duration_s);
    }
    if plan.omitted_channels > 0 {
        s += &format!("  {} channels not shown", plan.omitted_channels);
    }
    s
}

/// Inclusive pixel rectangle.
#[derive(Debug, Clone, Copy)]
struct Clip {
    x0: i64,
    x1: i64,
    y0: i64,
    y1: i64,
}

struct Canvas {
    img: RgbImage,
    ppm: f32,
    /// Trace width in pixels.
    pen: i64,
    text_scale: i64,
}

impl Canvas {
    fn put(&mut self, x: i64, y: i64, color: Rgb<u8>) {
        if x >= 0 && y >= 0 && x < i64::from(self.img.width()) && y < i64::from(self.img.height()) {
            self.img.put_pixel(x as u32, y as u32, color);
        }
    }

    fn grid(&mut self) {
        let major_width = if self.ppm >= 6.0 { 2 } else { 1 };
        // Minor lines first so the major ones are drawn over them.
        for pass_major in [false, true] {
            for vertical in [true, false] {
                self.grid_lines(vertical, pass_major, major_width);
            }
        }
    }

    /// Every 1 mm line (minor pass) or every 5 mm line (major pass) across the paper.
    fn grid_lines(&mut self, vertical: bool, pass_major: bool, major_width: i64) {
        let (w, h) = (i64::from(self.img.width()), i64::from(self.img.height()));
        let (extent, across) = if vertical { (w, h) } else { (h, w) };
        let (color, width) = if pass_major {
            (GRID_MAJOR, major_width)
        } else {
            (GRID_MINOR, 1)
        };
        for k in 0.. {
            let at = px(k as f32, self.ppm);
            if at >= extent {
                break;
            }
            if (k % 5 == 0) != pass_major {
                continue;
            }
            for d in 0..width {
                for t in 0..across {
                    if vertical {
                        self.put(at + d, t, color);
                    } else {
                        self.put(t, at + d, color);
                    }
                }
            }
        }
    }

    /// A square pen dot at (x, y), clipped.
    fn dot(&mut self, x: i64, y: i64, clip: Clip) {
        let lo = -(self.pen - 1) / 2;
        let hi = self.pen / 2;
        for dy in lo..=hi {
            for dx in lo..=hi {
                let (px, py) = (x + dx, y + dy);
                if px >= clip.x0 && px <= clip.x1 && py >= clip.y0 && py <= clip.y1 {
                    self.put(px, py, INK);
                }
            }
        }
    }

    /// A pen line between two points in pixel coordinates, clipped.
    fn line(&mut self, a: (f64, f64), b: (f64, f64), clip: Clip) {
        // Clip the segment first so far-off values cannot make long loops.
        let Some((a, b)) = clip_segment(a, b, clip) else {
            return;
        };
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let steps = dx.abs().max(dy.abs()).ceil().max(1.0) as i64;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            self.dot((a.0 + dx * t).round() as i64, (a.1 + dy * t).round() as i64, clip);
        }
    }

    /// Lines through points given in millimetres.
    fn polyline(&mut self, points_mm: &[(f32, f32)], clip: Clip) {
        let ppm = f64::from(self.ppm);
        for w in points_mm.windows(2) {
            let [a, b] = w else { continue };
            let a = (f64::from(a.0) * ppm, f64::from(a.1) * ppm);
            let b = (f64::from(b.0) * ppm, f64::from(b.1) * ppm);
            self.line(a, b, clip);
        }
    }

    /// 1 mV × 0.2 s calibration pulse in the left margin.
    fn calibration_pulse(&mut self, baseline: f32, clip: Clip) {
        let top = baseline - MM_PER_MV;
        let points = [
            (2.5, baseline),
            (5.0, baseline),
            (5.0, top),
            (10.0, top),
            (10.0, baseline),
            (12.5, baseline),
        ];
        self.polyline(&points, clip);
    }

    fn trace(&mut self, uv: &[f32], fs: f64, seg: &Segment, baseline_mm: f32, clip: Clip) {
        if !(fs.is_finite() && fs > 0.0) || seg.duration_s <= 0.0 {
            return;
        }
        let ppm = f64::from(self.ppm);
        let first = (seg.start_s * fs).round().max(0.0) as usize;
        let last = (((seg.start_s + seg.duration_s) * fs).round() as usize).min(uv.len());
        let x0 = f64::from(seg.x_mm);
        let point = |i: usize, v: f32| {
            let t = i as f64 / fs - seg.start_s;
            let x = (x0 + t * MM_PER_S) * ppm;
            let y = (f64::from(baseline_mm) - f64::from(v) / 1000.0 * f64::from(MM_PER_MV)) * ppm;
            (x, y)
        };
        let mut prev: Option<(f64, f64)> = None;
        for (i, v) in uv.iter().enumerate().take(last).skip(first) {
            if !v.is_finite() {
                prev = None;
                continue;
            }
            let p = point(i, *v);
            self.line(prev.unwrap_or(p), p, clip);
            prev = Some(p);
        }
    }

    /// Text with the embedded 5×7 font; (x, y) is the top-left corner.
    fn text(&mut self, x: i64, y: i64, s: &str) {
        let scale = self.text_scale;
        let mut cx = x;
        for ch in s.chars() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0b10000 >> col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.put(cx + col * scale + dx, y + r as i64 * scale + dy, INK);
                            }
                        }
                    }
                }
            }
            cx += 6 * scale;
        }
    }
}

/// Liang–Barsky clipping of segment a–b to `clip` (with a half-pixel margin).
fn clip_segment(a: (f64, f64), b: (f64, f64), clip: Clip) -> Option<((f64, f64), (f64, f64))> {
    let (x0, x1) = (clip.x0 as f64 - 1.0, clip.x1 as f64 + 1.0);
    let (y0, y1) = (clip.y0 as f64 - 1.0, clip.y1 as f64 + 1.0);
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [(-dx, a.0 - x0), (dx, x1 - a.0), (-dy, a.1 - y0), (dy, y1 - a.1)] {
        if !(p.is_finite() && q.is_finite()) {
            return None;
        }
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let r = q / p;
            if p < 0.0 {
                t0 = t0.max(r);
            } else {
                t1 = t1.min(r);
            }
        }
    }
    (t0 <= t1).then_some(((a.0 + t0 * dx, a.1 + t0 * dy), (a.0 + t1 * dx, a.1 + t1 * dy)))
}

/// 5×7 glyphs, one byte per row, bit 4 = leftmost column.
fn glyph(c: char) -> [u8; 7] {
    match c {
        ' ' => [0; 7],
        '0' => [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110],
        '1' => [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        '2' => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111],
        '3' => [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110],
        '4' => [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010],
        '5' => [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110],
        '6' => [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110],
        '7' => [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000],
        '8' => [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110],
        '9' => [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100],
        'A' => [0b01110, 0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001],
        'B' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110],
        'C' => [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110],
        'D' => [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100],
        'E' => [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111],
        'F' => [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000],
        'G' => [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111],
        'H' => [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001],
        'I' => [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        'J' => [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100],
        'K' => [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001],
        'L' => [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111],
        'M' => [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001],
        'N' => [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001],
        'O' => [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110],
        'P' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000],
        'Q' => [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101],
        'R' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001],
        'S' => [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110],
        'T' => [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100],
        'U' => [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110],
        'V' => [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100],
        'W' => [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010],
        'X' => [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001],
        'Y' => [0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100],
        'Z' => [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111],
        'a' => [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111],
        'b' => [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110],
        'c' => [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110],
        'd' => [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111],
        'e' => [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110],
        'f' => [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000],
        'g' => [0b00000, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110],
        'h' => [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001],
        'i' => [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110],
        'j' => [0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b10010, 0b01100],
        'k' => [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010],
        'l' => [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        'm' => [0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001],
        'n' => [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001],
        'o' => [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110],
        'p' => [0b00000, 0b00000, 0b11110, 0b10001, 0b11110, 0b10000, 0b10000],
        'q' => [0b00000, 0b00000, 0b01101, 0b10011, 0b01111, 0b00001, 0b00001],
        'r' => [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000],
        's' => [0b00000, 0b00000, 0b01110, 0b10000, 0b01110, 0b00001, 0b11110],
        't' => [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110],
        'u' => [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101],
        'v' => [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100],
        'w' => [0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010],
        'x' => [0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001],
        'y' => [0b00000, 0b00000, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110],
        'z' => [0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111],
        '.' => [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100],
        ',' => [0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000],
        ':' => [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000],
        '/' => [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000],
        '-' => [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000],
        '+' => [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000],
        '_' => [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111],
        '(' => [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010],
        ')' => [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000],
        '×' => [0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b00000],
        'µ' | 'μ' => [0b00000, 0b00000, 0b10001, 0b10001, 0b10011, 0b11101, 0b10000],
        _ => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, VR};
    use dicom_object::mem::InMemElement;

    const PPM: f32 = 5.0;

    fn sample_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".cache/dicom-samples/pydicom/data/test_files/waveform_ecg.dcm")
    }

    fn str_el(tag: Tag, vr: VR, v: &str) -> InMemElement {
        DataElement::new(tag, vr, PrimitiveValue::from(v))
    }

    fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> InMemElement {
        DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
    }

    fn code(value: &str, meaning: &str) -> InMemDicomObject {
        InMemDicomObject::from_element_iter([
            str_el(tags::CODE_VALUE, VR::SH, value),
            str_el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, "SCPECG"),
            str_el(tags::CODE_MEANING, VR::LO, meaning),
        ])
    }

    fn channel_def(meaning: &str, sensitivity: &str, units: &str) -> InMemDicomObject {
        InMemDicomObject::from_element_iter([
            seq(tags::CHANNEL_SOURCE_SEQUENCE, vec![code("5.6.3-9-0", meaning)]),
            str_el(tags::CHANNEL_SENSITIVITY, VR::DS, sensitivity),
            seq(tags::CHANNEL_SENSITIVITY_UNITS_SEQUENCE, vec![code(units, units)]),
        ])
    }

    /// A multiplex group of 16-bit SS samples, interleaved by sample.
    fn group(label: &str, defs: Vec<InMemDicomObject>, samples_by_channel: &[Vec<i16>]) -> InMemDicomObject {
        let n = samples_by_channel.first().map_or(0, Vec::len);
        let words: Vec<u16> = (0..n)
            .flat_map(|s| samples_by_channel.iter().map(move |c| c[s] as u16))
            .collect();
        InMemDicomObject::from_element_iter([
            str_el(tags::MULTIPLEX_GROUP_LABEL, VR::CS, label),
            DataElement::new(
                tags::NUMBER_OF_WAVEFORM_CHANNELS,
                VR::US,
                PrimitiveValue::from(defs.len() as u16),
            ),
            DataElement::new(tags::NUMBER_OF_WAVEFORM_SAMPLES, VR::UL, PrimitiveValue::from(n as u32)),
            str_el(tags::SAMPLING_FREQUENCY, VR::DS, "500"),
            seq(tags::CHANNEL_DEFINITION_SEQUENCE, defs),
            DataElement::new(tags::WAVEFORM_BITS_ALLOCATED, VR::US, PrimitiveValue::from(16_u16)),
            str_el(tags::WAVEFORM_SAMPLE_INTERPRETATION, VR::CS, "SS"),
            DataElement::new(
                tags::WAVEFORM_DATA,
                VR::OW,
                PrimitiveValue::U16(words.into_iter().collect()),
            ),
        ])
    }

    fn dataset(groups: Vec<InMemDicomObject>) -> InMemDicomObject {
        InMemDicomObject::from_element_iter([seq(tags::WAVEFORM_SEQUENCE, groups)])
    }

    fn two_channel_group() -> InMemDicomObject {
        group(
            "RHYTHM",
            vec![
                channel_def("Lead I (Einthoven)", "1", "uV"),
                channel_def("Lead II", "1", "uV"),
            ],
            &[vec![1, 2, 3, 4], vec![5, 6, 7, 8]],
        )
    }

    /// Topmost ink pixel in column `x` between rows y0..y1.
    fn top_ink(img: &RgbImage, x: u32, y0: u32, y1: u32) -> Option<u32> {
        (y0..y1.min(img.height())).find(|&y| *img.get_pixel(x, y) == INK)
    }

    fn one_channel(uv: Vec<f32>, fs: f64) -> Ecg {
        Ecg {
            sampling_hz: fs,
            channels: vec![EcgChannel {
                label: "II".into(),
                microvolts: uv,
            }],
        }
    }

    #[test]
    fn sample_file_parses_like_pydicom() {
        let obj = dicom_object::open_file(sample_path()).expect("open corpus sample");
        let ecg = parse_ecg(&obj).expect("parse");
        assert_eq!(ecg.sampling_hz, 1000.0);
        let labels: Vec<&str> = ecg.channels.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, STANDARD_LEADS, "RHYTHM group, standard order");
        assert!(
            ecg.channels.iter().all(|c| c.microvolts.len() == 10_000),
            "RHYTHM, not MEDIAN BEAT (1200)"
        );
        // pydicom: ds.waveform_array(0)[sample, channel] (1.25 uV per count).
        let reference: [(usize, [f32; 12]); 3] = [
            (
                0,
                [
                    100.0, 112.5, 12.5, -106.25, 43.75, 62.5, 50.0, 18.75, -12.5, -25.0, -68.75, -50.0,
                ],
            ),
            (
                2500,
                [
                    603.75, 912.5, 308.75, -757.5, 147.5, 610.0, -812.5, -625.0, -831.25, 893.75, 1662.5, 1206.25,
                ],
            ),
            (
                9999,
                [
                    25.0, 137.5, 112.5, -81.25, -43.75, 125.0, 25.0, -12.5, -112.5, -137.5, -150.0, -112.5,
                ],
            ),
        ];
        for (s, row) in reference {
            for (c, want) in row.iter().enumerate() {
                let got = ecg.channels[c].microvolts[s];
                assert!((got - want).abs() < 1e-3, "sample {s} channel {c}: {got} != {want}");
            }
        }
        // pydicom: max of V5 over the recording is 1962.5 uV.
        let v5_max = ecg.channels[10].microvolts.iter().copied().fold(f32::MIN, f32::max);
        assert!((v5_max - 1962.5).abs() < 1e-3, "{v5_max}");
    }

    #[test]
    fn sample_file_renders_a_12_lead_page() {
        let obj = dicom_object::open_file(sample_path()).expect("open corpus sample");
        let ecg = parse_ecg(&obj).expect("parse");
        let img = render_ecg(&ecg, PPM);
        // 15 + 250 + 5 mm wide; 5 + 4 rows × 40 + 10 mm tall.
        assert_eq!((img.width(), img.height()), (1350, 875));
        // Every row carries ink in the middle of its trace area.
        for r in 0..4 {
            let top = px(HEADER_MM + r as f32 * ROW_MM, PPM) as u32;
            let bottom = px(HEADER_MM + (r + 1) as f32 * ROW_MM, PPM) as u32;
            for x_mm in [40.0, 100.0, 170.0, 230.0] {
                let x = px(x_mm, PPM) as u32;
                assert!(top_ink(&img, x, top, bottom).is_some(), "row {r} empty at {x_mm} mm");
            }
        }
        if let Some(out) = std::env::var_os("ECG_SAMPLE_PNG") {
            img.save(out).expect("save png");
        }
    }

    #[test]
    fn one_millivolt_is_ten_millimetres_and_matches_the_calibration_pulse() {
        for ppm in [4.0_f32, 5.0, 8.0] {
            let flat = render_ecg(&one_channel(vec![0.0; 5000], 500.0), ppm);
            let raised = render_ecg(&one_channel(vec![1000.0; 5000], 500.0), ppm);
            let row = (px(HEADER_MM, ppm) as u32, px(HEADER_MM + ROW_MM, ppm) as u32);
            // Middle of the strip, far from the label.
            let x = px(TRACE_X_MM + 125.0, ppm) as u32;
            let y0 = top_ink(&flat, x, row.0, row.1).expect("baseline trace");
            let y1 = top_ink(&raised, x, row.0, row.1).expect("1 mV trace");
            assert_eq!(y0 - y1, (10.0 * ppm) as u32, "ppm {ppm}");
            // The baseline sits where the layout says.
            let pen_offset = ((ppm * 0.4).round().max(1.0) as u32 - 1) / 2;
            assert_eq!(y0, px(HEADER_MM + BASELINE_MM, ppm) as u32 - pen_offset, "ppm {ppm}");
            // The calibration pulse top (0.2 s wide at 5..10 mm) is the 1 mV level.
            let pulse_x = px(7.5, ppm) as u32;
            assert_eq!(top_ink(&raised, pulse_x, row.0, row.1), Some(y1), "ppm {ppm}");
            let pulse_width = (0..raised.width())
                .filter(|&x| *raised.get_pixel(x, y1) == INK && x < px(TRACE_X_MM, ppm) as u32)
                .count() as f32;
            let pen = (ppm * 0.4).round().max(1.0);
            assert!(
                (pulse_width - 5.0 * ppm).abs() <= pen,
                "pulse {pulse_width} px at ppm {ppm}"
            );
        }
    }

    #[test]
    fn one_second_spans_twenty_five_millimetres() {
        // 1 mV from t = 1 s to t = 2 s, 0 elsewhere, at 1000 Hz.
        let uv: Vec<f32> = (0..3000)
            .map(|i| if (1000..2000).contains(&i) { 1000.0 } else { 0.0 })
            .collect();
        let img = render_ecg(&one_channel(uv, 1000.0), PPM);
        // Scan the row half-way up the pulse: only the two edges cross it.
        let y = (px(HEADER_MM + BASELINE_MM - 5.0, PPM)) as u32;
        let from = px(TRACE_X_MM, PPM) as u32;
        let xs: Vec<u32> = (from..img.width()).filter(|&x| *img.get_pixel(x, y) == INK).collect();
        assert!(!xs.is_empty());
        let rise = xs[0];
        let fall = *xs.iter().find(|&&x| x > rise + 10).expect("falling edge");
        assert_eq!(
            rise,
            px(TRACE_X_MM + 25.0, PPM) as u32,
            "t = 1 s is 25 mm after the trace start"
        );
        assert_eq!(fall - rise, (25.0 * PPM) as u32, "1 s = 25 mm");
        // The trace ends after 3 s = 75 mm.
        let base_y = px(HEADER_MM + BASELINE_MM, PPM) as u32;
        let last = (0..img.width())
            .rev()
            .find(|&x| *img.get_pixel(x, base_y) == INK)
            .expect("trace");
        assert!(last.abs_diff(px(TRACE_X_MM + 75.0, PPM) as u32) <= 2, "{last}");
    }

    #[test]
    fn grid_lines_every_millimetre_thick_every_five() {
        let empty = Ecg {
            sampling_hz: 500.0,
            channels: vec![],
        };
        for ppm in [4.0_f32, 5.0] {
            let img = render_ecg(&empty, ppm);
            assert_eq!(img.width(), px(PAPER_WIDTH_MM, ppm) as u32);
            // A pixel row between two horizontal lines crosses only vertical lines.
            let y = px(HEADER_MM + 12.5, ppm) as u32;
            let minor: Vec<u32> = (0..img.width())
                .filter(|&x| *img.get_pixel(x, y) == GRID_MINOR)
                .collect();
            let major: Vec<u32> = (0..img.width())
                .filter(|&x| *img.get_pixel(x, y) == GRID_MAJOR)
                .collect();
            let paper = (0..img.width()).filter(|&x| *img.get_pixel(x, y) == PAPER).count();
            assert_eq!(
                minor.len() + major.len() + paper,
                img.width() as usize,
                "only grid and paper"
            );
            let step = ppm as u32;
            assert!(major.windows(2).all(|w| w[1] - w[0] == 5 * step), "major {major:?}");
            assert!(
                minor.windows(2).all(|w| w[1] - w[0] == step || w[1] - w[0] == 2 * step),
                "{minor:?}"
            );
            assert_eq!(
                major.len() + minor.len(),
                (img.width() - 1) as usize / step as usize + 1
            );
            assert_eq!(major[0], 0);
            // Same vertically, in a column between two vertical lines.
            let x = px(100.5, ppm) as u32;
            let major_y: Vec<u32> = (0..img.height())
                .filter(|&y| *img.get_pixel(x, y) == GRID_MAJOR)
                .collect();
            assert!(major_y.windows(2).all(|w| w[1] - w[0] == 5 * step), "{major_y:?}");
            let lines_y = (0..img.height()).filter(|&y| *img.get_pixel(x, y) != PAPER).count();
            assert_eq!(lines_y, (img.height() - 1) as usize / step as usize + 1);
        }
    }

    #[test]
    fn twelve_lead_layout_places_leads_by_label() {
        // Channels in scrambled order; only V4 carries 1 mV, only aVF has a 2 s gap-free 0.5 mV.
        let order = [
            "V6", "aVR", "V4", "I", "III", "V1", "II", "aVF", "V2", "aVL", "V5", "V3",
        ];
        let channels = order
            .iter()
            .map(|l| EcgChannel {
                label: format!("Lead {l}"),
                microvolts: vec![
                    match *l {
                        "V4" => 1000.0,
                        "aVF" => -500.0,
                        _ => 0.0,
                    };
                    5000
                ],
            })
            .collect();
        let img = render_ecg(
            &Ecg {
                sampling_hz: 500.0,
                channels,
            },
            PPM,
        );
        assert_eq!(img.height(), px(HEADER_MM + 4.0 * ROW_MM + FOOTER_MM, PPM) as u32);
        let level = |row: usize, col: usize| -> f32 {
            let top = HEADER_MM + row as f32 * ROW_MM;
            let x = px(TRACE_X_MM + col as f32 * 62.5 + 31.0, PPM) as u32;
            let y = top_ink(&img, x, px(top, PPM) as u32, px(top + ROW_MM, PPM) as u32).expect("trace");
            // millivolts above the row baseline
            (px(top + BASELINE_MM, PPM) as f32 - y as f32) / (MM_PER_MV * PPM)
        };
        assert!((level(0, 3) - 1.0).abs() < 0.05, "V4 at row 1 col 4: {}", level(0, 3));
        assert!((level(2, 1) + 0.5).abs() < 0.05, "aVF at row 3 col 2: {}", level(2, 1));
        for (r, c) in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 3), (2, 3), (3, 0), (3, 3)] {
            assert!(level(r, c).abs() < 0.05, "row {r} col {c}: {}", level(r, c));
        }
        let plan = plan_layout(&Ecg {
            sampling_hz: 500.0,
            channels: order
                .iter()
                .map(|l| EcgChannel {
                    label: l.to_string(),
                    microvolts: vec![0.0; 5000],
                })
                .collect(),
        });
        let names: Vec<Vec<&str>> = plan
            .rows
            .iter()
            .map(|r| r.iter().map(|s| order[s.channel]).collect())
            .collect();
        assert_eq!(
            names,
            [
                vec!["I", "aVR", "V1", "V4"],
                vec!["II", "aVL", "V2", "V5"],
                vec!["III", "aVF", "V3", "V6"],
                vec!["II"]
            ]
        );
        let starts: Vec<f64> = plan.rows[0].iter().map(|s| s.start_s).collect();
        assert_eq!(starts, [0.0, 2.5, 5.0, 7.5], "columns are consecutive 2.5 s windows");
        assert_eq!(plan.rows[3][0].duration_s, 10.0);
    }

    #[test]
    fn fewer_leads_are_stacked_full_width() {
        let ecg = Ecg {
            sampling_hz: 250.0,
            channels: ["II", "V5", "Resp"]
                .iter()
                .map(|l| EcgChannel {
                    label: l.to_string(),
                    microvolts: vec![0.0; 250 * 30],
                })
                .collect(),
        };
        let plan = plan_layout(&ecg);
        assert_eq!(plan.rows.len(), 3);
        assert!(plan.rows.iter().all(|r| r.len() == 1 && r[0].duration_s == 10.0));
        assert!(footer_text(&ecg, &plan).contains("first 10 s of 30.0 s"));
        let img = render_ecg(&ecg, PPM);
        assert_eq!(img.height(), px(HEADER_MM + 3.0 * ROW_MM + FOOTER_MM, PPM) as u32);
    }

    #[test]
    fn calibration_formula_units_and_sample_formats() {
        // 8-bit SB in OB, millivolts, correction factor and baseline.
        let mut def = channel_def("Lead V1", "0.01", "mV");
        def.put(str_el(tags::CHANNEL_SENSITIVITY_CORRECTION_FACTOR, VR::DS, "2"));
        def.put(str_el(tags::CHANNEL_BASELINE, VR::DS, "-3"));
        let mut g = group("RHYTHM", vec![def], &[vec![0; 3]]);
        g.put(DataElement::new(
            tags::WAVEFORM_BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::from(8_u16),
        ));
        g.put(str_el(tags::WAVEFORM_SAMPLE_INTERPRETATION, VR::CS, "SB"));
        g.put(DataElement::new(
            tags::WAVEFORM_DATA,
            VR::OB,
            PrimitiveValue::from(vec![0x03_u8, 0x80, 0x7f, 0x00]),
        ));
        let ecg = parse_ecg(&dataset(vec![g])).expect("parse");
        // (stored + baseline) × 0.01 mV × 2 → µV
        assert_eq!(ecg.channels[0].label, "V1");
        assert_eq!(ecg.channels[0].microvolts, [0.0, -2620.0, 2480.0]);

        // 16-bit US with a padding value; samples equal to it become NaN.
        let mut g = group(
            "RHYTHM",
            vec![channel_def("Lead aVR", "2.5", "uV")],
            &[vec![-1, 100, 0x7fff]],
        );
        g.put(str_el(tags::WAVEFORM_SAMPLE_INTERPRETATION, VR::CS, "US"));
        g.put(DataElement::new(
            tags::WAVEFORM_PADDING_VALUE,
            VR::OW,
            PrimitiveValue::from(0x7fff_u16),
        ));
        let ecg = parse_ecg(&dataset(vec![g])).expect("parse");
        let uv = &ecg.channels[0].microvolts;
        assert_eq!(
            (ecg.channels[0].label.as_str(), uv[0], uv[1]),
            ("aVR", 65535.0 * 2.5, 250.0)
        );
        assert!(uv[2].is_nan());

        // Non-voltage channels are dropped, voltage ones kept.
        let g = group(
            "RHYTHM",
            vec![
                channel_def("Respiration", "1", "mmHg"),
                channel_def("Lead II", "1", "V"),
            ],
            &[vec![1], vec![2]],
        );
        let ecg = parse_ecg(&dataset(vec![g])).expect("parse");
        assert_eq!(ecg.channels.len(), 1);
        assert_eq!(
            (ecg.channels[0].label.as_str(), ecg.channels[0].microvolts[0]),
            ("II", 2e6)
        );
    }

    #[test]
    fn prefers_the_rhythm_group_over_median_beats() {
        let defs = || vec![channel_def("Lead I", "1", "uV"), channel_def("Lead II", "1", "uV")];
        let median = group("MEDIAN BEAT", defs(), &[vec![7; 4], vec![7; 4]]);
        let rhythm = group("RHYTHM", defs(), &[vec![1; 8], vec![1; 8]]);
        let ecg = parse_ecg(&dataset(vec![median.clone(), rhythm])).expect("parse");
        assert_eq!(ecg.channels[0].microvolts, [1.0; 8]);
        // Only a median beat: use it.
        let ecg = parse_ecg(&dataset(vec![median])).expect("parse");
        assert_eq!(ecg.channels[0].microvolts, [7.0; 4]);
    }

    #[test]
    fn lead_names_from_meanings_and_codes() {
        for (text, lead) in [
            ("Lead I (Einthoven)", Some("I")),
            ("Lead II", Some("II")),
            ("Lead aVR", Some("aVR")),
            ("Lead AVF (Goldberger)", Some("aVF")),
            ("Lead V1", Some("V1")),
            ("5.6.3-9-61", Some("III")),
            ("5.6.3-9-8", Some("V6")),
            ("2:1", Some("I")),
            ("2:64", Some("aVF")),
            ("131075", Some("V1")),
            ("MDC_ECG_LEAD_AVL", Some("aVL")),
            ("Lead V4R", None),
            ("Respiration", None),
            ("", None),
        ] {
            assert_eq!(canonical_lead(text), lead, "{text:?}");
        }
        assert_eq!(short_name("Lead V4R (right)"), "V4R");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let err = |obj: InMemDicomObject| parse_ecg(&obj).expect_err("must fail");

        let e = err(InMemDicomObject::new_empty());
        assert!(matches!(e, EcgError::NoWaveformSequence), "{e}");
        assert_eq!(e.to_string(), "no WaveformSequence (5400,0100) in the data set");

        let e = err(dataset(vec![]));
        assert!(matches!(e, EcgError::EmptyWaveformSequence), "{e}");

        // 2 channels × 4 samples × 2 bytes = 16, only 12 present.
        let mut g = two_channel_group();
        g.put(DataElement::new(
            tags::WAVEFORM_DATA,
            VR::OW,
            PrimitiveValue::U16([1_u16, 5, 2, 6, 3, 7].into_iter().collect()),
        ));
        let e = err(dataset(vec![g]));
        assert!(
            matches!(
                e,
                EcgError::TruncatedData {
                    expected: 16,
                    actual: 12,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("WaveformData shorter than channels × samples"),
            "{e}"
        );

        let mut g = two_channel_group();
        g.put(DataElement::new(
            tags::WAVEFORM_BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::from(32_u16),
        ));
        let e = err(dataset(vec![g]));
        assert!(e.to_string().starts_with("unsupported WaveformBitsAllocated 32"), "{e}");

        let mut g = two_channel_group();
        g.put(str_el(tags::WAVEFORM_SAMPLE_INTERPRETATION, VR::CS, "MB"));
        assert!(matches!(
            err(dataset(vec![g])),
            EcgError::UnsupportedSampleInterpretation(_)
        ));

        let mut g = two_channel_group();
        g.put(str_el(tags::WAVEFORM_SAMPLE_INTERPRETATION, VR::CS, "SB"));
        assert!(matches!(
            err(dataset(vec![g])),
            EcgError::BitsInterpretationMismatch { .. }
        ));

        let mut g = two_channel_group();
        g.put(DataElement::new(
            tags::NUMBER_OF_WAVEFORM_CHANNELS,
            VR::US,
            PrimitiveValue::from(3_u16),
        ));
        assert!(matches!(
            err(dataset(vec![g])),
            EcgError::ChannelCountMismatch {
                declared: 3,
                defined: 2
            }
        ));

        // Lying sample count: would overrun the data.
        let mut g = two_channel_group();
        g.put(DataElement::new(
            tags::NUMBER_OF_WAVEFORM_SAMPLES,
            VR::UL,
            PrimitiveValue::from(u32::MAX),
        ));
        assert!(matches!(err(dataset(vec![g])), EcgError::TruncatedData { .. }));

        let mut g = two_channel_group();
        g.remove_element(tags::CHANNEL_DEFINITION_SEQUENCE);
        let e = err(dataset(vec![g]));
        assert_eq!(e.to_string(), "waveform group 1: missing ChannelDefinitionSequence");

        let mut g = two_channel_group();
        g.remove_element(tags::WAVEFORM_DATA);
        assert!(matches!(
            err(dataset(vec![g])),
            EcgError::MissingAttribute {
                name: "WaveformData",
                ..
            }
        ));

        for bad in ["abc", "0", "-500", "NaN"] {
            let mut g = two_channel_group();
            g.put(str_el(tags::SAMPLING_FREQUENCY, VR::DS, bad));
            let e = err(dataset(vec![g]));
            assert!(
                matches!(
                    e,
                    EcgError::InvalidAttribute {
                        name: "SamplingFrequency",
                        ..
                    }
                ),
                "{e}"
            );
        }

        let mut g = two_channel_group();
        g.put(DataElement::new(
            tags::NUMBER_OF_WAVEFORM_SAMPLES,
            VR::UL,
            PrimitiveValue::from(0_u32),
        ));
        assert!(matches!(err(dataset(vec![g])), EcgError::InvalidAttribute { .. }));

        let g = group("RHYTHM", vec![channel_def("Lead I", "x1", "uV")], &[vec![1]]);
        assert!(matches!(
            err(dataset(vec![g])),
            EcgError::InvalidChannelAttribute { channel: 1, .. }
        ));

        let g = group("RHYTHM", vec![channel_def("Pressure", "1", "mm[Hg]")], &[vec![1]]);
        let e = err(dataset(vec![g]));
        assert!(e.to_string().contains("mm[Hg]"), "{e}");
    }

    #[test]
    fn rendering_odd_inputs_does_not_panic() {
        let cases = [
            Ecg {
                sampling_hz: 0.0,
                channels: vec![],
            },
            one_channel(vec![], 500.0),
            one_channel(vec![f32::NAN, f32::INFINITY, 1e30, -1e30, 0.0, 5.0], 500.0),
            one_channel(vec![1.0; 100], f64::NAN),
            one_channel(vec![1.0; 100], 1e-9),
            one_channel(vec![1.0; 100], 1e12),
        ];
        for ecg in &cases {
            for ppm in [f32::NAN, -1.0, 0.0, 0.5, 5.0, 1e9] {
                let img = render_ecg(ecg, ppm);
                assert!(img.width() > 0 && img.width() <= 2700 && img.height() <= 10_000);
            }
        }
        // Many channels: bounded rows, the footer says what was left out.
        let many = Ecg {
            sampling_hz: 500.0,
            channels: (0..40)
                .map(|i| EcgChannel {
                    label: format!("X{i}"),
                    microvolts: vec![0.0; 10],
                })
                .collect(),
        };
        let plan = plan_layout(&many);
        assert_eq!(plan.rows.len(), MAX_ROWS);
        assert!(footer_text(&many, &plan).contains("24 channels not shown"));
    }
}
