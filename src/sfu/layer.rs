//! Per-subscriber simulcast layer choice, the keyframe-gated switch that carries it out, per-layer
//! bitrate measurement, and the link-state label shown in the UI.
//!
//! Policy, and why:
//!
//! * **Audio first.** The video budget is (estimate − audio) × **0.9**: in a consultation, losing
//!   speech is worse than losing the picture, so audio's bitrate is reserved before any video layer is
//!   considered, and below that the subscriber gets audio only ([`Target::Paused`]). The 10 % headroom
//!   absorbs RTCP, retransmissions and the keyframe bursts a 1 s average hides.
//! * **Down at once, up slowly.** A layer that no longer fits is left immediately (congestion only
//!   gets worse while we wait); a higher layer is taken only after it has fit continuously for
//!   **3 s**, so a noisy estimate does not flap between layers (each up-switch costs a keyframe).
//!   Resuming from audio-only follows the same rule.
//! * **Back off failed probes.** An up-switch followed by a congestion down-switch within **5 s** means
//!   the estimate was optimistic: the up-wait doubles, capped at **30 s**; an up-switch that survives
//!   5 s halves it again (not below 3 s). This is the usual exponential back-off of bandwidth probing
//!   (libwebrtc's ProbeController, LiveKit's stream allocator), applied to layer switches.
//! * **Keyframe-gated switching.** Simulcast layers are independent encodings: a subscriber can start
//!   decoding another layer only at its keyframe. [`LayerSwitch`] keeps forwarding the current layer
//!   until a keyframe of the target arrives, and takes a keyframe of any layer between current and
//!   target as an intermediate step (video sooner on join and on the way down).
//! * **Layer bitrates** are measured over **1 s** (libwebrtc's RateStatistics window for bitrates) in
//!   10 buckets, so memory is fixed whatever the packet rate.
//! * **Link label**: worse states show at once (the user already sees the picture freeze or blur);
//!   "good" returns only after **5 s** of good, so the label does not flicker during a recovery.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Measures a stream's bitrate over a sliding window from the bytes passed in.
#[derive(Debug, Clone)]
pub struct BitrateMeter {
    window: Duration,
    bucket: Duration,
    buckets: VecDeque<(Instant, u64)>,
}

impl Default for BitrateMeter {
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

impl BitrateMeter {
    pub fn new(window: Duration) -> Self {
        let window = window.max(Duration::from_millis(10));
        Self {
            window,
            bucket: window / 10,
            buckets: VecDeque::with_capacity(11),
        }
    }

    pub fn record(&mut self, now: Instant, bytes: usize) {
        match self.buckets.back_mut() {
            Some((start, total)) if now.saturating_duration_since(*start) < self.bucket => *total += bytes as u64,
            _ => self.buckets.push_back((now, bytes as u64)),
        }
        while self
            .buckets
            .front()
            .is_some_and(|(start, _)| now.saturating_duration_since(*start) >= self.window)
        {
            self.buckets.pop_front();
        }
    }

    /// Bits per second over the window, or over the meter's data while it is younger than that (so a
    /// fresh layer is not under-rated for a whole window).
    pub fn bps(&self, now: Instant) -> u64 {
        let mut oldest = None;
        let mut bytes = 0u64;
        for (start, b) in &self.buckets {
            if now.saturating_duration_since(*start) < self.window {
                oldest.get_or_insert(*start);
                bytes += b;
            }
        }
        let Some(oldest) = oldest else {
            return 0;
        };
        // Measured from the oldest bucket kept, so bucket granularity does not bias the rate; at
        // least one bucket long, so a single burst does not read as an absurd rate.
        let span = now.saturating_duration_since(oldest).clamp(self.bucket, self.window);
        (u128::from(bytes) * 8 * 1_000_000_000 / span.as_nanos().max(1)) as u64
    }
}

/// What a subscriber should receive of one video track. `Paused` orders below every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Audio only.
    Paused,
    /// Simulcast layer index, 0 = lowest.
    Layer(u8),
}

/// Bits per second available to video once audio is reserved, with `headroom` (0..=1) applied.
pub fn video_budget(estimate_bps: u64, audio_bps: u64, headroom: f64) -> u64 {
    (estimate_bps.saturating_sub(audio_bps) as f64 * headroom.clamp(0.0, 1.0)) as u64
}

/// Layer selection settings.
#[derive(Debug, Clone)]
pub struct SelectorConfig {
    /// Fraction of (estimate − audio) that video may use.
    pub headroom: f64,
    /// The layer being sent is kept while its rate is at most this fraction
    /// of (estimate − audio). Above 1 on purpose: a receive-side estimate
    /// (REMB) starts at what arrives and only rises when more arrives, so
    /// the layer a viewer is on sits right at its estimate; only an
    /// estimate clearly below it (a browser that detects overuse cuts to
    /// 85 % of what arrives) is congestion.
    pub stay_headroom: f64,
    /// How long a higher layer must fit before switching up.
    pub up_wait: Duration,
    /// Cap of the backed-off up-wait.
    pub max_up_wait: Duration,
    /// A congestion down-switch this soon after an up-switch marks the up-switch as failed.
    pub failed_up_window: Duration,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        Self {
            headroom: 0.9,
            stay_headroom: 1.1,
            up_wait: Duration::from_secs(3),
            max_up_wait: Duration::from_secs(30),
            failed_up_window: Duration::from_secs(5),
        }
    }
}

