//! Parsing of the duration strings used in policies (`250ms`, `5s`, `1m30s`, `1h`).

use std::time::Duration;

/// Parses a duration made of `<integer><unit>` parts, units `ms`, `s`, `m`, `h`.
///
/// Written by hand rather than borrowed from a crate so that the accepted grammar is exactly the
/// schema's [`crate::api::DURATION_PATTERN`] and errors can say what was expected.
pub fn parse(text: &str) -> Result<Duration, String> {
    // Far beyond any setting validation allows, and small enough that every accepted value
    // formats back to text that parses (found by fuzzing: sums near u64 milliseconds did not).
    const LONGEST: Duration = Duration::from_secs(1_000_000_000 * 3600);
    const EXPECTED: &str = "expected a duration such as 250ms, 5s or 1m30s";
    if text.is_empty() {
        return Err(format!("empty duration: {EXPECTED}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?}: {EXPECTED}"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let (unit_millis, unit_len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return Err(format!("{text:?}: missing or unknown unit, {EXPECTED}"));
        };
        rest = &rest[unit_len..];
        let millis = value
            .checked_mul(unit_millis)
            .ok_or_else(|| format!("{text:?}: duration too large"))?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .filter(|total| *total <= LONGEST)
            .ok_or_else(|| format!("{text:?}: duration too large (at most 1000000000h)"))?;
    }
    Ok(total)
}

/// Formats a duration in the same grammar, for messages (`1m30s`, `250ms`).
pub fn format(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let (h, rest) = (millis / 3_600_000, millis % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, ms) = (rest / 1_000, rest % 1_000);
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let cases = [
            ("250ms", 250),
            ("5s", 5_000),
            ("1m30s", 90_000),
            ("1h", 3_600_000),
            ("1m1s1ms", 61_001),
            ("0s", 0),
        ];
        for (text, millis) in cases {
            assert_eq!(parse(text), Ok(Duration::from_millis(millis)), "{text}");
        }
    }

    #[test]
    fn rejects_what_the_schema_rejects() {
        for text in [
            "",
            "5",
            "s",
            "1.5s",
            "5 s",
            "-1s",
            "1d",
            "ms5",
            "99999999999999999999s",
        ] {
            assert!(parse(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in ["250ms", "5s", "1m30s", "1h", "1h1m1s1ms"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }

    #[test]
    fn the_longest_duration_round_trips_and_one_more_is_rejected() {
        // Found by fuzzing: sums near u64 milliseconds formatted to text that did not parse.
        let longest = parse("1000000000h").unwrap();
        assert_eq!(parse(&format(longest)), Ok(longest));
        let err = parse("1000000000h1ms").unwrap_err();
        assert!(err.contains("too large"), "{err}");
        assert!(parse("5124095576030h").is_err());
    }
}
