//! Fire times of a cron pattern in a timezone (croner and chrono-tz), as `SystemTime`s.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use super::ScheduleError;

/// A parsed five-field pattern and its timezone.
#[derive(Debug, Clone)]
pub(crate) struct CronSchedule {
    cron: Cron,
    tz: Tz,
}

impl CronSchedule {
    /// Parses `pattern` (minute hour day-of-month month day-of-week; no seconds, no years)
    /// read in `timezone`.
    pub(crate) fn parse(pattern: &str, timezone: &str) -> Result<CronSchedule, ScheduleError> {
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| ScheduleError::InvalidCron {
                pattern: pattern.to_owned(),
                reason: e.to_string().trim_end_matches('.').to_owned(),
            })?;
        let tz = timezone
            .parse::<Tz>()
            .map_err(|_| ScheduleError::UnknownTimezone {
                timezone: timezone.to_owned(),
            })?;
        Ok(CronSchedule { cron, tz })
    }

    /// `at` in the schedule's timezone, to the whole second below: croner keeps the
    /// fraction of the time it starts from, and fire times are whole minutes.
    fn local(&self, at: SystemTime) -> DateTime<Tz> {
        let whole = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(d.as_secs()))
            .unwrap_or(at);
        DateTime::<Utc>::from(whole).with_timezone(&self.tz)
    }

    /// The first fire time strictly after `after`; `None` when the pattern never matches
    /// again (February 30th).
    pub(crate) fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        self.cron
            .find_next_occurrence(&self.local(after), false)
            .ok()
            .map(SystemTime::from)
    }

    /// The latest fire time at or before `at`.
    pub(crate) fn latest_until(&self, at: SystemTime) -> Option<SystemTime> {
        self.cron
            .find_previous_occurrence(&self.local(at), true)
            .ok()
            .map(SystemTime::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    fn text(at: SystemTime) -> String {
        humantime::format_rfc3339(at).to_string()
    }

    /// The next `n` fire times after `from`, in UTC.
    fn fires(pattern: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let schedule = CronSchedule::parse(pattern, tz).unwrap();
        let mut at = utc(from);
        (0..n)
            .map(|_| {
                at = schedule.next_after(at).unwrap();
                text(at)
            })
            .collect()
    }

    #[test]
    fn every_minute_and_every_six_hours_in_utc() {
        assert_eq!(
            fires("* * * * *", "UTC", "2026-12-01T10:00:30Z", 3),
            [
                "2026-12-01T10:01:00Z",
                "2026-12-01T10:02:00Z",
                "2026-12-01T10:03:00Z"
            ]
        );
        assert_eq!(
            fires("0 */6 * * *", "UTC", "2026-12-01T10:00:00Z", 3),
            [
                "2026-12-01T12:00:00Z",
                "2026-12-01T18:00:00Z",
                "2026-12-02T00:00:00Z"
            ]
        );
        // Fire times are whole minutes whatever the fraction of the start.
        assert_eq!(
            fires("* * * * *", "UTC", "2026-12-01T10:00:00.618045105Z", 2),
            ["2026-12-01T10:01:00Z", "2026-12-01T10:02:00Z"]
        );
        // Strictly after: a fire time is not its own successor.
        assert_eq!(
            fires("0 12 * * *", "UTC", "2026-12-01T12:00:00Z", 1),
            ["2026-12-02T12:00:00Z"]
        );
    }

    #[test]
    fn local_times_follow_the_timezone_across_daylight_saving_changes() {
        // 09:00 in Paris is 08:00 UTC in winter (CET) and 07:00 UTC in summer (CEST); the
        // change is on 2026-03-29.
        assert_eq!(
            fires("0 9 * * *", "Europe/Paris", "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T08:00:00Z",
                "2026-03-29T07:00:00Z",
                "2026-03-30T07:00:00Z"
            ]
        );
        // New York changes on 2026-11-01: 09:00 EDT is 13:00 UTC, 09:00 EST 14:00 UTC.
        assert_eq!(
            fires("0 9 * * *", "America/New_York", "2026-10-31T00:00:00Z", 2),
            ["2026-10-31T13:00:00Z", "2026-11-01T14:00:00Z"]
        );
    }

    #[test]
    fn a_skipped_local_time_fires_after_the_gap_and_a_repeated_one_fires_once() {
        // 2026-03-29 in Paris: 02:00-03:00 does not exist. A 02:30 job fires at 03:00 CEST
        // (01:00 UTC) that day, and at 02:30 on the days around it.
        assert_eq!(
            fires("30 2 * * *", "Europe/Paris", "2026-03-28T00:00:00Z", 3),
            [
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z"
            ]
        );
        // 2026-10-25 in Paris: 02:00-03:00 happens twice (CEST, then CET). A 02:30 job
        // fires once, at the first 02:30 (00:30 UTC), then the next day.
        assert_eq!(
            fires("30 2 * * *", "Europe/Paris", "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
    }

    #[test]
    fn the_latest_fire_time_is_found_for_catch_up() {
        let schedule = CronSchedule::parse("* * * * *", "UTC").unwrap();
        assert_eq!(
            text(schedule.latest_until(utc("2026-12-01T10:10:30Z")).unwrap()),
            "2026-12-01T10:10:00Z"
        );
        assert_eq!(
            text(schedule.latest_until(utc("2026-12-01T10:10:00Z")).unwrap()),
            "2026-12-01T10:10:00Z",
            "inclusive"
        );
    }

    #[test]
    fn bad_patterns_and_timezones_are_clear_errors() {
        let error = CronSchedule::parse("61 * * * *", "UTC").unwrap_err();
        assert!(
            matches!(error, ScheduleError::InvalidCron { .. }),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .starts_with("invalid cron pattern \"61 * * * *\": "),
            "{error}"
        );
        // Six fields (seconds) are not five.
        assert!(CronSchedule::parse("0 0 * * * *", "UTC").is_err());
        let error = CronSchedule::parse("0 * * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown timezone \"Mars/Olympus\": use an IANA name such as \"UTC\", \
             \"Europe/Paris\" or \"America/New_York\""
        );
    }
}
