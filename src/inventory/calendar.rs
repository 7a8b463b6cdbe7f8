//! systemd calendar events (`OnCalendar=`, `systemd.time(7)`): checked here so a
//! bad backup schedule is an inventory error, not a timer that never fires, and
//! matched minute by minute to know the longest gap between two backups (which
//! bounds how old the newest backup may be before `status` calls it stale).
//!
//! The subset: the shorthands (`daily`, `weekly`, ...) and
//! `[WEEKDAYS] [YEAR-MONTH-DAY] HOUR:MINUTE[:SECOND]` where each field is `*`, a
//! value, a list (`1,15`), a range (`8..18`, `Mon..Fri`) or a repetition (`*/15`,
//! `0/6`). Time zones and `~` (days from the month's end) are refused.

use std::collections::BTreeSet;

/// A parsed calendar event: the values each field may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    /// 0 = Monday .. 6 = Sunday.
    weekdays: BTreeSet<u32>,
    years: Option<BTreeSet<i64>>,
    months: BTreeSet<u32>,
    days: BTreeSet<u32>,
    hours: BTreeSet<u32>,
    minutes: BTreeSet<u32>,
}

const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

fn weekday(s: &str) -> Option<u32> {
    let l = s.to_ascii_lowercase();
    DAYS.iter()
        .position(|d| l.len() >= 3 && (d.starts_with(&l) && (l.len() == 3 || *d == l)))
        .map(|i| i as u32)
}

fn weekdays(s: &str) -> Result<BTreeSet<u32>, String> {
    let mut out = BTreeSet::new();
    for part in s.split(',') {
        let bad = || format!("`{part}` is not a weekday (Mon, Tue, ... or a range Mon..Fri)");
        match part.split_once("..").or_else(|| part.split_once('-')) {
            Some((a, b)) => {
                let (a, b) = (weekday(a).ok_or_else(bad)?, weekday(b).ok_or_else(bad)?);
                if a > b {
                    return Err(format!("`{part}`: a range goes from Monday towards Sunday"));
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(weekday(part).ok_or_else(bad)?);
            }
        }
    }
    Ok(out)
}

/// One numeric field: `*`, `N`, `A..B`, `A/S`, `*/S`, or a list of those.
fn field(s: &str, min: u32, max: u32, what: &str) -> Result<BTreeSet<u32>, String> {
    let num = |t: &str| -> Result<u32, String> {
        let n: u32 = t
            .parse()
            .map_err(|_| format!("`{t}` is not a number ({what})"))?;
        if n < min || n > max {
            return Err(format!("{what} {n} is out of range ({min} to {max})"));
        }
        Ok(n)
    };
    let mut out = BTreeSet::new();
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let st: u32 =
                    st.parse().ok().filter(|&x| x > 0).ok_or_else(|| {
                        format!("`{part}`: the repetition must be a positive number")
                    })?;
                (r, st)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once("..") {
            (num(a)?, num(b)?)
        } else if part.contains('/') {
            (num(range)?, max)
        } else {
            let n = num(range)?;
            (n, n)
        };
        if a > b {
            return Err(format!("`{part}`: the range is empty ({what})"));
        }
        out.extend((a..=b).step_by(step as usize));
    }
    Ok(out)
}

fn all(min: u32, max: u32) -> BTreeSet<u32> {
    (min..=max).collect()
}

impl Calendar {
    /// Parse an `OnCalendar=` value; the error says what is wrong in it.
    pub fn parse(spec: &str) -> Result<Calendar, String> {
        let s = spec.trim();
        let expanded = match s.to_ascii_lowercase().as_str() {
            "minutely" => "*-*-* *:*:00",
            "hourly" => "*-*-* *:00:00",
            "daily" => "*-*-* 00:00:00",
            "weekly" => "Mon *-*-* 00:00:00",
            "monthly" => "*-*-01 00:00:00",
            "yearly" | "annually" => "*-01-01 00:00:00",
            "quarterly" => "*-01,04,07,10-01 00:00:00",
            "semiannually" => "*-01,07-01 00:00:00",
            "" => return Err("the schedule is empty".into()),
            _ => s,
        };
        let mut c = Calendar {
            weekdays: all(0, 6),
            years: None,
            months: all(1, 12),
            days: all(1, 31),
            hours: all(0, 23),
            minutes: all(0, 59),
        };
        let mut parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts
            .first()
            .is_some_and(|p| p.chars().next().is_some_and(|ch| ch.is_ascii_alphabetic()))
        {
            c.weekdays = weekdays(parts.remove(0))?;
        }
        let mut time = None;
        match parts.as_slice() {
            [d, t] => {
                c.date(d)?;
                time = Some(*t);
            }
            [x] if x.contains(':') => time = Some(*x),
            [d] => c.date(d)?,
            [] => {}
            _ => {
                return Err(format!(
                    "`{expanded}`: expected [WEEKDAYS] [YEAR-MONTH-DAY] HOUR:MINUTE[:SECOND] \
                     (time zones are not supported: timers run in the host's time)"
                ));
            }
        }
        match time {
            Some(t) => {
                let f: Vec<&str> = t.split(':').collect();
                if !(2..=3).contains(&f.len()) {
                    return Err(format!("`{t}`: the time is HOUR:MINUTE[:SECOND]"));
                }
                c.hours = field(f[0], 0, 23, "hour")?;
                c.minutes = field(f[1], 0, 59, "minute")?;
                if let Some(sec) = f.get(2) {
                    field(sec.split('.').next().unwrap_or(sec), 0, 59, "second")?;
                }
            }
            // A date alone means midnight, as in systemd.
            None => {
                c.hours = BTreeSet::from([0]);
                c.minutes = BTreeSet::from([0]);
            }
        }
        if c.next_gap_probe().is_none() {
            return Err(format!("`{spec}` never happens"));
        }
        Ok(c)
    }

