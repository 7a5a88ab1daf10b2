//! Calendar windows (day, week, month) in UTC or a fixed UTC offset.
//!
//! The calendar is the proleptic Gregorian one (leap years: divisible by 4, except centuries
//! not divisible by 400). A fixed offset shifts the wall clock: with `+02:00` (7,200 s) a day
//! runs from 22:00 UTC to 22:00 UTC. Weeks start on Monday 00:00 (ISO 8601). Months run from
//! the 1st 00:00 to the 1st of the next month, so their length is 28 to 31 days. Offsets are
//! fixed: there is no daylight saving time (a time zone with DST is two offsets a year; pick
//! one, or use UTC).
//!
//! Date arithmetic is Howard Hinnant's `days_from_civil` / `civil_from_days`, exact over the
//! whole range of [`super::MAX_NOW_MS`].

/// The calendar period a budget resets on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    /// `day`, `week` or `month`.
    pub fn from_name(name: &str) -> Result<Self, super::LimiterError> {
        match name {
            "day" => Ok(Period::Day),
            "week" => Ok(Period::Week),
            "month" => Ok(Period::Month),
            _ => Err(super::LimiterError::InvalidConfig {
                field: "period",
                got: format!("`{name}`"),
                expected: "`day`, `week` or `month`",
            }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

pub(crate) const MS_PER_DAY: i64 = 86_400_000;

/// Offsets must be strictly within a day either way.
pub(crate) const MAX_OFFSET_SECONDS: i32 = 86_399;

/// The calendar window that contains an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalendarWindow {
    /// Consecutive windows have consecutive indices (days, weeks or months since 1970).
    pub index: i64,
    /// First millisecond of the window (Unix ms, UTC).
    pub start_ms: i64,
    /// First millisecond of the next window.
    pub end_ms: i64,
}

/// Days since 1970-01-01 of year `y`, month `m` (1-12), day `d` (1-31).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = i64::from((m + 9) % 12); // March is 0
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// Year, month (1-12) and day (1-31) of a count of days since 1970-01-01.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The window of `period` containing `now_ms` on a wall clock `offset_seconds` east of UTC.
pub fn calendar_window(period: Period, offset_seconds: i32, now_ms: u64) -> CalendarWindow {
    let offset_ms = i64::from(offset_seconds) * 1000;
    // `now_ms` is at most `MAX_NOW_MS` (checked by the limiters), far inside `i64`.
    let local_ms = i64::try_from(now_ms).unwrap_or(i64::MAX / 2) + offset_ms;
    let day = local_ms.div_euclid(MS_PER_DAY);
    let (index, first_day, next_first_day) = match period {
        Period::Day => (day, day, day + 1),
        Period::Week => {
            // 1970-01-01 was a Thursday: Monday 1969-12-29 is day -3.
            let week = (day + 3).div_euclid(7);
            (week, week * 7 - 3, week * 7 + 4)
        }
        Period::Month => {
            let (y, m, _) = civil_from_days(day);
            let (next_y, next_m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (
                (y - 1970) * 12 + i64::from(m) - 1,
                days_from_civil(y, m, 1),
                days_from_civil(next_y, next_m, 1),
            )
        }
    };
    CalendarWindow {
        index,
        start_ms: first_day * MS_PER_DAY - offset_ms,
        end_ms: next_first_day * MS_PER_DAY - offset_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Unix ms of a UTC date and time.
    fn utc(y: i64, m: u32, d: u32, hh: i64, mm: i64, ss: i64) -> u64 {
        let ms = days_from_civil(y, m, d) * MS_PER_DAY + ((hh * 60 + mm) * 60 + ss) * 1000;
        u64::try_from(ms).unwrap()
    }

    fn bounds(period: Period, offset: i32, now: u64) -> (i64, i64) {
        let w = calendar_window(period, offset, now);
        (w.start_ms, w.end_ms)
    }

    #[test]
    fn period_names() {
        for period in [Period::Day, Period::Week, Period::Month] {
            assert_eq!(Period::from_name(period.as_str()), Ok(period));
        }
        assert_eq!(
            Period::from_name("fortnight").map_err(|e| e.to_string()),
            Err(
                "limiter setting `period` is `fortnight`; expected `day`, `week` or `month`".into()
            )
        );
    }

    #[test]
    fn known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(utc(2024, 1, 1, 0, 0, 0), 1_704_067_200_000);
    }

    #[test]
    fn days_in_utc_and_at_offsets() {
        let noon = utc(2024, 6, 15, 12, 0, 0);
        let day = (
            utc(2024, 6, 15, 0, 0, 0) as i64,
            utc(2024, 6, 16, 0, 0, 0) as i64,
        );
        assert_eq!(bounds(Period::Day, 0, noon), day);
        // +02:00: the local day starts at 22:00 UTC the evening before.
        assert_eq!(
            bounds(Period::Day, 7200, noon),
            (day.0 - 7_200_000, day.1 - 7_200_000)
        );
        // At 23:30 UTC it is already the next day at +02:00, still the same day at -05:00.
        let late = utc(2024, 6, 15, 23, 30, 0);
        assert_eq!(bounds(Period::Day, 7200, late).0, day.1 - 7_200_000);
        assert_eq!(
            bounds(Period::Day, -18_000, late),
            (day.0 + 18_000_000, day.1 + 18_000_000)
        );
        // The boundary itself belongs to the new window.
        assert_eq!(bounds(Period::Day, 0, day.1 as u64).0, day.1);
        assert_eq!(bounds(Period::Day, 0, day.1 as u64 - 1).1, day.1);
    }

    #[test]
    fn weeks_start_on_monday() {
        // 2024-01-01 was a Monday; 2024-01-07 a Sunday.
        let monday = utc(2024, 1, 1, 0, 0, 0) as i64;
        let next_monday = utc(2024, 1, 8, 0, 0, 0) as i64;
        for now in [
            utc(2024, 1, 1, 0, 0, 0),
            utc(2024, 1, 4, 12, 0, 0),
            utc(2024, 1, 7, 23, 59, 59),
        ] {
            assert_eq!(bounds(Period::Week, 0, now), (monday, next_monday));
        }
        assert_eq!(bounds(Period::Week, 0, next_monday as u64).0, next_monday);
        // Sunday 23:00 UTC is Monday 01:00 at +02:00: the next local week has begun.
        let sunday_late = utc(2024, 1, 7, 23, 0, 0);
        assert_eq!(
            bounds(Period::Week, 7200, sunday_late).0,
            next_monday - 7_200_000
        );
        // The week of the epoch began on Monday 1969-12-29.
        assert_eq!(
            bounds(Period::Week, 0, 0),
            (-3 * MS_PER_DAY, 4 * MS_PER_DAY)
        );
    }

    #[test]
    fn month_ends_and_leap_years() {
        let cases = [
            ((2024, 1), (2024, 2)),
            ((2024, 2), (2024, 3)), // leap February: 29 days
            ((2023, 2), (2023, 3)), // 28 days
            ((2000, 2), (2000, 3)), // divisible by 400: leap
            ((2100, 2), (2100, 3)), // century: not leap
            ((2024, 4), (2024, 5)),
            ((2024, 12), (2025, 1)),
        ];
        for ((y, m), (ny, nm)) in cases {
            let start = utc(y, m, 1, 0, 0, 0);
            let end = utc(ny, nm, 1, 0, 0, 0);
            assert_eq!(bounds(Period::Month, 0, start), (start as i64, end as i64));
            assert_eq!(
                bounds(Period::Month, 0, end - 1),
                (start as i64, end as i64)
            );
        }
        let len = |y, m| {
            let (s, e) = bounds(Period::Month, 0, utc(y, m, 1, 0, 0, 0));
            (e - s) / MS_PER_DAY
        };
        assert_eq!(len(2024, 2), 29);
        assert_eq!(len(2023, 2), 28);
        assert_eq!(len(2000, 2), 29);
        assert_eq!(len(2100, 2), 28);
        assert_eq!(len(2024, 4), 30);
        assert_eq!(len(2024, 12), 31);
        // 2024-02-29 22:30 UTC is March 1st at +02:00.
        let w = calendar_window(Period::Month, 7200, utc(2024, 2, 29, 22, 30, 0));
        assert_eq!(w.start_ms, utc(2024, 3, 1, 0, 0, 0) as i64 - 7_200_000);
        // And still February 29th at -05:00 on March 1st 04:00 UTC.
        let w = calendar_window(Period::Month, -18_000, utc(2024, 3, 1, 4, 0, 0));
        assert_eq!(w.start_ms, utc(2024, 2, 1, 0, 0, 0) as i64 + 18_000_000);
    }

    #[test]
    fn indices_are_consecutive_across_a_year_end() {
        let dec = calendar_window(Period::Month, 0, utc(2024, 12, 31, 23, 59, 59));
        let jan = calendar_window(Period::Month, 0, utc(2025, 1, 1, 0, 0, 0));
        assert_eq!(jan.index, dec.index + 1);
        assert_eq!(jan.start_ms, dec.end_ms);
        assert_eq!(calendar_window(Period::Month, 0, 0).index, 0);
    }

    fn period() -> impl Strategy<Value = Period> {
        prop_oneof![Just(Period::Day), Just(Period::Week), Just(Period::Month)]
    }

    proptest! {
        #[test]
        fn civil_round_trips(days in -1_000_000i64..3_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        /// The window contains `now`, starts at local midnight on the right weekday or month
        /// day, its successor starts where it ends, and indices are consecutive.
        #[test]
        fn windows_tile_the_timeline(
            now in 0u64..super::super::MAX_NOW_MS,
            offset in -MAX_OFFSET_SECONDS..=MAX_OFFSET_SECONDS,
            period in period(),
        ) {
            let w = calendar_window(period, offset, now);
            prop_assert!(w.start_ms <= now as i64 && (now as i64) < w.end_ms);
            let local_start = w.start_ms + i64::from(offset) * 1000;
            prop_assert_eq!(local_start.rem_euclid(MS_PER_DAY), 0);
            let first_day = local_start.div_euclid(MS_PER_DAY);
            let days = (w.end_ms - w.start_ms) / MS_PER_DAY;
            match period {
                Period::Day => prop_assert_eq!(days, 1),
                // Day 4 (1970-01-05) was a Monday.
                Period::Week => {
                    prop_assert_eq!(days, 7);
                    prop_assert_eq!((first_day - 4).rem_euclid(7), 0);
                }
                Period::Month => {
                    prop_assert!((28..=31).contains(&days));
                    prop_assert_eq!(civil_from_days(first_day).2, 1);
                }
            }
            if let Ok(end) = u64::try_from(w.end_ms) {
                let next = calendar_window(period, offset, end);
                prop_assert_eq!(next.start_ms, w.end_ms);
                prop_assert_eq!(next.index, w.index + 1);
            }
        }
    }
}
