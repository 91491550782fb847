//! Small helpers that depend on nothing else in the crate.

/// `3h 12m`, `4m 05s`, `12s`.
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_hours_minutes_or_seconds() {
        assert_eq!(human_duration(-3.0), "0s");
        assert_eq!(human_duration(12.4), "12s");
        assert_eq!(human_duration(245.0), "4m 05s");
        assert_eq!(human_duration(3.0 * 3600.0 + 12.0 * 60.0 + 30.0), "3h 12m");
    }
}
