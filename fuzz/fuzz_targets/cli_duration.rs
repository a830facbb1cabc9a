//! The command line's duration parser (`30s`, `1h30m`, `1.5s`, `250ms`), compiled from
//! the binary's own source: any text parses or is refused, never a panic; what parses
//! is shown for people without a panic, prints back exactly and reparses to the same
//! value, and two inputs written one after the other parse to their sum.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[path = "../../src/bin/leases/duration.rs"]
#[allow(dead_code)]
mod duration;

use duration::{parse, DurationError};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    first: &'a str,
    second: &'a str,
}

/// An exact form of a duration of whole milliseconds, in the parser's syntax.
fn exact(d: Duration) -> String {
    format!("{}s{}ms", d.as_secs(), d.subsec_millis())
}

fuzz_target!(|input: Input<'_>| {
    let a = parse(input.first);
    if let Ok(d) = a {
        let _ = duration::human(d);
        if !input.first.contains('.') {
            // Whole numbers only: whole milliseconds, exactly.
            assert_eq!(d.subsec_nanos() % 1_000_000, 0, "{d:?}");
            assert_eq!(parse(&exact(d)), Ok(d), "{:?}", exact(d));
        }
        // Any accepted duration of whole milliseconds prints and reparses exactly.
        let whole = Duration::new(d.as_secs(), d.subsec_millis() * 1_000_000);
        assert_eq!(parse(&exact(whole)), Ok(whole));
    }
    // Concatenation sums, when the second part starts a new number.
    let (first, second) = (input.first.trim(), input.second.trim());
    if let (Ok(x), Ok(y)) = (parse(first), parse(second)) {
        if second.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            let both = parse(&format!("{first}{second}"));
            let sum = x.checked_add(y).ok_or(DurationError::TooLong);
            assert_eq!(both, sum, "{first:?} then {second:?}");
        }
    }
});
