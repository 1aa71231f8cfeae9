//! Durations as the policy writes them: a string with a unit (`"90s"`, `"15m"`, `"26h"`,
//! `"2d"`) everywhere; keys ending in `_secs` also take a plain number of **seconds**, as
//! older policies wrote them. A leaf: the policy and the components that own settings
//! (targets, notifications) use it, and it uses none of them.

use crate::error::Invalid;
use std::fmt;
use std::time::Duration;

use serde::Deserializer;
use serde::de::{self, Visitor};

fn parse(s: &str) -> Result<Duration, Invalid> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        Invalid(format!(
            "{s:?} is not a duration like \"90s\", \"15m\" or \"26h\": {e}"
        ))
    })
}

/// A duration key (`"24h"`).
pub mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        parse(&s).map_err(de::Error::custom)
    }

    /// The same for an optional key.
    pub mod option {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            #[derive(serde::Deserialize)]
            struct Wrap(#[serde(deserialize_with = "super::deserialize")] Duration);
            Ok(<Option<Wrap> as serde::Deserialize>::deserialize(d)?.map(|w| w.0))
        }
    }
}

/// A `*_secs` key: whole seconds, written as a number or as a duration string.
pub mod secs {
    use super::*;

    struct Secs;

    impl Visitor<'_> for Secs {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration like \"90s\" or \"15m\", or a number of seconds")
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
            Ok(n)
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
            u64::try_from(n)
                .map_err(|_| E::custom(format!("{n} is negative: give a duration like \"90s\"")))
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<u64, E> {
            let d = parse(s).map_err(E::custom)?;
            if d.subsec_nanos() != 0 {
                return Err(E::custom(format!("{s:?}: this key takes whole seconds")));
            }
            Ok(d.as_secs())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(Secs)
    }

    /// The same for an optional key.
    pub mod option {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
            #[derive(serde::Deserialize)]
            struct Wrap(#[serde(deserialize_with = "super::deserialize")] u64);
            Ok(<Option<Wrap> as serde::Deserialize>::deserialize(d)?.map(|w| w.0))
        }
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug)]
    struct T {
        #[serde(deserialize_with = "super::secs::deserialize")]
        timeout_secs: u64,
    }

    fn parse(toml_text: &str) -> Result<u64, String> {
        toml::from_str::<T>(toml_text)
            .map(|t| t.timeout_secs)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn seconds_keys_take_numbers_and_durations() {
        assert_eq!(parse("timeout_secs = 300").unwrap(), 300);
        assert_eq!(parse("timeout_secs = \"5m\"").unwrap(), 300);
        assert_eq!(parse("timeout_secs = \"2h 30m\"").unwrap(), 9000);
        assert_eq!(parse("timeout_secs = \"1d\"").unwrap(), 86400);
        assert!(parse("timeout_secs = -5").unwrap_err().contains("negative"));
        assert!(
            parse("timeout_secs = \"1500ms\"")
                .unwrap_err()
                .contains("whole seconds")
        );
        assert!(
            parse("timeout_secs = \"soon\"")
                .unwrap_err()
                .contains("not a duration")
        );
    }
}
