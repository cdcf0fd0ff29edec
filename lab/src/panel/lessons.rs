//! The panel's lessons: the list, starting one on the panel's lab with one click, the
//! teacher's "next step", and where the lesson is. The narration and the verdicts reach the
//! panel through the stream like everything else ([`crate::lessons::Runner`] narrates).
//!
//! - `GET /api/lessons`: [`LessonInfo`]s.
//! - `POST /api/lesson` with a [`LessonStart`]: prepares the lab (backend set, routing, users)
//!   and starts the lesson; answered with an [`OpResult`] once it runs. One lesson at a time.
//! - `POST /api/lesson/next`: the teacher's "next step".
//! - `GET /api/lesson`: a [`LessonStatus`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use protocol::lab::{LessonInfo, LessonStart, LessonStatus, LessonSummary, OpResult};
use tokio::sync::mpsc;

use crate::control::Lab;
use crate::lessons::{self, Advance, Teacher};

/// The lesson started last.
struct Running {
    name: String,
    next: Option<mpsc::Sender<()>>,
    waiting: Arc<AtomicBool>,
    summary: Arc<Mutex<Option<LessonSummary>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Lessons {
    lab: Lab,
    running: Arc<Mutex<Option<Running>>>,
}

/// The routes, for the panel's router (whatever its state).
pub(super) fn routes<S>(lab: Lab) -> Router<S> {
    Router::new()
        .route("/api/lessons", get(list))
        .route("/api/lesson", get(status).post(start))
        .route("/api/lesson/next", post(next))
        .with_state(Lessons {
            lab,
            running: Arc::new(Mutex::new(None)),
        })
}

async fn list() -> Json<Vec<LessonInfo>> {
    Json(lessons::infos())
}

fn answer(ok: bool, message: impl Into<String>) -> Json<OpResult> {
    Json(OpResult {
        ok,
        message: message.into(),
    })
}

async fn start(State(s): State<Lessons>, Json(req): Json<LessonStart>) -> Json<OpResult> {
    let Some(lesson) = lessons::find(&req.name) else {
        return answer(false, format!("no lesson {:?}", req.name));
    };
    if let Some(r) = s.running.lock().as_ref()
        && !r.task.is_finished()
    {
        return answer(false, format!("{} is still running", r.name));
    }
    if let Some(missing) = lessons::unavailable(lesson) {
        return answer(false, format!("{} needs {missing}", lesson.name));
    }
    if let Err(e) = lessons::prepare(&s.lab, lesson).await {
        return answer(false, format!("preparing {}: {e}", lesson.name));
    }
    let waiting = Arc::new(AtomicBool::new(false));
    let (advance, next) = if req.teacher {
        let (tx, rx) = mpsc::channel(8);
        let teacher = Teacher {
            next: rx,
            waiting: waiting.clone(),
        };
        (Advance::Teacher(teacher), Some(tx))
    } else {
        (Advance::Auto, None)
    };
    let summary = Arc::new(Mutex::new(None));
    let lab = s.lab.clone();
    let done = summary.clone();
    let task = tokio::spawn(async move {
        let s = lessons::run_on(&lab, lesson, advance, false).await;
        *done.lock() = Some(s);
    });
    *s.running.lock() = Some(Running {
        name: lesson.name.to_owned(),
        next,
        waiting,
        summary,
        task,
    });
    answer(
        true,
        format!("lesson {} started: {}", lesson.name, lesson.title),
    )
}

async fn next(State(s): State<Lessons>) -> Json<OpResult> {
    let next = s.running.lock().as_ref().and_then(|r| r.next.clone());
    match next {
        Some(tx) if tx.send(()).await.is_ok() => answer(true, "next step"),
        _ => answer(false, "no lesson waits for its teacher"),
    }
}

async fn status(State(s): State<Lessons>) -> Json<LessonStatus> {
    let running = s.running.lock();
    Json(match running.as_ref() {
        None => LessonStatus::default(),
        Some(r) => LessonStatus {
            name: Some(r.name.clone()),
            running: !r.task.is_finished(),
            waiting: r.waiting.load(Ordering::Relaxed),
            summary: r.summary.lock().clone(),
        },
    })
}
