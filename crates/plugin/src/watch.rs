//! `kubectl nightshift watch`: a live bar per job (and per running shard) from a watch of the
//! jobs, until every watched job has ended. Plain lines, one per change, when stdout is not a
//! terminal.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::IsTerminal,
    time::Duration,
};

use futures::TryStreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_openapi::jiff::Timestamp;
use kube::{
    ResourceExt,
    runtime::{WatchStreamExt, watcher},
};

use super::{Error, Outcome, Target, describe::Glance};
use nightshift_api::{BackgroundJob, Phase};

pub async fn watch(target: &Target, names: &[String], shards: bool) -> Result<Outcome, Error> {
    let mut config = watcher::Config::default();
    if let [name] = names {
        config = config.fields(&format!("metadata.name={name}"));
    }
    let stream = watcher(target.jobs(), config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut screen = Screen::new(std::io::stdout().is_terminal(), shards);
    let mut jobs: BTreeMap<String, BackgroundJob> = BTreeMap::new();
    // Known once the first list is in.
    let mut watched: Option<BTreeSet<String>> = None;
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let changed = tokio::select! {
            event = stream.try_next() => {
                match event {
                    Ok(Some(watcher::Event::Apply(job) | watcher::Event::InitApply(job))) => {
                        let key = key(&job);
                        if let Some(watched) = watched.as_mut().filter(|_| names.is_empty()) {
                            // Jobs created while watching are watched too.
                            if !jobs.contains_key(&key) && !finished(&job) {
                                watched.insert(key.clone());
                            }
                        }
                        jobs.insert(key, job);
                    }
                    Ok(Some(watcher::Event::Delete(job))) => {
                        let key = key(&job);
                        jobs.remove(&key);
                        deleted.insert(key);
                    }
                    Ok(Some(watcher::Event::Init)) => {}
                    Ok(Some(watcher::Event::InitDone)) => {
                        if watched.is_none() {
                            let set = first_watched(target, names, &jobs)?;
                            if set.is_empty() {
                                let place = if target.all_namespaces { "any namespace".to_string() } else { format!("namespace {:?}", target.namespace) };
                                println!("no unfinished backgroundjobs in {place}");
                                return Ok(Outcome::Done);
                            }
                            watched = Some(set);
                        }
                    }
                    Ok(None) => return Err(Error::Api("the watch of backgroundjobs ended".into())),
                    Err(watcher::Error::InitialListFailed(e)) if watched.is_none() => return Err(Error::from_kube(e, target)),
                    // Later errors: the watcher retries with backoff.
                    Err(_) => {}
                }
                true
            }
            _ = tick.tick() => false,
        };
        let Some(watched) = &watched else { continue };
        let now = Timestamp::now();
        for key in watched {
            match jobs.get(key) {
                Some(job) => screen.show(key, job, now, changed),
                None => screen.gone(key),
            }
        }
        let ended = |key: &String| deleted.contains(key) || jobs.get(key).is_some_and(finished);
        if watched.iter().all(ended) {
            screen.clear();
            let mut all_succeeded = true;
            for key in watched {
                match jobs.get(key) {
                    Some(job) => {
                        let glance = Glance::of(job, now);
                        all_succeeded &= glance.phase == Phase::Succeeded.to_string();
                        println!("{}", glance.line());
                    }
                    None => {
                        all_succeeded = false;
                        println!("{key} was deleted before it ended");
                    }
                }
            }
            return Ok(if all_succeeded { Outcome::Done } else { Outcome::JobFailed });
        }
    }
}

fn key(job: &BackgroundJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

fn finished(job: &BackgroundJob) -> bool {
    job.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_finished())
}

/// The jobs to watch once the first list is in: those named (each must exist), or every
/// unfinished one.
fn first_watched(
    target: &Target,
    names: &[String],
    jobs: &BTreeMap<String, BackgroundJob>,
) -> Result<BTreeSet<String>, Error> {
    if names.is_empty() {
        return Ok(jobs.iter().filter(|(_, j)| !finished(j)).map(|(k, _)| k.clone()).collect());
    }
    names
        .iter()
        .map(|name| {
            let found = jobs.iter().find(|(_, j)| j.name_any() == *name).map(|(k, _)| k.clone());
            found.ok_or_else(|| Error::NotFound { name: name.clone(), namespace: target.namespace.clone() })
        })
        .collect()
}

