//! ISO 3166-1 alpha-2 country codes, stored in 10 bits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A two-letter country code (`"CN"`, `"US"`, ...), always two ASCII
/// uppercase letters.
///
/// Codes are not checked against the ISO list here: data sources also use
/// registry codes such as `EU` and `AP`, and a firewall must report what its
/// sources say. Rules are checked ([`Country::is_known`]). Placeholders that mean "unknown" (`??`, `--`, `ZZ`) are not
/// countries: [`Country::parse_source_code`] turns them into `None`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Country([u8; 2]);

/// The ISO 3166-1 alpha-2 codes officially assigned (249, sorted),
/// space-separated.
const ASSIGNED: &str = "\
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE \
    BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD \
    CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM \
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF \
    GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU \
    ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN \
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME \
    MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA \
    NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM \
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI \
    SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK \
    TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI \
    VN VU WF WS YE YT ZA ZM ZW";

/// Codes a rule may name besides [`ASSIGNED`]: Kosovo's user-assigned `XK`
/// (used by the registries and the geolocation sources) and the registry
/// blocks `EU` and `AP` that some sources give instead of a country.
const ALSO_IN_RULES: [&str; 3] = ["XK", "EU", "AP"];

/// Codes people write for a country whose ISO code differs.
const MISTAKEN: [(&str, &str); 3] = [
    ("UK", "GB (the United Kingdom)"),
    ("EL", "GR (Greece)"),
    ("KS", "XK (Kosovo)"),
];

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

    /// Whether a rule may name this code: an ISO 3166-1 code in use, or
    /// one of the few registry codes the data sources give (`XK`, `EU`,
    /// `AP`).
    pub fn is_known(self) -> bool {
        let s = self.as_str();
        ALSO_IN_RULES.contains(&s) || ASSIGNED.as_bytes().chunks(3).any(|c| c[..2] == self.0)
    }

    /// For a code people write in place of another (`UK` for `GB`), the
    /// right one, as a hint.
    pub fn meant(self) -> Option<&'static str> {
        MISTAKEN
            .iter()
            .find(|(m, _)| *m == self.as_str())
            .map(|(_, h)| *h)
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
    fn the_assigned_list_is_whole_and_the_usual_mistakes_have_hints() {
        let n = (b'A'..=b'Z')
            .flat_map(|a| (b'A'..=b'Z').map(move |b| [a, b]))
            .filter_map(Country::from_bytes)
            .filter(|c| c.is_known())
            .count();
        assert_eq!(n, 249 + ALSO_IN_RULES.len());
        for ok in ["CN", "HK", "MO", "TW", "GB", "US", "XK", "AX", "ZW"] {
            assert!(ok.parse::<Country>().expect(ok).is_known(), "{ok}");
        }
        for bad in ["UK", "XX", "EL", "AA", "ZZ"] {
            assert!(!bad.parse::<Country>().expect(bad).is_known(), "{bad}");
        }
        assert_eq!(
            "uk".parse::<Country>().map(Country::meant),
            Ok(Some("GB (the United Kingdom)"))
        );
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
