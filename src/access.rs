//! When access starts and ends for dates without a time zone.
//!
//! Property software records move-in and move-out as calendar dates. A date means the whole
//! day where the building is, so "from the move-in date" starts at local midnight of that
//! date in the property's time zone, and "until the move-out date" ends at local midnight
//! of the day after. Pure code: no clock, no I/O.

use std::time::Duration;

use jiff::civil::Date;
use jiff::tz::TimeZone;

/// A property's IANA time zone (`America/New_York`), checked when configured.
#[derive(Debug, Clone)]
pub struct PropertyZone {
    name: String,
    zone: TimeZone,
}

/// A time zone name the built-in database does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown time zone `{0}` (an IANA name such as America/New_York, or UTC)")]
pub struct UnknownTimeZone(pub String);

impl PropertyZone {
    /// The zone named `name` (IANA, e.g. `Europe/Warsaw`; `UTC`).
    pub fn new(name: &str) -> Result<Self, UnknownTimeZone> {
        let zone = TimeZone::get(name).map_err(|_| UnknownTimeZone(name.to_owned()))?;
        Ok(Self {
            name: name.to_owned(),
            zone,
        })
    }

    /// UTC.
    pub fn utc() -> Self {
        Self {
            name: "UTC".to_owned(),
            zone: TimeZone::UTC,
        }
    }

    /// The zone's name as configured.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first instant of `date` in this zone (ms since the epoch): local midnight, or the
    /// first valid time of the day where a transition skips midnight.
    pub fn start_of(&self, date: Date) -> Option<i64> {
        let zoned = date.to_zoned_datetime(self.zone.clone()).ok()?;
        Some(zoned.start_of_day().ok()?.timestamp().as_millisecond())
    }

    /// The first instant after `date` in this zone (ms): the start of the next day.
    pub fn end_of(&self, date: Date) -> Option<i64> {
        self.start_of(date.tomorrow().ok()?)
    }
}

/// How far access may be moved ahead of a start or past an end, per source or property.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Margins {
    /// Access starts this long before the move-in (or lease start) date.
    pub grant_lead: Duration,
    /// Access ends this long after the move-out (or lease end) date.
    pub revoke_grace: Duration,
}

impl Margins {
    /// `start` (ms) moved earlier by the lead.
    pub fn lead(&self, start: i64) -> i64 {
        start.saturating_sub(millis(self.grant_lead))
    }

    /// `end` (ms) moved later by the grace.
    pub fn grace(&self, end: i64) -> i64 {
        end.saturating_add(millis(self.revoke_grace))
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn a_date_is_the_whole_local_day() {
        let new_york = PropertyZone::new("America/New_York").unwrap();
        // 2026-12-01 in New York is 05:00 UTC (EST, UTC−5) to 05:00 UTC the next day.
        let start = new_york.start_of(date(2026, 12, 1)).unwrap();
        let utc_midnight = PropertyZone::utc().start_of(date(2026, 12, 1)).unwrap();
        assert_eq!(start - utc_midnight, 5 * HOUR);
        assert_eq!(
            new_york.end_of(date(2026, 12, 1)).unwrap() - start,
            24 * HOUR
        );
    }

    #[test]
    fn days_around_daylight_saving_changes_keep_their_length() {
        let warsaw = PropertyZone::new("Europe/Warsaw").unwrap();
        // Clocks go forward on 2026-03-29: that day has 23 hours; back on 2026-10-25: 25.
        let spring = date(2026, 3, 29);
        let autumn = date(2026, 10, 25);
        assert_eq!(
            warsaw.end_of(spring).unwrap() - warsaw.start_of(spring).unwrap(),
            23 * HOUR
        );
        assert_eq!(
            warsaw.end_of(autumn).unwrap() - warsaw.start_of(autumn).unwrap(),
            25 * HOUR
        );
    }

    #[test]
    fn unknown_zones_are_named() {
        let err = PropertyZone::new("Mars/Olympus_Mons").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown time zone `Mars/Olympus_Mons` (an IANA name such as America/New_York, or UTC)"
        );
        assert_eq!(PropertyZone::new("UTC").unwrap().name(), "UTC");
    }

    #[test]
    fn margins_move_starts_earlier_and_ends_later() {
        let margins = Margins {
            grant_lead: Duration::from_secs(3600),
            revoke_grace: Duration::from_secs(7200),
        };
        assert_eq!(margins.lead(10 * HOUR), 9 * HOUR);
        assert_eq!(margins.grace(10 * HOUR), 12 * HOUR);
        assert_eq!(Margins::default().lead(5), 5);
    }
}
