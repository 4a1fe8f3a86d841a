//! Types shared by several tasks (the seed's `schemas/generic`).

use task_runtime::prelude::*;

pub use task_runtime::BaseInput;

/// The formats `extract_text` understands, chosen by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DocumentFormat {
    /// `.txt`: taken as it is.
    Text,
    /// `.md`, `.markdown`: markup stripped, code blocks dropped.
    Markdown,
    /// `.html`, `.htm`: tags stripped, scripts and styles dropped, entities decoded.
    Html,
}

impl DocumentFormat {
    /// The format for a file extension (case-insensitive, without the dot).
    pub fn from_extension(extension: &str) -> Option<Self> {
        match extension.to_ascii_lowercase().as_str() {
            "txt" => Some(DocumentFormat::Text),
            "md" | "markdown" => Some(DocumentFormat::Markdown),
            "html" | "htm" => Some(DocumentFormat::Html),
            _ => None,
        }
    }
}

/// A word and how often it occurs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WordCount {
    pub word: String,
    pub count: usize,
}