/// Chooses the target layer of one subscriber for one track, with hysteresis.
#[derive(Debug, Clone)]
pub struct LayerSelector {
    cfg: SelectorConfig,
    target: Option<Target>,
    /// Per layer: since when it has fit without interruption.
    fit_since: Vec<Option<Instant>>,
    up_wait: Duration,
    last_up: Option<Instant>,
}

impl LayerSelector {
    pub fn new(cfg: SelectorConfig) -> Self {
        let up_wait = cfg.up_wait;
        Self {
            cfg,
            target: None,
            fit_since: Vec::new(),
            up_wait,
            last_up: None,
        }
    }

    /// Starts from `target` (what is already being sent) instead of letting
    /// the first estimate choose freely; no effect once a choice was made.
    pub fn seed(&mut self, target: Target) {
        self.target.get_or_insert(target);
    }

    /// Current choice; `Paused` before the first update.
    pub fn target(&self) -> Target {
        self.target.unwrap_or(Target::Paused)
    }

    /// Current (possibly backed-off) up-wait.
    pub fn up_wait(&self) -> Duration {
        self.up_wait
    }

    /// Re-evaluates the choice. `layer_bps[i]` is layer i's measured bitrate, lowest layer first, 0 for
    /// a layer not being received; pass only the layers the subscriber wants (a small tile needs no
    /// top layer). Call on every estimate change and periodically (e.g. every 500 ms): "fits
    /// continuously" is judged at the calls.
    pub fn update(&mut self, now: Instant, layer_bps: &[u64], estimate_bps: u64, audio_bps: u64) -> Target {
        let budget = video_budget(estimate_bps, audio_bps, self.cfg.headroom);
        let fits = |i: usize| layer_bps.get(i).is_some_and(|&b| b > 0 && b <= budget);
        let n = layer_bps.len().min(usize::from(u8::MAX) + 1);
        self.fit_since.resize(n, None);
        for (i, since) in self.fit_since.iter_mut().enumerate() {
            if fits(i) {
                since.get_or_insert(now);
            } else {
                *since = None;
            }
        }
        if self
            .last_up
            .is_some_and(|up| now.saturating_duration_since(up) >= self.cfg.failed_up_window)
        {
            // The last up-switch held: relax the back-off.
            self.up_wait = (self.up_wait / 2).max(self.cfg.up_wait);
            self.last_up = None;
        }
        let best = (0..n).rev().find(|&i| fits(i)).map_or(Target::Paused, layer);
        let Some(current) = self.target else {
            // First decision: no history to be hysteretic about; show video as soon as possible.
            self.target = Some(best);
            return best;
        };
        let stay_budget = video_budget(estimate_bps, audio_bps, 1.0) as f64 * self.cfg.stay_headroom;
        let current_fits = match current {
            Target::Paused => true,
            Target::Layer(t) => layer_bps
                .get(usize::from(t))
                .is_some_and(|&b| b > 0 && b as f64 <= stay_budget),
        };
        if !current_fits {
            let t = match current {
                Target::Layer(t) => usize::from(t),
                Target::Paused => 0,
            };
            let below = (0..t.min(n)).rev().find(|&i| fits(i)).map(layer);
            let next = below.unwrap_or(if best > current { best } else { Target::Paused });
            let congested = layer_bps.get(t).is_some_and(|&b| b > 0);
            if next < current {
                let failed_up = self
                    .last_up
                    .is_some_and(|up| now.saturating_duration_since(up) < self.cfg.failed_up_window);
                if congested && failed_up {
                    self.up_wait = self.up_wait.saturating_mul(2).min(self.cfg.max_up_wait);
                }
                self.last_up = None;
            }
            self.target = Some(next);
            return next;
        }
        let lowest_above = match current {
            Target::Paused => 0,
            Target::Layer(t) => usize::from(t) + 1,
        };
        let up = (lowest_above..n)
            .rev()
            .find(|&i| self.fit_since[i].is_some_and(|since| now.saturating_duration_since(since) >= self.up_wait));
        if let Some(i) = up {
            let next = layer(i);
            self.target = Some(next);
            self.last_up = Some(now);
            return next;
        }
        current
    }
}

