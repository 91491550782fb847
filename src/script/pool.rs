//! The script threads: one engine per thread, created on the thread's first
//! page and kept for the process's life. The async workers hand a page's
//! items over and await the results, so a transform (up to its time limit)
//! never runs on the runtime's threads, where the lock heartbeat and the
//! checkpointer run.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use futures::channel::oneshot;

use super::engine::{Engine, Entry, Limits, Modules};
use crate::migration::{Attrs, Change, Item, RunFacts, TransformError};

type Transformed = Vec<(Item, Result<Change, TransformError>)>;

struct Job {
    entry: Entry,
    id: String,
    facts: RunFacts,
    items: Vec<Attrs>,
    reply: oneshot::Sender<Transformed>,
}

/// Threads running script transforms.
pub struct Pool {
    modules: Modules,
    limits: Limits,
    now_ms: f64,
    threads: usize,
    sender: Mutex<Option<mpsc::Sender<Job>>>,
}

impl Pool {
    /// A pool of `threads` engines over `modules` (started on first use).
    pub fn new(modules: Modules, limits: Limits, now_ms: f64, threads: usize) -> Self {
        Pool {
            modules,
            limits,
            now_ms,
            threads: threads.max(1),
            sender: Mutex::new(None),
        }
    }

    fn sender(&self) -> mpsc::Sender<Job> {
        let mut guard = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .get_or_insert_with(|| {
                let (tx, rx) = mpsc::channel::<Job>();
                let rx = Arc::new(Mutex::new(rx));
                for n in 0..self.threads {
                    let rx = rx.clone();
                    let modules = Modules {
                        read_files: false,
                        ..self.modules.clone()
                    };
                    let (limits, now_ms) = (self.limits, self.now_ms);
                    let spawned = std::thread::Builder::new()
                        .name(format!("dynbulk-script-{n}"))
                        .stack_size(8 << 20)
                        .spawn(move || serve(rx, modules, limits, now_ms));
                    if let Err(e) = spawned {
                        tracing::error!(error = %e, "cannot start a script thread");
                    }
                }
                tx
            })
            .clone()
    }

    /// Transforms `items` on a script thread.
    pub async fn transform(
        &self,
        entry: Entry,
        id: String,
        facts: RunFacts,
        items: Vec<Attrs>,
    ) -> Transformed {
        let (reply, answer) = oneshot::channel();
        let n = items.len();
        let job = Job {
            entry,
            id,
            facts,
            items,
            reply,
        };
        if let Err(mpsc::SendError(job)) = self.sender().send(job) {
            return failed(job.items, "the script threads have stopped");
        }
        match answer.await {
            Ok(out) => out,
            Err(_) => (0..n)
                .map(|_| {
                    (
                        Item::new(Attrs::new()),
                        Err(TransformError::new("the script thread stopped")),
                    )
                })
                .collect(),
        }
    }
}

fn failed(items: Vec<Attrs>, why: &str) -> Transformed {
    items
        .into_iter()
        .map(|a| (Item::new(a), Err(TransformError::new(why))))
        .collect()
}

fn serve(rx: Arc<Mutex<mpsc::Receiver<Job>>>, modules: Modules, limits: Limits, now_ms: f64) {
    let mut engine: Option<Engine> = None;
    loop {
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        if engine.is_none() {
            match Engine::new(modules.clone(), limits, now_ms) {
                Ok(e) => engine = Some(e),
                Err(e) => {
                    let _ = job.reply.send(failed(
                        job.items,
                        &format!("cannot start the script engine: {e}"),
                    ));
                    continue;
                }
            }
        }
        let engine = engine.as_mut().expect("created above");
        let out = engine.transform_page(&job.entry, &job.id, &job.facts, job.items);
        let _ = job.reply.send(out);
    }
}
