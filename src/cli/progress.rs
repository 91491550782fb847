//! The command line's progress display: a bar with rate, ETA, capacity and
//! throttles on a terminal; a log line every 10 seconds otherwise. (Part of
//! the command line, not the engine: the engine never prints.)

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::{Observer, Progress};
use crate::util::human_duration;

pub(crate) use super::ProgressChoice as Mode;

/// A running display; [`Display::finish`] clears the bar before the report.
pub(crate) struct Display {
    bar: Option<ProgressBar>,
}

impl Display {
    /// Starts a display for one migration and returns it with its observer.
    pub(crate) fn start(mode: Mode, label: &str) -> (Display, Option<Observer>) {
        let mode = match mode {
            Mode::Auto if std::io::stdout().is_terminal() => Mode::Bar,
            Mode::Auto => Mode::Log,
            m => m,
        };
        match mode {
            Mode::Bar => {
                let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
                bar.set_style(
                    ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} items {msg}")
                        .expect("template is valid")
                        .progress_chars("=> "),
                );
                bar.set_prefix(label.to_owned());
                let b = bar.clone();
                let observer: Observer = Arc::new(move |p: &Progress| {
                    if p.items_estimated > 0 {
                        b.set_length(p.items_estimated.max(p.done()));
                    } else {
                        b.set_length(p.done());
                    }
                    b.set_position(p.done());
                    b.set_message(summary(p));
                });
                (Display { bar: Some(bar) }, Some(observer))
            }
            Mode::Log => {
                let label = label.to_owned();
                let last = Mutex::new(Instant::now());
                let observer: Observer = Arc::new(move |p: &Progress| {
                    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                    if last.elapsed() >= Duration::from_secs(10) {
                        *last = Instant::now();
                        let of = if p.items_estimated > 0 {
                            format!("/~{}", p.items_estimated)
                        } else {
                            String::new()
                        };
                        eprintln!("progress: {label}: {}{of} items, {}", p.done(), summary(p));
                    }
                });
                (Display { bar: None }, Some(observer))
            }
            _ => (Display { bar: None }, None),
        }
    }

    /// Clears the bar.
    pub(crate) fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

fn summary(p: &Progress) -> String {
    let eta = p
        .eta()
        .map(|d| format!("ETA {}", human_duration(d.as_secs_f64())))
        .unwrap_or_else(|| "ETA unknown".into());
    let cap = |used: f64, limit: Option<f64>, rate: Option<f64>, unit: &str| {
        let secs = p.elapsed.as_secs_f64().max(0.001);
        match (limit, rate) {
            (Some(l), Some(r)) if r < l * 0.99 => {
                format!("{:.0}/{l:.0} {unit}/s (backed off to {r:.0})", used / secs)
            }
            (Some(l), _) => format!("{:.0}/{l:.0} {unit}/s", used / secs),
            _ => format!("{:.0} {unit}/s", used / secs),
        }
    };
    format!(
        "{:.0} items/s, {eta}, segments {}/{}, read {}, write {}, throttled {}",
        p.rate(),
        p.segments_done,
        p.segments_total,
        cap(p.read_consumed, p.read_limit, p.read_rate, "RCU"),
        cap(p.write_consumed, p.write_limit, p.write_rate, "WCU"),
        p.counts.throttled
    )
}

/// Progress log lines of `replay` and `revert`: at most one every 10 seconds
/// (`DYNBULK_PROGRESS_EVERY`, a duration such as `1ms`, overrides it).
pub(crate) struct Lines {
    last: Mutex<Instant>,
    every: Duration,
}

impl Lines {
    pub(crate) fn new() -> Self {
        let every = std::env::var("DYNBULK_PROGRESS_EVERY")
            .ok()
            .and_then(|v| super::parse_duration(&v).ok())
            .unwrap_or(Duration::from_secs(10));
        Lines {
            last: Mutex::new(Instant::now()),
            every,
        }
    }

    /// Prints `line()` to standard error when the last line is old enough.
    pub(crate) fn print(&self, line: impl FnOnce() -> String) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= self.every {
            *last = Instant::now();
            eprintln!("progress: {}", line());
        }
    }
}