fn layer(i: usize) -> Target {
    Target::Layer(u8::try_from(i).unwrap_or(u8::MAX))
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerDecision {
    Forward,
    Drop,
}

/// Carries out a target layer choice at keyframe boundaries.
#[derive(Debug, Clone, Default)]
pub struct LayerSwitch {
    target: Option<Target>,
    current: Option<u8>,
}

impl LayerSwitch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn target(&self) -> Target {
        self.target.unwrap_or(Target::Paused)
    }

    /// The layer being forwarded, if any.
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// Sets the target; returns the layer a keyframe should be requested on, if any. Pausing takes
    /// effect at once: there is nothing to wait for.
    pub fn set_target(&mut self, target: Target) -> Option<u8> {
        self.target = Some(target);
        if target == Target::Paused {
            self.current = None;
        }
        self.pending_keyframe()
    }

    /// A cached group of `layer` starting at its keyframe was replayed: that layer is now being
    /// forwarded, as if its keyframe had just passed [`LayerSwitch::on_packet`].
    pub fn set_current(&mut self, layer: u8) {
        self.current = Some(layer);
    }

    /// The target layer while it is not yet being forwarded (keep requesting a keyframe on it).
    pub fn pending_keyframe(&self) -> Option<u8> {
        match self.target {
            Some(Target::Layer(t)) if self.current != Some(t) => Some(t),
            _ => None,
        }
    }

    /// Decides one packet of `layer`; `is_keyframe` must be true only on the first packet of a
    /// keyframe (see [`super::keyframe::is_keyframe`]).
    pub fn on_packet(&mut self, layer: u8, is_keyframe: bool) -> LayerDecision {
        let Some(Target::Layer(target)) = self.target else {
            return LayerDecision::Drop;
        };
        if is_keyframe && self.moves_toward(layer, target) {
            self.current = Some(layer);
            return LayerDecision::Forward;
        }
        if self.current == Some(layer) {
            LayerDecision::Forward
        } else {
            LayerDecision::Drop
        }
    }

    /// Whether switching to `layer` brings us closer to `target` (or reaches it).
    fn moves_toward(&self, layer: u8, target: u8) -> bool {
        match self.current {
            None => layer <= target,
            Some(c) if c < target => c < layer && layer <= target,
            Some(c) if c > target => target <= layer && layer < c,
            Some(_) => false,
        }
    }
}

/// Link quality as shown to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkState {
    /// Receiving everything it asked for.
    Good,
    /// Receiving a lower layer than it asked for.
    Weak,
    /// Video paused for bandwidth: "audio only — weak link".
    AudioOnly,
}

/// Classifies a subscriber's link for the UI, with hysteresis against flicker.
#[derive(Debug, Clone)]
pub struct LinkClassifier {
    recover_after: Duration,
    state: LinkState,
    good_since: Option<Instant>,
}

impl Default for LinkClassifier {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

impl LinkClassifier {
    pub fn new(recover_after: Duration) -> Self {
        Self {
            recover_after,
            state: LinkState::Good,
            good_since: None,
        }
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    /// `chosen` is the selector's target, `wanted` what the subscriber asked for (its top layer, or
    /// `Paused` if it wants no video).
    pub fn update(&mut self, now: Instant, chosen: Target, wanted: Target) -> LinkState {
        let raw = if chosen >= wanted {
            LinkState::Good
        } else if chosen == Target::Paused {
            LinkState::AudioOnly
        } else {
            LinkState::Weak
        };
        if raw == LinkState::Good {
            let since = *self.good_since.get_or_insert(now);
            if self.state == LinkState::AudioOnly {
                // Video is visibly back; "good" still has to be earned.
                self.state = LinkState::Weak;
            }
            if now.saturating_duration_since(since) >= self.recover_after {
                self.state = LinkState::Good;
            }
        } else {
            self.good_since = None;
            self.state = raw;
        }
        self.state
    }
}

/// When to try video again after pausing it for bandwidth.
///
/// A receive-side estimate (REMB) only grows with what actually arrives, so
/// a subscriber paused to audio would stay paused forever on the estimate
/// alone. After a pause of `interval` the forwarder resumes video for
/// `probe_len` as a probe, long enough for the estimate to climb; if the
/// estimate still says no at the end, video pauses again and the interval
/// doubles (5 s, 10 s, ... 60 s), so a link that really cannot carry video is
/// not hammered, while one that recovered gets video back within seconds.
#[derive(Debug, Clone)]
pub struct ResumeProbe {
    min_interval: Duration,
    max_interval: Duration,
    probe_len: Duration,
    interval: Duration,
    paused_since: Option<Instant>,
    probing_since: Option<Instant>,
    /// A probe that ended with video still wanted: video has held since then.
    held_since: Option<Instant>,
}

impl Default for ResumeProbe {
    fn default() -> Self {
        Self::new(Duration::from_secs(5), Duration::from_secs(60), Duration::from_secs(4))
    }
}

impl ResumeProbe {
    pub fn new(min_interval: Duration, max_interval: Duration, probe_len: Duration) -> Self {
        Self {
            min_interval,
            max_interval,
            probe_len,
            interval: min_interval,
            paused_since: None,
            probing_since: None,
            held_since: None,
        }
    }

