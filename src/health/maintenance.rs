//! Maintenance windows: planned time in which a failing dependency is expected, so it degrades
//! the service instead of pulling its pods. A window is one-off (`start`/`end`) or recurring (a
//! five-field cron `schedule` in an IANA time zone, open for `duration` from each match).
//! Pure: the caller passes `now`.

use std::time::Duration;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

/// A cron search gives up after this many steps (about four years of non-matching days), so a
/// schedule that can never match (`0 0 31 2 *`) costs a bounded search, not a hang.
const MAX_STEPS: u32 = 4 * 366 + 24 * 60;

/// A parsed five-field cron expression: minute hour day-of-month month day-of-week.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Vixie cron: when both day fields are restricted, a day matching either one matches.
    days_restricted: bool,
    weekdays_restricted: bool,
}

impl std::str::FromStr for Cron {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expanded = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "{} fields; a schedule has 5: minute hour day-of-month month day-of-week",
                fields.len()
            ));
        };
        const MONTHS: &[&str] = &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const WEEKDAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let weekdays = field("day-of-week", weekday, 0, 7, WEEKDAYS, 0)?;
        Ok(Cron {
            minutes: field("minute", minute, 0, 59, &[], 0)?,
            hours: field("hour", hour, 0, 23, &[], 0)? as u32,
            days: field("day-of-month", day, 1, 31, &[], 1)? as u32,
            months: field("month", month, 1, 12, MONTHS, 1)? as u16,
            // 7 is Sunday too.
            weekdays: ((weekdays | (weekdays >> 7)) & 0x7f) as u8,
            days_restricted: !day.starts_with('*'),
            weekdays_restricted: !weekday.starts_with('*'),
        })
    }
}

/// One field as a bit set (bit n: value n). `names[i]` stands for `i + name_base`.
fn field(
    name: &str,
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_base: u32,
) -> Result<u64, String> {
    let value = |v: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            return Ok(i as u32 + name_base);
        }
        let n: u32 = v
            .parse()
            .map_err(|_| format!("{name} field: {v:?} is not a number"))?;
        if n < min || n > max {
            return Err(format!("{name} field: {n} is out of range {min}-{max}"));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    format!("{name} field: step {step:?} must be a number above 0")
                })?;
                (range, step)
            }
            None => (item, 1),
        };
        let (from, to) = match range {
            "*" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                // `5/15` means from 5 to the end, every 15.
                None if step > 1 => (value(range)?, max),
                None => {
                    let v = value(range)?;
                    (v, v)
                }
            },
        };
        if from > to {
            return Err(format!("{name} field: range {range:?} runs backwards"));
        }
        for v in (from..=to).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
}

impl Cron {
    fn day_matches(&self, date: Date) -> bool {
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day || weekday,
            _ => day && weekday,
        }
    }

    fn month_matches(&self, date: Date) -> bool {
        self.months & (1 << date.month()) != 0
    }

    /// The latest matching minute at or before `at` (civil time), if one is found in the
    /// bounded search.
    pub fn previous(&self, at: DateTime) -> Option<DateTime> {
        let mut t = at.with().second(0).subsec_nanosecond(0).build().ok()?;
        for _ in 0..MAX_STEPS * 60 {
            let date = t.date();
            if !self.month_matches(date) {
                // The last minute of the previous month.
                t = date.first_of_month().to_datetime(Time::midnight()) - 1.minute();
            } else if !self.day_matches(date) {
                t = date.to_datetime(Time::midnight()) - 1.minute();
            } else if self.hours & (1 << t.hour()) == 0 {
                t = t.with().minute(0).build().ok()? - 1.minute();
            } else if self.minutes & (1 << t.minute()) == 0 {
                t -= 1.minute();
            } else {
                return Some(t);
            }
        }
        None
    }

    /// The earliest matching minute strictly after `at` (civil time).
    pub fn next(&self, at: DateTime) -> Option<DateTime> {
        let mut t = at.with().second(0).subsec_nanosecond(0).build().ok()? + 1.minute();
        for _ in 0..MAX_STEPS * 60 {
            let date = t.date();
            if !self.month_matches(date) {
                t = date
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .to_datetime(Time::midnight());
            } else if !self.day_matches(date) {
                t = date.tomorrow().ok()?.to_datetime(Time::midnight());
            } else if self.hours & (1 << t.hour()) == 0 {
                t = t.with().minute(0).build().ok()? + 1.hour();
            } else if self.minutes & (1 << t.minute()) == 0 {
                t += 1.minute();
            } else {
                return Some(t);
            }
        }
        None
    }
}

