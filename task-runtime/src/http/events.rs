//! `GET /api/v1/runs/{id}/events`: a run's log lines, status changes and final envelope as
//! server-sent events, until the run finishes.
//!
//! Event ids are derived from what the store keeps, so a stream can be resumed anywhere:
//! an id is `<log lines delivered>-<last status delivered>` (`3-executing`), and the final
//! envelope's is `<log lines>-<status>-end`. A client reconnecting with `Last-Event-ID`
//! gets every log line after the ones it had, the run's current status if it differs from
//! the one it had (statuses passed through while it was away collapse into the current
//! one: the store keeps no history of statuses), and the envelope once the run finished.
//! After `-end` the stream is closed at once.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::auth::Caller;
use super::runs::owned_run;
use super::{ApiError, AppState};
use crate::{RunId, RunStatus, Runtime};

/// How long the stream waits for the store to change before looking again.
const POLL: Duration = Duration::from_millis(500);

/// Where a stream stands.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    logs: usize,
    status: Option<RunStatus>,
    ended: bool,
}

impl Cursor {
    fn parse(text: &str) -> Option<Cursor> {
        let mut parts = text.trim().split('-');
        let logs = parts.next()?.parse().ok()?;
        let status = match parts.next()? {
            "none" => None,
            status => Some(status.parse().ok()?),
        };
        let ended = match parts.next() {
            None => false,
            Some("end") => true,
            Some(_) => return None,
        };
        Some(Cursor {
            logs,
            status,
            ended,
        })
    }

    fn id(&self) -> String {
        let status = self.status.map_or("none", RunStatus::as_str);
        if self.ended {
            format!("{}-{status}-end", self.logs)
        } else {
            format!("{}-{status}", self.logs)
        }
    }
}

struct Follow {
    rt: Runtime,
    stopping: CancellationToken,
    run_id: RunId,
    cursor: Cursor,
    pending: VecDeque<Event>,
    first: bool,
    /// The store's change mark taken before the last look.
    mark: u64,
}

impl Follow {
    /// Looks at the run once; queues what is new.
    async fn look(&mut self) {
        let runs = self.rt.runs();
        let info = match runs.get(&self.run_id).await {
            Ok(Some(info)) => info,
            Ok(None) | Err(_) => {
                self.pending.push_back(
                    Event::default()
                        .event("error")
                        .data("the run cannot be read"),
                );
                self.cursor.ended = true;
                return;
            }
        };
        let finished = info.status.is_finished();
        match runs.logs(&self.run_id).await {
            Ok(lines) => {
                for line in lines.into_iter().skip(self.cursor.logs) {
                    self.cursor.logs += 1;
                    let data = serde_json::to_string(&line).unwrap_or_default();
                    self.pending.push_back(
                        Event::default()
                            .event("log")
                            .id(self.cursor.id())
                            .data(data),
                    );
                }
            }
            Err(error) => tracing::warn!(%error, "reading a run's logs for its event stream"),
        }
        if self.cursor.status != Some(info.status) {
            self.cursor.status = Some(info.status);
            let data = json!({ "status": info.status, "attempts": info.attempts });
            self.pending.push_back(
                Event::default()
                    .event("status")
                    .id(self.cursor.id())
                    .data(data.to_string()),
            );
        }
        if finished {
            self.cursor.ended = true;
            let data = serde_json::to_string(&info.envelope).unwrap_or_default();
            self.pending.push_back(
                Event::default()
                    .event("envelope")
                    .id(self.cursor.id())
                    .data(data),
            );
        }
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Follow)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.cursor.ended {
                return None;
            }
            if self.stopping.is_cancelled() {
                return None;
            }
            if !self.first
                && let Some(store) = self.rt.store()
            {
                tokio::select! {
                    () = store.changed(self.mark, POLL) => {}
                    () = self.stopping.cancelled() => return None,
                }
            }
            self.first = false;
            if let Some(store) = self.rt.store() {
                self.mark = store.change_mark();
            }
            self.look().await;
        }
    }
}

pub(super) async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let info = owned_run(&state.rt, &caller, &id).await?;
    let cursor = match headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
    {
        Some(text) => Cursor::parse(text).ok_or_else(|| {
            ApiError::invalid(
                "Last-Event-ID",
                format!("`{text}` is not an id of this stream"),
            )
        })?,
        None => Cursor {
            logs: 0,
            status: None,
            ended: false,
        },
    };
    let follow = Follow {
        rt: state.rt.clone(),
        stopping: state.stopping.clone(),
        run_id: info.id,
        cursor,
        pending: VecDeque::new(),
        first: true,
        mark: 0,
    };
    let stream = futures_util::stream::unfold(follow, Follow::next);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_ids_round_trip() {
        let cursors = [
            Cursor {
                logs: 0,
                status: None,
                ended: false,
            },
            Cursor {
                logs: 3,
                status: Some(RunStatus::Executing),
                ended: false,
            },
            Cursor {
                logs: 7,
                status: Some(RunStatus::Completed),
                ended: true,
            },
        ];
        for cursor in cursors {
            assert_eq!(Cursor::parse(&cursor.id()), Some(cursor.clone()));
        }
        assert_eq!(Cursor::parse("x-queued"), None);
        assert_eq!(Cursor::parse("1-nope"), None);
    }
}