    /// Feeds the decision (`Paused` or a layer); returns what to do now.
    pub fn update(&mut self, now: Instant, target: Target) -> Target {
        if let Some(p) = self.probing_since {
            if now.saturating_duration_since(p) < self.probe_len {
                return Target::Layer(0).max(target);
            }
            self.probing_since = None;
            if target == Target::Paused {
                // The estimate did not follow: back off.
                self.interval = (self.interval * 2).min(self.max_interval);
                self.paused_since = Some(now);
                return Target::Paused;
            }
            self.held_since = Some(now);
        }
        if target != Target::Paused {
            self.paused_since = None;
            // Video that holds for two intervals earns the short interval back.
            if let Some(h) = self.held_since
                && now.saturating_duration_since(h) >= 2 * self.interval
            {
                self.interval = self.min_interval;
                self.held_since = None;
            }
            return target;
        }
        self.held_since = None;
        let since = *self.paused_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.interval {
            self.paused_since = None;
            self.probing_since = Some(now);
            return Target::Layer(0);
        }
        Target::Paused
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }
}

/// Probes for an up-switch. A receive-side estimate (REMB) cannot see more
/// room than it is given: libwebrtc's rate control caps it at about 1.5 × the
/// rate actually arriving, so a viewer held on a low layer would never be
/// judged able to take the next one. Like libwebrtc's own probing and
/// LiveKit's stream allocator, the SFU therefore pads the subscriber's
/// stream up to the next layer's rate for a while (`probe_len`) and lets
/// the estimate follow if the link allows; the selector then switches up
/// through its usual hysteresis and the padding stops.
///
/// Policy: a probe starts once the choice has held for `interval` with a
/// higher layer being published; it succeeds when the choice goes up, and
/// fails when it goes down, when `probe_len` passes, or when the estimate
/// has stopped growing (by 5 % within `stall`) while still too low for the
/// next layer: the link is full, and padding it longer would only queue
/// the viewer's own video behind it. A failure doubles the interval (up to
/// `max_interval`), so a link that really is full is probed rarely.
#[derive(Debug, Clone)]
pub struct UpProbe {
    min_interval: Duration,
    max_interval: Duration,
    probe_len: Duration,
    interval: Duration,
    last: Option<Target>,
    steady_since: Option<Instant>,
    probing_since: Option<Instant>,
    stall: Duration,
    /// During a probe: the estimate to beat by 5 %, and since when.
    grew: Option<(u64, Instant)>,
}

impl Default for UpProbe {
    fn default() -> Self {
        Self::new(
            Duration::from_secs(5),
            Duration::from_secs(120),
            Duration::from_secs(25),
        )
    }
}

impl UpProbe {
    pub fn new(min_interval: Duration, max_interval: Duration, probe_len: Duration) -> Self {
        Self {
            min_interval,
            max_interval,
            probe_len,
            interval: min_interval,
            last: None,
            steady_since: None,
            probing_since: None,
            stall: Duration::from_secs(3),
            grew: None,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn probing(&self) -> bool {
        self.probing_since.is_some()
    }

    /// `chosen`: the layer now chosen; `extra_bps`: what the next higher
    /// layer would add (None when there is none to go to); `estimate`: the
    /// subscriber's current estimate; `next_fits`: whether it already
    /// leaves room for the next layer. Returns the padding rate to send
    /// now, 0 when not probing.
    pub fn update(
        &mut self,
        now: Instant,
        chosen: Target,
        extra_bps: Option<u64>,
        estimate: u64,
        next_fits: bool,
    ) -> u64 {
        let last = self.last.replace(chosen);
        if let Some(since) = self.probing_since {
            let went_up = last.is_some_and(|l| chosen > l);
            let went_down = last.is_some_and(|l| chosen < l);
            let (best, at) = *self.grew.get_or_insert((estimate, now));
            if estimate >= best + best / 20 {
                self.grew = Some((estimate, now));
            }
            let stalled = !next_fits && now.saturating_duration_since(at) >= self.stall;
            if went_up {
                self.interval = self.min_interval;
            } else if went_down || stalled || now.saturating_duration_since(since) >= self.probe_len {
                self.interval = self.interval.saturating_mul(2).min(self.max_interval);
            } else if let Some(extra) = extra_bps {
                return extra;
            }
            self.probing_since = None;
            self.grew = None;
            self.steady_since = Some(now);
            return 0;
        }
        if last != Some(chosen) || extra_bps.is_none() || chosen == Target::Paused {
            self.steady_since = Some(now);
            return 0;
        }
        let since = *self.steady_since.get_or_insert(now);
        match extra_bps {
            Some(extra) if now.saturating_duration_since(since) >= self.interval => {
                self.probing_since = Some(now);
                self.grew = Some((estimate, now));
                extra
            }
            _ => 0,
        }
    }
}

/// Guards the drastic step of pausing video: not during the first seconds
/// of a subscription, while the receiver's estimate is still ramping up from
/// its initial value, and only once the estimate has stayed too low for
/// `hold` (a single low REMB after a loss burst is not a weak link).
#[derive(Debug, Clone)]
pub struct PauseGate {
    started: Option<Instant>,
    grace: Duration,
    hold: Duration,
    low_since: Option<Instant>,
}

impl Default for PauseGate {
    fn default() -> Self {
        Self::new(Duration::from_secs(10), Duration::from_secs(3))
    }
}

impl PauseGate {
    pub fn new(grace: Duration, hold: Duration) -> Self {
        Self {
            started: None,
            grace,
            hold,
            low_since: None,
        }
    }

    /// `raw` is the selector's decision; returns it, or the lowest layer
    /// while a pause is not yet justified.
    pub fn update(&mut self, now: Instant, raw: Target) -> Target {
        let started = *self.started.get_or_insert(now);
        if raw != Target::Paused {
            self.low_since = None;
            return raw;
        }
        let low = *self.low_since.get_or_insert(now);
        if now.saturating_duration_since(started) < self.grace || now.saturating_duration_since(low) < self.hold {
            return Target::Layer(0);
        }
        Target::Paused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const LAYERS: [u64; 3] = [150_000, 500_000, 1_500_000];
    const AUDIO: u64 = 50_000;

    #[test]
    fn meter_steady_rate() {
        let t0 = Instant::now();
        let mut m = BitrateMeter::default();
        assert_eq!(m.bps(t0), 0);
        // 1000 bytes every 8 ms = 1 Mbit/s.
        for i in 0..500u64 {
            m.record(t0 + ms(i * 8), 1000);
        }
        let bps = m.bps(t0 + ms(4000));
        assert!((950_000..=1_050_000).contains(&bps), "{bps}");
        assert!(m.buckets.len() <= 11);
    }

    #[test]
    fn meter_warm_up_and_silence() {
        let t0 = Instant::now();
        let mut m = BitrateMeter::default();
        for i in 0..25u64 {
            m.record(t0 + ms(i * 8), 1000);
        }
        // 200 ms old: rate over its lifetime, not diluted by the full window.
        let bps = m.bps(t0 + ms(200));
        assert!((900_000..=1_100_000).contains(&bps), "{bps}");
        assert_eq!(m.bps(t0 + ms(1300)), 0);
    }

    #[test]
    fn budget_reserves_audio_first() {
        assert_eq!(video_budget(1_000_000, 50_000, 0.9), 855_000);
        assert_eq!(video_budget(40_000, 50_000, 0.9), 0);
        assert_eq!(video_budget(1_000_000, 0, 2.0), 1_000_000);
    }

    #[test]
    fn first_decision_is_immediate() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new(SelectorConfig::default());
        assert_eq!(s.target(), Target::Paused);
        assert_eq!(s.update(t0, &LAYERS, 1_000_000, AUDIO), Target::Layer(1));
        let mut s = LayerSelector::new(SelectorConfig::default());
        assert_eq!(s.update(t0, &LAYERS, 2_000_000, AUDIO), Target::Layer(2));
        let mut s = LayerSelector::new(SelectorConfig::default());
        assert_eq!(s.update(t0, &LAYERS, 150_000, AUDIO), Target::Paused);
    }

    #[test]
    fn a_seeded_layer_is_kept_while_the_estimate_carries_it() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new(SelectorConfig::default());
        s.seed(Target::Layer(1));
        // 520 kbit/s: the middle layer (500k) does not fit with headroom, but
        // it is what arrives, and the estimate is not below it: stay.
        assert_eq!(s.update(t0, &LAYERS, 520_000, AUDIO), Target::Layer(1));
        assert_eq!(s.update(t0 + ms(5000), &LAYERS, 560_000, AUDIO), Target::Layer(1));
        // Overuse: the browser cuts its estimate well below what arrives.
        assert_eq!(s.update(t0 + ms(6000), &LAYERS, 480_000, AUDIO), Target::Layer(0));
        // Seeding after a choice changes nothing.
        s.seed(Target::Layer(2));
        assert_eq!(s.target(), Target::Layer(0));
    }

    #[test]
    fn down_immediately_up_after_continuous_fit() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new(SelectorConfig::default());
        s.update(t0, &LAYERS, 1_000_000, AUDIO);
        assert_eq!(s.update(t0 + ms(500), &LAYERS, 400_000, AUDIO), Target::Layer(0));
        assert_eq!(s.update(t0 + ms(10_000), &LAYERS, 1_000_000, AUDIO), Target::Layer(0));
        assert_eq!(s.update(t0 + ms(11_500), &LAYERS, 500_000, AUDIO), Target::Layer(0));
        // The interruption restarts the clock.
        assert_eq!(s.update(t0 + ms(12_000), &LAYERS, 1_000_000, AUDIO), Target::Layer(0));
        assert_eq!(s.update(t0 + ms(14_999), &LAYERS, 1_000_000, AUDIO), Target::Layer(0));
        assert_eq!(s.update(t0 + ms(15_000), &LAYERS, 1_000_000, AUDIO), Target::Layer(1));
    }

