//! Rendering: pixel data to display images (thumbnails, previews, on-demand
//! renders) and ECG waveforms to ECG paper. `pixel` is pure arithmetic;
//! `decode` reads one frame from a stored file with bounded memory; `render`
//! puts them together; `worker` runs renders off the receive path.

pub mod decode;
pub mod ecg;
pub mod jpeg12;
pub mod pixel;
pub mod render;
pub mod worker;
