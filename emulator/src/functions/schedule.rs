//! Timer schedules as the Functions host reads them: six-field NCRONTAB expressions
//! (`{second} {minute} {hour} {day} {month} {day-of-week}`), evaluated in UTC.

use time::{Duration, OffsetDateTime};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    sub_minute: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Parses one field into a bit set of allowed values in `min..=max`.
fn field(text: &str, min: u64, max: u64, names: &[&str], name_base: u64) -> Result<u64, String> {
    let value = |v: &str| -> Result<u64, String> {
        if let Some(index) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            return Ok(index as u64 + name_base);
        }
        v.parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| format!("{v:?} is not a value between {min} and {max}"))
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (
                range,
                step.parse::<u64>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("bad step in {part:?}"))?,
            ),
            None => (part, 1),
        };
        let (low, high) = match range {
            "*" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if part.contains('/') => (value(r)?, max),
                None => {
                    let v = value(r)?;
                    (v, v)
                }
            },
        };
        if low > high {
            return Err(format!("range {range:?} runs backwards"));
        }
        let mut v = low;
        while v <= high {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Schedule {
    /// Parses a six-field NCRONTAB expression.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [s, m, h, d, mo, w] = fields.as_slice() else {
            return Err(format!(
                "schedule {text:?} needs six fields: second minute hour day month day-of-week"
            ));
        };
        let mut weekdays = field(w, 0, 7, &WEEKDAYS, 0)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        let seconds = field(s, 0, 59, &[], 0)?;
        // The host's rule (TimerSchedule.ShouldDisableScheduleMonitor): only `X * * * * *`
        // can fire more than once a minute, and it does when X allows more than one second.
        let sub_minute = [m, h, d, mo, w].iter().all(|f| **f == "*") && seconds.count_ones() > 1;
        Ok(Self {
            sub_minute,
            seconds,
            minutes: field(m, 0, 59, &[], 0)?,
            hours: field(h, 0, 23, &[], 0)?,
            days: field(d, 1, 31, &[], 0)?,
            months: field(mo, 1, 12, &MONTHS, 1)?,
            weekdays,
        })
    }

    /// Whether it fires more than once a minute; the host then keeps no schedule status.
    pub fn fires_more_than_once_a_minute(&self) -> bool {
        self.sub_minute
    }

    /// The first time strictly after `after` that the schedule allows (None if it never does
    /// within eight years, e.g. 31 February).
    pub fn next_after(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        let has = |set: u64, v: u64| set & (1 << v) != 0;
        let mut t = after.replace_nanosecond(0).ok()? + Duration::SECOND;
        let limit = after + Duration::days(8 * 366);
        while t < limit {
            if !has(self.months, u64::from(u8::from(t.month()))) {
                let (year, month) = match t.month() {
                    time::Month::December => (t.year() + 1, time::Month::January),
                    m => (t.year(), m.next()),
                };
                t = time::Date::from_calendar_date(year, month, 1)
                    .ok()?
                    .midnight()
                    .assume_utc();
                continue;
            }
            let weekday = u64::from(t.weekday().number_days_from_sunday());
            if !has(self.days, u64::from(t.day())) || !has(self.weekdays, weekday) {
                t = (t.date().next_day()?).midnight().assume_utc();
                continue;
            }
            if !has(self.hours, u64::from(t.hour())) {
                t = t.replace_minute(0).ok()?.replace_second(0).ok()? + Duration::HOUR;
                continue;
            }
            if !has(self.minutes, u64::from(t.minute())) {
                t = t.replace_second(0).ok()? + Duration::MINUTE;
                continue;
            }
            if !has(self.seconds, u64::from(t.second())) {
                t += Duration::SECOND;
                continue;
            }
            return Some(t);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn schedules_find_their_next_occurrence() {
        let every_five_minutes = Schedule::parse("0 */5 * * * *").unwrap();
        assert_eq!(
            every_five_minutes.next_after(datetime!(2026-11-26 13:07:12 UTC)),
            Some(datetime!(2026-11-26 13:10:00 UTC))
        );
        let weekday_mornings = Schedule::parse("30 0 9 * * MON-FRI").unwrap();
        // 2026-11-28 is a Saturday: the next run is Monday the 30th.
        assert_eq!(
            weekday_mornings.next_after(datetime!(2026-11-27 10:00:00 UTC)),
            Some(datetime!(2026-11-30 09:00:30 UTC))
        );
        let every_second = Schedule::parse("* * * * * *").unwrap();
        assert_eq!(
            every_second.next_after(datetime!(2026-12-31 23:59:59 UTC)),
            Some(datetime!(2027-01-01 00:00:00 UTC))
        );
        assert_eq!(
            Schedule::parse("0 0 0 31 2 *")
                .unwrap()
                .next_after(datetime!(2026-01-01 00:00:00 UTC)),
            None
        );
    }

    #[test]
    fn malformed_schedules_say_why() {
        for bad in [
            "* * * * *",
            "61 * * * * *",
            "*/0 * * * * *",
            "5-1 * * * * *",
            "a b c d e f",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }
}
