//! Where the example's file paths may point: under one documents root.
//!
//! `docs-pipeline serve` takes inputs from anyone holding an API key, so a path from an
//! input is never opened as given. It resolves under the documents root (the directory in
//! `DOCS_ROOT`, or else the working directory): a relative path is taken from the root, an
//! absolute one must lie inside it, and anything that leads out (`..` climbing above the
//! root, an absolute path elsewhere, a symlink to somewhere outside) is `invalidInput`,
//! naming the input field. The root's own location is not in the message (callers of the
//! API need not learn the server's layout); it is logged.
//!
//! A path is checked, then opened: a symlink swapped in between is not caught. The check is
//! meant for inputs, not for a hostile local user who can write inside the root.

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use task_runtime::{Issue, TaskError};

/// The environment variable naming the documents root.
pub const ROOT_VARIABLE: &str = "DOCS_ROOT";

static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The documents root (canonical), chosen once per process: `DOCS_ROOT`, the directory given
/// to [`use_root`] first, or the working directory.
pub fn root() -> Result<&'static Path, TaskError> {
    let root = ROOT.get_or_init(|| match std::env::var_os(ROOT_VARIABLE) {
        Some(dir) => canonical_root(PathBuf::from(dir)),
        None => std::env::current_dir()
            .map_err(|error| format!("cannot read the working directory: {error}"))
            .and_then(canonical_root),
    });
    root.as_deref()
        .map_err(|message| TaskError::fatal(message.clone()))
}

/// Makes `dir` the documents root, unless one was already chosen; returns the root in use.
/// For programs (and tests) that embed the tasks without setting `DOCS_ROOT`.
pub fn use_root(dir: impl Into<PathBuf>) -> Result<&'static Path, TaskError> {
    let dir = dir.into();
    let _ = ROOT.set(canonical_root(dir));
    root()
}

fn canonical_root(dir: PathBuf) -> Result<PathBuf, String> {
    let root = dir.canonicalize().map_err(|error| {
        format!(
            "the documents root '{}' ({ROOT_VARIABLE}) cannot be opened: {error}",
            dir.display()
        )
    })?;
    tracing::debug!(root = %root.display(), "documents root");
    Ok(root)
}

/// The file an input's `path` names, for reading: inside the root, symlinks followed. A path
/// that does not exist (yet) is returned as it lies under the root, so reading it fails
/// with the reader's own "cannot read" error. `field` is the input's JSON pointer
/// (`/path`, `/paths/2`), named in the error.
pub fn resolve(field: &str, path: &str) -> Result<PathBuf, TaskError> {
    let root = root()?;
    let lexical = under(root, field, path)?;
    match lexical.canonicalize() {
        Ok(real) if real.starts_with(root) => Ok(real),
        Ok(_) => Err(outside(root, field, path, " through a symlink")),
        Err(_) => Ok(lexical),
    }
}

/// The file an input's `path` names, for writing: its directory must resolve inside the
/// root (symlinks followed), and the name must be a plain file name.
pub fn resolve_target(field: &str, path: &str) -> Result<PathBuf, TaskError> {
    let root = root()?;
    let lexical = under(root, field, path)?;
    let (Some(parent), Some(name)) = (lexical.parent(), lexical.file_name()) else {
        return Err(outside(root, field, path, ""));
    };
    match parent.canonicalize() {
        Ok(real) if real.starts_with(root) => Ok(real.join(name)),
        Ok(_) => Err(outside(root, field, path, " through a symlink")),
        // A missing directory: the write fails with its own error.
        Err(_) => Ok(lexical),
    }
}

/// `path` taken from `root` with `.` and `..` applied without touching the disk; an error
/// if that leaves the root.
fn under(root: &Path, field: &str, path: &str) -> Result<PathBuf, TaskError> {
    let mut resolved = PathBuf::new();
    for component in root.join(path).components() {
        match component {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::CurDir => {}
            other => resolved.push(other),
        }
    }
    if resolved.starts_with(root) && resolved != root {
        Ok(resolved)
    } else {
        Err(outside(root, field, path, ""))
    }
}

fn outside(root: &Path, field: &str, path: &str, how: &str) -> TaskError {
    tracing::warn!(field, path, root = %root.display(), "a path outside the documents root was refused");
    TaskError::invalid_input(vec![Issue {
        path: field.to_owned(),
        message: format!(
            "'{path}' leads outside the documents root{how} (set {ROOT_VARIABLE} to serve \
             other documents)"
        ),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The root unit tests share: the crate's directory (their working directory).
    fn crate_root() -> &'static Path {
        use_root(env!("CARGO_MANIFEST_DIR")).unwrap()
    }

    fn refused(error: TaskError) -> String {
        assert_eq!(error.kind_name(), "invalidInput");
        assert!(!error.is_retryable());
        let issues = error.issues();
        assert_eq!(issues.len(), 1);
        format!("{}: {}", issues[0].path, issues[0].message)
    }

    #[test]
    fn relative_and_absolute_paths_inside_the_root_resolve() {
        let root = crate_root();
        let sample = root.join("samples/tides.html");
        assert_eq!(resolve("/path", "samples/tides.html").unwrap(), sample);
        assert_eq!(
            resolve("/path", "samples/../samples/./tides.html").unwrap(),
            sample
        );
        assert_eq!(resolve("/path", sample.to_str().unwrap()).unwrap(), sample);
        // Missing files resolve (their read fails later, as a read).
        assert_eq!(
            resolve("/path", "samples/none.txt").unwrap(),
            root.join("samples/none.txt")
        );
        assert_eq!(
            resolve_target("/saveTo", "samples/out.txt").unwrap(),
            root.join("samples/out.txt")
        );
    }

    #[test]
    fn climbing_out_or_pointing_elsewhere_is_invalid_input_naming_the_field() {
        crate_root();
        for (field, path) in [
            ("/path", "../../etc/passwd"),
            ("/path", "samples/../../secret.txt"),
            ("/path", "/etc/passwd"),
            ("/paths/2", ".."),
            ("/path", "."),
        ] {
            assert_eq!(
                refused(resolve(field, path).unwrap_err()),
                format!(
                    "{field}: '{path}' leads outside the documents root (set DOCS_ROOT to \
                     serve other documents)"
                )
            );
        }
        let error = resolve_target("/saveTo", "/tmp/out.txt").unwrap_err();
        assert!(refused(error).starts_with("/saveTo: '/tmp/out.txt' leads outside"));
    }

    #[test]
    fn a_symlink_leading_out_is_refused_for_reading_and_writing() {
        let root = crate_root();
        let dir = root.join(format!(".scratch/documents-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("host.txt")).unwrap();
        std::os::unix::fs::symlink("/tmp", dir.join("tmp")).unwrap();
        let relative = |name: &str| format!(".scratch/documents-{}/{name}", std::process::id());
        let error = resolve("/path", &relative("host.txt")).unwrap_err();
        assert!(refused(error).contains("leads outside the documents root through a symlink"),);
        let error = resolve_target("/saveTo", &relative("tmp/out.txt")).unwrap_err();
        assert!(refused(error).contains("leads outside the documents root through a symlink"),);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