/// When a window is open.
#[derive(Clone, Debug, PartialEq)]
pub enum When {
    Once {
        start: Timestamp,
        end: Timestamp,
    },
    Every {
        schedule: Cron,
        duration: Duration,
        zone: TimeZone,
    },
}

/// One occurrence of a window: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occurrence {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl When {
    /// The occurrence open at `now`, if any. Of overlapping occurrences the latest start also
    /// ends last, so it is the one reported.
    pub fn open_at(&self, now: Timestamp) -> Option<Occurrence> {
        match self {
            When::Once { start, end } => (*start <= now && now < *end).then_some(Occurrence {
                start: *start,
                end: *end,
            }),
            When::Every {
                schedule,
                duration,
                zone,
            } => {
                let civil = now.to_zoned(zone.clone()).datetime();
                let start = instant(schedule.previous(civil)?, zone)?;
                let end = start.checked_add(*duration).ok()?;
                (now < end).then_some(Occurrence { start, end })
            }
        }
    }

    /// The first instant after `now` at which this window opens or closes.
    pub fn next_change(&self, now: Timestamp) -> Option<Timestamp> {
        let end = self.open_at(now).map(|o| o.end);
        let next_start = match self {
            When::Once { start, .. } => (*start > now).then_some(*start),
            When::Every { schedule, zone, .. } => {
                let civil = now.to_zoned(zone.clone()).datetime();
                schedule.next(civil).and_then(|t| instant(t, zone))
            }
        };
        [end, next_start].into_iter().flatten().min()
    }
}

