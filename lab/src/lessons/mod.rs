//! Lessons: each article's mistake shown on a live cluster, then its fix, with the checker as
//! the judge. A lesson is a script of steps; each step says what to look at (the panel's
//! narration), drives the lab through [`Op`]s, and records the checker's verdict. Steps run by
//! themselves, or wait for a teacher ([`Advance`]). A lesson *passes* when every mistake was
//! observed (red where it must be) and every fix held (green): `lab lesson --check` runs them
//! all headless, so a lesson that no longer shows its mistake is a failing test.
//!
//! Code map: this module holds the table of lessons, the [`Runner`] their scripts use, and
//! [`run`], which starts a lab for one lesson and ends it; one file per lesson beside it.
//!
//! Invariant: a lesson's cluster is started with `--teaching` (only such a cluster takes the
//! teaching modes) and is shut down, with what it left in the services, whatever the outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use protocol::lab::{CheckerView, LessonSummary, Level, Narration, Op, Update};
use tokio::sync::mpsc;

use crate::control::{Lab, LabConfig};
use crate::users::{Traffic, UsersConfig};
use crate::world::Cursor;
use crate::{ClusterConfig, LabError, Routing, stacks};

mod fanout;
mod kill;
mod least;
mod nobus;
mod order;
mod pubsub;
mod shared;

/// What a lesson's cluster is.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// The backend set ([`stacks::STACKS`]).
    pub stack: &'static str,
    /// Nodes.
    pub nodes: usize,
    /// Virtual users.
    pub users: usize,
    /// Devices per user.
    pub devices_per_user: usize,
    /// Routing at start.
    pub routing: Routing,
}

type Script = for<'a> fn(&'a mut Runner) -> Pin<Box<dyn Future<Output = Step> + Send + 'a>>;

/// A lesson: what it is called, where it comes from, and its script.
pub struct Lesson {
    /// Short kebab-case name (`lb-is-not-a-cluster`).
    pub name: &'static str,
    /// Its title, for people.
    pub title: &'static str,
    /// The article it comes from (`002_*`).
    pub article: &'static str,
    /// One line: what the class sees.
    pub about: &'static str,
    /// The cluster it runs on.
    pub setup: Setup,
    /// Its steps' titles (the panel's list).
    pub steps: &'static [&'static str],
    script: Script,
}

/// Every lesson, in teaching order.
pub fn all() -> &'static [Lesson] {
    LESSONS
}

/// The lesson called `name`.
pub fn find(name: &str) -> Option<&'static Lesson> {
    LESSONS.iter().find(|l| l.name == name)
}

static LESSONS: &[Lesson] = &[
    nobus::LESSON,
    fanout::LESSON,
    pubsub::LESSON,
    shared::LESSON,
    order::LESSON,
    kill::LESSON,
    least::LESSON,
];

/// What a step's script returns: `Err` ends the lesson (the lab could not do what it asked).
pub type Step = Result<(), String>;

/// How steps advance: by themselves, or when a teacher says so (one message per step).
pub enum Advance {
    /// Each step follows the last at once.
    Auto,
    /// Each step waits for a message (the panel's "next").
    Teacher(Teacher),
}

/// A teacher's hand on the steps.
pub struct Teacher {
    /// One message per step.
    pub next: mpsc::Receiver<()>,
    /// True while a step waits for it.
    pub waiting: Arc<AtomicBool>,
}

/// What a lesson's script drives: the lab, the narration, the verdicts and the summary.
pub struct Runner {
    lab: Lab,
    lesson: &'static Lesson,
    current: usize,
    advance: Advance,
    cursor: Cursor,
    /// What the current step says, and the verdicts and figures it has recorded so far.
    text: String,
    notes: Vec<String>,
    lines: Vec<String>,
    failures: Vec<String>,
    /// Print what happens on stdout (the headless `lab lesson`).
    echo: bool,
}

impl Runner {
    /// A runner for `lesson` on a running `lab`.
    pub fn new(lab: Lab, lesson: &'static Lesson, advance: Advance, echo: bool) -> Runner {
        Runner {
            lab,
            lesson,
            current: 0,
            advance,
            cursor: Cursor::default(),
            text: String::new(),
            notes: Vec::new(),
            lines: Vec::new(),
            failures: Vec::new(),
            echo,
        }
    }

