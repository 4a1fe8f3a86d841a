//! Tracks: tasks run in sequence, each step's output mapped into the next step's input.
//! Copy `track_shell.rs` to start a new one.

pub mod text_track;

#[cfg(test)]
pub mod track_shell;

pub use text_track::TextTrack;