/// A civil time in `zone` as an instant. A time in a spring-forward gap runs at the instant the
/// gap ends, and one in a fall-back fold at its first occurrence (what `cron` daemons do).
fn instant(civil: DateTime, zone: &TimeZone) -> Option<Timestamp> {
    zone.to_ambiguous_zoned(civil)
        .compatible()
        .ok()
        .map(|z: Zoned| z.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(text: &str) -> Cron {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn civil(text: &str) -> DateTime {
        text.parse().unwrap()
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn schedules_are_parsed_like_cron() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            // (schedule, after, next match)
            ("0 2 * * *", "2026-12-03T10:15", Some("2026-12-04T02:00")),
            ("*/15 * * * *", "2026-12-03T10:15", Some("2026-12-03T10:30")),
            ("5/20 * * * *", "2026-12-03T10:26", Some("2026-12-03T10:45")),
            ("30 1 * * sun", "2026-12-03T10:00", Some("2026-12-06T01:30")),
            // 7 is Sunday as well.
            ("30 1 * * 7", "2026-12-03T10:00", Some("2026-12-06T01:30")),
            (
                "0 0 1 jan,jul *",
                "2026-12-03T10:00",
                Some("2027-01-01T00:00"),
            ),
            (
                "0 9-17/4 * * mon-fri",
                "2026-12-04T17:00",
                Some("2026-12-07T09:00"),
            ),
            // Both day fields restricted: either matches (the 1st, or any Monday).
            ("0 0 1 * mon", "2026-12-01T00:00", Some("2026-12-07T00:00")),
            ("@monthly", "2026-12-03T00:00", Some("2027-01-01T00:00")),
            ("0 0 29 2 *", "2026-03-01T00:00", Some("2028-02-29T00:00")),
            // Never matches: the bounded search gives up.
            ("0 0 31 2 *", "2026-03-01T00:00", None),
        ];
        for (schedule, after, want) in cases {
            assert_eq!(
                cron(schedule).next(civil(after)),
                want.map(civil),
                "{schedule} after {after}"
            );
        }
        assert_eq!(
            cron("0 2 * * *").previous(civil("2026-12-03T10:15:42")),
            Some(civil("2026-12-03T02:00"))
        );
        assert_eq!(
            cron("0 2 * * *").previous(civil("2026-12-03T02:00")),
            Some(civil("2026-12-03T02:00")),
            "at or before"
        );
        assert_eq!(
            cron("0 0 1 jan *").previous(civil("2026-12-03T00:00")),
            Some(civil("2026-01-01T00:00"))
        );
    }

    #[test]
    fn bad_schedules_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("0 2 * *", "4 fields; a schedule has 5"),
            ("60 * * * *", "minute field: 60 is out of range 0-59"),
            ("0 24 * * *", "hour field: 24 is out of range 0-23"),
            ("0 0 0 * *", "day-of-month field: 0 is out of range 1-31"),
            ("0 0 * 13 *", "month field: 13 is out of range 1-12"),
            ("0 0 * * 8", "day-of-week field: 8 is out of range 0-7"),
            (
                "0 0 * * funday",
                "day-of-week field: \"funday\" is not a number",
            ),
            (
                "*/0 * * * *",
                "minute field: step \"0\" must be a number above 0",
            ),
            ("0 5-1 * * *", "hour field: range \"5-1\" runs backwards"),
        ];
        for (schedule, want) in cases {
            let error = schedule.parse::<Cron>().unwrap_err();
            assert!(error.starts_with(want), "{schedule}: {error}");
        }
    }

    #[test]
    fn windows_open_and_close_at_their_boundaries() {
        let once = When::Once {
            start: ts("2026-12-03T10:00:00Z"),
            end: ts("2026-12-03T11:00:00Z"),
        };
        assert_eq!(once.open_at(ts("2026-12-03T09:59:59Z")), None);
        assert!(once.open_at(ts("2026-12-03T10:00:00Z")).is_some());
        assert_eq!(
            once.open_at(ts("2026-12-03T11:00:00Z")),
            None,
            "end is open"
        );
        assert_eq!(
            once.next_change(ts("2026-12-03T09:00:00Z")),
            Some(ts("2026-12-03T10:00:00Z"))
        );
        assert_eq!(
            once.next_change(ts("2026-12-03T10:30:00Z")),
            Some(ts("2026-12-03T11:00:00Z"))
        );
        assert_eq!(once.next_change(ts("2026-12-03T12:00:00Z")), None);

        // Sundays 02:00-04:00 in Berlin (UTC+1 in December).
        let weekly = When::Every {
            schedule: cron("0 2 * * sun"),
            duration: Duration::from_secs(2 * 3600),
            zone: TimeZone::get("Europe/Berlin").unwrap(),
        };
        assert_eq!(
            weekly.open_at(ts("2026-12-06T02:30:00Z")),
            Some(Occurrence {
                start: ts("2026-12-06T01:00:00Z"),
                end: ts("2026-12-06T03:00:00Z"),
            })
        );
        assert_eq!(weekly.open_at(ts("2026-12-06T03:00:00Z")), None);
        assert_eq!(
            weekly.next_change(ts("2026-12-03T12:00:00Z")),
            Some(ts("2026-12-06T01:00:00Z"))
        );
        assert_eq!(
            weekly.next_change(ts("2026-12-06T02:00:00Z")),
            Some(ts("2026-12-06T03:00:00Z"))
        );
    }

    #[test]
    fn a_start_in_a_daylight_saving_gap_runs_when_the_gap_ends() {
        // 2027-03-28 in Berlin: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        let daily = When::Every {
            schedule: cron("30 2 * * *"),
            duration: Duration::from_secs(600),
            zone: TimeZone::get("Europe/Berlin").unwrap(),
        };
        let open = daily.open_at(ts("2027-03-28T01:35:00Z")).expect("open");
        assert_eq!(open.start, ts("2027-03-28T01:30:00Z"));
    }
}