    /// The lab.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// Starts step `index` (into [`Lesson::steps`]) with what to look at; waits for the
    /// teacher first, if a teacher advances the steps.
    pub async fn step(&mut self, index: usize, text: &str) {
        if index > 0 && matches!(self.advance, Advance::Teacher(_)) {
            self.notes.push("(press \"next step\" to go on)".into());
            self.narrate();
            if let Advance::Teacher(t) = &mut self.advance {
                t.waiting.store(true, Ordering::Relaxed);
                let _ = t.next.recv().await;
                t.waiting.store(false, Ordering::Relaxed);
            }
        }
        self.current = index;
        self.text = text.to_owned();
        self.notes.clear();
        self.narrate();
        if self.echo {
            let title = self.lesson.steps.get(index).copied().unwrap_or("");
            println!(
                "\n[{}/{}] {title}\n{}",
                index + 1,
                self.lesson.steps.len(),
                indent(text)
            );
        }
    }

    /// Says more within the current step.
    pub fn say(&mut self, text: &str) {
        self.notes.push(text.to_owned());
        self.narrate();
        if self.echo {
            println!("{}", indent(text));
        }
    }

    /// The panel's narration: the step's text, then what it recorded so far.
    fn narrate(&self) {
        let mut text = self.text.clone();
        for note in &self.notes {
            text.push('\n');
            text.push_str(note);
        }
        self.lab.narrate(Some(Narration {
            title: self.lesson.title.to_owned(),
            steps: self.lesson.steps.iter().map(|s| (*s).to_owned()).collect(),
            current: self.current,
            text,
        }));
    }

    /// Carries out an operation; its refusal ends the lesson.
    pub async fn op(&mut self, op: Op) -> Result<String, String> {
        let what = format!("{op:?}");
        let r = self.lab.op(op).await;
        if self.echo {
            println!("  > {}", r.message);
        }
        if r.ok {
            Ok(r.message)
        } else {
            Err(format!("{what}: {}", r.message))
        }
    }

    /// Sends `per_sec` messages a second (`room_share` of them in rooms) for `time`.
    pub async fn traffic(&mut self, per_sec: f64, room_share: f64, time: Duration) -> Step {
        self.op(Op::Rate {
            per_sec,
            room_share: Some(room_share),
        })
        .await?;
        tokio::time::sleep(time).await;
        Ok(())
    }

    /// Forgets what the checker saw: what follows is judged alone.
    pub async fn reset(&mut self) -> Step {
        self.op(Op::ResetChecker).await.map(|_| ())
    }

    /// Stops the traffic, waits at most `limit` for what is on its way, and judges.
    pub async fn settle(&mut self, limit: Duration) -> CheckerView {
        let view = self.lab.settle(limit).await;
        if self.echo {
            println!(
                "  checker: {} — {}",
                verdict_word(view.verdict),
                view.headline
            );
        }
        view
    }

    /// The panel's picture now.
    pub fn update(&mut self) -> Update {
        self.lab.update(&mut self.cursor)
    }

