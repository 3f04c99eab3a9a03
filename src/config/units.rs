//! How numbers are written: durations as whole milliseconds, seconds or days under keys
//! that name the unit (`read_timeout_ms = 5000`), held as [`Duration`]s; and counts that
//! must not be 0, held as [`NonZeroUsize`]s.
//!
//! The keys keep their units because they are a public interface; the fields use them
//! through `#[serde(rename = "read_timeout_ms", with = "PositiveMillis")]`. serde_with does
//! the conversions; [`Positive`], [`Days`] and [`NonZeroCount`] are what it lacks. A zero is
//! refused while loading with the same words for counts and durations, "must be greater than
//! 0", under the key's name.

use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize as _, Deserializer, Serializer};
use serde_with::{As, DeserializeAs, DurationMilliSeconds, DurationSeconds, SerializeAs};

/// Whole milliseconds.
pub(super) type Millis = As<DurationMilliSeconds<u64>>;

/// Whole seconds.
pub(super) type Secs = As<DurationSeconds<u64>>;

/// Whole milliseconds, refused when 0.
pub(super) type PositiveMillis = As<Positive<DurationMilliSeconds<u64>>>;

/// Whole seconds, refused when 0.
pub(super) type PositiveSecs = As<Positive<DurationSeconds<u64>>>;

/// Whole days.
pub(super) type WholeDays = As<Days>;

/// A count, refused when 0.
pub(super) type Count = As<NonZeroCount>;

/// A duration written for people: `"0s"`, `"15m"`, `"2h 30m"`, `"1d"`.
pub(super) type Human = As<HumanDuration>;

/// An optional duration written for people.
pub(super) type OptionalHuman = As<Option<HumanDuration>>;

/// An optional count, refused when 0.
pub(super) type OptionalCount = As<Option<NonZeroCount>>;

/// What a zero count or duration is told.
const NOT_ZERO: &str = "must be greater than 0";

/// A duration written as `T` that must not be 0: a zero timeout or interval is always a
/// mistake, so it is refused while loading, under the key's name.
pub(super) struct Positive<T>(PhantomData<T>);

impl<'de, T: DeserializeAs<'de, Duration>> DeserializeAs<'de, Duration> for Positive<T> {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let value = T::deserialize_as(deserializer)?;
        if value.is_zero() {
            return Err(D::Error::custom(NOT_ZERO));
        }
        Ok(value)
    }
}

impl<T: SerializeAs<Duration>> SerializeAs<Duration> for Positive<T> {
    fn serialize_as<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        T::serialize_as(value, serializer)
    }
}

/// Whole days of 86,400 seconds; a count too large for a [`Duration`] saturates.
pub(super) struct Days;

const SECS_PER_DAY: u64 = 86_400;

impl<'de> DeserializeAs<'de, Duration> for Days {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let days = u64::deserialize(deserializer)?;
        Ok(Duration::from_secs(days.saturating_mul(SECS_PER_DAY)))
    }
}

impl SerializeAs<Duration> for Days {
    fn serialize_as<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_secs() / SECS_PER_DAY)
    }
}

/// A count that must not be 0. serde's own `NonZeroUsize` says "expected a nonzero usize";
/// this says what the durations say.
pub(super) struct NonZeroCount;

impl<'de> DeserializeAs<'de, NonZeroUsize> for NonZeroCount {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<NonZeroUsize, D::Error> {
        NonZeroUsize::new(usize::deserialize(deserializer)?)
            .ok_or_else(|| D::Error::custom(NOT_ZERO))
    }
}

impl SerializeAs<NonZeroUsize> for NonZeroCount {
    fn serialize_as<S: Serializer>(value: &NonZeroUsize, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.get() as u64)
    }
}

/// A duration as humantime writes and reads it (`15m`, `1d 2h`); used where the keys name no
/// unit (`grant_lead = "15m"`).
pub(super) struct HumanDuration;

impl<'de> DeserializeAs<'de, Duration> for HumanDuration {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            D::Error::custom(format!(
                "`{text}` is not a duration ({e}; e.g. \"0s\", \"15m\", \"1d\")"
            ))
        })
    }
}

impl SerializeAs<Duration> for HumanDuration {
    fn serialize_as<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct Durations {
        #[serde(rename = "a_ms", with = "Millis")]
        a: Duration,
        #[serde(rename = "b_secs", with = "PositiveSecs")]
        b: Duration,
        #[serde(rename = "c_days", with = "WholeDays")]
        c: Duration,
    }

    #[test]
    fn durations_keep_their_units_and_round_trip() {
        let parsed: Durations = toml::from_str("a_ms = 0\nb_secs = 3\nc_days = 2\n").unwrap();
        assert_eq!(parsed.a, Duration::ZERO);
        assert_eq!(parsed.b, Duration::from_secs(3));
        assert_eq!(parsed.c, Duration::from_secs(2 * 86_400));
        assert_eq!(
            toml::to_string(&parsed).unwrap(),
            "a_ms = 0\nb_secs = 3\nc_days = 2\n"
        );
    }

    #[test]
    fn human_durations_read_and_write_as_people_write_them() {
        #[derive(Debug, Deserialize, Serialize)]
        struct Margins {
            #[serde(with = "Human")]
            lead: Duration,
        }
        let parsed: Margins = toml::from_str("lead = \"1h 30m\"").unwrap();
        assert_eq!(parsed.lead, Duration::from_secs(5400));
        assert_eq!(toml::to_string(&parsed).unwrap(), "lead = \"1h 30m\"\n");
        let zero: Margins = toml::from_str("lead = \"0s\"").unwrap();
        assert_eq!(zero.lead, Duration::ZERO);
        let err = toml::from_str::<Margins>("lead = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`soon` is not a duration"), "{err}");
    }

    #[test]
    fn zero_negative_and_text_are_refused() {
        for (text, message) in [
            (
                "a_ms = 1\nb_secs = 0\nc_days = 1\n",
                "must be greater than 0",
            ),
            ("a_ms = -1\nb_secs = 1\nc_days = 1\n", "-1"),
            ("a_ms = \"1s\"\nb_secs = 1\nc_days = 1\n", "string"),
        ] {
            let err = toml::from_str::<Durations>(text).unwrap_err().to_string();
            assert!(err.contains(message), "{text}: {err}");
        }
    }
}
