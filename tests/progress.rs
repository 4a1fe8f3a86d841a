//! The CLI's live progress of an orchestrator (`record_fan`: a lead beside four recorded
//! three-step tracks, two at a time) executed by a worker in another process: plain lines
//! when the output is a pipe (`trigger --wait`, `runs show --follow`), and an `indicatif`
//! bar redrawn in place in a real terminal (tmux, driven with `send-keys` and read with
//! `capture-pane`).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use task_tests::procs::KillOnDrop;

const APP: &str = env!("CARGO_BIN_EXE_fixture-app");

/// Five units: the lead and four items; each item a track of three 150 ms steps.
const INPUT: &str = r#"{"tenantId":"acme","projectId":"p","label":"fan","items":4,"millis":150}"#;

struct Cli {
    dir: PathBuf,
    url: String,
}

impl Cli {
    fn new(name: &str) -> Cli {
        let dir = std::env::temp_dir().join(format!("progress-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Cli {
            url: format!("sqlite://{}/runs.db", dir.display()),
            dir,
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.join("executions.log")
    }

    fn command(&self, rust_log: &str) -> Command {
        let mut command = Command::new(APP);
        command
            .env("TASK_STORE", &self.url)
            .env("FIXTURE_LOG", self.log())
            .env("RUST_LOG", rust_log);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command("warn")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("the binary runs")
    }

    /// A worker whose log lines (the fan-out sizes among them) reach the store.
    fn worker(&self) -> KillOnDrop {
        // The store is created (migrated) first, by one process: two processes migrating a
        // new SQLite file at once can collide.
        assert_eq!(self.run(&["runs", "list"]).status.code(), Some(0));
        KillOnDrop(
            self.command("info")
                .args(["worker", "--concurrency", "4"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

/// The progress lines of `record_fan` in `stderr`, checked to be plain text.
fn progress_lines(stderr: &str) -> Vec<String> {
    assert!(
        !stderr.chars().any(|c| c.is_control() && c != '\n'),
        "control characters in plain output: {stderr:?}"
    );
    stderr
        .lines()
        .filter(|line| line.starts_with("record_fan run_"))
        .map(str::to_owned)
        .collect()
}

/// `(done, total)` of a progress line (the total is `?` until the fan-out's size is read).
fn counts(line: &str) -> (u64, Option<u64>) {
    let after = line.split_once(": ").unwrap().1;
    let fraction = after.split_once(" done").unwrap().0;
    let (done, total) = fraction.split_once('/').unwrap();
    (done.parse().unwrap(), total.parse().ok())
}

fn check_progress(lines: &[String]) {
    assert!(lines.len() >= 3, "too few progress lines: {lines:#?}");
    let mut last = 0;
    let mut known = false;
    for line in lines {
        let (done, total) = counts(line);
        match total {
            Some(total) => {
                assert_eq!(total, 5, "the lead and four items: {line}");
                known = true;
            }
            None => assert!(!known, "the total went unknown again: {lines:#?}"),
        }
        assert!(done >= last && done <= 5, "{lines:#?}");
        last = done;
    }
    // While it ran, a line named the item running and the step inside it.
    assert!(
        lines
            .iter()
            .any(|l| l.contains(", running item:items:") && l.contains(" record_track > step:")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| {
            let (done, total) = counts(l);
            total == Some(5) && (1..5).contains(&done)
        }),
        "no line between the start and the end: {lines:#?}"
    );
    assert!(
        lines.last().unwrap().ends_with(": 5/5 done, completed"),
        "{lines:#?}"
    );
}

#[test]
fn progress_is_plain_lines_in_a_pipe() {
    let cli = Cli::new("pipe");
    let _worker = cli.worker();

    // `trigger --wait`: progress on stderr, the envelope alone on stdout.
    let waited = cli.run(&["trigger", "record_fan", "--input", INPUT, "--wait"]);
    let stderr = String::from_utf8(waited.stderr.clone()).unwrap();
    assert_eq!(waited.status.code(), Some(0), "{stderr}");
    let envelope: Value = serde_json::from_slice(&waited.stdout).expect("stdout is the envelope");
    assert_eq!(envelope["job"]["success"], true, "{envelope}");
    assert_eq!(envelope["results"]["items"].as_array().unwrap().len(), 4);
    check_progress(&progress_lines(&stderr));

    // `runs show --follow` on a run triggered without waiting.
    let triggered = cli.run(&["trigger", "record_fan", "--input", INPUT]);
    assert_eq!(triggered.status.code(), Some(0));
    let id = String::from_utf8(triggered.stdout)
        .unwrap()
        .trim()
        .to_owned();
    let shown = cli.run(&["runs", "show", &id, "--follow"]);
    let stderr = String::from_utf8(shown.stderr.clone()).unwrap();
    assert_eq!(shown.status.code(), Some(0), "{stderr}");
    let lines = progress_lines(&stderr);
    check_progress(&lines);
    assert!(lines.iter().all(|l| l.contains(&id)), "{lines:#?}");
    let tree = String::from_utf8(shown.stdout).unwrap();
    assert!(
        tree.starts_with(&format!("{id}  record_fan  completed")),
        "{tree}"
    );
}

/// A tmux server of this test's own (its socket named after the process), killed at the end.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("progress-{name}-{}", std::process::id()),
        };
        let status = tmux
            .command()
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "t",
                "-x",
                "150",
            ])
            .args(["-y", "40", "sh"])
            .status()
            .expect("tmux runs (apt-get install -y tmux)");
        assert!(status.success(), "tmux new-session");
        tmux
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.args(["-L", &self.socket]);
        command
    }

    fn send_line(&self, text: &str) {
        let literal = self
            .command()
            .args(["send-keys", "-t", "t", "-l", text])
            .status();
        assert!(literal.unwrap().success());
        let enter = self
            .command()
            .args(["send-keys", "-t", "t", "Enter"])
            .status();
        assert!(enter.unwrap().success());
    }

    fn capture(&self) -> String {
        let out = self
            .command()
            .args(["capture-pane", "-p", "-S", "-", "-t", "t"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").status();
    }
}

#[test]
fn progress_is_a_bar_in_a_terminal() {
    let cli = Cli::new("tty");
    let _worker = cli.worker();
    let tmux = Tmux::start("tty");
    tmux.send_line(&format!(
        "TASK_STORE='{}' FIXTURE_LOG='{}' RUST_LOG=warn '{APP}' trigger record_fan --input '{INPUT}' --wait; echo EXITED $?",
        cli.url,
        cli.log().display()
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen_running = None;
    let screen = loop {
        let screen = tmux.capture();
        let bars: Vec<&str> = screen
            .lines()
            .filter(|l| l.contains("record_fan ["))
            .collect();
        // Redrawn in place: never more than one bar line on the screen.
        assert!(bars.len() <= 1, "{screen}");
        if let Some(bar) = bars.first()
            && bar.contains("/5 item:items:")
            && bar.contains("> step:")
        {
            seen_running = Some(bar.to_string());
        }
        if screen.lines().any(|l| l.starts_with("EXITED ")) {
            break screen;
        }
        assert!(
            Instant::now() < deadline,
            "the run never finished:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(40));
    };
    let running = seen_running.unwrap_or_else(|| panic!("no bar while it ran:\n{screen}"));
    assert!(
        running.contains("=>") || running.contains("=="),
        "{running}"
    );
    assert!(screen.lines().any(|l| l == "EXITED 0"), "{screen}");
    // The bar stays, finished, above the envelope.
    let finished: Vec<&str> = screen
        .lines()
        .filter(|l| l.contains("record_fan [") && l.contains("5/5 completed"))
        .collect();
    assert_eq!(finished.len(), 1, "{screen}");
    assert!(screen.contains("\"success\": true"), "{screen}");
}