    /// Polls the picture until `cond` holds or `limit` passes; the last picture either way.
    pub async fn until(
        &mut self,
        limit: Duration,
        cond: impl Fn(&Update) -> bool,
    ) -> (bool, Update) {
        let deadline = Instant::now() + limit;
        loop {
            let u = self.update();
            if cond(&u) {
                return (true, u);
            }
            if Instant::now() >= deadline {
                return (false, u);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Records a verdict the lesson needs: the mistake seen, or the fix holding.
    pub fn expect(&mut self, held: bool, what: &str) {
        let line = format!("{} {what}", if held { "ok:  " } else { "FAIL:" });
        if self.echo {
            println!("  {line}");
        }
        if !held {
            self.failures.push(what.to_owned());
        }
        self.notes.push(line.clone());
        self.narrate();
        self.lines.push(line);
    }

    /// The mistake must show: the checker red.
    pub fn expect_red(&mut self, view: &CheckerView, what: &str) {
        let red = view.verdict == Level::Bad;
        self.expect(
            red,
            &format!(
                "{what}: checker {} (lost {}, out of order {}, duplicates {})",
                verdict_word(view.verdict),
                view.lost,
                view.out_of_order,
                view.duplicates
            ),
        );
    }

    /// The fix must hold: the checker green, with traffic judged.
    pub fn expect_green(&mut self, view: &CheckerView, what: &str) {
        let green = view.verdict == Level::Ok && view.acked > 0 && view.delivered > 0;
        self.expect(
            green,
            &format!(
                "{what}: checker {} ({} acknowledged, {} deliveries, lost {}, out of order {}, \
                 duplicates {})",
                verdict_word(view.verdict),
                view.acked,
                view.delivered,
                view.lost,
                view.out_of_order,
                view.duplicates
            ),
        );
    }

    /// A figure for the summary.
    pub fn figure(&mut self, line: String) {
        if self.echo {
            println!("  = {line}");
        }
        self.notes.push(line.clone());
        self.narrate();
        self.lines.push(line);
    }

    fn summary(&self, error: Option<&str>) -> LessonSummary {
        let mut lines = vec![format!("{} ({})", self.lesson.title, self.lesson.article)];
        lines.extend(self.lines.iter().cloned());
        if let Some(e) = error {
            lines.push(format!("FAIL: the lesson stopped: {e}"));
        }
        LessonSummary {
            name: self.lesson.name.to_owned(),
            passed: error.is_none() && self.failures.is_empty(),
            lines,
        }
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn verdict_word(level: Level) -> &'static str {
    match level {
        Level::Ok => "green",
        Level::Warn => "amber",
        Level::Bad => "red",
    }
}

/// Why a lesson could not run here.
pub fn unavailable(lesson: &Lesson) -> Option<String> {
    let stack = stacks::find(lesson.setup.stack)?;
    stack.missing()
}

/// A lab for `lesson`: its backend set, `--teaching`, bus proxies, users; what it left in the
/// services goes with the returned guard.
pub async fn start(lesson: &Lesson) -> Result<(Lab, Option<stacks::Leftovers>), LabError> {
    let setup = lesson.setup;
    let mut cluster = ClusterConfig::new(setup.nodes);
    let leftovers = match stacks::find(setup.stack) {
        Some(stack) => {
            let tag = format!("lesson_{:08x}", rand::random::<u32>());
            let (backends, leftovers) = stack
                .backends(&tag, setup.routing)
                .map_err(|e| LabError::Lesson(e.to_string()))?;
            cluster.backends = backends;
            Some(leftovers)
        }
        None => None,
    };
    cluster.backends.routing = setup.routing;
    cluster.cuttable_bus = true;
    cluster.teaching = true;
    cluster.controller_args = vec!["--password-hash".into(), "fast".into()];
    // Short leases: the registry notices a dead node within a class's attention span.
    cluster.lease_ms = Some(2_000);
    let mut config = LabConfig::new(cluster);
    let mut users = UsersConfig::new(setup.users, setup.devices_per_user);
    users.room_size = 4;
    config.users = Some(users);
    config.traffic = Traffic {
        rate: 0.0,
        room_share: 0.0,
    };
    config.always_observe = true;
    let lab = Lab::start(config).await?;
    Ok((lab, leftovers))
}

/// Runs `lesson` on a fresh lab and stops it: its summary (also kept in the lab's report).
pub async fn run(
    lesson: &'static Lesson,
    advance: Advance,
    echo: bool,
) -> Result<LessonSummary, LabError> {
    let (lab, leftovers) = start(lesson).await?;
    let summary = run_on(&lab, lesson, advance, echo).await;
    let _ = lab.shutdown().await;
    drop(leftovers);
    Ok(summary)
}

/// Runs `lesson` on a lab already started by [`start`] (the panel's), and keeps its summary in
/// the lab's report.
pub async fn run_on(
    lab: &Lab,
    lesson: &'static Lesson,
    advance: Advance,
    echo: bool,
) -> LessonSummary {
    let mut runner = Runner::new(lab.clone(), lesson, advance, echo);
    let devices = (lesson.setup.users * lesson.setup.devices_per_user) as u32;
    let (ready, _) = runner
        .until(Duration::from_secs(60), |u| u.traffic.live >= devices)
        .await;
    let outcome = if ready {
        (lesson.script)(&mut runner).await
    } else {
        Err(format!("the {devices} virtual devices did not all connect"))
    };
    // Whatever happened, the cluster is left without a mistake switched on.
    let _ = lab
        .op(Op::Rate {
            per_sec: 0.0,
            room_share: None,
        })
        .await;
    let summary = runner.summary(outcome.as_ref().err().map(String::as_str));
    lab.narrate(Some(Narration {
        title: lesson.title.to_owned(),
        steps: lesson.steps.iter().map(|s| (*s).to_owned()).collect(),
        current: lesson.steps.len().saturating_sub(1),
        text: summary.lines.join("\n"),
    }));
    lab.with_world(|w| w.add_lesson(summary.clone()));
    if echo {
        println!(
            "\n{} {}: {}",
            if summary.passed { "PASS" } else { "FAIL" },
            lesson.name,
            lesson.title
        );
    }
    summary
}

/// `lab lesson`: `list` prints the lessons; a `name` runs that one; `check` alone runs every
/// lesson. Ok(false) when a lesson did not show what it must (or could not run); a lesson
/// whose services are missing here is skipped, with a line saying so.
pub async fn command(name: Option<&str>, list: bool, check: bool) -> Result<bool, LabError> {
    if list || (name.is_none() && !check) {
        for l in all() {
            println!("{:<24} {} ({}): {}", l.name, l.title, l.article, l.about);
        }
        return Ok(true);
    }
    let chosen: Vec<&'static Lesson> = match name {
        Some(n) => vec![find(n).ok_or_else(|| {
            LabError::Lesson(format!("no lesson {n:?}; `lab lesson --list` names them"))
        })?],
        None => all().iter().collect(),
    };
    let mut results = Vec::new();
    for lesson in chosen {
        if let Some(missing) = unavailable(lesson) {
            println!("SKIP {}: needs {missing}", lesson.name);
            results.push((lesson.name, None));
            continue;
        }
        println!(
            "\n==== {}: {} ({})",
            lesson.name, lesson.title, lesson.article
        );
        let started = Instant::now();
        let summary = match run(lesson, Advance::Auto, true).await {
            Ok(s) => s,
            Err(e) => LessonSummary {
                name: lesson.name.to_owned(),
                passed: false,
                lines: vec![format!("FAIL: the lesson's cluster did not start: {e}")],
            },
        };
        println!("---- summary ({:.0} s)", started.elapsed().as_secs_f64());
        for line in &summary.lines {
            println!("  {line}");
        }
        results.push((lesson.name, Some(summary.passed)));
    }
    if results.len() > 1 {
        println!("\n==== lessons");
        for (name, passed) in &results {
            let word = match passed {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "skipped",
            };
            println!("  {word:<8} {name}");
        }
    }
    Ok(results.iter().all(|(_, p)| p.unwrap_or(true)))
}

/// The list the panel shows.
pub fn infos() -> Vec<protocol::lab::LessonInfo> {
    all()
        .iter()
        .map(|l| protocol::lab::LessonInfo {
            name: l.name.to_owned(),
            title: l.title.to_owned(),
            article: l.article.to_owned(),
            about: l.about.to_owned(),
            steps: l.steps.iter().map(|s| (*s).to_owned()).collect(),
        })
        .collect()
}

/// Puts a running lab (the panel's) in the shape `lesson` needs: its backend set, its routing,
/// its virtual users, no teaching mode. The cluster must have been started with `--teaching`.
pub async fn prepare(lab: &Lab, lesson: &Lesson) -> Result<(), String> {
    let op = |op: Op| async move {
        let r = lab.op(op).await;
        if r.ok { Ok(()) } else { Err(r.message) }
    };
    let view = lab.update(&mut Cursor::default()).cluster;
    let bus = match lesson.setup.stack {
        "rabbitmq" => "amqp",
        other => other,
    };
    if view.backends.bus != bus || view.backends.store != "sqlite" {
        op(Op::SetBackends {
            name: lesson.setup.stack.to_owned(),
        })
        .await?;
    }
    let view = lab.update(&mut Cursor::default()).cluster;
    if view.backends.routing != lesson.setup.routing.as_str() {
        op(Op::SetRouting {
            routing: lesson.setup.routing.as_str().to_owned(),
        })
        .await?;
    }
    op(Op::Teach { mode: None }).await?;
    op(Op::Rate {
        per_sec: 0.0,
        room_share: None,
    })
    .await?;
    op(Op::Users {
        users: lesson.setup.users as u32,
        devices_per_user: lesson.setup.devices_per_user as u32,
    })
    .await
}
