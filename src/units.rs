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

/// A size for people: `1.5 MiB` (powers of 1024), the same everywhere backupd shows one.
pub fn human_bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

/// A transfer rate (`"20MiB/s"`, `"500 KB/s"`, `"1.5GiB/s"`) in bytes per second: decimal
/// (KB, MB, GB = powers of 1000) and binary (KiB, MiB, GiB = powers of 1024) units, `B/s`
/// for bytes. Bits are refused rather than guessed (`"100Mbit/s"` says how to write it).
pub fn parse_rate(s: &str) -> Result<u64, Invalid> {
    let hint = || {
        Invalid(format!(
            "{s:?} is not a rate like \"20MiB/s\" or \"500KB/s\" (bytes per second; KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024)"
        ))
    };
    let t = s.trim();
    let per_sec = t.strip_suffix("/s").ok_or_else(hint)?.trim();
    let split = per_sec
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(hint)?;
    let (number, unit) = per_sec.split_at(split);
    let number: f64 = number.parse().map_err(|_| hint())?;
    let factor: f64 = match unit.trim() {
        "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        u if u.to_ascii_lowercase().contains("bit") || u.ends_with('b') => {
            return Err(Invalid(format!(
                "{s:?} is in bits: write bytes per second, e.g. \"12.5MB/s\" for 100 Mbit/s"
            )));
        }
        _ => return Err(hint()),
    };
    let rate = number * factor;
    // NaN cannot come out of the digit scan above; this also refuses it.
    if rate.is_nan() || rate < 1024.0 {
        return Err(Invalid(format!(
            "{s:?} is below 1KiB/s: too slow to upload anything (remove the key for no limit)"
        )));
    }
    Ok(rate as u64)
}

/// An optional rate key (`upload_limit = "20MiB/s"`), in bytes per second.
pub mod rate {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let s: Option<String> = serde::Deserialize::deserialize(d)?;
        s.map(|s| parse_rate(&s).map_err(de::Error::custom))
            .transpose()
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
mod rate_tests {
    use super::parse_rate;

    #[test]
    fn rates_take_decimal_and_binary_units_and_refuse_bits() {
        assert_eq!(parse_rate("20MiB/s").unwrap(), 20 << 20);
        assert_eq!(parse_rate("500 KB/s").unwrap(), 500_000);
        assert_eq!(parse_rate("1.5GiB/s").unwrap(), 3 << 29);
        assert_eq!(parse_rate("2048B/s").unwrap(), 2048);
        assert!(parse_rate("100Mbit/s").unwrap_err().0.contains("bits"));
        assert!(parse_rate("100Mb/s").unwrap_err().0.contains("bits"));
        assert!(parse_rate("20MiB").unwrap_err().0.contains("like"));
        assert!(parse_rate("fast/s").is_err());
        assert!(parse_rate("10B/s").unwrap_err().0.contains("too slow"));
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
