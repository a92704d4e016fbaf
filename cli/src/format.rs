//! How values are shown: sizes, times, and text that may hold control
//! characters.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A byte count for people: `512 B`, `12.0 KiB`, `3.4 MiB`.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A point in time as UTC RFC 3339, to the second: `2026-05-01T12:00:00Z`.
pub(crate) fn utc_seconds(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Unix milliseconds (how the runtime stores an alarm) as UTC RFC 3339 with
/// milliseconds, or `None` when the value cannot be a time.
pub(crate) fn unix_millis_utc(millis: i64) -> Option<String> {
    let time = unix_millis(millis)?;
    Some(humantime::format_rfc3339_millis(time).to_string())
}

/// Unix milliseconds as a `SystemTime`, when representable (humantime
/// formats years 1970 to 9999 only).
pub(crate) fn unix_millis(millis: i64) -> Option<SystemTime> {
    const YEAR_10000_MILLIS: i64 = 253_402_300_800_000;
    if !(0..YEAR_10000_MILLIS).contains(&millis) {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_millis(millis as u64))
}

/// Text as one line of a table or TSV: shown as is, unless it holds control
/// characters (a tab or newline would break the columns), then escaped as a
/// Rust string literal's contents.
pub(crate) fn one_line(text: &str) -> String {
    if text.chars().any(char::is_control) { text.escape_debug().to_string() } else { text.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_exact_below_a_kibibyte_and_rounded_above() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(12 * 1024 + 512), "12.5 KiB");
        assert_eq!(human_size(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn alarms_are_shown_in_utc_with_milliseconds() {
        assert_eq!(unix_millis_utc(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(unix_millis_utc(1_777_636_800_123).as_deref(), Some("2026-05-01T12:00:00.123Z"));
        assert_eq!(unix_millis_utc(-1), None);
    }

    #[test]
    fn control_characters_are_escaped_and_other_text_is_kept() {
        assert_eq!(one_line("user:alice"), "user:alice");
        assert_eq!(one_line("é ✓"), "é ✓");
        assert_eq!(one_line("a\tb\nc"), "a\\tb\\nc");
    }
}
