//! Durations on the command line (`30s`, `5m`, `1h30m`, `1.5s`, `250ms`) and for people
//! in the output (`4m59s`, `25h`, `500ms`), plus the RFC 3339 time stamps of the JSON output.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DurationError {
    /// Nothing was given.
    #[error("empty duration (write it like 30s, 5m or 1h30m)")]
    Empty,
    /// A number without a unit, such as `30`.
    #[error("{number:?} has no unit (write it like {number}s; units: ms, s, m, h, d)")]
    MissingUnit {
        /// The number that lacks its unit.
        number: String,
    },
    /// A unit this parser does not know.
    #[error("unknown unit {unit:?} (units: ms, s, m, h, d)")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
    },
    /// Something where a number was expected.
    #[error("expected a number at {rest:?} (write it like 30s, 5m or 1h30m)")]
    BadNumber {
        /// The input from the bad spot on.
        rest: String,
    },
    /// More than the largest duration.
    #[error("duration too long")]
    TooLong,
}

/// Parses `30s`, `5m`, `1h30m`, `1.5s`, `250ms`, `2d`: one or more parts of a number
/// (decimals allowed) and a unit, summed. No part may lack its unit.
pub(crate) fn parse(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        // Spaces between parts (`1h 30m`) are allowed.
        let unit = unit.trim();
        if number.is_empty() || number.starts_with('.') && number.len() == 1 {
            return Err(DurationError::BadNumber {
                rest: rest.to_owned(),
            });
        }
        let value: f64 = number.parse().map_err(|_| DurationError::BadNumber {
            rest: rest.to_owned(),
        })?;
        let unit_secs = match unit {
            "" => {
                return Err(DurationError::MissingUnit {
                    number: number.to_owned(),
                })
            }
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_owned(),
                })
            }
        };
        // Whole milliseconds and seconds stay exact (no float rounding for `250ms`, and
        // every whole number of seconds up to `u64::MAX` is accepted).
        let part = if number.contains('.') {
            Duration::try_from_secs_f64(value * unit_secs).map_err(|_| DurationError::TooLong)?
        } else {
            let n: u64 = number.parse().map_err(|_| DurationError::TooLong)?;
            match unit {
                "ms" => Duration::from_millis(n),
                _ => Duration::from_secs(
                    n.checked_mul(unit_secs as u64)
                        .ok_or(DurationError::TooLong)?,
                ),
            }
        };
        total = total.checked_add(part).ok_or(DurationError::TooLong)?;
        rest = next;
    }
    Ok(total)
}

/// A duration as users write it, which [`parse`] reads back: `0s`, `500ms`, `1.5s`,
/// `4m5s`, `1h30m`, `25h` (hours are the largest unit; below a millisecond is dropped).
pub(crate) fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return if ms == 0 {
            "0s".into()
        } else {
            format!("{ms}ms")
        };
    }
    let (hours, minutes, seconds, millis) =
        (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    if hours > 0 {
        out += &format!("{hours}h");
    }
    if minutes > 0 {
        out += &format!("{minutes}m");
    }
    if millis > 0 {
        let fraction = format!("{millis:03}");
        out += &format!("{seconds}.{}s", fraction.trim_end_matches('0'));
    } else if seconds > 0 {
        out += &format!("{seconds}s");
    }
    out
}

/// [`human`] to the tenth of a second under a minute and to the second above it
/// (rounded down): for time left and time waited, where milliseconds are noise.
pub(crate) fn human_approx(d: Duration) -> String {
    let step = if d < Duration::from_secs(60) {
        100
    } else {
        1000
    };
    let ms = d.as_millis() / step * step;
    human(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)))
}

/// An RFC 3339 time stamp in UTC with milliseconds: `2026-11-27T20:58:01.123Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86400);
    let rem = secs % 86400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The civil date of a day count since 1970-01-01 (proleptic Gregorian calendar; the
/// well-known days-to-civil conversion by eras of 400 years).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        let ok = [
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("1h 30m", Duration::from_secs(5400)),
            ("250ms", Duration::from_millis(250)),
            ("1.5s", Duration::from_millis(1500)),
            ("2d", Duration::from_secs(172_800)),
            ("0s", Duration::ZERO),
            (" 10s ", Duration::from_secs(10)),
        ];
        for (text, want) in ok {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert!(matches!(
            parse("30"),
            Err(DurationError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse("1h30"),
            Err(DurationError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse("5x"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(parse("s"), Err(DurationError::BadNumber { .. })));
        assert!(matches!(parse("-5s"), Err(DurationError::BadNumber { .. })));
        assert!(matches!(
            parse("1.2.3s"),
            Err(DurationError::BadNumber { .. })
        ));
        assert!(matches!(parse(".s"), Err(DurationError::BadNumber { .. })));
        assert_eq!(parse("99999999999999999999d"), Err(DurationError::TooLong));
        assert_eq!(
            parse("1e300s"),
            Err(DurationError::UnknownUnit { unit: "e".into() })
        );
        assert_eq!(parse("213503982334602d"), Err(DurationError::TooLong));
        assert_eq!(parse("18446744073709551616s"), Err(DurationError::TooLong));
    }

    /// Whole numbers near the largest duration were refused through a float's
    /// rounding (2^64 - 1 seconds rounds up to 2^64): found while writing the fuzz
    /// target's round-trip property.
    #[test]
    fn the_largest_whole_seconds_parse() {
        assert_eq!(
            parse("18446744073709551615s"),
            Ok(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse("18446744073709551s999ms"),
            Ok(Duration::new(18_446_744_073_709_551, 999_000_000))
        );
    }

    #[test]
    fn human_form() {
        for (d, want) in [
            (Duration::ZERO, "0s"),
            (Duration::from_micros(400), "0s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(29_120), "29.12s"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_secs(245), "4m5s"),
            (Duration::from_secs(5400), "1h30m"),
            (Duration::from_secs(3723), "1h2m3s"),
            (Duration::from_secs(3605), "1h5s"),
            (Duration::from_secs(25 * 3600), "25h"),
        ] {
            assert_eq!(human(d), want, "{d:?}");
            assert_eq!(parse(want), Ok(Duration::from_millis(d.as_millis() as u64)));
        }
        assert_eq!(human_approx(Duration::from_millis(29_160)), "29.1s");
        assert_eq!(human_approx(Duration::from_millis(50)), "0s");
        assert_eq!(human_approx(Duration::from_millis(245_900)), "4m5s");
    }

    #[test]
    fn time_stamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_813_081_123);
        assert_eq!(rfc3339(t), "2026-11-27T20:58:01.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
