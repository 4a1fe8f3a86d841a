//! Schemas of `extract_text`.

use task_runtime::prelude::*;

use super::generic::DocumentFormat;

/// A local document to read.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtractInput {
    #[serde(flatten)]
    pub base: BaseInput,
    /// Path of a `.txt`, `.md` or `.html` file, relative to the working directory.
    #[schemars(length(min = 1))]
    pub path: String,
    /// Also save the extracted text to this file. Written to a temporary file beside it
    /// first, then renamed into place, so readers never see half a file; the temporary file
    /// is removed however the attempt ends, unless the input's `cleanup` options say
    /// `{ "keepTemp": true }` (to inspect a failed write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub save_to: Option<String>,
}

/// The plain text of a document.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TextOutput {
    /// The path as given in the input.
    pub path: String,
    pub format: DocumentFormat,
    /// Whitespace-normalised text: paragraphs separated by one blank line. Empty when the
    /// document has no text.
    pub text: String,
    /// Size of the file as read, before extraction.
    pub bytes: u64,
    /// Where the text was saved, when the input asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_to: Option<String>,
}
