//! `RunId`: `run_` + a ULID, so ids sort by creation time. Thirty bytes held inline (no
//! allocation, cheap to clone), parsed and checked wherever an id comes from outside (CLI,
//! API, store).

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The id of one run: `run_` followed by 26 Crockford base-32 characters (a ULID).
///
/// ```
/// # use task_runtime::RunId;
/// let id: RunId = "run_01KB0000000000000000000000".parse().unwrap();
/// assert_eq!(id.as_str(), "run_01KB0000000000000000000000");
/// assert!("job_1".parse::<RunId>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId([u8; RUN_ID_LEN]);

/// `run_` and 26 ULID characters.
const RUN_ID_LEN: usize = 4 + ulid::ULID_LEN;

/// Why a string is not a run id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not a run id (expected `run_` followed by a 26-character ULID)")]
pub struct InvalidRunId {
    /// The refused text, cut to 64 characters.
    pub text: String,
}

impl RunId {
    /// A fresh id for a run starting `at`. Ids made on one thread sort in creation order,
    /// even within one millisecond (a per-thread monotonic generator, so no lock is shared).
    pub(crate) fn new(at: SystemTime) -> Self {
        thread_local! {
            static GENERATOR: std::cell::RefCell<ulid::Generator> =
                const { std::cell::RefCell::new(ulid::Generator::new()) };
        }
        let ulid = GENERATOR
            .with(|g| g.borrow_mut().generate_from_datetime(at))
            .unwrap_or_else(|_| ulid::Ulid::from_datetime(at));
        let mut text = [0u8; ulid::ULID_LEN];
        let mut buf = [0u8; RUN_ID_LEN];
        buf[..4].copy_from_slice(b"run_");
        buf[4..].copy_from_slice(ulid.array_to_str(&mut text).as_bytes());
        RunId(buf)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ever built from `run_` and the ASCII of a ULID (`new`, `from_str`).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// When the id was made (the ULID's millisecond timestamp).
    pub fn created_at(&self) -> SystemTime {
        ulid::Ulid::from_string(&self.as_str()[4..])
            .map(|u| u.datetime())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

impl std::str::FromStr for RunId {
    type Err = InvalidRunId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let valid = text.strip_prefix("run_").is_some_and(|rest| {
            rest.len() == ulid::ULID_LEN && ulid::Ulid::from_string(rest).is_ok()
        });
        if valid {
            let mut buf = [0u8; RUN_ID_LEN];
            buf.copy_from_slice(text.as_bytes());
            Ok(RunId(buf))
        } else {
            Err(InvalidRunId {
                text: text.chars().take(64).collect(),
            })
        }
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::ops::Deref for RunId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<RunId> for str {
    fn eq(&self, other: &RunId) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<RunId> for String {
    fn eq(&self, other: &RunId) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<String> for RunId {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl AsRef<str> for RunId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for RunId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for RunId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for RunId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RunId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for RunId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RunId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "pattern": "^run_[0-9A-HJKMNP-TV-Z]{26}$" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_in_creation_order_and_round_trip() {
        let now = SystemTime::now();
        let ids: Vec<RunId> = (0..1000).map(|_| RunId::new(now)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let parsed: RunId = ids[0].as_str().parse().unwrap();
        assert_eq!(parsed, ids[0]);
        assert_eq!(serde_json::to_value(&parsed).unwrap(), ids[0].as_str());
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "run_",
            "run_abc",
            "RUN_01KB0000000000000000000000",
            "run_01KB000000000000000000000!",
        ] {
            assert!(bad.parse::<RunId>().is_err(), "{bad}");
        }
    }
}
