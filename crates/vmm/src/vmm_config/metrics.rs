//! `metrics`: where the JSON metrics lines go.

use serde::{Deserialize, Serialize};

/// `PUT /metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// File or FIFO that receives one JSON line per flush.
    pub metrics_path: String,
}

impl MetricsConfig {
    /// Checks the path is given.
    pub fn validate(&self) -> Result<(), super::ConfigError> {
        if self.metrics_path.is_empty() {
            return Err(super::invalid("metrics_path", "give a file or FIFO path"));
        }
        Ok(())
    }
}
