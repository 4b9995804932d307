//! ISO 3166-1 alpha-2 country codes, stored in 10 bits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A two-letter country code (`"CN"`, `"US"`, ...), always two ASCII
/// uppercase letters.
///
/// Codes are not checked against the ISO list: data sources also use
/// registry codes such as `EU` and `AP`, and a firewall must report what its
/// sources say. Placeholders that mean "unknown" (`??`, `--`, `ZZ`) are not
/// countries: [`Country::parse_source_code`] turns them into `None`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Country([u8; 2]);

/// Why a text is not a country code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a two-letter country code (expected two letters A-Z, e.g. CN)")]
pub struct CountryError(pub String);

impl Country {
    /// Builds a code from two bytes; `None` unless both are `A`..=`Z`.
    pub const fn from_bytes(b: [u8; 2]) -> Option<Self> {
        if b[0].is_ascii_uppercase() && b[1].is_ascii_uppercase() {
            Some(Self(b))
        } else {
            None
        }
    }

    /// The code as text, e.g. `"CN"`.
    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII uppercase by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// Parses a code as written in a data source: trims spaces, accepts
    /// lowercase, and maps the "unknown" placeholders `??`, `--`, `ZZ` and
    /// the empty string to `Ok(None)`.
    pub fn parse_source_code(s: &str) -> Result<Option<Self>, CountryError> {
        let t = s.trim();
        match t {
            "" | "??" | "--" | "ZZ" | "zz" => Ok(None),
            _ => t.parse().map(Some),
        }
    }

    /// The 10-bit packed form used in the world database: 0 is "none",
    /// otherwise `1 + 26 * (first - 'A') + (second - 'A')` (at most 676).
    pub const fn packed(self) -> u16 {
        1 + 26 * (self.0[0] - b'A') as u16 + (self.0[1] - b'A') as u16
    }

    /// Inverse of [`Country::packed`]: `None` for 0 and for values over 676.
    pub const fn from_packed(v: u16) -> Option<Self> {
        if v == 0 || v > 676 {
            return None;
        }
        let i = v - 1;
        Some(Self([b'A' + (i / 26) as u8, b'A' + (i % 26) as u8]))
    }
}

impl FromStr for Country {
    type Err = CountryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() == 2
            && let Some(c) =
                Self::from_bytes([b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()])
        {
            return Ok(c);
        }
        Err(CountryError(s.to_owned()))
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Country({})", self.as_str())
    }
}

impl Serialize for Country {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Country {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_every_code() {
        for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                let c = Country::from_bytes([a, b]).expect("letters");
                let p = c.packed();
                assert!((1..=676).contains(&p));
                assert_eq!(Country::from_packed(p), Some(c));
            }
        }
        assert_eq!(Country::from_packed(0), None);
        assert_eq!(Country::from_packed(677), None);
        assert_eq!(Country::from_packed(1023), None);
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            "cn".parse::<Country>().map(|c| c.to_string()),
            Ok("CN".into())
        );
        assert!("C".parse::<Country>().is_err());
        assert!("C1".parse::<Country>().is_err());
        assert!("CHN".parse::<Country>().is_err());
        assert!("ÉU".parse::<Country>().is_err());
        assert_eq!(Country::parse_source_code("??"), Ok(None));
        assert_eq!(Country::parse_source_code(" ZZ "), Ok(None));
        assert_eq!(Country::parse_source_code(""), Ok(None));
        assert!(Country::parse_source_code("X").is_err());
    }

    #[test]
    fn serde_is_a_plain_string() {
        let c: Country = "HK".parse().expect("valid");
        assert_eq!(serde_json::to_string(&c).expect("serialises"), "\"HK\"");
        let back: Country = serde_json::from_str("\"hk\"").expect("parses");
        assert_eq!(back, c);
        assert!(serde_json::from_str::<Country>("\"H\"").is_err());
    }
}