/// Bars on a terminal, lines elsewhere.
struct Screen {
    bars: Option<MultiProgress>,
    shards: bool,
    jobs: BTreeMap<String, ProgressBar>,
    shard_bars: BTreeMap<(String, i32), ProgressBar>,
    /// Plain mode: the last text printed for each job.
    printed: BTreeMap<String, String>,
}

impl Screen {
    fn new(terminal: bool, shards: bool) -> Self {
        let bars = terminal.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout()));
        Screen { bars, shards, jobs: BTreeMap::new(), shard_bars: BTreeMap::new(), printed: BTreeMap::new() }
    }

    fn show(&mut self, key: &str, job: &BackgroundJob, now: Timestamp, changed: bool) {
        let glance = Glance::of(job, now);
        let Some(bars) = &self.bars else {
            if changed {
                self.print(key, job, &glance);
            }
            return;
        };
        let bar = self.jobs.entry(key.to_string()).or_insert_with(|| {
            let bar = bars.add(ProgressBar::new(0));
            bar.set_style(
                ProgressStyle::with_template("{prefix:.bold} [{bar:30.cyan/blue}] {percent:>3}%\n  {wide_msg}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(key.to_string());
            bar
        });
        bar.set_length(100);
        bar.set_position(glance.percent.clamp(0, 100) as u64);
        bar.set_message(format!("{}/{} · {}", glance.done, glance.total, glance.words()));
        let bar = bar.clone();
        if self.shards {
            self.show_shards(key, job, &bar, now);
        }
        if glance.finished() && !bar.is_finished() {
            bar.finish();
        }
    }

    fn show_shards(&mut self, key: &str, job: &BackgroundJob, job_bar: &ProgressBar, now: Timestamp) {
        let bars = self.bars.as_ref().expect("bars on a terminal");
        let status = job.status.clone().unwrap_or_default();
        let active: BTreeMap<i32, _> = status.active.iter().map(|a| (a.shard, a)).collect();
        self.shard_bars.retain(|(job, shard), bar| {
            let keep = job != key || active.contains_key(shard);
            if !keep {
                bar.finish_and_clear();
                bars.remove(bar);
            }
            keep
        });
        let mut after = job_bar.clone();
        for (shard, a) in active {
            let bar = self.shard_bars.entry((key.to_string(), shard)).or_insert_with(|| {
                let bar = bars.insert_after(&after, ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template("    {prefix} [{bar:20.green/white}] {wide_msg}")
                        .expect("a valid template")
                        .progress_chars("=> "),
                );
                bar
            });
            bar.set_prefix(format!("shard {shard} attempt {}", a.attempt));
            // No total reported yet: an empty bar, not a full one.
            let (done, total) = a.progress.as_ref().map(|p| (p.done, p.total)).unwrap_or((0, 0));
            bar.set_length(total.max(1) as u64);
            bar.set_position(done.clamp(0, total.max(0)) as u64);
            let counts = a.progress.as_ref().map(|p| format!("{}/{}", p.done, p.total));
            let mut words = vec![counts.unwrap_or_else(|| "no progress yet".into()), a.pod.clone()];
            if let Some(t) = &a.last_heartbeat_time {
                words.push(format!("heartbeat {} ago", super::describe::duration((now - t.0).get_seconds())));
            }
            if a.failures > 0 {
                words.push(format!("retry {}", a.failures));
            }
            if let Some(message) = a.progress.as_ref().map(|p| p.message.clone()).filter(|m| !m.is_empty()) {
                words.push(message);
            }
            bar.set_message(words.join(" · "));
            after = bar.clone();
        }
    }

    fn print(&mut self, key: &str, job: &BackgroundJob, glance: &Glance) {
        let mut text = glance.line();
        if self.shards {
            for a in job.status.iter().flat_map(|s| s.active.iter()) {
                let progress = a.progress.as_ref().map(|p| format!(" {}/{}", p.done, p.total)).unwrap_or_default();
                text += &format!("\n  shard {} attempt {} on {}{progress}", a.shard, a.attempt, a.pod);
            }
        }
        if self.printed.get(key) != Some(&text) {
            println!("{} {text}", Timestamp::now().strftime("%H:%M:%S"));
            self.printed.insert(key.to_string(), text);
        }
    }

    fn gone(&mut self, key: &str) {
        if let Some(bar) = self.jobs.get(key).filter(|b| !b.is_finished()) {
            bar.abandon_with_message("deleted");
        }
    }

    fn clear(&mut self) {
        for bar in self.shard_bars.values().chain(self.jobs.values()) {
            bar.finish_and_clear();
        }
        if let Some(bars) = &self.bars {
            let _ = bars.clear();
        }
    }
}