    #[test]
    fn audio_only_and_resume_with_hysteresis() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new(SelectorConfig::default());
        s.update(t0, &LAYERS, 600_000, AUDIO);
        // 64 kbit/s of audio leaves too little for the 150 kbit/s layer.
        assert_eq!(s.update(t0 + ms(100), &LAYERS, 200_000, 64_000), Target::Paused);
        assert_eq!(s.update(t0 + ms(200), &LAYERS, 30_000, 64_000), Target::Paused);
        assert_eq!(s.update(t0 + ms(300), &LAYERS, 3_000_000, AUDIO), Target::Paused);
        // Straight to the highest layer that has fit for the whole wait.
        assert_eq!(s.update(t0 + ms(3300), &LAYERS, 3_000_000, AUDIO), Target::Layer(2));
    }

    #[test]
    fn failed_up_switch_backs_off_exponentially_with_cap() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new(SelectorConfig::default());
        let mut t = t0;
        s.update(t, &LAYERS, 400_000, AUDIO);
        let mut expected = ms(3000);
        for _ in 0..6 {
            s.update(t, &LAYERS, 1_000_000, AUDIO);
            t += expected;
            assert_eq!(s.update(t, &LAYERS, 1_000_000, AUDIO), Target::Layer(1));
            t += ms(2000);
            assert_eq!(s.update(t, &LAYERS, 400_000, AUDIO), Target::Layer(0));
            expected = (expected * 2).min(ms(30_000));
            assert_eq!(s.up_wait(), expected);
        }
        assert_eq!(s.up_wait(), ms(30_000));
        // A switch that holds for 5 s halves the wait.
        s.update(t, &LAYERS, 1_000_000, AUDIO);
        t += ms(30_000);
        assert_eq!(s.update(t, &LAYERS, 1_000_000, AUDIO), Target::Layer(1));
        t += ms(5000);
        s.update(t, &LAYERS, 1_000_000, AUDIO);
        assert_eq!(s.up_wait(), ms(15_000));
        // A later congestion drop is not a failed probe.
        t += ms(1000);
        assert_eq!(s.update(t, &LAYERS, 400_000, AUDIO), Target::Layer(0));
        assert_eq!(s.up_wait(), ms(15_000));
    }