    fn date(&mut self, d: &str) -> Result<(), String> {
        if d.contains('~') {
            return Err(format!(
                "`{d}`: `~` (days from the month's end) is not supported"
            ));
        }
        let f: Vec<&str> = d.split('-').collect();
        let (y, m, day) = match f.as_slice() {
            [y, m, day] => (Some(*y), *m, *day),
            [m, day] => (None, *m, *day),
            _ => return Err(format!("`{d}`: the date is [YEAR-]MONTH-DAY")),
        };
        if let Some(y) = y.filter(|y| *y != "*") {
            self.years = Some(
                field(y, 1970, 2200, "year")?
                    .into_iter()
                    .map(i64::from)
                    .collect(),
            );
        }
        self.months = field(m, 1, 12, "month")?;
        self.days = field(day, 1, 31, "day")?;
        Ok(())
    }

    /// Whether the event may fire on this day (days since 1970-01-01).
    fn on_day(&self, day: i64) -> bool {
        let (y, m, d) = civil(day);
        // 1970-01-01 was a Thursday (3 counting from Monday = 0).
        let wd = ((day % 7 + 7 + 3) % 7) as u32;
        self.weekdays.contains(&wd)
            && self.years.as_ref().is_none_or(|ys| ys.contains(&y))
            && self.months.contains(&m)
            && self.days.contains(&d)
    }

    fn at_minute(&self, minute: u32) -> bool {
        self.hours.contains(&(minute / 60)) && self.minutes.contains(&(minute % 60))
    }

    /// Some day it fires on, from 2024 to 2200 (None: never).
    fn next_gap_probe(&self) -> Option<()> {
        (START..START + 177 * 366)
            .find(|&d| self.on_day(d))
            .map(|_| ())
    }
}

/// 2024-01-01, a Monday: the start of the span gaps are measured over.
const START: i64 = 19_723;

/// The longest time between two firings of any of `events` (taken together),
/// over two years, in minutes. None when none fires in that span.
pub fn longest_gap_minutes(events: &[Calendar]) -> Option<u64> {
    if events.is_empty() {
        return None;
    }
    let mut last: Option<i64> = None;
    let mut longest = 0i64;
    for day in START..START + 2 * 366 {
        let today: Vec<&Calendar> = events.iter().filter(|e| e.on_day(day)).collect();
        if today.is_empty() {
            continue;
        }
        for m in 0..24 * 60 {
            if today.iter().any(|e| e.at_minute(m)) {
                let now = day * 1440 + i64::from(m);
                if let Some(l) = last {
                    longest = longest.max(now - l);
                }
                last = Some(now);
            }
        }
    }
    last.map(|_| longest as u64).filter(|&g| g > 0)
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap_hours(specs: &[&str]) -> u64 {
        let cals: Vec<Calendar> = specs.iter().map(|s| Calendar::parse(s).unwrap()).collect();
        longest_gap_minutes(&cals).unwrap() / 60
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(START), (2024, 1, 1));
        assert_eq!(civil(START + 59), (2024, 2, 29));
    }

    #[test]
    fn accepts_what_systemd_accepts() {
        for ok in [
            "daily",
            "weekly",
            "Sun *-*-* 01:00:00",
            "Mon..Sat *-*-* 01:00",
            "Mon,Wed,Fri 02:30",
            "*-*-* 00/6:00:00",
            "*:0/15",
            "*-*-01 03:00",
            "2030-*-* 04:00:00",
            "Saturday 23:59:59",
        ] {
            Calendar::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn refuses_with_a_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("Sonday 01:00", "not a weekday"),
            ("*-*-* 25:00", "hour 25"),
            ("*-13-01 01:00", "month 13"),
            ("*-02-30 01:00", "never happens"),
            ("*-*-* 01:00 UTC", "time zones"),
            ("*-*~1 01:00", "`~`"),
            ("*:*/0", "repetition"),
            ("Fri..Mon 01:00", "Monday towards Sunday"),
        ] {
            let e = Calendar::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn gaps() {
        assert_eq!(gap_hours(&["daily"]), 24);
        assert_eq!(gap_hours(&["weekly"]), 7 * 24);
        assert_eq!(
            gap_hours(&["Sun *-*-* 01:00:00", "Mon..Sat *-*-* 01:00:00"]),
            24
        );
        assert_eq!(gap_hours(&["Mon..Fri 01:00"]), 72);
        assert_eq!(gap_hours(&["*-*-* 00/6:00:00"]), 6);
        assert_eq!(
            longest_gap_minutes(&[Calendar::parse("*:0/15").unwrap()]),
            Some(15)
        );
    }
}
