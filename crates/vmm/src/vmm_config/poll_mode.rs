//! How a device worker polls its queue (`--disk ...,poll=off|auto|N`), as
//! configuration: the polling itself is `crate::virtio::poll`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest fixed window accepted (`poll=N`, microseconds).
pub const FIXED_MAX_US: u64 = 10_000;

/// How a device worker polls its queue after a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PollMode {
    /// Never poll: every request the driver adds after the worker went to
    /// sleep needs a notification.
    #[default]
    Off,
    /// A window adapted to the arrival rate (at most 500 us).
    Auto,
    /// A fixed window, in microseconds (1 to [`FIXED_MAX_US`]).
    Fixed(u64),
}

impl PollMode {
    /// Whether this is the default (`off`), for `skip_serializing_if`.
    pub fn is_off(&self) -> bool {
        *self == Self::Off
    }
}

impl fmt::Display for PollMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Auto => f.write_str("auto"),
            Self::Fixed(us) => write!(f, "{us}us"),
        }
    }
}

impl FromStr for PollMode {
    type Err = String;

    /// `off`, `auto`, or a window in microseconds (`100` or `100us`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" | "0" => Ok(Self::Off),
            "auto" => Ok(Self::Auto),
            _ => {
                let digits = s.strip_suffix("us").unwrap_or(s);
                match digits.parse::<u64>() {
                    Ok(0) => Ok(Self::Off),
                    Ok(us) if us <= FIXED_MAX_US => Ok(Self::Fixed(us)),
                    _ => Err(format!(
                        "poll '{s}': use off, auto or a window of 1 to {FIXED_MAX_US} microseconds (e.g. 100us)"
                    )),
                }
            }
        }
    }
}

impl TryFrom<String> for PollMode {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<PollMode> for String {
    fn from(m: PollMode) -> Self {
        m.to_string()
    }
}