    #[test]
    fn vanished_layer_is_left_without_backoff() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new(SelectorConfig::default());
        s.update(t0, &LAYERS, 400_000, AUDIO);
        s.update(t0, &LAYERS, 3_000_000, AUDIO);
        assert_eq!(s.update(t0 + ms(3000), &LAYERS, 3_000_000, AUDIO), Target::Layer(2));
        // The publisher stopped sending the top layer (its own uplink got worse).
        let gone = [150_000, 500_000, 0];
        assert_eq!(s.update(t0 + ms(3100), &gone, 3_000_000, AUDIO), Target::Layer(1));
        assert_eq!(s.up_wait(), ms(3000));
        let none = [0, 0, 0];
        assert_eq!(s.update(t0 + ms(3300), &none, 3_000_000, AUDIO), Target::Paused);
        // The current (lowest) layer vanished but a higher one fits: taken at once, it is not a probe.
        let mut s = LayerSelector::new(SelectorConfig::default());
        s.update(t0, &LAYERS, 400_000, AUDIO);
        let only_mid = [0, 500_000, 0];
        assert_eq!(s.update(t0 + ms(100), &only_mid, 3_000_000, AUDIO), Target::Layer(1));
        // Fewer layers than the current target.
        let mut s = LayerSelector::new(SelectorConfig::default());
        s.update(t0, &LAYERS, 3_000_000, AUDIO);
        assert_eq!(s.update(t0, &LAYERS[..1], 3_000_000, AUDIO), Target::Layer(0));
        assert_eq!(s.update(t0, &[], 3_000_000, AUDIO), Target::Paused);
    }

    #[test]
    fn switch_waits_for_target_keyframe_going_up() {
        let mut sw = LayerSwitch::new();
        assert_eq!(sw.on_packet(0, true), LayerDecision::Drop, "paused by default");
        assert_eq!(sw.set_target(Target::Layer(0)), Some(0));
        assert_eq!(sw.on_packet(0, false), LayerDecision::Drop, "no keyframe yet");
        assert_eq!(sw.on_packet(0, true), LayerDecision::Forward);
        assert_eq!(sw.pending_keyframe(), None);
        assert_eq!(sw.set_target(Target::Layer(1)), Some(1));
        assert_eq!(sw.on_packet(0, false), LayerDecision::Forward);
        assert_eq!(sw.on_packet(1, false), LayerDecision::Drop);
        assert_eq!(sw.on_packet(2, true), LayerDecision::Drop, "overshoot ignored");
        assert_eq!(sw.on_packet(1, true), LayerDecision::Forward);
        assert_eq!(sw.current(), Some(1));
        assert_eq!(sw.on_packet(0, false), LayerDecision::Drop);
        assert_eq!(sw.on_packet(0, true), LayerDecision::Drop);
        assert_eq!(sw.on_packet(1, false), LayerDecision::Forward);
    }

    #[test]
    fn switch_down_at_lower_keyframe_via_intermediate() {
        let mut sw = LayerSwitch::new();
        sw.set_target(Target::Layer(2));
        sw.on_packet(2, true);
        assert_eq!(sw.set_target(Target::Layer(0)), Some(0));
        assert_eq!(
            sw.on_packet(2, false),
            LayerDecision::Forward,
            "keep video until the switch"
        );
        assert_eq!(sw.on_packet(1, true), LayerDecision::Forward, "closer to target");
        assert_eq!(sw.current(), Some(1));
        assert_eq!(sw.on_packet(2, true), LayerDecision::Drop);
        assert_eq!(sw.on_packet(0, true), LayerDecision::Forward);
        assert_eq!(sw.target(), Target::Layer(0));
        assert_eq!(sw.pending_keyframe(), None);
    }

    #[test]
    fn switch_starts_on_any_lower_keyframe_and_pauses_at_once() {
        let mut sw = LayerSwitch::new();
        sw.set_target(Target::Layer(2));
        assert_eq!(sw.on_packet(0, true), LayerDecision::Forward, "video sooner on join");
        assert_eq!(sw.pending_keyframe(), Some(2));
        assert_eq!(sw.set_target(Target::Paused), None);
        assert_eq!(sw.current(), None);
        assert_eq!(sw.on_packet(0, false), LayerDecision::Drop);
        assert_eq!(sw.on_packet(0, true), LayerDecision::Drop);
    }

    #[test]
    fn link_state_degrades_at_once_and_recovers_slowly() {
        let t0 = Instant::now();
        let mut c = LinkClassifier::default();
        let want = Target::Layer(2);
        assert_eq!(c.update(t0, Target::Layer(2), want), LinkState::Good);
        assert_eq!(c.update(t0 + ms(100), Target::Layer(1), want), LinkState::Weak);
        assert_eq!(c.update(t0 + ms(200), Target::Layer(2), want), LinkState::Weak);
        assert_eq!(c.update(t0 + ms(3000), Target::Layer(1), want), LinkState::Weak);
        assert_eq!(c.update(t0 + ms(4000), Target::Layer(2), want), LinkState::Weak);
        assert_eq!(c.update(t0 + ms(8999), Target::Layer(2), want), LinkState::Weak);
        assert_eq!(c.update(t0 + ms(9000), Target::Layer(2), want), LinkState::Good);
    }

    #[test]
    fn link_state_audio_only_paths() {
        let t0 = Instant::now();
        let mut c = LinkClassifier::new(ms(5000));
        let want = Target::Layer(1);
        assert_eq!(c.update(t0, Target::Paused, want), LinkState::AudioOnly);
        assert_eq!(c.update(t0 + ms(100), Target::Layer(0), want), LinkState::Weak);
        assert_eq!(c.update(t0 + ms(200), Target::Paused, want), LinkState::AudioOnly);
        assert_eq!(c.update(t0 + ms(300), Target::Layer(1), want), LinkState::Weak);
        assert_eq!(c.update(t0 + ms(5300), Target::Layer(1), want), LinkState::Good);
        assert_eq!(c.state(), LinkState::Good);
        // A subscriber that wants no video is never "weak".
        assert_eq!(c.update(t0 + ms(5400), Target::Paused, Target::Paused), LinkState::Good);
    }

    #[test]
    fn resume_probe_holds_video_for_the_probe_and_backs_off() {
        let t0 = Instant::now();
        let mut p = ResumeProbe::new(ms(5000), ms(60_000), ms(4000));
        assert_eq!(p.update(t0, Target::Paused), Target::Paused);
        assert_eq!(p.update(t0 + ms(4900), Target::Paused), Target::Paused);
        // Probe: video on for 4 s even though the decision is still Paused.
        assert_eq!(p.update(t0 + ms(5000), Target::Paused), Target::Layer(0));
        assert_eq!(p.update(t0 + ms(8900), Target::Paused), Target::Layer(0));
        // Still paused at the end: back off to 10 s.
        assert_eq!(p.update(t0 + ms(9000), Target::Paused), Target::Paused);
        assert_eq!(p.interval(), ms(10_000));
        assert_eq!(p.update(t0 + ms(18_900), Target::Paused), Target::Paused);
        assert_eq!(p.update(t0 + ms(19_000), Target::Paused), Target::Layer(0));
        // This probe succeeds: the estimate followed.
        assert_eq!(p.update(t0 + ms(23_000), Target::Layer(0)), Target::Layer(0));
        assert_eq!(p.update(t0 + ms(42_000), Target::Layer(0)), Target::Layer(0));
        assert_eq!(p.update(t0 + ms(43_100), Target::Layer(0)), Target::Layer(0));
        assert_eq!(p.interval(), ms(5000));
        // Backoff is capped.
        let mut q = ResumeProbe::new(ms(5000), ms(20_000), ms(1000));
        let mut t = t0;
        for _ in 0..200 {
            q.update(t, Target::Paused);
            t += ms(500);
        }
        assert_eq!(q.interval(), ms(20_000));
    }

    #[test]
    fn pause_gate_waits_for_ramp_up_and_a_sustained_low_estimate() {
        let t0 = Instant::now();
        let mut g = PauseGate::new(ms(10_000), ms(3000));
        assert_eq!(g.update(t0, Target::Layer(0)), Target::Layer(0));
        // Low estimate during the ramp-up: keep video.
        assert_eq!(g.update(t0 + ms(1000), Target::Paused), Target::Layer(0));
        assert_eq!(g.update(t0 + ms(9000), Target::Paused), Target::Layer(0));
        // Grace over, and the estimate has been low since 1 s: pause.
        assert_eq!(g.update(t0 + ms(10_000), Target::Paused), Target::Paused);
        // A good estimate resets it; the next low one has to last 3 s.
        assert_eq!(g.update(t0 + ms(11_000), Target::Layer(0)), Target::Layer(0));
        assert_eq!(g.update(t0 + ms(12_000), Target::Paused), Target::Layer(0));
        assert_eq!(g.update(t0 + ms(14_900), Target::Paused), Target::Layer(0));
        assert_eq!(g.update(t0 + ms(15_000), Target::Paused), Target::Paused);
    }

    #[test]
    fn up_probe_pads_after_a_steady_spell_and_backs_off_when_the_link_is_full() {
        let t0 = Instant::now();
        let mut p = UpProbe::new(ms(5000), ms(40_000), ms(10_000));
        let l0 = Target::Layer(0);
        assert_eq!(p.update(t0, l0, Some(400_000), 1_000_000, true), 0);
        assert_eq!(p.update(t0 + ms(4900), l0, Some(400_000), 1_000_000, true), 0);
        assert_eq!(p.update(t0 + ms(5000), l0, Some(400_000), 1_000_000, true), 400_000);
        assert!(p.probing());
        assert_eq!(p.update(t0 + ms(14_900), l0, Some(400_000), 1_000_000, true), 400_000);
        // The estimate never followed: stop, and wait twice as long.
        assert_eq!(p.update(t0 + ms(15_000), l0, Some(400_000), 1_000_000, true), 0);
        assert_eq!(p.interval(), ms(10_000));
        assert_eq!(p.update(t0 + ms(24_900), l0, Some(400_000), 1_000_000, true), 0);
        assert_eq!(p.update(t0 + ms(25_000), l0, Some(400_000), 1_000_000, true), 400_000);
        // This one works: the selector goes up; padding stops, interval resets.
        assert_eq!(
            p.update(t0 + ms(30_000), Target::Layer(1), Some(1_000_000), 1_000_000, true),
            0
        );
        assert_eq!(p.interval(), ms(5000));
        // Nothing above the top layer: never probes.
        let mut q = UpProbe::new(ms(5000), ms(40_000), ms(10_000));
        for i in 0..100 {
            assert_eq!(q.update(t0 + ms(i * 1000), Target::Layer(2), None, 1_000_000, true), 0);
        }
        // A down-switch mid-probe fails it; the back-off is capped.
        let mut r = UpProbe::new(ms(5000), ms(12_000), ms(10_000));
        r.update(t0, Target::Layer(1), Some(1), 1_000_000, true);
        assert_eq!(r.update(t0 + ms(5000), Target::Layer(1), Some(1), 1_000_000, true), 1);
        assert_eq!(r.update(t0 + ms(6000), l0, Some(1), 1_000_000, true), 0);
        assert_eq!(r.interval(), ms(10_000));
        r.update(t0 + ms(16_000), l0, Some(1), 1_000_000, true);
        r.update(t0 + ms(30_000), l0, Some(1), 1_000_000, true);
        assert_eq!(r.interval(), ms(12_000));
        // A probe whose estimate stops growing short of the next layer ends
        // early: the link is full.
        let mut f = UpProbe::new(ms(5000), ms(40_000), ms(15_000));
        f.update(t0, l0, Some(1), 700_000, false);
        assert_eq!(f.update(t0 + ms(5000), l0, Some(1), 700_000, false), 1);
        assert_eq!(f.update(t0 + ms(6000), l0, Some(1), 850_000, false), 1);
        assert_eq!(f.update(t0 + ms(8900), l0, Some(1), 860_000, false), 1);
        assert_eq!(f.update(t0 + ms(9000), l0, Some(1), 860_000, false), 0);
        assert_eq!(f.interval(), ms(10_000));
        // ... but not while the estimate already fits (the selector's wait).
        f.update(t0 + ms(19_000), l0, Some(1), 860_000, false);
        assert_eq!(f.update(t0 + ms(25_000), l0, Some(1), 2_000_000, true), 1);
        // Paused (audio only) is the resume probe's business, not this one's.
        let mut a = UpProbe::new(ms(5000), ms(12_000), ms(10_000));
        for i in 0..30 {
            assert_eq!(
                a.update(t0 + ms(i * 1000), Target::Paused, Some(1), 1_000_000, false),
                0
            );
        }
    }
}
